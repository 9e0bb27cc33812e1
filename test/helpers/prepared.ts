import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdir, readFile, readdir, rename, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../../src/config.js';
import { Binaries } from '../../src/postgres/binaries.js';
import { resolveRunAs } from '../../src/postgres/osuser.js';
import { ensureEmbeddedStore, stopEmbeddedStore } from '../../src/store/embedded.js';
import { migrate } from '../../src/store/migrate.js';
import { openPool } from '../../src/store/pool.js';
import { TemplateCache } from '../../src/dataplane/local/template.js';

/**
 * One prepared data directory per test run, shared by every test file: the embedded store after
 * initdb and migrations (no tokens, no rows of any Cellar) and the template data directory of the
 * newest installed major. A test Cellar starts from a copy of it, so neither initdb nor the
 * template build runs per file. It is keyed by the compiled code, the migrations and the Postgres
 * installations, so a change to migrations, to what a template holds, or to the binaries prepares a new one.
 */

const preparedRoot = join(tmpdir(), 'cellar-test-prepared');
/** What the prepared directory is made by: the compiled code and the migrations (the build copies them to dist/migrations). */
const preparedBy = ['../../src/', '../../migrations/'].map((path) => fileURLToPath(new URL(path, import.meta.url)));
/** A build that holds the lock longer than this was left by a killed run; the next one takes over. */
const buildMsMax = 5 * 60_000;
const lockPollMs = 100;
/** Prepared directories of other keys (older code) unused this long are removed. */
const unusedMsMax = 24 * 3_600_000;
const copyMsMax = 120_000;
const readyFile = 'ready';

let prepared: Promise<string> | undefined;

/** The prepared data directory (holding `store/` and `templates/`), made on first use. */
export function preparedDataDir(): Promise<string> {
  prepared ??= prepare();
  // A failed preparation is retried by the next caller rather than cached.
  prepared.catch(() => (prepared = undefined));
  return prepared;
}

/**
 * Fills an empty data directory from the prepared one. The store is written to, so each Cellar
 * gets its own copy (`cp -a` keeps owners and modes: the store belongs to `postgres` when tests
 * run as root). A template is only ever read (copied for each new primary; a change of what it
 * holds changes its revision, so its path), so all Cellars share the prepared one through a link:
 * copying it cost as much as building it on this disk.
 */
export async function seedDataDir(dataDir: string, parts: { store: boolean; templates: boolean }): Promise<void> {
  const source = await preparedDataDir();
  await mkdir(dataDir, { recursive: true, mode: 0o711 });
  if (parts.store) {
    await new Promise<void>((resolve, reject) => {
      execFile('cp', ['-a', join(source, 'store'), `${dataDir}/`], { timeout: copyMsMax }, (error, _stdout, stderr) => (error ? reject(new Error(`cp -a into ${dataDir}: ${stderr}`)) : resolve()));
    });
  }
  if (parts.templates) {
    await mkdir(join(dataDir, 'templates'), { mode: 0o711 });
    for (const template of await readdir(join(source, 'templates'))) await symlink(join(source, 'templates', template), join(dataDir, 'templates', template));
  }
}

async function prepare(): Promise<string> {
  const binaries = await Binaries.discover({ pgBin: null });
  const key = await preparationKey(binaries);
  await mkdir(preparedRoot, { recursive: true, mode: 0o755 });
  // The postgres OS user must traverse to the store while it is prepared in here.
  await chmod(preparedRoot, 0o755);
  const target = join(preparedRoot, key);
  const lock = `${target}.lock`;
  const deadline = Date.now() + buildMsMax * 2;
  for (;;) {
    if (await isReady(target)) break;
    if (await takeLock(lock)) {
      try {
        if (!(await isReady(target))) await build(target, binaries);
      } finally {
        await rm(lock, { recursive: true, force: true });
      }
      break;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${buildMsMax * 2} ms waiting for another test run to prepare ${target}`);
    await new Promise((resolve) => setTimeout(resolve, lockPollMs));
  }
  const now = new Date();
  await utimes(join(target, readyFile), now, now);
  await removeUnused(key);
  return join(target, 'data');
}

/** mkdir is atomic: whoever makes the lock builds. A lock older than a build may take is stale. */
async function takeLock(lock: string): Promise<boolean> {
  try {
    await mkdir(lock);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    const ageMs = await stat(lock).then((stats) => Date.now() - stats.mtimeMs, () => 0);
    if (ageMs > buildMsMax) await rm(lock, { recursive: true, force: true });
    return false;
  }
}

async function isReady(target: string): Promise<boolean> {
  return stat(join(target, readyFile)).then(() => true, () => false);
}

/** Builds beside the target and renames: a killed build leaves no half-prepared directory behind the name. */
async function build(target: string, binaries: Binaries): Promise<void> {
  const building = `${target}.building`;
  // A killed build may have left its store running.
  await stopEmbeddedStore(join(building, 'data')).catch(() => false);
  await rm(building, { recursive: true, force: true });
  await mkdir(building, { mode: 0o755 });
  await chmod(building, 0o755);
  const dataDir = join(building, 'data');
  const config = loadConfig({ CELLAR_HOME: join(building, 'home'), CELLAR_DATA: dataDir });
  const pool = openPool(await ensureEmbeddedStore(config));
  try {
    await migrate(pool);
  } finally {
    await pool.end();
    await stopEmbeddedStore(dataDir);
  }
  const version = Math.max(...binaries.versions());
  await new TemplateCache(dataDir, await resolveRunAs()).ensure(version, binaries.binFor(version));
  // What `cellar up` makes per start (sockets, logs, state with a port and password) is not shared.
  await rm(join(building, 'home'), { recursive: true, force: true });
  await rm(join(dataDir, 'store', 'run'), { recursive: true, force: true });
  await rm(join(dataDir, 'store', 'postgres.log'), { force: true });
  for (const template of await readdir(join(dataDir, 'templates'))) {
    await rm(join(dataDir, 'templates', template, 'run'), { recursive: true, force: true });
    await rm(join(dataDir, 'templates', template, 'postgres.log'), { force: true });
  }
  await writeFile(join(building, readyFile), `${new Date().toISOString()}\n`);
  await rename(building, target);
}

async function preparationKey(binaries: Binaries): Promise<string> {
  const hash = createHash('sha256');
  for (const version of binaries.versions()) hash.update(`${version}=${binaries.binFor(version)}\n`);
  for (const root of preparedBy) {
    for (const file of await filesUnder(root)) hash.update(join(root, file)).update(await readFile(join(root, file)));
  }
  // Short: a socket path under the prepared directory (the template's bootstrap server) must stay within 100 bytes.
  return hash.digest('hex').slice(0, 10);
}

async function filesUnder(root: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  const entries = await readdir(join(root, prefix), { withFileTypes: true });
  for (const entry of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    const path = join(prefix, entry.name);
    if (entry.isDirectory()) out.push(...(await filesUnder(root, path)));
    else if (entry.isFile()) out.push(path);
  }
  return out;
}

/** Older code's prepared directories (other worktrees may still use theirs: only long-unused ones go). */
async function removeUnused(currentKey: string): Promise<void> {
  for (const entry of await readdir(preparedRoot)) {
    if (entry === currentKey || entry.endsWith('.lock') || entry.endsWith('.building')) continue;
    const usedMs = await stat(join(preparedRoot, entry, readyFile)).then((stats) => stats.mtimeMs, () => 0);
    if (Date.now() - usedMs > unusedMsMax) await rm(join(preparedRoot, entry), { recursive: true, force: true });
  }
}
