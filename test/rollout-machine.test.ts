import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type Outcome, type StepContext, isAllowedHop, toMermaid } from '../src/engine/machine.js';
import type { ClusterId } from '../src/lib/ids.js';
import type {
  ChangeOutcome,
  ClusterHealth,
  DefaultsProposal,
  FleetCluster,
  RolloutHalt,
  RolloutPorts,
  RolloutRecord,
  RolloutRecords,
} from '../src/machines/ports.js';
import { freezeNapMs } from '../src/machines/ports.js';
import {
  type RolloutData,
  type RolloutLabel,
  abortSignal,
  busyRetryMs,
  pauseSignal,
  rateWindowMs,
  ratePerMinuteMax,
  resumeSignal,
  rolloutActor,
  rolloutMachine,
  rolloutPollMs,
  sameDefaults,
} from '../src/machines/rollout.js';
import { FakeFreeze } from './helpers/fakes.js';
import { judgeHealth } from '../src/store/rollouts.js';

/**
 * The rollout machine, label by label and run through, with a FAKE of its store port
 * (RolloutRecords): clusters with their defaults, revisions and health, and the change machines'
 * outcomes. test/rollouts.test.ts runs the real one over real clusters.
 */

const rolloutId = 'ro_testtesttest';
const healthWaitMs = 60_000;
const oldDefaults = { work_mem: '4MB' };
const newDefaults = { work_mem: '8MB' };

interface FakeCluster {
  id: ClusterId;
  name: string;
  revision: number;
  defaults: Record<string, string>;
  health: ClusterHealth;
  /** What a proposal to it comes to instead of a revision. */
  answer?: DefaultsProposal;
}

class FakeClock {
  nowMs = 1_000_000;
}

class FakeRolloutRecords implements RolloutRecords {
  readonly clusters = new Map<ClusterId, FakeCluster>();
  readonly revisions: { clusterId: ClusterId; revision: number; actor: string; changeId: string }[] = [];
  readonly changes = new Map<string, ChangeOutcome>();
  readonly proposals: string[] = [];
  cursor: ClusterId | null = null;
  changed = 0;
  skipped = 0;
  current: { clusterId: ClusterId; revision: number } | null = null;
  halt: RolloutHalt | null = null;
  finished = false;
  ratePerMinute = 60;
  /** Changes finish (and clusters are healthy) as soon as they are proposed. */
  instant = true;

  addCluster(suffix: string, defaults: Record<string, string> = oldDefaults): ClusterId {
    const id = `cl_${suffix.padEnd(12, 'a')}` as ClusterId;
    this.clusters.set(id, { id, name: `db-${suffix}`, revision: 1, defaults: { ...defaults }, health: { state: 'healthy', detail: 'running' } });
    return id;
  }

  cluster(id: ClusterId): FakeCluster {
    const cluster = this.clusters.get(id);
    assert.ok(cluster !== undefined);
    return cluster;
  }

  async rollout(id: string): Promise<RolloutRecord> {
    return { id, defaultsAfter: newDefaults, ratePerMinute: this.ratePerMinute, reason: 'bigger sorts', cursorClusterId: this.cursor };
  }

  async nextCluster(after: ClusterId | null): Promise<FleetCluster | null> {
    const ids = [...this.clusters.keys()].sort().filter((id) => after === null || id > after);
    const id = ids[0];
    if (id === undefined) return null;
    const cluster = this.cluster(id);
    return { id, name: cluster.name, revision: cluster.revision, defaults: { ...cluster.defaults } };
  }

  async revisionSince(clusterId: ClusterId, afterRevision: number, actor: string): Promise<{ revision: number; changeId: string | null } | null> {
    const found = this.revisions.filter((entry) => entry.clusterId === clusterId && entry.revision > afterRevision && entry.actor === actor).at(-1);
    return found === undefined ? null : { revision: found.revision, changeId: found.changeId };
  }

