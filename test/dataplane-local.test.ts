import assert from 'node:assert/strict';
import { chmod, lstat, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import pg from 'pg';
import type { InstanceSpec, UpstreamRef } from '../src/dataplane/dataplane.js';
import { Binaries } from '../src/postgres/binaries.js';
import { LocalDataPlane } from '../src/dataplane/local/driver.js';
import { LocalBackupStore } from '../src/dataplane/local/backup-store.js';
import { requestPromote } from '../src/dataplane/local/promote.js';
import { ensureDirectory } from '../src/postgres/files.js';
import { ClusterUsers, posixShmDir, resolveRunAs, run, selfRunAs, type RunAs } from '../src/postgres/osuser.js';
import { canTraverseAncestors, fallbackDataRoot, prepareDataDir, resolveDataDir } from '../src/postgres/paths.js';
import { initdb, isAlive, serverPid, startDetached, stopServer, writeConf } from '../src/postgres/server.js';
import { localSuperuser, withClient } from '../src/postgres/sql.js';
import { sleep } from '../src/lib/clock.js';
import { newId, type InstanceId } from '../src/lib/ids.js';
import { seedDataDir } from './helpers/prepared.js';
import { testPort } from './helpers/ports.js';
import { eventually } from './helpers/cellar.js';

/** The newest installed major: the tests run on whatever Postgres the host has. */
const pgVersion = Math.max(...(await Binaries.discover({ pgBin: null })).versions());
const streamingWaitMsMax = 30_000;
const pollMs = 20;

/**
 * A data directory for one test; with `template: 'prepared'` it links the run's prepared template
 * (test/helpers/prepared.ts), so a primary is a copy of it instead of a template build first.
 */
async function tempDataDir(template: 'prepared' | 'none'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'cellar-dp-'));
  // mkdtemp makes 0700; the postgres user must traverse it.
  await chmod(dir, 0o755);
  if (template === 'prepared') await seedDataDir(dir, { store: false, templates: true });
  return dir;
}

function secrets(): InstanceSpec['secrets'] {
  return { superuserPassword: 'su-Pa$$\'"\\word', replicationPassword: "repl-'quoted' \\back", appPassword: "app-it's-secret" };
}

const clusterId = 'cl_dataplanetest';
// The cluster's OS user (made by the data plane when the test runs as root) goes with the file.
after(() => new ClusterUsers('/nonexistent').remove(clusterId));

function specFor(instanceId: InstanceId, port: number, clusterSecrets: InstanceSpec['secrets']): InstanceSpec {
  return { instanceId, clusterId, host: '127.0.0.1', port, peers: [], pgVersion, settings: { shared_buffers: '16MB', max_connections: '20' }, secrets: clusterSecrets };
}

/** A local data plane with its backup store beside the instances (archiving needs one). */
async function localPlane(dataDir: string, binaries: Binaries, templateOwner: RunAs, templateEnabled: boolean): Promise<LocalDataPlane> {
  await prepareDataDir(dataDir);
  const users = new ClusterUsers(dataDir);
  const backups = new LocalBackupStore(join(dataDir, 'backups'), users);
  await backups.prepare();
  return new LocalDataPlane({ dataDir, binaries, users, templateOwner, backups, archiveTimeoutMs: 60_000, templateEnabled });
}

async function tcpQuery(port: number, user: string, password: string, database: string, sql: string): Promise<pg.QueryResult> {
  const client = new pg.Client({ host: '127.0.0.1', port, user, password, database, ssl: false, connectionTimeoutMillis: 5_000 });
  client.on('error', () => {});
  await client.connect();
  try {
    return await client.query(sql);
  } finally {
    await client.end();
  }
}

async function timed(work: () => Promise<void>): Promise<number> {
  const startedMs = performance.now();
  await work();
  return Math.round(performance.now() - startedMs);
}

