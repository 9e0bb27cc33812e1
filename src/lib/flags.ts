import { type FlagDeclaration, type FlagValue, isExpired } from './flag-catalogue.js';

/**
 * The one evaluation of a flag (docs/CONTROLS.md, "Flags"): pure, over a snapshot of every rule and
 * cohort that a process holds and refreshes. An evaluation reads only maps built once per
 * snapshot, so it costs a few hash lookups and, for a rule with a percentage, one short hash.
 */

export type RuleLevel = 'global' | 'cell' | 'org' | 'cluster';
export const ruleLevels: readonly RuleLevel[] = ['global', 'cell', 'org', 'cluster'];
/** The cells a cell rule may name: today the one cell (docs/CONTROLS.md). */
export const cellNames: readonly string[] = ['local'];
export const localCellName = 'local';
/** Percentages are kept to two decimals. */
export const percentMin = 0;
export const percentMax = 100;

export interface FlagRule {
  readonly flagKey: string;
  readonly level: RuleLevel;
  /** '' for global; the cell's name; the org's or the cluster's id. */
  readonly target: string;
  readonly value: FlagValue;
  /** null: every id at that level; else only ids whose bucket is below it. */
  readonly percent: number | null;
  readonly reason: string;
  readonly setBy: string;
  readonly setAt: string;
}

export type CohortMemberKind = 'org' | 'cluster';

export interface CohortMember {
  readonly kind: CohortMemberKind;
  readonly id: string;
}

export interface Cohort {
  readonly name: string;
  readonly description: string;
  /** flag key → the value every member gets. */
  readonly values: Readonly<Record<string, FlagValue>>;
  readonly members: readonly CohortMember[];
}

export interface FlagContext {
  readonly cell: string;
  readonly org?: string;
  readonly cluster?: string;
}

interface RulesOfFlag {
  global: FlagRule | undefined;
  readonly cells: Map<string, FlagRule>;
  readonly orgs: Map<string, FlagRule>;
  readonly clusters: Map<string, FlagRule>;
}

export interface FlagSnapshot {
  readonly rules: readonly FlagRule[];
  readonly cohorts: readonly Cohort[];
  /** flag key → its rules by level and target. */
  readonly byFlag: ReadonlyMap<string, RulesOfFlag>;
  /** member id → the cohorts it is in, in name order. */
  readonly cohortsByMember: ReadonlyMap<string, readonly Cohort[]>;
}

export function buildSnapshot(rules: readonly FlagRule[], cohorts: readonly Cohort[]): FlagSnapshot {
  const byFlag = new Map<string, RulesOfFlag>();
  for (const rule of rules) {
    let entry = byFlag.get(rule.flagKey);
    if (entry === undefined) {
      entry = { global: undefined, cells: new Map(), orgs: new Map(), clusters: new Map() };
      byFlag.set(rule.flagKey, entry);
    }
    if (rule.level === 'global') entry.global = rule;
    else if (rule.level === 'cell') entry.cells.set(rule.target, rule);
    else if (rule.level === 'org') entry.orgs.set(rule.target, rule);
    else entry.clusters.set(rule.target, rule);
  }
  const sorted = [...cohorts].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const cohortsByMember = new Map<string, Cohort[]>();
  for (const cohort of sorted) {
    for (const member of cohort.members) {
      const list = cohortsByMember.get(member.id) ?? [];
      list.push(cohort);
      cohortsByMember.set(member.id, list);
    }
  }
  return { rules, cohorts: sorted, byFlag, cohortsByMember };
}

export const emptySnapshot: FlagSnapshot = buildSnapshot([], []);

const fnvOffsetBasis = 0x811c9dc5;
const fnvPrime = 0x01000193;
const twoToThe32 = 4_294_967_296;

/**
 * Where `id` falls for `flagKey`, in [0, 100): FNV-1a (32-bit) over the key, a NUL and the id (as
 * UTF-16 code units; keys and ids are ASCII), then murmur3's finalizer so every bit of the result
 * depends on every input bit. The same inputs give the same bucket in every process and version;
 * changing this function moves every percentage rollout, so it never changes.
 */
