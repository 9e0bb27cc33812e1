import assert from 'node:assert/strict';
import { readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { run } from '../src/postgres/osuser.js';
import { isAlive } from '../src/postgres/server.js';
import { Engine, register } from '../src/engine/engine.js';
import { type MachineDefinition, assertStepTimeouts, done, nap } from '../src/engine/machine.js';
import { insertMachine } from '../src/store/machines-table.js';
import { InvariantError } from '../src/lib/assert.js';
import { systemClock, systemRandom } from '../src/lib/clock.js';
import { PermanentError, TransientError, classifyFailure } from '../src/lib/failure.js';
import { newId, randomToken } from '../src/lib/ids.js';
import { makeLogger } from '../src/lib/log.js';
import { backupScheduleMachine } from '../src/machines/backup-schedule.js';
import { backupMachine } from '../src/machines/backup.js';
import { clusterMachine } from '../src/machines/cluster.js';
import { instanceMachine } from '../src/machines/instance.js';
import { warmPoolMachine } from '../src/machines/warmpool.js';
import { eventually } from './helpers/cellar.js';
import { type TestStore, startTestStore } from './helpers/store.js';

/** Steps stop when their time is up, failures are typed, and short naps resume when they end (issue 12). */

describe('failure kinds', () => {
  test('SQLSTATEs, system errors and Cellar’s own error classes map to transient, permanent or invariant', () => {
    const coded = (code: string, cause?: unknown) => Object.assign(new Error(code), { code, ...(cause === undefined ? {} : { cause }) });
    const cases: [unknown, string][] = [
      [coded('40001'), 'transient'], // serialization failure
      [coded('57P01'), 'transient'], // admin shutdown
      [coded('08006'), 'transient'], // connection failure (class 08)
      [coded('53300'), 'transient'], // too many connections (class 53)
      [coded('23505'), 'transient'], // unique violation: two engines racing for one row
      [coded('22P02'), 'permanent'], // invalid text representation (class 22)
      [coded('42501'), 'permanent'], // insufficient privilege (class 42)
      [coded('XX001'), 'permanent'], // data corrupted
      [coded('ECONNREFUSED'), 'transient'],
      [coded('EACCES'), 'permanent'],
      [coded('EROFS'), 'permanent'],
      [new Error('wrapped', { cause: coded('EACCES') }), 'permanent'],
      [new PermanentError('backup_label lacks its start'), 'permanent'],
      [new TransientError('not out of recovery yet'), 'transient'],
      [new InvariantError('hop not in the table'), 'invariant'],
      [new Error('something nobody listed'), 'transient'],
    ];
    for (const [error, kind] of cases) assert.equal(classifyFailure(error), kind, String((error as Error).message));
  });

  test('every machine kind’s step timeouts cover the data-plane bounds inside them; a kind that does not is refused at registration', () => {
    for (const definition of [clusterMachine, instanceMachine, backupMachine, backupScheduleMachine, warmPoolMachine]) assertStepTimeouts(definition as MachineDefinition<string, Record<string, unknown>, unknown>);
    const tooShort: MachineDefinition<'wait', Record<string, never>, null> = {
      kind: 'tooShort',
      initial: 'wait',
      transitions: { wait: [] },
      steps: { wait: async () => done() },
      lane: () => 'high',
      stepTimeoutMs: () => 30_000,
      innerLimitMs: () => 60_000,
    };
    assert.throws(() => register(tooShort, null), (error: unknown) => error instanceof InvariantError && /tooShort\.wait: step timeout 30000 ms does not cover the 60000 ms wait/.test(error.message));
  });
});

describe('the engine and its steps, against a real store', () => {
  let store: TestStore;
  const scratch = join(tmpdir(), `cellar-steps-${randomToken(8)}`);
  /** What the steps did, in order, as the engine ran them. */
  const journal: string[] = [];

  before(async () => {
    store = await startTestStore();
  });
  after(async () => {
    await store.close();
    await rm(scratch, { recursive: true, force: true });
  });

  type Label = 'work';
  type Data = { napped?: boolean };

  /** `sleepy` starts a child that would run 30 s under a 300 ms step timeout; `doomed` fails permanently; `napper` naps 50 ms once. */
  const kinds: MachineDefinition<Label, Data, null>[] = [
    {
      kind: 'sleepy',
      initial: 'work',
      transitions: { work: [] },
      steps: {
        work: async ({ machine }) => {
          journal.push(`start ${machine.attempt}`);
          try {
            // The child writes its own pid, so the test can see it go.
            await run('/bin/sh', ['-c', `echo $$ > ${join(scratch, `pid-${machine.attempt}`)}; exec sleep 30`], { timeoutMs: 60_000 });
            return done();
          } finally {
            journal.push(`end ${machine.attempt}`);
          }
        },
      },
      lane: () => 'high',
      stepTimeoutMs: () => 300,
    },
    {
      kind: 'doomed',
      initial: 'work',
      transitions: { work: [] },
      steps: {
        work: async ({ machine }) => {
          if (machine.entityId === 'read-only') throw Object.assign(new Error('EROFS: read-only file system'), { code: 'EROFS' });
          throw new PermanentError('backup_label lacks its start location');
        },
      },
      lane: () => 'high',
      stepTimeoutMs: () => 1_000,
    },
    {
      kind: 'napper',
      initial: 'work',
      transitions: { work: [] },
      steps: { work: async ({ machine }) => (machine.data.napped === true ? done() : nap(50, { data: { napped: true } })) },
      lane: () => 'normal',
      stepTimeoutMs: () => 1_000,
    },
  ];

  /** A normal-lane tick of a minute: anything that finishes well before it did not wait for a tick. */
  function engine(): Engine {
    return new Engine({
      pool: store.pool,
      storeUrl: store.url,
      owner: `steps-${randomToken(4)}`,
      registrations: kinds.map((kind) => register(kind, null)),
      clock: systemClock,
      random: systemRandom,
      log: makeLogger('silent'),
      tickMs: (lane) => (lane === 'high' ? 50 : 60_000),
      leaseMs: 5_000,
      attemptsMax: 2,
    });
  }

  async function machineRow(id: string) {
    return (await store.pool.query<{ label: string; attempt: number; last_error: string | null }>('select label, attempt, last_error from machines where id = $1', [id])).rows[0];
  }

  test('a step past its timeout is aborted: its child process is stopped, and its retry starts only after it has ended', async () => {
    await run('/bin/mkdir', ['-p', scratch], { timeoutMs: 5_000 });
    const id = newId('machine');
    await insertMachine(store.pool, { id, kind: 'sleepy', entityId: 'sleepy-1', clusterId: null, label: 'work', lane: 'high', data: {} });
    const running = engine();
    running.start();
    try {
      const row = await eventually('the machine to give up', async () => {
        const current = await machineRow(id);
        return current?.label === 'failed' ? current : undefined;
      }, 30_000, 50);
      assert.match(row.last_error ?? '', /gave up after 2 attempts: step sleepy\.work exceeded 300 ms/);
    } finally {
      await running.stop();
    }
    assert.deepEqual(journal, ['start 0', 'end 0', 'start 1', 'end 1'], 'each attempt ended before the next began');
    for (const attempt of [0, 1]) {
      const pid = Number((await readFile(join(scratch, `pid-${attempt}`), 'utf8')).trim());
      assert.ok(pid > 0);
      await eventually(`the child of attempt ${attempt} to be gone`, async () => (isAlive(pid) ? undefined : true), 10_000);
    }
  });

  test('a permanent failure (a typed error, or an errno that retrying cannot change) fails the machine at once with its reason', async () => {
    const typed = newId('machine');
    const errno = newId('machine');
    await insertMachine(store.pool, { id: typed, kind: 'doomed', entityId: 'typed', clusterId: null, label: 'work', lane: 'high', data: {} });
    await insertMachine(store.pool, { id: errno, kind: 'doomed', entityId: 'read-only', clusterId: null, label: 'work', lane: 'high', data: {} });
    await engine().tickOnce('high');
    assert.deepEqual(await machineRow(typed), { label: 'failed', attempt: 1, last_error: 'backup_label lacks its start location' });
    assert.deepEqual(await machineRow(errno), { label: 'failed', attempt: 1, last_error: 'EROFS: read-only file system' });
  });

  test('a nap shorter than the lane’s tick resumes when it ends, not at the next tick', async () => {
    const id = newId('machine');
    await insertMachine(store.pool, { id, kind: 'napper', entityId: 'napper-1', clusterId: null, label: 'work', lane: 'normal', data: {} });
    const running = engine();
    running.start();
    try {
      // The lane's tick is a minute; the deadline is far below it.
      await eventually('the nap to end and the step to finish', async () => {
        const result = await store.pool.query<{ next_tick_at: Date | null; napped: boolean | null }>("select next_tick_at, (data ->> 'napped')::boolean as napped from machines where id = $1", [id]);
        const row = result.rows[0];
        return row?.napped === true && row.next_tick_at === null ? true : undefined;
      }, 10_000, 25);
    } finally {
      await running.stop();
    }
  });
});