test('a primary and a streaming replica are created, started, stopped and destroyed idempotently, leaving no process or file', async (t) => {
  const dataDir = await tempDataDir('prepared');
  const runAs = await resolveRunAs();
  const binaries = await Binaries.discover({ pgBin: null });
  assert.ok(binaries.versions().includes(pgVersion), `needs PostgreSQL ${pgVersion}; found ${binaries.versions().join(', ')}`);
  const plane = await localPlane(dataDir, binaries, runAs, true);
  const clusterSecrets = secrets();
  const primary = specFor(newId('instance'), await testPort(), clusterSecrets);
  const replica = specFor(newId('instance'), await testPort(), clusterSecrets);
  const upstream: UpstreamRef = { host: '127.0.0.1', port: primary.port, slotName: replica.instanceId };
  t.after(async () => {
    // Stop by pid file even if an assertion failed half way, then remove everything.
    for (const spec of [primary, replica]) await stopServer(plane.paths(spec.instanceId).pgdata);
    await rm(dataDir, { recursive: true, force: true });
  });

  const createPrimaryMs = await timed(() => plane.createPrimary(primary));
  await plane.createPrimary(primary);
  const startPrimaryMs = await timed(() => plane.start(primary));
  await plane.start(primary);
  const primaryStatus = await plane.status(primary);
  assert.equal(primaryStatus.running, true);
  assert.equal(primaryStatus.accepting, true);
  assert.equal(primaryStatus.inRecovery, false);
  assert.equal(primaryStatus.timeline, 1);
  assert.equal(primaryStatus.streaming, undefined);
  assert.match(primaryStatus.lsn ?? '', /^[0-9A-F]+\/[0-9A-F]+$/);

  await tcpQuery(primary.port, 'app', clusterSecrets.appPassword, 'app', 'create table t (id int primary key, note text)');
  await tcpQuery(primary.port, 'app', clusterSecrets.appPassword, 'app', "insert into t values (1, 'hello')");
  await assert.rejects(tcpQuery(primary.port, 'app', 'wrong', 'app', 'select 1'), /password authentication failed/);

  const createReplicaMs = await timed(() => plane.createReplica(replica, upstream));
  await plane.createReplica(replica, upstream);
  const startReplicaMs = await timed(() => plane.start(replica));
  await plane.start(replica);
  const streamingMs = await timed(async () => {
    const deadline = Date.now() + streamingWaitMsMax;
    while (!(await plane.status(replica)).streaming) {
      assert.ok(Date.now() < deadline, 'replica did not start streaming in time');
      await sleep(pollMs);
    }
  });
  const replicaStatus = await plane.status(replica);
  assert.equal(replicaStatus.inRecovery, true);
  assert.equal(replicaStatus.timeline, 1);
  const rows = await waitForRow(replica.port, clusterSecrets.appPassword);
  assert.deepEqual(rows, [{ id: 1, note: 'hello' }]);
  t.diagnostic(`createPrimary ${createPrimaryMs} ms (template build included), start ${startPrimaryMs} ms; createReplica ${createReplicaMs} ms, start ${startReplicaMs} ms, then streaming after ${streamingMs} ms`);

  const upstreamConf = await stat(join(plane.paths(replica.instanceId).pgdata, 'cellar.upstream.conf'));
  assert.equal(upstreamConf.mode & 0o777, 0o600, 'the file holding the replication password is private');
  assert.equal(upstreamConf.uid, (await new ClusterUsers(dataDir).ensure(clusterId)).uid, "the file is the cluster's own OS user's");
  for (const spec of [primary, replica]) {
    const log = await readFile(plane.paths(spec.instanceId).log, 'utf8');
    for (const password of Object.values(clusterSecrets)) assert.ok(!log.includes(password), 'a password reached a server log');
  }

  const primaryPid = (await plane.status(primary)).pid;
  const replicaPid = replicaStatus.pid;
  assert.ok(primaryPid !== undefined && replicaPid !== undefined);
  await plane.stop(replica.instanceId);
  await plane.stop(replica.instanceId);
  await plane.stop(primary.instanceId);
  await plane.stop(primary.instanceId);
  assert.equal(isAlive(primaryPid), false);
  assert.equal(isAlive(replicaPid), false);
  assert.deepEqual(await plane.status(primary), { running: false, pid: undefined, accepting: false, inRecovery: undefined, timeline: undefined, lsn: undefined, streaming: undefined, receiveLsn: undefined, archive: undefined });

  // Restart both: the replica reconnects through its slot, which dropSlot must then evict.
  await plane.start(primary);
  await plane.start(replica);
  await waitForRow(replica.port, clusterSecrets.appPassword);
  await plane.dropSlot(upstream, clusterSecrets);
  await plane.dropSlot(upstream, clusterSecrets);
  const slots = await tcpQuery(primary.port, 'postgres', clusterSecrets.superuserPassword, 'postgres', 'select slot_name from pg_replication_slots');
  assert.deepEqual(slots.rows, []);

  const pids = [(await plane.status(primary)).pid, (await plane.status(replica)).pid];
  for (const spec of [replica, primary]) {
    await plane.destroy(spec.instanceId);
    await plane.destroy(spec.instanceId);
    await assert.rejects(stat(plane.paths(spec.instanceId).root), { code: 'ENOENT' });
  }
  for (const pid of pids) assert.ok(pid !== undefined && !isAlive(pid), `postgres ${pid} still alive after destroy`);
  // Upstream gone: dropping its slot is a no-op, not an error.
  await plane.dropSlot(upstream, clusterSecrets);
});

