import { invalid } from './errors.js';

/**
 * Postgres settings a cluster may change (issue 14), checked before anything is stored: against
 * the catalogue read from that version's own `pg_settings`, against the parameters the platform
 * owns, and against the cluster's size. Pure: the catalogue is data, read elsewhere.
 */

export type SettingType = 'bool' | 'enum' | 'integer' | 'real' | 'string';

/** How a change takes effect: a reload, a restart, or never (compiled in, or set at initdb). */
export type SettingApply = 'reload' | 'restart' | 'fixed';

export interface CatalogueEntry {
  readonly name: string;
  readonly type: SettingType;
  /** pg_settings.unit: `8kB`, `kB`, `MB`, `ms`, `s`, `min`, …; null when unitless. */
  readonly unit: string | null;
  readonly min: number | null;
  readonly max: number | null;
  readonly enumValues: readonly string[] | null;
  readonly apply: SettingApply;
  /** A hot standby refuses to start with less than its primary: raise on replicas first, lower on the primary first. */
  readonly noLowerOnReplicas: boolean;
}

/** Settings a standby must have at least as high as its primary (Postgres 15, hot standby). */
export const noLowerOnReplicas: ReadonlySet<string> = new Set(['max_connections', 'max_worker_processes', 'max_wal_senders', 'max_prepared_transactions', 'max_locks_per_transaction']);

/** What a catalogue entry is made from: one row of pg_settings (`ServerSetting` has these fields). */
export interface SettingsRow {
  readonly name: string;
  readonly vartype: string;
  readonly unit: string | null;
  readonly minVal: string | null;
  readonly maxVal: string | null;
  readonly enumVals: readonly string[] | null;
  readonly context: string;
}

const settingTypes: ReadonlySet<string> = new Set(['bool', 'enum', 'integer', 'real', 'string']);

/** The catalogue of one Postgres version from its own pg_settings; a type this code does not know is left out (it cannot be checked, so it cannot be set). */
export function catalogueFromRows(rows: readonly SettingsRow[]): CatalogueEntry[] {
  return rows.flatMap((row) => settingTypes.has(row.vartype)
    ? [{
        name: row.name,
        type: row.vartype as SettingType,
        unit: row.unit,
        min: row.minVal === null ? null : Number(row.minVal),
        max: row.maxVal === null ? null : Number(row.maxVal),
        enumValues: row.enumVals,
        apply: applyOf(row.context),
        noLowerOnReplicas: noLowerOnReplicas.has(row.name),
      }]
    : []);
}

/** pg_settings.context → how a change takes effect. */
export function applyOf(context: string): SettingApply {
  if (context === 'postmaster') return 'restart';
  if (context === 'internal') return 'fixed';
  return 'reload';
}

/**
 * Parameters Cellar manages itself, by name: identity and networking, replication and archiving,
 * durability it promises (a system-wide `synchronous_commit = off` would lose acknowledged writes),
 * and anything that reaches the host's files, programs or libraries.
 */
const platformOwnedNames: ReadonlySet<string> = new Set([
  'listen_addresses', 'port', 'data_directory', 'hba_file', 'ident_file', 'config_file', 'external_pid_file',
  'restore_command', 'archive_cleanup_command', 'recovery_end_command', 'primary_conninfo', 'primary_slot_name',
  'synchronous_standby_names', 'synchronous_commit', 'wal_level', 'hot_standby', 'cluster_name', 'fsync', 'full_page_writes',
  'wal_keep_size', 'wal_retrieve_retry_interval', 'password_encryption', 'max_slot_wal_keep_size',
  'dynamic_library_path', 'jit_provider', 'allow_system_table_mods', 'zero_damaged_pages', 'ignore_system_indexes',
  'ignore_checksum_failure', 'ignore_invalid_pages', 'event_source', 'krb_server_keyfile',
  // The log goes where Cellar reads it; a log file name can climb out of its directory ('../').
  'logging_collector', 'log_filename', 'allow_in_place_tablespaces',
  // Replication needs a sender and a slot per replica; the control plane's own statements must be able to write.
  'max_wal_senders', 'max_replication_slots', 'default_transaction_read_only',
]);

