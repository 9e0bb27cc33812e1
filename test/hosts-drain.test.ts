import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import type { HostDetail } from '../src/api/hosts.js';
import type { ClusterView } from '../src/api/view.js';
import { eventually, queryUri } from './helpers/cellar.js';
import { type CellOnHosts, type HostAgent, startCellOnHosts } from './helpers/cell-on-hosts.js';

/**
 * Drain and a host lost for good, end to end (issue 13): four namespace hosts, each running
 * `cellar agent`; a cluster of a primary and a replica on two of them. Draining the primary's
 * host moves both roles elsewhere under a writer; killing and cutting off a host for good has its
 * instances replaced on the hosts left.
 */

interface InstanceRow {
  readonly id: string;
  readonly role: 'primary' | 'replica';
  readonly host: string;
  readonly label: string;
  /** Whether its last probe saw it stream from the primary (replicas). */
  readonly streaming: boolean;
}

/** Bounds of the waits below: a drain moves one replica clone and one switchover; a lost host adds the lost bound. */
const drainWaitSeconds = 60;
const lostWaitMs = 60_000;
const connectTimeoutMs = 15_000;

/**
 * Opens a new connection through the proxy for every write, so that both new connections and
 * acknowledged writes are measured: a connection refused or broken before it was ready is a
 * failed new connection; an insert that failed on a ready connection is a failed (unacknowledged) write.
 */
function startNewConnectionWriter(uri: string): { stop(): Promise<{ acknowledged: number[]; failedConnections: string[]; failedWrites: string[]; connections: number }> } {
  const acknowledged: number[] = [];
  const failedConnections: string[] = [];
  const failedWrites: string[] = [];
  let connections = 0;
  let stopping = false;
  let next = 1;
  const loop = (async () => {
    while (!stopping) {
      const client = new pg.Client({ connectionString: uri, connectionTimeoutMillis: connectTimeoutMs, query_timeout: connectTimeoutMs });
      client.on('error', () => undefined);
      try {
        await client.connect();
        connections += 1;
      } catch (error) {
        failedConnections.push((error as Error).message);
        await client.end().catch(() => undefined);
        continue;
      }
      const id = next;
      next += 1;
      try {
        await client.query('insert into acks (id) values ($1)', [id]);
        acknowledged.push(id);
      } catch (error) {
        failedWrites.push((error as Error).message);
      }
      await client.end().catch(() => undefined);
    }
  })();
  return {
    async stop() {
      stopping = true;
      await loop;
      return { acknowledged, failedConnections, failedWrites, connections };
    },
  };
}

