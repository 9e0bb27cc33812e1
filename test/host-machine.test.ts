import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type Outcome, type StepContext, isAllowedHop } from '../src/engine/machine.js';
import { type HostData, type HostLabel, type HostPorts, hostMachine, hostWatchNapMs, joinedSignal, removeSignal } from '../src/machines/host.js';

/** The host machine, label by label: the join and remove signals move it, nothing else does. */

async function step(label: HostLabel, signals: readonly string[]): Promise<Outcome<HostLabel, HostData>> {
  const context: StepContext<HostLabel, HostData, HostPorts> = {
    machine: { id: 'ma_1', kind: hostMachine.kind, entityId: 'ho_1', clusterId: null, label, attempt: 0, data: {} },
    signals: new Set(signals),
    ports: {},
    abort: new AbortController().signal,
  };
  const outcome = await hostMachine.steps[label](context);
  if (outcome.type === 'hop') assert.ok(isAllowedHop(hostMachine, label, outcome.label), `${label} -> ${outcome.label} is in the table`);
  return outcome;
}

test('joining waits for its agent, becomes active on `joined`, and is removed on `remove` even if it also joined', async () => {
  assert.deepEqual(await step('joining', []), { type: 'nap', ms: hostWatchNapMs });
  assert.deepEqual(await step('joining', [joinedSignal]), { type: 'hop', label: 'active', consume: [joinedSignal], reason: 'the agent joined with its token and has its certificate', code: 'host_joined' });
  const both = await step('joining', [joinedSignal, removeSignal]);
  assert.deepEqual([both.type, both.type === 'hop' && both.label, both.type === 'hop' && [...(both.consume ?? [])].sort()], ['hop', 'removed', [joinedSignal, removeSignal].sort()]);
});

test('active stays active until `remove`; removed finishes', async () => {
  assert.deepEqual(await step('active', []), { type: 'nap', ms: hostWatchNapMs });
  assert.deepEqual(await step('active', [joinedSignal]), { type: 'nap', ms: hostWatchNapMs, consume: [joinedSignal] });
  const removed = await step('active', [removeSignal]);
  assert.deepEqual([removed.type, removed.type === 'hop' && removed.label, removed.type === 'hop' && removed.code], ['hop', 'removed', 'host_removed']);
  assert.deepEqual(await step('removed', []), { type: 'done' });
});
