import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { type FlagDeclaration, type FlagValue, expiredReleaseFlags, findFlag, flagCatalogue, flagKeyPattern, isFlagValue, withProcessDefaults } from '../src/lib/flag-catalogue.js';
import { type Cohort, type FlagContext, type FlagRule, type FlagSnapshot, type RuleLevel, bucket, buildSnapshot, evaluateFlag, staleFlags } from '../src/lib/flags.js';

/** Flags: the catalogue's rules, the bucket, and the one evaluation (docs/CONTROLS.md, "Flags"). */

const propertyRuns = 300;
const flag: FlagDeclaration = { key: 'test-flag', type: 'string', variants: ['a', 'b', 'c', 'd'], default: 'a', owner: 'tests', kind: 'experiment', expires: '2999-01-01', description: 'for tests' };
const cellName = 'local';

/** Deterministic, id-shaped inputs: sequential ids are the worst case for a weak hash. */
const clusterIds = Array.from({ length: 10_000 }, (_, index) => `cl_${index.toString(32).padStart(12, '0')}`);

function rule(level: RuleLevel, target: string, value: FlagValue, percent: number | null): FlagRule {
  return { flagKey: flag.key, level, target, value, percent, reason: 'test', setBy: 'test', setAt: '2026-01-01T00:00:00Z' };
}

test('the catalogue: keys are kebab-case and unique, defaults are values of their flag, the issue\'s four flags are there and operational', () => {
  assert.equal(new Set(flagCatalogue.map((entry) => entry.key)).size, flagCatalogue.length);
  for (const entry of flagCatalogue) {
    assert.match(entry.key, flagKeyPattern);
    assert.ok(isFlagValue(entry, entry.default), `${entry.key}'s default`);
    assert.match(entry.expires, /^\d{4}-\d{2}-\d{2}$/);
    assert.ok(entry.owner.length > 0);
  }
  for (const key of ['durability-default', 'provision-from-template', 'backup-verification', 'proxy-native-relay']) assert.equal(findFlag(key)?.kind, 'operational', key);
});

test('no release flag in the catalogue is past its expiry (remove the flag and the code behind it)', () => {
  const today = new Date();
  const expired = expiredReleaseFlags(flagCatalogue, today);
  assert.deepEqual(expired.map((entry) => `${entry.key} expired ${entry.expires}`), []);
  // The check itself finds one: a release flag that expired yesterday.
  const yesterday = new Date(today.getTime() - 86_400_000).toISOString().slice(0, 10);
  assert.equal(expiredReleaseFlags([{ ...flag, kind: 'release', expires: yesterday }], today).length, 1);
  assert.equal(expiredReleaseFlags([{ ...flag, kind: 'operational', expires: yesterday }], today).length, 0);
});

test('the bucket is stable: the same key and id always give the same value, in [0, 100)', () => {
  assert.equal(bucket('durability-default', 'cl_aaaaaaaaaaaa'), bucket('durability-default', 'cl_aaaaaaaaaaaa'));
  // Pinned: a change to the hash would move every rollout in the fleet.
  assert.equal(bucket('durability-default', 'org_abcdefghijkl').toFixed(6), '28.324308');
  assert.equal(bucket('backup-verification', 'cl_aaaaaaaaaaaa').toFixed(6), '96.845127');
  fc.assert(
    fc.property(fc.string({ maxLength: 40 }), fc.string({ maxLength: 40 }), (key, id) => {
      const at = bucket(key, id);
      return at >= 0 && at < 100 && at === bucket(key, id);
    }),
    { numRuns: propertyRuns },
  );
});

test('the bucket is uniform: 10 000 sequential ids over 20 equal ranges pass chi-square at p = 0.001 and no range is off by more than 15 %', () => {
  const ranges = 20;
  // Chi-square with 19 degrees of freedom, p = 0.001.
  const chiSquareCritical = 43.82;
  for (const key of ['durability-default', 'provision-from-template', 'x']) {
    const counts = new Array<number>(ranges).fill(0);
    for (const id of clusterIds) counts[Math.floor(bucket(key, id) / (100 / ranges))]! += 1;
    const expected = clusterIds.length / ranges;
    const chiSquare = counts.reduce((sum, count) => sum + (count - expected) ** 2 / expected, 0);
    assert.ok(chiSquare < chiSquareCritical, `${key}: chi-square ${chiSquare.toFixed(1)} over ${counts.join(' ')}`);
    for (const count of counts) assert.ok(Math.abs(count - expected) / expected < 0.15, `${key}: ${counts.join(' ')}`);
  }
});