  async proposeDefaults(clusterId: ClusterId, defaults: Readonly<Record<string, string>>, actor: string): Promise<DefaultsProposal> {
    const cluster = this.cluster(clusterId);
    this.proposals.push(cluster.name);
    if (cluster.answer !== undefined) return cluster.answer;
    cluster.revision += 1;
    cluster.defaults = { ...defaults };
    const changeId = `ch_${cluster.name}_${cluster.revision}`;
    this.revisions.push({ clusterId, revision: cluster.revision, actor, changeId });
    this.changes.set(changeId, this.instant ? { label: 'done', done: true, failed: false, error: null } : { label: 'apply', done: false, failed: false, error: null });
    return { type: 'proposed', revision: cluster.revision, changeId };
  }

  async changeOutcome(changeId: string): Promise<ChangeOutcome> {
    const outcome = this.changes.get(changeId);
    assert.ok(outcome !== undefined, `change ${changeId} exists`);
    return outcome;
  }

  async clusterHealth(clusterId: ClusterId): Promise<ClusterHealth> {
    return this.clusters.get(clusterId)?.health ?? { state: 'gone', detail: 'deleted' };
  }

  async recordStarted(_id: string, clusterId: ClusterId, revision: number): Promise<void> {
    this.current = { clusterId, revision };
  }

  async recordAdvanced(_id: string, clusterId: ClusterId, outcome: 'changed' | 'skipped'): Promise<void> {
    // As the store does: only forward.
    if (this.cursor !== null && this.cursor >= clusterId) return;
    this.cursor = clusterId;
    this.current = null;
    if (outcome === 'changed') this.changed += 1;
    else this.skipped += 1;
  }

  async recordHalted(_id: string, halt: RolloutHalt): Promise<void> {
    this.halt = halt;
  }

  async recordFinished(): Promise<void> {
    this.finished = true;
  }
}

type Result = Outcome<RolloutLabel, RolloutData>;

/** The engine's part, in memory: runs steps, applies hops, data and consumed signals; `resumeOn` for finished machines. */
class Runner {
  label: RolloutLabel = rolloutMachine.initial;
  data: RolloutData = {};
  finished = false;
  /** The `rollout.clusters-per-minute` rod. */
  rateCap: number = ratePerMinuteMax;
  readonly signals = new Set<string>();
  readonly events: { to: string; code: string | undefined; reason: string | undefined }[] = [];
  readonly ports: RolloutPorts;
  readonly freeze = new FakeFreeze();

  constructor(
    readonly records: FakeRolloutRecords,
    readonly clock: FakeClock,
  ) {
    this.ports = { clock: { nowMs: () => clock.nowMs }, rollouts: records, freeze: this.freeze, healthWaitMs, ratePerMinuteCap: () => this.rateCap };
  }

  /** One step's outcome, not applied (as if the engine died before it committed). */
  async peek(): Promise<Result> {
    const context: StepContext<RolloutLabel, RolloutData, RolloutPorts> = {
      machine: { id: 'ma_rollout', kind: rolloutMachine.kind, entityId: rolloutId, clusterId: null, label: this.label, attempt: 0, data: this.data },
      signals: new Set(this.signals),
      ports: this.ports,
      abort: new AbortController().signal,
    };
    return rolloutMachine.steps[this.label](context);
  }

  async step(): Promise<Result> {
    if (this.finished) return this.resume();
    const outcome = await this.peek();
    this.apply(outcome);
    return outcome;
  }

  private apply(outcome: Result): void {
    assert.notEqual(outcome.type, 'fail', `the rollout does not fail: ${JSON.stringify(outcome)}`);
    if (outcome.type === 'fail') return;
    for (const name of outcome.consume ?? []) this.signals.delete(name);
    if (outcome.data !== undefined) this.data = outcome.data;
    if (outcome.type === 'hop') {
      assert.ok(isAllowedHop(rolloutMachine, this.label, outcome.label), `${this.label} -> ${outcome.label} is in the table`);
      this.label = outcome.label;
      this.events.push({ to: outcome.label, code: outcome.code, reason: outcome.reason });
    }
    if (outcome.type === 'done') this.finished = true;
  }

  /** What the engine does with a signal on a finished machine. */
  private async resume(): Promise<Result> {
    for (const name of [...this.signals].sort()) {
      const target = rolloutMachine.resumeOn?.[name];
      if (target === undefined || !isAllowedHop(rolloutMachine, this.label, target)) continue;
      this.signals.delete(name);
      this.finished = false;
      this.label = target;
      return { type: 'hop', label: target };
    }
    this.signals.clear();
    return { type: 'done' };
  }

