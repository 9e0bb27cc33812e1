import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { constants } from 'node:fs';
import { link, open, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import { Counter, Gauge, Registry } from 'prom-client';
import { CellarError } from '../lib/errors.js';

/**
 * The metrics name every org's clusters, so they are the operator's alone: a scrape must carry
 * the token in `$CELLAR_HOME/proxy-metrics.token` (readable by the home's owner only).
 */
export const metricsTokenFileName = 'proxy-metrics.token';
const metricsTokenBytes = 32;
/** base64url of `metricsTokenBytes`. */
const metricsTokenPattern = /^[A-Za-z0-9_-]{43}$/;
/** Enough for the token and a newline; a bigger file is not one Cellar wrote. */
const metricsTokenFileBytesMax = 256;

/** The metrics token, made the first time; afterwards (or when another process won the race) the one on disk. */
export async function ensureMetricsToken(home: string): Promise<string> {
  const path = join(home, metricsTokenFileName);
  const existing = await readMetricsToken(path);
  if (existing !== null) return existing;
  // Written in full under a private name, then linked: the token file never exists empty or half
  // written, and link() fails if it exists, so the first process wins and the others read its token.
  const temporary = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    // O_EXCL with mode 0600: created private (the umask can only narrow it), never through a link.
    const file = await open(temporary, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      await file.writeFile(`${randomBytes(metricsTokenBytes).toString('base64url')}\n`);
    } finally {
      await file.close();
    }
    await link(temporary, path).catch((error: unknown) => {
      if (!(error instanceof Error && (error as NodeJS.ErrnoException).code === 'EEXIST')) throw error;
    });
  } finally {
    await rm(temporary, { force: true });
  }
  const token = await readMetricsToken(path);
  if (token === null) throw new Error(`${path} is missing right after it was created`);
  return token;
}

