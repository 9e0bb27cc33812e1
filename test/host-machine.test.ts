import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { type Outcome, type StepContext, isAllowedHop, toMermaid } from '../src/engine/machine.js';
import type { ClusterId } from '../src/lib/ids.js';
import {
  type HostData,
  type HostLabel,
  drainPollMs,
  drainSignal,
  hostMachine,
  hostWatchNapMs,
  isEvacuated,
  joinedSignal,
  lostCheckNapMsMin,
  lostPollMs,
  removeSignal,
  undrainSignal,
} from '../src/machines/host.js';
import type { HostObservation, HostPorts, HostRecords } from '../src/machines/ports.js';

/**
 * The host machine, label by label, with a FAKE of its store port (what the store would observe:
 * the lease's age on the store's clock and the host's instances). Signals move it; so do a lease
 * expired past the lost bound, a lease renewed, and the last instance leaving a draining host.
 */

const lostMs = 5_000;
const appCluster = 'cl_appaaaaaaaaa' as ClusterId;

class FakeHostRecords implements HostRecords {
  observation: HostObservation | null = { leaseExpiredForMs: -1_750, liveInstances: 0, clusterIds: [] };
  async observeHost(): Promise<HostObservation | null> {
    return this.observation;
  }
}

async function step(label: HostLabel, signals: readonly string[], observation: HostObservation | null = { leaseExpiredForMs: -1_750, liveInstances: 0, clusterIds: [] }): Promise<Outcome<HostLabel, HostData>> {
  const hosts = new FakeHostRecords();
  hosts.observation = observation;
  const ports: HostPorts = { hosts, lostMs };
  const context: StepContext<HostLabel, HostData, HostPorts> = {
    machine: { id: 'ma_1', kind: hostMachine.kind, entityId: 'ho_1', clusterId: null, label, attempt: 0, data: {} },
    signals: new Set(signals),
    ports,
    abort: new AbortController().signal,
  };
  const outcome = await hostMachine.steps[label](context);
  if (outcome.type === 'hop') assert.ok(isAllowedHop(hostMachine, label, outcome.label), `${label} -> ${outcome.label} is in the table`);
  return outcome;
}

function summary(outcome: Outcome<HostLabel, HostData>): unknown[] {
  if (outcome.type === 'hop') return ['hop', outcome.label, outcome.code, [...(outcome.consume ?? [])].sort(), (outcome.wake ?? []).map((ref) => `${ref.kind}:${ref.entityId}`)];
  if (outcome.type === 'nap') return ['nap', outcome.ms, [...(outcome.consume ?? [])].sort()];
  return [outcome.type];
}

const silent = (expiredForMs: number, liveInstances = 1): HostObservation => ({ leaseExpiredForMs: expiredForMs, liveInstances, clusterIds: liveInstances > 0 ? [appCluster] : [] });

test('joining waits for its agent, becomes active on `joined`, and is removed on `remove` even if it also joined', async () => {
  assert.deepEqual(await step('joining', []), { type: 'nap', ms: hostWatchNapMs });
  assert.deepEqual(await step('joining', [joinedSignal]), { type: 'hop', label: 'active', consume: [joinedSignal], reason: 'the agent joined with its token and has its certificate', code: 'host_joined' });
  assert.deepEqual(summary(await step('joining', [joinedSignal, removeSignal])), ['hop', 'removed', 'host_removed', [joinedSignal, removeSignal].sort(), []]);
});

test('active naps exactly until it would be lost (a host without a lease: the watch nap); stale joined and undrain signals are consumed', async () => {
  assert.deepEqual(summary(await step('active', [])), ['nap', lostMs + 1_750, []], 'a fresh lease: lease, margin and the lost bound');
  assert.deepEqual(summary(await step('active', [], silent(4_900))), ['nap', lostCheckNapMsMin, []], 'about to be lost: never a busy loop');
  assert.deepEqual(summary(await step('active', [], { leaseExpiredForMs: null, liveInstances: 3, clusterIds: [] })), ['nap', hostWatchNapMs, []], 'the local host holds no lease and is never lost');
  assert.deepEqual(summary(await step('active', [joinedSignal, undrainSignal])), ['nap', lostMs + 1_750, [joinedSignal, undrainSignal].sort()]);
});

