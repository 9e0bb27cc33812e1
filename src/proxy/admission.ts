import type { Socket } from 'node:net';
import { isPlatformRole } from '../lib/roles.js';
import type { ClusterState, ClusterStates } from './cluster-state.js';
import { refuse, sleep } from './connection.js';
import type { ProxyMetrics, RefusalReason } from './metrics.js';
import type { StartupPacket } from './negotiation.js';
import { type SqlState, buildStartupPacket, parseStartupParameters, sqlStates } from './protocol.js';
import type { EndpointKind, ProxyRoutes, Resolution, Target } from './routes.js';

/**
 * Admission: from a startup packet to a target the client may connect to, or a refusal with the
 * right SQLSTATE. The routing key, the proxy's and the cluster's connection limits, the
 * connection-rate bucket, and the bounded wait on a paused or unavailable route. Changes when
 * routing or a throttle does.
 */

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

/** Connections the whole proxy holds at once; past it a client gets 53300. */
export const connectionsMax = 10_000;
export const routeWaitPollMs = 25;
/** Tries at the connection-rate bucket before the client is refused (each waits for the next token, within the deadline). */
const connectTokenAttemptsMax = 3;

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

/** A client let in: where to connect, what to send first, and until when it may still wait. */
export interface Admitted {
  readonly target: Target;
  readonly state: ClusterState;
  /** The client's startup packet with the routing key taken out. */
  readonly startupPacket: Buffer;
  readonly early: Buffer;
  readonly deadlineMs: number;
}

export interface AdmissionOptions {
  readonly routes: ProxyRoutes;
  readonly limits: ProxyLimits;
  readonly metrics: ProxyMetrics;
  readonly clusters: ClusterStates;
  /** Sockets the proxy holds now. */
  readonly connectionCount: () => number;
}

export class Admission {
  constructor(private readonly options: AdmissionOptions) {}

  /** The client's target, or null when it was refused (it has had its ErrorResponse). */
  async admit(client: Socket, kind: EndpointKind, startup: StartupPacket): Promise<Admitted | null> {
    const { limits, clusters } = this.options;
    const parameters = parseStartupParameters(startup.body);
    if (typeof parameters === 'string') return this.refuse(client, '', 'protocol', sqlStates.protocolViolation, `invalid startup packet: ${parameters}`);
    const key = routingKey(parameters, startup.sniCluster);
    if (key === null) {
      return this.refuse(client, '', 'no_cluster', sqlStates.invalidCatalogName, 'no cluster named: connect as user ROLE.CLUSTER, to host CLUSTER.<domain> with TLS, or pass options=-c cluster=CLUSTER');
    }
    const role = key.parameters.get('user') ?? '';
    if (isPlatformRole(role)) {
      return this.refuse(client, '', 'reserved_role', sqlStates.invalidAuthorizationSpecification, `role "${role}" is reserved for the platform and cannot connect through the proxy`);
    }
    if (this.options.connectionCount() > connectionsMax) return this.refuse(client, '', 'proxy_full', sqlStates.tooManyConnections, 'the proxy has too many connections');
    const cluster = key.cluster;
    const deadlineMs = performance.now() + limits.waitMsMax;
    const resolution = await this.resolveWaiting(client, cluster, kind, deadlineMs);
    if ('unknown' in resolution) return this.refuse(client, '', 'unknown_cluster', sqlStates.invalidCatalogName, `cluster "${cluster}" does not exist`);
    if ('paused' in resolution) {
      return this.refuse(client, cluster, 'paused', sqlStates.cannotConnectNow, `cluster "${cluster}" is paused (a switchover may be under way); gave up after ${limits.waitMsMax} ms`);
    }
    if ('unavailable' in resolution) return this.refuse(client, cluster, 'unavailable', sqlStates.cannotConnectNow, resolution.unavailable);
    if ('locked' in resolution) return this.refuse(client, cluster, 'locked', sqlStates.diskFull, resolution.locked);
    const state = clusters.get(cluster);
    if (state.connections >= limits.clusterConnectionsMax) {
      this.options.metrics.throttleEvents.labels(cluster, 'connections').inc();
      return this.refuse(client, cluster, 'throttled', sqlStates.tooManyConnections, `too many connections for cluster "${cluster}" (limit ${limits.clusterConnectionsMax})`);
    }
    if (!(await this.takeConnectToken(state, cluster, deadlineMs)) || client.destroyed) {
      return this.refuse(client, cluster, 'throttled', sqlStates.tooManyConnections, `new connections to cluster "${cluster}" exceed ${limits.clusterConnectsPerSecond} per second`);
    }
    // The state held, not the one the checks read: a route dropped during the wait may have pruned that one.
    const held = clusters.hold(cluster, kind, client);
    return { target: resolution.target, state: held, startupPacket: buildStartupPacket(key.parameters), early: startup.early, deadlineMs };
  }

  /** The route, waiting (bounded by the deadline) while it is paused (switchover) or has no serving instance for now (starting, failing over). */
  private async resolveWaiting(client: Socket, cluster: string, kind: EndpointKind, deadlineMs: number): Promise<Resolution> {
    const { routes } = this.options;
    let resolution = routes.resolve(cluster, kind);
    if ('unknown' in resolution) {
      // Perhaps created since the last poll: look once more before saying it does not exist.
      await routes.refreshNow();
      resolution = routes.resolve(cluster, kind);
    }
    while (('paused' in resolution || 'unavailable' in resolution) && performance.now() < deadlineMs && !client.destroyed) {
      await sleep(routeWaitPollMs);
      resolution = routes.resolve(cluster, kind);
    }
    return resolution;
  }

  /** Waits (bounded by the deadline) for the cluster's connection-rate bucket. */
  private async takeConnectToken(state: ClusterState, cluster: string, deadlineMs: number): Promise<boolean> {
    for (let attempt = 0; attempt < connectTokenAttemptsMax; attempt += 1) {
      if (state.connects.tryTake(performance.now())) return true;
      if (attempt === 0) this.options.metrics.throttleEvents.labels(cluster, 'connect_rate').inc();
      const waitMs = state.connects.waitMs(performance.now());
      if (performance.now() + waitMs > deadlineMs) return false;
      await sleep(waitMs);
    }
    return false;
  }

  /** Answers the client with an ErrorResponse and counts the refusal; `cluster` is empty when the name is not a known cluster. */
  refuse(client: Socket, cluster: string, reason: RefusalReason, sqlState: SqlState, message: string): null {
    this.options.metrics.routingErrors.labels(cluster, reason).inc();
    refuse(client, sqlState, message);
    return null;
  }
}