describe('drain and a host lost for good, on four hosts', () => {
  let cell: CellOnHosts;
  let app: ClusterView;
  /** What settledAway saw last, for a failure's message. */
  let lastSeen = '';

  async function instances(): Promise<InstanceRow[]> {
    return cell.cellar.storeQuery<InstanceRow>(
      `select i.id, i.role, h.name as host, m.label, coalesce((i.observed ->> 'streaming')::boolean, false) as streaming from instances i join hosts h on h.id = i.host_id
         join machines m on m.kind = 'instance' and m.entity_id = i.id
        where i.cluster_id = $1 and i.deleted_at is null order by i.ordinal`,
      [app.id],
    );
  }

  /** The cluster's and hosts' latest events, for a failure's message. */
  async function timeline(): Promise<string> {
    const events = await cell.cellar.storeQuery<{ kind: string; entity_id: string; to_label: string; code: string | null; reason: string | null }>(
      `select m.kind, m.entity_id, e.to_label, e.code, e.reason from events e join machines m on m.id = e.machine_id
        where m.cluster_id = $1 or m.kind = 'host' or m.entity_id = $1 order by e.at desc limit 40`,
      [app.id],
    );
    return events.reverse().map((event) => `${event.kind} ${event.entity_id} -> ${event.to_label} ${event.code ?? ''}: ${event.reason ?? ''}`).join('\n');
  }

  async function host(name: string): Promise<HostDetail> {
    return cell.cellar.cliJson<HostDetail>(['hosts', 'show', name]);
  }

  function agentOf(name: string): HostAgent {
    const agent = cell.agents.find((candidate) => candidate.name === name);
    assert.ok(agent !== undefined, `agent ${name}`);
    return agent;
  }

  /** The cluster runs a primary and a streaming replica, on two distinct hosts none of which is in `avoid`. */
  async function settledAway(avoid: readonly string[]): Promise<InstanceRow[] | undefined> {
    const rows = await instances();
    const view = await cell.cellar.cliJson<ClusterView>(['clusters', 'show', 'app']);
    lastSeen = JSON.stringify({ rows, state: view.state });
    const ok =
      rows.length === 2 &&
      new Set(rows.map((row) => row.host)).size === 2 &&
      rows.every((row) => !avoid.includes(row.host) && row.label === 'running') &&
      view.state === 'running' &&
      rows.some((row) => row.role === 'replica' && row.streaming);
    return ok ? rows : undefined;
  }

  before(async () => {
    cell = await startCellOnHosts({ tag: 'hd', hosts: 4, env: { CELLAR_HOST_LOST_MS: '5000' } });
    app = await cell.cellar.cliJson<ClusterView>(['clusters', 'create', 'app', '--replicas', '1', '--wait']);
    assert.ok(app.uri);
    await queryUri(app.uri, 'create table acks (id int primary key)');
  });

  after(async () => {
    await cell?.destroy();
  });

  test("draining the primary's host under a writer: no acknowledged write lost, the host ends drained and empty, the cluster runs on two other hosts", async () => {
    const placed = await instances();
    const primaryHost = placed.find((row) => row.role === 'primary')?.host;
    const replicaHost = placed.find((row) => row.role === 'replica')?.host;
    assert.ok(primaryHost !== undefined && replicaHost !== undefined && primaryHost !== replicaHost, JSON.stringify(placed));

    const writer = startNewConnectionWriter(app.uri as string);
    const written = (): Promise<number> => queryUri<{ n: number | null }>(app.uri as string, 'select max(id) as n from acks').then((rows) => rows[0]?.n ?? 0);
    let drained: Awaited<ReturnType<typeof cell.cellar.cli>>;
    let drainMs: number;
    try {
      await eventually('the writer has written', async () => ((await written()) > 20 ? true : undefined), 20_000);
      const startedMs = performance.now();
      drained = await cell.cellar.cli(['hosts', 'drain', primaryHost, '--wait', '--timeout', String(drainWaitSeconds)], (drainWaitSeconds + 10) * 1000);
      drainMs = performance.now() - startedMs;
      assert.equal(drained.code, 0, `${drained.stdout}${drained.stderr}\n${await timeline()}`);
      // A few more writes on the new primary before the writer stops.
      const after = await written();
      await eventually('the writer went on after the drain', async () => ((await written()) > after + 5 ? true : undefined), 20_000);
    } finally {
      await writer.stop();
    }
    const result = await writer.stop();
    console.log(
      `drain of ${primaryHost}: ${(drainMs / 1000).toFixed(1)} s; new connections ${result.connections}, failed new connections ${result.failedConnections.length}, failed writes on open connections ${result.failedWrites.length}, acknowledged ${result.acknowledged.length}`,
    );
    for (const message of new Set([...result.failedConnections, ...result.failedWrites])) console.log(`  error: ${message}`);
    assert.match(drained.stdout, /drained/);

    const present = await queryUri<{ n: number }>(app.uri as string, 'select count(*)::int as n from acks where id = any($1::int[])', [result.acknowledged]);
    assert.equal(present[0]?.n, result.acknowledged.length, 'every acknowledged write is on the new primary');
    assert.ok(result.acknowledged.length > 0);

    const shown = await host(primaryHost);
    assert.deepEqual([shown.state, shown.instances], ['drained', []]);
    const rows = await eventually('the cluster on two other hosts', () => settledAway([primaryHost]), 30_000).catch(async (error: unknown) => {
      throw new Error(`${(error as Error).message}; last seen ${lastSeen}\n${await timeline()}\n${cell.cellar.logs().slice(-4000)}`);
    });
    assert.ok(rows.some((row) => row.host === replicaHost), 'the replica that stayed is one of them');
    const events = await cell.cellar.storeQuery<{ code: string }>(
      `select e.code from events e join machines m on m.id = e.machine_id where (m.cluster_id = $1 or m.kind = 'host') and e.code is not null order by e.at`,
      [app.id],
    );
    const codes = events.map((event) => event.code);
    for (const code of ['host_draining', 'replacements_requested', 'drain_switchover_started', 'moved_instances_deleted', 'host_drained']) assert.ok(codes.includes(code), `event ${code} in ${codes.join(' ')}`);
    assert.ok(codes.indexOf('replacements_requested') < codes.indexOf('drain_switchover_started'), 'replicas first, then the switchover');
  });

  test("a host lost for good (agent killed, link cut): it is marked lost and its instances are replaced on the hosts left", async () => {
    const before = await instances();
    const primaryHost = before.find((row) => row.role === 'primary')?.host;
    assert.ok(primaryHost !== undefined);
    const lostAgent = agentOf(primaryHost);
    const cutMs = performance.now();
    await cell.killAgent(lostAgent);
    await cell.network.cut(lostAgent.host);
    const rows = await eventually('the cluster on two hosts other than the lost one and the drained one', async () => {
      const drained = (await cell.cellar.read<{ hosts: { name: string; state: string }[] }>('/v1/hosts')).hosts.filter((row) => row.state === 'drained').map((row) => row.name);
      return settledAway([primaryHost, ...drained]);
    }, lostWaitMs).catch(async (error: unknown) => {
      throw new Error(`${(error as Error).message}; last seen ${lastSeen}\n${await timeline()}\n${cell.cellar.logs().slice(-4000)}`);
    });
    console.log(`host ${primaryHost} lost for good (CELLAR_HOST_LOST_MS=5000): the cluster ran again on two other hosts, replica streaming, after ${((performance.now() - cutMs) / 1000).toFixed(1)} s`);
    assert.equal((await host(primaryHost)).state, 'lost');
    const codes = (await cell.cellar.storeQuery<{ code: string }>(`select e.code from events e join machines m on m.id = e.machine_id where m.cluster_id = $1 or m.kind = 'host'`, [app.id])).map((event) => event.code);
    for (const code of ['host_lost', 'instance_deleted_on_lost_host']) assert.ok(codes.includes(code), `event ${code}`);
    await queryUri(app.uri as string, 'insert into acks (id) values (-1)');
    assert.equal(rows.length, 2);
  });

  test('draining a host whose instances would have nowhere to go is refused with what is missing; an undrained host is active again', async () => {
    const rows = await instances();
    const busy = rows[0]?.host;
    assert.ok(busy !== undefined);
    const refused = await cell.cellar.api<{ error: { code: string; message: string } }>('POST', `/v1/hosts/${busy}/drain`);
    assert.equal(refused.status, 409);
    assert.equal(refused.body.error.code, 'CELLAR_E_PLACEMENT');
    assert.match(refused.body.error.message, /cluster app: 1 instance needs 1 distinct active host/);
    assert.match(refused.body.error.message, /: drained/, 'names the drained host and why');
    assert.equal((await host(busy)).state, 'active', 'nothing changed');

    const drainedName = (await cell.cellar.cliJson<{ name: string; state: string }[]>(['hosts', 'list'])).find((row) => row.state === 'drained')?.name;
    assert.ok(drainedName !== undefined);
    const undrained = await cell.cellar.cli(['hosts', 'undrain', drainedName]);
    assert.equal(undrained.code, 0, undrained.stderr);
    await eventually('the undrained host active', async () => ((await host(drainedName)).state === 'active' ? true : undefined), 10_000);
  });
});
