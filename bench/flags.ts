import { flagCatalogue } from '../src/lib/flag-catalogue.js';
import { type Cohort, type FlagContext, type FlagRule, bucket, buildSnapshot, evaluateFlag } from '../src/lib/flags.js';

/**
 * bench/flags: the cost of one flag evaluation with the snapshot warm (goal: under 1 µs;
 * docs/CONTROLS.md "Read live"), over a snapshot the size of a busy cell: per flag a global rule at
 * a percentage, 200 org rules and 2 000 cluster rules, and 20 cohorts of 100 members. Contexts are
 * drawn so that each case below is the one deciding. Usage: node dist/bench/flags.js [evaluations]
 */

const evaluations = Number(process.argv[2] ?? 2_000_000);
const orgCount = 1_000;
const clusterCount = 10_000;
const orgIds = Array.from({ length: orgCount }, (_, index) => `org_${index.toString(32).padStart(12, '0')}`);
const clusterIds = Array.from({ length: clusterCount }, (_, index) => `cl_${index.toString(32).padStart(12, '0')}`);

const rules: FlagRule[] = [];
const rule = (flagKey: string, level: FlagRule['level'], target: string, value: boolean | string, percent: number | null): FlagRule => ({ flagKey, level, target, value, percent, reason: 'bench', setBy: 'bench', setAt: '' });
for (const flag of flagCatalogue) {
  const value = flag.type === 'boolean' ? !flag.default : flag.variants[flag.variants.length - 1]!;
  rules.push(rule(flag.key, 'global', '', value, 50));
  for (const org of orgIds.slice(0, 200)) rules.push(rule(flag.key, 'org', org, value, null));
  for (const cluster of clusterIds.slice(0, 2_000)) rules.push(rule(flag.key, 'cluster', cluster, value, null));
}
const cohorts: Cohort[] = Array.from({ length: 20 }, (_, index) => ({
  name: `cohort-${index}`,
  description: '',
  values: { 'backup-verification': false },
  members: [...orgIds.slice(200 + index * 10, 210 + index * 10).map((id) => ({ kind: 'org' as const, id })), ...clusterIds.slice(2_000 + index * 90, 2_090 + index * 90).map((id) => ({ kind: 'cluster' as const, id }))],
}));
const snapshot = buildSnapshot(rules, cohorts);

const cases: { name: string; contexts: FlagContext[] }[] = [
  { name: 'cluster rule', contexts: clusterIds.slice(0, 2_000).map((cluster, index) => ({ cell: 'local', org: orgIds[index % orgCount]!, cluster })) },
  { name: 'org rule', contexts: clusterIds.slice(5_000, 7_000).map((cluster, index) => ({ cell: 'local', org: orgIds[index % 200]!, cluster })) },
  { name: 'cohort or global at 50 %', contexts: clusterIds.slice(2_000, 4_000).map((cluster, index) => ({ cell: 'local', org: orgIds[400 + (index % 600)]!, cluster })) },
  { name: 'global at 50 % / default', contexts: clusterIds.slice(8_000, 10_000).map((cluster, index) => ({ cell: 'local', org: orgIds[400 + (index % 600)]!, cluster })) },
];

let sink = 0;
/**
 * The floor, measured in the same run: what any evaluation must do at the least for the same
 * contexts, one Map lookup per level (cluster, org, cohort member, cell) and the bucket's hash, with
 * no precedence, no answer object. Cellar's figure is compared with it.
 */
const floorMaps = [new Map(clusterIds.slice(0, 2_000).map((id) => [id, 1])), new Map(orgIds.slice(0, 200).map((id) => [id, 1])), new Map(snapshot.cohortsByMember), new Map([['local', 1]])] as const;
function floorOnce(key: string, context: FlagContext): number {
  let found = 0;
  if (context.cluster !== undefined && floorMaps[0].has(context.cluster)) found += 1;
  if (context.org !== undefined && floorMaps[1].has(context.org)) found += 1;
  if (floorMaps[2].has(context.cluster ?? '')) found += 1;
  if (floorMaps[3].has(context.cell)) found += 1;
  return found + bucket(key, context.cluster ?? context.org ?? '');
}
const floorNs = new Map<string, number>();
for (const { name, contexts } of cases) {
  for (const round of [0, 1]) {
    const started = process.hrtime.bigint();
    for (let index = 0; index < evaluations; index++) sink += floorOnce(flagCatalogue[index & 3]!.key, contexts[index % contexts.length]!) > 1000 ? 1 : 0;
    if (round === 1) floorNs.set(name, Number(process.hrtime.bigint() - started) / evaluations);
  }
}
for (const { name, contexts } of cases) {
  for (const round of [0, 1]) {
    const started = process.hrtime.bigint();
    for (let index = 0; index < evaluations; index++) {
      const flag = flagCatalogue[index & 3]!;
      const evaluation = evaluateFlag(flag, contexts[index % contexts.length]!, snapshot);
      if (evaluation.value === true) sink++;
    }
    const nanoseconds = Number(process.hrtime.bigint() - started) / evaluations;
    // The first round warms the JIT; the second is the figure.
    if (round === 1) console.log(`${name.padEnd(28)} ${nanoseconds.toFixed(0).padStart(5)} ns per evaluation (${evaluations} evaluations); floor (lookups + hash) ${(floorNs.get(name) ?? 0).toFixed(0)} ns; goal < 1000 ns: ${nanoseconds < 1000 ? 'met' : 'NOT met'}`);
  }
}
if (sink < 0) console.log(sink);
