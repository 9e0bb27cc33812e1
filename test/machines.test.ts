import { HostUnreachableError } from '../src/lib/failure.js';
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { BackupCheck, BaseBackupInfo, DataPlane, InstanceSpec, InstanceStatus, InstanceUsage, RejoinMethod, RestoreSource, ServerSetting, UpstreamRef } from '../src/dataplane/dataplane.js';
import type { BackupSettings, HaSettings, StorageSettings } from '../src/config.js';
import { type MachineData, type MachineDefinition, type Outcome, failedLabel, isAllowedHop, toMermaid } from '../src/engine/machine.js';
import type { Clock, Random } from '../src/lib/clock.js';
import type { BackupId, ClusterId, InstanceId } from '../src/lib/ids.js';
import { backupMachine, checkSlotPollMs, sourceWaitMsMax } from '../src/machines/backup.js';
import type { ClusterFlags } from '../src/lib/flags.js';
import { type BackupScheduleData, backupScheduleMachine, clustersPerTickMax, expiredBackups } from '../src/machines/backup-schedule.js';
import { type ClusterData, catchUpPollMs, clusterMachine, clusterPhase, desiredSyncStandbys, evacuationNapMs, rejoinWaitMsMax, scaleNapMs, watchNapMs } from '../src/machines/cluster.js';
import { hasReplicas } from '../src/machines/replicas.js';
import { type InstanceData, instanceMachine, livenessIntervalMs, probeIntervalMs, readyPollMs, readyWaitMsMax, restoreStartAttemptsMax } from '../src/machines/instance.js';
import { type BackupRecord, type CreateAdmission, type InstanceRecord, type MachinePorts, freezeNapMs } from '../src/machines/ports.js';
import { type ChangeData, changeMachine, scaleWaitMsMax } from '../src/machines/change.js';
import { FakeBackups, FakeFreeze, FakeStore, clusterId } from './helpers/fakes.js';
import { walWarnings } from '../src/api/view.js';
import { walKeepLimitMb } from '../src/lib/sizes.js';

/**
 * Unit tests of the machines, label by label: each asserts the transition a step returns.
 * The ports are in-memory FAKES (named so): they stand in for the store and data plane, which the
 * end-to-end tests exercise for real; here they make every branch reachable and deterministic.
 */

const primaryId = 'in_primaryaaaaa' as InstanceId;
const replicaId = 'in_replicaaaaaa' as InstanceId;

class FakeClock implements Clock {
  constructor(public now = 1_000_000) {}
  nowMs(): number {
    return this.now;
  }
}

const fixedRandom: Random = { next: () => 0.5 };

const stopped: InstanceStatus = { running: false, pid: undefined, accepting: false, inRecovery: undefined, timeline: undefined, lsn: undefined, streaming: undefined, receiveLsn: undefined, archive: undefined };

class FakeDataPlane implements DataPlane {
  readonly calls: string[] = [];
  status_: InstanceStatus = stopped;
  /** Per-instance statuses, when a test needs them to differ; else status_. */
  readonly statuses = new Map<InstanceId, InstanceStatus>();
  alive_ = true;
  rejoinMethod: RejoinMethod = 'rewound';
  versions(): readonly number[] {
    return [15];
  }
  async createPrimary(spec: InstanceSpec): Promise<void> {
    this.calls.push(`createPrimary ${spec.instanceId} ${spec.port}`);
  }
  async createReplica(spec: InstanceSpec, upstream: UpstreamRef): Promise<void> {
    this.calls.push(`createReplica ${spec.instanceId} from ${upstream.port} slot ${upstream.slotName}`);
  }
  /** Thrown by start, as a server that exits during its start makes the real one throw. */
  startError: Error | null = null;
  async start(spec: InstanceSpec): Promise<void> {
    this.calls.push(`start ${spec.instanceId}`);
    if (this.startError !== null) throw this.startError;
  }
  /** Thrown by every operation on the host of these instances, as the router does for a silent host. */
  readonly unreachable = new Set<InstanceId>();
  private reach(id: InstanceId): void {
    if (this.unreachable.has(id)) throw new HostUnreachableError('host_b', 2_000);
  }
  async stop(id: InstanceId, mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    this.calls.push(`stop ${id} ${mode}`);
    this.reach(id);
  }
  async status(spec: InstanceSpec): Promise<InstanceStatus> {
    this.reach(spec.instanceId);
    return this.statuses.get(spec.instanceId) ?? this.status_;
  }
  observe(spec: InstanceSpec): Promise<InstanceStatus> {
    return this.status(spec);
  }
  async alive(id: InstanceId): Promise<boolean> {
    this.reach(id);
    return this.alive_;
  }
  /** Whether exits are watched, as the local driver's are; off unless a test turns it on. */
  watched = false;
  async watchExit(id: InstanceId): Promise<boolean> {
    this.reach(id);
    return this.watched && this.alive_;
  }
  async promote(spec: InstanceSpec): Promise<void> {
    this.calls.push(`promote ${spec.instanceId}`);
    const status = this.statuses.get(spec.instanceId);
    if (status !== undefined) this.statuses.set(spec.instanceId, { ...status, inRecovery: false, streaming: undefined });
  }
  async follow(spec: InstanceSpec, upstream: UpstreamRef): Promise<void> {
    this.calls.push(`follow ${spec.instanceId} ${upstream.port} slot ${upstream.slotName}`);
  }
  async rejoin(spec: InstanceSpec, upstream: UpstreamRef): Promise<RejoinMethod> {
    this.calls.push(`rejoin ${spec.instanceId} to ${upstream.port}`);
    this.reach(spec.instanceId);
    return this.rejoinMethod;
  }
  /** Instances last configured with new transactions read-only (a full cluster). */
  readonly readOnlySpecs: InstanceId[] = [];
  async configure(spec: InstanceSpec): Promise<readonly ServerSetting[]> {
    this.calls.push(`configure ${spec.instanceId}`);
    if (spec.settings['default_transaction_read_only'] === 'on') {
      this.readOnlySpecs.push(spec.instanceId);
      this.readOnlySpecs.sort();
    }
    return [];
  }

  async checkpoint(spec: InstanceSpec): Promise<void> {
    this.calls.push(`checkpoint ${spec.instanceId}`);
  }

  async settings(spec: InstanceSpec): Promise<readonly ServerSetting[]> {
    this.calls.push(`settings ${spec.instanceId}`);
    return [];
  }

  usage_: InstanceUsage = { dataBytes: 40_000_000, walBytes: 16_777_216, filesystem: { path: '/data', totalBytes: 10e9, freeBytes: 5e9, availableBytes: 4.5e9 } };
  /** Thrown by usage, as a walk past its cap or an unreadable data directory makes the real one throw. */
  usageError: Error | null = null;
  async usage(spec: InstanceSpec): Promise<InstanceUsage> {
    this.calls.push(`usage ${spec.instanceId}`);
    if (this.usageError !== null) throw this.usageError;
    return this.usage_;
  }

  async allowPeers(spec: InstanceSpec): Promise<void> {
    this.calls.push(`allowPeers ${spec.instanceId}`);
  }
  async setSynchronousStandbys(spec: InstanceSpec, standbys: readonly string[]): Promise<void> {
    this.calls.push(`sync ${spec.instanceId} [${standbys.join(',')}]`);
  }
  backupInfo: BaseBackupInfo = { startLsn: '0/2000028', endLsn: '0/2000100', timeline: 1, startWalFile: '000000010000000000000002', bytes: 1000, durationMs: 10 };
  check: BackupCheck = { ok: true, detail: 'restored and queried' };
  async takeBaseBackup(source: InstanceSpec, primary: InstanceSpec, backupId: string, maxRate: number): Promise<BaseBackupInfo> {
    this.calls.push(`takeBaseBackup ${backupId} from ${source.instanceId} (primary ${primary.instanceId}) rate ${maxRate}`);
    return this.backupInfo;
  }
  async checkBackup(_cluster: string, backupId: string): Promise<BackupCheck> {
    this.calls.push(`checkBackup ${backupId}`);
    return this.check;
  }
  async deleteBackup(_cluster: string, backupId: string): Promise<void> {
    this.calls.push(`deleteBackup ${backupId}`);
  }
  async pruneWal(_cluster: string, oldest: string): Promise<number> {
    this.calls.push(`pruneWal before ${oldest}`);
    return 0;
  }
  async purgeCluster(cluster: string): Promise<void> {
    this.calls.push(`purgeCluster ${cluster}`);
  }
  async restorePrimary(spec: InstanceSpec, source: RestoreSource): Promise<void> {
    this.calls.push(`restorePrimary ${spec.instanceId} from ${source.backupId}`);
  }
  async dropSlot(upstream: UpstreamRef): Promise<void> {
    this.calls.push(`dropSlot ${upstream.slotName} on ${upstream.port}`);
  }
  async destroy(id: InstanceId): Promise<void> {
    this.calls.push(`destroy ${id}`);
    this.reach(id);
  }
}

const ha: HaSettings = {
  unreachableProbesMax: 3,
  failoverLagBytesMax: 1024,
  failoversMax: 2,
  failoverWindowMs: 60_000,
  replicaDeadMsMax: 30_000,
  switchoverCatchUpMsMax: 5_000,
  // Longer than the fake clock has run: the drift check (tested end to end in config.test.ts) stays out of these steps.
  driftCheckMs: 24 * 3_600_000,
  archiveFailingMs: 60_000,
};

const storage: StorageSettings = { usageIntervalMs: 30_000, resizeCooldownMs: 6 * 3_600_000, resizeStepGbMin: 1, gbBytes: 1024 ** 3, warnPercent: 80, readOnlyPercent: 95, writeRateMbPerSecond: 512, readOnlyLeadMs: 300, hostDiskReservePercent: 10 };

const backupSettings: BackupSettings = { intervalMs: 3_600_000, maxRateBytesPerSecond: 0, retentionMs: 86_400_000, countMin: 2, countMax: 4, verifyConcurrency: 1, deletedRetentionMs: 7 * 86_400_000 };

/** Provisioning admission with a switch: open admits every cluster; closed admits only those admitted before. */
class FakeAdmission implements CreateAdmission {
  open = true;
  readonly admitted = new Set<string>();

  async admit(clusterId: string): Promise<boolean> {
    if (this.open) this.admitted.add(clusterId);
    return this.admitted.has(clusterId);
  }

  retryMs(): number {
    return 250;
  }

  perTick(): number {
    return 1;
  }
}

interface Harness {
  admission: FakeAdmission;
  store: FakeStore;
  dataPlane: FakeDataPlane;
  clock: FakeClock;
  backups: FakeBackups;
  freeze: FakeFreeze;
  ports: MachinePorts;
}

function harness(): Harness {
  const store = new FakeStore();
  const dataPlane = new FakeDataPlane();
  const clock = new FakeClock();
  const backups = new FakeBackups();
  const admission = new FakeAdmission();
  const freeze = new FakeFreeze();
  return { admission, store, dataPlane, clock, backups, freeze, ports: { store, dataPlane, clock, random: fixedRandom, ha, backups, backupSettings, storage, admission, freeze } };
}

async function step<L extends string, D extends MachineData>(
  definition: MachineDefinition<L, D, MachinePorts>,
  label: L,
  entityId: string,
  h: Harness,
  options: { signals?: string[]; data?: D; attempt?: number } = {},
): Promise<Outcome<L, D>> {
  const outcome = await definition.steps[label]({
    machine: { id: 'ma_test', kind: definition.kind, entityId, clusterId, label, attempt: options.attempt ?? 0, data: options.data ?? ({} as D) },
    signals: new Set(options.signals ?? []),
    ports: h.ports,
    abort: new AbortController().signal,
  });
  if (outcome.type === 'hop') assert.ok(isAllowedHop(definition, label, outcome.label), `${label} -> ${outcome.label} is in the table`);
  return outcome;
}