/** Waits until the replica streams (on `timeline`, when given). */
async function waitStreaming(plane: LocalDataPlane, spec: InstanceSpec, timeline?: number): Promise<void> {
  const deadline = Date.now() + streamingWaitMsMax;
  for (;;) {
    const status = await plane.status(spec);
    if (status.streaming === true && (timeline === undefined || status.timeline === timeline)) return;
    assert.ok(Date.now() < deadline, `${spec.instanceId} did not stream${timeline === undefined ? '' : ` on timeline ${timeline}`} in time (last: streaming ${status.streaming}, timeline ${status.timeline})`);
    await sleep(pollMs);
  }
}

test('failover operations: sync standbys hold and release commits, promote, follow, and a SIGKILLed primary rejoins by rewind', async (t) => {
  const dataDir = await tempDataDir('prepared');
  const runAs = await resolveRunAs();
  const binaries = await Binaries.discover({ pgBin: null });
  const plane = await localPlane(dataDir, binaries, runAs, true);
  const clusterSecrets = secrets();
  const [primary, first, second] = [
    specFor(newId('instance'), await testPort(), clusterSecrets),
    specFor(newId('instance'), await testPort(), clusterSecrets),
    specFor(newId('instance'), await testPort(), clusterSecrets),
  ];
  t.after(async () => {
    for (const spec of [primary, first, second]) await stopServer(plane.paths(spec.instanceId).pgdata);
    await rm(dataDir, { recursive: true, force: true });
  });
  const app = (spec: InstanceSpec, sql: string) => tcpQuery(spec.port, 'app', clusterSecrets.appPassword, 'app', sql);
  await plane.createPrimary(primary);
  await plane.start(primary);
  await app(primary, 'create table t (id int primary key, note text)');
  for (const replica of [first, second]) {
    await plane.createReplica(replica, { host: '127.0.0.1', port: primary.port, slotName: replica.instanceId });
    await plane.start(replica);
    await waitStreaming(plane, replica);
  }

  // Commits wait for a named standby: one that is not connected holds them until the list changes.
  await plane.setSynchronousStandbys(primary, [first.instanceId]);
  await plane.setSynchronousStandbys(primary, [first.instanceId]);
  await app(primary, "insert into t values (1, 'acknowledged by a replica')");
  await plane.setSynchronousStandbys(primary, ['in_nobodyhereaaa']);
  const superuser = localSuperuser(plane.paths(primary.instanceId).run, primary.port);
  // pg_reload_conf only signals: once the replica's walsender has re-read the list it reports
  // priority 0 (it is no longer a sync standby) and can release no commit.
  await eventually('the walsender of the first replica to drop out of the sync list', () =>
    withClient(superuser, async (client) => {
      const rows = (await client.query<{ priority: number }>('select sync_priority as priority from pg_stat_replication where application_name = $1', [first.instanceId])).rows;
      return rows[0]?.priority === 0 ? true : undefined;
    }), streamingWaitMsMax, pollMs);
  let committed = false;
  const held = app(primary, "insert into t values (2, 'held')").then(() => (committed = true));
  const heldAt = await eventually('the commit to wait for a sync standby', () =>
    withClient(superuser, async (client) => {
      const rows = (await client.query<{ lsn: string }>(`select pg_current_wal_lsn()::text as lsn from pg_stat_activity where wait_event = 'SyncRep' and query like 'insert into t values (2,%'`)).rows;
      return rows[0]?.lsn;
    }), streamingWaitMsMax, pollMs);
  // Once the replica has flushed past the commit, only the sync list can still hold it.
  await eventually('the first replica to flush past the held commit', () =>
    withClient(superuser, async (client) => {
      const rows = (await client.query<{ past: boolean }>('select flush_lsn >= $2::pg_lsn as past from pg_stat_replication where application_name = $1', [first.instanceId, heldAt])).rows;
      return rows[0]?.past === true ? true : undefined;
    }), streamingWaitMsMax, pollMs);
  const stillWaiting = await withClient(superuser, async (client) => (await client.query(`select 1 from pg_stat_activity where wait_event = 'SyncRep'`)).rowCount);
  assert.deepEqual([committed, stillWaiting], [false, 1], 'a commit waits while no named standby has it, though a replica has its WAL');
  await plane.setSynchronousStandbys(primary, []);
  await held;

  // Failover by hand: SIGKILL the primary, promote the first replica, the second follows it.
  // Its exit is watched: the listener (the control plane's wake of its machine) hears of it.
  const exited: string[] = [];
  assert.equal(await plane.watchExit(primary.instanceId), false, 'nothing is watched without a listener');
  plane.onExit((instanceId) => exited.push(instanceId));
  assert.equal(await plane.watchExit(primary.instanceId), true);
  assert.equal(await plane.watchExit(newId('instance')), false, 'an instance with no server is not watched');
  const primaryPid = (await plane.status(primary)).pid;
  assert.ok(primaryPid !== undefined);
  process.kill(primaryPid, 'SIGKILL');
  await eventually('the watch to report the primary gone', async () => (exited.length > 0 ? true : undefined), streamingWaitMsMax, pollMs);
  assert.deepEqual(exited, [primary.instanceId], 'only the SIGKILLed server, once');
  await plane.promote(first);
  await plane.promote(first);
  const promoted = await plane.status(first);
  assert.deepEqual([promoted.inRecovery, promoted.timeline], [false, 2]);
  // A promote request that reaches a server which has just left recovery (the repeat in
  // promoteLocal, under load) is the promotion done: Postgres answers 55000, which is not an error.
  await withClient(localSuperuser(plane.paths(first.instanceId).run, first.port), (client) => requestPromote(client));
  await app(first, "insert into t values (3, 'after the failover')");
  await plane.follow(second, { host: '127.0.0.1', port: first.port, slotName: second.instanceId });
  await plane.follow(second, { host: '127.0.0.1', port: first.port, slotName: second.instanceId });
  // It first streams timeline 1 up to the fork from the new primary, then switches: wait for the switch.
  await waitStreaming(plane, second, 2);

  // The old primary comes back as a replica of the new one: crash recovery, then pg_rewind.
  const back: UpstreamRef = { host: '127.0.0.1', port: first.port, slotName: primary.instanceId };
  assert.equal(await plane.rejoin(primary, back), 'rewound');
  assert.equal(await plane.rejoin(primary, back), 'rewound', 'a second run finds the work done');
  await plane.start(primary);
  await waitStreaming(plane, primary);
  const rows = await app(primary, 'select id from t order by id');
  assert.deepEqual(rows.rows.map((row: { id: number }) => row.id), [1, 2, 3], 'the rejoined server has the new timeline');
  for (const spec of [primary, second]) assert.equal((await plane.status(spec)).inRecovery, true);

  // A data directory pg_rewind cannot use is replaced by a fresh clone.
  await plane.stop(primary.instanceId);
  await rm(join(plane.paths(primary.instanceId).pgdata, 'global', 'pg_control'));
  await rm(join(plane.paths(primary.instanceId).pgdata, 'standby.signal'));
  assert.equal(await plane.rejoin(primary, back), 'cloned');
  await plane.start(primary);
  await waitStreaming(plane, primary);
});