/** …and by shape: families the platform owns, and names that are paths, commands or libraries. */
const platformOwnedPatterns: readonly RegExp[] = [/^archive_/, /^ssl/, /^unix_socket_/, /^recovery_target/, /_preload_libraries$/, /_command$/, /_file$/, /_directory$/, /_path$/, /_library$/];

export function isPlatformOwned(name: string): boolean {
  return platformOwnedNames.has(name) || platformOwnedPatterns.some((pattern) => pattern.test(name));
}

/** Memory units in kB and time units in ms, as Postgres reads them (guc.c). */
const memoryUnitsKb: Readonly<Record<string, number>> = { B: 1 / 1024, kB: 1, MB: 1024, GB: 1024 ** 2, TB: 1024 ** 3 };
const timeUnitsMs: Readonly<Record<string, number>> = { us: 0.001, ms: 1, s: 1_000, min: 60_000, h: 3_600_000, d: 86_400_000 };

/** A setting's base unit as a factor of kB or ms (`8kB` → 8 kB, `min` → 60000 ms); null when unitless. */
function baseUnit(unit: string | null): { readonly kind: 'memory' | 'time'; readonly factor: number } | null {
  if (unit === null || unit === '') return null;
  const match = /^(\d*)\s*([a-zA-Z]+)$/.exec(unit);
  const multiple = match?.[1] ? Number(match[1]) : 1;
  const name = match?.[2] ?? '';
  if (name in memoryUnitsKb) return { kind: 'memory', factor: multiple * (memoryUnitsKb[name] ?? 1) };
  if (name in timeUnitsMs) return { kind: 'time', factor: multiple * (timeUnitsMs[name] ?? 1) };
  return null;
}

const settingValueLengthMax = 1_024;
const booleanWords: Readonly<Record<string, boolean>> = { on: true, off: false, true: true, false: false, yes: true, no: false, '1': true, '0': false };

/**
 * The value in the setting's base unit (what pg_settings' min and max are in), or a CellarError
 * naming the parameter, the value and the limit. Strings and enums come back as given.
 */
export function parseSettingValue(entry: CatalogueEntry, raw: string): number | string | boolean {
  const field = `settings.${entry.name}`;
  const shown = JSON.stringify(raw.length > 80 ? `${raw.slice(0, 80)}…` : raw);
  if (raw.length > settingValueLengthMax) throw invalid(field, `${entry.name}: the value is ${raw.length} characters long, more than ${settingValueLengthMax}`);
  const value = raw.trim();
  switch (entry.type) {
    case 'bool': {
      const parsed = booleanWords[value.toLowerCase()];
      if (parsed === undefined) throw invalid(field, `${entry.name}: ${shown} is not a boolean (on, off, true, false, yes, no, 1, 0)`);
      return parsed;
    }
    case 'enum': {
      const allowed = entry.enumValues ?? [];
      const match = allowed.find((candidate) => candidate.toLowerCase() === value.toLowerCase());
      if (match === undefined) throw invalid(field, `${entry.name}: ${shown} is not one of ${allowed.join(', ')}`);
      return match;
    }
    case 'string':
      if (/[\0\n\r]/.test(value)) throw invalid(field, `${entry.name}: the value holds a NUL or a line break`);
      return value;
    case 'integer':
    case 'real':
      return checkRange(entry, value, shown, field);
  }
}

