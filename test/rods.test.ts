import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import pg from 'pg';
import { after, before, describe, test } from 'node:test';
import type { RodDetail, RodSetView, RodView } from '../src/api/rods.js';
import type { ClusterView } from '../src/api/view.js';
import type { BackupListView, BackupView } from '../src/api/backups.js';
import { TestCellar, eventually, processesUsing } from './helpers/cellar.js';
import { postgresTool } from './helpers/tools.js';
import type { ClusterId } from '../src/lib/ids.js';
import { PgCreateAdmission } from '../src/store/create-admission.js';
import { catalogueDefaults } from '../src/lib/rod-catalogue.js';
import { RodValues } from '../src/store/rods.js';
import { makeLogger } from '../src/lib/log.js';

/** Control rods end to end (docs/CONTROLS.md "Rods"): admin only, bounded, audited, and taken live by the engine and the proxy. */

interface ErrorBody {
  error: { code: string; message: string; field?: string };
}

interface Status {
  engine: { ticks: Record<string, number> } | null;
}

/** The process default of the normal lane's tick in this test: short, so its rate is measured in a few seconds. */
const normalTickMsAtStart = 1_000;
const psqlBin = await postgresTool('psql');
/** Status polls while measuring a tick rate: well below the fastest tick measured. */
const statusPollMs = 20;

