import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { CancelKeyRegistry, ProxyKey } from './cancel-keys.js';
import type { ClusterState } from './cluster-state.js';
import { type ClientStartup, guarded, refuse } from './connection.js';
import type { ProxyMetrics } from './metrics.js';
import type { NativeRelay } from './native-relay.js';
import { MessageReader, backendKeyData, parseBackendKeyData, sqlStates } from './protocol.js';
import type { EndpointKind, Target } from './routes.js';
import { relayBytes } from './throttle.js';
import { ErrorRewriter, type StorageFullNotice } from './storage-full.js';

/**
 * Relaying: server → client through the startup phase (BackendKeyData swapped for a proxy key, up
 * to the first ReadyForQuery), then plain bytes both ways, in the native relay when it takes the
 * pair, else in JavaScript (paced when the cluster has a bandwidth limit), counted either way.
 * Changes when the byte path does.
 */

export interface RelayingOptions {
  readonly log: Logger;
  /** Whether a cluster's storage is full now, and what to tell its clients (storage-full.ts). */
  readonly storageFull: (cluster: string) => StorageFullNotice | null;
  readonly metrics: ProxyMetrics;
  readonly relay: NativeRelay | null;
  readonly cancelKeys: CancelKeyRegistry;
}

interface LivePair {
  readonly backend: Socket;
  readonly target: Target;
  readonly kind: EndpointKind;
}

export class Relaying {
  /** Every relayed connection by its client socket, so that a failover can end those left on a fenced primary. */
  private readonly live = new Map<Socket, LivePair>();

  constructor(private readonly options: RelayingOptions) {}

  /**
   * After a change of the routes: ends every connection whose instance left its route (fenced,
   * deleted) or, for writes, is no longer the primary. A primary on a host cut off from the
   * network never closes its connections itself; its clients must see an error to reconnect.
   */
  endUnrouted(stillRouted: (target: Target, kind: EndpointKind) => boolean): number {
    let ended = 0;
    for (const [client, pair] of this.live) {
      if (stillRouted(pair.target, pair.kind)) continue;
      this.live.delete(client);
      pair.backend.destroy();
      client.destroy();
      ended += 1;
    }
    if (ended > 0) this.options.log.info({ ended }, 'proxy: connections to instances no longer routed ended');
    return ended;
  }

  /** A backend just connected for `client`: client → server as bytes, server → client through the startup phase. */
  start(client: Socket, backend: Socket, startup: ClientStartup, target: Target, state: ClusterState): void {
    this.live.set(client, { backend, target, kind: startup.kind });
    client.once('close', () => this.live.delete(client));
    this.pipe(client, backend, target.clusterKey, 'in', state);
    this.relayStartup(client, backend, startup, target, state);
  }

  /** Server → client until the first ReadyForQuery, swapping BackendKeyData for a proxy key; then a plain pipe. */
  private relayStartup(client: Socket, backend: Socket, startup: ClientStartup, target: Target, state: ClusterState): void {
    const { log, cancelKeys } = this.options;
    const reader = new MessageReader();
    let proxyKey: ProxyKey | null = null;
    // A server that breaks the protocol ends this client's connection with an error, and only it.
    const malformed = (message: string): void => {
      log.warn({ cluster: target.clusterKey, port: target.port }, `proxy: ${message}`);
      backend.destroy();
      refuse(client, sqlStates.protocolViolation, `the server of cluster "${target.clusterKey}" broke the protocol: ${message}`);
    };
    const onData = guarded(log, 'the startup phase from the server', [client, backend], (chunk: Buffer): void => {
      reader.push(chunk);
      for (;;) {
        const next = reader.next();
        if (next === null) return;
        if (typeof next === 'string') return malformed(next);
        if (next.type === 'K') {
          const key = parseBackendKeyData(next.message);
          if (typeof key === 'string') return malformed(key);
          proxyKey = cancelKeys.issue({ host: target.host, port: target.port, ...key });
          client.write(backendKeyData(proxyKey.processId, proxyKey.secretKey));
          continue;
        }
        client.write(next.message);
        if (next.type === 'Z') {
          clearTimeout(startup.timer);
          backend.off('data', onData);
          const rest = reader.rest();
          if (rest.length > 0) client.write(rest);
          this.relayAfterStartup(client, backend, target, state);
          return;
        }
      }
    });
    backend.on('data', onData);
    client.once(
      'close',
      guarded(log, 'releasing a cancel key', [client], () => {
        if (proxyKey !== null) cancelKeys.release(proxyKey);
      }),
    );
  }

  /**
   * Past startup: both directions go to the native relay when it takes them (idle sockets, no
   * bandwidth limit on the cluster; TLS it terminated itself); otherwise server → client joins
   * client → server in JavaScript.
   */
  private relayAfterStartup(client: Socket, backend: Socket, target: Target, state: ClusterState): void {
    const { relay, metrics, storageFull } = this.options;
    const cluster = target.clusterKey;
    if (target.storageFull) {
      // Writes fail on a full cluster: each error is rewritten to say why, so these bytes stay in JavaScript.
      const rewriter = new ErrorRewriter(() => storageFull(cluster));
      return this.pipe(backend, client, cluster, 'out', state, (chunk) => rewriter.push(chunk));
    }
    const pending = state.bytesPending;
    const count = (bytesIn: number, bytesOut: number): void => {
      pending.in += bytesIn;
      pending.out += bytesOut;
    };
    if (relay !== null && state.bytesIn === null && state.bytesOut === null && relay.adopt({ client, backend, count })) {
      metrics.nativeRelayed.labels(cluster).inc();
      return;
    }
    this.pipe(backend, client, cluster, 'out', state);
  }

  /** Bytes one way: a plain pipe, or a paced one when the cluster has a bandwidth limit; counted either way. */
  private pipe(from: Socket, to: Socket, cluster: string, direction: 'in' | 'out', state: ClusterState, transform?: (chunk: Buffer) => Buffer): void {
    const pending = state.bytesPending;
    relayBytes(from, to, {
      ...(transform === undefined ? {} : { transform }),
      bucket: direction === 'in' ? () => state.bytesIn : () => state.bytesOut,
      count: (bytes) => {
        pending[direction] += bytes;
      },
      onThrottle: () => this.options.metrics.throttleEvents.labels(cluster, 'bandwidth').inc(),
      guard: (handler) => guarded(this.options.log, `relaying bytes (${direction})`, [from, to], handler),
    });
  }
}