test('active: `drain` makes it draining and wakes the clusters on it; a lease expired past the bound makes it lost; `remove` wins', async () => {
  assert.deepEqual(summary(await step('active', [drainSignal], silent(-1_000))), ['hop', 'draining', 'host_draining', [drainSignal], [`cluster:${appCluster}`]]);
  assert.deepEqual(summary(await step('active', [], silent(lostMs))), ['nap', lostCheckNapMsMin, []], 'exactly at the bound: not yet');
  assert.deepEqual(summary(await step('active', [], silent(lostMs + 1))), ['hop', 'lost', 'host_lost', [], [`cluster:${appCluster}`]]);
  assert.deepEqual(summary(await step('active', [removeSignal, drainSignal], silent(lostMs + 1))), ['hop', 'removed', 'host_removed', [drainSignal, removeSignal].sort(), []]);
});

test('draining counts its instances until none is left, then is drained; `undrain` calls it off; gone silent it is lost', async () => {
  assert.deepEqual(summary(await step('draining', [], silent(-1_000, 2))), ['nap', drainPollMs, []]);
  assert.deepEqual(summary(await step('draining', [drainSignal], silent(-1_000, 2))), ['nap', drainPollMs, [drainSignal]], 'a second drain has nothing to add');
  assert.deepEqual(summary(await step('draining', [], silent(-1_000, 0))), ['hop', 'drained', 'host_drained', [], []]);
  assert.deepEqual(summary(await step('draining', [undrainSignal], silent(-1_000, 2))), ['hop', 'active', 'host_undrained', [undrainSignal], []]);
  assert.deepEqual(summary(await step('draining', [], silent(lostMs + 1, 2))), ['hop', 'lost', 'host_lost', [], [`cluster:${appCluster}`]]);
  assert.deepEqual(summary(await step('draining', [removeSignal], silent(-1_000, 2))), ['hop', 'removed', 'host_removed', [removeSignal], []]);
});

test('drained stays drained, silent or not (it is being patched), until `undrain` or `remove`', async () => {
  assert.deepEqual(summary(await step('drained', [], silent(lostMs * 10, 0))), ['nap', hostWatchNapMs, []]);
  assert.deepEqual(summary(await step('drained', [drainSignal], silent(-1_000, 0))), ['nap', hostWatchNapMs, [drainSignal]]);
  assert.deepEqual(summary(await step('drained', [undrainSignal], silent(-1_000, 0))), ['hop', 'active', 'host_undrained', [undrainSignal], []]);
  assert.deepEqual(summary(await step('drained', [removeSignal], silent(-1_000, 0))), ['hop', 'removed', 'host_removed', [removeSignal], []]);
});

test('lost looks for a renewed lease: back, it is active again; drain and undrain mean nothing to a lost host; `remove` removes it', async () => {
  assert.deepEqual(summary(await step('lost', [], silent(lostMs * 2))), ['nap', lostPollMs, []]);
  assert.deepEqual(summary(await step('lost', [drainSignal, undrainSignal], silent(lostMs * 2))), ['nap', lostPollMs, [drainSignal, undrainSignal].sort()]);
  assert.deepEqual(summary(await step('lost', [], silent(0))), ['nap', lostPollMs, []], 'expired this moment: not renewed');
  assert.deepEqual(summary(await step('lost', [], silent(-1_700))), ['hop', 'active', 'host_back', [], []]);
  assert.deepEqual(summary(await step('lost', [removeSignal], silent(lostMs * 2))), ['hop', 'removed', 'host_removed', [removeSignal], []]);
  assert.deepEqual(await step('removed', []), { type: 'done' });
});

test('a host row gone reads as an empty host; clusters move instances off draining and lost hosts only', async () => {
  assert.deepEqual(summary(await step('draining', [], null)), ['hop', 'drained', 'host_drained', [], []]);
  assert.deepEqual(['joining', 'active', 'draining', 'drained', 'lost', 'removed', null].map((label) => isEvacuated(label)), [false, false, true, false, true, false, false]);
});

test('every label has a step, every hop target is a label, and the table renders as the Mermaid diagram docs/HOSTS.md shows', async () => {
  const labels = Object.keys(hostMachine.transitions);
  assert.deepEqual(Object.keys(hostMachine.steps).sort(), [...labels].sort());
  for (const targets of Object.values(hostMachine.transitions)) for (const target of targets) assert.ok(labels.includes(target), target);
  const doc = await readFile(new URL('../../docs/HOSTS.md', import.meta.url), 'utf8');
  assert.ok(doc.includes(toMermaid(hostMachine)), 'docs/HOSTS.md shows the table as it is');
});
