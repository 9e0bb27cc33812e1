import { type Server, type Socket, createServer } from 'node:net';
import type { Logger } from 'pino';
import { Admission, type ProxyLimits, connectionsMax } from './admission.js';
import { BackendConnector } from './backend.js';
import { type CancelKeyRegistry, CancelKeys, forwardCancel } from './cancel-keys.js';
import { ClusterStates } from './cluster-state.js';
import { type ClientStartup, errorText, guarded } from './connection.js';
import type { ProxyMetrics } from './metrics.js';
import type { NativeRelay } from './native-relay.js';
import { Negotiation, type ProxyTls, type StartupPacket } from './negotiation.js';
import { Relaying } from './relaying.js';
import type { EndpointKind, ProxyRoutes } from './routes.js';

/**
 * The proxy's data path, wired: two listeners; each connection goes through negotiation
 * (`negotiation.ts`), admission and throttles (`admission.ts`, `cluster-state.ts`), backend
 * connect (`backend.ts`), cancel keys (`cancel-keys.ts`) and relaying (`relaying.ts`). It reads
 * only its cached routes, never the control plane.
 */

export interface ProxyOptions {
  readonly host: string;
  readonly readWritePort: number;
  readonly readOnlyPort: number;
  readonly routes: ProxyRoutes;
  readonly log: Logger;
  readonly limits: ProxyLimits;
  readonly metrics: ProxyMetrics;
  /** Null: answer SSLRequest with N (plain only). */
  readonly tls: ProxyTls | null;
  /** Terminates TLS and relays connections after startup outside the event loop; null: all in JavaScript. */
  readonly relay: NativeRelay | null;
  /** Where cancel keys live; a test passes one that fails. */
  readonly cancelKeys?: CancelKeyRegistry;
}

export class ProxyServer {
  private readonly servers: Server[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly cancelKeys: CancelKeyRegistry;
  private readonly clusters: ClusterStates;
  private readonly negotiation: Negotiation;
  private readonly admission: Admission;
  private readonly backends: BackendConnector;
  private readonly relaying: Relaying;

  constructor(private readonly options: ProxyOptions) {
    const { log, limits, metrics, routes, relay, tls } = options;
    const track = (socket: Socket): void => this.track(socket);
    this.cancelKeys = options.cancelKeys ?? new CancelKeys();
    this.clusters = new ClusterStates(log, limits, metrics, (cluster) => routes.has(cluster));
    routes.onChange(() => this.clusters.pruneAll());
    this.admission = new Admission({ routes, limits, metrics, clusters: this.clusters, connectionCount: () => this.sockets.size });
    this.backends = new BackendConnector({ log, routes, admission: this.admission, waitMsMax: limits.waitMsMax, track });
    this.relaying = new Relaying({ log, metrics, relay, cancelKeys: this.cancelKeys, storageFull: (cluster) => routes.storageFull(cluster) });
    routes.onChange(() => this.relaying.endUnrouted((target, kind) => routes.stillRouted(target, kind)));
    this.negotiation = new Negotiation({
      log,
      tls,
      relay,
      track,
      onStartup: (client, connection, startup) => this.connect(client, connection, startup),
      onCancel: (client, processId, secretKey) => forwardCancel(this.cancelKeys, client, processId, secretKey),
    });
  }

  async start(): Promise<void> {
    await this.listen('readWrite', this.options.readWritePort);
    await this.listen('readOnly', this.options.readOnlyPort);
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await Promise.all(this.servers.map((server) => new Promise((resolve) => server.close(resolve))));
  }

  /** Clusters the proxy keeps state for (bounded by the routes and the open connections). */
  get clusterStateCount(): number {
    return this.clusters.size;
  }

  /** Cancel keys issued and not yet released (bounded by the open connections). */
  get cancelKeyCount(): number {
    return this.cancelKeys.size;
  }

  /** A throttle's rod changed: the clusters' buckets take the new rates, running transfers included. */
  applyThrottles(): void {
    this.clusters.applyThrottles();
  }

  /** Moves the byte counts gathered on the data path into the metrics; called before each scrape. */
  flushMetrics(): void {
    this.options.relay?.flushBytes();
    this.clusters.flushBytes();
  }

  private listen(kind: EndpointKind, port: number): Promise<void> {
    const server = createServer({ noDelay: true }, (socket) => guarded(this.options.log, 'accepting a connection', [socket], () => this.accept(socket, kind))());
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
    const connection: ClientStartup = { kind, timer: setTimeout(() => client.destroy(), this.options.limits.startupMsMax) };
    client.once('close', () => clearTimeout(connection.timer));
    client.on('error', () => client.destroy());
    this.negotiation.negotiate(client, connection).catch((error: unknown) => {
      this.options.log.warn({ err: errorText(error) }, 'proxy startup failed');
      client.destroy();
    });
  }

  private track(socket: Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
  }

  /** Admission, then the backend, then relaying. */
  private async connect(client: Socket, connection: ClientStartup, startup: StartupPacket): Promise<void> {
    const admitted = await this.admission.admit(client, connection.kind, startup);
    if (admitted === null) return;
    this.backends.connect(client, connection.kind, admitted, (backend, target) => this.relaying.start(client, backend, connection, target, admitted.state));
  }
}
