import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { ClusterView, InstanceView } from '../src/api/view.js';
import { spawn } from 'node:child_process';
import { Binaries } from '../src/postgres/binaries.js';
import { postmasterPid, queryUri, sleep, TestCellar, eventually } from './helpers/cellar.js';
import { startWriter } from './helpers/writer.js';

/** High availability end to end: real servers, real SIGKILLs, a writer going through the proxy. */



const primaryOf = (cluster: ClusterView): InstanceView => {
  const primaries = cluster.instances.filter((instance) => instance.role === 'primary');
  assert.equal(primaries.length, 1, 'exactly one primary');
  return primaries[0] as InstanceView;
};

/** Running, with the primary moved off `oldPrimaryId` and every instance serving (replicas streaming). */
function settledAway(cellar: TestCellar, name: string, oldPrimaryId: string, timeoutMs = 60_000): Promise<ClusterView> {
  return eventually(`${name} to fail over from ${oldPrimaryId} and settle`, async () => {
    const cluster = await cellar.cluster(name);
    if (cluster.state !== 'running' || primaryOf(cluster).id === oldPrimaryId) return undefined;
    const healthy = cluster.instances.every((instance) => instance.state === 'running' && (instance.role === 'primary' || instance.streaming === true));
    return healthy ? cluster : undefined;
  }, timeoutMs, 200);
}

/** The failovers before the breaker test: chaos, control plane killed mid-failover, hung primary. */
const breakerFailoversMax = 3;
/** New connections counted before and after a switchover, so both sides of it are exercised. */
const connectsAroundSwitchover = 20;

