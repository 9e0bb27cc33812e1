import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { ClusterSecrets, DataPlane, InstanceSpec, InstanceStatus, UpstreamRef } from '../src/dataplane/dataplane.js';
import { type MachineData, type MachineDefinition, type Outcome, isAllowedHop, toMermaid } from '../src/engine/machine.js';
import type { Clock, Random } from '../src/lib/clock.js';
import type { ClusterId, InstanceId } from '../src/lib/ids.js';
import { clusterMachine, clusterPhase } from '../src/machines/cluster.js';
import { instanceMachine, probeIntervalMs, readyPollMs, readyWaitMsMax } from '../src/machines/instance.js';
import type { ClusterRecord, InstanceRecord, MachinePorts, MachineStore, Role } from '../src/machines/ports.js';

/**
 * Unit tests of the machines, label by label: each asserts the transition a step returns.
 * The ports are in-memory FAKES (named so): they stand in for the store and data plane, which the
 * end-to-end tests exercise for real; here they make every branch reachable and deterministic.
 */

const clusterId = 'cl_aaaaaaaaaaaa' as ClusterId;
const primaryId = 'in_primaryaaaaa' as InstanceId;
const replicaId = 'in_replicaaaaaa' as InstanceId;
const secrets: ClusterSecrets = { superuserPassword: 's', replicationPassword: 'r', appPassword: 'a' };

class FakeClock implements Clock {
  constructor(public now = 1_000_000) {}
  nowMs(): number {
    return this.now;
  }
}

const fixedRandom: Random = { next: () => 0.5 };

class FakeStore implements MachineStore {
  readonly instancesById = new Map<InstanceId, InstanceRecord>();
  readonly calls: string[] = [];
  clusterDeleted = false;
  replicas = 1;

  add(id: InstanceId, role: Role, ordinal: number, label: string, port: number | null = 5000 + ordinal): void {
    this.instancesById.set(id, { id, clusterId, ordinal, role, port, observed: {}, machineLabel: label, machineError: null });
  }

  async cluster(): Promise<ClusterRecord> {
    return { id: clusterId, name: 'app', spec: { size: 'small', replicas: this.replicas, storageGb: 10, pgVersion: 15 }, secrets };
  }
  async instances(): Promise<InstanceRecord[]> {
    return [...this.instancesById.values()].sort((a, b) => a.ordinal - b.ordinal);
  }
  async instance(id: InstanceId): Promise<InstanceRecord | null> {
    return this.instancesById.get(id) ?? null;
  }
  async createInstance(_cluster: ClusterId, ordinal: number, role: Role): Promise<void> {
    this.calls.push(`createInstance ${ordinal} ${role}`);
    if ([...this.instancesById.values()].some((instance) => instance.ordinal === ordinal)) return;
    this.add(`in_new${ordinal}aaaaaaaa` as InstanceId, role, ordinal, 'start', null);
  }
  async allocatePort(id: InstanceId): Promise<number> {
    this.calls.push(`allocatePort ${id}`);
    return 6000;
  }
  async releasePort(id: InstanceId): Promise<void> {
    this.calls.push(`releasePort ${id}`);
  }
  async recordObserved(id: InstanceId): Promise<void> {
    this.calls.push(`recordObserved ${id}`);
  }
  async markInstanceDeleted(id: InstanceId): Promise<void> {
    this.calls.push(`markInstanceDeleted ${id}`);
    this.instancesById.delete(id);
  }
  async markClusterDeleted(): Promise<void> {
    this.clusterDeleted = true;
  }
  async requestDestroy(kind: string, entityId: string): Promise<void> {
    this.calls.push(`requestDestroy ${kind} ${entityId}`);
  }
}

const stopped: InstanceStatus = { running: false, pid: undefined, accepting: false, inRecovery: undefined, timeline: undefined, lsn: undefined, streaming: undefined };

