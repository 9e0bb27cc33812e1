import { spawn } from 'node:child_process';
import { open, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Config } from '../config.js';
import { isRoot, resolveRunAs } from '../postgres/osuser.js';
import { resolveDataDir } from '../postgres/paths.js';
import { isAlive, serverPid, stopServer, waitForExit } from '../postgres/server.js';
import { untilSignal } from '../lib/signals.js';
import { proxyPidFileName } from '../proxy/pid-file.js';
import { stopEmbeddedStore } from '../store/embedded.js';
import type { Output } from '../lib/output.js';

/**
 * Host commands: `up` runs the control plane in the foreground; `down` stops it and every server
 * of this Cellar on this host. They act on local processes, so they do not go through the API.
 */

const pidFileName = 'cellar.pid';
const proxyLogFileName = 'proxy.log';
const controlPlaneStopWaitMs = 30_000;
const proxyStartWaitMs = 20_000;
const proxyStartPollMs = 25;
// The proxy's own entry: it loads neither the API, the engine, the machines nor the local driver.
const cellarProxyBin = fileURLToPath(new URL('../bin/cellar-proxy.js', import.meta.url));

async function readPid(home: string, fileName: string = pidFileName): Promise<number | null> {
  const text = await readFile(join(home, fileName), 'utf8').catch(() => '');
  const pid = Number(text.trim());
  return Number.isInteger(pid) && pid > 0 && isAlive(pid) ? pid : null;
}

/**
 * Makes sure a proxy serves this Cellar: starts the proxy's entry detached (it outlives `up`, like
 * the databases) and waits until it has written its pid file, or fails with its log.
 */
async function ensureProxy(config: Config): Promise<number> {
  const existing = await readPid(config.home, proxyPidFileName);
  if (existing !== null) return existing;
  const logFile = join(config.home, proxyLogFileName);
  const log = await open(logFile, 'a', 0o600);
  let child;
  try {
    child = spawn(process.execPath, [cellarProxyBin], { detached: true, stdio: ['ignore', log.fd, log.fd], env: process.env });
  } finally {
    await log.close();
  }
  child.unref();
  const deadline = Date.now() + proxyStartWaitMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) break;
    if ((await readPid(config.home, proxyPidFileName)) === child.pid) return child.pid;
    await new Promise((resolve) => setTimeout(resolve, proxyStartPollMs));
  }
  if (child.exitCode === null && child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
  const tail = (await readFile(logFile, 'utf8').catch(() => '')).split('\n').slice(-5).join('\n');
  throw new Error(`the proxy did not start (see ${logFile}):\n${tail}`);
}

async function stopPid(pid: number): Promise<void> {
  process.kill(pid, 'SIGTERM');
  if (!(await waitForExit(pid, controlPlaneStopWaitMs))) process.kill(pid, 'SIGKILL');
}

export async function up(config: Config, out: Output, options: { api: boolean }): Promise<void> {
  const running = await readPid(config.home);
  if (running !== null && running !== process.pid) {
    throw new Error(`a Cellar control plane already runs for ${config.home} (pid ${running}); stop it with \`cellar down\``);
  }
  // Loaded here, not with this module: `cellar down` needs neither the control plane nor the logger.
  const [{ startControlPlane }, { makeLogger }] = await Promise.all([import('./controlplane.js'), import('../lib/log.js')]);
  const log = makeLogger(config.logLevel, process.stderr);
  const controlPlane = await startControlPlane(config, log, { api: options.api, engine: true });
  // Armed before the pid file says we run: a SIGTERM sent on seeing it must stop us cleanly.
  const signalled = untilSignal();
  await writeFile(join(config.home, pidFileName), `${process.pid}\n`);
  let proxyPid: number;
  try {
    proxyPid = await ensureProxy(config);
  } catch (error) {
    await controlPlane.stop();
    await rm(join(config.home, pidFileName), { force: true });
    throw error;
  }
  const proxyEndpoints = { readWrite: `127.0.0.1:${config.proxyReadWritePort}`, readOnly: `127.0.0.1:${config.proxyReadOnlyPort}`, pid: proxyPid };
  // Without root every server runs as the invoking user, so one cluster could reach another's files.
  const isolation = isRoot() ? 'multi-tenant' : 'single-tenant';
  const summary = { home: config.home, api: controlPlane.apiUrl, proxy: proxyEndpoints, credentials: join(config.home, 'credentials'), pid: process.pid, isolation };
  if (out.json) out.result(summary);
  else {
    out.line(`Cellar is up (pid ${process.pid}).`);
    if (controlPlane.apiUrl) out.line(`  API          ${controlPlane.apiUrl}   (OpenAPI: ${controlPlane.apiUrl}/openapi.json)`);
    out.line(`  proxy        read-write ${proxyEndpoints.readWrite}, read-only ${proxyEndpoints.readOnly} (pid ${proxyPid})`);
    out.line(`  credentials  ${summary.credentials}`);
    out.line(isRoot()
      ? '  isolation    multi-tenant: each cluster runs as its own OS user'
      : '  isolation    SINGLE-TENANT: not root, so every cluster runs as this user; run as root to isolate tenants');
    out.line('  Try: npx cellar clusters create app --wait');
    out.line('Ctrl-C stops the control plane; the proxy and the databases keep running until `cellar down`.');
  }
  await signalled;
  await controlPlane.stop();
  await rm(join(config.home, pidFileName), { force: true });
  out.progress('Cellar control plane stopped; databases are still running.');
}

export async function down(config: Config, out: Output): Promise<void> {
  const pid = await readPid(config.home);
  if (pid !== null) await stopPid(pid);
  await rm(join(config.home, pidFileName), { force: true });
  const proxyPid = await readPid(config.home, proxyPidFileName);
  if (proxyPid !== null) await stopPid(proxyPid);
  await rm(join(config.home, proxyPidFileName), { force: true });
  const dataDir = resolveDataDir(config, await resolveRunAs());
  const instancesDir = join(dataDir, 'instances');
  let instancesStopped = 0;
  for (const id of await readdir(instancesDir).catch(() => [] as string[])) {
    const pgdata = join(instancesDir, id, 'pgdata');
    if ((await serverPid(pgdata)) === undefined) continue;
    await stopServer(pgdata);
    instancesStopped += 1;
  }
  // A restore check interrupted by the control plane's stop may have left its scratch server running.
  const scratchDir = join(dataDir, 'scratch');
  for (const id of await readdir(scratchDir).catch(() => [] as string[])) {
    await stopServer(join(scratchDir, id, 'pgdata'), 'immediate');
    await rm(join(scratchDir, id), { recursive: true, force: true });
  }
  const storeStopped = config.storeUrl === null && (await stopEmbeddedStore(dataDir));
  const result = { controlPlanePid: pid, proxyPid, instancesStopped, storeStopped };
  if (out.json) return out.result(result);
  out.line(`stopped: control plane ${pid === null ? '(not running)' : `pid ${pid}`}, proxy ${proxyPid === null ? '(not running)' : `pid ${proxyPid}`}, ${instancesStopped} instance(s)${result.storeStopped ? ', the embedded store' : ''}`);
}