  /** Steps until a nap, done, or the label wanted; bounded. */
  async runUntil(stop: (outcome: Result) => boolean, stepsMax = 200): Promise<Result> {
    for (let steps = 0; steps < stepsMax; steps += 1) {
      const outcome = await this.step();
      if (stop(outcome)) return outcome;
    }
    throw new Error(`no stop within ${stepsMax} steps; at ${this.label}`);
  }

  runUntilLabel(label: RolloutLabel): Promise<Result> {
    return this.runUntil(() => this.label === label);
  }
}

function fleet(count: number): { records: FakeRolloutRecords; clock: FakeClock; runner: Runner; ids: ClusterId[] } {
  const records = new FakeRolloutRecords();
  const clock = new FakeClock();
  const ids = Array.from({ length: count }, (_, index) => records.addCluster(String.fromCharCode(98 + index)));
  return { records, clock, runner: new Runner(records, clock), ids };
}

test('the transition table renders and every label has a step', () => {
  assert.match(toMermaid(rolloutMachine), /next --> propose/);
  for (const label of Object.keys(rolloutMachine.transitions)) assert.equal(typeof rolloutMachine.steps[label as RolloutLabel], 'function', label);
  assert.ok(sameDefaults({ a: '1', b: '2' }, { b: '2', a: '1' }));
  assert.ok(!sameDefaults({ a: '1' }, { a: '1', b: '2' }));
});

test('walks the clusters in id order, skips those already at the new defaults, moves the others one by one, and completes', async () => {
  const { records, runner, ids } = fleet(4);
  records.cluster(ids[1] as ClusterId).defaults = { ...newDefaults };
  await runner.runUntilLabel('completed');
  await runner.step();
  assert.ok(runner.finished);
  assert.deepEqual(records.proposals, ['db-b', 'db-d', 'db-e'], 'db-c already ran them');
  assert.deepEqual([records.changed, records.skipped, records.cursor], [3, 1, ids[3]]);
  assert.ok(records.finished, 'the rollouts row is finished');
  assert.deepEqual(
    runner.events.filter((event) => event.code === 'rollout_cluster_done').map((event) => event.reason),
    ids.filter((_, index) => index !== 1).map((id) => `cluster ${records.cluster(id).name} (${id}) runs revision 2 and is healthy`),
  );
  for (const revision of records.revisions) assert.equal(revision.actor, rolloutActor(rolloutId));
});

test('starts at most ratePerMinute clusters in any minute: a nap until the oldest start leaves the window', async () => {
  const { records, clock, runner } = fleet(3);
  records.ratePerMinute = 2;
  const nap = await runner.runUntil((outcome) => outcome.type === 'nap');
  assert.deepEqual(records.proposals, ['db-b', 'db-c']);
  assert.equal(runner.label, 'propose');
  assert.equal(nap.type === 'nap' && nap.ms, rateWindowMs, 'both started at the same clock time');
  clock.nowMs += rateWindowMs - 1;
  assert.equal((await runner.step()).type, 'nap', 'still inside the window');
  assert.equal(records.proposals.length, 2);
  clock.nowMs += 1;
  await runner.runUntilLabel('completed');
  assert.deepEqual(records.proposals, ['db-b', 'db-c', 'db-d']);
});

test('the rollout.clusters-per-minute rod caps a faster rollout, read at each start', async () => {
  const { records, clock, runner } = fleet(3);
  records.ratePerMinute = 60;
  runner.rateCap = 1;
  await runner.runUntil((outcome) => outcome.type === 'nap');
  assert.deepEqual(records.proposals, ['db-b'], 'one start a minute under the rod');
  runner.rateCap = 60;
  clock.nowMs += 1;
  await runner.runUntilLabel('completed');
  assert.deepEqual(records.proposals, ['db-b', 'db-c', 'db-d'], 'the raised rod lets the rest start inside the same minute');
});

