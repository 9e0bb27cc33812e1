import { CellarError, invalid } from '../lib/errors.js';
import { type FlagDeclaration, type FlagValue, allowedValues, findFlag, flagCatalogue, isFlagValue } from '../lib/flag-catalogue.js';
import { type Cohort, type CohortMember, type CohortMemberKind, type FlagRule, type FlagSnapshot, type RuleLevel, buildSnapshot, cellNames, percentMax, percentMin } from '../lib/flags.js';
import { type Pool, type Queryable, inTransaction } from './pool.js';
import { type ControlChange, type ControlChangeRecord, controlChanges, recordControlChange } from './controls.js';
import { recordEvent } from './machines-table.js';

/**
 * Flag rules and cohorts in the store (docs/CONTROLS.md, "Flags"). Every change is checked against
 * the catalogue first, made under one lock (so the audit's old value is the one replaced), audited
 * in `control_changes` and notified on `cellar_controls` in the same transaction; a refused change
 * stores nothing. The audit is the record: events need a machine, and a flag has none.
 */

export const reasonLengthMax = 500;
export const cohortNameLengthMax = 40;
export const cohortDescriptionLengthMax = 200;
export const cohortNamePattern = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;
/** Members one cohort may have: each is a row every process holds in its snapshot. */
export const cohortMembersMax = 10_000;
/** Cohorts in the cell, for the same reason. */
export const cohortsMax = 200;
/** What `controlChanges` returns at most for one flag or cohort. */
export const auditLimitDefault = 100;
/** One lock for every flag and cohort change: they are rare, and the audit must see the value it replaces. */
const flagsLockKey = 'cellar_flags';

export function flagOrThrow(key: string): FlagDeclaration {
  const flag = findFlag(key);
  if (flag === undefined) throw new CellarError('CELLAR_E_NOT_FOUND', `no flag "${key}"; flags: ${flagCatalogue.map((each) => each.key).join(', ')}`, 'key');
  return flag;
}

export function checkFlagValue(flag: FlagDeclaration, value: unknown, field: string): FlagValue {
  if (!isFlagValue(flag, value)) {
    const shown = flag.type === 'boolean' ? 'true or false (JSON booleans)' : allowedValues(flag).join(', ');
    throw invalid(field, `${field} of flag ${flag.key} must be one of ${shown}; got ${JSON.stringify(value) ?? 'nothing'}`);
  }
  return value;
}

function checkReason(reason: unknown): string {
  if (typeof reason !== 'string' || reason.trim().length === 0 || reason.length > reasonLengthMax) throw invalid('reason', `reason must be a non-empty string of at most ${reasonLengthMax} characters: why this change`);
  return reason;
}

function checkPercent(percent: unknown): number | null {
  if (percent === null || percent === undefined) return null;
  if (typeof percent !== 'number' || !Number.isFinite(percent) || percent < percentMin || percent > percentMax || Math.abs(Math.round(percent * 100) - percent * 100) > 1e-6) {
    throw invalid('percent', `percent must be a number from ${percentMin} to ${percentMax} with at most two decimals`);
  }
  return Math.round(percent * 100) / 100;
}

function scopeOf(level: RuleLevel, target: string): string {
  return level === 'global' ? 'global' : `${level}:${target}`;
}

async function lockFlags(db: Queryable): Promise<void> {
  await db.query('select pg_advisory_xact_lock(hashtext($1))', [flagsLockKey]);
}

/**
 * The id a rule or membership names: a cell by name; an org by id or name; a cluster by id, not
 * deleted. 404 naming the field when there is none.
 */
