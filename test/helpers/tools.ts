import { join } from 'node:path';
import { Binaries } from '../../src/postgres/binaries.js';

/** A Postgres client tool (psql, pg_dump, …) of the newest installed major, found as Cellar finds its servers. */
export async function postgresTool(name: string): Promise<string> {
  const binaries = await Binaries.discover({ pgBin: null });
  const versions = binaries.versions();
  if (versions.length === 0) throw new Error(`no PostgreSQL installation found for ${name}`);
  return join(binaries.binFor(Math.max(...versions)), name);
}