function checkRange(entry: CatalogueEntry, value: string, shown: string, field: string): number {
  const match = /^(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*([a-zA-Z]*)$/.exec(value);
  if (match === null) throw invalid(field, `${entry.name}: ${shown} is not a number${entry.unit ? ` (with an optional unit, e.g. ${example(entry)})` : ''}`);
  let number = Number(match[1]);
  const suffix = match[2] ?? '';
  const base = baseUnit(entry.unit);
  if (suffix !== '') {
    if (base === null) throw invalid(field, `${entry.name}: ${shown} has a unit, but ${entry.name} takes none`);
    const table = base.kind === 'memory' ? memoryUnitsKb : timeUnitsMs;
    const factor = table[suffix];
    if (factor === undefined) throw invalid(field, `${entry.name}: unit "${suffix}" is not one of ${Object.keys(table).join(', ')}`);
    number = (number * factor) / base.factor;
  }
  if (entry.type === 'integer') {
    const rounded = Math.round(number);
    if (!Number.isFinite(number) || Math.abs(rounded - number) > 1e-9 * Math.max(1, Math.abs(number))) {
      throw invalid(field, `${entry.name}: ${shown} is not a whole number of ${entry.unit ?? 'units'}`);
    }
    number = rounded;
  }
  if (entry.min !== null && number < entry.min) throw invalid(field, `${entry.name}: ${shown} is below the minimum ${describe(entry, entry.min)}`);
  if (entry.max !== null && number > entry.max) throw invalid(field, `${entry.name}: ${shown} is above the maximum ${describe(entry, entry.max)}`);
  return number;
}

function example(entry: CatalogueEntry): string {
  return baseUnit(entry.unit)?.kind === 'time' ? '5min' : '256MB';
}

function describe(entry: CatalogueEntry, value: number): string {
  return entry.unit === null || entry.unit === '' ? String(value) : `${value} × ${entry.unit}`;
}

/** Memory in MB of a parsed memory setting (for the size checks), null when it is not one. */
export function memoryMbOf(entry: CatalogueEntry, value: number): number | null {
  const base = baseUnit(entry.unit);
  return base?.kind === 'memory' ? (value * base.factor) / 1024 : null;
}

export interface CheckedSettings {
  readonly values: Readonly<Record<string, string>>;
  /** Not errors: what may go wrong at the cluster's size (e.g. connections × work_mem past its memory). */
  readonly warnings: readonly string[];
  /** Whether applying needs a rolling restart (any setting with `apply: restart`). */
  readonly restart: boolean;
}

/**
 * Checks a whole change against the catalogue and the size's memory: the first problem is thrown
 * (naming the parameter, the value and the limit), so nothing is stored from a bad change.
 */
export function checkSettings(catalogue: ReadonlyMap<string, CatalogueEntry>, change: Readonly<Record<string, string>>, memoryMb: number, current: Readonly<Record<string, string>> = {}): CheckedSettings {
  const parsed = new Map<string, number | string | boolean>();
  let restart = false;
  for (const [name, raw] of Object.entries(change)) {
    const field = `settings.${name}`;
    if (!/^[a-z_][a-z0-9_.]{0,62}$/.test(name)) throw invalid(field, `${JSON.stringify(name)} is not a parameter name (lower-case letters, digits, _ and ., at most 63)`);
    if (isPlatformOwned(name)) throw invalid(field, `${name} is managed by Cellar and cannot be set`);
    const entry = catalogue.get(name);
    if (entry === undefined) throw invalid(field, `${name} is not a parameter of this Postgres version`);
    if (entry.apply === 'fixed') throw invalid(field, `${name} cannot be changed on a running cluster (it is fixed when the server is built or initialised)`);
    parsed.set(name, parseSettingValue(entry, raw));
    if (entry.apply === 'restart') restart = true;
  }
  const warnings: string[] = [];
  const memoryOf = (name: string): number | null => {
    const entry = catalogue.get(name);
    const raw = change[name] ?? current[name];
    if (entry === undefined || raw === undefined) return null;
    const value = parsed.get(name) ?? parseSettingValue(entry, raw);
    return typeof value === 'number' ? memoryMbOf(entry, value) : null;
  };
  const sharedBuffersMb = memoryOf('shared_buffers');
  if (sharedBuffersMb !== null && sharedBuffersMb > memoryMb) {
    throw invalid('settings.shared_buffers', `shared_buffers: ${change['shared_buffers'] ?? current['shared_buffers']} is more than the instance's memory of ${memoryMb} MB`);
  }
  const workMemMb = memoryOf('work_mem');
  const connections = Number(change['max_connections'] ?? current['max_connections']);
  if (workMemMb !== null && Number.isFinite(connections) && connections * workMemMb > memoryMb) {
    warnings.push(`max_connections × work_mem = ${connections} × ${workMemMb} MB can exceed the instance's memory of ${memoryMb} MB`);
  }
  return { values: { ...change }, warnings, restart };
}
