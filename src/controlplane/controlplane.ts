import { statfs } from 'node:fs/promises';
import { hostname, totalmem } from 'node:os';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { AgentListener } from '../api/agent-listener.js';
import { buildApi } from '../api/server.js';
import type { BackupSettings, Config, HaSettings } from '../config.js';
import type { DataPlane } from '../dataplane/dataplane.js';
import { LocalDataPlane } from '../dataplane/local/driver.js';
import { HostUsageWatch } from '../dataplane/local/host-usage.js';
import { HostRouter } from '../dataplane/remote/router.js';
import { Engine, register } from '../engine/engine.js';
import { insertMachine, newMachine, wakeMachines } from '../store/machines-table.js';
import type { Lane } from '../engine/machine.js';
import { systemClock, systemRandom } from '../lib/clock.js';
import type { Credentials } from '../lib/credentials.js';
import { randomToken } from '../lib/ids.js';
import { type ClusterSpec, defaultDurability, defaultReplicas, defaultSize, defaultStorageGb } from '../lib/sizes.js';
import { backupMachine } from '../machines/backup.js';
import { backupScheduleEntity, backupScheduleMachine } from '../machines/backup-schedule.js';
import { clusterMachine } from '../machines/cluster.js';
import { changeMachine } from '../machines/change.js';
import { hostMachine } from '../machines/host.js';
import { instanceMachine } from '../machines/instance.js';
import type { MachinePorts } from '../machines/ports.js';
import { rolloutMachine } from '../machines/rollout.js';
import { type WarmPoolPorts, warmPoolEntity, warmPoolMachine } from '../machines/warmpool.js';
import { ensureEmbeddedStore } from '../store/embedded.js';
import { PgBackupRecords } from '../store/backups.js';
import { PgHostRecords } from '../store/drain.js';
import { PgFreezeGate } from '../store/freeze.js';
import { type LocalHostCapacity, StoreHostDirectory, ensureLocalHost, recordHostUsage } from '../store/local-host.js';
import { PgMachineStore } from '../store/machine-store.js';
import { migrate } from '../store/migrate.js';
import { diskReserveOf } from '../store/config.js';
import { PgRolloutRecords, storeConfigChanges } from '../store/rollouts.js';
import { type Pool, openPool } from '../store/pool.js';
import { PgWarmPoolStore } from '../store/warm-pool.js';
import { PgCreateAdmission } from '../store/create-admission.js';
import { type RodReader, RodValues, localCell, processRodDefaults } from '../store/rods.js';
import { FlagSnapshotReader } from '../store/flag-snapshot.js';
import { processFlagCatalogue } from '../config.js';
import { type AgentSide, prepareAgentSide } from './agents.js';
import { ensureCredentials } from './credentials.js';
import { checkStartPaths } from './preflight.js';
import { StoreSupervisor } from './store-supervisor.js';

/**
 * The control plane of one cell: store connection, engine and API, wired together. Stateless:
 * several may run against one store. Stopping it leaves databases and the store running.
 */
export interface ControlPlane {
  readonly storeUrl: string;
  readonly apiUrl: string | null;
  readonly credentials: Credentials | null;
  readonly engine: Engine | null;
  stop(): Promise<void>;
}

export interface ControlPlaneOptions {
  readonly api: boolean;
  readonly engine: boolean;
}

