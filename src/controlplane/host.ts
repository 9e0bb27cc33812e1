import { readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Config } from '../config.js';
import { startControlPlane } from './controlplane.js';
import { resolveRunAs } from '../dataplane/local/osuser.js';
import { resolveDataDir } from '../dataplane/local/paths.js';
import { isAlive, serverPid, stopServer, waitForExit } from '../dataplane/local/server.js';
import { makeLogger } from '../lib/log.js';
import { stopEmbeddedStore } from '../store/embedded.js';
import type { Output } from '../cli/output.js';

/**
 * Host commands: `up` runs the control plane in the foreground; `down` stops it and every server
 * of this Cellar on this host. They act on local processes, so they do not go through the API.
 */

const pidFileName = 'cellar.pid';
const controlPlaneStopWaitMs = 30_000;

async function readPid(home: string): Promise<number | null> {
  const text = await readFile(join(home, pidFileName), 'utf8').catch(() => '');
  const pid = Number(text.trim());
  return Number.isInteger(pid) && pid > 0 && isAlive(pid) ? pid : null;
}

export async function up(config: Config, out: Output, options: { api: boolean }): Promise<void> {
  const running = await readPid(config.home);
  if (running !== null && running !== process.pid) {
    throw new Error(`a Cellar control plane already runs for ${config.home} (pid ${running}); stop it with \`cellar down\``);
  }
  const log = makeLogger(config.logLevel, process.stderr);
  const controlPlane = await startControlPlane(config, log, { api: options.api, engine: true });
  await writeFile(join(config.home, pidFileName), `${process.pid}\n`);
  const summary = { home: config.home, api: controlPlane.apiUrl, credentials: join(config.home, 'credentials'), pid: process.pid };
  if (out.json) out.result(summary);
  else {
    out.line(`Cellar is up (pid ${process.pid}).`);
    if (controlPlane.apiUrl) out.line(`  API          ${controlPlane.apiUrl}   (OpenAPI: ${controlPlane.apiUrl}/openapi.json)`);
    out.line(`  credentials  ${summary.credentials}`);
    out.line('  Try: npx cellar clusters create app --wait');
    out.line('Ctrl-C stops the control plane; databases keep running until `cellar down`.');
  }
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await controlPlane.stop();
  await rm(join(config.home, pidFileName), { force: true });
  out.progress('Cellar control plane stopped; databases are still running.');
}

export async function down(config: Config, out: Output): Promise<void> {
  const pid = await readPid(config.home);
  if (pid !== null) {
    process.kill(pid, 'SIGTERM');
    if (!(await waitForExit(pid, controlPlaneStopWaitMs))) process.kill(pid, 'SIGKILL');
    await rm(join(config.home, pidFileName), { force: true });
  }
  const dataDir = resolveDataDir(config, await resolveRunAs());
  const instancesDir = join(dataDir, 'instances');
  let instancesStopped = 0;
  for (const id of await readdir(instancesDir).catch(() => [] as string[])) {
    const pgdata = join(instancesDir, id, 'pgdata');
    if ((await serverPid(pgdata)) === undefined) continue;
    await stopServer(pgdata);
    instancesStopped += 1;
  }
  const storeStopped = config.storeUrl === null && (await stopEmbeddedStore(dataDir));
  const result = { controlPlanePid: pid, instancesStopped, storeStopped };
  if (out.json) return out.result(result);
  out.line(`stopped: control plane ${pid === null ? '(not running)' : `pid ${pid}`}, ${instancesStopped} instance(s)${result.storeStopped ? ', the embedded store' : ''}`);
}
