import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { backoffCapMs, backoffMs } from '../src/engine/backoff.js';
import { Engine, register } from '../src/engine/engine.js';
import { type MachineDefinition, hop, nap } from '../src/engine/machine.js';
import { claimDue, commitTransition, insertMachine, nudge, raiseSignal, wakeMachines } from '../src/store/machines-table.js';
import { systemClock, systemRandom } from '../src/lib/clock.js';
import { newId } from '../src/lib/ids.js';
import { makeLogger } from '../src/lib/log.js';
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
    const [lease] = (await store.pool.query<{ expires: Date }>('select lease_expires_at as expires from machines where id = $1 and lease_owner = $2', [machineId, holder])).rows;
    assert.ok(lease !== undefined, 'the holder holds the lease');
    victim.kill('SIGKILL');
    const finisher = await eventually(
      'another engine to finish the slow step',
      async () => {
        const result = await store.pool.query<{ owner: string }>("select owner from slow_log where machine_id = $1 and event = 'finished'", [machineId]);
        return result.rows[0]?.owner;
      },
      30_000,
    );
    assert.notEqual(finisher, holder, 'the killed engine did not finish');
    // Both times are the store's clock: the takeover began only once the holder's lease had run out.
    const [takeover] = (await store.pool.query<{ at: Date }>("select at from slow_log where machine_id = $1 and event = 'started' and owner = $2", [machineId, finisher])).rows;
    assert.ok(takeover !== undefined && takeover.at.getTime() >= lease.expires.getTime(), `taken over at ${takeover?.at.toISOString()}, the lease ran to ${lease.expires.toISOString()}`);
    await eventually('the machine to be done', async () => {
      const row = (await store.pool.query<{ label: string; next_tick_at: Date | null }>('select label, next_tick_at from machines where id = $1', [machineId])).rows[0];
      return row?.label === 'finished' && row.next_tick_at === null ? true : undefined;
    });
    const events = await store.pool.query<{ from_label: string; to_label: string }>('select from_label, to_label from events where machine_id = $1 order by id', [machineId]);
    assert.deepEqual(events.rows.map((row) => `${row.from_label}->${row.to_label}`), ['work->finished', 'finished->done'], 'each transition recorded once');
  });
});