const running: InstanceStatus = { running: true, pid: 1, accepting: true, inRecovery: false, timeline: 1, lsn: '0/3000000', streaming: undefined, receiveLsn: '0/3000000', archive: undefined };

describe('instance machine, label by label', () => {
  test('start allocates a port and hops to create', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'start', null);
    const outcome = await step(instanceMachine, 'start', primaryId, h);
    assert.deepEqual([outcome.type, outcome.type === 'hop' && outcome.label], ['hop', 'create']);
    assert.deepEqual(h.store.calls, [`allocatePort ${primaryId}`]);
  });

  test('every label but destroy hops to destroy when the destroy signal is up', async () => {
    for (const label of ['start', 'create', 'starting', 'waitReady', 'running', 'down', 'rejoin'] as const) {
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
    assert.deepEqual(outcome, { type: 'hop', label: 'waitReady', data: { waitSinceMs: h.clock.now }, reason: 'server started', code: 'server_started' });
    assert.deepEqual(h.dataPlane.calls, [`start ${primaryId}`]);
  });

  test("starting a restored primary whose server died in recovery fails on the second try, not after minutes of retries; a live (slow) recovery is retried", async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'starting');
    h.dataPlane.startError = new Error('postgres -D /x/pgdata exited during start\n  FATAL:  recovery ended before configured recovery target was reached');
    h.dataPlane.alive_ = false;
    const restoring = { restoring: true } as InstanceData;
    await assert.rejects(step(instanceMachine, 'starting', primaryId, h, { data: restoring }), /exited during start/, 'the first failure is retried');
    const final = await step(instanceMachine, 'starting', primaryId, h, { data: restoring, attempt: restoreStartAttemptsMax - 1 });
    assert.equal(final.type, 'fail');
    assert.match(final.type === 'fail' ? final.reason : '', /^restore failed: the server stopped during recovery 2 times: .*recovery ended before configured recovery target/s);
    assert.equal(final.code, 'restore_failed');
    h.dataPlane.alive_ = true;
    await assert.rejects(step(instanceMachine, 'starting', primaryId, h, { data: restoring, attempt: restoreStartAttemptsMax - 1 }), /exited during start/, 'a server still recovering is retried');
    h.dataPlane.alive_ = false;
    await assert.rejects(step(instanceMachine, 'starting', primaryId, h, { attempt: 10 }), /exited during start/, 'an ordinary start failure keeps the usual retries');
  });

  test('starting never starts a fenced instance, and fails one that has been dead past the limit', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'starting', 5000, { fenced: true });
    const fenced = await step(instanceMachine, 'starting', primaryId, h);
    assert.equal(fenced.type === 'hop' && fenced.label, 'down');
    h.store.add(replicaId, 'replica', 1, 'starting');
    const dead = await step(instanceMachine, 'starting', replicaId, h, { data: { downSinceMs: h.clock.now - ha.replicaDeadMsMax - 1 } });
    assert.equal(dead.type, 'fail');
    assert.deepEqual(h.dataPlane.calls, [], 'nothing was started');
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

  test('running: a full probe once per interval, the cheap process check in between; changes wake the cluster', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'running', 5000, { observed: running });
    h.dataPlane.status_ = running;
    const measured = { lastUsageMs: h.clock.now };
    const probed = await step(instanceMachine, 'running', primaryId, h, { data: measured });
    assert.deepEqual(probed, { type: 'nap', ms: livenessIntervalMs, data: { lastProbeMs: h.clock.now, failedProbes: 0, ...measured }, wake: [] });
    assert.deepEqual(h.store.calls, [`recordObserved ${primaryId}`]);
    const between = await step(instanceMachine, 'running', primaryId, h, { data: { lastProbeMs: h.clock.now - probeIntervalMs + 1, ...measured } });
    assert.deepEqual(between, { type: 'nap', ms: livenessIntervalMs });
    assert.equal(h.store.calls.length, 1, 'no second probe within the interval');
    h.store.update(primaryId, { observed: { ...running, inRecovery: true } });
    const changed = await step(instanceMachine, 'running', primaryId, h, { data: measured });
    assert.deepEqual(changed.type === 'nap' && changed.wake, [{ kind: 'cluster', entityId: clusterId }]);
  });

  test('running: a process whose exit is watched ticks only for its probes; gone, it is lost', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'running', 5000, { observed: running });
    h.dataPlane.status_ = running;
    h.dataPlane.watched = true;
    const measured = { lastUsageMs: h.clock.now };
    const probed = await step(instanceMachine, 'running', primaryId, h, { data: measured });
    assert.deepEqual(probed, { type: 'nap', ms: probeIntervalMs, data: { lastProbeMs: h.clock.now, failedProbes: 0, ...measured }, wake: [] });
    // Woken between probes (by its cluster, a signal): it naps until its next probe is due, no later.
    const between = await step(instanceMachine, 'running', primaryId, h, { data: { lastProbeMs: h.clock.now - 300, ...measured } });
    assert.deepEqual(between, { type: 'nap', ms: probeIntervalMs - 300 });
    assert.equal(h.dataPlane.calls.filter((call) => call.startsWith('usage')).length, 0);
    // Woken by the watch when the server exited: the step finds it gone.
    h.dataPlane.alive_ = false;
    const gone = await step(instanceMachine, 'running', primaryId, h, { data: { lastProbeMs: h.clock.now - 300, ...measured } });
    assert.equal(gone.type === 'hop' && gone.label, 'down');
  });

  test('running: a replica\'s use on disk is measured with the first probe, then only once per usage interval, and kept in the store', async () => {
    const h = harness();
    const streaming = { ...running, inRecovery: true, streaming: true };
    h.store.add(replicaId, 'replica', 1, 'running', 5001, { observed: streaming });
    h.dataPlane.status_ = streaming;
    const first = await step(instanceMachine, 'running', replicaId, h);
    assert.deepEqual(first.type === 'nap' && first.data, { lastProbeMs: h.clock.now, failedProbes: 0, lastUsageMs: h.clock.now });
    assert.deepEqual(h.store.calls, [`recordObserved ${replicaId}`, `recordUsage ${replicaId} 40000000+16777216`]);
    const measuredAt = h.clock.now;
    h.clock.now += storage.usageIntervalMs - 1;
    const within = await step(instanceMachine, 'running', replicaId, h, { data: { lastProbeMs: measuredAt, lastUsageMs: measuredAt } });
    assert.deepEqual(within.type === 'nap' && within.data, { lastProbeMs: h.clock.now, failedProbes: 0, lastUsageMs: measuredAt }, 'the time of the last measurement is carried');
    assert.equal(h.dataPlane.calls.filter((call) => call.startsWith('usage')).length, 1, 'not measured again within the interval');
    h.clock.now += 1;
    const due = await step(instanceMachine, 'running', replicaId, h, { data: { lastProbeMs: measuredAt, lastUsageMs: measuredAt } });
    assert.deepEqual(due.type === 'nap' && due.data, { lastProbeMs: h.clock.now, failedProbes: 0, lastUsageMs: h.clock.now });
    assert.equal(h.dataPlane.calls.filter((call) => call.startsWith('usage')).length, 2, 'measured again once the interval has passed');
  });

  test('running: a usage measurement that fails never makes the instance lost: the last figure stays, it is said once, and tried at the next interval', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'running', 5000, { observed: running });
    h.dataPlane.status_ = running;
    await step(instanceMachine, 'running', primaryId, h);
    const figure = (await h.store.instance(primaryId))?.usage;
    assert.equal(figure?.dataBytes, 40_000_000);
    h.dataPlane.usageError = new Error('the usage walk visited more than 500000 entries');
    h.clock.now += storage.usageIntervalMs;
    const failed = await step(instanceMachine, 'running', primaryId, h, { data: { lastUsageMs: h.clock.now - storage.usageIntervalMs } });
    assert.equal(failed.type, 'nap', 'still running: not lost, not restarted');
    assert.deepEqual(failed.type === 'nap' && failed.data, { lastProbeMs: h.clock.now, failedProbes: 0, lastUsageMs: h.clock.now, usageFailing: true });
    assert.equal(failed.code, 'usage_unmeasured');
    assert.match(failed.reason ?? '', /could not measure its use on disk: the usage walk visited more than 500000 entries; the last figure is kept and it is measured again in 30000 ms/);
    assert.equal((await h.store.instance(primaryId))?.usage, figure, 'the last figure is kept');
    h.clock.now += storage.usageIntervalMs;
    const again = await step(instanceMachine, 'running', primaryId, h, { data: { lastUsageMs: h.clock.now - storage.usageIntervalMs, usageFailing: true } });
    assert.deepEqual([again.type, again.code], ['nap', undefined], 'a failure that goes on is said once');
    assert.equal(h.dataPlane.calls.filter((call) => call.startsWith('usage')).length, 3, 'tried again at the next interval');
    h.dataPlane.usageError = null;
    h.dataPlane.usage_ = { ...h.dataPlane.usage_, dataBytes: 50_000_000 };
    h.clock.now += storage.usageIntervalMs;
    const back = await step(instanceMachine, 'running', primaryId, h, { data: { lastUsageMs: h.clock.now - storage.usageIntervalMs, usageFailing: true } });
    assert.deepEqual(back.type === 'nap' && back.data, { lastProbeMs: h.clock.now, failedProbes: 0, lastUsageMs: h.clock.now });
    assert.equal((await h.store.instance(primaryId))?.usage?.dataBytes, 50_000_000);
  });

  test('running: a primary whose process is gone goes down for its cluster to decide; a replica is restarted', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'running');
    h.store.add(replicaId, 'replica', 1, 'running');
    h.dataPlane.alive_ = false;
    const primary = await step(instanceMachine, 'running', primaryId, h);
    assert.equal(primary.type === 'hop' && primary.label, 'down');
    assert.deepEqual(primary.type === 'hop' && primary.wake, [{ kind: 'cluster', entityId: clusterId }]);
    assert.deepEqual(primary.type === 'hop' && primary.data, { downSinceMs: h.clock.now });
    const replica = await step(instanceMachine, 'running', replicaId, h);
    assert.equal(replica.type === 'hop' && replica.label, 'starting');
  });

  test('running: an instance whose host went silent past its lease is lost (host_unreachable): a primary goes down for its cluster', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'running');
    h.dataPlane.unreachable.add(primaryId);
    const outcome = await step(instanceMachine, 'running', primaryId, h);
    assert.equal(outcome.type === 'hop' && outcome.label, 'down');
    assert.equal(outcome.code, 'host_unreachable');
    assert.match(outcome.type === 'hop' ? (outcome.reason ?? '') : '', /host host_b is unreachable/);
  });

  test('rejoin on an unreachable host waits for it (one event), and fails past the limit so the cluster replaces it', async () => {
    const h = harness();
    h.store.add(primaryId, 'replica', 0, 'rejoin', 5000, { fenced: true });
    h.store.add(replicaId, 'primary', 1, 'running');
    h.dataPlane.unreachable.add(primaryId);
    const first = await step(instanceMachine, 'rejoin', primaryId, h);
    assert.equal(first.type, 'nap');
    assert.equal(first.code, 'waiting_for_host');
    const again = await step(instanceMachine, 'rejoin', primaryId, h, { data: { downSinceMs: h.clock.now, waitingForHost: true } });
    assert.equal(again.type === 'nap' && again.code, undefined, 'said once');
    const late = await step(instanceMachine, 'rejoin', primaryId, h, { data: { downSinceMs: h.clock.now - ha.replicaDeadMsMax - 1, waitingForHost: true } });
    assert.equal(late.type, 'fail');
    h.dataPlane.unreachable.delete(primaryId);
    const back = await step(instanceMachine, 'rejoin', primaryId, h, { data: { downSinceMs: h.clock.now, waitingForHost: true } });
    assert.equal(back.type === 'hop' && back.label, 'starting');
  });

  test('running: a primary that cannot be queried counts as lost only after N probes in a row', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'running');
    h.dataPlane.status_ = { ...running, accepting: false };
    const first = await step(instanceMachine, 'running', primaryId, h, { data: { failedProbes: ha.unreachableProbesMax - 2 } });
    // Its use on disk is measured all the same: a server that cannot answer may be one whose disk is full.
    assert.deepEqual(first.type === 'nap' && first.data, { lastProbeMs: h.clock.now, failedProbes: ha.unreachableProbesMax - 1, lastUsageMs: h.clock.now });
    const last = await step(instanceMachine, 'running', primaryId, h, { data: { failedProbes: ha.unreachableProbesMax - 1 } });
    assert.equal(last.type === 'hop' && last.label, 'down');
    assert.match(last.type === 'hop' ? (last.reason ?? '') : '', /3 probes in a row/);
    assert.equal(last.code, 'instance_lost');
  });

  test('down waits for its cluster: rejoin and restart signals, else a nap', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'down');
    assert.equal((await step(instanceMachine, 'down', primaryId, h)).type, 'nap');
    const rejoin = await step(instanceMachine, 'down', primaryId, h, { signals: ['rejoin'] });
    assert.deepEqual([rejoin.type === 'hop' && rejoin.label, rejoin.type === 'hop' && rejoin.consume], ['rejoin', ['rejoin']]);
    const restart = await step(instanceMachine, 'down', primaryId, h, { signals: ['restart'] });
    assert.deepEqual([restart.type === 'hop' && restart.label, restart.type === 'hop' && restart.consume], ['starting', ['restart']]);
  });

  test('rejoin waits for a running primary, rewinds onto it, unfences, then starts', async () => {
    const h = harness();
    h.store.add(primaryId, 'replica', 0, 'rejoin', 5000, { fenced: true });
    h.store.add(replicaId, 'primary', 1, 'promote');
    assert.equal((await step(instanceMachine, 'rejoin', primaryId, h)).type, 'nap');
    h.store.update(replicaId, { machineLabel: 'running' });
    const outcome = await step(instanceMachine, 'rejoin', primaryId, h);
    assert.equal(outcome.type === 'hop' && outcome.label, 'starting');
    assert.deepEqual(h.dataPlane.calls, [`rejoin ${primaryId} to 5001`]);
    assert.deepEqual(h.store.calls, [`setFenced ${primaryId} false`]);
    h.dataPlane.rejoinMethod = 'cloned';
    const cloned = await step(instanceMachine, 'rejoin', primaryId, h);
    assert.match(cloned.type === 'hop' ? (cloned.reason ?? '') : '', /cloned afresh/);
    assert.equal(cloned.code, 'cloned_afresh');
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

  test('destroy of an instance on a lost host leaves its data there: no data-plane call, deleted from the cell, its cluster and host woken', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'running');
    h.store.add(replicaId, 'replica', 1, 'rejoin', 5001, { hostId: 'ho_lost', hostState: 'lost', fenced: true });
    h.dataPlane.unreachable.add(replicaId);
    const outcome = await step(instanceMachine, 'destroy', replicaId, h, { signals: ['destroy'] });
    assert.deepEqual([outcome.type, outcome.code], ['done', 'instance_deleted_on_lost_host']);
    assert.deepEqual(outcome.type === 'done' && outcome.wake, [{ kind: 'cluster', entityId: clusterId }, { kind: 'host', entityId: 'ho_lost' }]);
    assert.deepEqual(h.dataPlane.calls, [`dropSlot ${replicaId} on 5000`], 'only its slot on the reachable primary');
    assert.deepEqual(h.store.calls, [`releasePort ${replicaId}`, `markInstanceDeleted ${replicaId}`]);
  });

  test('destroy on an unreachable host not yet lost waits for it (one event), keeping the destroy signal', async () => {
    const h = harness();
    h.store.add(replicaId, 'replica', 1, 'destroy', 5001, { hostId: 'ho_b', hostState: 'draining' });
    h.dataPlane.unreachable.add(replicaId);
    const first = await step(instanceMachine, 'destroy', replicaId, h, { signals: ['destroy'] });
    assert.deepEqual([first.type, first.code, first.type === 'nap' && first.consume], ['nap', 'waiting_for_host', undefined]);
    const again = await step(instanceMachine, 'destroy', replicaId, h, { signals: ['destroy'], data: { waitingForHost: true } });
    assert.deepEqual([again.type, again.code], ['nap', undefined]);
    assert.deepEqual(h.store.calls, [], 'nothing released while the server may still run');
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

  test('start waits, accepted and announced once, while provisioning admission is full; then provisions', async () => {
    const h = harness();
    h.admission.open = false;
    const waiting = await step(clusterMachine, 'start', clusterId, h);
    assert.equal(waiting.type, 'nap');
    assert.equal(waiting.type === 'nap' && waiting.ms, 250, 'asks again a tick later');
    assert.equal(waiting.type === 'nap' && waiting.code, 'create_waiting_admission');
    assert.deepEqual(h.store.calls, [], 'no instance is made before admission');
    const again = await step(clusterMachine, 'start', clusterId, h, { data: waiting.type === 'nap' ? (waiting.data ?? {}) : {} });
    assert.equal(again.type === 'nap' && again.code, undefined, 'the wait is announced once, not every tick');
    h.admission.open = true;
    const admitted = await step(clusterMachine, 'start', clusterId, h);
    assert.equal(admitted.type === 'hop' && admitted.label, 'waitInstances');
    assert.deepEqual(h.store.calls, ['createInstance 0 primary', 'createInstance 1 replica']);
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

  test('waitInstances restarts a primary lost while the cluster is being made', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'down');
    h.store.add(replicaId, 'replica', 1, 'create');
    assert.equal((await step(clusterMachine, 'waitInstances', clusterId, h)).type, 'nap');
    assert.deepEqual(h.store.calls, [`raiseSignal instance ${primaryId} restart`]);
  });

  test('running naps, and hops to destroy on the destroy signal', async () => {
    const h = harness();
    h.store.replicas = 0;
    h.store.add(primaryId, 'primary', 0, 'running');
    assert.equal((await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [] } })).type, 'nap');
    const outcome = await step(clusterMachine, 'running', clusterId, h, { signals: ['destroy'] });
    assert.equal(outcome.type === 'hop' && outcome.label, 'destroy');
  });

  const streaming = { ...running, inRecovery: true, streaming: true };

  test('running keeps the synchronous standbys in step: sync drops to async and returns, with an event each way', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'running');
    h.store.add(replicaId, 'replica', 1, 'running', 5001, { observed: streaming });
    const toSync = await step(clusterMachine, 'running', clusterId, h);
    assert.deepEqual(toSync.type === 'nap' && toSync.data, { syncStandbys: [replicaId] });
    assert.match(toSync.type === 'nap' ? (toSync.reason ?? '') : '', /commits wait for a replica \(sync\)/);
    assert.equal(toSync.code, 'commits_wait_for_replica');
    const steady = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [replicaId] } });
    assert.deepEqual(steady, { type: 'nap', ms: watchNapMs }, 'no change, no write, no event');
    h.store.update(replicaId, { machineLabel: 'starting' });
    const dropped = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [replicaId] } });
    assert.match(dropped.type === 'nap' ? (dropped.reason ?? '') : '', /sync has dropped to async/);
    assert.equal(dropped.code, 'sync_dropped_to_async');
    assert.deepEqual(h.dataPlane.calls, [`sync ${primaryId} [${replicaId}]`, `sync ${primaryId} []`]);
  });

  test('desired synchronous standbys per durability', () => {
    const instances: InstanceRecord[] = [
      { id: primaryId, clusterId, ordinal: 0, role: 'primary', hostId: null, hostState: null, hostName: null, address: '127.0.0.1', port: 1, fenced: false, inRoute: true, destroyRequested: false, observed: running, usage: null, usageMeasuredAt: null, machineLabel: 'running', machineError: null },
      { id: replicaId, clusterId, ordinal: 1, role: 'replica', hostId: null, hostState: null, hostName: null, address: '127.0.0.1', port: 2, fenced: false, inRoute: true, destroyRequested: false, observed: {}, usage: null, usageMeasuredAt: null, machineLabel: 'starting', machineError: null },
    ];
    assert.deepEqual(desiredSyncStandbys('async', instances), []);
    assert.deepEqual(desiredSyncStandbys('sync', instances), [], 'sync: only streaming replicas');
    assert.deepEqual(desiredSyncStandbys('sync-strict', instances), [replicaId], 'strict: every replica, serving or not');
    const leaving = (change: Partial<InstanceRecord>): InstanceRecord[] => [instances[0] as InstanceRecord, { ...(instances[1] as InstanceRecord), machineLabel: 'running', observed: streaming, ...change }];
    assert.deepEqual(desiredSyncStandbys('sync', leaving({})), [replicaId], 'sync: a streaming replica in the routes');
    assert.deepEqual(desiredSyncStandbys('sync', leaving({ inRoute: false })), [], 'sync: never one out of the routes');
    // A replica out of the routes for a restart still counts for sync-strict: commits wait rather than go unreplicated.
    assert.deepEqual(desiredSyncStandbys('sync-strict', leaving({ inRoute: false })), [replicaId], 'sync-strict: one restarting out of the routes still counts');
    for (const durability of ['sync', 'sync-strict'] as const) {
      assert.deepEqual(desiredSyncStandbys(durability, leaving({ destroyRequested: true })), [], `${durability}: never one asked to delete itself`);
      assert.deepEqual(desiredSyncStandbys(durability, leaving({ machineLabel: 'destroy' })), [], `${durability}: never one being deleted`);
    }
  });

  test('running replaces a failed replica, once: it stays failed until its machine takes the destroy', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'running');
    h.store.add(replicaId, 'replica', 1, 'failed');
    const outcome = await step(clusterMachine, 'running', clusterId, h);
    assert.equal(outcome.type === 'nap' && outcome.code, 'replica_replaced');
    assert.deepEqual(h.store.calls, [`replaceInstance ${replicaId} replica`]);
    // Its machine has not resumed yet: still `failed`, with a destroy asked for.
    const again = await step(clusterMachine, 'running', clusterId, h);
    assert.notEqual(again.type === 'nap' && again.code, 'replica_replaced');
    assert.deepEqual(h.store.calls, [`replaceInstance ${replicaId} replica`], 'a replica already replaced is not replaced twice');
  });

  test('scale up: running adds exactly the missing replicas, once; a replica being deleted does not count', async () => {
    const h = harness();
    h.store.replicas = 3;
    h.store.add(primaryId, 'primary', 0, 'running');
    h.store.add(replicaId, 'replica', 1, 'running', 5001, { observed: streaming });
    const added = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [replicaId] } });
    assert.deepEqual([added.type, added.type === 'nap' && added.ms, added.code], ['nap', scaleNapMs, 'replicas_added']);
    assert.match(added.type === 'nap' ? (added.reason ?? '') : '', /scaling from 1 to 3 replica\(s\)/);
    assert.deepEqual(h.store.calls, ['addReplica 2', 'addReplica 3']);
    const again = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [replicaId] } });
    assert.deepEqual(again, { type: 'nap', ms: watchNapMs }, 'run again (after a crash, or woken), it adds nothing: it counts the new ones');
    assert.deepEqual(h.store.calls, ['addReplica 2', 'addReplica 3']);
    assert.deepEqual(h.dataPlane.calls, [], 'the new replicas join the synchronous standbys only once they stream');

    const deleting = harness();
    deleting.store.add(primaryId, 'primary', 0, 'running');
    deleting.store.add(replicaId, 'replica', 1, 'running', 5001, { observed: streaming, inRoute: false, destroyRequested: true });
    const replaced = await step(clusterMachine, 'running', clusterId, deleting, { data: { syncStandbys: [] } });
    assert.equal(replaced.code, 'replicas_added');
    assert.deepEqual(deleting.store.calls, ['addReplica 2'], 'a replica asked to delete itself is not one of the replicas, though its machine still runs');
  });

  test('scale down: the surplus is the replicas that do not stream, then the highest ordinals; each leaves the routes and the synchronous standbys before it is deleted', async () => {
    const h = harness();
    h.store.replicas = 1;
    const [second, third] = ['in_secondaaaaaa' as InstanceId, 'in_thirdaaaaaaa' as InstanceId];
    h.store.add(primaryId, 'primary', 0, 'running');
    h.store.add(replicaId, 'replica', 1, 'running', 5001, { observed: streaming });
    h.store.add(second, 'replica', 2, 'running', 5002, { observed: streaming });
    h.store.add(third, 'replica', 3, 'waitReady', 5003, { observed: { ...streaming, streaming: false } });
    // One log for the store and the data plane, so that the order between them shows.
    h.dataPlane.setSynchronousStandbys = async (_spec, standbys) => void h.store.calls.push(`sync [${standbys.join(',')}]`);
    const removed = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [replicaId, second] } });
    assert.deepEqual([removed.type, removed.type === 'nap' && removed.ms, removed.code], ['nap', scaleNapMs, 'replicas_removed']);
    assert.deepEqual(h.store.calls, [
      `inRoute ${third} false`,
      `inRoute ${second} false`,
      `sync [${replicaId}]`,
      `requestDestroy instance ${third}`,
      `requestDestroy instance ${second}`,
    ], 'the one not streaming, then the highest ordinal; out of the routes, then out of the synchronous standbys, then deleted');
    assert.deepEqual(removed.type === 'nap' && removed.data, { syncStandbys: [replicaId] }, 'the standbys written are remembered');
    assert.match(removed.type === 'nap' ? (removed.reason ?? '') : '', /scaling from 3 to 1 replica\(s\): removing in_third\w+, in_second\w+/);
    const again = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [replicaId] } });
    assert.deepEqual(again, { type: 'nap', ms: watchNapMs }, 'run again before their machines act, it removes nothing more');
    assert.equal(h.store.calls.length, 5);
    assert.equal(hasReplicas(1, await h.store.instances()), false, 'not done while the removed ones are still there');
    h.store.instancesById.delete(second);
    h.store.instancesById.delete(third);
    assert.equal(hasReplicas(1, await h.store.instances()), true, 'done once they are deleted and the rest stream');
    h.store.update(replicaId, { inRoute: false });
    assert.equal(hasReplicas(1, await h.store.instances()), false, 'not done while a replica is out of the routes');
  });

  test('scale down never removes the primary, even with the highest ordinal, and waits while the primary does not run', async () => {
    const h = harness();
    h.store.replicas = 0;
    h.store.durability = 'async';
    // After a switchover the primary may hold the highest ordinal.
    h.store.add(replicaId, 'replica', 1, 'running', 5001, { observed: streaming });
    h.store.add(primaryId, 'primary', 2, 'starting');
    const waits = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [] } });
    assert.deepEqual([waits.type, waits.code], ['nap', 'replicas_removal_waiting']);
    assert.deepEqual(h.store.calls, [], 'nothing removed while the synchronous standbys cannot be written');
    h.store.update(primaryId, { machineLabel: 'running' });
    const removed = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [] } });
    assert.equal(removed.code, 'replicas_removed');
    assert.deepEqual(h.store.calls, [`inRoute ${replicaId} false`, `requestDestroy instance ${replicaId}`]);
  });

  test('scale down after a crash between its steps: the replica already out of the routes is the one removed', async () => {
    const h = harness();
    h.store.replicas = 1;
    const second = 'in_secondaaaaaa' as InstanceId;
    h.store.add(primaryId, 'primary', 0, 'running');
    h.store.add(replicaId, 'replica', 1, 'running', 5001, { observed: streaming, inRoute: false });
    h.store.add(second, 'replica', 2, 'starting', 5002);
    const removed = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [] } });
    assert.equal(removed.code, 'replicas_removed');
    assert.deepEqual(h.store.calls, [`requestDestroy instance ${replicaId}`], 'not taken out of the routes twice; the other (not streaming, higher ordinal) stays');
  });

  test('running: a primary gone down starts a failover; without a replica it is restarted; past the breaker a human must act', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'down');
    const alone = await step(clusterMachine, 'running', clusterId, h);
    assert.equal(alone.type, 'nap');
    assert.deepEqual(h.store.calls, [`raiseSignal instance ${primaryId} restart`]);
    h.store.add(replicaId, 'replica', 1, 'running', 5001, { observed: streaming });
    const failover = await step(clusterMachine, 'running', clusterId, h);
    assert.equal(failover.type === 'hop' && failover.label, 'fence');
    assert.deepEqual(failover.type === 'hop' && failover.data, { op: 'failover', oldPrimaryId: primaryId, force: false, sinceMs: h.clock.now });
    h.store.failovers = ha.failoversMax;
    const tripped = await step(clusterMachine, 'running', clusterId, h);
    assert.equal(tripped.type, 'nap');
    assert.match(tripped.type === 'nap' ? (tripped.reason ?? '') : '', /automatic failover is off: 2 failovers .* a human must act/);
    assert.equal(tripped.code, 'circuit_breaker_open');
    const again = await step(clusterMachine, 'running', clusterId, h, { data: tripped.type === 'nap' ? (tripped.data as ClusterData) : {} });
    assert.equal(again.type === 'nap' && again.reason, undefined, 'announced once, not every tick');
    const manual = await step(clusterMachine, 'running', clusterId, h, { signals: ['failover', 'force'] });
    assert.equal(manual.type === 'hop' && manual.label, 'fence', 'a manual failover still works past the breaker');
    assert.deepEqual(manual.type === 'hop' && manual.consume, ['failover', 'force']);
  });

  test('fence takes the old primary out of the routes, then stops it (immediate)', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'down');
    const outcome = await step(clusterMachine, 'fence', clusterId, h, { data: { oldPrimaryId: primaryId } });
    assert.equal(outcome.type === 'hop' && outcome.label, 'pick');
    assert.deepEqual(h.store.calls, [`setFenced ${primaryId} true`]);
    assert.deepEqual(h.dataPlane.calls, [`stop ${primaryId} immediate`]);
  });

  test('fence of a primary on an unreachable host waits until its lease has certainly expired, then goes on (invariant 7)', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'down');
    h.dataPlane.unreachable.add(primaryId);
    h.store.leaseExpired.set(primaryId, false);
    const waiting = await step(clusterMachine, 'fence', clusterId, h, { data: { oldPrimaryId: primaryId } });
    assert.equal(waiting.type, 'nap', 'no pick (so no promote) while the lease may still hold');
    assert.equal(waiting.code, 'waiting_for_host_lease');
    assert.deepEqual(h.store.calls, [`setFenced ${primaryId} true`], 'out of the routes at once');
    h.store.leaseExpired.set(primaryId, true);
    const fenced = await step(clusterMachine, 'fence', clusterId, h, { data: { oldPrimaryId: primaryId } });
    assert.equal(fenced.type === 'hop' && fenced.label, 'pick');
    assert.equal(fenced.code, 'primary_fenced_by_lease');
  });

  test('pick promotes the most advanced serving replica, skips one lagging past the limit unless forced', async () => {
    const h = harness();
    const otherId = 'in_otheraaaaaaa' as InstanceId;
    h.store.add(primaryId, 'primary', 0, 'down', 5000, { fenced: true, observed: { ...running, lsn: '0/5000000' } });
    h.store.add(replicaId, 'replica', 1, 'running');
    h.store.add(otherId, 'replica', 2, 'running');
    h.dataPlane.statuses.set(replicaId, { ...streaming, receiveLsn: '0/4FFFF00' });
    h.dataPlane.statuses.set(otherId, { ...streaming, receiveLsn: '0/4000000' });
    const best = await step(clusterMachine, 'pick', clusterId, h, { data: { oldPrimaryId: primaryId } });
    assert.equal(best.type === 'hop' && best.label, 'promote');
    assert.equal(best.type === 'hop' && best.data?.candidateId, replicaId);
    h.dataPlane.statuses.set(replicaId, { ...stopped });
    const none = await step(clusterMachine, 'pick', clusterId, h, { data: { oldPrimaryId: primaryId } });
    assert.equal(none.type, 'nap', 'the only serving replica lags past the limit');
    assert.match(none.type === 'nap' ? (none.reason ?? '') : '', /lags more than 1024 bytes.*--force/);
    assert.equal(none.code, 'failover_refused_lag');
    const forced = await step(clusterMachine, 'pick', clusterId, h, { data: { oldPrimaryId: primaryId }, signals: ['force'] });
    assert.equal(forced.type === 'hop' && forced.data?.candidateId, otherId);
    const deleted = await step(clusterMachine, 'pick', clusterId, h, { data: { oldPrimaryId: primaryId }, signals: ['destroy'] });
    assert.equal(deleted.type === 'hop' && deleted.label, 'destroy', 'a delete ends a failover waiting for a replica');
  });

  test('promote, repoint, route: the candidate takes writes and lets the cluster\'s hosts in, others follow it, the old primary is asked to rejoin', async () => {
    const h = harness();
    const otherId = 'in_otheraaaaaaa' as InstanceId;
    h.store.add(primaryId, 'primary', 0, 'down', 5000, { fenced: true });
    h.store.add(replicaId, 'replica', 1, 'running');
    h.store.add(otherId, 'replica', 2, 'running');
    h.dataPlane.statuses.set(replicaId, streaming);
    const data: ClusterData = { op: 'failover', oldPrimaryId: primaryId, candidateId: replicaId };
    const promoted = await step(clusterMachine, 'promote', clusterId, h, { data });
    assert.equal(promoted.type === 'hop' && promoted.label, 'repoint');
    const repointed = await step(clusterMachine, 'repoint', clusterId, h, { data });
    assert.equal(repointed.type === 'hop' && repointed.label, 'route');
    h.store.durability = 'sync-strict';
    const routed = await step(clusterMachine, 'route', clusterId, h, { data });
    assert.equal(routed.type === 'hop' && routed.label, 'rejoin');
    assert.deepEqual(h.dataPlane.calls, [`promote ${replicaId}`, `allowPeers ${replicaId}`, `follow ${otherId} 5001 slot ${otherId}`, `sync ${replicaId} [${otherId},${primaryId}]`.replace(`${otherId},${primaryId}`, [otherId, primaryId].sort().join(','))]);
    assert.deepEqual(h.store.calls.slice(-2), [`swapPrimary ${replicaId}`, `raiseSignal instance ${primaryId} rejoin`]);
  });

  test('rejoin waits (bounded) for the old primary to stream again', async () => {
    const h = harness();
    h.store.add(primaryId, 'replica', 0, 'rejoin', 5000, { fenced: true });
    h.store.add(replicaId, 'primary', 1, 'running');
    const data: ClusterData = { oldPrimaryId: primaryId, sinceMs: h.clock.now, syncStandbys: [] };
    assert.equal((await step(clusterMachine, 'rejoin', clusterId, h, { data })).type, 'nap');
    const late = await step(clusterMachine, 'rejoin', clusterId, h, { data: { ...data, sinceMs: h.clock.now - rejoinWaitMsMax - 1 } });
    assert.equal(late.type === 'hop' && late.label, 'running');
    h.store.update(primaryId, { machineLabel: 'running' });
    assert.equal((await step(clusterMachine, 'rejoin', clusterId, h, { data })).type, 'nap', 'a stale running label of a fenced instance is not a rejoin');
    h.store.update(primaryId, { fenced: false, inRoute: true, destroyRequested: false, observed: streaming });
    const back = await step(clusterMachine, 'rejoin', clusterId, h, { data });
    assert.deepEqual(back.type === 'hop' && [back.label, back.data], ['running', { syncStandbys: [] }]);
  });

  test('switchover: refused without a streaming target; else pause, catch up (or call off), stop cleanly, promote', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'running');
    h.store.add(replicaId, 'replica', 1, 'starting');
    const refused = await step(clusterMachine, 'running', clusterId, h, { signals: ['switchover'] });
    assert.equal(refused.type, 'nap');
    assert.match(refused.type === 'nap' ? (refused.reason ?? '') : '', /switchover refused: no replica is streaming/);
    assert.equal(refused.code, 'switchover_refused');
    assert.deepEqual(refused.type === 'nap' && refused.consume, ['switchover']);
    h.store.update(replicaId, { machineLabel: 'running', observed: streaming });
    const begun = await step(clusterMachine, 'running', clusterId, h, { signals: ['switchover'] });
    assert.equal(begun.type === 'hop' && begun.label, 'pause');
    const data = begun.type === 'hop' ? (begun.data as ClusterData) : {};
    assert.equal(data.candidateId, replicaId);
    const paused = await step(clusterMachine, 'pause', clusterId, h, { data });
    assert.equal(paused.type === 'hop' && paused.label, 'catchUp');
    assert.deepEqual(h.store.calls, ['setRoutePaused true']);
    h.dataPlane.statuses.set(primaryId, { ...running, lsn: '0/9000000' });
    h.dataPlane.statuses.set(replicaId, { ...streaming, lsn: '0/1000000' });
    const behind = { ...data, sinceMs: h.clock.now };
    assert.deepEqual(await step(clusterMachine, 'catchUp', clusterId, h, { data: behind }), { type: 'nap', ms: catchUpPollMs });
    const calledOff = await step(clusterMachine, 'catchUp', clusterId, h, { data: { ...behind, sinceMs: h.clock.now - ha.switchoverCatchUpMsMax - 1 } });
    assert.equal(calledOff.type === 'hop' && calledOff.label, 'running');
    assert.match(calledOff.type === 'hop' ? (calledOff.reason ?? '') : '', /called off.*route resumed/);
    assert.equal(calledOff.code, 'switchover_called_off');
    h.dataPlane.statuses.set(replicaId, { ...streaming, lsn: '0/8FFFF00' });
    const caughtUp = await step(clusterMachine, 'catchUp', clusterId, h, { data: behind });
    assert.equal(caughtUp.type === 'hop' && caughtUp.label, 'stopPrimary');
    const stoppedPrimary = await step(clusterMachine, 'stopPrimary', clusterId, h, { data: behind });
    assert.equal(stoppedPrimary.type === 'hop' && stoppedPrimary.label, 'promote');
    assert.deepEqual(h.dataPlane.calls, [`checkpoint ${primaryId}`, `stop ${primaryId} fast`], 'a checkpoint while writes flow, then the clean stop');
  });

  test('moving off a draining host: a replica there is replaced first, and deleted only once the new one streams', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'running', 5000, { hostId: 'ho_a', hostState: 'active' });
    h.store.add(replicaId, 'replica', 1, 'running', 5001, { hostId: 'ho_b', hostState: 'draining', observed: streaming });
    const added = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [replicaId] } });
    assert.deepEqual([added.type, added.type === 'nap' && added.ms, added.code], ['nap', evacuationNapMs, 'replacements_requested']);
    assert.deepEqual(h.store.calls, ['addReplica 2']);
    const again = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [replicaId] } });
    assert.deepEqual([again.type, again.code], ['nap', 'waiting_for_replacements'], 'not deleted while the new one does not stream');
    assert.deepEqual(h.store.calls, ['addReplica 2'], 'a second tick adds nothing: it counts the new one');
    const quiet = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [replicaId], ...(again.type === 'nap' ? again.data : {}) } });
    assert.deepEqual([quiet.type, quiet.code], ['nap', undefined], 'the same wait is announced once');
    const added2 = 'in_add2aaaaaaaa' as InstanceId;
    h.store.update(added2, { machineLabel: 'running', hostId: 'ho_c', hostState: 'active', observed: streaming });
    const deleted = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [replicaId] } });
    assert.deepEqual([deleted.type, deleted.code], ['nap', 'moved_instances_deleted']);
    assert.deepEqual(h.store.calls.slice(1), [`requestDestroy instance ${replicaId}`]);
    h.store.update(replicaId, { machineLabel: 'destroy' });
    const settled = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [replicaId] } });
    assert.deepEqual([settled.type, settled.code], ['nap', 'commits_wait_for_replica'], 'being deleted, it no longer counts: back to watching');
  });

  test('moving off a draining host: its primary moves by a switchover to the most advanced staying replica, once every staying replica streams', async () => {
    const h = harness();
    // Async: no synchronous standbys to keep in step, so each tick shows only the move.
    h.store.durability = 'async';
    const otherId = 'in_otheraaaaaaa' as InstanceId;
    h.store.add(primaryId, 'primary', 0, 'running', 5000, { hostId: 'ho_a', hostState: 'draining' });
    h.store.add(replicaId, 'replica', 1, 'running', 5001, { hostId: 'ho_b', hostState: 'active', observed: { ...streaming, receiveLsn: '0/3000000' } });
    const added = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [] } });
    assert.equal(added.code, 'replacements_requested');
    h.store.instancesById.delete('in_add2aaaaaaaa' as InstanceId);
    h.store.add(otherId, 'replica', 2, 'running', 5002, { hostId: 'ho_c', hostState: 'active', observed: { ...streaming, receiveLsn: '0/3000100' } });
    h.store.add('in_leavingaaaaa' as InstanceId, 'replica', 3, 'running', 5003, { hostId: 'ho_a', hostState: 'draining', observed: { ...streaming, receiveLsn: '0/9000000' } });
    h.store.update(replicaId, { machineLabel: 'starting' });
    const waiting = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [] } });
    assert.equal(waiting.code, 'waiting_for_replacements', 'a staying replica does not stream yet');
    h.store.update(replicaId, { machineLabel: 'running' });
    const moved = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [] } });
    assert.deepEqual([moved.type, moved.type === 'hop' && moved.label, moved.code], ['hop', 'pause', 'drain_switchover_started']);
    assert.deepEqual(moved.type === 'hop' && [moved.data?.oldPrimaryId, moved.data?.candidateId], [primaryId, otherId], 'never the replica on the draining host, however advanced');
  });

  test('moving off a lost host: its replicas are deleted at once (they serve nothing), its primary is left to the failover', async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'running', 5000, { hostId: 'ho_a', hostState: 'active' });
    h.store.add(replicaId, 'replica', 1, 'rejoin', 5001, { hostId: 'ho_b', hostState: 'lost', fenced: true });
    h.store.add('in_add2aaaaaaaa' as InstanceId, 'replica', 2, 'create', 5002, { hostId: 'ho_c', hostState: 'active' });
    const deleted = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [] } });
    assert.deepEqual([deleted.type, deleted.code], ['nap', 'moved_instances_deleted']);
    assert.deepEqual(h.store.calls, [`requestDestroy instance ${replicaId}`]);

    const lostPrimary = harness();
    lostPrimary.store.durability = 'async';
    lostPrimary.store.add(primaryId, 'primary', 0, 'running', 5000, { hostId: 'ho_b', hostState: 'lost' });
    lostPrimary.store.add(replicaId, 'replica', 1, 'running', 5001, { hostId: 'ho_a', hostState: 'active', observed: streaming });
    lostPrimary.store.add('in_add2aaaaaaaa' as InstanceId, 'replica', 2, 'running', 5002, { hostId: 'ho_c', hostState: 'active', observed: streaming });
    const waits = await step(clusterMachine, 'running', clusterId, lostPrimary, { data: { syncStandbys: [] } });
    assert.deepEqual([waits.type, waits.code], ['nap', 'waiting_for_replacements']);
    assert.match(waits.type === 'nap' ? (waits.reason ?? '') : '', /its primary to fail over/);
    assert.deepEqual(lostPrimary.store.calls, [], 'no switchover to a primary nobody can reach');
  });

  test('rejoin does not wait for an old primary on a host the cluster is leaving; pick skips a replica on a silent host', async () => {
    const h = harness();
    h.store.add(primaryId, 'replica', 0, 'down', 5000, { fenced: true, hostId: 'ho_a', hostState: 'draining' });
    h.store.add(replicaId, 'primary', 1, 'running');
    const data: ClusterData = { oldPrimaryId: primaryId, sinceMs: h.clock.now, syncStandbys: [] };
    const moved = await step(clusterMachine, 'rejoin', clusterId, h, { data });
    assert.deepEqual([moved.type === 'hop' && moved.label, moved.code], ['running', 'old_primary_host_leaving']);

    const p = harness();
    const otherId = 'in_otheraaaaaaa' as InstanceId;
    p.store.add(primaryId, 'primary', 0, 'down', 5000, { fenced: true, observed: { lsn: '0/3000000' } });
    p.store.add(replicaId, 'replica', 1, 'running');
    p.store.add(otherId, 'replica', 2, 'running');
    p.dataPlane.unreachable.add(replicaId);
    p.dataPlane.statuses.set(replicaId, { ...streaming, receiveLsn: '0/9000000' });
    p.dataPlane.statuses.set(otherId, streaming);
    p.dataPlane.status = async (spec: InstanceSpec) => {
      if (p.dataPlane.unreachable.has(spec.instanceId)) throw new HostUnreachableError('host_b', 2_000);
      return p.dataPlane.statuses.get(spec.instanceId) ?? stopped;
    };
    const picked = await step(clusterMachine, 'pick', clusterId, p, { data: { op: 'failover', oldPrimaryId: primaryId } });
    assert.deepEqual(picked.type === 'hop' && [picked.label, picked.data?.candidateId], ['promote', otherId]);
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
    const instance = (label: string): InstanceRecord => ({ id: primaryId, clusterId, ordinal: 0, role: 'primary', hostId: null, hostState: null, hostName: null, address: '127.0.0.1', port: 1, fenced: false, inRoute: true, destroyRequested: false, observed: {}, usage: null, usageMeasuredAt: null, machineLabel: label, machineError: null });
    assert.equal(clusterPhase('waitInstances', false, []), 'creating');
    assert.equal(clusterPhase('running', false, [instance('running')]), 'running');
    assert.equal(clusterPhase('running', false, [instance('starting')]), 'degraded');
    assert.equal(clusterPhase('waitDestroyed', true, []), 'deleted');
    assert.equal(clusterPhase('fence', false, []), 'failing-over');
    assert.equal(clusterPhase('catchUp', false, []), 'switching-over');
    assert.equal(clusterPhase('route', false, []), 'promoting');
    assert.equal(clusterPhase('rejoin', false, []), 'rejoining');
    assert.equal(clusterPhase('failed', false, []), 'failed');
  });
});

