import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { BaseBackupInfo } from '../src/dataplane/dataplane.js';
import type { ClusterId, InstanceId } from '../src/lib/ids.js';
import { backupMachine } from '../src/machines/backup.js';
import { clusterMachine } from '../src/machines/cluster.js';
import { instanceMachine } from '../src/machines/instance.js';
import type { BackupRecord, BackupRecords, InstanceRecord, MachineStore } from '../src/machines/ports.js';
import { PgBackupRecords } from '../src/store/backups.js';
import { insertCluster } from '../src/store/clusters.js';
import { PgMachineStore } from '../src/store/machine-store.js';
import { createOrg } from '../src/store/tenancy.js';
import { FakeBackups, FakeStore, clusterId as fakeClusterId } from './helpers/fakes.js';
import { hostMachine } from '../src/machines/host.js';
import { ensureLocalHost } from '../src/store/local-host.js';
import { type TestStore, startTestStore } from './helpers/store.js';

/**
 * The store ports the machines use most, one set of cases run against the in-memory fakes of
 * test/machines.test.ts and against the real Pg stores on a real store: the fakes answer as the
 * store does, so the machines' unit tests prove something about the real thing.
 */

interface Subject {
  readonly store: MachineStore;
  readonly backups: BackupRecords;
  /** A live cluster without instances or backups. */
  readonly cluster: ClusterId;
}

interface Implementation {
  readonly name: string;
  setUp(): Promise<void>;
  tearDown(): Promise<void>;
  /** A fresh subject per case, so cases do not see each other's rows. */
  subject(): Promise<Subject>;
}

/** 41000-41039: free ports are probed, so any range of unprivileged ports does. */
const portMin = 41_000;
const portMax = 41_039;

let realStore: TestStore | undefined;
let clustersMade = 0;

const implementations: Implementation[] = [
  {
    name: 'in-memory fakes',
    setUp: async () => undefined,
    tearDown: async () => undefined,
    subject: async () => ({ store: new FakeStore(), backups: new FakeBackups(), cluster: fakeClusterId }),
  },
  {
    name: 'Pg stores',
    setUp: async () => {
      realStore = await startTestStore();
      // Clusters are placed on hosts: the store's one host, as `cellar up` registers it.
      await ensureLocalHost(realStore.pool, { memoryMb: 1_048_576, diskGb: 1_048_576, slots: 1_000, agentPort: 8435 }, hostMachine);
    },
    tearDown: async () => {
      await realStore?.close();
    },
    subject: async () => {
      const pool = (realStore as TestStore).pool;
      clustersMade += 1;
      const org = await createOrg(pool, `contract-${clustersMade}`);
      assert.ok(org !== null);
      const cluster = await insertCluster(pool, clusterMachine, org.id, 'app', { size: 'small', replicas: 1, storageGb: 10, pgVersion: 15, durability: 'sync' });
      return { store: new PgMachineStore(pool, portMin, portMax, instanceMachine), backups: new PgBackupRecords(pool, backupMachine), cluster };
    },
  },
];

/** What the machines read of an instance, without its id (made by the store). */
function shape(instance: InstanceRecord | null): Partial<InstanceRecord> | null {
  if (instance === null) return null;
  const { ordinal, role, port, fenced, machineLabel, machineError } = instance;
  return { ordinal, role, port, fenced, machineLabel, machineError };
}

/** What the machines read of a backup, without its id and times (made by the store). */
function backupShape(record: BackupRecord): Partial<BackupRecord> & { finished: boolean } {
  const { status, sourceInstanceId, startWalFile, verified } = record;
  return { status, sourceInstanceId, startWalFile, verified, finished: record.finishedAtMs !== null };
}

const taken: BaseBackupInfo = { startLsn: '0/2000028', endLsn: '0/2000100', timeline: 1, startWalFile: '000000010000000000000002', bytes: 1024, durationMs: 10 };

async function twoInstances(subject: Subject): Promise<[InstanceRecord, InstanceRecord]> {
  await subject.store.createInstance(subject.cluster, 0, 'primary');
  await subject.store.createInstance(subject.cluster, 1, 'replica');
  const [primary, replica] = await subject.store.instances(subject.cluster);
  assert.ok(primary !== undefined && replica !== undefined);
  return [primary, replica];
}

