import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { DefaultsChangeView, DefaultsView, RolloutDetail, RolloutView } from '../src/api/rollouts.js';
import type { ClusterView } from '../src/api/view.js';
import { TestCellar, eventually, queryUri } from './helpers/cellar.js';

/**
 * Fleet defaults and rollouts end to end, through the real CLI, API, engine, change machines and
 * Postgres servers, over three clusters: a reload default reaches every cluster; a second rollout
 * halts by itself at the cluster made unhealthy (its primary's machine failed in the store: the
 * induced failure) and says where, and the cluster after it is untouched.
 */

/** A cluster rolled onto new defaults takes a reload on each instance: seconds, even on a busy machine. */
const rolloutWaitMs = 120_000;

interface ApiErrorBody {
  error: { code: string; message: string; field?: string };
}

describe('fleet defaults and rollouts', () => {
  let cellar: TestCellar;
  /** In id order: the order a rollout takes them. */
  let clusters: ClusterView[] = [];

  before(async () => {
    cellar = await TestCellar.create({ CELLAR_ROLLOUT_HEALTH_WAIT_MS: String(rolloutWaitMs) });
    await cellar.start();
  });

  after(async () => {
    await cellar.destroy();
  });

  async function workMem(cluster: ClusterView): Promise<string> {
    const [row] = await queryUri<{ work_mem: string }>(cluster.uri as string, 'show work_mem');
    return row?.work_mem ?? '';
  }

  async function settled(id: string, states: readonly string[]): Promise<RolloutDetail> {
    return eventually(
      `rollout ${id} to be ${states.join(' or ')}`,
      async () => {
        const shown = await cellar.read<RolloutDetail>(`/v1/rollouts/${encodeURIComponent(id)}`);
        // A rollout at `completed` or `aborted` is finished by that label's step, just after the
        // hop is committed: settled is when it is stamped too (read in between, finishedAt is null).
        const finishing = (shown.state === 'completed' || shown.state === 'aborted') && shown.finishedAt === null;
        return states.includes(shown.state) && !finishing ? shown : undefined;
      },
      rolloutWaitMs,
      250,
    );
  }

  async function revisionsBy(actor: string): Promise<string[]> {
    const rows = await cellar.storeQuery<{ cluster_id: string }>('select cluster_id from config_revisions where actor = $1 order by cluster_id', [actor]);
    return rows.map((row) => row.cluster_id);
  }

  test('no catalogue stored yet: 409 CELLAR_E_CATALOGUE_MISSING; an org token may not touch the defaults', async () => {
    const refused = await cellar.cli(['defaults', 'set', 'work_mem=6MB', '--json']);
    assert.equal(refused.code, 1);
    assert.equal((JSON.parse(refused.stdout) as ApiErrorBody).error.code, 'CELLAR_E_CATALOGUE_MISSING');
    const org = await cellar.api<{ token: string }>('POST', '/v1/orgs', { name: 'tenant' });
    assert.equal(org.status, 201);
    const tenantToken = org.body.token;
    for (const [method, path, body] of [['GET', '/v1/defaults'], ['PUT', '/v1/defaults', { settings: { work_mem: '6MB' } }], ['GET', '/v1/rollouts']] as const) {
      const response = await cellar.api<ApiErrorBody>(method, path, body, tenantToken);
      assert.equal(response.status, 403, `${method} ${path}`);
      assert.equal(response.body.error.code, 'CELLAR_E_FORBIDDEN');
    }
  });

  test('a reload default rolls out over three clusters: every instance shows it, each by a revision of the rollout', async (context) => {
    // One cluster has a replica, so that a replica's SHOW is checked too.
    for (const [name, replicas] of [['fleet-a', '1'], ['fleet-b', '0'], ['fleet-c', '0']] as const) {
      await cellar.cliJson<ClusterView>(['clusters', 'create', name, '--replicas', replicas, '--size', 'micro', '--wait']);
    }
    clusters = (await cellar.cliJson<ClusterView[]>(['clusters', 'list'])).sort((a, b) => (a.id < b.id ? -1 : 1));
    assert.equal(clusters.length, 3);
    await eventually('the catalogue of the clusters\' version', async () => ((await cellar.storeQuery('select 1 from setting_catalogues')).length > 0 ? true : undefined), 30_000);

    for (const [assignment, field, message] of [
      ['work_mem=lots', 'settings.work_mem', /work_mem: "lots" is not a number/],
      ['port=6000', 'settings.port', /managed by Cellar/],
      ['shared_buffers=1GB', 'settings.shared_buffers', /more than the instance's memory of 256 MB/],
    ] as const) {
      const bad = await cellar.cli(['defaults', 'set', assignment, '--json']);
      assert.equal(bad.code, 1, assignment);
      const error = (JSON.parse(bad.stdout) as ApiErrorBody).error;
      assert.deepEqual([error.code, error.field], ['CELLAR_E_INVALID', field], assignment);
      assert.match(error.message, message);
    }
    assert.deepEqual((await cellar.cliJson<DefaultsView>(['defaults', 'show'])).defaults, [], 'a refused change stores nothing');
    assert.deepEqual(await cellar.cliJson<RolloutView[]>(['rollouts', 'list']), []);

    const before = await Promise.all(clusters.map(workMem));
    assert.ok(before.every((value) => value !== '6MB'));
    const started = await cellar.cliJson<DefaultsChangeView>(['defaults', 'set', 'work_mem=6MB', '--rate', '60', '--reason', 'bigger sorts']);
    assert.deepEqual(started.changes, [{ name: 'work_mem', from: null, to: '6MB' }]);
    assert.ok(started.rollout !== null);
    const done = await settled(started.rollout.id, ['completed', 'halted', 'aborted', 'failed']);
    assert.equal(done.state, 'completed', JSON.stringify(done.halt));
    assert.deepEqual(done.clusters, { changed: 3, skipped: 0, left: 0 });
    assert.deepEqual(await Promise.all(clusters.map(workMem)), ['6MB', '6MB', '6MB']);
    const withReplica = clusters.find((cluster) => cluster.name === 'fleet-a');
    // The read-only route falls back to the primary until the proxy has seen the replica stream.
    const onReplica = await eventually('the read-only route to reach the replica', async () => {
      const [row] = await queryUri<{ work_mem: string; replica: boolean }>(withReplica?.readOnlyUri as string, 'select current_setting($1) as work_mem, pg_is_in_recovery() as replica', ['work_mem']);
      return row?.replica === true ? row : undefined;
    }, 10_000);
    assert.equal(onReplica.work_mem, '6MB');
    assert.deepEqual(await revisionsBy(`rollout:${started.rollout.id}`), clusters.map((cluster) => cluster.id));
    assert.ok(done.events.some((event) => event.code === 'rollout_completed'));
    const tookMs = Date.parse(done.finishedAt ?? '') - Date.parse(done.createdAt);
    context.diagnostic(`rollout over 3 clusters: ${tookMs} ms from the request to completed`);
    const shown = await cellar.cliJson<DefaultsView>(['defaults', 'show']);
    assert.deepEqual([shown.defaults.map((entry) => [entry.name, entry.value]), shown.rollout], [[['work_mem', '6MB']], null]);
  });

  test('a rollout halts by itself at the cluster that is not healthy, names it, its revision and why; the next cluster is untouched', async () => {
    const [first, second, third] = clusters as [ClusterView, ClusterView, ClusterView];
    // The induced failure: the second cluster's primary machine fails (its server still runs; nothing repairs a failed primary).
    // The version bump fences any step of that machine in flight, as the engine's own commits are fenced.
    const primary = second.instances.find((instance) => instance.role === 'primary');
    assert.ok(primary !== undefined);
    await cellar.storeQuery(
      `update machines set label = 'failed', next_tick_at = null, lease_owner = null, lease_expires_at = null, version = version + 1, last_error = 'induced by the test'
        where kind = 'instance' and entity_id = $1`,
      [primary.id],
    );

    const started = await cellar.cliJson<DefaultsChangeView>(['defaults', 'set', 'work_mem=12MB', '--rate', '60']);
    assert.ok(started.rollout !== null);
    const id = started.rollout.id;
    const again = await cellar.api<ApiErrorBody>('PUT', '/v1/defaults', { settings: { work_mem: '16MB' } });
    assert.equal(again.status, 409);
    assert.equal(again.body.error.code, 'CELLAR_E_ROLLOUT_IN_PROGRESS');
    assert.match(again.body.error.message, new RegExp(id));

    const halted = await settled(id, ['halted', 'completed', 'aborted', 'failed']);
    assert.equal(halted.state, 'halted');
    assert.ok(halted.halt !== null);
    assert.deepEqual([halted.halt.clusterId, halted.halt.cluster], [second.id, second.name]);
    assert.match(halted.halt.reason, new RegExp(`${primary.id} failed: induced by the test`));
    // Revision 1 at creation, 2 by the first rollout, 3 by this one: proposed, then found not healthy.
    assert.equal(halted.halt.revision, 3);
    const revisions = await cellar.storeQuery<{ revision: number }>('select revision from config_revisions where cluster_id = $1 and actor = $2', [second.id, `rollout:${id}`]);
    assert.deepEqual(revisions.map((row) => row.revision), [3]);
    assert.deepEqual(halted.clusters, { changed: 1, skipped: 0, left: 2 });
    assert.deepEqual(halted.cursor, { clusterId: first.id, cluster: first.name });
    const haltEvent = halted.events.find((event) => event.code === 'rollout_halted');
    assert.ok(haltEvent?.reason.includes(`cluster ${second.name} (${second.id})`));
    const human = await cellar.cli(['rollouts', 'show', id]);
    assert.match(human.stdout, new RegExp(`halted at cluster ${second.name} \\(${second.id}\\)`));

    assert.equal(await workMem(first), '12MB');
    assert.equal(await workMem(third), '6MB', 'the cluster after the halt runs what it ran');
    assert.deepEqual(await revisionsBy(`rollout:${id}`), [first.id, second.id]);
    const [thirdSpec] = await cellar.storeQuery<{ defaults: Record<string, string> }>(`select spec -> 'defaults' as defaults from clusters where id = $1`, [third.id]);
    assert.deepEqual(thirdSpec?.defaults, { work_mem: '6MB' });

    const pause = await cellar.api<ApiErrorBody>('POST', `/v1/rollouts/${id}/pause`);
    assert.deepEqual([pause.status, pause.body.error.code], [409, 'CELLAR_E_CONFLICT'], 'a halted rollout is not moving');
    const aborted = await cellar.cliJson<RolloutView>(['rollouts', 'abort', id]);
    assert.equal(aborted.id, id);
    const final = await settled(id, ['aborted']);
    assert.ok(Date.parse(final.finishedAt ?? '') >= Date.parse(final.createdAt), 'stamped when it finished, after it began');
    assert.equal((await cellar.cliJson<DefaultsView>(['defaults', 'show'])).rollout, null, 'another rollout may start');
    const list = await cellar.cliJson<RolloutView[]>(['rollouts', 'list']);
    assert.deepEqual(list.map((rollout) => [rollout.id, rollout.state]).slice(0, 1), [[id, 'aborted']]);
    assert.equal(list.length, 2);
    assert.equal(await workMem(third), '6MB');
  });
});