test('rollouts are monotonic and sticky: raising a percentage only adds ids; lowering it removes exactly the ids added last', () => {
  const ids = clusterIds.slice(0, 500);
  const onAt = (percent: number): Set<string> => {
    const snapshot = buildSnapshot([rule('global', '', 'b', percent)], []);
    return new Set(ids.filter((id) => evaluateFlag(flag, { cell: cellName, cluster: id }, snapshot).value === 'b'));
  };
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 10_000 }), fc.integer({ min: 0, max: 10_000 }), (first, second) => {
      const low = Math.min(first, second) / 100;
      const high = Math.max(first, second) / 100;
      const lowOn = onAt(low);
      const highOn = onAt(high);
      for (const id of lowOn) if (!highOn.has(id)) return false;
      // Going down from high to low removes the ids whose buckets are highest: the last ones raising added.
      const removed = [...highOn].filter((id) => !lowOn.has(id));
      const keptMax = Math.max(-1, ...[...lowOn].map((id) => bucket(flag.key, id)));
      return removed.every((id) => bucket(flag.key, id) >= keptMax);
    }),
    { numRuns: 100 },
  );
  assert.equal(onAt(0).size, 0);
  assert.equal(onAt(100).size, ids.length);
});

/** The contract's precedence, written as plainly as possible, to check the evaluation against. */
function reference(context: FlagContext, rules: readonly FlagRule[], cohorts: readonly Cohort[]): FlagValue {
  const id = context.cluster ?? context.org;
  const applies = (candidate: FlagRule | undefined): boolean => candidate !== undefined && (candidate.percent === null || (id !== undefined && bucket(flag.key, id) < candidate.percent));
  const find = (level: RuleLevel, target: string | undefined): FlagRule | undefined => (target === undefined ? undefined : rules.find((candidate) => candidate.level === level && candidate.target === target));
  for (const candidate of [find('cluster', context.cluster), find('org', context.org)]) if (applies(candidate)) return candidate!.value;
  const cohort = [...cohorts]
    .sort((a, b) => a.name.localeCompare(b.name))
    .find((each) => each.values[flag.key] !== undefined && each.members.some((member) => member.id === context.cluster || member.id === context.org));
  if (cohort !== undefined) return cohort.values[flag.key]!;
  for (const candidate of [find('cell', context.cell), find('global', '')]) if (applies(candidate)) return candidate!.value;
  return flag.default;
}

const orgs = ['org_one', 'org_two', 'org_three'];
const clusters = ['cl_one', 'cl_two', 'cl_three', 'cl_four'];
const valueArbitrary = fc.constantFrom('a', 'b', 'c', 'd');
const percentArbitrary = fc.option(fc.constantFrom(0, 10, 33.33, 50, 90, 100), { nil: null });
const ruleArbitrary = fc.oneof(
  fc.record({ level: fc.constant<RuleLevel>('global'), target: fc.constant(''), value: valueArbitrary, percent: percentArbitrary }),
  fc.record({ level: fc.constant<RuleLevel>('cell'), target: fc.constantFrom('local', 'other'), value: valueArbitrary, percent: percentArbitrary }),
  fc.record({ level: fc.constant<RuleLevel>('org'), target: fc.constantFrom(...orgs), value: valueArbitrary, percent: percentArbitrary }),
  fc.record({ level: fc.constant<RuleLevel>('cluster'), target: fc.constantFrom(...clusters), value: valueArbitrary, percent: percentArbitrary }),
);
const cohortArbitrary = fc.record({
  name: fc.constantFrom('alpha', 'beta', 'gamma'),
  description: fc.constant(''),
  values: fc.option(valueArbitrary, { nil: undefined }).map((value): Record<string, FlagValue> => (value === undefined ? { 'other-flag': true } : { [flag.key]: value })),
  members: fc.uniqueArray(fc.constantFrom(...orgs.map((id) => ({ kind: 'org' as const, id })), ...clusters.map((id) => ({ kind: 'cluster' as const, id }))), { selector: (member) => member.id, maxLength: 3 }),
});
const contextArbitrary = fc.record({ cell: fc.constantFrom('local', 'other'), org: fc.option(fc.constantFrom(...orgs), { nil: undefined }), cluster: fc.option(fc.constantFrom(...clusters), { nil: undefined }) });

test('precedence holds: cluster, org, cohort (first by name), cell, global, default; a percentage that does not apply falls through', () => {
  fc.assert(
    fc.property(
      fc.uniqueArray(ruleArbitrary, { selector: (candidate) => `${candidate.level}/${candidate.target}`, maxLength: 8 }),
      fc.uniqueArray(cohortArbitrary, { selector: (cohort) => cohort.name, maxLength: 3 }),
      contextArbitrary,
      (drawn, cohorts, drawnContext) => {
        const rules = drawn.map((candidate) => rule(candidate.level, candidate.target, candidate.value, candidate.percent));
        const context: FlagContext = { cell: drawnContext.cell, ...(drawnContext.org === undefined ? {} : { org: drawnContext.org }), ...(drawnContext.cluster === undefined ? {} : { cluster: drawnContext.cluster }) };
        const snapshot = buildSnapshot(rules, cohorts);
        const evaluation = evaluateFlag(flag, context, snapshot);
        assert.equal(evaluation.value, reference(context, rules, cohorts));
        assert.ok(evaluation.why.length > 0 && !evaluation.why.includes('\n'));
      },
    ),
    { numRuns: propertyRuns * 3 },
  );
});