class FakeDataPlane implements DataPlane {
  readonly calls: string[] = [];
  status_: InstanceStatus = stopped;
  versions(): readonly number[] {
    return [15];
  }
  async createPrimary(spec: InstanceSpec): Promise<void> {
    this.calls.push(`createPrimary ${spec.instanceId} ${spec.port}`);
  }
  async createReplica(spec: InstanceSpec, upstream: UpstreamRef): Promise<void> {
    this.calls.push(`createReplica ${spec.instanceId} from ${upstream.port} slot ${upstream.slotName}`);
  }
  async start(spec: InstanceSpec): Promise<void> {
    this.calls.push(`start ${spec.instanceId}`);
  }
  async stop(id: InstanceId): Promise<void> {
    this.calls.push(`stop ${id}`);
  }
  async status(): Promise<InstanceStatus> {
    return this.status_;
  }
  async dropSlot(upstream: UpstreamRef): Promise<void> {
    this.calls.push(`dropSlot ${upstream.slotName} on ${upstream.port}`);
  }
  async destroy(id: InstanceId): Promise<void> {
    this.calls.push(`destroy ${id}`);
  }
}

interface Harness {
  store: FakeStore;
  dataPlane: FakeDataPlane;
  clock: FakeClock;
  ports: MachinePorts;
}

function harness(): Harness {
  const store = new FakeStore();
  const dataPlane = new FakeDataPlane();
  const clock = new FakeClock();
  return { store, dataPlane, clock, ports: { store, dataPlane, clock, random: fixedRandom } };
}

async function step<L extends string, D extends MachineData>(
  definition: MachineDefinition<L, D, MachinePorts>,
  label: L,
  entityId: string,
  h: Harness,
  options: { signals?: string[]; data?: D } = {},
): Promise<Outcome<L, D>> {
  const outcome = await definition.steps[label]({
    machine: { id: 'ma_test', kind: definition.kind, entityId, clusterId, label, attempt: 0, data: options.data ?? ({} as D) },
    signals: new Set(options.signals ?? []),
    ports: h.ports,
  });
  if (outcome.type === 'hop') assert.ok(isAllowedHop(definition, label, outcome.label), `${label} -> ${outcome.label} is in the table`);
  return outcome;
}

const running: InstanceStatus = { running: true, pid: 1, accepting: true, inRecovery: false, timeline: 1, lsn: '0/3000000', streaming: undefined };