describe('high availability', () => {
  let cellar: TestCellar;
  let app: ClusterView;
  let uri: string;

  before(async () => {
    // A short replica deadline so that the replacement test does not wait a minute; a breaker that
    // the earlier failovers of this file trip, so that its test finds it open.
    cellar = await TestCellar.create({ CELLAR_REPLICA_DEAD_MS: '3000', CELLAR_FAILOVERS_MAX: String(breakerFailoversMax) });
    await cellar.start();
    app = await cellar.cliJson<ClusterView>(['clusters', 'create', 'app', '--wait']);
    uri = app.uri as string;
    await queryUri(uri, 'create table acked (id bigint primary key)');
  });

  after(async () => {
    await cellar.destroy();
  });

  test('chaos: SIGKILL the primary under writes; every acknowledged id survives and the old primary streams again', async (t) => {
    assert.equal(app.durability, 'sync');
    const oldPrimary = primaryOf(app);
    const writer = startWriter(uri, 'acked');
    await eventually('some acknowledged writes', async () => (writer.stats.acknowledged.length >= 50 ? true : undefined), 20_000, 20);
    const killedAtMs = performance.now();
    process.kill(await postmasterPid(cellar.dataDir, oldPrimary.id), 'SIGKILL');
    await eventually('the writer to notice', async () => (writer.stats.errors.length > 0 ? true : undefined), 20_000, 5);
    const noticedAtMs = performance.now();
    const settled = await settledAway(cellar, 'app', oldPrimary.id);
    const countAtSettle = writer.stats.acknowledged.length;
    await eventually('writes after the failover', async () => (writer.stats.acknowledged.length > countAtSettle + 20 ? true : undefined), 20_000, 20);
    const stats = await writer.stop();
    const rows = await queryUri<{ id: string }>(uri, 'select id from acked');
    const present = new Set(rows.map((row) => Number(row.id)));
    const lost = stats.acknowledged.filter((id) => !present.has(id));
    assert.deepEqual(lost, [], `no acknowledged id is lost (${stats.acknowledged.length} acknowledged)`);
    const old = settled.instances.find((instance) => instance.id === oldPrimary.id);
    assert.deepEqual([old?.role, old?.state, old?.streaming], ['replica', 'running', true], 'the old primary is back as a streaming replica');
    const firstAfter = stats.acknowledgedAtMs.find((at) => at > noticedAtMs);
    t.diagnostic(`first acknowledged write ${((firstAfter ?? Number.NaN) - killedAtMs).toFixed(0)} ms after the SIGKILL (the writer saw it fail ${(noticedAtMs - killedAtMs).toFixed(0)} ms after); ${stats.errors.length} client errors`);
    for (const event of settled.events.slice(-14)) t.diagnostic(`${event.entity} ${event.from ?? '-'} -> ${event.to}: ${event.reason}`);
    const timeline = settled.events.filter((event) => event.entity === app.id).map((event) => event.to);
    for (const label of ['fence', 'pick', 'promote', 'repoint', 'route', 'rejoin']) assert.ok(timeline.includes(label), `the failover passed through ${label}`);
    const [primaryRow] = await queryUri<{ replica: boolean }>(uri, 'select pg_is_in_recovery() as replica');
    assert.equal(primaryRow?.replica, false, 'the read-write endpoint reaches the new primary');
  });

  test('kill a replica: the cluster stays writable (sync drops to async, then returns)', async (t) => {
    const before = await cellar.cliJson<ClusterView>(['clusters', 'show', 'app']);
    const replica = before.instances.find((instance) => instance.role === 'replica') as InstanceView;
    await queryUri(uri, 'create table acked_replica_kill (id bigint primary key)');
    const writer = startWriter(uri, 'acked_replica_kill');
    await eventually('writes before the kill', async () => (writer.stats.acknowledged.length >= 20 ? true : undefined), 20_000, 20);
    const killedAtMs = performance.now();
    process.kill(await postmasterPid(cellar.dataDir, replica.id), 'SIGKILL');
    const countAtKill = writer.stats.acknowledged.length;
    await eventually('writes after the replica died', async () => (writer.stats.acknowledged.length >= countAtKill + 50 ? true : undefined), 20_000, 20);
    const stats = await writer.stop();
    const longestGapMs = Math.max(...stats.acknowledgedAtMs.filter((at) => at > killedAtMs - 1_000).map((at, index, all) => (index === 0 ? 0 : at - (all[index - 1] as number))));
    t.diagnostic(`longest pause between acknowledged writes around the kill: ${longestGapMs.toFixed(0)} ms`);
    const settled = await eventually('the replica to stream and sync to return', async () => {
      const cluster = await cellar.cluster('app');
      const back = cluster.instances.find((instance) => instance.id === replica.id);
      return back?.streaming === true && cluster.replication === 'sync' ? cluster : undefined;
    }, 30_000, 200);
    const codes = settled.events.map((event) => event.code);
    const dropped = codes.indexOf('sync_dropped_to_async');
    assert.ok(dropped >= 0, 'an event says sync dropped to async');
    assert.ok(codes.slice(dropped + 1).includes('commits_wait_for_replica'), 'then an event says it returned');
    assert.deepEqual(stats.errors, [], 'the writer saw no error');
  });

  test('SIGKILL the control plane mid-failover: after restart exactly one primary is routed and the cluster is healthy', async () => {
    const before = await cellar.cliJson<ClusterView>(['clusters', 'show', 'app']);
    const oldPrimary = primaryOf(before);
    const replica = before.instances.find((instance) => instance.role === 'replica') as InstanceView;
    // A replica that cannot answer holds the failover in `pick`: the kill lands mid-failover every time.
    const replicaPid = await postmasterPid(cellar.dataDir, replica.id);
    process.kill(replicaPid, 'SIGSTOP');
    try {
      process.kill(await postmasterPid(cellar.dataDir, oldPrimary.id), 'SIGKILL');
      await eventually('the failover to reach pick', async () => {
        const [row] = await cellar.storeQuery<{ label: string }>(`select label from machines where kind = 'cluster' and entity_id = $1`, [app.id]);
        return row?.label === 'pick' ? true : undefined;
      }, 30_000, 20);
      await cellar.stop('SIGKILL');
    } finally {
      process.kill(replicaPid, 'SIGCONT');
    }
    const fenced = await cellar.storeQuery<{ fenced: boolean }>('select fenced from instances where id = $1', [oldPrimary.id]);
    assert.equal(fenced[0]?.fenced, true, 'the control plane died after fencing and before promoting');
    await cellar.start();
    const settled = await settledAway(cellar, 'app', oldPrimary.id);
    assert.equal(primaryOf(settled).id, replica.id);
    const primaries = await cellar.storeQuery<{ id: string }>(`select id from instances where cluster_id = $1 and role = 'primary' and deleted_at is null and not fenced`, [app.id]);
    assert.deepEqual(primaries.map((row) => row.id), [replica.id], 'exactly one routable primary');
    const [row] = await queryUri<{ replica: boolean; port: string }>(uri, `select pg_is_in_recovery() as replica, current_setting('port') as port`);
    assert.deepEqual([row?.replica, Number(row?.port)], [false, replica.port], 'the proxy routes writes to it');
  });

  test('switchover under pgbench load: new connections made during it all succeed', async (t) => {
    const before = await cellar.cliJson<ClusterView>(['clusters', 'show', 'app']);
    const oldPrimary = primaryOf(before);
    const pgbench = join((await Binaries.discover({ pgBin: null })).binFor(before.version), 'pgbench');
    const pgEnv = { ...process.env, PGSSLMODE: 'disable', PGGSSENCMODE: 'disable' };
    const init = spawn(pgbench, ['-i', '-s', '1', '-q', uri], { env: pgEnv, stdio: 'ignore' });
    assert.equal(await new Promise((resolve) => init.on('exit', resolve)), 0, 'pgbench -i through the proxy');
    const load = spawn(pgbench, ['-c', '4', '-T', '12', '-n', uri], { env: pgEnv, stdio: 'ignore' });
    const loadExited = new Promise((resolve) => load.on('exit', resolve));
    let connects = 0;
    const failures: string[] = [];
    let stopping = false;
    const connector = (async () => {
      while (!stopping) {
        const startedMs = performance.now();
        try {
          await queryUri(uri, 'select 1');
          connects += 1;
        } catch (error) {
          failures.push(`${error instanceof Error ? error.message : String(error)} after ${(performance.now() - startedMs).toFixed(0)} ms`);
        }
        await sleep(10);
      }
    })();
    await eventually('new connections under load before the switchover', async () => (connects >= connectsAroundSwitchover ? true : undefined), 30_000, 20);
    const switched = await cellar.cliJson<ClusterView>(['clusters', 'switchover', 'app', '--wait', '--timeout', '60']);
    const connectsAtSwitch = connects;
    await eventually('new connections after the switchover', async () => (connects >= connectsAtSwitch + connectsAroundSwitchover ? true : undefined), 30_000, 20);
    stopping = true;
    await connector;
    load.kill('SIGINT');
    await loadExited;
    t.diagnostic(`${connects} new connections during the run`);
    assert.notEqual(primaryOf(switched).id, oldPrimary.id, 'another instance is the primary');
    assert.deepEqual(failures, [], 'no new connection failed');
    const settled = await settledAway(cellar, 'app', oldPrimary.id);
    const timeline = settled.events.filter((event) => event.entity === app.id).map((event) => event.to);
    for (const label of ['pause', 'catchUp', 'stopPrimary', 'promote', 'route']) assert.ok(timeline.includes(label), `the switchover passed through ${label}`);
  });

  test('a primary that hangs (SIGSTOP) is failed over after N failed probes, not at the first', async (t) => {
    const before = await cellar.cliJson<ClusterView>(['clusters', 'show', 'app']);
    const oldPrimary = primaryOf(before);
    const pid = await postmasterPid(cellar.dataDir, oldPrimary.id);
    const stoppedAtMs = Date.now();
    process.kill(pid, 'SIGSTOP');
    try {
      const settled = await settledAway(cellar, 'app', oldPrimary.id, 90_000);
      const down = settled.events.find((event) => event.entity === oldPrimary.id && event.to === 'down' && Date.parse(event.at) >= stoppedAtMs - 1_000);
      assert.ok(down !== undefined, 'the hung primary went down');
      // The reason names the count: the primary went down at the third failed probe, not the first.
      assert.match(down.reason, /3 probes in a row failed/);
      t.diagnostic(`down ${Date.parse(down.at) - stoppedAtMs} ms after the SIGSTOP`);
    } finally {
      // SIGKILL by the fence has normally ended it; if not, let it run on so cleanup can stop it.
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // Already gone.
      }
    }
  });

  test('a replica that cannot be brought back within the deadline is replaced by a fresh one', async () => {
    const before = await cellar.cliJson<ClusterView>(['clusters', 'show', 'app']);
    const replica = before.instances.find((instance) => instance.role === 'replica') as InstanceView;
    // Without PG_VERSION the server refuses to start: restarting in place can never work.
    await rm(join(cellar.dataDir, 'instances', replica.id, 'pgdata', 'PG_VERSION'));
    process.kill(await postmasterPid(cellar.dataDir, replica.id), 'SIGKILL');
    const replaced = await eventually('a fresh replica streaming in its place', async () => {
      const cluster = await cellar.cluster('app');
      const fresh = cluster.instances.find((instance) => instance.role === 'replica' && instance.id !== replica.id);
      return fresh?.streaming === true && !cluster.instances.some((instance) => instance.id === replica.id) ? cluster : undefined;
    }, 90_000, 250);
    assert.equal(replaced.instances.length, 2, 'one primary and one replica, as asked');
    assert.ok(replaced.events.some((event) => event.code === 'replica_replaced' && event.reason.includes(replica.id)), 'an event says the replica was replaced');
    const failed = replaced.events.find((event) => event.entity === replica.id && event.to === 'failed');
    assert.equal(failed?.code, 'not_serving');
    assert.match(failed.reason, /not serving for more than 3000 ms/);
  });

  test('failover and switchover requests: bad input and wrong state get clear errors', async () => {
    const badTarget = await cellar.api<{ error: { code: string; field: string; message: string } }>('POST', '/v1/clusters/app/switchover', { to: 'in_nosuchreplica' });
    assert.deepEqual([badTarget.status, badTarget.body.error.field], [400, 'to']);
    assert.match(badTarget.body.error.message, /to must be the id of a replica of cluster "app": in_/);
    const unknown = await cellar.api<{ error: { code: string } }>('POST', '/v1/clusters/nope/failover', {});
    assert.equal(unknown.status, 404);
    await cellar.cliJson<ClusterView>(['clusters', 'create', 'solo', '--replicas', '0', '--wait']);
    const solo = await cellar.cli(['clusters', 'failover', 'solo']);
    assert.equal(solo.code, 1);
    assert.match(solo.stderr, /cluster "solo" has no replica to fail over to \[CELLAR_E_CONFLICT\]/);
    const strictAlone = await cellar.api<{ error: { field: string; message: string } }>('POST', '/v1/clusters', { name: 'strict', replicas: 0, durability: 'sync-strict' });
    assert.deepEqual([strictAlone.status, strictAlone.body.error.field], [400, 'durability']);
    assert.match(strictAlone.body.error.message, /needs at least 1 replica/);
  });

  test('past the circuit breaker automatic failover stops and says a human must act; a manual failover still works', async () => {
    const [recent] = await cellar.storeQuery<{ n: number }>(`select count(*)::int as n from events where kind = 'cluster' and to_label = 'fence'`);
    assert.ok((recent?.n ?? 0) >= breakerFailoversMax, `the breaker is tripped (${recent?.n} failovers, limit ${breakerFailoversMax})`);
    const before = await cellar.cliJson<ClusterView>(['clusters', 'show', 'app']);
    const oldPrimary = primaryOf(before);
    const killedAtMs = Date.now();
    process.kill(await postmasterPid(cellar.dataDir, oldPrimary.id), 'SIGKILL');
    const tripped = await eventually('the breaker event', async () => {
      const cluster = await cellar.cluster('app');
      return cluster.events.find((event) => event.code === 'circuit_breaker_open' && Date.parse(event.at) >= killedAtMs - 1_000);
    }, 30_000, 200);
    assert.match(tripped.reason, /a human must act: cellar clusters failover NAME/);
    const still = await cellar.cliJson<ClusterView>(['clusters', 'show', 'app']);
    assert.equal(primaryOf(still).id, oldPrimary.id, 'no automatic failover happened');
    const manual = await cellar.cli(['clusters', 'failover', 'app', '--wait', '--timeout', '60']);
    assert.equal(manual.code, 0, manual.stderr);
    const settled = await settledAway(cellar, 'app', oldPrimary.id);
    const [row] = await queryUri<{ replica: boolean }>(uri, 'select pg_is_in_recovery() as replica');
    assert.equal(row?.replica, false);
    assert.ok(settled.instances.every((instance) => instance.state === 'running'));
  });
});
