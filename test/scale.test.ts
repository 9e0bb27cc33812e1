import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import type { ClusterView } from '../src/api/view.js';
import type { InstanceStatus } from '../src/dataplane/dataplane.js';
import { clusterMachine } from '../src/machines/cluster.js';
import { hostMachine } from '../src/machines/host.js';
import { instanceMachine } from '../src/machines/instance.js';
import { insertCluster } from '../src/store/clusters.js';
import { ensureLocalHost } from '../src/store/local-host.js';
import { PgMachineStore } from '../src/store/machine-store.js';
import { nudgeChannel } from '../src/store/machines-table.js';
import { loadRoutes } from '../src/store/routes.js';
import { createOrg } from '../src/store/tenancy.js';
import { TestCellar, eventually, queryUri } from './helpers/cellar.js';
import { testPorts } from './helpers/ports.js';
import { type TestStore, startTestStore } from './helpers/store.js';
import { startWriter } from './helpers/writer.js';

/**
 * Scaling a running cluster (issue 14: `cellar clusters scale --replicas N`): the cluster machine
 * adds and removes replicas while a writer and a reader go through the proxy.
 */

const replicaStatus = (streaming: boolean): InstanceStatus => ({
  running: true, pid: 1, accepting: true, inRecovery: true, timeline: 1, lsn: '0/3000000', streaming, receiveLsn: '0/3000000', archive: undefined,
});

describe('routes of a replica being added or removed', () => {
  let store: TestStore;

  before(async () => {
    store = await startTestStore();
    await ensureLocalHost(store.pool, { memoryMb: 1_048_576, diskGb: 1_048_576, slots: 1_000, agentPort: 8435 }, hostMachine);
  });

  after(async () => {
    await store.close();
  });

  test('a new replica is routed only once its machine runs and it streams; one out of the routes is not routed at all', async () => {
    const org = await createOrg(store.pool, 'scale');
    assert.ok(org !== null);
    const clusterId = await insertCluster(store.pool, clusterMachine, org.id, 'app', { size: 'small', replicas: 1, storageGb: 10, pgVersion: 15, durability: 'sync' });
    const ports = await testPorts(2);
    const machines = new PgMachineStore(store.pool, ports[0] as number, ports[1] as number, instanceMachine);
    await machines.createInstance(clusterId, 0, 'primary');
    const replicaId = await machines.addReplica(clusterId);
    await machines.allocatePort(replicaId);
    const routed = async (): Promise<{ healthy: boolean } | undefined> => {
      const route = (await loadRoutes(store.pool)).find((row) => row.clusterId === clusterId);
      return route?.instances.find((instance) => instance.role === 'replica');
    };
    const labelled = async (label: string, streaming: boolean): Promise<void> => {
      await store.pool.query(`update machines set label = $2 where kind = 'instance' and entity_id = $1`, [replicaId, label]);
      await machines.recordObserved(replicaId, replicaStatus(streaming));
    };
    await labelled('waitReady', true);
    assert.equal((await routed())?.healthy, false, 'cloned and even streaming, but its machine has not seen it ready: not routed');
    await labelled('running', false);
    assert.equal((await routed())?.healthy, false, 'running but not streaming: not routed');
    await labelled('running', true);
    assert.equal((await routed())?.healthy, true, 'running and streaming: routed');
    await machines.setInRoute(replicaId, false);
    assert.equal(await routed(), undefined, 'out of the routes (being removed): not in the table the proxy reads');
  });
});

/** How long one scale may take: a clone of a small database and its start, or a delete. */
const settleMsMax = 90_000;
const settlePollMs = 200;
/** Writes and reads seen after each scale, so each step is crossed by traffic. */
const progressCount = 20;

interface Reader {
  readonly stats: { reads: number; errors: string[] };
  stop(): Promise<void>;
}