async function waitForRow(port: number, appPassword: string): Promise<unknown[]> {
  const deadline = Date.now() + streamingWaitMsMax;
  for (;;) {
    try {
      const result = await tcpQuery(port, 'app', appPassword, 'app', 'select id, note from t');
      if (result.rows.length > 0) return result.rows;
    } catch (error) {
      if (Date.now() >= deadline) throw error;
    }
    assert.ok(Date.now() < deadline, 'row did not reach the replica in time');
    await sleep(pollMs);
  }
}

test('a primary built from the template and one built by initdb both accept the app role in database app', async (t) => {
  const dataDir = await tempDataDir('none');
  const runAs = await resolveRunAs();
  const binaries = await Binaries.discover({ pgBin: null });
  const withTemplate = await localPlane(dataDir, binaries, runAs, true);
  const withInitdb = await localPlane(dataDir, binaries, runAs, false);
  const clusterSecrets = secrets();
  const specs = [specFor(newId('instance'), await testPort(), clusterSecrets), specFor(newId('instance'), await testPort(), clusterSecrets), specFor(newId('instance'), await testPort(), clusterSecrets)] as const;
  t.after(async () => {
    for (const spec of specs) await stopServer(withTemplate.paths(spec.instanceId).pgdata);
    await rm(dataDir, { recursive: true, force: true });
  });

  const firstTemplateMs = await timed(() => withTemplate.createPrimary(specs[0]));
  const copyMs = await timed(() => withTemplate.createPrimary(specs[1]));
  const initdbMs = await timed(() => withInitdb.createPrimary(specs[2]));
  // A figure, not an assertion: on this VM timings swing 3x with memory reclaim and load (bench/ owns speed).
  t.diagnostic(`createPrimary: template build + copy ${firstTemplateMs} ms, copy ${copyMs} ms, initdb + bootstrap ${initdbMs} ms`);
  for (const [index, spec] of specs.entries()) {
    const plane = index === 2 ? withInitdb : withTemplate;
    await plane.start(spec);
    const result = await tcpQuery(spec.port, 'app', clusterSecrets.appPassword, 'app', 'select current_user as who');
    assert.deepEqual(result.rows, [{ who: 'app' }]);
  }
  for (const spec of specs) await withTemplate.destroy(spec.instanceId);
});

