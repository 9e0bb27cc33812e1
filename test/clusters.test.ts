import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';

import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { HostView } from '../src/api/hosts.js';
import type { ClusterView } from '../src/api/view.js';
import { isPortFree } from '../src/lib/net.js';
import { postmasterPid, queryUri, processesUsing, TestCellar, eventually, testStorageGbBytes } from './helpers/cellar.js';

/** End to end through the real CLI, API, engine and Postgres servers. */

/** Probes of each instance by a restarted control plane before checking it restarted none. */
const probesAfterRestart = 3;


describe('clusters', () => {
  let cellar: TestCellar;
  let app: ClusterView;

  before(async () => {
    // Use on disk measured every second (the least allowed) instead of every 30 s, so the usage test sees writes soon; a walk of these small data directories takes milliseconds.
    cellar = await TestCellar.create({ CELLAR_USAGE_INTERVAL_MS: '1000' });
    await cellar.start();
    app = await cellar.cliJson<ClusterView>(['clusters', 'create', 'app', '--wait']);
  });

  after(async () => {
    await cellar.destroy();
  });

  test('create --wait gives a running primary and a streaming replica; a row written through uri is visible on the replica', async () => {
    assert.equal(app.state, 'running');
    assert.deepEqual(app.instances.map((instance) => [instance.role, instance.state]), [['primary', 'running'], ['replica', 'running']]);
    assert.ok(app.uri && app.readOnlyUri);
    await queryUri(app.uri, 'create table notes (id int primary key, body text)');
    await queryUri(app.uri, "insert into notes values (1, 'hello')");
    const rows = await eventually('the row on the replica', async () => {
      const found = await queryUri<{ body: string }>(app.readOnlyUri as string, 'select body from notes where id = 1').catch(() => []);
      return found.length === 1 ? found : undefined;
    }, 10_000);
    assert.equal(rows[0]?.body, 'hello');
    // The proxy learns that the replica streams within one route poll; until then it falls back to the primary.
    const replica = await eventually('readOnlyUri to reach the replica', async () => {
      const [row] = await queryUri<{ replica: boolean }>(app.readOnlyUri as string, 'select pg_is_in_recovery() as replica');
      return row?.replica === true ? row : undefined;
    }, 5_000, 50);
    assert.equal(replica.replica, true, 'readOnlyUri reaches a server in recovery');
  });

  test('show reports lag in bytes and events; list shows the cluster; status answers', async () => {
    const shown = await cellar.cliJson<ClusterView>(['clusters', 'show', 'app']);
    const replica = shown.instances.find((instance) => instance.role === 'replica');
    assert.equal(typeof replica?.lagBytes, 'number');
    assert.ok(shown.events.some((event) => event.to === 'running'));
    const list = await cellar.cliJson<ClusterView[]>(['clusters', 'list']);
    assert.deepEqual(list.map((cluster) => cluster.name), ['app']);
    const human = await cellar.cli(['clusters', 'list']);
    assert.match(human.stdout, /^NAME\s+STATE/m);
    const status = await cellar.cliJson<{ cell: { clusters: number } }>(['status']);
    assert.equal(status.cell.clusters, 1);
  });

  test('show reports each instance\'s data and WAL on disk, and the cluster\'s use of its allocation, growing after ~20 MB is written', async () => {
    const primaryOf = (cluster: ClusterView) => cluster.instances.find((instance) => instance.role === 'primary');
    const before = await eventually('a first measurement of the primary', async () => {
      const shown = await cellar.cluster('app');
      return shown.storage.percent !== null && primaryOf(shown)?.dataBytes != null ? shown : undefined;
    }, 10_000);
    const primaryBefore = primaryOf(before);
    assert.ok(primaryBefore?.dataBytes && primaryBefore.walBytes && primaryBefore.measuredAt);
    // Rows of 1000 bytes stay below TOAST's threshold, so they are stored uncompressed: ~20 MB of table, and as much WAL.
    await queryUri(app.uri as string, "create table filler as select g as id, repeat('x', 1000) as body from generate_series(1, 20000) g");
    const after = await eventually('the primary measured again, with the rows', async () => {
      const shown = await cellar.cluster('app');
      const primary = primaryOf(shown);
      return primary?.dataBytes != null && primary.dataBytes >= (primaryBefore.dataBytes ?? 0) + 18 * 1024 ** 2 && (primary.walBytes ?? 0) > (primaryBefore.walBytes ?? 0) ? shown : undefined;
    }, 15_000);
    const primary = primaryOf(after);
    assert.ok(primary?.measuredAt && primaryBefore.measuredAt && primary.measuredAt > primaryBefore.measuredAt);
    const storage = after.storage;
    assert.ok(storage.usedBytes !== null && storage.percent !== null);
    assert.equal(storage.readOnly, false);
    assert.equal(storage.autogrow, null, 'autogrow is off by default');
    assert.equal(storage.allocatedGb, after.storageGb);
    assert.equal(storage.usedBytes, (primary.dataBytes ?? 0) + (primary.walBytes ?? 0), "the cluster's use is its primary's data and WAL");
    assert.equal(storage.percent, Math.round((storage.usedBytes / (storage.allocatedGb * testStorageGbBytes)) * 1000) / 10);
    assert.ok(storage.percent > (before.storage.percent ?? Infinity), `percent grew: ${before.storage.percent} -> ${storage.percent}`);
    const replica = after.instances.find((instance) => instance.role === 'replica');
    assert.equal(typeof replica?.dataBytes, 'number', 'replicas are measured too');
    const human = await cellar.cli(['clusters', 'show', 'app']);
    assert.match(human.stdout, /^ {2}storage +[\d.]+ [kMG]?B of \d+ GB \([\d.]+ %\), WAL [\d.]+ [kMG]?B$/m);
    // The control plane's own host: the free space of each filesystem Cellar writes to, every purpose on one.
    const [local] = await cellar.cliJson<HostView[]>(['hosts', 'list']);
    const purposes = (local?.filesystems ?? []).flatMap((filesystem) => filesystem.purposes).sort();
    assert.deepEqual(purposes, ['backups', 'data', 'home']);
    assert.ok(local?.filesystems?.every((filesystem) => filesystem.totalBytes > 0 && filesystem.availableBytes <= filesystem.freeBytes));
    assert.match((await cellar.cli(['hosts', 'show', 'local'])).stdout, /data.* on \S+: [\d.]+ [kMGT]?B free of [\d.]+ [kMGT]?B/);
  });

  test('bad input gets a 400 naming the field and its limit, and creates nothing', async () => {
    const cases: [Record<string, unknown>, string, RegExp][] = [
      [{ name: 'Bad_Name' }, 'name', /DNS label of 1-40/],
      [{ name: 'x'.repeat(41) }, 'name', /1-40/],
      [{ name: 'ok', size: 'huge' }, 'size', /one of micro, small, medium, large/],
      [{ name: 'ok', replicas: 6 }, 'replicas', /from 0 to 5/],
      [{ name: 'ok', replicas: -1 }, 'replicas', /from 0 to 5/],
      [{ name: 'ok', storageGb: 0 }, 'storageGb', /from 1 to/],
      [{ name: 'ok', version: 9 }, 'version', /installed Postgres versions: 15/],
      [{ name: 'ok', color: 'red' }, 'color', /unknown field/],
      [{ name: 'ok', durability: 'maybe' }, 'durability', /one of sync, sync-strict, async/],
      [{ name: 'ok', backupIntervalHours: 0 }, 'backupIntervalHours', /from 1 to 720/],
      [{ name: 'app' }, 'name', /already exists/],
      [{}, 'name', /required/],
    ];
    for (const [body, field, message] of cases) {
      const response = await cellar.api<{ error: { code: string; field: string; message: string } }>('POST', '/v1/clusters', body);
      assert.equal(response.status, 400, JSON.stringify(body));
      assert.equal(response.body.error.field, field, JSON.stringify(body));
      assert.match(response.body.error.message, message);
    }
    const clusters = await cellar.storeQuery<{ count: number }>('select count(*)::int as count from clusters');
    const machines = await cellar.storeQuery<{ count: number }>("select count(*)::int as count from machines where kind = 'cluster'");
    assert.deepEqual([clusters[0]?.count, machines[0]?.count], [1, 1], 'only the cluster from before exists');
    const cli = await cellar.cli(['clusters', 'create', 'ok', '--replicas', '9']);
    assert.equal(cli.code, 1);
    assert.match(cli.stderr, /replicas must be an integer from 0 to 5 \[CELLAR_E_INVALID\]/);
  });

  test('a token of another org sees none of these clusters', async () => {
    const org = await cellar.api<{ token: string }>('POST', '/v1/orgs', { name: 'other' });
    assert.equal(org.status, 201);
    const list = await cellar.api<{ clusters: unknown[] }>('GET', '/v1/clusters', undefined, org.body.token);
    assert.deepEqual(list.body.clusters, []);
    const show = await cellar.api<{ error: { code: string } }>('GET', '/v1/clusters/app', undefined, org.body.token);
    assert.equal(show.status, 404);
    const unauthenticated = await fetch(`${cellar.apiUrl}/v1/clusters`);
    assert.equal(unauthenticated.status, 401);
    const openapi = (await (await fetch(`${cellar.apiUrl}/openapi.json`)).json()) as { paths: Record<string, unknown> };
    assert.ok(openapi.paths['/v1/clusters']);
  });

  test('control plane stopped and started again re-adopts running clusters without restarting them', async () => {
    const pidsBefore = await Promise.all(app.instances.map((instance) => postmasterPid(cellar.dataDir, instance.id)));
    await cellar.stop();
    const [row] = await queryUri<{ one: number }>(app.uri as string, 'select 1 as one');
    assert.equal(row?.one, 1, 'databases serve while the control plane is down');
    const instanceIds = app.instances.map((instance) => instance.id);
    const versionsSql = `select entity_id, version::int as version from machines where kind = 'instance' and entity_id = any($1::text[])`;
    const versionsBefore = new Map((await cellar.storeQuery<{ entity_id: string; version: number }>(versionsSql, [instanceIds])).map((machine) => [machine.entity_id, machine.version]));
    await cellar.start();
    // Each tick of a machine claims and saves it (two versions): wait until the new control plane
    // has probed every instance several times, so a restart it would have made has happened.
    await eventually('several probes of every instance by the restarted control plane', async () => {
      const now = await cellar.storeQuery<{ entity_id: string; version: number }>(versionsSql, [instanceIds]);
      return now.length === instanceIds.length && now.every((machine) => machine.version >= (versionsBefore.get(machine.entity_id) ?? Infinity) + 2 * probesAfterRestart) ? true : undefined;
    }, 30_000);
    const shown = await cellar.cliJson<ClusterView>(['clusters', 'show', 'app']);
    assert.equal(shown.state, 'running');
    const pidsAfter = await Promise.all(app.instances.map((instance) => postmasterPid(cellar.dataDir, instance.id)));
    assert.deepEqual(pidsAfter, pidsBefore, 'same postmasters');
    assert.ok(!shown.events.some((event) => event.from === 'running' && event.to === 'starting'), 'no instance was restarted');
  });

  test('delete leaves no process, no data directory and no allocated port', async () => {
    const ports = app.instances.map((instance) => instance.port as number);
    const deleted = await cellar.cliJson<ClusterView>(['clusters', 'delete', 'app', '--wait']);
    assert.equal(deleted.state, 'deleted');
    for (const instance of app.instances) {
      const dir = join(cellar.dataDir, 'instances', instance.id);
      assert.equal(existsSync(dir), false, `${dir} removed`);
      assert.deepEqual(await processesUsing(dir), [], `no process uses ${dir}`);
    }
    for (const port of ports) assert.ok(await isPortFree(port), `port ${port} is free`);
    const allocated = await cellar.storeQuery<{ count: number }>('select count(*)::int as count from ports');
    assert.equal(allocated[0]?.count, 0);
    const list = await cellar.cliJson<ClusterView[]>(['clusters', 'list']);
    assert.deepEqual(list, []);
    const again = await cellar.cli(['clusters', 'show', 'app']);
    assert.match(again.stderr, /no cluster named "app" \[CELLAR_E_NOT_FOUND\]/);
  });
});
