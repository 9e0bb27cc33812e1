import type { Server } from 'node:http';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { makeLogger } from '../lib/log.js';
import type { Output } from '../lib/output.js';
import { untilSignal } from '../lib/signals.js';
import { embeddedStoreUrl } from '../store/embedded.js';
import { openPool } from '../store/pool.js';
import { type RodReader, RodValues, localCell, processRodDefaults } from '../store/rods.js';
import type { ProxyLimits } from './admission.js';
import { rodCatalogue } from '../lib/rod-catalogue.js';
import { FlagSnapshotReader } from '../store/flag-snapshot.js';
import { processFlagCatalogue } from '../config.js';
import { ProxyMetrics, ensureMetricsToken } from './metrics.js';
import { NativeRelay } from './native-relay.js';
import { RouteTable } from './routes.js';
import { ProxyServer } from './server.js';
import { dayMs, ensureCellCa } from '../pki/ca.js';
import { ProxyCertificate } from './tls.js';
import { proxyPidFileName } from './pid-file.js';

/** The proxy process: its own pool of store connections (two held for LISTEN, routes and rods, a third while it reads its flags at start; polls), and the two listeners. */
const proxyStorePoolSize = 5;

/** The proxy's throttles, the rods among them read live at each use (docs/CONTROLS.md "Rods"). */
function liveLimits(config: Config, rods: RodReader): ProxyLimits {
  return {
    get clusterConnectionsMax() {
      return rods.value('proxy.cluster-connections-max');
    },
    get clusterConnectsPerSecond() {
      return rods.value('proxy.cluster-connects-per-second');
    },
    get clusterBytesPerSecond() {
      return rods.value('proxy.cluster-bytes-per-second');
    },
    waitMsMax: config.proxyWaitMsMax,
    startupMsMax: config.proxyStartupMsMax,
  };
}
export const routesSnapshotFile = 'routes.json';

export interface RunningProxy {
  stop(): Promise<void>;
}

/**
 * The cell CA (made on first start, `$CELLAR_HOME/ca.crt`) and the proxy's one certificate,
 * `*.<domain>`, which the native relay presents too and gets again at each renewal.
 */
async function proxyCertificate(config: Config, log: Logger, relay: NativeRelay | null): Promise<ProxyCertificate> {
  const ca = await ensureCellCa(config.home);
  // Earlier versions cached a certificate per server name here; nothing reads them any more.
  await rm(join(ca.dir, 'hosts'), { recursive: true, force: true });
  const certificate = await ProxyCertificate.start(ca, config.domain, {
    renewBeforeMs: config.proxyCertificateRenewDays * dayMs,
    checkIntervalMs: config.proxyCertificateCheckMs,
    onRenewed: (pair) => {
      relay?.configureTls(pair.cert, pair.key);
      log.info({ domain: config.domain }, 'proxy certificate renewed');
    },
    onRenewalFailed: (error) => log.warn({ err: error instanceof Error ? error.message : String(error) }, 'proxy certificate renewal failed; the current one still serves'),
  });
  relay?.configureTls(certificate.pair.cert, certificate.pair.key);
  return certificate;
}

export async function startProxy(config: Config, log: Logger): Promise<RunningProxy> {
  const storeUrl = config.storeUrl ?? (await embeddedStoreUrl(config.home));
  if (storeUrl === null) throw new Error(`no cell store known for ${config.home}: run \`cellar up\` first, or set CELLAR_STORE_URL`);
  const metricsToken = await ensureMetricsToken(config.home);
  const pool = openPool(storeUrl, proxyStorePoolSize);
  // Read at start, for the whole cell (a global or cell rule; CELLAR_PROXY_NATIVE_RELAY without one, or without the store).
  const flags = new FlagSnapshotReader({ pool, log, catalogue: processFlagCatalogue(config) });
  await flags.start();
  const nativeRelay = flags.evaluate('proxy-native-relay', {});
  await flags.stop();
  const relay = nativeRelay.value === true ? NativeRelay.load(log) : null;
  let certificate: ProxyCertificate;
  try {
    certificate = await proxyCertificate(config, log, relay);
  } catch (error) {
    await pool.end();
    throw error;
  }
  const routes = new RouteTable(pool, join(config.home, routesSnapshotFile), log);
  await routes.start();
  // Its own LISTEN connection, not one of the pool's; with the store away the last values stand.
  const rods = new RodValues({ pool, defaults: processRodDefaults(config), cell: localCell, log: log.child({ component: 'rods' }) });
  await rods.start();
  const metrics = new ProxyMetrics();
  relay?.start();

  const server = new ProxyServer({
    host: '127.0.0.1',
    readWritePort: config.proxyReadWritePort,
    readOnlyPort: config.proxyReadOnlyPort,
    routes,
    log,
    tls: { domain: config.domain, secureContext: () => certificate.secureContext },
    metrics,
    relay,
    limits: liveLimits(config, rods),
  });
  rods.onChange(() => server.applyThrottles());
  let admin: Server | null = null;
  try {
    await server.start();
    admin = await metrics.listen('127.0.0.1', config.proxyAdminPort, metricsToken, () => {
      server.flushMetrics();
      metrics.routes.set(routes.size);
      metrics.storeReachable.set(routes.storeReachable ? 1 : 0);
      for (const rod of rodCatalogue) if (rod.readBy === 'proxy') metrics.rods.labels(rod.name).set(rods.value(rod.name));
    });
  } catch (error) {
    await certificate.stop();
    routes.stop();
    await rods.stop();
    relay?.stop();
    await server.stop();
    await pool.end();
    throw error;
  }
  log.info({ readWrite: config.proxyReadWritePort, readOnly: config.proxyReadOnlyPort, admin: config.proxyAdminPort, routes: routes.size, nativeRelay: relay !== null, nativeRelayDecidedBy: nativeRelay.why }, 'proxy listening');
  return {
    async stop() {
      await certificate.stop();
      routes.stop();
      await rods.stop();
      relay?.stop();
      await server.stop();
      await new Promise((resolve) => admin?.close(resolve));
      await pool.end();
    },
  };
}

/** `cellar proxy` in the foreground: serves until SIGINT or SIGTERM. */
export async function serveProxy(config: Config, out: Output): Promise<void> {
  const log = makeLogger(config.logLevel, process.stderr);
  const running = await startProxy(config, log);
  // Armed before the pid file says we serve: a SIGTERM sent on seeing it must stop us cleanly.
  const signalled = untilSignal();
  await writeFile(join(config.home, proxyPidFileName), `${process.pid}\n`);
  out.progress(`Cellar proxy is up (pid ${process.pid}): read-write 127.0.0.1:${config.proxyReadWritePort}, read-only 127.0.0.1:${config.proxyReadOnlyPort}`);
  await signalled;
  await running.stop();
  await rm(join(config.home, proxyPidFileName), { force: true });
}
