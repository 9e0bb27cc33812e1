import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import type { ClusterView, InstanceView } from '../src/api/view.js';
import { TestCellar, eventually, sleep } from './helpers/cellar.js';
import { startWriter } from './helpers/writer.js';

/** High availability end to end: real servers, real SIGKILLs, a writer going through the proxy. */

async function query<T extends pg.QueryResultRow>(uri: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: uri, connectionTimeoutMillis: 15_000 });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function postmasterPid(dataDir: string, instanceId: string): Promise<number> {
  const text = await readFile(join(dataDir, 'instances', instanceId, 'pgdata', 'postmaster.pid'), 'utf8');
  return Number(text.split('\n')[0]);
}

const primaryOf = (cluster: ClusterView): InstanceView => {
  const primaries = cluster.instances.filter((instance) => instance.role === 'primary');
  assert.equal(primaries.length, 1, 'exactly one primary');
  return primaries[0] as InstanceView;
};

/** Running, with the primary moved off `oldPrimaryId` and every instance serving (replicas streaming). */
function settledAway(cellar: TestCellar, name: string, oldPrimaryId: string, timeoutMs = 60_000): Promise<ClusterView> {
  return eventually(`${name} to fail over from ${oldPrimaryId} and settle`, async () => {
    const cluster = await cellar.cliJson<ClusterView>(['clusters', 'show', name]);
    if (cluster.state !== 'running' || primaryOf(cluster).id === oldPrimaryId) return undefined;
    const healthy = cluster.instances.every((instance) => instance.state === 'running' && (instance.role === 'primary' || instance.streaming === true));
    return healthy ? cluster : undefined;
  }, timeoutMs, 200);
}

describe('high availability', () => {
  let cellar: TestCellar;
  let app: ClusterView;
  let uri: string;

  before(async () => {
    cellar = await TestCellar.create();
    await cellar.start();
    app = await cellar.cliJson<ClusterView>(['clusters', 'create', 'app', '--wait']);
    uri = app.uri as string;
    await query(uri, 'create table acked (id bigint primary key)');
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
    const settled = await settledAway(cellar, 'app', oldPrimary.id);
    const countAtSettle = writer.stats.acknowledged.length;
    await eventually('writes after the failover', async () => (writer.stats.acknowledged.length > countAtSettle + 20 ? true : undefined), 20_000, 20);
    const stats = await writer.stop();
    const rows = await query<{ id: string }>(uri, 'select id from acked');
    const present = new Set(rows.map((row) => Number(row.id)));
    const lost = stats.acknowledged.filter((id) => !present.has(id));
    assert.deepEqual(lost, [], `no acknowledged id is lost (${stats.acknowledged.length} acknowledged)`);
    const old = settled.instances.find((instance) => instance.id === oldPrimary.id);
    assert.deepEqual([old?.role, old?.state, old?.streaming], ['replica', 'running', true], 'the old primary is back as a streaming replica');
    const firstAfter = stats.acknowledgedAtMs.find((at) => at > killedAtMs);
    t.diagnostic(`first acknowledged write ${((firstAfter ?? Number.NaN) - killedAtMs).toFixed(0)} ms after the SIGKILL; ${stats.errors.length} client errors`);
    for (const event of settled.events.slice(-14)) t.diagnostic(`${event.entity} ${event.from ?? '-'} -> ${event.to}: ${event.reason}`);
    const timeline = settled.events.filter((event) => event.entity === app.id).map((event) => event.to);
    for (const label of ['fence', 'pick', 'promote', 'repoint', 'route', 'rejoin']) assert.ok(timeline.includes(label), `the failover passed through ${label}`);
    const [primaryRow] = await query<{ replica: boolean }>(uri, 'select pg_is_in_recovery() as replica');
    assert.equal(primaryRow?.replica, false, 'the read-write endpoint reaches the new primary');
  });
});
