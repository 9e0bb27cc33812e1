import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Engine, register } from '../src/engine/engine.js';
import { type MachineDefinition, done, fail } from '../src/engine/machine.js';
import { insertMachine, newMachine, raiseSignal } from '../src/store/machines-table.js';
import { systemClock, systemRandom } from '../src/lib/clock.js';
import { makeLogger } from '../src/lib/log.js';
import { backupMachine } from '../src/machines/backup.js';
import { backupScheduleMachine } from '../src/machines/backup-schedule.js';
import { clusterMachine } from '../src/machines/cluster.js';
import { hostMachine } from '../src/machines/host.js';
import { instanceMachine } from '../src/machines/instance.js';
import { rolloutMachine } from '../src/machines/rollout.js';
import { warmPoolMachine } from '../src/machines/warmpool.js';
import { requestDestroy } from '../src/store/machine-store.js';
import { type TestStore, startTestStore } from './helpers/store.js';

const sourceRoot = fileURLToPath(new URL('../../src/', import.meta.url));

async function sourceFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  const nested = await Promise.all(entries.map((entry) => (entry.isDirectory() ? sourceFiles(join(dir, entry.name)) : Promise.resolve(entry.name.endsWith('.ts') ? [join(dir, entry.name)] : []))));
  return nested.flat();
}

