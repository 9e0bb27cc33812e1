import { spawn } from 'node:child_process';
import { chmod, mkdtemp, readdir, rm, rmdir } from 'node:fs/promises';
import { constants, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../src/postgres/osuser.js';

/**
 * `npm test`. Gives the run a directory of its own, on a tmpfs mounted for it when it may mount
 * one (root, as in CI), which becomes every test process's TMPDIR; starts the run's shared store
 * server (test/helpers/shared-store.ts); runs the test files four at a time with Node's test
 * runner, the longest first; then stops the server and removes the directory (unmounting it),
 * whatever the outcome.
 * Files named on the command line run instead of all of them.
 *
 * The tmpfs: the suite writes a data directory for every instance it makes (a template copy or a
 * base backup, ~46 MB and ~1,300 files each) and archives their WAL; on this machine's disk
 * the kernel's side of those writes was ~40 % of the suite's CPU. Its size is a cap, not memory
 * taken: what the tests leave at once is what it holds. Placement counts allocations against the
 * free space the data directory's filesystem reports, so the cap is set like a disk's, not like
 * the memory's.
 */

const concurrency = 4;
const tmpfsSize = '128g';
const mountMsMax = 10_000;
const here = dirname(fileURLToPath(import.meta.url));

/**
 * The files that take longest from start to end (mostly waiting on servers, not using a core)
 * start first, longest first, so that the run does not end with one of them running alone; the
 * rest follow by name. Measured with each file's start and end stamped over a whole run (README,
 * "Testing"); a name here that is no longer a test file stops the run.
 */
const longestFirst = ['config', 'failover', 'hosts', 'backups', 'console', 'wal-bounds', 'deleted-backups', 'bad-input', 'hosts-drain', 'dataplane-local', 'storage-limits', 'proxy-throttles', 'rods', 'rollouts'];

const named = process.argv.slice(2);
const files = named.length > 0 ? named : inRunOrder((await readdir(here)).filter((name) => name.endsWith('.test.js'))).map((name) => join(here, name));

// Short: a Postgres socket path under it (prepared template, agents' instances) must stay within 107 bytes.
const runDir = await mkdtemp(join(tmpdir(), 'ctr-'));
const mounted = await mountTmpfs(runDir);
// Cluster OS users traverse to their data directories under it.
await chmod(runDir, 0o755);
process.stderr.write(`test run: TMPDIR=${runDir}${mounted ? ` (a tmpfs of ${tmpfsSize} mounted for this run)` : ' (no tmpfs: not allowed to mount one here)'}\n`);
// Everything below, and every test process, takes its temporary paths from here.
process.env['TMPDIR'] = runDir;
const { sharedStoreVariable, startSharedStore } = await import('./helpers/shared-store.js');

let store: Awaited<ReturnType<typeof startSharedStore>> | undefined;
let status = 1;
try {
  store = await startSharedStore(join(runDir, 'shared-store'));
  status = await runFiles(files, { ...process.env, [sharedStoreVariable]: store.adminUrl });
} catch (error) {
  process.stderr.write(`test run: ${(error as Error).stack ?? String(error)}\n`);
} finally {
  await store?.stop().catch((error: unknown) => process.stderr.write(`test run: stopping the shared store: ${String(error)}\n`));
  await removeRunDir(runDir, mounted).catch((error: unknown) => process.stderr.write(`test run: removing ${runDir}: ${String(error)}\n`));
}
process.exit(status);

/** `longestFirst`, then the other files by name. */
function inRunOrder(names: readonly string[]): string[] {
  const first = longestFirst.map((stem) => `${stem}.test.js`);
  const missing = first.filter((name) => !names.includes(name));
  if (missing.length > 0) throw new Error(`test/run.ts lists ${missing.join(', ')} to start first, but there is no such test file`);
  return [...first, ...names.filter((name) => !first.includes(name)).sort()];
}

/** The test runner (test/run-files.ts) as a child; Ctrl-C and SIGTERM reach it and the clean-up above still runs. */
function runFiles(paths: readonly string[], env: NodeJS.ProcessEnv): Promise<number> {
  const child = spawn(process.execPath, [join(here, 'run-files.js'), String(concurrency), ...paths], { env, stdio: 'inherit' });
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

/** A bounded mount or umount (the project's own child-process runner: timeout, stderr in the error). */
function command(binary: string, args: readonly string[]): Promise<unknown> {
  return run(binary, args, { inheritEnvironment: true, timeoutMs: mountMsMax });
}

/** Mounts a tmpfs on `dir`; false when this process may not (not root, or a container without the right). */
async function mountTmpfs(dir: string): Promise<boolean> {
  if (process.getuid?.() !== 0) return false;
  return command('mount', ['-t', 'tmpfs', '-o', `size=${tmpfsSize},mode=0755`, 'cellar-test', dir]).then(
    () => true,
    () => false,
  );
}

/**
 * Empties and removes the run's directory: what a test left is gone with it. A process still
 * holding a file there (a leak the tests' own checks should have caught) keeps the mount busy:
 * it is detached then, named as a warning, and its memory is freed when that process ends.
 */
async function removeRunDir(dir: string, isMounted: boolean): Promise<void> {
  if (!isMounted) return rm(dir, { recursive: true, force: true });
  try {
    await command('umount', [dir]);
  } catch (error) {
    process.stderr.write(`test run: warning: ${(error as Error).message}; detaching it instead\n`);
    await command('umount', ['--lazy', dir]);
  }
  await rmdir(dir);
}
