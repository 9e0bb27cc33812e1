import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { LocalDataPlane } from '../dataplane/local/driver.js';
import { HostUsageWatch } from '../dataplane/local/host-usage.js';
import { ensureGuard } from './guard.js';
import { Heartbeat } from './heartbeat.js';
import { type AgentIdentity, loadIdentity } from './identity.js';
import { Lease, leaseFileExpiryNs, monotonicNowNs, readLeaseFile } from './lease.js';
import { AgentOperations, InstanceLocks } from './operations.js';
import { startAgentServer } from './server.js';
import { SpecBook } from './specs.js';
import { Supervisor } from './supervisor.js';

/**
 * `cellar agent`: the data plane of one host (docs/HOSTS.md). It wires the identity, the local
 * driver, the operations listener, the heartbeat and its lease, the guard and supervision. Its
 * servers and its guard outlive it: an agent started again adopts what runs, restarting nothing.
 */

// The guard's own entry, beside the `cellar` one: it loads nothing but the guard.
const guardScript = fileURLToPath(new URL('../bin/cellar-guard.js', import.meta.url));

export interface AgentOptions {
  readonly dataDir: string;
  /** The backup store; null: `DIR/backups`. */
  readonly backupDir: string | null;
  readonly config: Config;
  readonly log: Logger;
}

export interface RunningAgent {
  readonly identity: AgentIdentity;
  readonly guardPid: number;
  stop(): Promise<void>;
}

export async function runAgent(options: AgentOptions): Promise<RunningAgent> {
  const { config, log } = options;
  const dataDir = resolve(options.dataDir);
  const identity = await loadIdentity(dataDir);
  const backupDir = options.backupDir === null ? join(dataDir, 'backups') : resolve(options.backupDir);
  const driver = await LocalDataPlane.fromConfig({ ...config, dataDir, backupDir }, log.child({ component: 'dataplane' }));
  const specs = await SpecBook.open(dataDir);
  const lease = new Lease();
  await restoreLease(dataDir, lease, log);
  const guardPid = await ensureGuard(dataDir, guardScript);
  const locks = new InstanceLocks();
  const heartbeat = new Heartbeat({ dataDir, identity, driver, specs, lease, settings: config.hosts, log: log.child({ component: 'heartbeat' }) });
  const operations = new AgentOperations(driver, specs, lease, locks);
  // After a promote (or any change) the next beat carries no status taken before it: the control
  // plane then asks, rather than routing on a stale "in recovery".
  operations.onChanged = (instanceId) => heartbeat.forgetStatus(instanceId);
  const server = await startAgentServer({ identity, operations, lease, log: log.child({ component: 'agent-server' }) });
  const supervisor = new Supervisor({ driver, specs, lease, locks, log: log.child({ component: 'supervisor' }) });
  // Its own filesystems, sent with the heartbeat; the control plane keeps them on the host's row.
  const usageWatch = new HostUsageWatch({ record: (usage) => heartbeat.offerUsage(usage), directories: { data: dataDir, backups: driver.backupDir }, intervalMs: config.storage.usageIntervalMs, log: log.child({ component: 'host-usage' }) });
  heartbeat.start();
  supervisor.start();
  usageWatch.start();
  const records = specs.all();
  const running = (await Promise.all(records.map(({ spec }) => driver.alive(spec.instanceId).catch(() => false)))).filter(Boolean).length;
  log.info({ hostId: identity.hostId, address: identity.address, agentPort: identity.agentPort, guardPid, instances: records.length, running, leaseLeftMs: lease.leftMs() }, 'agent running; instances adopted as they are');
  return {
    identity,
    guardPid,
    async stop() {
      await usageWatch.stop();
      await supervisor.stop();
      await heartbeat.stop();
      await server.close();
      log.info({}, 'agent stopped; its servers and the lease guard keep running');
    },
  };
}

/** The lease a previous run of the agent was granted still holds on this boot's monotonic clock. */
async function restoreLease(dataDir: string, lease: Lease, log: Logger): Promise<void> {
  try {
    const file = await readLeaseFile(dataDir);
    if (file === undefined) return;
    const expiresAtNs = await leaseFileExpiryNs(file);
    if (expiresAtNs > monotonicNowNs()) lease.restore(expiresAtNs);
  } catch (error) {
    log.warn({ err: error instanceof Error ? error.message : String(error) }, 'the lease file cannot be read; starting without a lease');
  }
}