export function bucket(flagKey: string, id: string): number {
  let hash = fnvOffsetBasis;
  for (let index = 0; index < flagKey.length; index++) hash = Math.imul(hash ^ flagKey.charCodeAt(index), fnvPrime);
  hash = Math.imul(hash, fnvPrime); // the NUL separator: "ab"+"c" and "a"+"bc" differ
  for (let index = 0; index < id.length; index++) hash = Math.imul(hash ^ id.charCodeAt(index), fnvPrime);
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return ((hash >>> 0) / twoToThe32) * 100;
}

export type DecidedBy =
  | { readonly level: RuleLevel; readonly target: string; readonly percent: number | null }
  | { readonly level: 'cohort'; readonly cohort: string }
  | { readonly level: 'default' };

export interface FlagEvaluation {
  readonly key: string;
  readonly value: FlagValue;
  readonly decidedBy: DecidedBy;
  /** One line: which rule decided and why the ones before it did not (formatted when read). */
  readonly why: string;
}

/**
 * An evaluation whose sentence is written only when read: the data paths ask for the value many
 * times a second, `explain` for the sentence.
 */
class Evaluation implements FlagEvaluation {
  constructor(
    readonly key: string,
    readonly value: FlagValue,
    readonly decidedBy: DecidedBy,
    private readonly flag: FlagDeclaration,
    private readonly context: FlagContext,
    /** Rules with a percentage that did not apply, most specific first. */
    private readonly skipped: readonly FlagRule[] | null,
    /** The member (cluster or org id) through which a deciding cohort applies. */
    private readonly member: string | null = null,
  ) {}

  get why(): string {
    const decided = this.decidedBy;
    let head: string;
    if (decided.level === 'default') {
      const source = this.flag.environmentVariable === undefined ? "the catalogue's default" : `the default (${this.flag.environmentVariable} or the catalogue)`;
      head = `${source}: no rule applies`;
    } else if (decided.level === 'cohort') {
      head = `cohort ${decided.cohort}, which ${this.member ?? ''} is a member of`;
    } else {
      head = describe(decided.level, decided.target, decided.percent);
      if (decided.percent !== null) {
        const id = rolloutIdOf(this.context) ?? '';
        head += `: ${id} buckets at ${bucket(this.key, id).toFixed(2)}, below it`;
      }
    }
    if (this.skipped === null) return head;
    const id = rolloutIdOf(this.context);
    const skipped = this.skipped.map((rule) => `${describe(rule.level, rule.target, rule.percent)} (${id === undefined ? 'no org or cluster to bucket' : `${id} buckets at ${bucket(this.key, id).toFixed(2)}`})`);
    return `${head}; not applied: ${skipped.join(', ')}`;
  }

}

/** The id a percentage is bucketed by: the cluster's, else the org's. */
function rolloutIdOf(context: FlagContext): string | undefined {
  return context.cluster ?? context.org;
}

function describe(level: RuleLevel, target: string, percent: number | null): string {
  const where = level === 'global' ? 'global rule' : `${level} rule for ${target}`;
  return percent === null ? where : `${where} at ${percent} %`;
}

/**
 * The flag's value in `context`, most specific first (cluster, org, cohort, cell, global, default);
 * the first rule that applies decides. A rule with a percentage applies when the context's id
 * buckets below it, and otherwise falls through.
 */