describe('control rods', () => {
  let cellar: TestCellar;
  let app: ClusterView;
  let orgToken: string;
  /** Every change this file makes, in order, for the audit test. */
  const made: { name: string; old: number | null; value: number; reason: string }[] = [];

  before(async () => {
    cellar = await TestCellar.create({ CELLAR_NORMAL_TICK_MS: String(normalTickMsAtStart) });
    await cellar.start();
    const org = await cellar.api<{ token: string }>('POST', '/v1/orgs', { name: 'acme' });
    assert.equal(org.status, 201);
    orgToken = org.body.token;
    app = await cellar.cliJson<ClusterView>(['clusters', 'create', 'app', '--replicas', '0', '--wait']);
  });

  after(async () => {
    await cellar.destroy();
  });

  async function setRod(name: string, value: number, reason: string): Promise<RodSetView> {
    const answer = await cellar.api<RodSetView>('PUT', `/v1/rods/${name}`, { value, reason });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    made.push({ name, old: answer.body.before, value, reason });
    return answer.body;
  }

  /** Milliseconds per normal-lane claim, averaged over `ticks` of them, read from the engine's counters. */
  async function normalTickMs(ticks: number): Promise<number> {
    const read = async () => ((await cellar.api<Status>('GET', '/v1/status')).body.engine?.ticks['normal'] ?? 0);
    const first = await read();
    const startedMs = performance.now();
    const last = await eventually(`${ticks} normal-lane ticks`, async () => {
      const now = await read();
      return now >= first + ticks ? now : undefined;
    }, 30_000, statusPollMs);
    return (performance.now() - startedMs) / (last - first);
  }

  test('a non-admin token can neither read nor set a rod, and its attempt stores and audits nothing', async () => {
    const put = await cellar.api<ErrorBody>('PUT', '/v1/rods/engine.normal-tick-ms', { value: 100, reason: 'org tries' }, orgToken);
    assert.deepEqual([put.status, put.body.error.code], [403, 'CELLAR_E_FORBIDDEN']);
    const badBody = await cellar.api<ErrorBody>('PUT', '/v1/rods/engine.normal-tick-ms', { value: 'fast' }, orgToken);
    assert.equal(badBody.status, 403, 'refused before its body is looked at');
    assert.equal((await cellar.api<ErrorBody>('GET', '/v1/rods', undefined, orgToken)).status, 403);
    assert.equal((await cellar.api<ErrorBody>('GET', '/v1/rods/engine.normal-tick-ms', undefined, orgToken)).status, 403);
    assert.deepEqual(await cellar.storeQuery('select name from rods'), []);
    assert.deepEqual(await cellar.storeQuery("select id from control_changes where kind = 'rod'"), []);
  });

  test('an unknown rod is a 404 naming it; a value out of bounds or without a reason is a 400 naming the rod and its bounds; nothing is stored', async () => {
    const unknown = await cellar.api<ErrorBody>('PUT', '/v1/rods/engine.warp-speed', { value: 1, reason: 'why not' });
    assert.equal(unknown.status, 404);
    assert.match(unknown.body.error.message, /engine\.warp-speed/);
    const low = await cellar.api<ErrorBody>('PUT', '/v1/rods/engine.normal-tick-ms', { value: 5, reason: 'faster' });
    assert.deepEqual([low.status, low.body.error.code, low.body.error.field], [400, 'CELLAR_E_INVALID', 'value']);
    assert.equal(low.body.error.message, 'engine.normal-tick-ms must be a whole number from 10 to 600000 (ms); got 5');
    const noReason = await cellar.api<ErrorBody>('PUT', '/v1/rods/engine.normal-tick-ms', { value: 100 });
    assert.deepEqual([noReason.status, noReason.body.error.field], [400, 'reason']);
    const cli = await cellar.cli(['rods', 'set', 'proxy.cluster-bytes-per-second', String(20 * 1024 ** 3), '--reason', 'too much']);
    assert.equal(cli.code, 1);
    assert.match(cli.stderr + cli.stdout, /proxy\.cluster-bytes-per-second must be a whole number from 0 to 10737418240/);
    assert.deepEqual(await cellar.storeQuery('select name from rods'), []);
    const shown = await cellar.api<RodDetail>('GET', '/v1/rods/engine.normal-tick-ms');
    assert.deepEqual([shown.body.value, shown.body.default, shown.body.source, shown.body.changes.length], [normalTickMsAtStart, normalTickMsAtStart, 'default', 0]);
  });

  test('lowering engine.normal-tick-ms makes the normal lane tick faster, with no restart', async (t) => {
    const pid = cellar.pid;
    const beforeMs = await normalTickMs(4);
    await setRod('engine.normal-tick-ms', 50, 'measure a faster normal lane');
    const afterMs = await normalTickMs(20);
    assert.equal(cellar.pid, pid, 'the same control plane');
    t.diagnostic(`a normal-lane tick every ${Math.round(beforeMs)} ms at ${normalTickMsAtStart}, every ${Math.round(afterMs)} ms at 50`);
    // Expected about 1000 against 50: a ratio of 4 leaves room for a loaded machine and wake-ups.
    assert.ok(beforeMs > afterMs * 4, `a normal tick took ${Math.round(beforeMs)} ms before and ${Math.round(afterMs)} ms after`);
    await setRod('engine.normal-tick-ms', normalTickMsAtStart, 'back to the start value');
  });

  test('changing proxy.cluster-bytes-per-second changes the rate of a COPY already running through the proxy', async (t) => {
    const slow = 256 * 1024;
    const fast = 4 * 1024 ** 2;
    const rodMetric = () => cellar.proxyMetric(/cellar_proxy_rod\{rod="proxy\.cluster-bytes-per-second"\} (\d+)/);
    const bytesOut = () => cellar.proxyMetric(new RegExp(`cellar_proxy_bytes_total\\{cluster="${app.routeKey}",direction="out"\\} (\\d+)`));
    await setRod('proxy.cluster-bytes-per-second', slow, 'pace the test cluster');
    await eventually('the proxy to run with the slow limit', async () => ((await rodMetric()) === slow ? true : undefined), 10_000, 20);
    // Rows of 1000 bytes, 12 MB in all: long enough to be running through both measurements.
    const copy: ChildProcess = spawn(psqlBin, ['-X', '-o', '/dev/null', app.uri as string, '-c', "copy (select repeat('x', 1000) from generate_series(1, 12000)) to stdout"], {
      env: { ...process.env, PGGSSENCMODE: 'disable' },
      stdio: 'ignore',
    });
    try {
      const rate = async (bytes: number): Promise<number> => {
        const first = await bytesOut();
        const startedMs = performance.now();
        const last = await eventually(`${bytes} more bytes relayed`, async () => {
          const now = await bytesOut();
          return now >= first + bytes ? now : undefined;
        }, 30_000, 20);
        return (last - first) / ((performance.now() - startedMs) / 1000);
      };
      // Past the bucket's first burst, so the paced rate is what is measured.
      await eventually('the COPY to be under way', async () => ((await bytesOut()) > 128 * 1024 ? true : undefined), 30_000, 20);
      const slowRate = await rate(384 * 1024);
      await setRod('proxy.cluster-bytes-per-second', fast, 'let it run faster');
      await eventually('the proxy to run with the fast limit', async () => ((await rodMetric()) === fast ? true : undefined), 10_000, 20);
      assert.equal(copy.exitCode, null, 'the same COPY is still running');
      const fastRate = await rate(3 * 1024 ** 2);
      t.diagnostic(`one COPY: ${Math.round(slowRate)} B/s under ${slow}, then ${Math.round(fastRate)} B/s under ${fast}`);
      assert.ok(slowRate < slow * 2, `the slow rate ${Math.round(slowRate)} B/s is paced near ${slow}`);
      // 16 times the limit: a ratio of 4 leaves room for a loaded machine.
      assert.ok(fastRate > slowRate * 4, `${Math.round(fastRate)} B/s after against ${Math.round(slowRate)} B/s before`);
      const exited = new Promise((resolve) => copy.once('exit', resolve));
      if (copy.exitCode === null) await exited;
      assert.equal(copy.exitCode, 0, 'the COPY finished');
    } finally {
      if (copy.exitCode === null) copy.kill('SIGKILL');
    }
    await setRod('proxy.cluster-bytes-per-second', 0, 'unlimited again');
  });

  test('changing backup.max-rate-bytes-per-second caps the next backup, with no restart', async (t) => {
    const cap = 16 * 1024 ** 2;
    await setRod('backup.max-rate-bytes-per-second', cap, 'spare the disks');
    const backup = await cellar.cliJson<BackupView>(['backups', 'create', 'app']);
    const command = await eventually('pg_basebackup of this backup to run', async () => {
      for (const pid of await processesUsing(backup.id)) {
        const args = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
        if (args.some((arg) => arg.endsWith('/pg_basebackup'))) return args;
      }
      return undefined;
    }, 30_000, 20);
    assert.ok(command.includes(`--max-rate=${cap / 1024}k`), `pg_basebackup carries the rod's cap: ${command.join(' ')}`);
    const taken = await eventually('the backup to be taken', async () => {
      const found = (await cellar.read<BackupListView>('/v1/clusters/app/backups')).backups.find((item) => item.id === backup.id);
      return found?.takeSeconds === null || found?.takeSeconds === undefined ? undefined : found;
    }, 30_000, 100);
    const rate = (taken.bytes as number) / (taken.takeSeconds as number);
    t.diagnostic(`backup of ${taken.bytes} bytes in ${(taken.takeSeconds as number).toFixed(2)} s = ${Math.round(rate)} B/s under a cap of ${cap}`);
    assert.ok(rate < cap * 1.5, `${Math.round(rate)} B/s is held near the cap of ${cap}`);
    await setRod('backup.max-rate-bytes-per-second', 0, 'no cap again');
  });

  test('provisioning admission is one budget per tick for the cell: past it a create waits; one admitted stays admitted', async () => {
    const pool = new pg.Pool({ connectionString: await cellar.storeUrl(), max: 4 });
    try {
      const windowMs = 60_000;
      // The test cluster's own admission may be inside the window: the budget leaves it one place more.
      const earlier = Number((await pool.query<{ count: string }>(`select count(*) from create_admissions where at > now() - make_interval(secs => $1::double precision / 1000)`, [windowMs])).rows[0]?.count);
      let perTick = earlier + 1;
      // Two engines of one cell: each its own admission object, one table and one lock between them.
      const engines = [0, 1].map(() => new PgCreateAdmission(pool, () => perTick, () => windowMs));
      const [first, second] = engines as [PgCreateAdmission, PgCreateAdmission];
      const answers = await Promise.all([first.admit('cl_rods_a' as ClusterId), second.admit('cl_rods_b' as ClusterId)]);
      assert.deepEqual([...answers].sort(), [false, true], 'one place in the tick, taken by exactly one of two at once');
      const admitted = answers[0] === true ? 'cl_rods_a' : 'cl_rods_b';
      assert.equal(await second.admit(admitted as ClusterId), true, 'admitted once, admitted again after a crash');
      perTick = earlier + 2;
      assert.equal(await first.admit('cl_rods_c' as ClusterId), true, 'a raised rod admits more in the same tick');
      assert.equal(await first.admit('cl_rods_d' as ClusterId), false);
    } finally {
      await pool.query("delete from create_admissions where cluster_id like 'cl_rods_%'");
      await pool.end();
    }
  });

  test('a live reader takes a change with no restart, and keeps the last values read while the store is away', async () => {
    const pool = new pg.Pool({ connectionString: await cellar.storeUrl(), max: 2 });
    let storeAway = false;
    const query = pool.query.bind(pool) as (...args: unknown[]) => Promise<unknown>;
    // The store "away" for this reader only: its reads fail as a refused connection does.
    (pool as unknown as { query: (...args: unknown[]) => Promise<unknown> }).query = (...args) =>
      storeAway ? Promise.reject(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })) : query(...args);
    const reader = new RodValues({ pool, defaults: catalogueDefaults(), cell: 'local', log: makeLogger('silent', process.stderr) });
    try {
      await reader.start();
      assert.equal(reader.storeReachable, true);
      await setRod('ha.failovers-max', 7, 'a calmer breaker');
      await eventually('the reader to take the change', async () => (reader.value('ha.failovers-max') === 7 ? true : undefined), 10_000, 10);
      storeAway = true;
      await reader.refresh();
      assert.equal(reader.storeReachable, false);
      assert.equal(reader.value('ha.failovers-max'), 7, 'the last value read stands, not the default');
    } finally {
      await reader.stop();
      await pool.end();
    }
  });

  test('the audit and the CLI list every change with who, old, new and reason, and each change is an event', async () => {
    const shown = await cellar.cliJson<RodDetail>(['rods', 'show', 'engine.normal-tick-ms']);
    const listed = await cellar.cliJson<RodView[]>(['rods', 'list']);
    assert.equal(listed.find((rod) => rod.name === 'engine.normal-tick-ms')?.source, 'global');
    assert.equal(shown.value, normalTickMsAtStart);
    const audit = await cellar.storeQuery<{ name: string; old_value: number | null; new_value: number; actor: string; reason: string; scope: string }>(
      "select name, old_value, new_value, actor, reason, scope from control_changes where kind = 'rod' order by id",
    );
    assert.deepEqual(
      audit.map((row) => ({ name: row.name, old: row.old_value, value: row.new_value, reason: row.reason })),
      made,
    );
    assert.ok(audit.every((row) => row.actor.startsWith('token:') && row.scope === 'global'), 'who: the admin token, globally');
    assert.deepEqual(
      shown.changes.map((change) => [change.oldValue, change.newValue, change.reason]),
      made.filter((change) => change.name === 'engine.normal-tick-ms').reverse().map((change) => [change.old, change.value, change.reason]),
      'newest first',
    );
    const events = await cellar.storeQuery<{ entity_id: string; to_label: string; code: string }>("select entity_id, to_label, code from events where kind = 'rod' order by id");
    assert.deepEqual(events.map((event) => [event.entity_id, Number(event.to_label), event.code]), made.map((change) => [change.name, change.value, 'rod_changed']));
  });
});
