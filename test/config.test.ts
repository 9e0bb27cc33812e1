import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import type { ConfigView, ProposalView, RevisionView } from '../src/api/config.js';
import type { ClusterView } from '../src/api/view.js';
import { TestCellar, eventually, queryUri } from './helpers/cellar.js';
import { type Writer, type WriterStats, startWriter } from './helpers/writer.js';

/** Changing a running cluster's settings (docs/CONFIG.md), end to end: real servers, the real CLI and API, a writer through the proxy. */

interface ErrorBody {
  error: { code: string; message: string; field?: string };
}

/** New connections opened one after another through the proxy while a change runs; each runs `select 1`. */
function startConnector(uri: string): { stop: () => Promise<{ ok: number; failures: string[]; ended: number }> } {
  let stopping = false;
  const failures: string[] = [];
  let ok = 0;
  let ended = 0;
  const loop = (async () => {
    while (!stopping) {
      const client = new pg.Client({ connectionString: uri, connectionTimeoutMillis: 15_000, query_timeout: 15_000 });
      client.on('error', () => undefined);
      try {
        await client.connect();
      } catch (error) {
        failures.push(error instanceof Error ? error.message : String(error));
        await client.end().catch(() => undefined);
        await new Promise((resolve) => setTimeout(resolve, 25));
        continue;
      }
      try {
        await client.query('select 1');
        ok += 1;
      } catch (error) {
        // Connected: a switchover may end it between its connect and its query, as the proxy ends
        // every write connection of a primary that leaves its route (docs/CONFIG.md); any other
        // error of the query is a failure.
        const message = error instanceof Error ? error.message : String(error);
        if (message === 'Connection terminated unexpectedly') ended += 1;
        else failures.push(message);
      } finally {
        await client.end().catch(() => undefined);
      }
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  })();
  return {
    async stop() {
      stopping = true;
      await loop;
      return { ok, failures, ended };
    },
  };
}

/** Runs `body` under a writer and a new-connection prober through the proxy; both stop whatever happens, before a failure is reported. */
async function underLoad(uri: string, body: (writer: Writer) => Promise<void>): Promise<{ connections: { ok: number; failures: string[]; ended: number }; stats: WriterStats }> {
  const writer = startWriter(uri, 'acked');
  const connector = startConnector(uri);
  const outcome = await body(writer).then(() => null, (error: unknown) => ({ error }));
  const connections = await connector.stop();
  const stats = await writer.stop();
  if (outcome !== null) throw outcome.error;
  return { connections, stats };
}

describe('configuration changes', () => {
  let cellar: TestCellar;
  let cluster: ClusterView;
  let superuserPassword: string;

  /** SHOW on every instance of the cluster, straight to its port (not through the proxy). */
  async function showEverywhere(name: string): Promise<string[]> {
    const view = await cellar.cluster('app');
    return Promise.all(view.instances.map(async (instance) => {
      const rows = await queryUri<{ value: string }>(`postgresql://postgres:${encodeURIComponent(superuserPassword)}@127.0.0.1:${instance.port ?? 0}/postgres?sslmode=disable`, `select current_setting($1) as value`, [name]);
      return rows[0]?.value ?? '';
    }));
  }

  const revisionsOf = async (): Promise<RevisionView[]> => (await cellar.api<{ revisions: RevisionView[] }>('GET', '/v1/clusters/app/config/revisions')).body.revisions;

  before(async () => {
    cellar = await TestCellar.create({ CELLAR_DRIFT_CHECK_MS: '1000' });
    await cellar.start();
    cluster = await cellar.cliJson<ClusterView>(['clusters', 'create', 'app', '--replicas', '1', '--wait']);
    await queryUri(cluster.uri as string, 'create table acked (id bigint primary key)');
    const [row] = await cellar.storeQuery<{ password: string }>(`select secrets ->> 'superuserPassword' as password from clusters where name = 'app'`);
    superuserPassword = row?.password ?? '';
    // The catalogue is read from the first running primary of the version.
    await eventually('the parameter catalogue', async () => {
      const response = await cellar.api<ProposalView | ErrorBody>('POST', '/v1/clusters/app/config', { settings: { work_mem: '5MB' }, dryRun: true });
      return response.status === 200 ? true : undefined;
    }, 30_000, 100);
  });

  after(async () => {
    await cellar.destroy();
  });

  test('bad values, platform-owned parameters and impossible sizes are refused with the field and the limit, and nothing changes', async () => {
    const before = await revisionsOf();
    const configBefore = (await cellar.api<ConfigView>('GET', '/v1/clusters/app/config')).body;
    const cases: { body: Record<string, unknown>; field: string; says: RegExp; status?: number }[] = [
      { body: { settings: { listen_addresses: '*' } }, field: 'settings.listen_addresses', says: /managed by Cellar/ },
      { body: { settings: { port: '5433' } }, field: 'settings.port', says: /managed by Cellar/ },
      { body: { settings: { archive_command: '/bin/true' } }, field: 'settings.archive_command', says: /managed by Cellar/ },
      { body: { settings: { ssl_cert_file: '/etc/passwd' } }, field: 'settings.ssl_cert_file', says: /managed by Cellar/ },
      { body: { settings: { shared_preload_libraries: 'auto_explain' } }, field: 'settings.shared_preload_libraries', says: /managed by Cellar/ },
      { body: { settings: { synchronous_commit: 'off' } }, field: 'settings.synchronous_commit', says: /managed by Cellar/ },
      { body: { settings: { primary_conninfo: 'host=evil' } }, field: 'settings.primary_conninfo', says: /managed by Cellar/ },
      { body: { settings: { log_directory: '/root' } }, field: 'settings.log_directory', says: /managed by Cellar/ },
      { body: { settings: { no_such_parameter: '1' } }, field: 'settings.no_such_parameter', says: /not a parameter/ },
      { body: { settings: { work_mem: 'lots' } }, field: 'settings.work_mem', says: /not a number/ },
      { body: { settings: { work_mem: '8parsecs' } }, field: 'settings.work_mem', says: /unit "parsecs"/ },
      { body: { settings: { work_mem: '1kB' } }, field: 'settings.work_mem', says: /below the minimum 64/ },
      { body: { settings: { max_connections: '9999999' } }, field: 'settings.max_connections', says: /above the maximum 262143/ },
      { body: { settings: { jit: 'maybe' } }, field: 'settings.jit', says: /not a boolean/ },
      { body: { settings: { log_min_messages: 'loud' } }, field: 'settings.log_min_messages', says: /not one of/ },
      { body: { settings: { shared_buffers: '4GB' } }, field: 'settings.shared_buffers', says: /instance's memory of 1024 MB/ },
      { body: { settings: { block_size: '16384' } }, field: 'settings.block_size', says: /cannot be changed/ },
      { body: { settings: { work_mem: null } }, field: 'settings.work_mem', says: /not set on this cluster/ },
      { body: { settings: { 'Bad-Name': '1' } }, field: 'settings.Bad-Name', says: /not a parameter name/ },
      { body: { size: 'huge' }, field: 'size', says: /micro, small, medium, large/ },
      { body: { replicas: 9 }, field: 'replicas', says: /0 to 5/ },
      { body: { replicas: 1 }, field: 'change', says: /changes nothing/ },
    ];
    for (const { body, field, says } of cases) {
      const response = await cellar.api<ErrorBody>('POST', '/v1/clusters/app/config', body);
      assert.equal(response.status, 400, `${JSON.stringify(body)} → ${response.status} ${JSON.stringify(response.body)}`);
      assert.equal(response.body.error.field, field, JSON.stringify(response.body));
      assert.match(response.body.error.message, says, JSON.stringify(response.body));
    }
    const cli = await cellar.cli(['config', 'set', 'app', 'hba_file=/tmp/x', '--json']);
    assert.equal(cli.code, 1);
    assert.equal((JSON.parse(cli.stdout) as ErrorBody).error.field, 'settings.hba_file');
    assert.deepEqual(await revisionsOf(), before, 'no revision was added');
    assert.deepEqual((await cellar.api<ConfigView>('GET', '/v1/clusters/app/config')).body, configBefore, 'the configuration did not change');
  });

  test('the plan says how each parameter takes effect, and a dry run changes nothing', async () => {
    const plan = await cellar.cliJson<ProposalView>(['config', 'set', 'app', 'work_mem=6MB', 'max_connections=90', '--dry-run']);
    assert.equal(plan.dryRun, true);
    assert.deepEqual(plan.plan.settings.map((change) => [change.name, change.apply]), [['max_connections', 'restart'], ['work_mem', 'reload']]);
    // Lowering max_connections: replicas may never have less than their primary, so the primary goes first.
    assert.equal(plan.plan.order, 'primaryFirst');
    const raise = await cellar.cliJson<ProposalView>(['config', 'set', 'app', 'max_connections=120', '--dry-run']);
    assert.equal(raise.plan.order, 'replicasFirst');
    assert.equal(raise.plan.switchover, true);
    assert.ok(raise.plan.expectedWritePauseMs > 0);
    assert.equal((await revisionsOf()).length, 1);
  });

  test('a reload parameter reaches every instance', async () => {
    const applied = await cellar.cliJson<ProposalView & { state: string }>(['config', 'set', 'app', 'work_mem=7MB', '--reason', 'bigger sorts', '--wait']);
    assert.equal(applied.state, 'applied');
    assert.equal(applied.plan.restart, false);
    assert.deepEqual(await showEverywhere('work_mem'), ['7MB', '7MB']);
  });

  test('a restart parameter rolls through the instances under a writer; new connections all succeed; history and rollback', async () => {
    const uri = cluster.uri as string;
    const { connections, stats } = await underLoad(uri, async (writer) => {
      await eventually('some acknowledged writes', async () => (writer.stats.acknowledged.length >= 20 ? true : undefined), 20_000, 20);
      const before = await cellar.cliJson<ClusterView>(['clusters', 'show', 'app']);
      const applied = await cellar.cliJson<ProposalView & { state: string }>(['config', 'set', 'app', 'max_connections=120', '--wait']);
      assert.equal(applied.state, 'applied');
      assert.deepEqual(await showEverywhere('max_connections'), ['120', '120']);
      const afterChange = await cellar.cliJson<ClusterView>(['clusters', 'show', 'app']);
      const primaryOf = (view: ClusterView): string | undefined => view.instances.find((instance) => instance.role === 'primary')?.id;
      assert.notEqual(primaryOf(afterChange), primaryOf(before), 'the primary moved by a switchover');

      const history = await cellar.cliJson<RevisionView[]>(['config', 'history', 'app']);
      assert.deepEqual(history.map((revision) => revision.revision), [3, 2, 1]);
      assert.deepEqual(history[0]?.diff, [{ name: 'max_connections', from: null, to: '120' }]);
      assert.equal(history[1]?.reason, 'bigger sorts');

      const rolledBack = await cellar.cliJson<ProposalView & { state: string }>(['config', 'rollback', 'app', '2', '--wait']);
      assert.equal(rolledBack.state, 'applied');
      assert.equal(rolledBack.plan.order, 'primaryFirst', 'max_connections goes down: the primary first');
      assert.deepEqual(await showEverywhere('max_connections'), ['100', '100']);
      assert.deepEqual(await showEverywhere('work_mem'), ['7MB', '7MB']);
      const [latest] = await revisionsOf();
      assert.equal(latest?.rollbackOf, 2);
    });
    assert.deepEqual(connections.failures, [], 'every new connection through the proxy succeeded');
    assert.ok(connections.ok > 0);
    const stored = new Set((await queryUri<{ id: string }>(uri, 'select id from acked')).map((row) => Number(row.id)));
    assert.deepEqual(stats.acknowledged.filter((id) => !stored.has(id)), [], 'every acknowledged write is there');
  });

  test('resize up and down under a writer: the size\'s tuned defaults reach every instance, and new connections all succeed', async () => {
    const uri = cluster.uri as string;
    const { connections, stats } = await underLoad(uri, async () => {
      const plan = await cellar.cliJson<ProposalView>(['clusters', 'resize', 'app', '--size', 'medium', '--dry-run']);
      assert.deepEqual(plan.plan.size, { from: 'small', to: 'medium' });
      assert.ok(plan.plan.settings.some((change) => change.name === 'shared_buffers' && change.apply === 'restart'));
      const up = await cellar.cliJson<ProposalView & { state: string }>(['clusters', 'resize', 'app', '--size', 'medium', '--wait']);
      assert.equal(up.state, 'applied');
      assert.equal(up.plan.order, 'replicasFirst');
      assert.deepEqual(await showEverywhere('shared_buffers'), ['512MB', '512MB']);
      assert.deepEqual(await showEverywhere('max_connections'), ['200', '200']);
      const down = await cellar.cliJson<ProposalView & { state: string }>(['clusters', 'resize', 'app', '--size', 'small', '--wait']);
      assert.equal(down.state, 'applied');
      assert.equal(down.plan.order, 'primaryFirst', 'max_connections goes down with the size: the primary first');
      assert.deepEqual(await showEverywhere('shared_buffers'), ['128MB', '128MB']);
      assert.deepEqual(await showEverywhere('max_connections'), ['100', '100']);
      assert.equal((await cellar.cliJson<ClusterView>(['clusters', 'show', 'app'])).size, 'small');
    });
    assert.deepEqual(connections.failures, [], 'every new connection through the proxy succeeded');
    const stored = new Set((await queryUri<{ id: string }>(uri, 'select id from acked')).map((row) => Number(row.id)));
    assert.deepEqual(stats.acknowledged.filter((id) => !stored.has(id)), [], 'every acknowledged write is there');
  });

  test('storage grows only, by at least the step, and once per cooldown; each refusal names storageGb and changes nothing', async () => {
    const before = await revisionsOf();
    const shrink = await cellar.api<ErrorBody>('POST', '/v1/clusters/app/config', { storageGb: 5 });
    assert.equal(shrink.status, 400);
    assert.equal(shrink.body.error.field, 'storageGb');
    assert.match(shrink.body.error.message, /storage only grows: the cluster has 10 GB and 5 GB would shrink it/);
    const grown = await cellar.cliJson<ProposalView & { state: string }>(['clusters', 'resize', 'app', '--storage-gb', '12', '--wait']);
    assert.equal(grown.state, 'applied');
    assert.deepEqual(grown.plan.storage, { fromGb: 10, toGb: 12 });
    assert.equal(grown.plan.restart, false);
    assert.equal((await cellar.cliJson<ClusterView>(['clusters', 'show', 'app'])).storageGb, 12);
    const again = await cellar.api<ErrorBody>('POST', '/v1/clusters/app/config', { storageGb: 20 });
    assert.equal(again.status, 409);
    assert.equal(again.body.error.field, 'storageGb');
    assert.match(again.body.error.message, /storage was resized at .*; the next resize is possible from .* \(one resize per 360 min\)/);
    const after = await revisionsOf();
    assert.equal(after.length, before.length + 1, 'one revision: the grow');
    assert.deepEqual(after[0]?.diff, [{ name: 'storageGb', from: 10, to: 12 }]);
  });

  test('a revision an instance cannot start with is rolled back by itself, and the cluster serves on the one before', async () => {
    const uri = cluster.uri as string;
    const before = (await revisionsOf())[0];
    assert.ok(before);
    // Valid for the catalogue, but this machine has no huge pages: a server asked to insist on them does not start.
    const result = await cellar.cli(['config', 'set', 'app', 'huge_pages=on', '--wait', '--json']);
    assert.equal(result.code, 1, result.stdout + result.stderr);
    const failure = (JSON.parse(result.stdout) as ErrorBody).error.message;
    assert.match(failure, new RegExp(`rolled back by revision ${before.revision + 2}`));
    const revisions = await eventually('the rollback revision to be applied', async () => {
      const all = await revisionsOf();
      return all[0]?.revision === before.revision + 2 && all[0].state === 'applied' ? all : undefined;
    }, 120_000, 200);
    assert.equal(revisions[1]?.state, 'failed');
    assert.equal(revisions[0]?.rollbackOf, before.revision);
    assert.equal(revisions[0]?.actor, 'cellar');
    assert.deepEqual(await showEverywhere('huge_pages'), ['try', 'try']);
    await eventually('writes through the proxy', async () => ((await queryUri(uri, 'insert into acked (id) values (-1) on conflict do nothing')) ? true : undefined), 30_000, 100);
  });

  test('a change resumes after the control plane is killed in the middle of its rolling restart', async () => {
    const proposal = (await cellar.api<ProposalView>('POST', '/v1/clusters/app/config', { settings: { max_connections: '110' } })).body;
    assert.ok(proposal.revision);
    await eventually('the change to be restarting instances', async () => {
      const [latest] = await revisionsOf();
      return latest?.step === 'restartReplicas' || latest?.step === 'switchover' ? true : undefined;
    }, 30_000, 20);
    await cellar.stop('SIGKILL');
    await cellar.start();
    const applied = await eventually('the change to finish after the restart', async () => {
      const found = (await revisionsOf()).find((revision) => revision.revision === proposal.revision);
      if (found?.state === 'failed') throw new Error(`revision ${proposal.revision} failed: ${found.error ?? '?'}`);
      return found?.state === 'applied' ? found : undefined;
    }, 120_000, 200);
    assert.equal(applied.revision, proposal.revision);
    assert.deepEqual(await showEverywhere('max_connections'), ['110', '110']);
  });

  test('a setting changed by hand on an instance is reported and put back', async () => {
    const view = await cellar.cliJson<ClusterView>(['clusters', 'show', 'app']);
    const replica = view.instances.find((instance) => instance.role === 'replica');
    assert.ok(replica?.port);
    const target = `postgresql://postgres:${encodeURIComponent(superuserPassword)}@127.0.0.1:${replica.port}/postgres?sslmode=disable`;
    await queryUri(target, `alter system set work_mem = '13MB'`);
    await queryUri(target, 'select pg_reload_conf()');
    const repaired = await eventually('the drift to be reported and repaired', async () => {
      const shown = await cellar.cluster('app');
      return shown.events.find((event) => event.code === 'settings_drift_repaired' && event.reason.includes(replica.id) && event.reason.includes('work_mem'));
    }, 30_000, 200);
    let value: string | undefined;
    await eventually(`work_mem back to the revision (${repaired.reason}; now ${String(value)})`, async () => {
      value = (await queryUri<{ value: string }>(target, "select current_setting('work_mem') as value"))[0]?.value;
      return value === '7MB' ? true : undefined;
    }, 10_000, 50).catch((error: unknown) => {
      throw new Error(`${String(error)}: work_mem is ${String(value)} after "${repaired.reason}"`);
    });
  });
});
