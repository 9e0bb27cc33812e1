import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FreezeDetail, FreezeView, NudgeView } from '../src/api/freeze.js';
import type { ClusterView, InstanceView } from '../src/api/view.js';
import { freezeNapMs } from '../src/machines/ports.js';
import { TestCellar, eventually, postmasterPid } from './helpers/cellar.js';

/** The freeze and the nudge end to end (docs/CONTROLS.md "Freeze", "Nudge"): real servers, a real SIGKILL. */

const primaryOf = (cluster: ClusterView): InstanceView => {
  const primary = cluster.instances.find((instance) => instance.role === 'primary');
  assert.ok(primary !== undefined, `${cluster.name} has a primary`);
  return primary;
};

describe('freeze and nudge', () => {
  let cellar: TestCellar;
  let app: ClusterView;

  before(async () => {
    cellar = await TestCellar.create();
    await cellar.start();
    app = await cellar.cliJson<ClusterView>(['clusters', 'create', 'app', '--wait']);
  });

  after(async () => {
    await cellar.destroy();
  });

  test('a non-admin token can neither freeze nor read the freeze', async () => {
    const tenant = await cellar.api<{ token: string }>('POST', '/v1/orgs', { name: 'tenant' });
    assert.equal(tenant.status, 201);
    const refused = await cellar.api<{ error: { code: string } }>('POST', '/v1/freeze', { reason: 'not mine to freeze' }, tenant.body.token);
    assert.deepEqual([refused.status, refused.body.error.code], [403, 'CELLAR_E_FORBIDDEN']);
    assert.equal((await cellar.api('GET', '/v1/freeze', undefined, tenant.body.token)).status, 403);
    const state = await cellar.api<FreezeDetail>('GET', '/v1/freeze');
    assert.equal(state.body.frozen, false, 'the refused freeze changed nothing');
    const noReason = await cellar.api<{ error: { code: string; field?: string } }>('POST', '/v1/freeze', {});
    assert.deepEqual([noReason.status, noReason.body.error.field], [400, 'reason'], 'a freeze needs a reason');
    const notFrozen = await cellar.api<{ error: { code: string } }>('DELETE', '/v1/freeze', { reason: 'nothing to thaw' });
    assert.deepEqual([notFrozen.status, notFrozen.body.error.code], [409, 'CELLAR_E_CONFLICT']);
  });

  test('frozen, a create answers 201 and waits while a failover completes; after the thaw the create finishes; the audit has both', async (t) => {
    const frozen = await cellar.cliJson<FreezeView>(['rods', 'freeze', '--reason', 'incident 42']);
    assert.deepEqual([frozen.frozen, frozen.reason], [true, 'incident 42']);
    const status = await cellar.cli(['status']);
    assert.match(status.stdout, /Cell: FROZEN since .* by token:.*: incident 42/);
    const again = await cellar.api<{ error: { code: string } }>('POST', '/v1/freeze', { reason: 'twice' });
    assert.deepEqual([again.status, again.body.error.code], [409, 'CELLAR_E_CONFLICT']);

    const created = await cellar.api<ClusterView>('POST', '/v1/clusters', { name: 'late', replicas: 0, size: 'small', storageGb: 1 });
    assert.deepEqual([created.status, created.body.state], [201, 'creating'], 'accepted and queued, not refused');

    const oldPrimary = primaryOf(app);
    process.kill(await postmasterPid(cellar.dataDir, oldPrimary.id), 'SIGKILL');
    await eventually('app to fail over while frozen', async () => {
      const cluster = await cellar.cluster('app');
      return cluster.state === 'running' && primaryOf(cluster).id !== oldPrimary.id ? cluster : undefined;
    }, 40_000, 200);

    const late = await cellar.cliJson<ClusterView>(['clusters', 'show', 'late']);
    assert.equal(late.state, 'creating');
    assert.deepEqual(late.instances, [], 'no instance is made while frozen');
    assert.ok(late.events.some((event) => event.code === 'held_by_freeze'), 'the cluster says why it waits');

    const thawed = await cellar.cliJson<FreezeView>(['rods', 'thaw', '--reason', 'incident 42 over']);
    assert.equal(thawed.frozen, false);
    await eventually('late to run after the thaw', async () => {
      const cluster = await cellar.cluster('late');
      return cluster.state === 'running' ? cluster : undefined;
    }, 40_000, 200);

    const audit = await cellar.api<FreezeDetail>('GET', '/v1/freeze');
    assert.equal(audit.body.frozen, false);
    assert.deepEqual(
      audit.body.history.slice(0, 2).map((change) => [change.frozen, change.reason, /^token:/.test(change.actor)]),
      [[false, 'incident 42 over', true], [true, 'incident 42', true]],
      'thaw then freeze, newest first, each with its actor and reason',
    );
    const events = await cellar.storeQuery<{ code: string }>(`select code from events where kind = 'freeze' order by id`);
    assert.deepEqual(events.map((event) => event.code), ['cell_frozen', 'cell_thawed']);
    const [gap] = await cellar.storeQuery<{ ms: number }>(
      `select extract(epoch from (select min(at) from events where cluster_id = $1 and code = 'instances_requested') - (select at from events where code = 'cell_thawed')) * 1000 as ms`,
      [created.body.id],
    );
    t.diagnostic(`thaw to the held create asking for its instances: ${Number(gap?.ms).toFixed(0)} ms by the store's clock (the held start naps ${freezeNapMs} ms)`);
  });

  test("a nudge makes a napping cluster's machine due now, and the engine runs it", async (t) => {
    // Settled after its failover, so that no instance of it wakes the cluster meanwhile: only the nudge can.
    await eventually('app to settle after its failover', async () => {
      const view = await cellar.cluster('app');
      return view.state === 'running' && view.instances.every((instance) => instance.state === 'running' && (instance.role === 'primary' || instance.streaming === true)) ? view : undefined;
    }, 40_000, 200);
    const [cluster] = await cellar.storeQuery<{ id: string }>(`select id from clusters where name = 'app' and deleted_at is null`);
    assert.ok(cluster !== undefined);
    // Napping for an hour: without the nudge it would not run again in this test.
    const [parked] = await cellar.storeQuery<{ version: string }>(`update machines set next_tick_at = now() + interval '1 hour' where kind = 'cluster' and entity_id = $1 returning version`, [cluster.id]);
    assert.ok(parked !== undefined);
    const nudgedAtMs = performance.now();
    const nudged = await cellar.cliJson<NudgeView>(['clusters', 'nudge', 'app']);
    assert.equal(nudged.cluster, 'app');
    assert.ok(nudged.machines >= 1, `at least the cluster's own machine (${nudged.machines})`);
    await eventually('the engine to claim and run the nudged machine', async () => {
      const [row] = await cellar.storeQuery<{ version: string; soon: boolean }>(`select version, next_tick_at < now() + interval '10 minutes' as soon from machines where kind = 'cluster' and entity_id = $1`, [cluster.id]);
      return row !== undefined && BigInt(row.version) > BigInt(parked.version) && row.soon ? true : undefined;
    }, 20_000, 20);
    t.diagnostic(`nudge to the machine run: ${(performance.now() - nudgedAtMs).toFixed(0)} ms (a CLI process included)`);
    const missing = await cellar.cli(['clusters', 'nudge', 'nothere']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no cluster named "nothere"/);
  });
});
