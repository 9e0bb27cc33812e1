import { access, constants, readdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { run } from './osuser.js';

/**
 * Postgres installations on this host, one major version per bin directory, so several majors can
 * be registered side by side (an upgrade needs both the old and the new binaries).
 */
export interface PgBinaries {
  /** Major versions found, ascending. */
  versions(): readonly number[];
  /** The bin directory for a major version; throws naming the versions that are available. */
  binFor(version: number): string;
}

export interface DiscoverOptions {
  /** CELLAR_PG_BIN: searched first, and wins for its version. */
  readonly pgBin: string | null;
  /** Where distributions install majors side by side; a parameter so tests can point elsewhere. */
  readonly distributionRoot?: string;
}

const versionProbeTimeoutMs = 10_000;
const debianPostgresRoot = '/usr/lib/postgresql';

export class BinariesNotFoundError extends Error {
  override name = 'BinariesNotFoundError';
}

export class Binaries implements PgBinaries {
  private readonly byVersion: ReadonlyMap<number, string>;

  constructor(byVersion: ReadonlyMap<number, string>) {
    this.byVersion = byVersion;
  }

  /** Looks in CELLAR_PG_BIN, then `pg_config --bindir`, then /usr/lib/postgresql/<n>/bin. */
  static async discover(options: DiscoverOptions): Promise<Binaries> {
    const candidates: string[] = [];
    if (options.pgBin !== null) candidates.push(resolve(options.pgBin));
    const fromPgConfig = await pgConfigBinDir();
    if (fromPgConfig !== undefined) candidates.push(fromPgConfig);
    candidates.push(...(await distributionBinDirs(options.distributionRoot ?? debianPostgresRoot)));
    const byVersion = new Map<number, string>();
    for (const binDir of new Set(candidates)) {
      const version = await majorVersionOf(binDir);
      // First found wins, so CELLAR_PG_BIN overrides a packaged install of the same major.
      if (version !== undefined && !byVersion.has(version)) byVersion.set(version, binDir);
    }
    if (options.pgBin !== null && ![...byVersion.values()].includes(resolve(options.pgBin))) {
      throw new BinariesNotFoundError(`CELLAR_PG_BIN=${options.pgBin} does not hold a working postgres binary`);
    }
    return new Binaries(byVersion);
  }

  versions(): readonly number[] {
    return [...this.byVersion.keys()].sort((a, b) => a - b);
  }

  binFor(version: number): string {
    const binDir = this.byVersion.get(version);
    if (binDir !== undefined) return binDir;
    const available = this.versions();
    const have = available.length === 0 ? 'none were found' : `available: ${available.join(', ')}`;
    throw new BinariesNotFoundError(
      `no PostgreSQL ${version} binaries (${have}); install them or set CELLAR_PG_BIN to their bin directory`,
    );
  }
}

async function pgConfigBinDir(): Promise<string | undefined> {
  try {
    const result = await run('pg_config', ['--bindir'], { inheritEnvironment: true, timeoutMs: versionProbeTimeoutMs });
    const dir = result.stdout.trim();
    return dir === '' ? undefined : resolve(dir);
  } catch {
    return undefined; // Not on PATH: the other sources may still have binaries.
  }
}

async function distributionBinDirs(root: string): Promise<string[]> {
  try {
    const entries = await readdir(root);
    return entries.map((entry) => join(root, entry, 'bin'));
  } catch {
    return [];
  }
}

/** `postgres (PostgreSQL) 15.18 (Debian …)` → 15; undefined if the dir has no runnable postgres. */
export async function majorVersionOf(binDir: string): Promise<number | undefined> {
  const postgres = join(binDir, 'postgres');
  try {
    await access(postgres, constants.X_OK);
    const result = await run(postgres, ['--version'], { timeoutMs: versionProbeTimeoutMs });
    return parseMajorVersion(result.stdout);
  } catch {
    return undefined;
  }
}

export function parseMajorVersion(versionOutput: string): number | undefined {
  // Majors before 10 had two parts (9.6); Cellar supports 10 and later only.
  const match = /\(PostgreSQL\)\s+(\d+)/.exec(versionOutput);
  const major = Number(match?.[1]);
  return Number.isInteger(major) && major >= 10 ? major : undefined;
}