describe('backup machine, label by label', () => {
  const backupId = 'bk_aaaaaaaaaaaa' as BackupId;

  test('start picks a streaming replica, else the primary; with neither it waits, bounded', async () => {
    const h = harness();
    h.backups.add({ id: backupId });
    h.store.add(primaryId, 'primary', 0, 'running');
    h.store.add(replicaId, 'replica', 1, 'running', 5001, { observed: { ...running, inRecovery: true, streaming: true } });
    const fromReplica = await step(backupMachine, 'start', backupId, h);
    assert.deepEqual(fromReplica.type === 'hop' && [fromReplica.label, fromReplica.data], ['take', { sourceInstanceId: replicaId }]);
    h.store.update(replicaId, { machineLabel: 'starting' });
    const fromPrimary = await step(backupMachine, 'start', backupId, h);
    assert.deepEqual(fromPrimary.type === 'hop' && fromPrimary.data, { sourceInstanceId: primaryId });
    assert.match(fromPrimary.type === 'hop' ? (fromPrimary.reason ?? '') : '', /no replica streams/);
    h.store.update(primaryId, { machineLabel: 'down' });
    assert.equal((await step(backupMachine, 'start', backupId, h)).type, 'nap');
    const late = await step(backupMachine, 'start', backupId, h, { data: { waitSinceMs: h.clock.now - sourceWaitMsMax - 1 } });
    assert.equal(late.type, 'fail');
    assert.deepEqual(h.backups.calls, [`recordFailed ${backupId} no running instance to back up from for ${sourceWaitMsMax} ms`]);
  });

  test('take backs up from the chosen source at the capped rate and records it; a vanished source is chosen again', async () => {
    const h = harness();
    h.backups.add({ id: backupId });
    h.store.add(primaryId, 'primary', 0, 'running');
    h.store.add(replicaId, 'replica', 1, 'running');
    const taken = await step(backupMachine, 'take', backupId, h, { data: { sourceInstanceId: replicaId } });
    assert.equal(taken.type === 'hop' && taken.label, 'verify');
    assert.deepEqual(h.dataPlane.calls, [`takeBaseBackup ${backupId} from ${replicaId} (primary ${primaryId}) rate 0`]);
    assert.deepEqual(h.backups.calls, [`recordTaken ${backupId} ${replicaId} 000000010000000000000002`]);
    h.store.update(replicaId, { machineLabel: 'starting' });
    const again = await step(backupMachine, 'take', backupId, h, { data: { sourceInstanceId: replicaId } });
    assert.equal(again.type === 'hop' && again.label, 'start');
  });

  test('take reads backup-verification for the cluster: off, the taken backup is done unverified, saying which rule turned it off', async () => {
    const h = harness();
    h.backups.add({ id: backupId });
    h.store.add(primaryId, 'primary', 0, 'running');
    const asked: string[] = [];
    const off: ClusterFlags = {
      evaluateForCluster: async (key, cluster) => {
        asked.push(`${key} ${cluster}`);
        return { key, value: false, decidedBy: { level: 'cluster', target: cluster, percent: null }, why: `cluster rule for ${cluster}` };
      },
    };
    const taken = await step(backupMachine, 'take', backupId, { ...h, ports: { ...h.ports, flags: off } }, { data: { sourceInstanceId: primaryId } });
    assert.equal(taken.type, 'done');
    assert.match(taken.type === 'done' ? (taken.reason ?? '') : '', /not verified: backup-verification is off \(cluster rule for cl_/);
    assert.deepEqual(asked, [`backup-verification ${clusterId}`]);
  });

  test('verify waits for a check slot, then records the verdict and is done', async () => {
    const h = harness();
    h.backups.add({ id: backupId, status: 'completed' });
    h.backups.slotFree = false;
    assert.deepEqual(await step(backupMachine, 'verify', backupId, h), { type: 'nap', ms: checkSlotPollMs });
    h.backups.slotFree = true;
    h.dataPlane.check = { ok: false, reason: 'pg_verifybackup: checksum mismatch for file "global/1260"' };
    const failed = await step(backupMachine, 'verify', backupId, h);
    assert.equal(failed.type, 'done');
    assert.match(failed.type === 'done' ? (failed.reason ?? '') : '', /verification failed: pg_verifybackup: checksum mismatch/);
    assert.equal(failed.code, 'backup_verification_failed');
    assert.deepEqual(h.backups.calls, [`recordCheck ${backupId} false pg_verifybackup: checksum mismatch for file "global/1260"`]);
  });
});

describe('backup schedule', () => {
  test("starts a backup for each cluster due (never backed up, or older than its own or the cell's interval), none while one runs", async () => {
    const h = harness();
    const other = 'cl_otheraaaaaaa' as ClusterId;
    const third = 'cl_thirdaaaaaaa' as ClusterId;
    h.backups.candidates = [
      { clusterId, lastBackupAtMs: null, backupRunning: false, intervalMs: null },
      { clusterId: other, lastBackupAtMs: h.clock.now - backupSettings.intervalMs - 1, backupRunning: false, intervalMs: null },
      { clusterId: third, lastBackupAtMs: h.clock.now - 1_000, backupRunning: false, intervalMs: null },
      { clusterId: 'cl_busyaaaaaaaa' as ClusterId, lastBackupAtMs: null, backupRunning: true, intervalMs: null },
      // Its own schedule: every 10 minutes, and its last backup was 11 minutes ago.
      { clusterId: 'cl_ownschedaaaa' as ClusterId, lastBackupAtMs: h.clock.now - 11 * 60_000, backupRunning: false, intervalMs: 10 * 60_000 },
    ];
    const outcome = await step(backupScheduleMachine, 'tend', 'cell', h);
    assert.equal(outcome.type, 'nap');
    assert.deepEqual(h.backups.calls, [`createBackup ${clusterId} scheduled`, `createBackup ${other} scheduled`, 'createBackup cl_ownschedaaaa scheduled']);
  });

  test('retention: the newest countMin always stay, past countMax or too old they go, the newest verified stays; WAL before the oldest kept goes', async () => {
    const h = harness();
    const day = 86_400_000;
    const backup = (index: number, ageMs: number, verified: boolean | null): BackupRecord => ({
      id: `bk_${String(index).padStart(12, 'a')}` as BackupId,
      clusterId,
      status: 'completed',
      sourceInstanceId: null,
      startWalFile: `0000000100000000000000${String(10 - index).padStart(2, '0')}`,
      finishedAtMs: h.clock.now - ageMs,
      verified,
    });
    // Newest first: 0 and 1 are young; 2 is old but the newest verified; 3 is old; 4 and 5 are past countMax.
    const all = [backup(0, 1_000, false), backup(1, 2_000, null), backup(2, 2 * day, true), backup(3, 3 * day, true), backup(4, 1_000, true), backup(5, 1_000, true)];
    assert.deepEqual(expiredBackups(all, backupSettings, h.clock.now).map((item) => item.id), [all[3]?.id, all[4]?.id, all[5]?.id]);
    for (const item of all) h.backups.add(item);
    await step(backupScheduleMachine, 'tend', 'cell', h);
    assert.deepEqual(h.dataPlane.calls.filter((call) => call.startsWith('deleteBackup')).length, 3);
    assert.ok(h.dataPlane.calls.includes(`pruneWal before ${all[2]?.startWalFile}`), 'WAL before the oldest kept backup is pruned');
  });
});

describe('backup schedule: fairness and deleted clusters', () => {
  test('retention walks every cluster with a cursor: a full page resumes after its last cluster next tick, a short one starts over', async () => {
    const h = harness();
    h.backups.moreClusters = Array.from({ length: clustersPerTickMax + 5 }, (_, index) => `cl_more${String(index).padStart(8, '0')}` as ClusterId);
    const first = await step(backupScheduleMachine, 'tend', 'cell', h);
    assert.equal(first.type, 'nap');
    const cursor = (first as { data?: BackupScheduleData }).data?.retentionAfterClusterId;
    assert.equal(cursor, h.backups.moreClusters[clustersPerTickMax - 1], 'the cursor is the last cluster of the full page');
    const second = await step(backupScheduleMachine, 'tend', 'cell', h, { data: { retentionAfterClusterId: cursor } as BackupScheduleData });
    assert.deepEqual(h.backups.pagesAsked, ['after start', `after ${cursor}`]);
    assert.equal((second as { data?: BackupScheduleData }).data?.retentionAfterClusterId, undefined, 'a short page wraps to the start');
  });

  test("a deleted cluster's backup area is kept through its retention, then removed and its rows marked, area first", async () => {
    const h = harness();
    const young = 'cl_youngaaaaaaa' as ClusterId;
    const old = 'cl_oldaaaaaaaaa' as ClusterId;
    h.backups.deleted.set(young, h.clock.now - backupSettings.deletedRetentionMs + 1_000);
    h.backups.deleted.set(old, h.clock.now - backupSettings.deletedRetentionMs - 1_000);
    const outcome = await step(backupScheduleMachine, 'tend', 'cell', h);
    assert.deepEqual(h.dataPlane.calls, [`purgeCluster ${old}`]);
    assert.ok(h.backups.calls.includes(`markBackupsPurged ${old}`));
    assert.match((outcome as { reason?: string }).reason ?? '', /1 deleted cluster\(s\) purged/);
    h.clock.now += 2_000;
    await step(backupScheduleMachine, 'tend', 'cell', h);
    assert.deepEqual(h.dataPlane.calls, [`purgeCluster ${old}`, `purgeCluster ${young}`]);
  });
});

describe('transition tables', () => {
  test('every label has a step and every hop target is a label; the table renders as Mermaid', () => {
    for (const definition of [clusterMachine, instanceMachine, backupMachine, backupScheduleMachine] as MachineDefinition<string, MachineData, MachinePorts>[]) {
      // `failed` is the engine's label, not a step's: its row only says where a signal may take a failed machine.
      const labels = Object.keys(definition.transitions).filter((label) => label !== failedLabel);
      assert.deepEqual(Object.keys(definition.steps).sort(), [...labels].sort(), definition.kind);
      for (const targets of Object.values(definition.transitions) as string[][]) for (const target of targets) assert.ok(labels.includes(target), `${definition.kind}: ${target}`);
      for (const [signal, target] of Object.entries(definition.resumeOn ?? {})) {
        const from = [failedLabel, ...labels].filter((label) => isAllowedHop(definition, label, target));
        assert.ok(from.length > 0, `${definition.kind}: the ${signal} signal resumes at ${target}, which the table allows from nowhere`);
      }
      assert.match(toMermaid(definition), new RegExp(`^stateDiagram-v2\\n  \\[\\*\\] --> ${definition.initial}`));
    }
  });
});

describe('WAL bounds (docs/STORAGE.md)', () => {
  const failingArchive = (lagBytes: number) => ({ lastArchivedWal: '000000010000000000000003', lastArchivedAt: '2026-01-01T00:00:00.000Z', lagBytes, failedCount: 4, lastFailedWal: '000000010000000000000004', lastFailedAt: '2026-01-01T00:01:00.000Z' });
  const archivingAgain = { ...failingArchive(0), lastArchivedWal: '000000010000000000000004', lastArchivedAt: '2026-01-01T00:02:00.000Z' };

  function walHarness(primaryObserved: Partial<InstanceStatus>): Harness {
    const h = harness();
    h.store.durability = 'async';
    h.store.add(primaryId, 'primary', 0, 'running', 5000, { observed: primaryObserved });
    h.store.add(replicaId, 'replica', 1, 'running');
    return h;
  }

  test('the slot bound is a tenth of the allocation, never below wal_keep_size nor above 64 GB', () => {
    assert.deepEqual([1, 10, 100, 16_384].map(walKeepLimitMb), [256, 1024, 10_240, 65_536]);
  });

  test('running replaces a replica whose slot the primary lost, once; an unreserved slot is left alone', async () => {
    const h = walHarness({ slots: [{ name: replicaId, walStatus: 'lost', safeWalSizeBytes: null }] });
    const replaced = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [] } });
    assert.equal(replaced.type === 'nap' && replaced.code, 'replica_replaced_wal_lost');
    assert.deepEqual(h.store.calls, [`replaceInstance ${replicaId} replica running`]);
    const again = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [] } });
    assert.equal(again.type === 'nap' && again.code, undefined);
    assert.deepEqual(h.store.calls, [`replaceInstance ${replicaId} replica running`], 'a replica already asked to delete itself is not replaced twice');

    const unreserved = walHarness({ slots: [{ name: replicaId, walStatus: 'unreserved', safeWalSizeBytes: 0 }] });
    await step(clusterMachine, 'running', clusterId, unreserved, { data: { syncStandbys: [] } });
    assert.deepEqual(unreserved.store.calls, []);
  });

  test('a failing archiver raises archive_failing once past the bound, and archive_recovered once when it archives again', async () => {
    const h = walHarness({ archive: failingArchive(1024) });
    const seen = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [] } });
    assert.deepEqual(seen.type === 'nap' && [seen.code, seen.data], [undefined, { syncStandbys: [], archiveFailingSinceMs: h.clock.now }]);
    const sinceMs = h.clock.now;
    h.clock.now += ha.archiveFailingMs - 1;
    const early = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [], archiveFailingSinceMs: sinceMs } });
    assert.equal(early.type === 'nap' && early.code, undefined, 'not before the bound');
    h.clock.now += 1;
    const raised = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [], archiveFailingSinceMs: sinceMs } });
    assert.deepEqual(raised.type === 'nap' && [raised.code, raised.data], ['archive_failing', { syncStandbys: [], archiveFailingSinceMs: sinceMs, archiveFailingAnnounced: true }]);
    const announced: ClusterData = { syncStandbys: [], archiveFailingSinceMs: sinceMs, archiveFailingAnnounced: true };
    const quiet = await step(clusterMachine, 'running', clusterId, h, { data: announced });
    assert.equal(quiet.type === 'nap' && quiet.code, undefined, 'raised once');
    h.store.update(primaryId, { observed: { archive: archivingAgain } });
    const recovered = await step(clusterMachine, 'running', clusterId, h, { data: announced });
    assert.deepEqual(recovered.type === 'nap' && [recovered.code, recovered.data], ['archive_recovered', { syncStandbys: [] }]);
    const after = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [] } });
    assert.equal(after.type === 'nap' && after.code, undefined, 'recovered once');
  });

  test("the cluster view warns once the WAL a failing archiver holds reaches half the slot bound, and not otherwise", () => {
    const primary = (archive: InstanceStatus['archive']) => ({ observed: { archive } }) as unknown as InstanceRecord;
    const halfMb = walKeepLimitMb(1) / 2;
    assert.deepEqual(walWarnings(1, primary(failingArchive(halfMb * 1024 ** 2 - 1))), []);
    const warnings = walWarnings(1, primary(failingArchive(halfMb * 1024 ** 2)));
    assert.equal(warnings.length, 1);
    assert.match(warnings[0] ?? '', /archiving has failed since .* 128 MB of WAL held/);
    assert.deepEqual(walWarnings(1, primary({ ...archivingAgain, lagBytes: 1024 ** 3 })), [], 'archiving works: unarchived WAL is only in flight');
  });
});

