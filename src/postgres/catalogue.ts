import { type CatalogueEntry, catalogueFromRows } from '../lib/settings.js';
import type { ClientBase } from 'pg';

/** Anything that runs a query: a client or a pool. */
type Queryable = Pick<ClientBase, 'query'>;

interface SettingRow {
  name: string;
  vartype: string;
  unit: string | null;
  minVal: string | null;
  maxVal: string | null;
  enumVals: string[] | null;
  context: string;
}

/** The parameter catalogue of the server `db` talks to, read from its own `pg_settings` (docs/CONFIG.md). */
export async function readCatalogue(db: Queryable): Promise<Map<string, CatalogueEntry>> {
  const result = await db.query<SettingRow>('select name, vartype, unit, min_val as "minVal", max_val as "maxVal", enumvals as "enumVals", context from pg_settings order by name');
  return new Map(catalogueFromRows(result.rows).map((entry) => [entry.name, entry]));
}
