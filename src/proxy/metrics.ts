import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Registry } from 'prom-client';

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

  /** `beforeScrape` sets the gauges that are read from elsewhere (route count, store reachability). */
  listen(host: string, port: number, beforeScrape: () => void): Promise<Server> {
    const server = createServer((request, response) => {
      if (request.url !== '/metrics') {
        response.writeHead(404).end('see /metrics\n');
        return;
      }
      beforeScrape();
      this.registry.metrics().then(
        (text) => response.writeHead(200, { 'content-type': this.registry.contentType }).end(text),
        () => response.writeHead(500).end(),
      );
    });
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port }, () => resolve(server));
    });
  }
}
