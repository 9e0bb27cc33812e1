import { readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Command } from 'commander';
import { type Config, loadConfig } from '../config.js';
import { startControlPlane } from '../controlplane/controlplane.js';
import { resolveRunAs } from '../dataplane/local/osuser.js';
import { resolveDataDir } from '../dataplane/local/paths.js';
import { isAlive, stopServer, waitForExit } from '../dataplane/local/server.js';
import { makeLogger } from '../lib/log.js';
import { stopEmbeddedStore } from '../store/embedded.js';
import type { Output } from './output.js';

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

async function up(config: Config, out: Output, options: { api: boolean }): Promise<void> {
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

async function down(config: Config, out: Output): Promise<void> {
  const pid = await readPid(config.home);
  if (pid !== null) {
    process.kill(pid, 'SIGTERM');
    if (!(await waitForExit(pid, controlPlaneStopWaitMs))) process.kill(pid, 'SIGKILL');
    await rm(join(config.home, pidFileName), { force: true });
  }
  const dataDir = resolveDataDir(config, await resolveRunAs());
  const instancesDir = join(dataDir, 'instances');
  const instanceIds = await readdir(instancesDir).catch(() => [] as string[]);
  for (const id of instanceIds) await stopServer(join(instancesDir, id, 'pgdata'));
  if (config.storeUrl === null) await stopEmbeddedStore(dataDir);
  const result = { controlPlanePid: pid, instancesStopped: instanceIds.length, storeStopped: config.storeUrl === null };
  if (out.json) return out.result(result);
  out.line(`stopped: control plane ${pid === null ? '(not running)' : `pid ${pid}`}, ${instanceIds.length} instance(s)${result.storeStopped ? ', the embedded store' : ''}`);
}

export function registerHostCommands(program: Command, output: (json: boolean) => Output): void {
  program
    .command('up')
    .description('start the cell store (embedded unless CELLAR_STORE_URL is set), the engine and the API, in the foreground')
    .option('--no-api', 'run only the engine (another process serves the API)')
    .option('--json', 'print the start-up summary as JSON')
    .action(async (options: { api: boolean; json?: boolean }) => up(loadConfig(), output(options.json === true), { api: options.api }));

  program
    .command('down')
    .description('stop the control plane, every database server and the embedded store (data is kept)')
    .option('--json', 'print JSON')
    .action(async (options: { json?: boolean }) => down(loadConfig(), output(options.json === true)));
}