describe('one way to make a machine, one way to change its label', () => {
  test('newMachine takes kind, initial label and lane from the definition, for every kind', () => {
    for (const definition of [clusterMachine, instanceMachine, backupMachine, backupScheduleMachine, warmPoolMachine, hostMachine, rolloutMachine]) {
      const row = newMachine(definition, 'entity-1', null);
      assert.deepEqual([row.kind, row.label, row.lane], [definition.kind, definition.initial, definition.lane(definition.initial as never)], definition.kind);
    }
  });

  test('no SQL outside the machines-table queries inserts a machine or sets a label, and every insert goes through newMachine', async () => {
    const files = await sourceFiles(sourceRoot);
    const texts = await Promise.all(files.map(async (file) => ({ file: relative(sourceRoot, file), text: await readFile(file, 'utf8') })));
    // Found by what it holds, not where it lives, so moving the file keeps this test true.
    const queue = texts.filter(({ text }) => text.includes('export async function commitTransition('));
    assert.equal(queue.length, 1, 'one module holds the machines-table SQL');
    const others = texts.filter((source) => source !== queue[0]);
    const offenders = others.flatMap(({ file, text }) =>
      [/insert\s+into\s+machines\b/i, /update\s+machines\s+set\s+(?:[^;`]*?[\s,])?label\s*=/i].filter((pattern) => pattern.test(text)).map((pattern) => `${file}: ${pattern.source}`),
    );
    assert.deepEqual(offenders, [], 'only the engine changes a label, through the transition table');
    const literalInserts = others.flatMap(({ file, text }) => [...text.matchAll(/insertMachine\(\s*\w+\s*,(?!\s*newMachine\()/g)].map(() => file));
    assert.deepEqual(literalInserts, [], 'every insertMachine call passes newMachine(definition, …)');
  });
});

type PhoenixLabel = 'work' | 'cleanup';

describe('requests to finished machines are signals the engine checks against the table', () => {
  let store: TestStore;
  const runs = new Map<string, number>();
  const phoenix: MachineDefinition<PhoenixLabel, Record<string, never>, null> = {
    kind: 'phoenix',
    initial: 'work',
    transitions: { work: ['work'], cleanup: [], failed: ['cleanup'] },
    resumeOn: { destroy: 'cleanup', again: 'work' },
    steps: {
      work: async ({ machine }) => {
        runs.set(machine.entityId, (runs.get(machine.entityId) ?? 0) + 1);
        return machine.entityId.startsWith('fails') ? fail('the work cannot be done', 'gave_up') : done({ reason: 'work done', code: 'backup_verified' });
      },
      cleanup: async () => done({ reason: 'cleaned up', code: 'instance_deleted' }),
    },
    lane: () => 'high',
    stepTimeoutMs: () => 5_000,
  };

  function engine(): Engine {
    return new Engine({
      pool: store.pool,
      storeUrl: store.url,
      owner: 'in-process',
      registrations: [register(phoenix, null)],
      clock: systemClock,
      random: systemRandom,
      log: makeLogger('silent'),
      tickMs: () => 50,
      leaseMs: 5_000,
    });
  }

  async function machineRow(id: string) {
    const result = await store.pool.query<{ label: string; last_error: string | null; next_tick_at: Date | null; signals: number }>(
      'select label, last_error, next_tick_at, (select count(*)::int from signals where machine_id = $1) as signals from machines where id = $1',
      [id],
    );
    return result.rows[0];
  }

  async function events(id: string) {
    return (await store.pool.query<{ from_label: string; to_label: string; code: string | null; reason: string }>('select from_label, to_label, code, reason from events where machine_id = $1 order by id', [id])).rows;
  }

  before(async () => {
    store = await startTestStore();
  });
  after(async () => {
    await store.close();
  });

  test('a destroy request on a failed machine resumes it at the label its table allows, recorded with a code', async () => {
    const machine = newMachine(phoenix, 'fails-1', null);
    await insertMachine(store.pool, machine);
    const running = engine();
    await running.tickOnce('high');
    assert.equal((await machineRow(machine.id))?.label, 'failed');
    await requestDestroy(store.pool, phoenix.kind, 'fails-1');
    assert.equal((await machineRow(machine.id))?.label, 'failed', 'the request itself changes no label');
    await running.tickOnce('high');
    const row = await machineRow(machine.id);
    assert.deepEqual([row?.label, row?.next_tick_at, row?.signals], ['cleanup', null, 0], 'resumed, cleaned up, finished; the signal consumed');
    assert.deepEqual(
      (await events(machine.id)).map((event) => [event.from_label, event.to_label, event.code]),
      [['work', 'failed', 'gave_up'], ['failed', 'cleanup', 'resumed_by_signal'], ['cleanup', 'done', 'instance_deleted']],
    );
  });

  test('a done machine acts on a request its table allows from where it finished: the step runs again', async () => {
    const machine = newMachine(phoenix, 'works-1', null);
    await insertMachine(store.pool, machine);
    const running = engine();
    await running.tickOnce('high');
    assert.equal(runs.get('works-1'), 1);
    await raiseSignal(store.pool, machine.id, 'again');
    assert.equal(await running.tickOnce('high'), 1, 'the finished machine is claimed for its signal');
    assert.equal(runs.get('works-1'), 2);
    assert.deepEqual([(await machineRow(machine.id))?.signals, (await machineRow(machine.id))?.next_tick_at], [0, null]);
  });

  test('a request the table does not allow from where the machine finished is dropped; label and error stay', async () => {
    const failed = newMachine(phoenix, 'fails-2', null);
    const finished = newMachine(phoenix, 'works-2', null);
    await insertMachine(store.pool, failed);
    await insertMachine(store.pool, finished);
    const running = engine();
    await running.tickOnce('high');
    const before = await machineRow(failed.id);
    const eventsBefore = (await events(failed.id)).length;
    await raiseSignal(store.pool, failed.id, 'again');
    await raiseSignal(store.pool, finished.id, 'destroy');
    assert.equal(await running.tickOnce('high'), 2);
    assert.deepEqual(await machineRow(failed.id), { ...before, signals: 0 }, 'failed -> work is not in the table');
    assert.equal((await events(failed.id)).length, eventsBefore, 'nothing happened, so no event');
    assert.deepEqual([(await machineRow(finished.id))?.label, (await machineRow(finished.id))?.signals], ['work', 0], 'work -> cleanup is not in the table');
    assert.equal(runs.get('works-2'), 1, 'the step did not run again');
    assert.equal(await running.tickOnce('high'), 0, 'nothing left to claim');
  });
});
