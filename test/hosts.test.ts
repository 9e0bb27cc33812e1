import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { HostView } from '../src/api/hosts.js';
import type { ClusterView } from '../src/api/view.js';
import { eventually, postmasterPid, queryUri } from './helpers/cellar.js';
import { type CellOnHosts, guardPid, startCellOnHosts } from './helpers/cell-on-hosts.js';
import { postgresTool } from './helpers/tools.js';

/**
 * Many hosts end to end (issue 13): a control plane in the root namespace, database hosts as
 * network namespaces each running `cellar agent`, real Postgres servers on the hosts' addresses.
 */

interface HostRow {
  readonly id: string;
  readonly name: string;
  readonly address: string;
  readonly zone: string;
  readonly state: string;
}

describe('a cluster on three hosts', () => {
  let cell: CellOnHosts;
  let app: ClusterView;
  let hostsById: Map<string, HostRow>;

  before(async () => {
    // A lease long enough for an agent's restart on a loaded machine: the adoption test restarts one.
    cell = await startCellOnHosts({ tag: 'hc', hosts: 3, env: { CELLAR_HOST_LEASE_MS: '8000' } });
    app = await cell.cellar.cliJson<ClusterView>(['clusters', 'create', 'app', '--replicas', '2', '--wait']);
    const hosts = await cell.cellar.cliJson<HostRow[]>(['hosts', 'list']);
    hostsById = new Map(hosts.map((host) => [host.id, host]));
  });

  after(async () => {
    await cell?.destroy();
  });

  test('its primary and two replicas are placed on three distinct hosts in three zones, each placement an event', async () => {
    assert.equal(app.state, 'running');
    const rows = await cell.cellar.storeQuery<{ id: string; host_id: string | null }>('select id, host_id from instances where cluster_id = $1 and deleted_at is null', [app.id]);
    assert.equal(rows.length, 3);
    const hostIds = new Set(rows.map((row) => row.host_id));
    assert.equal(hostIds.size, 3, `distinct hosts: ${JSON.stringify(rows)}`);
    const zones = new Set([...hostIds].map((id) => hostsById.get(id ?? '')?.zone));
    assert.equal(zones.size, 3);
    const placed = await cell.cellar.storeQuery<{ reason: string }>(
      `select e.reason from events e join machines m on m.id = e.machine_id where m.kind = 'instance' and m.cluster_id = $1 and e.code = 'instance_placed'`,
      [app.id],
    );
    assert.equal(placed.length, 3);
    for (const event of placed) assert.match(event.reason, /placed on host h\d \(zone z\d\)/);
  });

  test('writes go through the proxy to the primary on its host; the read-only endpoint reaches a replica on another', async () => {
    assert.ok(app.uri && app.readOnlyUri);
    await queryUri(app.uri, 'create table notes (id int primary key, body text)');
    await queryUri(app.uri, "insert into notes values (1, 'from the root namespace')");
    const [primary] = await queryUri<{ address: string }>(app.uri, 'select host(inet_server_addr()) as address');
    const primaryHost = [...hostsById.values()].find((host) => host.address === primary?.address);
    assert.ok(primaryHost !== undefined, `the primary answers on a host's address, not ${primary?.address}`);
    const replica = await eventually('the row on a replica through the read-only endpoint', async () => {
      const [row] = await queryUri<{ body: string; replica: boolean; address: string }>(
        app.readOnlyUri as string,
        'select (select body from notes where id = 1) as body, pg_is_in_recovery() as replica, host(inet_server_addr()) as address',
      ).catch(() => []);
      return row?.replica === true && row.body !== null ? row : undefined;
    }, 20_000);
    assert.equal(replica.body, 'from the root namespace');
    assert.notEqual(replica.address, primary?.address);
  });

  test("each instance's use on disk is measured on its own host through its agent, and each agent host reports its filesystems' free space in its heartbeat", async () => {
    // The usage operation goes over the agent's mutual TLS like any other; the first probe of a running instance measures it.
    const shown = await eventually('every instance measured', async () => {
      const cluster = await cell.cellar.cluster('app');
      return cluster.instances.every((instance) => instance.dataBytes !== null && instance.walBytes !== null) ? cluster : undefined;
    }, 15_000);
    for (const instance of shown.instances) assert.ok((instance.dataBytes ?? 0) > 1024 ** 2 && (instance.walBytes ?? 0) > 0, `${instance.id}: ${instance.dataBytes} + ${instance.walBytes}`);
    assert.ok(shown.storage.percent !== null && shown.storage.percent > 0);
    const hosts = await eventually('every agent host measured', async () => {
      const listed = (await cell.cellar.read<{ hosts: HostView[] }>('/v1/hosts')).hosts;
      const agents = listed.filter((host) => !host.local);
      return agents.length === 3 && agents.every((host) => host.filesystems !== null) ? agents : undefined;
    }, 15_000);
    for (const host of hosts) {
      const purposes = (host.filesystems ?? []).flatMap((filesystem) => filesystem.purposes).sort();
      assert.deepEqual(purposes, ['backups', 'data'], host.name);
      assert.ok(host.filesystems?.every((filesystem) => filesystem.totalBytes > 0 && filesystem.availableBytes <= filesystem.freeBytes), host.name);
    }
  });

  test('an agent SIGKILLed and started again adopts its instances: the same postmaster, no failover, its guard untouched', async () => {
    const [primary] = await cell.cellar.storeQuery<{ id: string; host_id: string }>(`select id, host_id from instances where cluster_id = $1 and role = 'primary' and deleted_at is null`, [app.id]);
    assert.ok(primary !== undefined);
    const agent = cell.agents.find((candidate) => candidate.host.address === hostsById.get(primary.host_id)?.address);
    assert.ok(agent !== undefined);
    const pidBefore = await postmasterPid(agent.dataDir, primary.id);
    const guardBefore = await guardPid(agent);
    await cell.killAgent(agent);
    await cell.startAgent(agent);
    await eventually('the agent heard from again', async () => {
      const hosts = (await cell.cellar.read<{ hosts: { id: string; leaseAgeMs: number | null }[] }>('/v1/hosts')).hosts;
      const age = hosts.find((host) => host.id === primary.host_id)?.leaseAgeMs;
      return age !== null && age !== undefined && age < 500 ? true : undefined;
    }, 20_000);
    assert.equal(await postmasterPid(agent.dataDir, primary.id), pidBefore, 'the primary was adopted, not restarted');
    assert.equal(await guardPid(agent), guardBefore, 'the guard outlived the agent');
    const [still] = await cell.cellar.storeQuery<{ id: string }>(`select id from instances where cluster_id = $1 and role = 'primary' and deleted_at is null`, [app.id]);
    assert.equal(still?.id, primary.id, 'no failover');
    const failovers = await cell.cellar.storeQuery<{ code: string }>(`select code from events where cluster_id = $1 and code = 'failover_started'`, [app.id]);
    assert.equal(failovers.length, 0);
  });

  test('the control plane stopped past the lease: primaries keep serving by the failsafe (every peer is unleased too), and nothing fails over when it is back', async () => {
    const uri = app.uri as string;
    const [primary] = await cell.cellar.storeQuery<{ id: string; host_id: string }>(`select id, host_id from instances where cluster_id = $1 and role = 'primary' and deleted_at is null`, [app.id]);
    assert.ok(primary !== undefined);
    const agent = cell.agents.find((candidate) => candidate.host.address === hostsById.get(primary.host_id)?.address);
    assert.ok(agent !== undefined);
    const pidBefore = await postmasterPid(agent.dataDir, primary.id);
    await queryUri(uri, 'create table if not exists during_outage (id int primary key)');
    await cell.cellar.stop();
    const stoppedAtMs = performance.now();
    const leaseMs = Number(cell.settings['CELLAR_HOST_LEASE_MS']);
    await eventually('the lease to pass without a control plane', async () => (performance.now() - stoppedAtMs > leaseMs + 2_000 ? true : undefined), 2 * leaseMs, 100);
    // The proxy serves from its cached routes; the primary must still take writes.
    await queryUri(uri, 'insert into during_outage values (1)');
    assert.equal(await postmasterPid(agent.dataDir, primary.id), pidBefore, 'the primary was not fenced');
    assert.match(agent.output, /failsafe: no peer holds a lease either/);
    await cell.cellar.start();
    await eventually('the cluster running again under the control plane', async () => {
      const shown = await cell.cellar.cluster('app');
      return shown.state === 'running' && shown.instances.every((instance) => instance.state === 'running') ? shown : undefined;
    }, 30_000);
    const [still] = await cell.cellar.storeQuery<{ id: string }>(`select id from instances where cluster_id = $1 and role = 'primary' and deleted_at is null`, [app.id]);
    assert.equal(still?.id, primary.id, 'no failover');
    assert.deepEqual(await queryUri<{ id: number }>(uri, 'select id from during_outage'), [{ id: 1 }]);
  });
});