test('explain names the deciding rule: a cluster rule beats the org rule; an org rule at a percentage that misses falls through to global', () => {
  const inRollout = clusterIds.find((id) => bucket(flag.key, id) < 50)!;
  const outOfRollout = clusterIds.find((id) => bucket(flag.key, id) >= 50)!;
  const snapshot = buildSnapshot([rule('global', '', 'b', null), rule('org', 'org_one', 'c', 50), rule('cluster', 'cl_pinned', 'd', null)], []);
  assert.deepEqual(evaluateFlag(flag, { cell: cellName, org: 'org_one', cluster: 'cl_pinned' }, snapshot).decidedBy, { level: 'cluster', target: 'cl_pinned', percent: null });
  const inside = evaluateFlag(flag, { cell: cellName, org: 'org_one', cluster: inRollout }, snapshot);
  assert.equal(inside.value, 'c');
  assert.match(inside.why, /org rule for org_one at 50 %: .* below it/);
  const outside = evaluateFlag(flag, { cell: cellName, org: 'org_one', cluster: outOfRollout }, snapshot);
  assert.deepEqual([outside.value, outside.decidedBy.level], ['b', 'global']);
  assert.match(outside.why, /not applied: org rule for org_one at 50 %/);
  assert.deepEqual(evaluateFlag(flag, { cell: cellName }, buildSnapshot([], [])).decidedBy, { level: 'default' });
});

test('a cohort turns its flags on for its members only (an org member covers its clusters); a rule of the member\'s own still wins', () => {
  const booleanFlag: FlagDeclaration = { key: 'early-access', type: 'boolean', default: false, owner: 'tests', kind: 'release', expires: '2999-01-01', description: 'for tests' };
  const cohort: Cohort = { name: 'early', description: 'a customer', values: { 'early-access': true }, members: [{ kind: 'org', id: 'org_in' }, { kind: 'cluster', id: 'cl_guest' }] };
  const snapshot: FlagSnapshot = buildSnapshot([], [cohort]);
  const on = (context: FlagContext): FlagValue => evaluateFlag(booleanFlag, context, snapshot).value;
  assert.equal(on({ cell: cellName, org: 'org_in' }), true);
  assert.equal(on({ cell: cellName, org: 'org_in', cluster: 'cl_any' }), true);
  assert.equal(on({ cell: cellName, org: 'org_out', cluster: 'cl_guest' }), true);
  assert.equal(on({ cell: cellName, org: 'org_out', cluster: 'cl_other' }), false);
  assert.equal(on({ cell: cellName, org: 'org_out' }), false);
  assert.equal(on({ cell: cellName }), false);
  const overridden = buildSnapshot([{ ...rule('org', 'org_in', false, null), flagKey: 'early-access' }], [cohort]);
  assert.equal(evaluateFlag(booleanFlag, { cell: cellName, org: 'org_in' }, overridden).value, false);
  assert.match(evaluateFlag(booleanFlag, { cell: cellName, org: 'org_out', cluster: 'cl_guest' }, overridden).why, /cohort early, which cl_guest is a member of/);
});

test('flags stale lists flags past their expiry and flags fully rolled out (a global rule for everyone, nothing narrower)', () => {
  const today = new Date('2027-06-01T00:00:00Z');
  const expired: FlagDeclaration = { ...flag, key: 'old-one', expires: '2027-01-01' };
  const rolledOut: FlagDeclaration = { ...flag, key: 'done-one' };
  const hundred: FlagDeclaration = { ...flag, key: 'hundred-one' };
  const partial: FlagDeclaration = { ...flag, key: 'partial-one' };
  const narrowed: FlagDeclaration = { ...flag, key: 'narrowed-one' };
  const cohorted: FlagDeclaration = { ...flag, key: 'cohorted-one' };
  const rules = [
    { ...rule('global', '', 'b', null), flagKey: 'done-one' },
    { ...rule('global', '', 'b', 100), flagKey: 'hundred-one' },
    { ...rule('global', '', 'b', 99.99), flagKey: 'partial-one' },
    { ...rule('global', '', 'b', null), flagKey: 'narrowed-one' },
    { ...rule('org', 'org_one', 'c', null), flagKey: 'narrowed-one' },
    { ...rule('global', '', 'b', null), flagKey: 'cohorted-one' },
  ];
  const cohorts: Cohort[] = [{ name: 'c', description: '', values: { 'cohorted-one': 'c' }, members: [] }];
  const stale = staleFlags([expired, rolledOut, hundred, partial, narrowed, cohorted], buildSnapshot(rules, cohorts), today);
  assert.deepEqual(stale.map((entry) => entry.key), ['old-one', 'done-one', 'hundred-one']);
  assert.match(stale[0]!.reasons[0]!, /past its expiry \(2027-01-01\)/);
  assert.match(stale[1]!.reasons[0]!, /fully rolled out/);
});

test("a process default (the flag's environment variable) replaces the catalogue's default, and only with a value of the flag", () => {
  const catalogue = withProcessDefaults(flagCatalogue, { 'provision-from-template': false, 'durability-default': 'nonsense' });
  assert.equal(catalogue.find((entry) => entry.key === 'provision-from-template')?.default, false);
  assert.equal(catalogue.find((entry) => entry.key === 'durability-default')?.default, 'sync');
});
