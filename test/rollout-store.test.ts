import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { CellarError, invalid } from '../src/lib/errors.js';
import type { ClusterId, OrgId } from '../src/lib/ids.js';
import { clusterMachine } from '../src/machines/cluster.js';
import { hostMachine } from '../src/machines/host.js';
import { instanceMachine } from '../src/machines/instance.js';
import type { ChangeOutcome } from '../src/machines/ports.js';
import { rolloutMachine } from '../src/machines/rollout.js';
import { insertCluster } from '../src/store/clusters.js';
import { ensureLocalHost } from '../src/store/local-host.js';
import { PgMachineStore } from '../src/store/machine-store.js';
import { type ConfigChanges, PgRolloutRecords, changeDefaults, currentDefaults, findRollout } from '../src/store/rollouts.js';
import { type TestStore, startTestStore } from './helpers/store.js';

/**
 * The rollouts' SQL against a real cell store: the defaults change in one transaction, one
 * unfinished rollout at a time, the cursor only moving forward, clusters in id order, health from
 * the machines' labels. `proposeChange` is a FAKE here (store/config.ts's own is tested with it).
 */

const orgId = 'org_rolloutstore' as OrgId;
let store: TestStore;
let machines: PgMachineStore;

class FakeChanges implements ConfigChanges {
  failWith: CellarError | null = null;
  async proposeChange(pool: TestStore['pool'], input: { clusterId: ClusterId; actor: string; change: { defaults: Record<string, string> } }): Promise<{ revision: number; changeId: string }> {
    if (this.failWith !== null) throw this.failWith;
    const next = await pool.query<{ revision: number }>('select max(revision) + 1 as revision from config_revisions where cluster_id = $1', [input.clusterId]);
    const revision = next.rows[0]?.revision ?? 2;
    const changeId = `ch_${input.clusterId.slice(3)}${revision}`;
    await pool.query(
      `insert into config_revisions (cluster_id, revision, size, replicas, defaults, actor, change_id) select id, $2, spec ->> 'size', (spec ->> 'replicas')::int, $3, $4, $5 from clusters where id = $1`,
      [input.clusterId, revision, input.change.defaults, input.actor, changeId],
    );
    await pool.query(`update clusters set spec = jsonb_set(spec, '{defaults}', $2) where id = $1`, [input.clusterId, input.change.defaults]);
    return { revision, changeId };
  }
  async changeState(): Promise<ChangeOutcome> {
    return { label: 'done', done: true, failed: false, error: null };
  }
}

before(async () => {
  store = await startTestStore();
  machines = new PgMachineStore(store.pool, 41_000, 41_100, instanceMachine);
  await ensureLocalHost(store.pool, { memoryMb: 1_048_576, diskGb: 1_048_576, slots: 1_000, agentPort: 8436 }, hostMachine);
  await store.pool.query('insert into orgs (id, name) values ($1, $2)', [orgId, 'rollout-store']);
});
after(async () => {
  await store.close();
});

async function cluster(name: string, replicas = 0): Promise<ClusterId> {
  const id = await insertCluster(store.pool, clusterMachine, orgId, name, { size: 'micro', replicas, storageGb: 1, pgVersion: 15, durability: 'async' });
  for (let ordinal = 0; ordinal <= replicas; ordinal += 1) await machines.createInstance(id, ordinal, ordinal === 0 ? 'primary' : 'replica');
  return id;
}

async function setLabels(clusterId: ClusterId, clusterLabel: string, instanceLabel: string): Promise<void> {
  // Test set-up only: the engine moves labels in the product.
  await store.pool.query(`update machines set label = $2 where kind = 'cluster' and entity_id = $1`, [clusterId, clusterLabel]);
  await store.pool.query(`update machines set label = $2 where kind = 'instance' and entity_id in (select id from instances where cluster_id = $1)`, [clusterId, instanceLabel]);
}

const change = (settings: Record<string, string | null>) => ({ settings, ratePerMinute: 10, reason: 'test', actor: 'token:tok_test' });

test('defaults change in one transaction; a rollout starts only when a live cluster differs; one unfinished rollout at a time', async () => {
  const refused = changeDefaults(store.pool, rolloutMachine, change({ work_mem: 'lots' }), () => {
    throw invalid('settings.work_mem', 'work_mem: "lots" is not a number');
  });
  await assert.rejects(refused, /is not a number/);
  assert.deepEqual(await currentDefaults(store.pool), {}, 'a refused change stores nothing');

  const none = await changeDefaults(store.pool, rolloutMachine, change({ work_mem: '8MB' }), () => undefined);
  assert.deepEqual([none.before, none.after, none.rolloutId], [{}, { work_mem: '8MB' }, null], 'no live cluster: nothing to roll out');

  const first = await cluster('first');
  const started = await changeDefaults(store.pool, rolloutMachine, change({ work_mem: null, temp_buffers: '16MB' }), () => undefined);
  assert.deepEqual(started.after, { temp_buffers: '16MB' });
  assert.ok(started.rolloutId !== null);
  const machine = await store.pool.query<{ label: string; lane: string }>('select label, lane from machines where kind = $1 and entity_id = $2', ['rollout', started.rolloutId]);
  assert.deepEqual(machine.rows, [{ label: 'next', lane: 'normal' }]);

  await assert.rejects(
    changeDefaults(store.pool, rolloutMachine, change({ temp_buffers: '32MB' }), () => undefined),
    (error: unknown) => error instanceof CellarError && error.code === 'CELLAR_E_ROLLOUT_IN_PROGRESS' && error.message.includes(`rollout ${started.rolloutId} is next`),
  );
  assert.deepEqual(await currentDefaults(store.pool), { temp_buffers: '16MB' }, 'the refused change left the defaults');
  const second = store.pool.query(`insert into rollouts (id, defaults_before, defaults_after, rate_per_minute, created_by) values ('ro_second', '{}', '{}', 1, 'test')`);
  await assert.rejects(second, (error: { constraint?: string }) => error.constraint === 'rollouts_one_unfinished');

  const records = new PgRolloutRecords(store.pool, new FakeChanges());
  await records.recordFinished(started.rolloutId);
  const after = await changeDefaults(store.pool, rolloutMachine, change({ temp_buffers: '32MB' }), () => undefined);
  assert.ok(after.rolloutId !== null, 'a finished rollout frees the cell for the next');
  await records.recordFinished(after.rolloutId);
  await store.pool.query('update clusters set deleted_at = now() where id = $1', [first]);
});

