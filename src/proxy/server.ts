import { randomInt } from 'node:crypto';
import { type Server, type Socket, connect, createServer } from 'node:net';
import { Duplex } from 'node:stream';
import { type SecureContext, TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { assert } from '../lib/assert.js';
import { isPlatformRole } from '../lib/roles.js';
import {
  MessageReader,
  backendKeyData,
  buildStartupPacket,
  cancelRequestCode,
  cancelRequestPacket,
  errorResponse,
  gssEncRequestCode,
  parseStartupParameters,
  protocolVersion3,
  type SqlState,
  sqlStates,
  sslRequestCode,
  startupPacketBytesMax,
} from './protocol.js';
import type { EndpointKind, RouteTable, Target } from './routes.js';
import type { ProxyMetrics } from './metrics.js';
import type { NativeRelay } from './native-relay.js';
import { TokenBucket, relayBytes } from './throttle.js';

/**
 * The proxy's data path: speak the startup phase (negotiation, routing, BackendKeyData), then
 * pipe bytes both ways. It reads only its cached routes, never the control plane.
 */

export interface ProxyTls {
  /** Clusters are `<routeKey>.<domain>` for SNI routing. */
  readonly domain: string;
  /**
   * The one certificate (`*.<domain>`), whatever server name the client sends: a name never makes
   * key material. A function because renewal replaces it.
   */
  secureContext(): SecureContext;
}

/** The proxy's throttles, per cluster; each becomes a control rod later. */
export interface ProxyLimits {
  readonly clusterConnectionsMax: number;
  readonly clusterConnectsPerSecond: number;
  /** Per direction; 0 means unlimited. */
  readonly clusterBytesPerSecond: number;
  /** How long a new connection waits for a paused route or a connect token before it is refused. */
  readonly waitMsMax: number;
  /** From accept to the server's first ReadyForQuery (includes the client's authentication and any wait). */
  readonly startupMsMax: number;
}

export interface ProxyOptions {
  readonly host: string;
  readonly readWritePort: number;
  readonly readOnlyPort: number;
  readonly routes: RouteTable;
  readonly log: Logger;
  readonly limits: ProxyLimits;
  readonly metrics: ProxyMetrics;
  /** Null: answer SSLRequest with N (plain only). */
  readonly tls: ProxyTls | null;
  /** Terminates TLS and relays connections after startup outside the event loop; null: all in JavaScript. */
  readonly relay: NativeRelay | null;
}

/** The first byte of a TLS handshake record: a Postgres 17 client doing direct TLS. */
const tlsHandshakeByte = 0x16;
const alpnPostgres = 'postgresql';

/** Connections the whole proxy holds at once; past it a client gets 53300. */
export const connectionsMax = 10_000;

/** What the proxy carries for one client through its startup phase. */
interface ClientStartup {
  readonly kind: EndpointKind;
  /** Ends the client if startup takes too long; cleared at the first ReadyForQuery. */
  readonly timer: NodeJS.Timeout;
}
export const backendConnectTimeoutMs = 5_000;
/** SSLRequest and GSSENCRequest may each come once before the startup packet. */
const negotiationsMax = 2;
const cancelKeyAttemptsMax = 16;
const int32Max = 2 ** 31 - 1;

/** Per-cluster throttle state; only clusters in the route table get one, so the map is bounded by them. */
interface ClusterState {
  connections: number;
  /** Bytes relayed since the last scrape: counted in plain numbers on the hot path, added to the metric at scrape time. */
  bytesPending: { in: number; out: number };
  readonly connects: TokenBucket;
  readonly bytesIn: TokenBucket | null;
  readonly bytesOut: TokenBucket | null;
}

const routeWaitPollMs = 25;

/** Nothing listens there (yet): worth waiting for a new route rather than failing the client. */
function isRefused(error: Error): boolean {
  return (error as NodeJS.ErrnoException).code === 'ECONNREFUSED';
}

interface BackendKey {
  readonly port: number;
  readonly processId: number;
  readonly secretKey: number;
}

export interface RoutingKey {
  readonly cluster: string;
  readonly parameters: Map<string, string>;
}

/**
 * The cluster a client asks for, first match wins: `options=-c cluster=NAME` (removed before
 * forwarding), the TLS server name `NAME.<domain>`, or a user name `role.NAME` (the proxy forwards
 * `role`). Null if none names one.
 */
export function routingKey(parameters: ReadonlyMap<string, string>, sniCluster: string | null = null): RoutingKey | null {
  const forwarded = new Map(parameters);
  const options = parameters.get('options') ?? '';
  const fromOptions = /(?:^|\s)(?:-c\s*|--)cluster=(\S+)/.exec(options);
  if (fromOptions?.[1] !== undefined) {
    const rest = options.replace(fromOptions[0], '').trim();
    if (rest === '') forwarded.delete('options');
    else forwarded.set('options', rest);
    return { cluster: fromOptions[1], parameters: forwarded };
  }
  const user = parameters.get('user') ?? '';
  if (sniCluster !== null) {
    // `role.cluster` naming the same cluster as the server name is the URI's user: forward `role`.
    if (user.endsWith(`.${sniCluster}`)) forwarded.set('user', user.slice(0, -(sniCluster.length + 1)));
    return { cluster: sniCluster, parameters: forwarded };
  }
  const dot = user.lastIndexOf('.');
  if (dot <= 0 || dot === user.length - 1) return null;
  forwarded.set('user', user.slice(0, dot));
  return { cluster: user.slice(dot + 1), parameters: forwarded };
}

export class ProxyServer {
  private readonly servers: Server[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly cancelKeys = new Map<string, BackendKey>();
  private readonly clusters = new Map<string, ClusterState>();

  constructor(private readonly options: ProxyOptions) {}

  async start(): Promise<void> {
    await this.listen('readWrite', this.options.readWritePort);
    await this.listen('readOnly', this.options.readOnlyPort);
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await Promise.all(this.servers.map((server) => new Promise((resolve) => server.close(resolve))));
  }

  private listen(kind: EndpointKind, port: number): Promise<void> {
    const server = createServer({ noDelay: true }, (socket) => this.accept(socket, kind));
    server.maxConnections = connectionsMax;
    this.servers.push(server);
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: this.options.host, port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
  }

  private accept(client: Socket, kind: EndpointKind): void {
    this.track(client);
    client.setNoDelay(true);
    const startup = { kind, timer: setTimeout(() => client.destroy(), this.options.limits.startupMsMax) };
    client.once('close', () => clearTimeout(startup.timer));
    client.on('error', () => client.destroy());
    void this.negotiate(client, startup).catch((error: unknown) => {
      this.options.log.warn({ err: error instanceof Error ? error.message : String(error) }, 'proxy startup failed');
      client.destroy();
    });
  }

  private track(socket: Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
  }

  /**
   * Reads packets until the startup packet, answering SSL/GSS requests and cancels on the way.
   * After a TLS upgrade it starts again on the encrypted socket (once: `sniCluster` is then set or null).
   */
  private async negotiate(client: Socket, startup: ClientStartup, secured: { sniCluster: string | null } | null = null): Promise<void> {
    const reader = new PacketReader(client);
    if (secured === null && this.options.tls !== null && (await reader.firstByte()) === tlsHandshakeByte) {
      return this.secure(client, startup, reader.takeBuffered(), true);
    }
    for (let round = 0; round <= negotiationsMax; round += 1) {
      const packet = await reader.packet();
      if (typeof packet === 'string') return refuse(client, sqlStates.protocolViolation, packet);
      const code = packet.readInt32BE(4);
      if (code === sslRequestCode || code === gssEncRequestCode) {
        // Bytes already sent after the request could be injected into the encrypted session.
        if (reader.buffered() > 0) return void client.destroy();
        if (code === sslRequestCode && secured === null && this.options.tls !== null) {
          client.write('S');
          return this.secure(client, startup, reader.takeBuffered(), false);
        }
        client.write('N');
        continue;
      }
      if (code === cancelRequestCode && packet.length === 16) return this.forwardCancel(client, packet.readInt32BE(8), packet.readInt32BE(12));
      if (code !== protocolVersion3) return refuse(client, sqlStates.protocolViolation, `unsupported frontend protocol ${code >> 16}.${code & 0xffff}: the proxy speaks 3.0`);
      return await this.route(client, startup, packet.subarray(8), reader.takeBuffered(), secured?.sniCluster ?? null);
    }
    refuse(client, sqlStates.protocolViolation, 'too many negotiation requests before the startup packet');
  }

  /** TLS termination with the cell's certificates; `direct` is Postgres 17's TLS-first connection, which must ask for ALPN `postgresql`. */
  private async secure(client: Socket, startup: ClientStartup, early: Buffer, direct: boolean): Promise<void> {
    const tls = this.options.tls;
    if (tls === null) return void client.destroy();
    // The relay thread terminates TLS when it can (for direct TLS it also requires ALPN postgresql).
    assert(direct === early.length > 0, 'direct TLS has read the start of its ClientHello; an SSLRequest leaves nothing unread');
    const terminating = this.options.relay?.acceptTls(client, early) ?? null;
    if (terminating !== null) {
      const terminated = await terminating;
      if (terminated === null) return;
      const plain = terminated.socket;
      this.track(plain);
      plain.on('error', () => plain.destroy());
      plain.once('close', () => client.destroy());
      return this.negotiate(plain, startup, { sniCluster: sniCluster(terminated.serverName ?? '', tls.domain) });
    }
    // A net.Socket is handed to TLS natively, which would not see bytes already read; direct TLS
    // has read the first bytes of the ClientHello, so it goes through a stream that replays them.
    const transport = early.length > 0 ? replaying(client, early) : client;
    const secure = new TLSSocket(transport as Socket, {
      isServer: true,
      secureContext: tls.secureContext(),
      ALPNProtocols: [alpnPostgres],
    });
    this.track(secure);
    secure.on('error', () => client.destroy());
    client.resume();
    await new Promise<void>((resolve, reject) => {
      secure.once('secure', resolve);
      secure.once('close', () => reject(new Error('closed during the TLS handshake')));
    });
    if (direct && secure.alpnProtocol !== alpnPostgres) return void secure.destroy();
    return this.negotiate(secure, startup, { sniCluster: sniCluster(typeof secure.servername === 'string' ? secure.servername : '', tls.domain) });
  }

  private async route(client: Socket, startup: ClientStartup, body: Buffer, early: Buffer, sniCluster: string | null): Promise<void> {
    const { metrics, limits, routes } = this.options;
    const kind = startup.kind;
    const parameters = parseStartupParameters(body);
    if (typeof parameters === 'string') return this.refuse(client, '', 'protocol', sqlStates.protocolViolation, `invalid startup packet: ${parameters}`);
    const key = routingKey(parameters, sniCluster);
    if (key === null) {
      return this.refuse(client, '', 'no_cluster', sqlStates.invalidCatalogName, 'no cluster named: connect as user ROLE.CLUSTER, to host CLUSTER.<domain> with TLS, or pass options=-c cluster=CLUSTER');
    }
    const role = key.parameters.get('user') ?? '';
    if (isPlatformRole(role)) {
      return this.refuse(client, '', 'reserved_role', sqlStates.invalidAuthorizationSpecification, `role "${role}" is reserved for the platform and cannot connect through the proxy`);
    }
    if (this.sockets.size > connectionsMax) return this.refuse(client, '', 'proxy_full', sqlStates.tooManyConnections, 'the proxy has too many connections');
    const cluster = key.cluster;
    const deadlineMs = performance.now() + limits.waitMsMax;
    let resolution = routes.resolve(cluster, kind);
    if ('unknown' in resolution) {
      // Perhaps created since the last poll: look once more before saying it does not exist.
      await routes.refreshNow();
      resolution = routes.resolve(cluster, kind);
    }
    // Paused (switchover) or without a serving instance for now (starting, failing over): wait, bounded.
    while (('paused' in resolution || 'unavailable' in resolution) && performance.now() < deadlineMs && !client.destroyed) {
      await sleep(routeWaitPollMs);
      resolution = routes.resolve(cluster, kind);
    }
    if ('unknown' in resolution) return this.refuse(client, '', 'unknown_cluster', sqlStates.invalidCatalogName, `cluster "${cluster}" does not exist`);
    if ('paused' in resolution) {
      return this.refuse(client, cluster, 'paused', sqlStates.cannotConnectNow, `cluster "${cluster}" is paused (a switchover may be under way); gave up after ${limits.waitMsMax} ms`);
    }
    if ('unavailable' in resolution) return this.refuse(client, cluster, 'unavailable', sqlStates.cannotConnectNow, resolution.unavailable);
    const state = this.clusterState(cluster);
    if (state.connections >= limits.clusterConnectionsMax) {
      metrics.throttleEvents.labels(cluster, 'connections').inc();
      return this.refuse(client, cluster, 'throttled', sqlStates.tooManyConnections, `too many connections for cluster "${cluster}" (limit ${limits.clusterConnectionsMax})`);
    }
    if (!(await this.takeConnectToken(state, cluster, deadlineMs)) || client.destroyed) {
      return this.refuse(client, cluster, 'throttled', sqlStates.tooManyConnections, `new connections to cluster "${cluster}" exceed ${limits.clusterConnectsPerSecond} per second`);
    }
    state.connections += 1;
    metrics.connections.labels(cluster, kind).inc();
    metrics.connectionsTotal.labels(cluster, kind).inc();
    client.once('close', () => {
      state.connections -= 1;
      metrics.connections.labels(cluster, kind).dec();
    });
    this.connectBackend(client, startup, resolution.target, buildStartupPacket(key.parameters), early, state, deadlineMs);
  }

  /** Waits (bounded by the deadline) for the cluster's connection-rate bucket. */
  private async takeConnectToken(state: ClusterState, cluster: string, deadlineMs: number): Promise<boolean> {
    for (let attempt = 0; attempt < 3; attempt += 1) {
      if (state.connects.tryTake(performance.now())) return true;
      if (attempt === 0) this.options.metrics.throttleEvents.labels(cluster, 'connect_rate').inc();
      const waitMs = state.connects.waitMs(performance.now());
      if (performance.now() + waitMs > deadlineMs) return false;
      await sleep(waitMs);
    }
    return false;
  }

  private clusterState(cluster: string): ClusterState {
    const existing = this.clusters.get(cluster);
    if (existing !== undefined) return existing;
    const { limits } = this.options;
    const now = performance.now();
    const bytes = () => (limits.clusterBytesPerSecond > 0 ? new TokenBucket(limits.clusterBytesPerSecond, Math.max(limits.clusterBytesPerSecond / 10, 64 * 1024), now) : null);
    const state = { connections: 0, bytesPending: { in: 0, out: 0 }, connects: new TokenBucket(limits.clusterConnectsPerSecond, limits.clusterConnectsPerSecond, now), bytesIn: bytes(), bytesOut: bytes() };
    this.clusters.set(cluster, state);
    return state;
  }

  private refuse(client: Socket, cluster: string, reason: string, sqlState: SqlState, message: string): void {
    this.options.metrics.routingErrors.labels(cluster, reason).inc();
    refuse(client, sqlState, message);
  }

  /**
   * Connects to the routed instance. A refused connect before the deadline (a primary that just
   * died, before the failover has re-routed) is retried against the freshest route instead of
   * failing the client: during a failover new connections wait, like during a switchover.
   */
  private connectBackend(client: Socket, startup: ClientStartup, target: Target, startupPacket: Buffer, early: Buffer, state: ClusterState, deadlineMs: number): void {
    const backend = connect({ host: '127.0.0.1', port: target.port, noDelay: true });
    this.track(backend);
    const connectTimer = setTimeout(() => backend.destroy(new Error('connect timeout')), backendConnectTimeoutMs);
    let started = false;
    const dropBackend = () => backend.destroy();
    backend.once('connect', () => {
      clearTimeout(connectTimer);
      started = true;
      backend.once('close', () => client.destroy());
      backend.write(startupPacket);
      if (early.length > 0) backend.write(early);
      this.relay(client, backend, target.clusterKey, 'in', state);
      this.relayStartup(client, backend, startup, target, state);
    });
    backend.on('error', (error) => {
      clearTimeout(connectTimer);
      if (started) return client.destroy();
      client.off('close', dropBackend);
      if (isRefused(error) && performance.now() < deadlineMs && !client.destroyed) {
        void this.reconnectBackend(client, startup, target.clusterKey, startupPacket, early, state, deadlineMs);
        return;
      }
      this.refuse(client, target.clusterKey, 'unreachable', sqlStates.connectionFailure, `cannot reach the server of cluster "${target.clusterKey}": ${error.message}`);
    });
    client.once('close', dropBackend);
  }

  private async reconnectBackend(client: Socket, startup: ClientStartup, cluster: string, startupPacket: Buffer, early: Buffer, state: ClusterState, deadlineMs: number): Promise<void> {
    await sleep(routeWaitPollMs);
    let resolution = this.options.routes.resolve(cluster, startup.kind);
    while (!('target' in resolution) && performance.now() < deadlineMs && !client.destroyed) {
      await sleep(routeWaitPollMs);
      resolution = this.options.routes.resolve(cluster, startup.kind);
    }
    if (client.destroyed) return;
    if (!('target' in resolution)) {
      return this.refuse(client, cluster, 'unavailable', sqlStates.cannotConnectNow, `cluster "${cluster}" has no instance accepting connections; gave up after ${this.options.limits.waitMsMax} ms`);
    }
    this.connectBackend(client, startup, resolution.target, startupPacket, early, state, deadlineMs);
  }

  /** Moves the byte counts gathered on the data path into the metrics; called before each scrape. */
  flushMetrics(): void {
    this.options.relay?.flushBytes();
    for (const [cluster, state] of this.clusters) {
      for (const direction of ['in', 'out'] as const) {
        if (state.bytesPending[direction] === 0) continue;
        this.options.metrics.bytes.labels(cluster, direction).inc(state.bytesPending[direction]);
        state.bytesPending[direction] = 0;
      }
    }
  }

  /** Bytes one way: a plain pipe, or a paced one when the cluster has a bandwidth limit; counted either way. */
  private relay(from: Socket, to: Socket, cluster: string, direction: 'in' | 'out', state: ClusterState): void {
    const pending = state.bytesPending;
    relayBytes(from, to, {
      bucket: direction === 'in' ? state.bytesIn : state.bytesOut,
      count: (bytes) => {
        pending[direction] += bytes;
      },
      onThrottle: () => this.options.metrics.throttleEvents.labels(cluster, 'bandwidth').inc(),
    });
  }

  /**
   * Past startup: both directions go to the native relay when it takes them (idle sockets, no
   * bandwidth limit on the cluster; TLS it terminated itself); otherwise server → client joins
   * client → server in JavaScript.
   */
  private relayAfterStartup(client: Socket, backend: Socket, cluster: string, state: ClusterState): void {
    const relay = this.options.relay;
    const pending = state.bytesPending;
    const count = (bytesIn: number, bytesOut: number): void => {
      pending.in += bytesIn;
      pending.out += bytesOut;
    };
    if (relay !== null && state.bytesIn === null && state.bytesOut === null && relay.adopt({ client, backend, count })) {
      this.options.metrics.nativeRelayed.labels(cluster).inc();
      return;
    }
    this.relay(backend, client, cluster, 'out', state);
  }

  /** Server → client until the first ReadyForQuery, swapping BackendKeyData for a proxy key; then a plain pipe. */
  private relayStartup(client: Socket, backend: Socket, startup: ClientStartup, target: Target, state: ClusterState): void {
    const reader = new MessageReader();
    let proxyKey: string | null = null;
    const onData = (chunk: Buffer): void => {
      reader.push(chunk);
      for (;;) {
        const next = reader.next();
        if (next === null) return;
        if (typeof next === 'string') return void backend.destroy(new Error(next));
        if (next.type === 'K') {
          proxyKey = this.issueCancelKey({ port: target.port, processId: next.message.readInt32BE(5), secretKey: next.message.readInt32BE(9) }, client);
          const [processId, secretKey] = proxyKey.split(':').map(Number) as [number, number];
          client.write(backendKeyData(processId, secretKey));
          continue;
        }
        client.write(next.message);
        if (next.type === 'Z') {
          clearTimeout(startup.timer);
          backend.off('data', onData);
          const rest = reader.rest();
          if (rest.length > 0) client.write(rest);
          this.relayAfterStartup(client, backend, target.clusterKey, state);
          return;
        }
      }
    };
    backend.on('data', onData);
    client.once('close', () => {
      if (proxyKey !== null) this.cancelKeys.delete(proxyKey);
    });
  }

  private issueCancelKey(key: BackendKey, client: Socket): string {
    for (let attempt = 0; attempt < cancelKeyAttemptsMax; attempt += 1) {
      const candidate = `${randomInt(1, int32Max)}:${randomInt(-int32Max, int32Max)}`;
      if (this.cancelKeys.has(candidate)) continue;
      this.cancelKeys.set(candidate, key);
      return candidate;
    }
    client.destroy();
    throw new Error('could not issue a unique cancel key');
  }

  /** A CancelRequest goes to the backend that owns the key; the client is closed either way, as Postgres does. */
  private forwardCancel(client: Socket, processId: number, secretKey: number): void {
    client.end();
    const key = this.cancelKeys.get(`${processId}:${secretKey}`);
    if (key === undefined) return;
    const backend = connect({ host: '127.0.0.1', port: key.port });
    backend.setTimeout(backendConnectTimeoutMs, () => backend.destroy());
    backend.on('error', () => backend.destroy());
    backend.once('connect', () => backend.end(cancelRequestPacket(key.processId, key.secretKey)));
  }
}

/** A duplex over `socket` that first yields `early`: lets TLS read bytes the proxy already took. */
function replaying(socket: Socket, early: Buffer): Duplex {
  const duplex = new Duplex({
    read: () => void socket.resume(),
    write: (chunk: Buffer, _encoding, callback) => void socket.write(chunk, callback),
    final: (callback) => {
      socket.end();
      callback();
    },
    destroy: (error, callback) => {
      socket.destroy(error ?? undefined);
      callback(error);
    },
  });
  duplex.push(early);
  socket.on('data', (chunk: Buffer) => {
    if (!duplex.push(chunk)) socket.pause();
  });
  socket.once('end', () => duplex.push(null));
  socket.once('close', () => duplex.destroy());
  return duplex;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function isWithin(name: string, domain: string): boolean {
  return name === domain || name.endsWith(`.${domain}`);
}

/** The cluster an SNI name `CLUSTER.<domain>` names, or null. */
function sniCluster(serverName: string, domain: string): string | null {
  if (!isWithin(serverName, domain) || serverName === domain) return null;
  const cluster = serverName.slice(0, -(domain.length + 1));
  return cluster.includes('.') ? null : cluster;
}

function refuse(client: Socket, sqlState: SqlState, message: string): void {
  client.end(errorResponse(sqlState, message));
}

/** Reads length-prefixed startup-phase packets (no type byte) from a socket, bounded in size. */
class PacketReader {
  private buffer: Buffer = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  private closed = false;

  constructor(private readonly socket: Socket) {
    socket.on('data', this.onData);
    socket.once('close', () => {
      this.closed = true;
      this.waiter?.();
    });
  }

  private readonly onData = (chunk: Buffer): void => {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    if (this.buffer.length > startupPacketBytesMax) this.socket.pause();
    this.waiter?.();
  };

  /** The first byte the client sent, or null if it closed first. */
  async firstByte(): Promise<number | null> {
    while (this.buffer.length === 0 && !this.closed) {
      await new Promise<void>((resolve) => (this.waiter = resolve));
      this.waiter = null;
    }
    return this.buffer[0] ?? null;
  }

  async packet(): Promise<Buffer | string> {
    for (;;) {
      if (this.buffer.length >= 4) {
        const length = this.buffer.readInt32BE(0);
        if (length < 8 || length > startupPacketBytesMax) return `invalid startup packet length ${length}`;
        if (this.buffer.length >= length) {
          const packet = this.buffer.subarray(0, length);
          this.buffer = this.buffer.subarray(length);
          return packet;
        }
      }
      if (this.closed) return 'connection closed during startup';
      await new Promise<void>((resolve) => (this.waiter = resolve));
      this.waiter = null;
    }
  }

  buffered(): number {
    return this.buffer.length;
  }

  /** Stops reading for the handshake and hands over what arrived early. */
  takeBuffered(): Buffer {
    this.socket.off('data', this.onData);
    // Paused until the backend is connected and piping resumes it, so no byte is dropped.
    this.socket.pause();
    const rest = this.buffer;
    this.buffer = Buffer.alloc(0);
    return rest;
  }
}
