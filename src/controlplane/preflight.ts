import { mkdir, rmdir, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { type Config, ConfigError } from '../config.js';
import { resolveRunAs } from '../postgres/osuser.js';
import { randomToken } from '../lib/ids.js';
import { resolveBackupDir, resolveDataDir, shellUnsafePathCharacters, socketPathBytesMax } from '../postgres/paths.js';

/**
 * Checks, before anything starts (no store, no server, no directory made), that the directories
 * Cellar will write can be used. Each problem is one sentence naming the setting to change, never
 * bare errno text; all problems are reported at once.
 */

/** The longest socket path Cellar makes under a data directory: an instance's (see postgres/paths). */
const longestSocketSuffix = join('instances', 'in_xxxxxxxxxxxx', 'run', '.s.PGSQL.65535');
const controlCharacter = /[\u0000-\u001f\u007f]/;

interface Place {
  readonly path: string;
  /** What to tell the operator to change, e.g. `CELLAR_DATA`. */
  readonly setting: string;
  readonly what: string;
}

function errnoSentence(code: string | undefined, path: string): string {
  switch (code) {
    case 'EACCES':
    case 'EPERM':
      return `the user running Cellar (uid ${process.getuid?.() ?? '?'}) may not write in ${path}`;
    case 'EROFS':
      return `${path} is on a read-only file system`;
    case 'ENOTDIR':
      return `a part of ${path} is a file, not a directory`;
    case 'ENAMETOOLONG':
      return `${path} is longer than the system allows`;
    case 'ELOOP':
      return `${path} goes through too many symbolic links`;
    case 'ENOTSUP':
      return `${path} does not accept new directories`;
    case 'ENOSPC':
      return `the file system of ${path} is full`;
    default:
      return `${path} cannot be used (${code ?? 'unknown error'})`;
  }
}

/** Why `path` (made later, with any missing parents) cannot be written, or null. */
async function writeProblem(path: string): Promise<string | null> {
  let existing = path;
  for (;;) {
    const stats = await stat(existing).catch((error: NodeJS.ErrnoException) => error);
    if (!(stats instanceof Error)) {
      if (!stats.isDirectory()) return `${existing} is a file, not a directory`;
      break;
    }
    if (stats.code !== 'ENOENT') return errnoSentence(stats.code, existing);
    const parent = dirname(existing);
    if (parent === existing) return errnoSentence('ENOENT', existing);
    existing = parent;
  }
  // A real directory made and removed: access() says yes to root on /proc or a read-only bind, and
  // Node's recursive mkdir spins forever on /proc.
  const probe = join(existing, `.cellar-probe-${randomToken(8)}`);
  const refused = await mkdir(probe, { mode: 0o700 }).catch((error: NodeJS.ErrnoException) => error);
  if (refused instanceof Error) return errnoSentence(refused.code === 'ENOENT' ? 'ENOTSUP' : refused.code, existing);
  await rmdir(probe);
  return null;
}

async function placeProblems(place: Place): Promise<string[]> {
  const problems: string[] = [];
  if (controlCharacter.test(place.path)) problems.push(`${place.setting}: the ${place.what} path contains a control character`);
  const problem = await writeProblem(place.path);
  if (problem !== null) problems.push(`${place.setting}: the ${place.what} ${place.path} cannot be used: ${problem}`);
  return problems;
}

export async function checkStartPaths(config: Config): Promise<void> {
  const runAs = await resolveRunAs();
  const dataDir = resolveDataDir(config, runAs);
  const backupDir = resolveBackupDir(config, runAs, dataDir);
  const dataSetting = config.dataDir === null ? 'CELLAR_HOME (or set CELLAR_DATA)' : 'CELLAR_DATA';
  const backupSetting = config.backupDir === null ? `${dataSetting === 'CELLAR_DATA' ? 'CELLAR_DATA' : 'CELLAR_HOME'} (or set CELLAR_BACKUP_DIR)` : 'CELLAR_BACKUP_DIR';
  const places: Place[] = [
    { path: config.home, setting: 'CELLAR_HOME', what: 'home directory' },
    { path: dataDir, setting: dataSetting, what: 'data directory' },
    { path: backupDir, setting: backupSetting, what: 'backup directory' },
  ];
  const problems = (await Promise.all(places.map(placeProblems))).flat();
  const socketBytes = Buffer.byteLength(join(dataDir, longestSocketSuffix));
  if (socketBytes >= socketPathBytesMax) {
    problems.push(
      `${dataSetting}: the data directory ${dataDir} is too long: Postgres' Unix socket paths under it would be ${socketBytes} bytes, past the limit of ${socketPathBytesMax - 1}; choose a data directory at least ${socketBytes - socketPathBytesMax + 1} bytes shorter`,
    );
  }
  if (shellUnsafePathCharacters.test(backupDir)) {
    problems.push(
      `${backupSetting}: the backup directory ${backupDir} contains a space, quote, backslash or %, which Postgres' archive_command cannot carry; choose a directory without them`,
    );
  }
  if (problems.length > 0) throw new ConfigError(`cannot start:\n  ${problems.join('\n  ')}`);
}