describe('engine rules, in process against a real store', () => {
  let store: TestStore;
  before(async () => {
    store = await startTestStore();
  });
  after(async () => {
    await store.close();
  });

  type FlakyLabel = 'try' | 'never';
  const flaky: MachineDefinition<FlakyLabel, { woken?: boolean; runs?: number }, null> = {
    kind: 'flaky',
    initial: 'try',
    transitions: { try: [], never: [] },
    steps: {
      try: async ({ machine, signals }) => {
        if (machine.entityId === 'bad-hop') return hop('never');
        if (machine.entityId === 'poked') {
          // Another process raises a signal while this step runs; the step, not seeing it, naps long.
          if (!signals.has('poke')) await raiseSignal(store.pool, machine.id, 'poke');
          return nap(60_000);
        }
        if (machine.entityId.startsWith('woken') || machine.entityId === 'nudged') {
          // Another machine's outcome wakes this one (or a nudge reaches it) while its step runs, once.
          if (machine.data.woken !== true) {
            if (machine.entityId === 'nudged') await nudge(store.pool, machine.id);
            else await wakeMachines(store.pool, [{ kind: 'flaky', entityId: machine.entityId }]);
          }
          return nap(60_000, { data: { woken: true, runs: (machine.data.runs ?? 0) + 1 } });
        }
        throw new Error('connection refused');
      },
      never: async () => {
        throw new Error('unreachable');
      },
    },
    lane: () => 'high',
    stepTimeoutMs: () => 1_000,
  };

  function engine(tickMs = 50): Engine {
    return new Engine({
      pool: store.pool,
      storeUrl: store.url,
      owner: 'in-process',
      registrations: [register(flaky, null)],
      clock: systemClock,
      random: systemRandom,
      log: makeLogger('silent'),
      tickMs: () => tickMs,
      leaseMs: 5_000,
      attemptsMax: 3,
    });
  }

  async function machineRow(id: string) {
    return (await store.pool.query<{ label: string; attempt: number; last_error: string | null; next_tick_at: Date | null }>('select label, attempt, last_error, next_tick_at from machines where id = $1', [id])).rows[0];
  }

  test('a step that keeps failing is retried with backoff a bounded number of times, then lands in a visible failed label', async () => {
    const id = newId('machine');
    await insertMachine(store.pool, { id, kind: 'flaky', entityId: 'always-fails', clusterId: null, label: 'try', lane: 'high', data: {} });
    const running = engine();
    running.start();
    const row = await eventually('the machine to fail', async () => {
      const current = await machineRow(id);
      return current?.label === 'failed' ? current : undefined;
    }, 20_000, 50);
    await running.stop();
    assert.equal(row.attempt, 3);
    assert.equal(row.next_tick_at, null, 'a failed machine is never claimed again');
    assert.match(row.last_error ?? '', /gave up after 3 attempts: connection refused/);
    const events = await store.pool.query<{ to_label: string }>('select to_label from events where machine_id = $1', [id]);
    assert.deepEqual(events.rows.map((event) => event.to_label), ['failed']);
  });

  test('a signal raised while a step runs does not wait out the nap that step chose without it', async () => {
    const id = newId('machine');
    await insertMachine(store.pool, { id, kind: 'flaky', entityId: 'poked', clusterId: null, label: 'try', lane: 'high', data: {} });
    const dueIn = async (): Promise<number> => {
      const result = await store.pool.query<{ ms: number }>('select extract(epoch from next_tick_at - now()) * 1000 as ms from machines where id = $1', [id]);
      return Number(result.rows[0]?.ms);
    };
    await engine().tickOnce('high');
    assert.ok((await dueIn()) <= 0, 'due at once: the step did not see the signal raised while it ran');
    await engine().tickOnce('high');
    assert.ok((await dueIn()) > 30_000, 'a signal the step saw and left does not keep waking it');
  });

  test('a wake or a nudge that lands while a step runs is not overwritten by the nap that step chose', async () => {
    for (const entityId of ['woken', 'nudged']) {
      const id = newId('machine');
      await insertMachine(store.pool, { id, kind: 'flaky', entityId, clusterId: null, label: 'try', lane: 'high', data: {} });
      const dueIn = async (): Promise<number> => {
        const result = await store.pool.query<{ ms: number }>('select extract(epoch from next_tick_at - now()) * 1000 as ms from machines where id = $1', [id]);
        return Number(result.rows[0]?.ms);
      };
      await engine().tickOnce('high');
      assert.ok((await dueIn()) <= 0, `${entityId}: due at once, its step's nap of a minute did not swallow the wake`);
      await engine().tickOnce('high');
      assert.ok((await dueIn()) > 30_000, `${entityId}: a wake the step has seen does not keep waking it`);
    }
  });

  test('a running engine runs a machine woken while its step ran again at once, not at its next lane tick', async () => {
    const id = newId('machine');
    await insertMachine(store.pool, { id, kind: 'flaky', entityId: 'woken-live', clusterId: null, label: 'try', lane: 'high', data: {} });
    // Lane ticks ten minutes apart: only the wake can bring the second run within the wait below.
    const running = engine(600_000);
    running.start();
    try {
      await eventually('the woken machine to run a second time', async () => {
        const result = await store.pool.query<{ runs: number }>("select (data->>'runs')::int as runs from machines where id = $1", [id]);
        return (result.rows[0]?.runs ?? 0) >= 2 ? true : undefined;
      }, 30_000, 50);
    } finally {
      await running.stop();
    }
  });

  test('a hop outside the transition table is a bug: the machine fails at once', async () => {
    const id = newId('machine');
    await insertMachine(store.pool, { id, kind: 'flaky', entityId: 'bad-hop', clusterId: null, label: 'try', lane: 'high', data: {} });
    await engine().tickOnce('high');
    const row = await machineRow(id);
    assert.equal(row?.label, 'failed');
    assert.match(row?.last_error ?? '', /^bug: hop flaky: try -> never is not in the transition table/);
  });

  test('a worker whose lease expired and was taken over cannot write its outcome', async () => {
    const id = newId('machine');
    await insertMachine(store.pool, { id, kind: 'fenced', entityId: 'fenced-1', clusterId: null, label: 'a', lane: 'normal', data: {} });
    assert.deepEqual(await claimDue(store.pool, 'normal', 'worker-a', 60_000, 10, ['other']), [], 'an engine claims only kinds it can run');
    const [stale] = await claimDue(store.pool, 'normal', 'worker-a', 60_000, 10, ['fenced']);
    assert.equal(stale?.id, id);
    assert.deepEqual(await claimDue(store.pool, 'normal', 'worker-b', 60_000, 10, ['fenced']), [], 'a leased machine is not claimed twice');
    await store.pool.query("update machines set lease_expires_at = now() - interval '1 second' where id = $1", [id]);
    const [fresh] = await claimDue(store.pool, 'normal', 'worker-b', 60_000, 10, ['fenced']);
    assert.equal(fresh?.id, id);
    const transition = { label: 'b', lane: 'normal' as const, nextTickInMs: null, attempt: 0, data: {}, lastError: null, keepLease: false, leaseMs: 1_000 };
    assert.equal(await commitTransition(store.pool, id, stale.version, 'worker-a', transition), null, 'stale worker rejected');
    assert.notEqual(await commitTransition(store.pool, id, fresh.version, 'worker-b', transition), null, 'current holder accepted');
  });

  test('backoff grows, is capped and jittered', () => {
    const low = { next: () => 0 };
    const high = { next: () => 0.999 };
    assert.ok(backoffMs(1, low) < backoffMs(4, low));
    assert.ok(backoffMs(1, low) < backoffMs(1, high));
    assert.ok(backoffMs(50, high) <= backoffCapMs);
    assert.ok(backoffMs(50, low) >= backoffCapMs / 2);
  });
});