test('halts at the first cluster whose change fails, names the cluster, revision and reason, and leaves the next one untouched', async () => {
  const { records, runner, ids } = fleet(3);
  records.instant = false;
  const [first, second, third] = ids as [ClusterId, ClusterId, ClusterId];
  await runner.runUntil((outcome) => outcome.type === 'nap');
  assert.equal(runner.label, 'waitCluster');
  records.changes.set(`ch_db-b_2`, { label: 'done', done: true, failed: false, error: null });
  await runner.runUntil((outcome) => outcome.type === 'nap' && records.proposals.length === 2);
  records.changes.set(`ch_db-c_2`, { label: 'apply', done: false, failed: true, error: 'instance in_x: reload refused' });
  const halted = await runner.runUntilLabel('halted');
  assert.equal(halted.type, 'hop');
  assert.equal(halted.type === 'hop' && halted.code, 'rollout_halted');
  assert.equal(halted.type === 'hop' && halted.reason, `halted at cluster db-c (${second}), revision 2: its change (revision 2) failed at apply: instance in_x: reload refused`);
  assert.deepEqual(records.halt, { clusterId: second, clusterName: 'db-c', revision: 2, reason: 'its change (revision 2) failed at apply: instance in_x: reload refused' });
  assert.deepEqual([records.cursor, records.changed], [first, 1], 'the cursor stops before the halted cluster');
  assert.equal((await runner.step()).type, 'done', 'a halted rollout waits for a human');
  assert.deepEqual(records.cluster(third).defaults, oldDefaults);
  assert.deepEqual(records.proposals, ['db-b', 'db-c']);
});

test('halts at a cluster not healthy within the bound, and at once at one that cannot recover (a failed primary)', async () => {
  const { records, clock, runner, ids } = fleet(2);
  const [first, second] = ids as [ClusterId, ClusterId];
  records.cluster(first).health = { state: 'waiting', detail: 'replica in_r is starting' };
  await runner.runUntil((outcome) => outcome.type === 'nap');
  assert.equal(runner.label, 'waitCluster');
  clock.nowMs += healthWaitMs;
  assert.deepEqual(await runner.step(), { type: 'nap', ms: rolloutPollMs }, 'exactly at the bound: not yet');
  clock.nowMs += 1;
  await runner.step();
  assert.equal(runner.label, 'halted');
  assert.deepEqual(records.halt, { clusterId: first, clusterName: 'db-b', revision: 2, reason: `it was not healthy within ${healthWaitMs} ms (CELLAR_ROLLOUT_HEALTH_WAIT_MS): replica in_r is starting` });
  assert.deepEqual(records.proposals, ['db-b']);

  const other = fleet(2);
  other.records.instant = false;
  await other.runner.runUntil((outcome) => outcome.type === 'nap');
  assert.deepEqual(other.records.proposals, ['db-b']);
  other.records.cluster(first).health = { state: 'broken', detail: 'its primary in_p failed: induced' };
  await other.runner.step();
  assert.equal(other.runner.label, 'halted', 'its change still running does not make it wait out the bound');
  assert.equal(other.records.halt?.reason, 'it is not healthy: its primary in_p failed: induced');
  assert.deepEqual(other.records.cluster(second).defaults, oldDefaults);
});

test('a refused proposal halts there; a busy cluster is asked again until the bound; a deleted one is passed over', async () => {
  const refused = fleet(2);
  refused.records.cluster(refused.ids[0] as ClusterId).answer = { type: 'refused', reason: 'shared_buffers: 2GB is more than the memory [CELLAR_E_INVALID]' };
  await refused.runner.runUntilLabel('halted');
  assert.equal(refused.records.halt?.revision, null);
  assert.match(refused.records.halt?.reason ?? '', /its change was refused: shared_buffers/);

  const busy = fleet(2);
  const target = busy.ids[0] as ClusterId;
  busy.records.cluster(target).answer = { type: 'busy', reason: 'revision 2 is being applied' };
  const first = await busy.runner.runUntil((outcome) => outcome.type === 'nap');
  assert.equal(first.type === 'nap' && first.ms, busyRetryMs);
  assert.equal(first.type === 'nap' && first.code, 'rollout_waiting_for_change');
  const again = await busy.runner.step();
  assert.equal(again.type === 'nap' && again.code, undefined, 'the wait is announced once');
  busy.clock.nowMs += healthWaitMs + 1;
  await busy.runner.step();
  assert.equal(busy.runner.label, 'halted');
  assert.match(busy.records.halt?.reason ?? '', /another change of it did not finish within 60000 ms: revision 2 is being applied/);

  const failedCluster = fleet(2);
  const failedId = failedCluster.ids[0] as ClusterId;
  failedCluster.records.cluster(failedId).answer = { type: 'busy', reason: 'the cluster is failed' };
  failedCluster.records.cluster(failedId).health = { state: 'broken', detail: 'its cluster machine failed: induced' };
  await failedCluster.runner.runUntilLabel('halted');
  assert.equal(failedCluster.records.halt?.reason, 'its change was refused (the cluster is failed) and it is not healthy: its cluster machine failed: induced');

  const gone = fleet(2);
  gone.records.cluster(gone.ids[0] as ClusterId).answer = { type: 'gone' };
  await gone.runner.runUntilLabel('completed');
  assert.deepEqual([gone.records.skipped, gone.records.changed], [1, 1]);
});