/** The token in `path`, or null when there is no file; a file anyone else could read is refused, not used. */
async function readMetricsToken(path: string): Promise<string | null> {
  let file;
  try {
    file = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (error) {
    if (error instanceof Error && (error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
  try {
    const status = await file.stat();
    if (!status.isFile() || (status.mode & 0o077) !== 0 || status.size > metricsTokenFileBytesMax) {
      throw new Error(`${path} must be a file of at most ${metricsTokenFileBytesMax} bytes readable by its owner only (mode 0600); delete it and restart the proxy to make a new token`);
    }
    const token = (await file.readFile('utf8')).trim();
    if (!metricsTokenPattern.test(token)) throw new Error(`${path} does not hold a metrics token; delete it and restart the proxy to make a new one`);
    return token;
  } finally {
    await file.close();
  }
}

/** Whether the request carries `Authorization: Bearer <token>`, compared in constant time. */
export function hasMetricsToken(request: IncomingMessage, token: string): boolean {
  const match = /^Bearer +(\S+) *$/i.exec(request.headers.authorization ?? '');
  if (match?.[1] === undefined) return false;
  // Digests have one length, so the comparison time says nothing about the token's length or bytes.
  const digest = (text: string) => createHash('sha256').update(text).digest();
  return timingSafeEqual(digest(match[1]), digest(token));
}

function sendError(response: ServerResponse, error: CellarError, headers: Record<string, string> = {}): void {
  response.writeHead(error.status, { 'content-type': 'application/json', ...headers }).end(`${JSON.stringify({ error: error.toJSON() })}\n`);
}

/** Why a connection to a known cluster was refused (the `reason` of cellar_proxy_routing_errors_total with a cluster). */
export const clusterRefusalReasons = ['paused', 'unavailable', 'throttled', 'unreachable', 'locked'] as const;
export type ClusterRefusalReason = (typeof clusterRefusalReasons)[number];
/** Refusals before a cluster is known: counted with an empty cluster. */
export type RefusalReason = ClusterRefusalReason | 'protocol' | 'no_cluster' | 'reserved_role' | 'proxy_full' | 'unknown_cluster';
export const throttleKinds = ['connections', 'connect_rate', 'bandwidth'] as const;
export type ThrottleKind = (typeof throttleKinds)[number];
const endpointLabels = ['readWrite', 'readOnly'] as const;
const directionLabels = ['in', 'out'] as const;

/** The proxy's Prometheus metrics, served at /metrics on the admin port. */
export class ProxyMetrics {
  readonly registry = new Registry();
  readonly connections = new Gauge({ name: 'cellar_proxy_connections', help: 'Client connections open, per cluster and endpoint', labelNames: ['cluster', 'endpoint'], registers: [this.registry] });
  readonly connectionsTotal = new Counter({ name: 'cellar_proxy_connections_total', help: 'Client connections routed to a server', labelNames: ['cluster', 'endpoint'], registers: [this.registry] });
  readonly bytes = new Counter({ name: 'cellar_proxy_bytes_total', help: 'Bytes relayed after startup; direction in = client to server', labelNames: ['cluster', 'direction'], registers: [this.registry] });
  readonly nativeRelayed = new Counter({ name: 'cellar_proxy_native_relay_total', help: 'Connections handed to the native relay after startup (no bandwidth limit on the cluster)', labelNames: ['cluster'], registers: [this.registry] });
  /** `cluster` is empty when the name is not a known cluster, so unknown names cannot grow the label set. */
  readonly routingErrors = new Counter({ name: 'cellar_proxy_routing_errors_total', help: 'Connections refused before routing', labelNames: ['cluster', 'reason'], registers: [this.registry] });
  readonly throttleEvents = new Counter({ name: 'cellar_proxy_throttle_events_total', help: 'Connections refused or delayed, and transfers paused, by a throttle', labelNames: ['cluster', 'throttle'], registers: [this.registry] });
  readonly routes = new Gauge({ name: 'cellar_proxy_routes', help: 'Clusters in the cached route table', registers: [this.registry] });
  readonly storeReachable = new Gauge({ name: 'cellar_proxy_store_reachable', help: '1 if the last route poll reached the cell store', registers: [this.registry] });
  readonly rods = new Gauge({ name: 'cellar_proxy_rod', help: 'The value of each control rod the proxy reads, as it runs with it now', labelNames: ['rod'], registers: [this.registry] });

  /** Drops every series of a cluster that has gone (no route, no connection), so deleted clusters do not grow the registry. */
  forgetCluster(cluster: string): void {
    for (const endpoint of endpointLabels) {
      this.connections.remove(cluster, endpoint);
      this.connectionsTotal.remove(cluster, endpoint);
    }
    for (const direction of directionLabels) this.bytes.remove(cluster, direction);
    this.nativeRelayed.remove(cluster);
    for (const reason of clusterRefusalReasons) this.routingErrors.remove(cluster, reason);
    for (const throttle of throttleKinds) this.throttleEvents.remove(cluster, throttle);
  }

  /** How many series the registry holds for `cluster` (tests check that pruning drops them). */
  async seriesOf(cluster: string): Promise<number> {
    const metrics = await this.registry.getMetricsAsJSON();
    return metrics.reduce((count, metric) => count + metric.values.filter((value) => value.labels['cluster'] === cluster).length, 0);
  }

  /**
   * Serves GET /metrics to requests that carry `token`. `beforeScrape` sets the gauges that are
   * read from elsewhere (route count, store reachability).
   */
  listen(host: string, port: number, token: string, beforeScrape: () => void): Promise<Server> {
    const server = createServer((request, response) => {
      // Checked first: without the token a client learns nothing, not even which paths exist.
      if (!hasMetricsToken(request, token)) {
        sendError(response, new CellarError('CELLAR_E_UNAUTHENTICATED', `the proxy's metrics need Authorization: Bearer <the token in $CELLAR_HOME/${metricsTokenFileName}>`), {
          'www-authenticate': 'Bearer realm="cellar-proxy-metrics"',
        });
        return;
      }
      if (request.method !== 'GET' || request.url !== '/metrics') {
        sendError(response, new CellarError('CELLAR_E_NOT_FOUND', `${request.method ?? ''} ${request.url ?? ''}: the proxy's admin port serves GET /metrics only`));
        return;
      }
      try {
        beforeScrape();
      } catch {
        // A gauge that could not be read (the native relay's counts) must not take the proxy down with the scrape.
        return sendError(response, new CellarError('CELLAR_E_INTERNAL', 'the metrics could not be gathered'));
      }
      this.registry.metrics().then(
        (text) => response.writeHead(200, { 'content-type': this.registry.contentType }).end(text),
        () => sendError(response, new CellarError('CELLAR_E_INTERNAL', 'the metrics could not be rendered')),
      );
    });
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port }, () => resolve(server));
    });
  }
}