describe('instance machine, label by label', () => {
  test('start allocates a port and hops to create', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'start', null);
    const outcome = await step(instanceMachine, 'start', primaryId, h);
    assert.deepEqual([outcome.type, outcome.type === 'hop' && outcome.label], ['hop', 'create']);
    assert.deepEqual(h.store.calls, [`allocatePort ${primaryId}`]);
  });

  test('every label but destroy hops to destroy when the destroy signal is up', async () => {
    for (const label of ['start', 'create', 'starting', 'waitReady', 'running'] as const) {
      const h = harness();
      h.store.add(primaryId, 'primary', 0, label);
      const outcome = await step(instanceMachine, label, primaryId, h, { signals: ['destroy'] });
      assert.deepEqual(outcome.type === 'hop' && outcome.label, 'destroy', label);
      assert.deepEqual(h.dataPlane.calls, [], `${label} touched nothing`);
    }
  });

  test('create of a primary makes its data directory and hops to starting', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'create');
    const outcome = await step(instanceMachine, 'create', primaryId, h);
    assert.equal(outcome.type === 'hop' && outcome.label, 'starting');
    assert.deepEqual(h.dataPlane.calls, [`createPrimary ${primaryId} 5000`]);
  });

  test('create of a replica naps until the primary runs, then clones it through its own slot', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'waitReady');
    h.store.add(replicaId, 'replica', 1, 'create');
    const waiting = await step(instanceMachine, 'create', replicaId, h);
    assert.equal(waiting.type, 'nap');
    assert.deepEqual(h.dataPlane.calls, []);
    h.store.add(primaryId, 'primary', 0, 'running');
    const outcome = await step(instanceMachine, 'create', replicaId, h);
    assert.equal(outcome.type === 'hop' && outcome.label, 'starting');
    assert.deepEqual(h.dataPlane.calls, [`createReplica ${replicaId} from 5000 slot ${replicaId}`]);
  });

  test('starting starts the server and records when the wait for readiness began', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'starting');
    const outcome = await step(instanceMachine, 'starting', primaryId, h);
    assert.deepEqual(outcome, { type: 'hop', label: 'waitReady', data: { waitSinceMs: h.clock.now }, reason: 'server started' });
    assert.deepEqual(h.dataPlane.calls, [`start ${primaryId}`]);
  });

  test('waitReady: a ready primary hops to running and wakes its cluster and siblings', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'waitReady');
    h.store.add(replicaId, 'replica', 1, 'create');
    h.dataPlane.status_ = running;
    const outcome = await step(instanceMachine, 'waitReady', primaryId, h, { data: { waitSinceMs: h.clock.now } });
    assert.equal(outcome.type === 'hop' && outcome.label, 'running');
    assert.deepEqual(outcome.type === 'hop' && outcome.wake, [{ kind: 'cluster', entityId: clusterId }, { kind: 'instance', entityId: replicaId }]);
  });

  test('waitReady: a replica is ready only once it streams', async () => {
    const h = harness();
    h.store.add(replicaId, 'replica', 1, 'waitReady');
    h.dataPlane.status_ = { ...running, inRecovery: true, streaming: false };
    assert.deepEqual(await step(instanceMachine, 'waitReady', replicaId, h, { data: { waitSinceMs: h.clock.now } }), { type: 'nap', ms: readyPollMs });
    h.dataPlane.status_ = { ...running, inRecovery: true, streaming: true };
    const outcome = await step(instanceMachine, 'waitReady', replicaId, h, { data: { waitSinceMs: h.clock.now } });
    assert.equal(outcome.type === 'hop' && outcome.label, 'running');
  });

  test('waitReady: a server that exited hops back to starting; a wait past its bound fails', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'waitReady');
    const exited = await step(instanceMachine, 'waitReady', primaryId, h, { data: { waitSinceMs: h.clock.now } });
    assert.equal(exited.type === 'hop' && exited.label, 'starting');
    h.dataPlane.status_ = { ...running, accepting: false };
    const late = await step(instanceMachine, 'waitReady', primaryId, h, { data: { waitSinceMs: h.clock.now - readyWaitMsMax - 1 } });
    assert.equal(late.type, 'fail');
  });

  test('running probes and naps; a vanished process is started again', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'running');
    h.dataPlane.status_ = running;
    assert.deepEqual(await step(instanceMachine, 'running', primaryId, h), { type: 'nap', ms: probeIntervalMs });
    assert.deepEqual(h.store.calls, [`recordObserved ${primaryId}`]);
    h.dataPlane.status_ = stopped;
    const outcome = await step(instanceMachine, 'running', primaryId, h);
    assert.equal(outcome.type === 'hop' && outcome.label, 'starting');
  });

  test('destroy of a replica removes the server, its slot on the primary and its port, then is done', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'running');
    h.store.add(replicaId, 'replica', 1, 'destroy');
    const outcome = await step(instanceMachine, 'destroy', replicaId, h, { signals: ['destroy'] });
    assert.equal(outcome.type, 'done');
    assert.deepEqual(outcome.type === 'done' && outcome.consume, ['destroy']);
    assert.deepEqual(h.dataPlane.calls, [`destroy ${replicaId}`, `dropSlot ${replicaId} on 5000`]);
    assert.deepEqual(h.store.calls, [`releasePort ${replicaId}`, `markInstanceDeleted ${replicaId}`]);
  });

  test('destroy of an instance already gone is done without touching anything', async () => {
    const h = harness();
    const outcome = await step(instanceMachine, 'destroy', replicaId, h);
    assert.equal(outcome.type, 'done');
    assert.deepEqual(h.dataPlane.calls, []);
  });
});

