import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import type { ClusterView } from '../src/api/view.js';
import { TestCellar, eventually, processesUsing, postmasters } from './helpers/cellar.js';

/** SIGKILL of the control plane in the middle of provisioning: the cluster converges, nothing leaks. */

const leaseMs = 1_500;

async function showCluster(cellar: TestCellar, name: string): Promise<ClusterView | undefined> {
  const response = await cellar.api<ClusterView>('GET', `/v1/clusters/${name}`).catch(() => undefined);
  return response?.status === 200 ? response.body : undefined;
}

describe('control plane SIGKILLed mid-provisioning', () => {
  let cellar: TestCellar;

  before(async () => {
    // Embedded: the store's postmaster is counted among the data directory's, and must survive the crash.
    cellar = await TestCellar.create({ CELLAR_LEASE_MS: String(leaseMs) }, { store: 'embedded' });
    await cellar.start();
  });

  after(async () => {
    await cellar.destroy();
  });

  test('killed while the primary is created and again while the replica is cloned: the cluster converges with no leaked instance, process or port', async () => {
    const created = await cellar.api<ClusterView>('POST', '/v1/clusters', { name: 'crashy' });
    assert.equal(created.status, 201);

    await eventually('the primary to be in provisioning', async () => {
      const cluster = await showCluster(cellar, 'crashy');
      return cluster?.instances.some((instance) => instance.role === 'primary' && instance.state === 'creating') ? true : undefined;
    }, 30_000, 10);
    await cellar.stop('SIGKILL');
    await cellar.start();

    await eventually('the replica to be cloning from a running primary', async () => {
      const cluster = await showCluster(cellar, 'crashy');
      const primary = cluster?.instances.find((instance) => instance.role === 'primary');
      const replica = cluster?.instances.find((instance) => instance.role === 'replica');
      return primary?.state === 'running' && replica?.state === 'creating' ? true : undefined;
    }, 60_000, 10);
    await cellar.stop('SIGKILL');
    await cellar.start();

    const cluster = await eventually('the cluster to converge to running', async () => {
      const current = await showCluster(cellar, 'crashy');
      return current?.state === 'running' ? current : undefined;
    }, 90_000, 100);

    const instanceIds = cluster.instances.map((instance) => instance.id).sort();
    assert.equal(instanceIds.length, 2, 'one primary and one replica');
    const live = await cellar.storeQuery<{ id: string }>('select id from instances where deleted_at is null order by id');
    assert.deepEqual(live.map((row) => row.id), instanceIds, 'no extra instance rows');
    assert.deepEqual((await readdir(join(cellar.dataDir, 'instances'))).sort(), instanceIds, 'no extra instance directories');
    for (const id of instanceIds) {
      const entries = await readdir(join(cellar.dataDir, 'instances', id));
      assert.deepEqual(entries.filter((entry) => entry.includes('.tmp-')), [], `no half-built data directory left in ${id}`);
    }
    const ports = await cellar.storeQuery<{ port: number; instance_id: string }>('select port, instance_id from ports order by instance_id');
    assert.deepEqual(ports.map((row) => [row.instance_id, row.port]), cluster.instances.map((instance) => [instance.id, instance.port]).sort(), 'ports held only by the live instances');
    const expected = instanceIds.map((id) => join(cellar.dataDir, 'instances', id, 'pgdata')).sort();
    const settled = await eventually('orphaned helpers of the killed control plane to be gone', async () => {
      const others = await processesUsing(cellar.dataDir);
      // The instances' postmasters and the embedded store's own.
      return others.length === expected.length + 1 ? true : undefined;
    }, 15_000, 200).catch(() => false);
    const leftovers = await Promise.all((await processesUsing(cellar.dataDir)).map((pid) => readFile(`/proc/${pid}/cmdline`, 'utf8').then((text) => text.replaceAll('\0', ' ')).catch(() => '')));
    assert.ok(settled, `processes on the data directory: ${leftovers.join(' | ')}`);
    const storeData = join(cellar.dataDir, 'store', 'pgdata');
    assert.deepEqual(await postmasters(cellar.dataDir), [...expected, storeData].sort(), 'exactly one postmaster per live instance, and the store');

    const client = new pg.Client({ connectionString: cluster.uri as string });
    await client.connect();
    await client.query('create table after_crash (id int)');
    await client.query('insert into after_crash values (42)');
    await client.end();
    const replica = new pg.Client({ connectionString: cluster.readOnlyUri as string });
    await replica.connect();
    const rows = await eventually('the row on the replica', async () => {
      const result = await replica.query<{ id: number }>('select id from after_crash').catch(() => undefined);
      return result?.rows.length === 1 ? result.rows : undefined;
    }, 10_000);
    await replica.end();
    assert.equal(rows[0]?.id, 42);
  });
});