test('the status probe keeps one session per server, yet a SIGSTOPped postmaster is not accepting; a killed session is reopened, a stopped server ends it, and the server logs nothing of it', async (t) => {
  const dataDir = await tempDataDir('prepared');
  const plane = await localPlane(dataDir, await Binaries.discover({ pgBin: null }), await resolveRunAs(), true);
  const spec = specFor(newId('instance'), await testPort(), secrets());
  const paths = plane.paths(spec.instanceId);
  let stoppedPid: number | undefined;
  t.after(async () => {
    if (stoppedPid !== undefined) process.kill(stoppedPid, 'SIGCONT');
    await stopServer(paths.pgdata);
    await rm(dataDir, { recursive: true, force: true });
  });
  await plane.createPrimary(spec);
  await plane.start(spec);
  /** The backends of the probe's own sessions (application_name cellar), seen from another session. */
  const probeBackends = (): Promise<number[]> =>
    withClient(localSuperuser(paths.run, spec.port), async (client) => {
      const result = await client.query<{ pid: number }>("select pid from pg_stat_activity where application_name = 'cellar' and pid <> pg_backend_pid() order by pid");
      return result.rows.map((row) => row.pid);
    });
  const logBefore = (await readFile(paths.log, 'utf8')).length;

  assert.equal((await plane.status(spec)).accepting, true);
  const [first] = await probeBackends();
  assert.ok(first !== undefined, 'the probe keeps a session after its query');
  for (let probe = 0; probe < 3; probe++) assert.equal((await plane.status(spec)).accepting, true);
  assert.deepEqual(await probeBackends(), [first], 'every probe used the one kept session');

  // A hung postmaster: the kept session would still answer, a new connection is not.
  const pid = await serverPid(paths.pgdata);
  assert.ok(pid !== undefined);
  process.kill(pid, 'SIGSTOP');
  stoppedPid = pid;
  const hung = await plane.status(spec);
  assert.equal(hung.running, true);
  assert.equal(hung.accepting, false, 'a postmaster that does not answer is not accepting');
  process.kill(pid, 'SIGCONT');
  stoppedPid = undefined;
  assert.equal((await plane.status(spec)).accepting, true);

  // The session's backend ended (by a tenant's superuser, an OOM kill): the next probe reopens one.
  await withClient(localSuperuser(paths.run, spec.port), (client) => client.query('select pg_terminate_backend($1)', [first]));
  const reopened = await eventually('a probe on a new session, the ended one gone', async () => {
    assert.equal((await plane.status(spec)).accepting, true, 'an ended session fails no probe: it is opened again at once');
    const backends = await probeBackends();
    return backends.length === 1 && backends[0] !== first ? backends : undefined;
  }, 10_000, pollMs);
  assert.notDeepEqual(reopened, [first]);

  await plane.stop(spec.instanceId);
  assert.deepEqual(await plane.status(spec), { running: false, pid: undefined, accepting: false, inRecovery: undefined, timeline: undefined, lsn: undefined, streaming: undefined, receiveLsn: undefined, archive: undefined });
  await plane.start(spec);
  assert.equal((await plane.status(spec)).accepting, true, 'a restarted server is probed on a new session');
  // The probe's answers (an SSLRequest, then a closed socket) leave no complaint in the server log.
  const log = (await readFile(paths.log, 'utf8')).slice(logBefore);
  assert.doesNotMatch(log, /incomplete startup packet|could not receive data|unexpected EOF/);
});