export function evaluateFlag(flag: FlagDeclaration, context: FlagContext, snapshot: FlagSnapshot): FlagEvaluation {
  const rules = snapshot.byFlag.get(flag.key);
  const id = rolloutIdOf(context);
  let skipped: FlagRule[] | null = null;
  if (rules !== undefined) {
    const clusterRule = context.cluster === undefined ? undefined : rules.clusters.get(context.cluster);
    if (clusterRule !== undefined) {
      if (applies(flag.key, clusterRule, id)) return decided(flag, clusterRule, context, skipped);
      (skipped ??= []).push(clusterRule);
    }
    const orgRule = context.org === undefined ? undefined : rules.orgs.get(context.org);
    if (orgRule !== undefined) {
      if (applies(flag.key, orgRule, id)) return decided(flag, orgRule, context, skipped);
      (skipped ??= []).push(orgRule);
    }
  }
  if (snapshot.cohortsByMember.size > 0) {
    const fromCluster = context.cluster === undefined ? undefined : firstCohortSetting(flag.key, snapshot.cohortsByMember.get(context.cluster));
    const fromOrg = context.org === undefined ? undefined : firstCohortSetting(flag.key, snapshot.cohortsByMember.get(context.org));
    const cohort = fromOrg !== undefined && (fromCluster === undefined || fromOrg.name < fromCluster.name) ? fromOrg : fromCluster;
    if (cohort !== undefined) {
      const member = cohort === fromCluster ? context.cluster : context.org;
      return new Evaluation(flag.key, cohort.values[flag.key]!, { level: 'cohort', cohort: cohort.name }, flag, context, skipped, member ?? null);
    }
  }
  if (rules !== undefined) {
    const cellRule = rules.cells.get(context.cell);
    if (cellRule !== undefined) {
      if (applies(flag.key, cellRule, id)) return decided(flag, cellRule, context, skipped);
      (skipped ??= []).push(cellRule);
    }
    if (rules.global !== undefined) {
      if (applies(flag.key, rules.global, id)) return decided(flag, rules.global, context, skipped);
      (skipped ??= []).push(rules.global);
    }
  }
  return new Evaluation(flag.key, flag.default, { level: 'default' }, flag, context, skipped);
}

/** A rule without a percentage always applies; one with applies to ids bucketed below it, and never without an id. */
function applies(flagKey: string, rule: FlagRule, id: string | undefined): boolean {
  return rule.percent === null || (id !== undefined && bucket(flagKey, id) < rule.percent);
}

function decided(flag: FlagDeclaration, rule: FlagRule, context: FlagContext, skipped: readonly FlagRule[] | null): FlagEvaluation {
  return new Evaluation(flag.key, rule.value, { level: rule.level, target: rule.target, percent: rule.percent }, flag, context, skipped);
}

/** Lists are in name order: the first cohort in it that sets the flag. */
function firstCohortSetting(flagKey: string, cohorts: readonly Cohort[] | undefined): Cohort | undefined {
  if (cohorts === undefined) return undefined;
  for (const cohort of cohorts) if (cohort.values[flagKey] !== undefined) return cohort;
  return undefined;
}

/** A context without a cell: the reader's own cell. */
export type ReaderContext = Omit<FlagContext, 'cell'> & { readonly cell?: string };

/** What a choice that reads a flag needs: its value, or the whole answer for `explain`. */
export interface FlagReader {
  evaluate(key: string, context: ReaderContext): FlagEvaluation;
  /** The value of a boolean flag. */
  enabled(key: string, context: ReaderContext): boolean;
  /** The value of a string flag. */
  variant(key: string, context: ReaderContext): string;
}

/** A flag for one cluster, in its org (the reader looks the org up): what the machines and the data plane ask. */
export interface ClusterFlags {
  evaluateForCluster(key: string, clusterId: string): Promise<FlagEvaluation>;
}

export interface StaleFlag {
  readonly key: string;
  readonly reasons: readonly string[];
}

/**
 * Flags past their expiry, or fully rolled out: a global rule at 100 % or without a percentage and
 * no narrower rule or cohort setting it (the flag is a constant now, so it and its code can go).
 */
export function staleFlags(catalogue: readonly FlagDeclaration[], snapshot: FlagSnapshot, today: Date): StaleFlag[] {
  const stale: StaleFlag[] = [];
  for (const flag of catalogue) {
    const reasons: string[] = [];
    if (isExpired(flag, today)) reasons.push(`past its expiry (${flag.expires})`);
    const rules = snapshot.byFlag.get(flag.key);
    const global = rules?.global;
    if (rules !== undefined && global !== undefined && (global.percent === null || global.percent >= percentMax)) {
      const narrower = rules.cells.size + rules.orgs.size + rules.clusters.size > 0 || snapshot.cohorts.some((cohort) => cohort.values[flag.key] !== undefined);
      if (!narrower) reasons.push(`fully rolled out: the global rule sets ${String(global.value)} for everyone`);
    }
    if (reasons.length > 0) stale.push({ key: flag.key, reasons });
  }
  return stale;
}
