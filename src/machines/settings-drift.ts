import type { ServerSetting } from '../dataplane/dataplane.js';
import { type CatalogueEntry, parseSettingValue } from '../lib/settings.js';
import { effectiveSettings } from '../lib/sizes.js';
import { instanceSpec } from './instance.js';
import type { ClusterRecord, InstanceRecord, MachinePorts } from './ports.js';

/** Comparing what an instance's server reports with what its revision asks for (docs/CONFIG.md "Drift"). */

/** A server's value as a number in its base unit (or text), to compare with what the spec asks for. */
export function sameSetting(entry: CatalogueEntry | undefined, row: ServerSetting, wanted: string): boolean {
  if (entry === undefined) return row.setting === wanted;
  try {
    const want = parseSettingValue(entry, wanted);
    if (typeof want === 'boolean') return (row.setting === 'on') === want;
    if (typeof want === 'number') return Math.abs(Number(row.setting) - want) <= 1e-9 * Math.max(1, Math.abs(want));
    return row.setting === want;
  } catch {
    return row.setting === wanted;
  }
}

/** What differs on one instance between the spec and what its server reports: wrong values, hand edits, pending restarts. */
export async function settingsDifferences(context: { readonly ports: MachinePorts }, cluster: ClusterRecord, instance: InstanceRecord): Promise<string[]> {
  const rows = await context.ports.dataPlane.settings(instanceSpec(cluster, instance));
  const catalogue = await context.ports.store.catalogue(cluster.spec.pgVersion);
  const byName = new Map(rows.map((row) => [row.name, row]));
  const problems: string[] = [];
  for (const [name, wanted] of Object.entries(effectiveSettings(cluster.spec))) {
    const row = byName.get(name);
    if (row === undefined) continue;
    if (!row.pendingRestart && !sameSetting(catalogue?.get(name), row, wanted)) problems.push(`${name} is ${row.setting}${row.unit ?? ''}, not ${wanted}`);
  }
  for (const row of rows) {
    if (row.pendingRestart) problems.push(`${row.name} waits for a restart`);
    if (row.foreign) problems.push(`${row.name} = ${row.setting}${row.unit ?? ''} set by hand (${row.sourceFile ?? row.source})`);
  }
  return problems;
}