export async function startControlPlane(config: Config, log: Logger, options: ControlPlaneOptions): Promise<ControlPlane> {
  await checkStartPaths(config);
  const storeUrl = config.storeUrl ?? (await ensureEmbeddedStore(config));
  const supervisor = config.storeUrl === null ? await StoreSupervisor.start(config, log.child({ component: 'store' })) : null;
  const pool = openPool(storeUrl);
  let engine: Engine | null = null;
  let api: FastifyInstance | null = null;
  let agentListener: AgentListener | null = null;
  let agentSide: AgentSide | null = null;
  let hostUsage: HostUsageWatch | null = null;
  const rods = new RodValues({ pool, defaults: processRodDefaults(config), cell: localCell, log: log.child({ component: 'rods' }) });
  let flags: FlagSnapshotReader | null = null;
  try {
    const applied = await migrate(pool);
    if (applied.length > 0) log.info({ applied }, 'store migrations applied');
    // Read before anything chooses by a flag; re-read on cellar_controls, polled every normal tick.
    flags = new FlagSnapshotReader({ pool, log: log.child({ component: 'flags' }), catalogue: processFlagCatalogue(config), pollMs: config.normalTickMs });
    await flags.start();
    const flagReader = flags;
    const templateChoice = async (clusterId: string): Promise<boolean> => (await flagReader.evaluateForCluster('provision-from-template', clusterId)).value === true;
    const dataPlane = await LocalDataPlane.fromConfig(config, log.child({ component: 'dataplane' }), templateChoice);
    if (config.hosts.localHost) {
      const hostId = await ensureLocalHost(pool, await localHostCapacity(config, dataPlane.dataDir), hostMachine);
      const directories = { data: dataPlane.dataDir, backups: dataPlane.backupDir, home: config.home };
      hostUsage = new HostUsageWatch({ record: (usage) => recordHostUsage(pool, hostId, usage), directories, intervalMs: config.storage.usageIntervalMs, log: log.child({ component: 'host-usage' }) });
    }
    await ensureSingletonMachines(pool);
    agentSide = await prepareAgentSide(config, log, pool, options.api);
    // Each operation goes to its instance's host: the local driver here, an agent elsewhere.
    const router = new HostRouter(dataPlane, new StoreHostDirectory(pool), (host) => (agentSide as AgentSide).clientFor(host), agentSide.reachability);
    if (options.engine) {
      await rods.start();
      engine = makeEngine(config, log, pool, storeUrl, router, flags, rods);
      wakeOnExit(dataPlane, pool, log.child({ component: 'exit-watch' }));
      const ticking = engine;
      rods.onChange(() => ticking.retick());
    }
    // The API listens before the engine starts, so a busy port fails start-up with nothing running.
    api = options.api ? await startApi(config, log, pool, dataPlane, engine, agentSide, flags) : null;
    // Heartbeats come to the process that serves the API; see docs/HOSTS.md on several control planes.
    agentListener = options.api ? await agentSide.listen() : null;
    engine?.start();
    hostUsage?.start();
    const apiUrl = api === null ? null : `http://${config.apiHost}:${config.apiPort}`;
    const credentials = apiUrl === null ? null : await ensureCredentials(pool, config.home, apiUrl);
    const running = { api, engine, agentListener };
    return {
      storeUrl,
      apiUrl,
      credentials,
      engine,
      async stop() {
        await hostUsage?.stop();
        await supervisor?.stop();
        await running.agentListener?.close();
        await running.api?.close();
        await running.engine?.stop();
        await rods.stop();
        await agentSide?.close();
        await flags?.stop();
        await pool.end();
      },
    };
  } catch (error) {
    await hostUsage?.stop();
    await supervisor?.stop();
    await agentListener?.close();
    await api?.close();
    await engine?.stop();
    await rods.stop();
    await agentSide?.close();
    await flags?.stop();
    await pool.end();
    throw error;
  }
}

/**
 * A postmaster of this host that exits wakes its instance's machine at once: the machine ticks only
 * for its probes (docs/ARCHITECTURE.md, "Liveness"). A wake the store refuses is logged; the
 * machine's next probe, within a second, finds the server gone anyway.
 */
function wakeOnExit(dataPlane: LocalDataPlane, pool: Pool, log: Logger): void {
  dataPlane.onExit((instanceId) => {
    wakeMachines(pool, [{ kind: instanceMachine.kind, entityId: instanceId }]).catch((error: unknown) => {
      log.warn({ instance: instanceId, err: error instanceof Error ? error.message : String(error) }, 'could not wake the machine of an instance whose server exited; its next probe finds it gone');
    });
  });
}

function warmPoolPorts(config: Config, pool: Pool, dataPlane: DataPlane, rods: RodReader): WarmPoolPorts {
  const spec: ClusterSpec = {
    size: defaultSize,
    replicas: defaultReplicas,
    storageGb: defaultStorageGb,
    pgVersion: Math.max(...dataPlane.versions()),
    durability: defaultDurability(defaultReplicas),
  };
  return { store: new PgWarmPoolStore(pool, clusterMachine, diskReserveOf(config.storage)), target: () => rods.value('warm-pool.size'), spec };
}

/** What the control plane's own machine offers: its memory, the data directory's disk, one slot per instance port. */
async function localHostCapacity(config: Config, dataDir: string): Promise<LocalHostCapacity> {
  const stats = await statfs(dataDir);
  const mib = 1024 ** 2;
  return {
    memoryMb: Math.max(1, Math.floor(totalmem() / mib)),
    diskGb: Math.max(1, Math.floor((stats.blocks * stats.bsize) / 1024 ** 3)),
    slots: config.instancePortMax - config.instancePortMin + 1,
    agentPort: config.hosts.agentPort,
  };
}

/** The cell's singleton machines exist once, whichever control plane starts first. */
async function ensureSingletonMachines(pool: Pool): Promise<void> {
  await insertMachine(pool, newMachine(warmPoolMachine, warmPoolEntity, null));
  await insertMachine(pool, newMachine(backupScheduleMachine, backupScheduleEntity, null));
}