describe('storage guard (docs/STORAGE.md "Limits", "Autogrow")', () => {
  const gb = storage.gbBytes;
  const filesystem = { path: '/srv', totalBytes: 0, freeBytes: 0, availableBytes: 0 };
  /** A cluster of 10 GB whose primary was measured at `percent` of it. */
  function fullHarness(percent: number): Harness {
    const h = harness();
    h.store.durability = 'async';
    const usedBytes = Math.round((percent / 100) * 10 * gb);
    const usage = { dataBytes: usedBytes - 16 * 1024 ** 2, walBytes: 16 * 1024 ** 2, filesystem };
    h.store.add(primaryId, 'primary', 0, 'running', 5000, { observed: running, usage, usageMeasuredAt: new Date() });
    h.dataPlane.usage_ = usage;
    h.store.add(replicaId, 'replica', 1, 'running');
    return h;
  }

  test('past the warning threshold: storage_warning once; below it again the mark goes, silently', async () => {
    const h = fullHarness(85);
    const warned = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [] } });
    assert.deepEqual(warned.type === 'nap' && [warned.code, warned.data], ['storage_warning', { syncStandbys: [], storageWarned: true }]);
    assert.match(warned.type === 'nap' ? (warned.reason ?? '') : '', /85\.0 %.*cellar clusters resize app --storage-gb 20/);
    const quiet = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [], storageWarned: true } });
    assert.equal(quiet.type === 'nap' && quiet.code, undefined, 'said once');
    const low = fullHarness(50);
    const cleared = await step(clusterMachine, 'running', clusterId, low, { data: { syncStandbys: [], storageWarned: true } });
    assert.deepEqual(cleared.type === 'nap' && [cleared.code, cleared.data], [undefined, { syncStandbys: [] }]);
  });

  test('past the read-only threshold the cluster is marked full, then its servers configured read-only; below it, the reverse', async () => {
    const h = fullHarness(96);
    const warned = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [] } });
    assert.deepEqual(warned.type === 'nap' && [warned.code, warned.ms], ['storage_warning', 0], 'the warning first, and at once the next step');
    // A fast writer wrote on between the measurement that crossed and the servers turning read-only.
    const momentum = { dataBytes: Math.round(1.3 * 10 * gb), walBytes: 0, filesystem };
    h.dataPlane.usage_ = momentum;
    const full = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [], storageWarned: true } });
    assert.equal(full.type === 'nap' && full.code, 'storage_read_only');
    assert.deepEqual(h.dataPlane.calls.filter((call) => call.startsWith('configure')).sort(), [`configure ${primaryId}`, `configure ${replicaId}`]);
    assert.deepEqual(h.dataPlane.readOnlySpecs, [primaryId, replicaId].sort());
    assert.deepEqual(h.store.calls, ['setStorageFull 96', 'setStorageFull 130'], 'marked at the crossing, then at what the primary holds once read-only');
    assert.equal(h.store.storageFull?.percent, 130);
    assert.match(full.type === 'nap' ? (full.reason ?? '') : '', /^storage is 130\.0 %/);
    assert.deepEqual(full.type === 'nap' && full.data, { syncStandbys: [], storageWarned: true, readOnlyApplied: true });
    h.store.update(primaryId, { usage: momentum });
    const steady = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [], storageWarned: true, readOnlyApplied: true } });
    assert.equal(steady.type === 'nap' && steady.code, undefined, 'a full cluster stays as it is: the momentum, far past the lock bound over the crossing, does not lock it');
    assert.equal(h.dataPlane.calls.filter((call) => call.startsWith('configure')).length, 2, 'and its servers are not configured again');
    const cutShort = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [], storageWarned: true } });
    assert.deepEqual(cutShort.type === 'nap' && cutShort.data, { syncStandbys: [], storageWarned: true, readOnlyApplied: true });
    assert.equal(h.dataPlane.calls.filter((call) => call.startsWith('configure')).length, 4, 'marked full without the servers told: they are told');
    h.store.storageGb = 20; // a resize
    h.dataPlane.calls.length = 0;
    h.dataPlane.readOnlySpecs.length = 0;
    const writable = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [], storageWarned: true, readOnlyApplied: true } });
    assert.equal(writable.type === 'nap' && writable.code, 'storage_writable');
    assert.deepEqual(writable.type === 'nap' && writable.data, { syncStandbys: [], storageWarned: true });
    assert.deepEqual(h.dataPlane.readOnlySpecs, [], 'configured without the read-only default');
    assert.equal(h.dataPlane.calls.filter((call) => call.startsWith('configure')).length, 2);
    assert.equal(h.store.storageFull, null);
  });

  test('a primary near the read-only threshold is measured between full probes, its nap cut to when the next measurement is due, and a crossing wakes the cluster', async () => {
    const h = fullHarness(90);
    const near = { dataBytes: Math.round(0.949 * 10 * gb), walBytes: 0, filesystem };
    h.dataPlane.usage_ = near;
    // 90 % to 94.9 % in 50 s: 10 MB/s, which the lead (300 ms) does not carry across.
    const measured = await step(instanceMachine, 'running', primaryId, h, { data: { lastProbeMs: h.clock.now, lastUsageMs: h.clock.now - 50_000 } });
    assert.equal(h.dataPlane.calls.filter((call) => call.startsWith('usage')).length, 1, 'measured between probes');
    assert.ok(measured.type === 'nap' && measured.ms < livenessIntervalMs, `napped ${measured.type === 'nap' ? measured.ms : '?'} ms, sooner than the liveness tick`);
    assert.deepEqual(measured.type === 'nap' && measured.wake, [], 'still below every threshold it was below');
    h.store.update(primaryId, { usage: near });
    h.dataPlane.usage_ = { dataBytes: Math.round(0.96 * 10 * gb), walBytes: 0, filesystem };
    const crossed = await step(instanceMachine, 'running', primaryId, h, { data: { lastProbeMs: h.clock.now, lastUsageMs: h.clock.now - 1_000 } });
    assert.deepEqual(crossed.type === 'nap' && crossed.wake, [{ kind: 'cluster', entityId: clusterId }], 'the crossing wakes the cluster');
    // A fast writer just short of the threshold: 94 % to 94.8 % in 250 ms is past it within the lead.
    const fast = fullHarness(94);
    fast.dataPlane.usage_ = { dataBytes: Math.round(0.948 * 10 * gb), walBytes: 0, filesystem };
    const ahead = await step(instanceMachine, 'running', primaryId, fast, { data: { lastProbeMs: fast.clock.now, lastUsageMs: fast.clock.now - 250 } });
    assert.deepEqual(ahead.type === 'nap' && ahead.wake, [{ kind: 'cluster', entityId: clusterId }], 'about to cross at the growth measured: the cluster is woken');
    const recorded = (await fast.store.instance(primaryId))?.usage;
    assert.equal(recorded?.growthBytesPerSecond, Math.round(((Math.round(0.948 * 10 * gb) - Math.round(0.94 * 10 * gb)) * 1000) / 250), 'the growth is recorded with the figure');
    const far = fullHarness(10);
    const quiet = await step(instanceMachine, 'running', primaryId, far, { data: { lastProbeMs: far.clock.now, lastUsageMs: far.clock.now } });
    assert.deepEqual(quiet, { type: 'nap', ms: livenessIntervalMs }, 'far from full: no measurement, the liveness tick');
    // A primary whose exit is watched ticks only for its probes, but near full still for its measurements.
    const watched = fullHarness(90);
    watched.dataPlane.watched = true;
    watched.dataPlane.usage_ = near;
    const soon = await step(instanceMachine, 'running', primaryId, watched, { data: { lastProbeMs: watched.clock.now, lastUsageMs: watched.clock.now - 50_000 } });
    assert.ok(soon.type === 'nap' && soon.ms < livenessIntervalMs, `napped ${soon.type === 'nap' ? soon.ms : '?'} ms: to the next measurement, not the next probe`);
  });

  test('a fast writer just short of the threshold: read-only a lead ahead, said with its growth; it stays read-only where it stopped', async () => {
    const h = fullHarness(94.6);
    const crossing = { dataBytes: Math.round(0.946 * 10 * gb), walBytes: 0, filesystem, growthBytesPerSecond: 200 * 1024 ** 2 };
    h.store.update(primaryId, { usage: crossing });
    const stopped = { dataBytes: Math.round(0.948 * 10 * gb), walBytes: 0, filesystem };
    h.dataPlane.usage_ = stopped;
    const full = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [], storageWarned: true } });
    assert.equal(full.type === 'nap' && full.code, 'storage_read_only');
    assert.match(full.type === 'nap' ? (full.reason ?? '') : '', /^storage is 94\.8 % .* full, growing 200 MB\/s: at that pace past 95 % within 300 ms: the primary is read-only/);
    assert.equal(h.store.storageFull?.percent, 94.8);
    const data = { syncStandbys: [], storageWarned: true, readOnlyApplied: true };
    assert.equal((await step(clusterMachine, 'running', clusterId, h, { data })).type === 'nap' && h.store.storageFull?.percent, 94.8, 'the crossing figure again: still full');
    h.store.update(primaryId, { usage: stopped });
    const steady = await step(clusterMachine, 'running', clusterId, h, { data });
    assert.equal(steady.type === 'nap' && steady.code, undefined, 'measured where it stopped, short of 95 %: still read-only, not writable at once');
    h.store.update(primaryId, { usage: { ...stopped, dataBytes: Math.round(0.9 * 10 * gb) } });
    const dropped = await step(clusterMachine, 'running', clusterId, h, { data });
    assert.equal(dropped.type === 'nap' && dropped.code, 'storage_writable', 'below where it stopped: writable');
  });

  test('autogrow: past its threshold it grows by its step up to the ceiling, then says once that it is at the ceiling', async () => {
    const h = fullHarness(91);
    h.store.autogrow = { maxGb: 22, thresholdPercent: 90, stepPercent: 50 };
    const grown = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [], storageWarned: true } });
    assert.equal(grown.type === 'nap' && grown.code, 'storage_autogrown');
    assert.equal(h.store.storageGb, 15, '10 GB + 50 %');
    // The same bytes, measured against 15 GB, are below the threshold: nothing more until it fills again.
    h.store.update(primaryId, { usage: { dataBytes: Math.round(0.95 * 15 * gb), walBytes: 0, filesystem } });
    const again = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [], storageWarned: true } });
    assert.equal(again.type === 'nap' && again.code, 'storage_read_only', 'at 95 % of 15 GB read-only comes first');
    h.store.update(primaryId, { usage: { dataBytes: Math.round(0.92 * 15 * gb), walBytes: 0, filesystem } });
    h.store.storageFull = null;
    const second = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [], storageWarned: true } });
    assert.equal(second.type === 'nap' && second.code, 'storage_autogrown');
    assert.equal(h.store.storageGb, 22, 'the step is cut at the ceiling');
    h.store.update(primaryId, { usage: { dataBytes: Math.round(0.92 * 22 * gb), walBytes: 0, filesystem } });
    const ceiling = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [], storageWarned: true } });
    assert.equal(ceiling.type === 'nap' && ceiling.code, 'storage_autogrow_held');
    assert.match(ceiling.type === 'nap' ? (ceiling.reason ?? '') : '', /ceiling of 22 GB/);
    const held = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [], storageWarned: true, autogrowHeld: 'it is at its ceiling of 22 GB' } });
    assert.equal(held.type === 'nap' && held.code, undefined, 'said once');
    assert.equal(h.store.calls.filter((call) => call.startsWith('growStorage')).length, 2);
  });
});

