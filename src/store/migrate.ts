import { readdir, readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';

/** At dist/migrations (the build copies src/store/migrations there): two folders up from this module and from the bundles alike (scripts/build-bin.mjs). */
const migrationsDir = fileURLToPath(new URL('../../migrations/', import.meta.url));
/** Any constant works; it only has to be the same in every Cellar process sharing a store. */
const migrationLockKey = 0x63656c6c;

interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
}

async function loadMigrations(): Promise<Migration[]> {
  const files = (await readdir(migrationsDir)).filter((file) => /^\d{4}_[a-z0-9_]+\.sql$/.test(file)).sort();
  return Promise.all(
    files.map(async (file) => ({
      version: Number(file.slice(0, 4)),
      name: file,
      sql: await readFile(migrationsDir + file, 'utf8'),
    })),
  );
}

/**
 * Applies numbered plain-SQL migrations in order, each in its own transaction. A session advisory
 * lock makes concurrent starts safe: the second process waits, then finds nothing left to do.
 */
export async function migrate(pool: pg.Pool): Promise<number[]> {
  const migrations = await loadMigrations();
  const client = await pool.connect();
  const applied: number[] = [];
  try {
    await client.query('select pg_advisory_lock($1)', [migrationLockKey]);
    await client.query(
      'create table if not exists cellar_migrations (version integer primary key, name text not null, applied_at timestamptz not null default now())',
    );
    const done = await client.query<{ version: number }>('select version from cellar_migrations');
    const doneVersions = new Set(done.rows.map((row) => row.version));
    for (const migration of migrations) {
      if (doneVersions.has(migration.version)) continue;
      await client.query('begin');
      try {
        await client.query(migration.sql);
        await client.query('insert into cellar_migrations (version, name) values ($1, $2)', [migration.version, migration.name]);
        await client.query('commit');
      } catch (error) {
        await client.query('rollback');
        throw error;
      }
      applied.push(migration.version);
    }
  } finally {
    await client.query('select pg_advisory_unlock($1)', [migrationLockKey]).catch(() => undefined);
    client.release();
  }
  return applied;
}