test('pause waits for the cluster in hand, then stops between clusters; resume goes on; abort stops for good', async () => {
  const { records, runner } = fleet(3);
  records.instant = false;
  await runner.runUntil((outcome) => outcome.type === 'nap');
  runner.signals.add(pauseSignal);
  assert.equal((await runner.step()).type, 'nap', 'the cluster being changed is finished first');
  assert.ok(runner.signals.has(pauseSignal));
  records.changes.set('ch_db-b_2', { label: 'done', done: true, failed: false, error: null });
  await runner.runUntilLabel('paused');
  assert.equal((await runner.step()).type, 'done');
  assert.deepEqual(records.proposals, ['db-b'], 'nothing more was started while paused');
  assert.equal(records.changed, 1);
  runner.signals.add(resumeSignal);
  await runner.step();
  assert.equal(runner.label, 'next');
  await runner.runUntil((outcome) => outcome.type === 'nap');
  assert.deepEqual(records.proposals, ['db-b', 'db-c']);
  runner.signals.add(abortSignal);
  await runner.step();
  assert.equal(runner.label, 'aborted');
  await runner.step();
  assert.ok(runner.finished && records.finished);
  runner.signals.add(resumeSignal);
  await runner.step();
  assert.equal(runner.label, 'aborted', 'an aborted rollout stays aborted');
  assert.deepEqual(records.proposals, ['db-b', 'db-c']);
});

test('a pause and a resume both pending cancel out; abort from paused and from halted', async () => {
  const { runner } = fleet(2);
  runner.signals.add(pauseSignal).add(resumeSignal);
  await runner.step();
  assert.equal(runner.label, 'paused');
  await runner.step();
  assert.equal(runner.label, 'next');
  assert.equal(runner.signals.size, 0);

  const halted = fleet(2);
  halted.records.cluster(halted.ids[0] as ClusterId).health = { state: 'broken', detail: 'its cluster machine failed: induced' };
  await halted.runner.runUntilLabel('halted');
  await halted.runner.step();
  halted.runner.signals.add(abortSignal);
  await halted.runner.step();
  assert.equal(halted.runner.label, 'aborted');
  await halted.runner.step();
  assert.ok(halted.records.finished);
  assert.deepEqual(halted.records.proposals, ['db-b'], 'nothing was proposed after the halt');
});

test('resumed after a halt, it looks at that cluster again: waits for it to be healthy (its defaults moved already), then goes on', async () => {
  const { records, runner, ids } = fleet(3);
  const [first, second] = ids as [ClusterId, ClusterId];
  records.cluster(first).health = { state: 'broken', detail: 'its primary in_p failed: induced' };
  await runner.runUntilLabel('halted');
  await runner.step();
  assert.ok(runner.finished);
  records.cluster(first).health = { state: 'healthy', detail: 'repaired' };
  runner.signals.add(resumeSignal);
  const retried = await runner.runUntil((outcome) => outcome.type === 'hop' && outcome.label === 'waitCluster');
  assert.equal(retried.type === 'hop' && retried.code, 'rollout_cluster_retried');
  await runner.runUntilLabel('completed');
  assert.deepEqual(records.proposals, ['db-b', 'db-c', 'db-d'], 'db-b was not proposed twice');
  assert.equal(records.cursor, ids[2]);
  assert.deepEqual(records.cluster(second).defaults, newDefaults);
});

