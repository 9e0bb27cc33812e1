import { type CatalogueEntry, type SettingType, applyOf, noLowerOnReplicas } from '../lib/settings.js';
import type { ClientBase } from 'pg';

/** Anything that runs a query: a client or a pool. */
type Queryable = Pick<ClientBase, 'query'>;

/**
 * The parameter catalogue of one Postgres version, read from that version's own `pg_settings`
 * (issue 14): type, unit, range, allowed values, and whether a change reloads or restarts.
 */

interface SettingRow {
  name: string;
  vartype: string;
  unit: string | null;
  min_val: string | null;
  max_val: string | null;
  enumvals: string[] | null;
  context: string;
}

const settingTypes: ReadonlySet<string> = new Set(['bool', 'enum', 'integer', 'real', 'string']);

export async function readCatalogue(db: Queryable): Promise<Map<string, CatalogueEntry>> {
  const result = await db.query<SettingRow>('select name, vartype, unit, min_val, max_val, enumvals, context from pg_settings order by name');
  const catalogue = new Map<string, CatalogueEntry>();
  for (const row of result.rows) {
    // A type this code does not know is left out: it cannot be checked, so it cannot be set.
    if (!settingTypes.has(row.vartype)) continue;
    catalogue.set(row.name, {
      name: row.name,
      type: row.vartype as SettingType,
      unit: row.unit,
      min: row.min_val === null ? null : Number(row.min_val),
      max: row.max_val === null ? null : Number(row.max_val),
      enumValues: row.enumvals,
      apply: applyOf(row.context),
      noLowerOnReplicas: noLowerOnReplicas.has(row.name),
    });
  }
  return catalogue;
}