/**
 * The settings the machines read, with the fields that are rods read live at each use (so the
 * next backup, the next failover decision, takes a new value); the rest as configured.
 */
function liveHa(ha: HaSettings, rods: RodReader): HaSettings {
  return {
    ...ha,
    get failoversMax() {
      return rods.value('ha.failovers-max');
    },
    get failoverWindowMs() {
      return rods.value('ha.failover-window-ms');
    },
  };
}

function liveBackupSettings(backups: BackupSettings, rods: RodReader): BackupSettings {
  return {
    ...backups,
    get maxRateBytesPerSecond() {
      return rods.value('backup.max-rate-bytes-per-second');
    },
    get verifyConcurrency() {
      return rods.value('backup.verify-concurrency');
    },
  };
}

function makeEngine(config: Config, log: Logger, pool: Pool, storeUrl: string, dataPlane: DataPlane, flags: FlagSnapshotReader, rods: RodReader): Engine {
  const freeze = new PgFreezeGate(pool);
  const ports: MachinePorts = {
    clock: systemClock,
    random: systemRandom,
    store: new PgMachineStore(pool, config.instancePortMin, config.instancePortMax, instanceMachine, { ...config.hosts, diskReserve: diskReserveOf(config.storage) }),
    dataPlane,
    ha: liveHa(config.ha, rods),
    backups: new PgBackupRecords(pool, backupMachine),
    backupSettings: liveBackupSettings(config.backups, rods),
    storage: config.storage,
    admission: new PgCreateAdmission(pool, () => rods.value('provisioning.creates-per-tick'), () => rods.value('engine.high-tick-ms')),
    flags,
    freeze,
  };
  const tickRods: Record<Lane, 'engine.high-tick-ms' | 'engine.normal-tick-ms'> = { high: 'engine.high-tick-ms', normal: 'engine.normal-tick-ms' };
  const engine = new Engine({
    pool,
    storeUrl,
    owner: `${hostname()}:${process.pid}:${randomToken(6)}`,
    registrations: [
      register(clusterMachine, ports),
      register(instanceMachine, ports),
      register(changeMachine, ports),
      register(backupMachine, ports),
      register(backupScheduleMachine, ports),
      register(warmPoolMachine, warmPoolPorts(config, pool, dataPlane, rods)),
      register(hostMachine, { hosts: new PgHostRecords(pool, config.hosts), lostMs: config.hosts.lostMs }),
      register(rolloutMachine, { clock: systemClock, rollouts: new PgRolloutRecords(pool, storeConfigChanges(changeMachine)), freeze, healthWaitMs: config.rolloutHealthWaitMs, ratePerMinuteCap: () => rods.value('rollout.clusters-per-minute') }),
    ],
    clock: systemClock,
    random: systemRandom,
    log: log.child({ component: 'engine' }),
    tickMs: (lane) => rods.value(tickRods[lane]),
    claimBatchMax: () => rods.value('engine.claims-per-tick'),
    leaseMs: config.leaseMs,
  });
  return engine;
}

async function startApi(config: Config, log: Logger, pool: Pool, dataPlane: LocalDataPlane, engine: Engine | null, agentSide: AgentSide | null, flags: FlagSnapshotReader): Promise<FastifyInstance> {
  const api = await buildApi({
    pool,
    log,
    versions: dataPlane.versions(),
    proxy: { host: '127.0.0.1', readWritePort: config.proxyReadWritePort, readOnlyPort: config.proxyReadOnlyPort },
    status: () => ({ engine: engine === null ? null : { steps: Object.fromEntries(engine.stepCounts), ticks: Object.fromEntries(engine.laneTicks) } }),
    embeddedStore: config.storeUrl === null,
    deletedBackupRetentionMs: config.backups.deletedRetentionMs,
    storagePolicy: {
      resizeStepGbMin: config.storage.resizeStepGbMin,
      resizeCooldownMs: config.storage.resizeCooldownMs,
      gbBytes: config.storage.gbBytes,
      readOnlyPercent: config.storage.readOnlyPercent,
      hostDiskReservePercent: config.storage.hostDiskReservePercent,
    },
    ...(agentSide === null ? {} : { hosts: agentSide.hostsApi }),
    rodDefaults: processRodDefaults(config),
    flags,
  });
  try {
    await api.listen({ host: config.apiHost, port: config.apiPort });
  } catch (error) {
    await api.close();
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE') throw new Error(`the API port ${config.apiHost}:${config.apiPort} is in use; set CELLAR_API_PORT to another port`);
    throw error;
  }
  return api;
}