test('crash safety: a propose step run again after its outcome was lost finds its revision instead of proposing twice', async () => {
  const { records, runner } = fleet(2);
  records.instant = false;
  await runner.step();
  assert.equal(runner.label, 'propose');
  const lost = await runner.peek();
  assert.equal(lost.type === 'hop' && lost.label, 'waitCluster');
  assert.deepEqual(records.proposals, ['db-b']);
  const again = await runner.step();
  assert.deepEqual(records.proposals, ['db-b'], 'one proposal');
  assert.equal(again.type === 'hop' && again.label, 'waitCluster');
  assert.deepEqual(runner.data.current, lost.type === 'hop' ? lost.data?.current : undefined, 'the same revision and change');
  // A waitCluster step run twice counts the cluster once.
  records.changes.set('ch_db-b_2', { label: 'done', done: true, failed: false, error: null });
  await runner.peek();
  await runner.step();
  assert.deepEqual([records.changed, runner.label], [1, 'next']);
});

test('health: the cluster machine running and every instance running and routed; a failed primary is broken, a failed replica is waited for', () => {
  const running = (id: string, role = 'replica') => ({ id, role, label: 'running', last_error: null, in_route: true });
  assert.equal(judgeHealth('running', 1, [running('in_a', 'primary'), running('in_b')]).state, 'healthy');
  assert.deepEqual(judgeHealth('running', 1, [running('in_a', 'primary'), { ...running('in_b'), in_route: false }]), { state: 'waiting', detail: 'replica in_b is running (out of the routes)' });
  assert.equal(judgeHealth('running', 1, [running('in_a', 'primary')]).state, 'waiting', 'a replica short');
  assert.equal(judgeHealth('running', 1, [running('in_a', 'primary'), { ...running('in_b'), label: 'failed' }]).state, 'waiting');
  assert.deepEqual(judgeHealth('running', 0, [{ ...running('in_a', 'primary'), label: 'failed', last_error: 'induced' }]), { state: 'broken', detail: 'its primary in_a failed: induced' });
  assert.equal(judgeHealth('switchover', 0, [running('in_a', 'primary')]).state, 'waiting');
});

test('frozen, a rollout naps before its next cluster (said once) and proposes nothing; after the thaw it goes on by itself', async () => {
  const { records, runner } = fleet(2);
  runner.freeze.isFrozen = true;
  const held = await runner.step();
  assert.deepEqual([held.type, held.type === 'nap' && held.ms, held.code], ['nap', freezeNapMs, 'held_by_freeze']);
  const again = await runner.step();
  assert.deepEqual([again.type, again.code], ['nap', undefined], 'a long freeze makes one event');
  assert.equal(runner.label, 'next');
  assert.deepEqual(records.proposals, []);
  runner.freeze.isFrozen = false;
  await runner.runUntilLabel('completed');
  assert.deepEqual(records.proposals, ['db-b', 'db-c']);
});

test('frozen while it waits for a cluster, a rollout does not halt past the health wait: the wait starts again after the thaw', async () => {
  const { records, clock, runner, ids } = fleet(1);
  records.instant = false;
  await runner.runUntil((outcome) => outcome.type === 'nap');
  assert.equal(runner.label, 'waitCluster');
  runner.freeze.isFrozen = true;
  assert.equal((await runner.step()).code, 'held_by_freeze');
  clock.nowMs += healthWaitMs * 2;
  assert.equal((await runner.step()).type, 'nap');
  runner.freeze.isFrozen = false;
  await runner.step();
  assert.deepEqual(await runner.step(), { type: 'nap', ms: rolloutPollMs }, 'not halted: a fresh health wait');
  assert.equal(runner.label, 'waitCluster');
  records.changes.set(`ch_db-b_2`, { label: 'done', done: true, failed: false, error: null });
  await runner.runUntilLabel('completed');
  assert.equal(records.halt, null);
  assert.equal(records.cursor, ids[0]);
});