for (const implementation of implementations) {
  describe(`store ports: ${implementation.name}`, () => {
    before(() => implementation.setUp());
    after(() => implementation.tearDown());

    test('createInstance is a no-op for an ordinal taken; instances come in ordinal order, new ones at start without a port', async () => {
      const subject = await implementation.subject();
      await subject.store.createInstance(subject.cluster, 1, 'replica');
      await subject.store.createInstance(subject.cluster, 0, 'primary');
      await subject.store.createInstance(subject.cluster, 1, 'primary');
      const instances = await subject.store.instances(subject.cluster);
      assert.deepEqual(instances.map(shape), [
        { ordinal: 0, role: 'primary', port: null, fenced: false, machineLabel: 'start', machineError: null },
        { ordinal: 1, role: 'replica', port: null, fenced: false, machineLabel: 'start', machineError: null },
      ]);
      assert.deepEqual(shape(await subject.store.instance((instances[1] as InstanceRecord).id)), shape(instances[1] as InstanceRecord));
    });

    test('allocatePort gives each instance its own port, the same one when asked again, and the instance shows it', async () => {
      const subject = await implementation.subject();
      const [primary, replica] = await twoInstances(subject);
      const first = await subject.store.allocatePort(primary.id);
      assert.equal(await subject.store.allocatePort(primary.id), first, 'asked again, the same port');
      const second = await subject.store.allocatePort(replica.id);
      assert.notEqual(second, first, 'two instances never share a port');
      assert.equal((await subject.store.instance(primary.id))?.port, first);
    });

    test('a fenced instance reads back fenced; swapPrimary makes the target the only, unfenced primary', async () => {
      const subject = await implementation.subject();
      const [primary, replica] = await twoInstances(subject);
      await subject.store.setFenced(replica.id, true);
      assert.equal((await subject.store.instance(replica.id))?.fenced, true);
      await subject.store.swapPrimary(subject.cluster, replica.id);
      const after = await subject.store.instances(subject.cluster);
      assert.deepEqual(after.map((instance) => [instance.id, instance.role, instance.fenced]), [
        [primary.id, 'replica', false],
        [replica.id, 'primary', false],
      ]);
    });

    test('addReplica takes the next ordinal, past deleted instances, and makes an unplaced replica at start', async () => {
      const subject = await implementation.subject();
      const [, replica] = await twoInstances(subject);
      await subject.store.markInstanceDeleted(replica.id);
      const added = await subject.store.addReplica(subject.cluster);
      const again = await subject.store.addReplica(subject.cluster);
      assert.notEqual(added, again, 'each call adds one');
      const made = await subject.store.instance(added);
      assert.deepEqual(shape(made), { ordinal: 2, role: 'replica', port: null, fenced: false, machineLabel: 'start', machineError: null });
      assert.deepEqual([made?.hostId, made?.hostState], [null, null], 'not placed yet: no host, no host state');
      assert.equal((await subject.store.instance(again))?.ordinal, 3);
    });

    test('a replica taken out of the routes reads back out; one asked to delete itself reads back destroyRequested before its machine acts', async () => {
      const subject = await implementation.subject();
      const [primary, replica] = await twoInstances(subject);
      assert.deepEqual([replica.inRoute, replica.destroyRequested], [true, false], 'a new instance is routed and not being deleted');
      await subject.store.setInRoute(replica.id, false);
      await subject.store.requestDestroy('instance', replica.id);
      const after = await subject.store.instances(subject.cluster);
      assert.deepEqual(after.map((instance) => [instance.id, instance.inRoute, instance.destroyRequested, instance.machineLabel]), [
        [primary.id, true, false, 'start'],
        [replica.id, false, true, 'start'],
      ]);
      assert.equal((await subject.store.instance(replica.id))?.destroyRequested, true);
    });

    test('replaceInstance asks the replaced one to delete itself and makes one new replica, once however often it is asked', async () => {
      const subject = await implementation.subject();
      const [, replica] = await twoInstances(subject);
      await subject.store.replaceInstance(replica.id, 'replica', true);
      await subject.store.replaceInstance(replica.id, 'replica', true);
      const after = await subject.store.instances(subject.cluster);
      assert.deepEqual(after.map((instance) => [instance.ordinal, instance.role, instance.destroyRequested]), [
        [0, 'primary', false],
        [1, 'replica', true],
        [2, 'replica', false],
      ]);
    });

    test('a deleted instance is gone from instances and instance', async () => {
      const subject = await implementation.subject();
      const [primary, replica] = await twoInstances(subject);
      await subject.store.markInstanceDeleted(replica.id);
      assert.deepEqual((await subject.store.instances(subject.cluster)).map((instance) => instance.id), [primary.id]);
      assert.equal(await subject.store.instance(replica.id as InstanceId), null);
    });

    test('a backup runs, is taken, checked and deleted: backupsOf lists it only once taken and until deleted', async () => {
      const subject = await implementation.subject();
      const [primary] = await twoInstances(subject);
      const id = await subject.backups.createBackup(subject.cluster, 'manual');
      const running = await subject.backups.backup(id);
      assert.equal(running.clusterId, subject.cluster);
      assert.deepEqual(backupShape(running), { status: 'running', sourceInstanceId: null, startWalFile: null, verified: null, finished: false });
      assert.deepEqual(await subject.backups.backupsOf(subject.cluster), []);
      assert.deepEqual(await subject.backups.clustersWithBackups(null, 10), [], 'a running backup does not count yet');

      await subject.backups.recordTaken(id, primary.id, taken);
      assert.deepEqual(backupShape(await subject.backups.backup(id)), { status: 'completed', sourceInstanceId: primary.id, startWalFile: taken.startWalFile, verified: null, finished: true });
      assert.deepEqual((await subject.backups.backupsOf(subject.cluster)).map((record) => record.id), [id]);
      assert.deepEqual(await subject.backups.clustersWithBackups(null, 10), [subject.cluster]);

      await subject.backups.recordCheck(id, true, 'restored and queried');
      assert.equal((await subject.backups.backup(id)).verified, true);

      await subject.backups.markDeleted(id);
      assert.equal((await subject.backups.backup(id)).status, 'deleted');
      assert.deepEqual(await subject.backups.backupsOf(subject.cluster), []);
    });

    test('a failed backup is listed with its cluster, as retention must see it', async () => {
      const subject = await implementation.subject();
      const id = await subject.backups.createBackup(subject.cluster, 'scheduled');
      await subject.backups.recordFailed(id, 'pg_basebackup exited 1');
      assert.deepEqual(backupShape(await subject.backups.backup(id)), { status: 'failed', sourceInstanceId: null, startWalFile: null, verified: null, finished: true });
      assert.deepEqual((await subject.backups.backupsOf(subject.cluster)).map((record) => record.id), [id]);
      assert.deepEqual(await subject.backups.clustersWithBackups(null, 10), [subject.cluster]);
      assert.deepEqual(await subject.backups.clustersWithBackups(subject.cluster, 10), [], 'the cursor is past it');
    });
  });
}
