import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { insertMachine } from '../src/engine/queries.js';
import { newId } from '../src/lib/ids.js';
import { eventually } from './helpers/cellar.js';
import { type TestStore, startTestStore } from './helpers/store.js';

const workerScript = fileURLToPath(new URL('./fixtures/engine-worker.js', import.meta.url));
const leaseMs = 1_000;
const tallyMachines = 12;
const tallyTicks = 12;

function startWorker(storeUrl: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [workerScript, storeUrl, String(leaseMs)], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    child.stdout?.once('data', () => resolve(child));
    child.once('exit', (code) => reject(new Error(`engine worker exited ${code} before it was ready`)));
  });
}

describe('three engine processes against one store', () => {
  let store: TestStore;
  const workers: ChildProcess[] = [];

  before(async () => {
    store = await startTestStore();
    await store.pool.query('create table tally_log (machine_id text, tick int, owner text)');
    await store.pool.query('create table slow_log (machine_id text, owner text, event text, at timestamptz default clock_timestamp())');
    for (let index = 0; index < 3; index += 1) workers.push(await startWorker(store.url));
  });

  after(async () => {
    for (const worker of workers) if (worker.exitCode === null && worker.signalCode === null) worker.kill('SIGKILL');
    await store.close();
  });

  test('each due step runs exactly once per tick, and the work spreads across engines', async () => {
    for (let index = 0; index < tallyMachines; index += 1) {
      await insertMachine(store.pool, { id: newId('machine'), kind: 'tally', entityId: `tally-${index}`, clusterId: null, label: 'count', lane: 'high', data: {} });
    }
    await eventually('every tally machine to finish', async () => {
      const result = await store.pool.query<{ open: number }>("select count(*)::int as open from machines where kind = 'tally' and next_tick_at is not null");
      return result.rows[0]?.open === 0 ? true : undefined;
    });
    const runs = await store.pool.query<{ machine_id: string; tick: number; runs: number }>(
      'select machine_id, tick, count(*)::int as runs from tally_log group by machine_id, tick',
    );
    assert.equal(runs.rows.length, tallyMachines * tallyTicks, 'one row per (machine, tick)');
    assert.deepEqual(runs.rows.filter((row) => row.runs !== 1), [], 'no step ran twice for the same tick');
    const owners = await store.pool.query<{ owners: number }>('select count(distinct owner)::int as owners from tally_log');
    assert.ok((owners.rows[0]?.owners ?? 0) >= 2, 'more than one engine did work');
  });

  test('SIGKILL of the engine holding a lease: another engine finishes the work after the lease expires', async () => {
    const machineId = newId('machine');
    await insertMachine(store.pool, { id: machineId, kind: 'slow', entityId: 'slow-1', clusterId: null, label: 'work', lane: 'normal', data: {} });
    const holder = await eventually('an engine to start the slow step', async () => {
      const result = await store.pool.query<{ owner: string }>("select owner from slow_log where machine_id = $1 and event = 'started'", [machineId]);
      return result.rows[0]?.owner;
    });
    const victim = workers.find((worker) => `worker-${worker.pid}` === holder);
    assert.ok(victim, `the lease holder ${holder} is one of our workers`);
    victim.kill('SIGKILL');
    const killedAtMs = Date.now();
    const finisher = await eventually(
      'another engine to finish the slow step',
      async () => {
        const result = await store.pool.query<{ owner: string }>("select owner from slow_log where machine_id = $1 and event = 'finished'", [machineId]);
        return result.rows[0]?.owner;
      },
      30_000,
    );
    assert.notEqual(finisher, holder, 'the killed engine did not finish');
    assert.ok(Date.now() - killedAtMs >= leaseMs, 'the work was taken over only after the lease expired');
    const machine = await store.pool.query<{ label: string; next_tick_at: Date | null }>('select label, next_tick_at from machines where id = $1', [machineId]);
    await eventually('the machine to be done', async () => {
      const row = (await store.pool.query<{ label: string; next_tick_at: Date | null }>('select label, next_tick_at from machines where id = $1', [machineId])).rows[0];
      return row?.label === 'finished' && row.next_tick_at === null ? true : undefined;
    });
    assert.ok(machine.rows.length === 1);
    const events = await store.pool.query<{ from_label: string; to_label: string }>('select from_label, to_label from events where machine_id = $1 order by id', [machineId]);
    assert.deepEqual(events.rows.map((row) => `${row.from_label}->${row.to_label}`), ['work->finished', 'finished->done'], 'each transition recorded once');
  });
});
