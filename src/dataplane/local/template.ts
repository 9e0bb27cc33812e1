import { access, constants, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { appDatabase, clusterRoles } from '../dataplane.js';
import { randomToken } from '../../lib/ids.js';
import { renderHba } from './conf.js';
import { ensureDirFor, fsyncDir, run, type RunAs } from './osuser.js';
import { socketPath, templatePaths } from './paths.js';
import { cellarConfFile, initdb, startDetached, stopServer, writeConf, writeConfText } from './server.js';
import { escapeIdentifier, localSuperuser, withClient } from './sql.js';

/**
 * A bootstrapped data directory: initdb plus the cluster roles and database, no passwords (those
 * are per cluster and set on each start). Built once per major as a template and copied for each
 * new primary, or built directly per primary when templates are off.
 */

/** The bootstrap server listens on no TCP port; this only names its socket file. */
const bootstrapPort = 5432;
/** cp -a of a fresh 40 MB data directory takes ~0.1 s; fsync of the copy a little more. */
const copyMsMax = 120_000;
/** A template build older than this left behind by a crashed Cellar is abandoned. */
const templateBuildMsMax = 10 * 60_000;
const copyBinaries = ['/usr/bin/cp', '/bin/cp'];

export interface BootstrapOptions {
  readonly binDir: string;
  /** Must not exist. */
  readonly pgdata: string;
  /** A 0700 directory for the bootstrap server's socket. */
  readonly runDir: string;
  readonly logFile: string;
  readonly runAs: RunAs;
}

export async function bootstrapDataDir(options: BootstrapOptions): Promise<void> {
  await initdb({ binDir: options.binDir, pgdata: options.pgdata, runAs: options.runAs });
  await writeConfText(options.pgdata, 'pg_hba.conf', renderHba(), options.runAs);
  socketPath(options.runDir, bootstrapPort);
  await writeConf(options.pgdata, cellarConfFile, {
    port: String(bootstrapPort),
    listen_addresses: '',
    unix_socket_directories: options.runDir,
  }, options.runAs);
  await startDetached(options.binDir, options.pgdata, options.logFile, options.runAs);
  try {
    await createClusterObjects(options.runDir);
  } finally {
    await stopServer(options.pgdata);
  }
  // start() writes the real cellar.conf; postmaster.opts would describe the bootstrap run.
  await rm(join(options.pgdata, cellarConfFile), { force: true });
  await rm(join(options.pgdata, 'postmaster.opts'), { force: true });
}

async function createClusterObjects(runDir: string): Promise<void> {
  await withClient(localSuperuser(runDir, bootstrapPort), async (client) => {
    const replication = escapeIdentifier(clusterRoles.replication);
    const app = escapeIdentifier(clusterRoles.app);
    await client.query(`create role ${replication} with replication login`);
    await client.query(`create role ${app} with login createdb createrole`);
    // CREATE DATABASE cannot run inside the implicit transaction of a multi-statement query.
    await client.query(`create database ${escapeIdentifier(appDatabase)} owner ${app}`);
  });
}

/** Copies a stopped data directory preserving modes and ownership, then makes it durable. */
export async function copyDataDir(binDir: string, source: string, target: string, runAs: RunAs): Promise<void> {
  await run(await copyBinary(), ['-a', source, target], { runAs, timeoutMs: copyMsMax });
  // cp does not fsync; without this an OS crash after the rename could leave a torn data dir
  // that Postgres, seeing a clean shutdown in pg_control, would not repair.
  await run(join(binDir, 'initdb'), ['--sync-only', '-D', target], { runAs, timeoutMs: copyMsMax });
}

async function copyBinary(): Promise<string> {
  for (const candidate of copyBinaries) {
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Try the next location.
    }
  }
  throw new Error(`no cp found at ${copyBinaries.join(' or ')}`);
}

/** Builds `target` via `build(tmp)` then renames: the rename is the commit point. */
export async function buildThenRename(target: string, build: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = `${target}.tmp-${randomToken(8)}`;
  try {
    await build(tmp);
    await renameUnlessPresent(tmp, target);
    await fsyncDir(dirname(target));
  } catch (error) {
    await discardBuild(tmp);
    throw error;
  }
}

async function renameUnlessPresent(tmp: string, target: string): Promise<void> {
  try {
    await rename(tmp, target);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    // Another builder won the race: its directory is as good as ours.
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw error;
    await discardBuild(tmp);
  }
}

/** Stops a bootstrap server a crashed build may have left running, then removes the directory. */
export async function discardBuild(tmp: string): Promise<void> {
  await stopServer(tmp);
  await rm(tmp, { recursive: true, force: true });
}

/** Removes `<base>.tmp-*` siblings of `target` (older than minAgeMs, if given). */
export async function removeStaleBuilds(target: string, minAgeMs = 0): Promise<void> {
  const dir = dirname(target);
  const prefix = `${basename(target)}.tmp-`;
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch {
    return;
  }
  for (const entry of entries.filter((name) => name.startsWith(prefix))) {
    const path = join(dir, entry);
    const age = Date.now() - (await stat(path)).mtimeMs;
    if (age >= minAgeMs) await discardBuild(path);
  }
}

export async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * The template data directory for a major version, built on first use. Concurrent builders in
 * one process share one build; across processes the rename decides and the loser discards.
 */
export class TemplateCache {
  private readonly builds = new Map<number, Promise<string>>();

  constructor(private readonly dataDir: string, private readonly runAs: RunAs) {}

  ensure(pgVersion: number, binDir: string): Promise<string> {
    const existing = this.builds.get(pgVersion);
    if (existing !== undefined) return existing;
    const build = this.build(pgVersion, binDir);
    this.builds.set(pgVersion, build);
    // A failed build is retried by the next caller rather than cached.
    build.catch(() => this.builds.delete(pgVersion));
    return build;
  }

  private async build(pgVersion: number, binDir: string): Promise<string> {
    const paths = templatePaths(this.dataDir, pgVersion);
    if (await exists(paths.pgdata)) return paths.pgdata;
    await ensureDirFor(paths.root, 0o700, this.runAs);
    await ensureDirFor(paths.run, 0o700, this.runAs);
    await removeStaleBuilds(paths.pgdata, templateBuildMsMax);
    await buildThenRename(paths.pgdata, (tmp) =>
      bootstrapDataDir({ binDir, pgdata: tmp, runDir: paths.run, logFile: paths.log, runAs: this.runAs }),
    );
    return paths.pgdata;
  }
}