/** Reads through the read-only endpoint in a loop; reconnects after an error (a removed replica's connection is ended by the proxy). */
function startReader(uri: string): Reader {
  const stats = { reads: 0, errors: [] as string[] };
  let stopping = false;
  const loop = (async () => {
    let client: pg.Client | null = null;
    while (!stopping) {
      try {
        if (client === null) {
          client = new pg.Client({ connectionString: uri, connectionTimeoutMillis: 15_000, query_timeout: 15_000 });
          client.on('error', () => undefined);
          await client.connect();
        }
        await client.query('select count(*) from acked');
        stats.reads += 1;
        await new Promise((resolve) => setTimeout(resolve, 5));
      } catch (error) {
        stats.errors.push(error instanceof Error ? error.message : String(error));
        await client?.end().catch(() => undefined);
        client = null;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
    await client?.end().catch(() => undefined);
  })();
  return {
    stats,
    stop() {
      stopping = true;
      return loop;
    },
  };
}

describe('scaling a running cluster under writes', () => {
  let cellar: TestCellar;
  let app: ClusterView;

  before(async () => {
    cellar = await TestCellar.create();
    await cellar.start();
    app = await cellar.cliJson<ClusterView>(['clusters', 'create', 'app', '--replicas', '1', '--wait']);
    await queryUri(app.uri as string, 'create table acked (id bigint primary key)');
  });

  after(async () => {
    await cellar.destroy();
  });

  /**
   * What `cellar clusters scale app --replicas N` will do through the API; until it exists, the
   * spec is changed in the store and the cluster machine woken, as the API's change will.
   */
  async function setReplicas(replicas: number): Promise<void> {
    await cellar.storeQuery(
      `with changed as (update clusters set spec = jsonb_set(spec, '{replicas}', to_jsonb($2::int)) where id = $1 returning id),
            woken as (update machines set next_tick_at = now() where kind = 'cluster' and entity_id = $1 and next_tick_at is not null returning lane)
       select pg_notify($3, lane) from woken, changed`,
      [app.id, replicas, nudgeChannel],
    );
  }

  async function show(): Promise<ClusterView> {
    const shown = await cellar.api<ClusterView>('GET', '/v1/clusters/app');
    assert.equal(shown.status, 200);
    return shown.body;
  }

  /**
   * Running, with exactly `replicas` replicas left (removed ones deleted), each streaming, and
   * durability following: sync (commits wait for a replica) with one, async with none.
   */
  function settledAt(replicas: number): Promise<ClusterView> {
    const replication = replicas === 0 ? 'async' : 'sync';
    return eventually(`app to have exactly ${replicas} streaming replica(s), replication ${replication}`, async () => {
      const cluster = await show();
      const live = cluster.instances.filter((instance) => instance.role === 'replica');
      const streaming = live.length === replicas && live.every((instance) => instance.state === 'running' && instance.streaming === true);
      const settled = cluster.state === 'running' && cluster.replicas === replicas && streaming && cluster.replication === replication;
      return settled ? cluster : undefined;
    }, settleMsMax, settlePollMs);
  }

  test('scale 1 → 2 → 0 → 1 under a writer and a reader: every acknowledged write survives and the writer never fails', async (t) => {
    const writer = startWriter(app.uri as string, 'acked');
    const reader = startReader(app.readOnlyUri as string);
    const progress = async (what: string): Promise<void> => {
      const [written, read] = [writer.stats.acknowledged.length, reader.stats.reads];
      await eventually(`writes and reads ${what}`, async () => (writer.stats.acknowledged.length >= written + progressCount && reader.stats.reads >= read + progressCount ? true : undefined), 30_000, 20);
    };
    /** Every instance the cluster had before its last scale, to tell the last replica is a fresh one. */
    const earlier = new Set<string>();
    try {
      await progress('before scaling');
      for (const replicas of [2, 0, 1]) {
        for (const instance of (await show()).instances) earlier.add(instance.id);
        const startedAtMs = performance.now();
        await setReplicas(replicas);
        const settled = await settledAt(replicas);
        t.diagnostic(`scaled to ${replicas} replica(s) in ${(performance.now() - startedAtMs).toFixed(0)} ms; replication ${settled.replication ?? '-'}`);
        await progress(`at ${replicas} replica(s)`);
      }
    } finally {
      await writer.stop();
      await reader.stop();
    }
    const cluster = await show();
    const codes = cluster.events.map((event) => event.code);
    for (const code of ['replicas_added', 'replicas_removed']) assert.ok(codes.includes(code), `event ${code} in ${codes.join(' ')}`);
    const [replica] = cluster.instances.filter((instance) => instance.role === 'replica');
    assert.ok(replica !== undefined);
    assert.ok(!earlier.has(replica.id), 'the replica at the end is a fresh one: a removed one never comes back');
    const [readFromReplica] = await queryUri<{ replica: boolean }>(app.readOnlyUri as string, 'select pg_is_in_recovery() as replica');
    assert.equal(readFromReplica?.replica, true, 'the read-only endpoint reaches the new replica again');
    const present = new Set((await queryUri<{ id: string }>(app.uri as string, 'select id from acked')).map((row) => Number(row.id)));
    const lost = writer.stats.acknowledged.filter((id) => !present.has(id));
    const gapsMs = writer.stats.acknowledgedAtMs.map((at, index, all) => (index === 0 ? 0 : at - (all[index - 1] as number)));
    t.diagnostic(`longest pause between acknowledged writes: ${Math.max(...gapsMs).toFixed(0)} ms`);
    t.diagnostic(`${writer.stats.acknowledged.length} writes acknowledged; ${reader.stats.reads} reads, ${reader.stats.errors.length} reader reconnects (${[...new Set(reader.stats.errors)].join('; ')})`);
    assert.deepEqual(lost, [], `no acknowledged write is lost (${writer.stats.acknowledged.length} acknowledged)`);
    assert.deepEqual(writer.stats.errors, [], 'the writer never failed');
  });
});
