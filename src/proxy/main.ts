import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { embeddedStoreUrl } from '../store/embedded.js';
import { openPool } from '../store/pool.js';
import { RouteTable } from './routes.js';
import { ProxyServer } from './server.js';

/** The proxy process: its own pool of two store connections for routes, and the two listeners. */
const proxyStorePoolSize = 2;
export const routesSnapshotFile = 'routes.json';

export interface RunningProxy {
  stop(): Promise<void>;
}

export async function startProxy(config: Config, log: Logger): Promise<RunningProxy> {
  const storeUrl = config.storeUrl ?? (await embeddedStoreUrl(config.home));
  if (storeUrl === null) throw new Error(`no cell store known for ${config.home}: run \`cellar up\` first, or set CELLAR_STORE_URL`);
  const pool = openPool(storeUrl, proxyStorePoolSize);
  const routes = new RouteTable(pool, join(config.home, routesSnapshotFile), log);
  await routes.start();
  const server = new ProxyServer({ host: '127.0.0.1', readWritePort: config.proxyReadWritePort, readOnlyPort: config.proxyReadOnlyPort, routes, log });
  try {
    await server.start();
  } catch (error) {
    routes.stop();
    await pool.end();
    throw error;
  }
  log.info({ readWrite: config.proxyReadWritePort, readOnly: config.proxyReadOnlyPort, routes: routes.size }, 'proxy listening');
  return {
    async stop() {
      routes.stop();
      await server.stop();
      await pool.end();
    },
  };
}