/** Writes through one URI, a new id each time, and remembers which were acknowledged. */
class Writer {
  readonly acknowledged: number[] = [];
  failures = 0;
  private next = 1;
  private stopped = false;
  private running: Promise<void> | undefined;

  constructor(private readonly uri: string) {}

  start(): void {
    this.running = this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      const id = this.next++;
      try {
        await queryUri(this.uri, 'insert into acked (id) values ($1)', [id]);
        this.acknowledged.push(id);
      } catch {
        this.failures += 1;
      }
    }
  }
}

describe("a primary's host cut off under a writer", () => {
  let cell: CellOnHosts;
  let app: ClusterView;

  before(async () => {
    cell = await startCellOnHosts({ tag: 'hf', hosts: 3 });
    app = await cell.cellar.cliJson<ClusterView>(['clusters', 'create', 'app', '--replicas', '2', '--wait']);
    await queryUri(app.uri as string, 'create table acked (id int primary key)');
  });

  after(async () => {
    if (process.env['CELLAR_TEST_DEBUG']) {
      const timeline = await cell.cellar.storeQuery<{ at: string; kind: string; code: string; reason: string }>(
        `select to_char(e.at, 'HH24:MI:SS.MS') as at, e.kind, e.code, e.reason from events e where e.cluster_id = $1 order by e.id`, [app.id]);
      console.log(timeline.map((e) => `${e.at} ${e.kind} ${e.code}: ${e.reason}`).join('\n'));
      const machines = await cell.cellar.storeQuery<{ kind: string; entity_id: string; label: string; attempt: number; last_error: string | null }>(
        'select kind, entity_id, label, attempt, last_error from machines where cluster_id = $1', [app.id]);
      console.log(JSON.stringify(machines, null, 1));
      for (const agent of cell.agents) console.log(`--- ${agent.name}\n${agent.output.slice(-4000)}`);
    }
    await cell?.destroy();
  });

  test('a replica elsewhere is promoted after the lease, writes resume through the same URI with every acknowledged id, the cut-off primary takes no write, and on heal it rejoins as a replica', async () => {
    const uri = app.uri as string;
    const [before] = await queryUri<{ address: string; port: number }>(uri, 'select host(inet_server_addr()) as address, inet_server_port() as port');
    assert.ok(before !== undefined);
    const victim = cell.agents.find((agent) => agent.host.address === before.address);
    assert.ok(victim !== undefined, `the primary at ${before.address} is on one of the hosts`);
    const [oldPrimary] = await cell.cellar.storeQuery<{ id: string }>(`select id from instances where cluster_id = $1 and role = 'primary' and deleted_at is null`, [app.id]);
    assert.ok(oldPrimary !== undefined);

    const writer = new Writer(uri);
    writer.start();
    await eventually('writes acknowledged before the cut', async () => (writer.acknowledged.length >= 20 ? true : undefined), 20_000, 20);
    const acknowledgedBeforeCut = writer.acknowledged.length;
    await cell.network.cut(victim.host);
    const cutAtMs = performance.now();

    // A client inside the cut-off host tries to write to its primary directly, until the lease has
    // certainly run out (lease + margin): from then on nothing it sends may commit there.
    const leaseMs = Number(cell.settings['CELLAR_HOST_LEASE_MS']) + Number(cell.settings['CELLAR_HOST_CLOCK_MARGIN_MS']);
    const appPassword = decodeURIComponent(new URL(uri).password);
    const psql = await postgresTool('psql');
    const directWrite = (id: number) =>
      cell.network.run(victim.host, 'env', [
        `PGPASSWORD=${appPassword}`, 'PGCONNECT_TIMEOUT=2', 'PGSSLMODE=disable', 'PGGSSENCMODE=disable',
        psql, '-h', before.address, '-p', String(before.port), '-U', 'app', '-d', 'app', '-v', 'ON_ERROR_STOP=1', '-c',
        `set statement_timeout = '1s'; set synchronous_commit = local; insert into acked (id) values (${id})`,
      ], 5_000);
    await eventually('the lease to run out', async () => (performance.now() - cutAtMs > leaseMs ? true : undefined), 10_000, 50);
    const afterLease = await directWrite(-1);
    assert.notEqual(afterLease.code, 0, `a write inside the cut-off host after its lease must fail, got: ${afterLease.stdout}`);

    await eventually('a write acknowledged through the same URI after the cut', async () => (writer.acknowledged.length > acknowledgedBeforeCut + 5 ? true : undefined), 30_000, 20);
    const resumedAfterMs = performance.now() - cutAtMs;
    await writer.stop();
    const [after] = await queryUri<{ address: string }>(uri, 'select host(inet_server_addr()) as address');
    assert.notEqual(after?.address, before.address, 'writes now go to another host');
    const present = new Set((await queryUri<{ id: number }>(uri, 'select id from acked')).map((row) => row.id));
    const lost = writer.acknowledged.filter((id) => !present.has(id));
    assert.deepEqual(lost, [], 'every acknowledged id is on the new primary');
    assert.ok(!present.has(-1), 'the write tried inside the cut-off host is nowhere');
    console.log(`# host cut off: writes resumed through the same URI after ${(resumedAfterMs / 1000).toFixed(2)} s; ${writer.acknowledged.length} acknowledged, 0 lost; lease ${cell.settings['CELLAR_HOST_LEASE_MS']} ms + margin ${cell.settings['CELLAR_HOST_CLOCK_MARGIN_MS']} ms`);

    await cell.network.heal(victim.host);
    await eventually('the old primary back as a streaming replica', async () => {
      const [row] = await cell.cellar.storeQuery<{ role: string; fenced: boolean; label: string; streaming: boolean | null }>(
        `select i.role, i.fenced, m.label, (i.observed ->> 'streaming')::boolean as streaming
           from instances i join machines m on m.kind = 'instance' and m.entity_id = i.id where i.id = $1`,
        [oldPrimary.id],
      );
      return row?.role === 'replica' && !row.fenced && row.label === 'running' && row.streaming === true ? row : undefined;
    }, 60_000, 200);
    const [rejoined] = await queryUri<{ count: number }>(uri, 'select count(*)::int as count from acked');
    assert.equal(rejoined?.count, present.size);
  });
});
