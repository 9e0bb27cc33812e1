import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { loadConfig } from '../../src/config.js';
import { ensureEmbeddedStore, stopEmbeddedStore } from '../../src/store/embedded.js';
import { migrate } from '../../src/store/migrate.js';
import { type Pool, openPool } from '../../src/store/pool.js';
import { makeTempDir } from './cellar.js';
import { seedDataDir } from './prepared.js';
import { createStoreDatabase, dropStoreDatabase } from './shared-store.js';

/**
 * A real, migrated cell store: a database of its own on the run's shared store server
 * (test/helpers/shared-store.ts), or, without one or when asked (`own`, for a test that changes
 * the server: roles, pg_hba.conf), an embedded Postgres of its own in a temporary directory.
 */
export interface TestStore {
  readonly url: string;
  readonly pool: Pool;
  close(): Promise<void>;
}

export async function startTestStore(options: { own?: boolean } = {}): Promise<TestStore> {
  const shared = options.own === true ? null : await createStoreDatabase();
  if (shared !== null) {
    const pool = openPool(shared);
    return {
      url: shared,
      pool,
      async close() {
        await pool.end();
        await dropStoreDatabase(shared);
      },
    };
  }
  const root = await makeTempDir('cellar-store-');
  // A copy of the run's prepared store: already initialised and migrated.
  await seedDataDir(join(root, 'data'), { store: true, templates: false });
  const config = loadConfig({ CELLAR_HOME: join(root, 'home'), CELLAR_DATA: join(root, 'data') });
  const url = await ensureEmbeddedStore(config);
  const pool = openPool(url);
  await migrate(pool);
  return {
    url,
    pool,
    async close() {
      await pool.end();
      await stopEmbeddedStore(join(root, 'data'));
      await rm(root, { recursive: true, force: true });
    },
  };
}