describe('cluster machine, label by label', () => {
  test('start creates the primary and each replica once, then waits for them', async () => {
    const h = harness();
    h.store.replicas = 2;
    h.store.add(primaryId, 'primary', 0, 'start');
    const outcome = await step(clusterMachine, 'start', clusterId, h);
    assert.equal(outcome.type === 'hop' && outcome.label, 'waitInstances');
    assert.deepEqual(h.store.calls, ['createInstance 1 replica', 'createInstance 2 replica']);
  });

  test('waitInstances naps until every instance runs, fails if one failed', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'running');
    h.store.add(replicaId, 'replica', 1, 'create');
    assert.equal((await step(clusterMachine, 'waitInstances', clusterId, h)).type, 'nap');
    h.store.add(replicaId, 'replica', 1, 'running');
    const ready = await step(clusterMachine, 'waitInstances', clusterId, h);
    assert.equal(ready.type === 'hop' && ready.label, 'running');
    h.store.add(replicaId, 'replica', 1, 'failed');
    const failed = await step(clusterMachine, 'waitInstances', clusterId, h);
    assert.equal(failed.type, 'fail');
  });

  test('running naps, and hops to destroy on the destroy signal', async () => {
    const h = harness();
    assert.equal((await step(clusterMachine, 'running', clusterId, h)).type, 'nap');
    const outcome = await step(clusterMachine, 'running', clusterId, h, { signals: ['destroy'] });
    assert.equal(outcome.type === 'hop' && outcome.label, 'destroy');
  });

  test('destroy asks every instance to destroy itself and consumes the signal', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'running');
    h.store.add(replicaId, 'replica', 1, 'failed');
    const outcome = await step(clusterMachine, 'destroy', clusterId, h, { signals: ['destroy'] });
    assert.equal(outcome.type === 'hop' && outcome.label, 'waitDestroyed');
    assert.deepEqual(outcome.type === 'hop' && outcome.consume, ['destroy']);
    assert.deepEqual(h.store.calls, [`requestDestroy instance ${primaryId}`, `requestDestroy instance ${replicaId}`]);
  });

  test('waitDestroyed naps while instances remain, then marks the cluster deleted and is done', async () => {
    const h = harness();
    h.store.add(replicaId, 'replica', 1, 'destroy');
    assert.equal((await step(clusterMachine, 'waitDestroyed', clusterId, h)).type, 'nap');
    assert.equal(h.store.clusterDeleted, false);
    h.store.instancesById.clear();
    assert.equal((await step(clusterMachine, 'waitDestroyed', clusterId, h)).type, 'done');
    assert.equal(h.store.clusterDeleted, true);
  });

  test('phases a person sees', () => {
    const instance = (label: string): InstanceRecord => ({ id: primaryId, clusterId, ordinal: 0, role: 'primary', port: 1, observed: {}, machineLabel: label, machineError: null });
    assert.equal(clusterPhase('waitInstances', false, []), 'creating');
    assert.equal(clusterPhase('running', false, [instance('running')]), 'running');
    assert.equal(clusterPhase('running', false, [instance('starting')]), 'degraded');
    assert.equal(clusterPhase('waitDestroyed', true, []), 'deleted');
    assert.equal(clusterPhase('failed', false, []), 'failed');
  });
});

describe('transition tables', () => {
  test('every label has a step and every hop target is a label; the table renders as Mermaid', () => {
    for (const definition of [clusterMachine, instanceMachine] as MachineDefinition<string, MachineData, MachinePorts>[]) {
      const labels = Object.keys(definition.transitions);
      assert.deepEqual(Object.keys(definition.steps).sort(), [...labels].sort(), definition.kind);
      for (const targets of Object.values(definition.transitions) as string[][]) for (const target of targets) assert.ok(labels.includes(target), `${definition.kind}: ${target}`);
      assert.match(toMermaid(definition), new RegExp(`^stateDiagram-v2\\n  \\[\\*\\] --> ${definition.initial}`));
    }
  });
});
