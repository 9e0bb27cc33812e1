import { type Credentials, readCredentials, writeCredentials } from '../lib/credentials.js';
import type { Pool } from '../store/pool.js';
import { findTokenOwner, issueAdminToken } from '../store/tenancy.js';

/**
 * Keeps `$CELLAR_HOME/credentials` holding the API address and a valid admin token: made on first
 * start, kept while valid, replaced if the file was lost or its token belongs to another store.
 */
export async function ensureCredentials(pool: Pool, home: string, api: string): Promise<Credentials> {
  const stored = await readCredentials(home);
  const owner = stored === null ? null : await findTokenOwner(pool, stored.token);
  const token = stored !== null && owner?.admin ? stored.token : await issueAdminToken(pool);
  const credentials = { api, token };
  await writeCredentials(home, credentials);
  return credentials;
}
