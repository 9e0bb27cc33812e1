import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { guarded } from './connection.js';
import type { ProxyMetrics } from './metrics.js';
import type { EndpointKind } from './routes.js';
import { TokenBucket } from './throttle.js';

/**
 * The proxy's state per cluster: open connections, throttle buckets, bytes not yet in the
 * metrics. Kept while the cluster has a route or a connection, so its rate limit cannot be reset
 * by closing connections; dropped (with its metric series) when it has neither, so memory is
 * bounded by the clusters that exist, not by every name ever routed.
 */

export interface ClusterState {
  connections: number;
  /** Bytes relayed since the last scrape: counted in plain numbers on the hot path, added to the metric at scrape time. */
  readonly bytesPending: { in: number; out: number };
  readonly connects: TokenBucket;
  /** Null: no bandwidth limit. Replaced or re-rated when the limit's rod changes (`applyThrottles`). */
  bytesIn: TokenBucket | null;
  bytesOut: TokenBucket | null;
}

/** Read at each use: the proxy passes the live values of its control rods. */
export interface ClusterThrottles {
  readonly clusterConnectsPerSecond: number;
  /** Per direction; 0 means unlimited. */
  readonly clusterBytesPerSecond: number;
}

/** A paced pipe may burst this much, or a tenth of a second's worth when that is more. */
const bandwidthBurstBytesMin = 64 * 1024;

/** The bucket for a bandwidth limit: null for none, else `existing` re-rated (its debt kept) or a new one. */
function bandwidthBucket(existing: TokenBucket | null, bytesPerSecond: number, nowMs: number): TokenBucket | null {
  if (bytesPerSecond <= 0) return null;
  const burst = Math.max(bytesPerSecond / 10, bandwidthBurstBytesMin);
  if (existing === null) return new TokenBucket(bytesPerSecond, burst, nowMs);
  if (existing.rate !== bytesPerSecond) existing.setRate(bytesPerSecond, burst, nowMs);
  return existing;
}

export class ClusterStates {
  private readonly states = new Map<string, ClusterState>();

  constructor(
    private readonly log: Logger,
    private readonly throttles: ClusterThrottles,
    private readonly metrics: ProxyMetrics,
    /** Whether the route table still has the cluster. */
    private readonly isRouted: (cluster: string) => boolean,
  ) {}

  get size(): number {
    return this.states.size;
  }

  /** The cluster's state, made on first use. */
  get(cluster: string): ClusterState {
    const existing = this.states.get(cluster);
    if (existing !== undefined) return existing;
    const { clusterBytesPerSecond, clusterConnectsPerSecond } = this.throttles;
    const now = performance.now();
    const state = {
      connections: 0,
      bytesPending: { in: 0, out: 0 },
      connects: new TokenBucket(clusterConnectsPerSecond, clusterConnectsPerSecond, now),
      bytesIn: bandwidthBucket(null, clusterBytesPerSecond, now),
      bytesOut: bandwidthBucket(null, clusterBytesPerSecond, now),
    };
    this.states.set(cluster, state);
    return state;
  }

  /**
   * After a throttle's rod changed: every cluster's buckets take the new rates, so running
   * transfers relayed in JavaScript are paced at the new rate from their next chunk. (A transfer
   * the native relay took while the cluster had no limit stays there, unpaced, until it ends.)
   */
  applyThrottles(): void {
    const { clusterBytesPerSecond, clusterConnectsPerSecond } = this.throttles;
    const now = performance.now();
    for (const state of this.states.values()) {
      if (state.connects.rate !== clusterConnectsPerSecond) state.connects.setRate(clusterConnectsPerSecond, clusterConnectsPerSecond, now);
      state.bytesIn = bandwidthBucket(state.bytesIn, clusterBytesPerSecond, now);
      state.bytesOut = bandwidthBucket(state.bytesOut, clusterBytesPerSecond, now);
    }
  }

  /** Counts `client` as one of the cluster's connections until it closes. */
  hold(cluster: string, kind: EndpointKind, client: Socket): ClusterState {
    const state = this.get(cluster);
    state.connections += 1;
    this.metrics.connections.labels(cluster, kind).inc();
    this.metrics.connectionsTotal.labels(cluster, kind).inc();
    client.once(
      'close',
      guarded(this.log, 'counting a closed connection', [client], () => {
        state.connections -= 1;
        this.metrics.connections.labels(cluster, kind).dec();
        this.prune(cluster);
      }),
    );
    return state;
  }

  /** Drops the cluster's state if it has no connection and no route any more. */
  prune(cluster: string): void {
    const state = this.states.get(cluster);
    if (state === undefined || state.connections > 0 || this.isRouted(cluster)) return;
    this.states.delete(cluster);
    this.metrics.forgetCluster(cluster);
  }

  /** After a change of the routes: every cluster that has gone and holds no connection. */
  pruneAll(): void {
    for (const cluster of [...this.states.keys()]) this.prune(cluster);
  }

  /** Moves the byte counts gathered on the data path into the metrics; called before each scrape. */
  flushBytes(): void {
    for (const [cluster, state] of this.states) {
      for (const direction of ['in', 'out'] as const) {
        if (state.bytesPending[direction] === 0) continue;
        this.metrics.bytes.labels(cluster, direction).inc(state.bytesPending[direction]);
        state.bytesPending[direction] = 0;
      }
    }
  }
}