describe('the freeze (docs/CONTROLS.md "Freeze")', () => {
  const streaming = { ...running, inRecovery: true, streaming: true };
  const napData = <D>(outcome: Outcome<string, D>): D | undefined => (outcome.type === 'nap' ? outcome.data : undefined);

  test("a new cluster's start naps while frozen (said once), making no instance; after the thaw it makes them", async () => {
    const h = harness();
    h.store.replicas = 1;
    h.freeze.isFrozen = true;
    const held = await step(clusterMachine, 'start', clusterId, h);
    assert.deepEqual([held.type, held.type === 'nap' && held.ms, held.code], ['nap', freezeNapMs, 'held_by_freeze']);
    const again = await step(clusterMachine, 'start', clusterId, h, { data: napData(held) as ClusterData });
    assert.deepEqual([again.type, again.code], ['nap', undefined], 'a long freeze makes one event');
    assert.deepEqual(h.store.calls, [], 'no instance while frozen');
    h.freeze.isFrozen = false;
    const thawed = await step(clusterMachine, 'start', clusterId, h, { data: napData(again) as ClusterData });
    assert.equal(thawed.type === 'hop' && thawed.label, 'waitInstances');
    assert.deepEqual(h.store.calls, ['createInstance 0 primary', 'createInstance 1 replica']);
  });

  test('a destroy of a frozen new cluster is not held', async () => {
    const h = harness();
    h.freeze.isFrozen = true;
    const outcome = await step(clusterMachine, 'start', clusterId, h, { signals: ['destroy'] });
    assert.equal(outcome.type === 'hop' && outcome.label, 'destroy');
  });

  test("a change's apply naps while frozen (said once), writing nothing; after the thaw it applies", async () => {
    const h = harness();
    h.store.add(primaryId, 'primary', 0, 'running');
    h.store.change = { clusterId, revision: 2, order: 'replicasFirst' };
    h.freeze.isFrozen = true;
    const held = await step(changeMachine, 'apply', 'ch_test', h);
    assert.deepEqual([held.type, held.type === 'nap' && held.ms, held.code], ['nap', freezeNapMs, 'held_by_freeze']);
    const again = await step(changeMachine, 'apply', 'ch_test', h, { data: napData(held) as ChangeData });
    assert.deepEqual([again.type, again.code], ['nap', undefined]);
    assert.deepEqual(h.dataPlane.calls, [], 'nothing written while frozen');
    h.freeze.isFrozen = false;
    const applied = await step(changeMachine, 'apply', 'ch_test', h, { data: napData(again) as ChangeData });
    assert.equal(applied.type === 'hop' && applied.label, 'scale');
    assert.deepEqual(h.dataPlane.calls, [`configure ${primaryId}`]);
  });

  test("a change waiting for its replicas does not fail while frozen, however long: its wait starts again after the thaw", async () => {
    const h = harness();
    h.store.replicas = 2;
    h.store.add(primaryId, 'primary', 0, 'running');
    h.store.add(replicaId, 'replica', 1, 'running', 5001, { observed: streaming });
    h.store.change = { clusterId, revision: 2, order: 'replicasFirst' };
    h.freeze.isFrozen = true;
    const longAgo = { sinceMs: h.clock.now - scaleWaitMsMax - 1 };
    const held = await step(changeMachine, 'scale', 'ch_test', h, { data: longAgo });
    assert.deepEqual([held.type, held.type === 'nap' && held.ms], ['nap', freezeNapMs], 'not failed past its bound');
    assert.equal(napData(held)?.sinceMs, undefined, 'the wait restarts after the thaw');
    h.freeze.isFrozen = false;
    const waiting = await step(changeMachine, 'scale', 'ch_test', h, { data: napData(held) as ChangeData });
    assert.deepEqual([waiting.type, napData(waiting)?.sinceMs], ['nap', h.clock.now]);
  });

  test('scaling up waits while frozen; a failed replica is still replaced', async () => {
    const h = harness();
    h.store.replicas = 2;
    h.store.add(primaryId, 'primary', 0, 'running');
    h.store.add(replicaId, 'replica', 1, 'running', 5001, { observed: streaming });
    h.freeze.isFrozen = true;
    const held = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [replicaId] } });
    assert.equal(held.type, 'nap');
    assert.deepEqual(h.store.calls, [], 'no replica added while frozen');
    h.freeze.isFrozen = false;
    const scaled = await step(clusterMachine, 'running', clusterId, h, { data: { syncStandbys: [replicaId] } });
    assert.equal(scaled.code, 'replicas_added');
    assert.deepEqual(h.store.calls, ['addReplica 2']);

    const failed = harness();
    failed.freeze.isFrozen = true;
    failed.store.add(primaryId, 'primary', 0, 'running');
    failed.store.add(replicaId, 'replica', 1, 'failed');
    await step(clusterMachine, 'running', clusterId, failed);
    assert.deepEqual(failed.store.calls, [`replaceInstance ${replicaId} replica`], 'replacement is not held by the freeze');
  });

  test('failover and switchover run while frozen, and never ask the freeze', async () => {
    const h = harness();
    h.freeze.isFrozen = true;
    h.store.add(primaryId, 'primary', 0, 'down');
    h.store.add(replicaId, 'replica', 1, 'running', 5001, { observed: streaming });
    const failover = await step(clusterMachine, 'running', clusterId, h);
    assert.equal(failover.type === 'hop' && failover.label, 'fence');
    const fenced = await step(clusterMachine, 'fence', clusterId, h, { data: { oldPrimaryId: primaryId } });
    assert.equal(fenced.type === 'hop' && fenced.label, 'pick');
    h.store.update(primaryId, { fenced: true, observed: { ...running, lsn: '0/3000000' } });
    h.dataPlane.statuses.set(replicaId, { ...streaming, receiveLsn: '0/3000000' });
    const picked = await step(clusterMachine, 'pick', clusterId, h, { data: { oldPrimaryId: primaryId } });
    assert.equal(picked.type === 'hop' && picked.label, 'promote');

    const s = harness();
    s.freeze.isFrozen = true;
    s.store.add(primaryId, 'primary', 0, 'running');
    s.store.add(replicaId, 'replica', 1, 'running', 5001, { observed: streaming });
    const begun = await step(clusterMachine, 'running', clusterId, s, { signals: ['switchover'] });
    assert.equal(begun.type === 'hop' && begun.label, 'pause');
    assert.deepEqual([h.freeze.asked, s.freeze.asked], [0, 0], 'the emergency paths do not consult the freeze');
  });

  test('the backup schedule pauses while frozen (said once): no backup started, none removed; after the thaw it goes on', async () => {
    const h = harness();
    h.backups.candidates = [{ clusterId, lastBackupAtMs: null, backupRunning: false, intervalMs: null }];
    h.freeze.isFrozen = true;
    const held = await step(backupScheduleMachine, 'tend', 'cell', h, { data: { retentionAfterClusterId: 'cl_cursoraaaaaa' } as BackupScheduleData });
    assert.deepEqual([held.type, held.type === 'nap' && held.ms, held.code], ['nap', freezeNapMs, 'held_by_freeze']);
    assert.equal(napData(held)?.retentionAfterClusterId, 'cl_cursoraaaaaa', 'the retention cursor is kept');
    const again = await step(backupScheduleMachine, 'tend', 'cell', h, { data: napData(held) as BackupScheduleData });
    assert.deepEqual([again.type, again.code], ['nap', undefined]);
    assert.deepEqual([h.backups.calls, h.dataPlane.calls], [[], []]);
    h.freeze.isFrozen = false;
    await step(backupScheduleMachine, 'tend', 'cell', h);
    assert.deepEqual(h.backups.calls.filter((call) => call.startsWith('createBackup')), [`createBackup ${clusterId} scheduled`]);
  });
});
