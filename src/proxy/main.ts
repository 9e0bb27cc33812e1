import type { Server } from 'node:http';
import { join } from 'node:path';
import { createSecureContext } from 'node:tls';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { embeddedStoreUrl } from '../store/embedded.js';
import { openPool } from '../store/pool.js';
import { ProxyMetrics } from './metrics.js';
import { NativeRelay } from './native-relay.js';
import { RouteTable } from './routes.js';
import { type ProxyTls, ProxyServer } from './server.js';
import { type KeyPair, SecureContextCache, ensureCellCa, ensureHostCertificate } from './tls.js';

/** The proxy process: its own pool of store connections (one held for LISTEN, polls), and the two listeners. */
const proxyStorePoolSize = 3;
export const routesSnapshotFile = 'routes.json';

export interface RunningProxy {
  stop(): Promise<void>;
}

/** The cell CA (made on first start, `$CELLAR_HOME/ca.crt`) and certificates for `*.<domain>`. */
async function proxyTls(config: Config): Promise<{ tls: ProxyTls; fallback: KeyPair }> {
  const ca = await ensureCellCa(config.home);
  const fallback = await ensureHostCertificate(ca, config.domain);
  return { tls: { domain: config.domain, contexts: new SecureContextCache(ca), defaultContext: createSecureContext(fallback) }, fallback };
}

export async function startProxy(config: Config, log: Logger): Promise<RunningProxy> {
  const storeUrl = config.storeUrl ?? (await embeddedStoreUrl(config.home));
  if (storeUrl === null) throw new Error(`no cell store known for ${config.home}: run \`cellar up\` first, or set CELLAR_STORE_URL`);
  const pool = openPool(storeUrl, proxyStorePoolSize);
  const routes = new RouteTable(pool, join(config.home, routesSnapshotFile), log);
  await routes.start();
  const metrics = new ProxyMetrics();
  const relay = config.proxyNativeRelay ? NativeRelay.load(log) : null;
  relay?.start();
  const { tls, fallback } = await proxyTls(config);
  relay?.configureTls(fallback.cert, fallback.key);

  const server = new ProxyServer({
    host: '127.0.0.1',
    readWritePort: config.proxyReadWritePort,
    readOnlyPort: config.proxyReadOnlyPort,
    routes,
    log,
    tls,
    metrics,
    relay,
    limits: {
      clusterConnectionsMax: config.proxyClusterConnectionsMax,
      clusterConnectsPerSecond: config.proxyClusterConnectsPerSecond,
      clusterBytesPerSecond: config.proxyClusterBytesPerSecond,
      waitMsMax: config.proxyWaitMsMax,
      startupMsMax: config.proxyStartupMsMax,
    },
  });
  let admin: Server | null = null;
  try {
    await server.start();
    admin = await metrics.listen('127.0.0.1', config.proxyAdminPort, () => {
      server.flushMetrics();
      metrics.routes.set(routes.size);
      metrics.storeReachable.set(routes.storeReachable ? 1 : 0);
    });
  } catch (error) {
    routes.stop();
    relay?.stop();
    await server.stop();
    await pool.end();
    throw error;
  }
  log.info({ readWrite: config.proxyReadWritePort, readOnly: config.proxyReadOnlyPort, admin: config.proxyAdminPort, routes: routes.size, nativeRelay: relay !== null }, 'proxy listening');
  return {
    async stop() {
      routes.stop();
      relay?.stop();
      await server.stop();
      await new Promise((resolve) => admin?.close(resolve));
      await pool.end();
    },
  };
}
