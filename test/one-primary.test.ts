import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { classifyFailure } from '../src/lib/failure.js';
import type { ClusterId, InstanceId, OrgId } from '../src/lib/ids.js';
import { defaultSize } from '../src/lib/sizes.js';
import { clusterMachine } from '../src/machines/cluster.js';
import { instanceMachine } from '../src/machines/instance.js';
import { insertCluster } from '../src/store/clusters.js';
import { PgMachineStore } from '../src/store/machine-store.js';
import { hostMachine } from '../src/machines/host.js';
import { ensureLocalHost } from '../src/store/local-host.js';
import { type TestStore, startTestStore } from './helpers/store.js';

/** Invariant 1 (DESIGN.md §8) held by the store: at most one routed primary per cluster. */

const orgId = 'org_oneprimaryaa' as OrgId;
let store: TestStore;
let machines: PgMachineStore;

before(async () => {
  store = await startTestStore();
  machines = new PgMachineStore(store.pool, 40_000, 40_100, instanceMachine);
  // Clusters are placed on hosts: the store's one host, as `cellar up` registers it.
  await ensureLocalHost(store.pool, { memoryMb: 1_048_576, diskGb: 1_048_576, slots: 1_000, agentPort: 8435 }, hostMachine);
  await store.pool.query('insert into orgs (id, name) values ($1, $2)', [orgId, 'one-primary']);
});
after(async () => {
  await store.close();
});

async function clusterWithInstances(name: string, count: number): Promise<{ clusterId: ClusterId; ids: InstanceId[] }> {
  const spec = { size: defaultSize, replicas: count - 1, storageGb: 10, pgVersion: 15, durability: 'async' as const };
  const clusterId = await insertCluster(store.pool, clusterMachine, orgId, name, spec);
  for (let ordinal = 0; ordinal < count; ordinal += 1) await machines.createInstance(clusterId, ordinal, ordinal === 0 ? 'primary' : 'replica');
  const ids = (await machines.instances(clusterId)).map((instance) => instance.id as InstanceId);
  return { clusterId, ids };
}

async function rejection(work: Promise<unknown>): Promise<{ code?: string; constraint?: string }> {
  return work.then(
    () => assert.fail('the store accepted a second routed primary'),
    (error: unknown) => error as { code?: string; constraint?: string },
  );
}

test('a second routed primary in a cluster is refused by the store itself (SQLSTATE 23505)', async () => {
  const { clusterId, ids } = await clusterWithInstances('refused', 2);
  const refused = await rejection(store.pool.query(`update instances set role = 'primary' where id = $1`, [ids[1]]));
  assert.deepEqual([refused.code, refused.constraint], ['23505', 'instances_one_routed_primary']);
  assert.equal(classifyFailure(refused), 'invariant', 'a step that hits it fails at once as a bug, not retried as a race');
  const inserted = await rejection(store.pool.query(`insert into instances (id, cluster_id, ordinal, role) values ('in_secondprimary', $1, 9, 'primary')`, [clusterId]));
  assert.deepEqual([inserted.code, inserted.constraint], ['23505', 'instances_one_routed_primary']);
});

test('a fenced or deleted primary is not routed, so another may be the primary beside it', async () => {
  const fenced = await clusterWithInstances('fenced', 2);
  await machines.setFenced(fenced.ids[0] as InstanceId, true);
  await store.pool.query(`update instances set role = 'primary' where id = $1`, [fenced.ids[1]]);
  const unfence = await rejection(machines.setFenced(fenced.ids[0] as InstanceId, false));
  assert.equal(unfence.code, '23505', 'unfencing it again would route two: refused');
  const deleted = await clusterWithInstances('deleted', 2);
  await machines.markInstanceDeleted(deleted.ids[0] as InstanceId);
  await store.pool.query(`update instances set role = 'primary' where id = $1`, [deleted.ids[1]]);
});

test('a failover role swap (one transaction: demote, then promote) passes the index', async () => {
  const { clusterId, ids } = await clusterWithInstances('swap', 3);
  const [oldPrimary, candidate] = ids as [InstanceId, InstanceId];
  await machines.setFenced(oldPrimary, true);
  await machines.swapPrimary(clusterId, candidate);
  const roles = await store.pool.query<{ id: string; role: string; fenced: boolean }>('select id, role, fenced from instances where cluster_id = $1 order by ordinal', [clusterId]);
  assert.deepEqual(roles.rows.map((row) => [row.id, row.role]), [[oldPrimary, 'replica'], [candidate, 'primary'], [ids[2], 'replica']]);
  // A switchover swaps without fencing first: still one routed primary at every statement.
  await machines.swapPrimary(clusterId, ids[2] as InstanceId);
  const primaries = await store.pool.query<{ id: string }>(`select id from instances where cluster_id = $1 and role = 'primary'`, [clusterId]);
  assert.deepEqual(primaries.rows.map((row) => row.id), [ids[2]]);
});