test('a crashed build (left-over tmp dir with its bootstrap server still running) is stopped and removed by the next create', async (t) => {
  const dataDir = await tempDataDir('prepared');
  const runAs = await resolveRunAs();
  const binaries = await Binaries.discover({ pgBin: null });
  const plane = await localPlane(dataDir, binaries, runAs, true);
  const spec = specFor(newId('instance'), await testPort(), secrets());
  const paths = plane.paths(spec.instanceId);
  const crashed = `${paths.pgdata}.tmp-crashed`;
  t.after(async () => {
    await stopServer(crashed);
    await stopServer(paths.pgdata);
    await rm(dataDir, { recursive: true, force: true });
  });
  const owner = await new ClusterUsers(dataDir).ensure(clusterId);
  await ensureDirectory(paths.root, 0o711, selfRunAs());
  await ensureDirectory(paths.run, 0o700, owner);
  await ensureDirectory(crashed, 0o700, owner);
  const binDir = binaries.binFor(pgVersion);
  await initdb({ binDir, pgdata: crashed, runAs: owner });
  await writeConf(crashed, 'cellar.conf', { port: String(spec.port), listen_addresses: '', unix_socket_directories: paths.run }, owner);
  const orphanPid = await startDetached(binDir, crashed, paths.log, owner);

  await plane.createPrimary(spec);
  assert.equal(isAlive(orphanPid), false, 'the orphaned bootstrap server was stopped');
  await assert.rejects(stat(crashed), { code: 'ENOENT' });
  await plane.start(spec);
  assert.equal((await plane.status(spec)).accepting, true);
  await plane.destroy(spec.instanceId);
  assert.equal(await serverPid(paths.pgdata), undefined);
});

test('status of an instance that never existed is "not running", not an error', async () => {
  const dataDir = await tempDataDir('none');
  try {
    const plane = await localPlane(dataDir, await Binaries.discover({ pgBin: null }), await resolveRunAs(), true);
    const status = await plane.status(specFor(newId('instance'), await testPort(), secrets()));
    assert.equal(status.running, false);
    await plane.stop(newId('instance'));
    await plane.destroy(newId('instance'));
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
});

/** Entries of /dev/shm named as Postgres names its segments and owned by `uid`. */
async function segmentsOf(uid: number): Promise<string[]> {
  const found: string[] = [];
  for (const name of await readdir(posixShmDir)) {
    if (!name.startsWith('PostgreSQL.')) continue;
    const stats = await lstat(join(posixShmDir, name)).catch(() => null);
    if (stats?.uid === uid) found.push(name);
  }
  return found.sort();
}

/** Pids of processes whose real uid is `uid`. */
async function processesOf(uid: number): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const status = await readFile(`/proc/${entry}/status`, 'utf8').catch(() => '');
    if (Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]) === uid) pids.push(Number(entry));
  }
  return pids;
}

