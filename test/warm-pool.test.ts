import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pg from 'pg';
import type { ClusterView } from '../src/api/view.js';
import { TestCellar, eventually } from './helpers/cellar.js';

/** CELLAR_WARM_POOL=1: a create of the default spec adopts a ready cluster; the pool refills. */

interface Status {
  warmPool: { ready: number; creating: number; failed: number; deleting: number };
  cell: { clusters: number };
}

let cellar: TestCellar;

before(async () => {
  cellar = await TestCellar.create({ CELLAR_WARM_POOL: '1' });
  await cellar.start();
});

after(async () => {
  await cellar.destroy();
});

async function poolReady(): Promise<Status> {
  return eventually('a warm cluster to be ready', async () => {
    const status = await cellar.read<Status>('/v1/status');
    return status.warmPool.ready === 1 ? status : undefined;
  }, 90_000, 200);
}

test('a create of the default spec is answered from the warm pool, already running, and the pool refills', async () => {
  const before = await poolReady();
  assert.equal(before.cell.clusters, 0, 'warm clusters are not user clusters');
  assert.deepEqual(await cellar.cliJson<ClusterView[]>(['clusters', 'list']), [], 'and no org sees them');

  const created = await cellar.cliJson<ClusterView>(['clusters', 'create', 'quick']);
  assert.equal(created.state, 'running', 'running as soon as the create returns');
  assert.equal(created.name, 'quick');
  assert.ok(created.events.some((event) => event.code === 'adopted_from_warm_pool'));

  const primary = new pg.Client({ connectionString: created.uri as string });
  await primary.connect();
  await primary.query('create table t (id int)');
  await primary.query('insert into t values (7)');
  await primary.end();
  const replica = new pg.Client({ connectionString: created.readOnlyUri as string });
  await replica.connect();
  const rows = await eventually('the row on the replica', async () => {
    const result = await replica.query<{ id: number }>('select id from t').catch(() => undefined);
    return result?.rows.length === 1 ? result.rows : undefined;
  }, 10_000);
  await replica.end();
  assert.equal(rows[0]?.id, 7);

  const refilled = await poolReady();
  assert.equal(refilled.cell.clusters, 1);
  const list = await cellar.cliJson<ClusterView[]>(['clusters', 'list']);
  assert.deepEqual(list.map((cluster) => cluster.name), ['quick']);
});

test('a create with another spec takes the ordinary path and leaves the pool alone', async () => {
  const created = await cellar.cliJson<ClusterView>(['clusters', 'create', 'solo', '--replicas', '0']);
  assert.equal(created.state, 'creating');
  assert.ok(!created.events.some((event) => event.code === 'adopted_from_warm_pool'));
  const duplicate = await cellar.cli(['clusters', 'create', 'quick']);
  assert.match(duplicate.stderr, /already exists in this organisation \[CELLAR_E_NAME_TAKEN\]/, 'a taken name is refused even when a warm cluster is ready');
  const status = await poolReady();
  assert.equal(status.warmPool.ready, 1, 'the warm cluster was not consumed by the refused create');
});