export async function resolveTarget(db: Queryable, level: RuleLevel, target: string | undefined): Promise<string> {
  if (level === 'global') {
    if (target !== undefined && target !== '') throw invalid('target', 'a global rule has no target');
    return '';
  }
  if (target === undefined || target === '') throw invalid('target', `a ${level} rule needs a target: the ${level === 'cell' ? "cell's name" : `${level}'s id`}`);
  if (level === 'cell') {
    if (!cellNames.includes(target)) throw new CellarError('CELLAR_E_NOT_FOUND', `no cell "${target}"; cells: ${cellNames.join(', ')}`, 'target');
    return target;
  }
  if (level === 'org') {
    const found = await db.query<{ id: string }>('select id from orgs where id = $1 or name = $1 order by (id = $1) desc limit 1', [target]);
    if (found.rows[0] === undefined) throw new CellarError('CELLAR_E_NOT_FOUND', `no org "${target}" (by id or name)`, 'target');
    return found.rows[0].id;
  }
  const found = await db.query<{ id: string }>('select id from clusters where id = $1 and deleted_at is null', [target]);
  if (found.rows[0] === undefined) throw new CellarError('CELLAR_E_NOT_FOUND', `no live cluster with id "${target}"`, 'target');
  return found.rows[0].id;
}

interface RuleRow {
  flag_key: string;
  level: RuleLevel;
  target: string;
  value: FlagValue;
  percent: string | null;
  reason: string;
  set_by: string;
  set_at: Date;
}

function ruleOf(row: RuleRow): FlagRule {
  return { flagKey: row.flag_key, level: row.level, target: row.target, value: row.value, percent: row.percent === null ? null : Number(row.percent), reason: row.reason, setBy: row.set_by, setAt: row.set_at.toISOString() };
}

const ruleColumns = 'flag_key, level, target, value, percent, reason, set_by, set_at';

function ruleAudit(rule: FlagRule | null): unknown {
  return rule === null ? null : { value: rule.value, percent: rule.percent };
}

export interface SetRuleRequest {
  readonly key: string;
  readonly level: RuleLevel;
  readonly target?: string;
  readonly value: unknown;
  readonly percent?: number | null;
  readonly reason: string;
  readonly actor: string;
}

/** Sets (or replaces) the rule of a flag at one level and target; returns the rule before and after. */
export async function setFlagRule(pool: Pool, request: SetRuleRequest): Promise<{ before: FlagRule | null; after: FlagRule }> {
  const flag = flagOrThrow(request.key);
  const value = checkFlagValue(flag, request.value, 'value');
  const percent = checkPercent(request.percent);
  const reason = checkReason(request.reason);
  return inTransaction(pool, async (client) => {
    const target = await resolveTarget(client, request.level, request.target);
    await lockFlags(client);
    const old = await client.query<RuleRow>(`select ${ruleColumns} from flag_rules where flag_key = $1 and level = $2 and target = $3`, [flag.key, request.level, target]);
    const written = await client.query<RuleRow>(
      `insert into flag_rules (flag_key, level, target, value, percent, reason, set_by) values ($1, $2, $3, $4, $5, $6, $7)
       on conflict (flag_key, level, target) do update set value = excluded.value, percent = excluded.percent, reason = excluded.reason, set_by = excluded.set_by, set_at = now()
       returning ${ruleColumns}`,
      [flag.key, request.level, target, JSON.stringify(value), percent, reason, request.actor],
    );
    const before = old.rows[0] === undefined ? null : ruleOf(old.rows[0]);
    const after = ruleOf(written.rows[0] as RuleRow);
    await auditFlagChange(client, { kind: 'flag', name: flag.key, scope: scopeOf(request.level, target), oldValue: ruleAudit(before), newValue: ruleAudit(after), actor: request.actor, reason });
    return { before, after };
  });
}


/**
 * A flag or cohort change: audited (`control_changes`, notified) and an event, as rods and the
 * freeze are; events need a machine, so the flag's or cohort's name stands for one.
 */
async function auditFlagChange(client: Queryable, change: ControlChange): Promise<void> {
  await recordControlChange(client, change);
  const set = change.newValue !== null && change.newValue !== undefined;
  await recordEvent(client, {
    machineId: `${change.kind}:${change.name}`,
    kind: change.kind,
    entityId: change.name,
    clusterId: null,
    from: change.oldValue === null || change.oldValue === undefined ? 'unset' : 'set',
    to: set ? 'set' : 'unset',
    reason: `${change.kind} ${change.name} (${change.scope}) ${set ? `set to ${JSON.stringify(change.newValue)}` : 'removed'} by ${change.actor}: ${change.reason}`,
    code: change.kind === 'flag' ? 'flag_changed' : 'cohort_changed',
  });
}

/** Removes the rule of a flag at one level and target (404 when there is none); returns it. */
export async function unsetFlagRule(pool: Pool, request: { readonly key: string; readonly level: RuleLevel; readonly target?: string; readonly reason: string; readonly actor: string }): Promise<FlagRule> {
  const flag = flagOrThrow(request.key);
  const reason = checkReason(request.reason);
  return inTransaction(pool, async (client) => {
    // A rule may name an org or cluster gone since: unset takes the target as stored when it does not resolve.
    let target: string;
    try {
      target = await resolveTarget(client, request.level, request.target);
    } catch (error) {
      if (!(error instanceof CellarError && error.code === 'CELLAR_E_NOT_FOUND')) throw error;
      target = request.target ?? '';
    }
    await lockFlags(client);
    const removed = await client.query<RuleRow>(`delete from flag_rules where flag_key = $1 and level = $2 and target = $3 returning ${ruleColumns}`, [flag.key, request.level, target]);
    if (removed.rows[0] === undefined) throw new CellarError('CELLAR_E_NOT_FOUND', `flag ${flag.key} has no ${request.level} rule${request.level === 'global' ? '' : ` for ${target}`}`, 'target');
    const before = ruleOf(removed.rows[0]);
    await auditFlagChange(client, { kind: 'flag', name: flag.key, scope: scopeOf(request.level, target), oldValue: ruleAudit(before), newValue: null, actor: request.actor, reason });
    return before;
  });
}

function checkCohortName(name: string): void {
  if (name.length > cohortNameLengthMax || !cohortNamePattern.test(name)) throw invalid('name', `name must be a DNS label of 1-${cohortNameLengthMax} characters: a-z, 0-9 and '-', starting and ending with a letter or digit`);
}

async function cohortOrThrow(db: Queryable, name: string): Promise<Cohort> {
  const cohort = (await loadCohorts(db, name))[0];
  if (cohort === undefined) throw new CellarError('CELLAR_E_NOT_FOUND', `no cohort "${name}"`, 'name');
  return cohort;
}

export interface CreateCohortRequest {
  readonly name: string;
  readonly description?: string;
  /** flag key → value; each checked against the catalogue. */
  readonly values: Readonly<Record<string, unknown>>;
  readonly reason: string;
  readonly actor: string;
}

export async function createCohort(pool: Pool, request: CreateCohortRequest): Promise<Cohort> {
  checkCohortName(request.name);
  const description = request.description ?? '';
  if (description.length > cohortDescriptionLengthMax) throw invalid('description', `description must be at most ${cohortDescriptionLengthMax} characters`);
  const values: Record<string, FlagValue> = {};
  for (const [key, value] of Object.entries(request.values)) {
    const flag = findFlag(key);
    if (flag === undefined) throw new CellarError('CELLAR_E_NOT_FOUND', `values: no flag "${key}"; flags: ${flagCatalogue.map((each) => each.key).join(', ')}`, 'values');
    values[flag.key] = checkFlagValue(flag, value, `values.${key}`);
  }
  const reason = checkReason(request.reason);
  return inTransaction(pool, async (client) => {
    await lockFlags(client);
    const count = await client.query<{ count: string }>('select count(*) as count from cohorts');
    if (Number(count.rows[0]?.count ?? 0) >= cohortsMax) throw new CellarError('CELLAR_E_CONFLICT', `the cell has ${cohortsMax} cohorts, the most it may have; delete one first`, 'name');
    const inserted = await client.query('insert into cohorts (name, description, flag_values, created_by) values ($1, $2, $3, $4) on conflict (name) do nothing', [request.name, description, JSON.stringify(values), request.actor]);
    if (inserted.rowCount === 0) throw new CellarError('CELLAR_E_CONFLICT', `a cohort named "${request.name}" exists already`, 'name');
    await auditFlagChange(client, { kind: 'cohort', name: request.name, scope: 'global', oldValue: null, newValue: { description, values }, actor: request.actor, reason });
    return { name: request.name, description, values, members: [] };
  });
}

export async function deleteCohort(pool: Pool, request: { readonly name: string; readonly reason: string; readonly actor: string }): Promise<Cohort> {
  const reason = checkReason(request.reason);
  return inTransaction(pool, async (client) => {
    await lockFlags(client);
    const cohort = await cohortOrThrow(client, request.name);
    await client.query('delete from cohorts where name = $1', [cohort.name]);
    await auditFlagChange(client, { kind: 'cohort', name: cohort.name, scope: 'global', oldValue: { description: cohort.description, values: cohort.values, members: cohort.members }, newValue: null, actor: request.actor, reason });
    return cohort;
  });
}

export interface MemberRequest {
  readonly name: string;
  readonly kind: CohortMemberKind;
  /** An org's id or name; a cluster's id. */
  readonly member: string;
  readonly reason: string;
  readonly actor: string;
}

export async function addCohortMember(pool: Pool, request: MemberRequest): Promise<Cohort> {
  const reason = checkReason(request.reason);
  return inTransaction(pool, async (client) => {
    const id = await resolveTarget(client, request.kind, request.member).catch((error: unknown) => {
      throw error instanceof CellarError && error.field === 'target' ? new CellarError(error.code, error.message, 'member') : error;
    });
    await lockFlags(client);
    const cohort = await cohortOrThrow(client, request.name);
    if (cohort.members.length >= cohortMembersMax) throw new CellarError('CELLAR_E_CONFLICT', `cohort ${cohort.name} has ${cohortMembersMax} members, the most one may have`, 'member');
    if (cohort.members.some((member) => member.id === id)) throw new CellarError('CELLAR_E_CONFLICT', `${id} is a member of cohort ${cohort.name} already`, 'member');
    await client.query('insert into cohort_members (cohort_name, member_kind, member_id, added_by) values ($1, $2, $3, $4)', [cohort.name, request.kind, id, request.actor]);
    await auditFlagChange(client, { kind: 'cohort', name: cohort.name, scope: `${request.kind}:${id}`, oldValue: null, newValue: { member: id }, actor: request.actor, reason });
    return cohortOrThrow(client, cohort.name);
  });
}

export async function removeCohortMember(pool: Pool, request: MemberRequest): Promise<Cohort> {
  const reason = checkReason(request.reason);
  return inTransaction(pool, async (client) => {
    await lockFlags(client);
    const cohort = await cohortOrThrow(client, request.name);
    // By id as stored (the org or cluster may be gone), or an org's name while the org exists.
    let id = cohort.members.find((each) => each.id === request.member)?.id;
    if (id === undefined && request.kind === 'org') {
      const found = await client.query<{ id: string }>('select id from orgs where name = $1', [request.member]);
      id = cohort.members.find((each) => each.id === found.rows[0]?.id)?.id;
    }
    if (id === undefined) throw new CellarError('CELLAR_E_NOT_FOUND', `${request.member} is not a member of cohort ${cohort.name}`, 'member');
    await client.query('delete from cohort_members where cohort_name = $1 and member_id = $2', [cohort.name, id]);
    await auditFlagChange(client, { kind: 'cohort', name: cohort.name, scope: `${request.kind}:${id}`, oldValue: { member: id }, newValue: null, actor: request.actor, reason });
    return cohortOrThrow(client, cohort.name);
  });
}

/** Every cohort (or the one named) with its members, in name order. */
export async function loadCohorts(db: Queryable, name?: string): Promise<Cohort[]> {
  const cohorts = await db.query<{ name: string; description: string; flag_values: Record<string, FlagValue> }>(
    'select name, description, flag_values from cohorts where ($1::text is null or name = $1) order by name',
    [name ?? null],
  );
  const members = await db.query<{ cohort_name: string; member_kind: CohortMemberKind; member_id: string }>(
    'select cohort_name, member_kind, member_id from cohort_members where ($1::text is null or cohort_name = $1) order by cohort_name, member_id',
    [name ?? null],
  );
  const byCohort = new Map<string, CohortMember[]>();
  for (const member of members.rows) {
    const list = byCohort.get(member.cohort_name) ?? [];
    list.push({ kind: member.member_kind, id: member.member_id });
    byCohort.set(member.cohort_name, list);
  }
  return cohorts.rows.map((row) => ({ name: row.name, description: row.description, values: row.flag_values, members: byCohort.get(row.name) ?? [] }));
}

export async function loadRules(db: Queryable): Promise<FlagRule[]> {
  return (await db.query<RuleRow>(`select ${ruleColumns} from flag_rules order by flag_key, level, target`)).rows.map(ruleOf);
}

/** Every rule and cohort. Two reads: a change between them is notified, and the next read has it whole. */
export async function loadFlagSnapshot(db: Queryable): Promise<FlagSnapshot> {
  return buildSnapshot(await loadRules(db), await loadCohorts(db));
}

/** The audit of one flag or cohort, newest first. */
export async function flagChanges(db: Queryable, kind: 'flag' | 'cohort', name: string | undefined, limit = auditLimitDefault): Promise<ControlChangeRecord[]> {
  return controlChanges(db, name === undefined ? { kind } : { kind, name }, limit);
}