test("removing a cluster's OS user removes the shared memory its SIGKILLed server left in /dev/shm, and never what a link the user planted there points to", async (t) => {
  const runAs = await resolveRunAs();
  assert.ok(runAs.switchUser, 'cluster OS users exist only when Cellar runs as root: run this as root (CI does)');
  const dataDir = await tempDataDir('prepared');
  const plane = await localPlane(dataDir, await Binaries.discover({ pgBin: null }), runAs, true);
  const users = new ClusterUsers(dataDir);
  const shmClusterId = 'cl_dataplaneshm';
  const spec: InstanceSpec = { ...specFor(newId('instance'), await testPort(), secrets()), clusterId: shmClusterId };
  const rootsFile = join(dataDir, 'roots-file');
  t.after(async () => {
    await stopServer(plane.paths(spec.instanceId).pgdata, 'immediate').catch(() => undefined);
    await users.remove(shmClusterId);
    await rm(dataDir, { recursive: true, force: true });
  });
  await plane.createPrimary(spec);
  await plane.start(spec);
  const owner = await users.find(shmClusterId);
  assert.ok(owner !== undefined && owner.uid !== 0);
  const segments = await segmentsOf(owner.uid);
  assert.ok(segments.length > 0, 'a running server keeps segments in /dev/shm');
  const pid = (await plane.status(spec)).pid;
  assert.ok(pid !== undefined);
  process.kill(pid, 'SIGKILL');
  await eventually("every process of the cluster's user gone", async () => ((await processesOf(owner.uid)).length === 0 ? true : undefined), 15_000, 50);
  assert.deepEqual(await segmentsOf(owner.uid), segments, 'a SIGKILLed postmaster leaves its segments behind');
  // The attack: the cluster's user plants a link named as a segment, to a file of root's.
  await writeFile(rootsFile, 'root keeps this', { mode: 0o600 });
  const planted = join(posixShmDir, `PostgreSQL.${process.pid}${Date.now() % 100_000}`);
  await run('ln', ['-s', rootsFile, planted], { runAs: owner, inheritEnvironment: true, timeoutMs: 5_000 });
  assert.ok((await lstat(planted)).isSymbolicLink());
  await plane.destroy(spec.instanceId);
  await users.remove(shmClusterId);
  assert.deepEqual(await segmentsOf(owner.uid), [], 'no segment, and no link, of the removed user is left');
  assert.equal(await readFile(rootsFile, 'utf8'), 'root keeps this', "the link's target is untouched");
});

test('the data dir falls back to /var/lib/cellar when the home sits under a directory the postgres user cannot enter', async (t) => {
  const runAs = await resolveRunAs();
  if (!runAs.switchUser) {
    t.skip('only meaningful when Cellar runs as root');
    return;
  }
  const locked = await mkdtemp(join(tmpdir(), 'cellar-locked-')); // 0700, owned by root
  t.after(() => rm(locked, { recursive: true, force: true }));
  const home = join(locked, '.cellar');
  assert.equal(canTraverseAncestors(join(home, 'data'), runAs), false);
  const fallback = resolveDataDir({ home, dataDir: null }, runAs);
  assert.match(fallback, new RegExp(`^${fallbackDataRoot}/cellar-[0-9a-f]{8}$`));
  assert.equal(resolveDataDir({ home, dataDir: null }, runAs), fallback, 'the fallback is stable for one home');

  await chmod(locked, 0o755);
  assert.equal(resolveDataDir({ home, dataDir: null }, runAs), fallback, 'a home Cellar has yet to make will be 0700: the same answer before and after it exists');
  await mkdir(home, { mode: 0o755 });
  await chmod(home, 0o755);
  assert.equal(resolveDataDir({ home, dataDir: null }, runAs), join(home, 'data'), 'an existing home the postgres user can enter keeps the data');
  assert.equal(resolveDataDir({ home, dataDir: '/srv/x' }, runAs), '/srv/x');
});
