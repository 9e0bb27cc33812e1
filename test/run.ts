import { spawn } from 'node:child_process';
import { readdir, rm } from 'node:fs/promises';
import { constants } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeTempDir } from './helpers/cellar.js';
import { portLocksDir } from './helpers/ports.js';
import { preparedRoot } from './helpers/prepared.js';
import { type SharedStore, sharedStoreVariable, startSharedStore } from './helpers/shared-store.js';

/**
 * `npm test`: starts the run's shared store server (test/helpers/shared-store.ts), runs the test
 * files four at a time with Node's test runner, then stops the server and removes what the run
 * prepared (the store, the prepared data directory, the port locks), whatever the outcome. Files
 * named on the command line run instead of all of them.
 */

const concurrency = 4;
const here = dirname(fileURLToPath(import.meta.url));

const named = process.argv.slice(2);
const files = named.length > 0 ? named : (await readdir(here)).filter((name) => name.endsWith('.test.js')).sort().map((name) => join(here, name));

const root = await makeTempDir('cellar-test-store-');
let store: SharedStore | undefined;
let status = 1;
try {
  store = await startSharedStore(root);
  status = await runFiles(files, { ...process.env, [sharedStoreVariable]: store.adminUrl });
} catch (error) {
  process.stderr.write(`test run: ${(error as Error).stack ?? String(error)}\n`);
} finally {
  await store?.stop().catch((error: unknown) => process.stderr.write(`test run: stopping the shared store: ${String(error)}\n`));
  for (const path of [root, preparedRoot, portLocksDir]) await rm(path, { recursive: true, force: true });
}
process.exit(status);

/** The test runner as a child; Ctrl-C and SIGTERM reach it and the clean-up above still runs. */
function runFiles(paths: readonly string[], env: NodeJS.ProcessEnv): Promise<number> {
  const child = spawn(process.execPath, ['--test', `--test-concurrency=${concurrency}`, ...paths], { env, stdio: 'inherit' });
  const forward = (signal: NodeJS.Signals) => child.kill(signal);
  process.on('SIGINT', forward);
  process.on('SIGTERM', forward);
  return new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      process.off('SIGINT', forward);
      process.off('SIGTERM', forward);
      resolve(code ?? 128 + (signal === null ? 0 : constants.signals[signal]));
    });
    child.on('error', (error) => {
      process.stderr.write(`test run: ${error.message}\n`);
      resolve(1);
    });
  });
}