test('clusters in id order (live, not pooled); the cursor only moves forward; a halt is recorded with its cluster and revision', async () => {
  const ids = [await cluster('b-one'), await cluster('b-two'), await cluster('b-three')].sort();
  const pooled = await insertCluster(store.pool, clusterMachine, orgId, 'pooled', { size: 'micro', replicas: 0, storageGb: 1, pgVersion: 15 }, { pooled: true });
  const started = await changeDefaults(store.pool, rolloutMachine, change({ temp_buffers: '64MB' }), () => undefined);
  const id = started.rolloutId;
  assert.ok(id !== null);
  const records = new PgRolloutRecords(store.pool, new FakeChanges());
  const seen: string[] = [];
  for (let cursor: ClusterId | null = null; ; ) {
    const next = await records.nextCluster(cursor);
    if (next === null) break;
    seen.push(next.id);
    cursor = next.id;
  }
  assert.deepEqual(seen, ids, 'the pooled cluster and the deleted one are not rolled out to');
  assert.ok(!seen.includes(pooled));

  const [first, second] = ids as [ClusterId, ClusterId];
  const proposal = await records.proposeDefaults(first, { temp_buffers: '64MB' }, `rollout:${id}`, 'test');
  assert.equal(proposal.type, 'proposed');
  assert.deepEqual(await records.revisionSince(first, 1, `rollout:${id}`), proposal.type === 'proposed' ? { revision: proposal.revision, changeId: proposal.changeId } : null);
  assert.equal(await records.revisionSince(first, 2, `rollout:${id}`), null);
  assert.deepEqual((await records.nextCluster(null))?.revision, 2);
  await records.recordStarted(id, first, 2);
  await records.recordAdvanced(id, first, 'changed');
  await records.recordAdvanced(id, first, 'changed');
  await records.recordAdvanced(id, second, 'skipped');
  await records.recordAdvanced(id, first, 'changed');
  await records.recordHalted(id, { clusterId: ids[2] as ClusterId, clusterName: 'b-three', revision: 4, reason: 'its change failed' });
  const shown = await findRollout(store.pool, id);
  assert.deepEqual([shown?.clustersChanged, shown?.clustersSkipped, shown?.clustersLeft, shown?.cursor?.clusterId, shown?.current], [1, 1, 1, second, null]);
  assert.deepEqual([shown?.halt?.clusterId, shown?.halt?.clusterName, shown?.halt?.revision, shown?.halt?.reason], [ids[2], 'b-three', 4, 'its change failed']);
  assert.equal(shown?.label, 'next');
  await records.recordFinished(id);
  assert.equal((await findRollout(store.pool, id))?.clustersLeft, 0);
});

test('a proposal refused, busy or for a deleted cluster is told apart by its error code; health comes from the machines', async () => {
  const changes = new FakeChanges();
  const records = new PgRolloutRecords(store.pool, changes);
  const id = await cluster('health', 1);
  const defaults = { temp_buffers: '8MB' };
  changes.failWith = new CellarError('CELLAR_E_CHANGE_IN_PROGRESS', 'revision 3 is still being applied');
  assert.deepEqual(await records.proposeDefaults(id, defaults, 'rollout:ro_x', 'test'), { type: 'busy', reason: 'revision 3 is still being applied' });
  changes.failWith = invalid('settings.temp_buffers', 'temp_buffers: too big');
  assert.deepEqual(await records.proposeDefaults(id, defaults, 'rollout:ro_x', 'test'), { type: 'refused', reason: 'temp_buffers: too big [CELLAR_E_INVALID]' });
  changes.failWith = new CellarError('CELLAR_E_NOT_FOUND', 'no cluster');
  assert.deepEqual(await records.proposeDefaults(id, defaults, 'rollout:ro_x', 'test'), { type: 'gone' });

  assert.equal((await records.clusterHealth(id)).state, 'waiting', 'still being created');
  await setLabels(id, 'running', 'running');
  assert.deepEqual(await records.clusterHealth(id), { state: 'healthy', detail: '2 instance(s) running' });
  const [primary] = await machines.instances(id);
  assert.ok(primary !== undefined && primary.role === 'primary');
  await store.pool.query(`update machines set label = 'failed', last_error = 'induced' where kind = 'instance' and entity_id = $1`, [primary.id]);
  assert.deepEqual(await records.clusterHealth(id), { state: 'broken', detail: `its primary ${primary.id} failed: induced` });
  await store.pool.query('update clusters set deleted_at = now() where id = $1', [id]);
  assert.equal((await records.clusterHealth(id)).state, 'gone');
});
