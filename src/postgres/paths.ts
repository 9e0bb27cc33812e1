import { createHash } from 'node:crypto';
import { statSync, type Stats } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import type { Config } from '../config.js';
import { assert } from '../lib/assert.js';
import type { InstanceId } from '../lib/ids.js';
import { ensureDirectory, ensureDirectoryTree } from './files.js';
import { selfRunAs, type RunAs } from './osuser.js';

/**
 * Where data directories live. The run-as user must traverse every ancestor of a data directory,
 * so the default `$CELLAR_HOME/data` is only used when it can; root's home (/root, 0700) cannot.
 */

/** Fallback parent when the home is not traversable by the run-as user. */
export const fallbackDataRoot = '/var/lib/cellar';
/** sockaddr_un.sun_path is 108 bytes on Linux (104 on BSDs) including the NUL; keep a margin. */
export const socketPathBytesMax = 100;
const homeHashHexChars = 8;

export function resolveDataDir(config: Pick<Config, 'home' | 'dataDir'>, runAs: RunAs): string {
  if (config.dataDir !== null) return resolve(config.dataDir);
  const preferred = join(resolve(config.home), 'data');
  // A home Cellar has yet to make will be 0700 (it holds secrets): decide now as it will be then,
  // so that the answer before the first start (preflight) and after it agree.
  const homeWillBeClosed = statOrUndefined(resolve(config.home)) === undefined && runAs.uid !== process.getuid?.();
  if (!homeWillBeClosed && canTraverseAncestors(preferred, runAs)) return preferred;
  return fallbackDataDir(config.home);
}

/**
 * `~/.cellar` becomes `/var/lib/cellar/cellar-<hash>`: a visible name an operator can find with ls,
 * made of safe characters whatever the home is called (`my home` → `my-home-<hash>`).
 */
function fallbackDataDir(home: string): string {
  const absolute = resolve(home);
  const hash = createHash('sha256').update(absolute).digest('hex').slice(0, homeHashHexChars);
  const name = basename(absolute).replace(/^\.+/, '').replace(/[^A-Za-z0-9._-]+/g, '-').slice(0, homeNameCharsMax) || 'home';
  return join(fallbackDataRoot, `${name}-${hash}`);
}

/**
 * archive_command and restore_command carry the backup directory through a shell and Postgres'
 * `%` escapes, so it may hold none of these.
 */
export const shellUnsafePathCharacters = /['"\s\\%]/;
const homeNameCharsMax = 40;

/**
 * Where the backup store lives: CELLAR_BACKUP_DIR, else the first of `$CELLAR_HOME/backups`,
 * `<data dir>/backups` and the fallback data root's that the run-as user (who writes WAL there
 * through archive_command) can reach and whose path a shell command can carry.
 */
export function resolveBackupDir(config: Pick<Config, 'home' | 'backupDir'>, runAs: RunAs, dataDir: string): string {
  if (config.backupDir !== null) return resolve(config.backupDir);
  const candidates = [join(resolve(config.home), 'backups'), join(dataDir, 'backups'), join(fallbackDataDir(config.home), 'backups')];
  const usable = candidates.find((path) => !shellUnsafePathCharacters.test(path) && canTraverseAncestors(path, runAs));
  // The last candidate is always safe to name; whether it can be made is preflight's to say.
  return usable ?? join(fallbackDataDir(config.home), 'backups');
}

/**
 * Whether `runAs` may search every existing ancestor of `path`. Ancestors that do not exist yet
 * will be created 0755 by Cellar, so they do not block. Supplementary groups are ignored: a false
 * "no" only costs the fallback location.
 */
export function canTraverseAncestors(path: string, runAs: RunAs): boolean {
  if (runAs.uid === 0) return true;
  for (const dir of ancestors(resolve(path))) {
    const stats = statOrUndefined(dir);
    if (stats === undefined) continue;
    if (!stats.isDirectory()) return false;
    const bit = stats.uid === runAs.uid ? 0o100 : stats.gid === runAs.gid ? 0o010 : 0o001;
    if ((stats.mode & bit) === 0) return false;
  }
  return true;
}

/** `/a/b/c` → `/`, `/a`, `/a/b`: every directory that must be searched to reach c. */
function ancestors(path: string): string[] {
  const out: string[] = [];
  let dir = dirname(path);
  for (;;) {
    out.unshift(dir);
    const parent = dirname(dir);
    if (parent === dir) return out;
    dir = parent;
  }
}

function statOrUndefined(path: string): Stats | undefined {
  try {
    return statSync(path);
  } catch {
    return undefined;
  }
}

/**
 * Creates the data dir and its `instances/`, `templates/` and `scratch/` folders. They belong to
 * Cellar and are 0711: servers may pass through to their own directories, nobody may list them
 * or plant anything in them.
 */
export async function prepareDataDir(dataDir: string): Promise<void> {
  const self = selfRunAs();
  await ensureDirectoryTree(dataDir, dataDirMode, self);
  for (const folder of ['instances', 'templates', 'scratch']) await ensureDirectory(join(dataDir, folder), dataDirMode, self);
}

/** Cellar's directories on the way to a server's own: traversable, not listable, not writable by others. */
export const dataDirMode = 0o711;

export interface InstancePaths {
  /** Everything of the instance; destroy removes this. Cellar's own (0711), so nothing can be planted in it. */
  readonly root: string;
  /** The cluster user's, 0700. */
  readonly pgdata: string;
  /** Unix socket directory, the cluster user's, 0700: only root and that user can connect through it. */
  readonly run: string;
  /** Cellar's, opened by Cellar and handed to the server as its stdout and stderr. */
  readonly log: string;
}

export function instancePaths(dataDir: string, instanceId: InstanceId): InstancePaths {
  assert(/^[a-z0-9_]+$/.test(instanceId), `instance id ${instanceId} is not safe as a file name`);
  const root = join(dataDir, 'instances', instanceId);
  return { root, pgdata: join(root, 'pgdata'), run: join(root, 'run'), log: join(root, 'postgres.log') };
}

/** 2: the tenant role without CREATEROLE, the cellar schema of role functions, peer auth. */
export const templateRevision = 2;

export interface TemplatePaths {
  readonly root: string;
  readonly pgdata: string;
  readonly run: string;
  readonly log: string;
}

export function templatePaths(dataDir: string, pgVersion: number): TemplatePaths {
  assert(Number.isInteger(pgVersion) && pgVersion >= 10, `bad Postgres major ${pgVersion}`);
  // The revision changes when what a template holds changes, so an old one is never copied.
  const root = join(dataDir, 'templates', `pg${pgVersion}-r${templateRevision}`);
  return { root, pgdata: join(root, 'pgdata'), run: join(root, 'run'), log: join(root, 'postgres.log') };
}

/** The socket file Postgres creates; too long a path makes the server fail at start, so check first. */
export function socketPath(runDir: string, port: number): string {
  const path = join(runDir, `.s.PGSQL.${port}`);
  assert(Buffer.byteLength(path) < socketPathBytesMax, `unix socket path too long (${Buffer.byteLength(path)} bytes): ${path}`);
  return path;
}
