import { isIP } from 'node:net';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { hostDiskReservePercentDefault, hostDiskReservePercentMax, hostDiskReservePercentMin } from './lib/placement.js';
import { bytesPerStorageGb } from './lib/sizes.js';
import { type FlagDeclaration, flagCatalogue, withProcessDefaults } from './lib/flag-catalogue.js';

/**
 * The one place that reads process.env. Every value is parsed, typed and checked here, and every
 * bad value is reported at once, so a typo fails at start rather than deep inside a step.
 */
export interface Config {
  /** Credentials, logs and (unless CELLAR_DATA says otherwise) the data of this Cellar. */
  readonly home: string;
  /** Where Postgres data directories live; null means "derive from home" (see postgres/paths). */
  readonly dataDir: string | null;
  /** External cell store; null means the embedded one under home. */
  readonly storeUrl: string | null;
  readonly apiHost: string;
  readonly apiPort: number;
  /** The proxy's endpoints on 127.0.0.1: read-write (the primary) and read-only (a replica). */
  readonly proxyReadWritePort: number;
  readonly proxyReadOnlyPort: number;
  /** Prometheus metrics of the proxy at http://127.0.0.1:<port>/metrics. */
  readonly proxyAdminPort: number;
  /** Proxy throttles per cluster (control rods later): open connections, new connections per second, bytes per second each way (0: unlimited). */
  readonly proxyClusterConnectionsMax: number;
  readonly proxyClusterConnectsPerSecond: number;
  readonly proxyClusterBytesPerSecond: number;
  /** How long a new connection waits for a paused route or a connect token before it is refused. */
  readonly proxyWaitMsMax: number;
  /** A client must finish its startup (TLS, authentication, any wait) within this. */
  readonly proxyStartupMsMax: number;
  /** The proxy's one certificate (`*.<domain>`) is replaced when it has fewer days left than this; the proxy checks every `proxyCertificateCheckMs`. */
  readonly proxyCertificateRenewDays: number;
  readonly proxyCertificateCheckMs: number;
  /** The native relay (native/relay.c, when built) terminates TLS and relays connections past startup. */
  readonly proxyNativeRelay: boolean;
  /** Clusters are reachable with TLS as `<routeKey>.<domain>` (SNI and certificate names). */
  readonly domain: string;
  /** Inclusive range of 127.0.0.1 ports given to instances. */
  readonly instancePortMin: number;
  readonly instancePortMax: number;
  /** Extra bin directory holding a Postgres installation, searched first. */
  readonly pgBin: string | null;
  /** The CLI's view: where the API is and which token to use; null means read credentials. */
  readonly apiUrl: string | null;
  readonly token: string | null;
  readonly logLevel: string;
  /** How long a claimed machine is held before another engine may take it, unless renewed. */
  readonly leaseMs: number;
  readonly highTickMs: number;
  readonly normalTickMs: number;
  /** A fleet rollout halts at a cluster not healthy this long after its revision (docs/CONFIG.md). */
  readonly rolloutHealthWaitMs: number;
  /** Copies a prepared data directory instead of running initdb for each new primary. */
  readonly templateEnabled: boolean;
  /** Running clusters of the default spec kept ready for creates to adopt; 0 turns the pool off. */
  readonly warmPoolSize: number;
  readonly ha: HaSettings;
  readonly storage: StorageSettings;
  /** The backup store's directory; null: `$CELLAR_HOME/backups` (or under the data dir when the postgres user cannot reach it). */
  readonly backupDir: string | null;
  /** archive_timeout of every instance: bounds the recovery point under slow writes. */
  readonly archiveTimeoutMs: number;
  readonly backups: BackupSettings;
  readonly hosts: HostSettings;
}

/**
 * Many hosts (docs/HOSTS.md): the control plane's listener for agents, each agent's own listener,
 * and the lease that fences a primary cut off from the control plane.
 */
export interface HostSettings {
  /** Where the control plane listens for agents (join and heartbeats), mutual TLS only. */
  readonly controlListenHost: string;
  readonly controlListenPort: number;
  /** The port each agent serves the data-plane operations on, at its host's address. */
  readonly agentPort: number;
  /** An agent holds its lease this long from the moment it sent the heartbeat that renewed it. */
  readonly leaseMs: number;
  /** How often an agent sends its heartbeat (and so asks for a renewal); at most a third of the lease. */
  readonly heartbeatMs: number;
  /**
   * Added to the lease before the control plane treats it as certainly expired: covers the rate
   * at which two clocks may drift apart over one lease and the time the agent takes to fence.
   */
  readonly clockMarginMs: number;
  /** A join token printed by `cellar hosts add` works once, within this. */
  readonly joinTokenTtlMs: number;
  /**
   * The addresses the control plane and the proxy connect to instances from: every instance's
   * pg_hba lets them in, besides the cluster's own hosts.
   */
  readonly controlAddresses: readonly string[];
  /**
   * The control plane's own machine is a host for instances (one machine, the default); false: a
   * control plane that runs no databases, every instance on an agent's host.
   */
  readonly localHost: boolean;
  /**
   * A host whose lease has certainly expired for longer than this is lost: its instances are
   * replaced on other hosts. It becomes active again when its agent renews its lease.
   */
  readonly lostMs: number;
}

/** Bounds of the host settings, shared by config and docs. */
export const hostLeaseMsMin = 300;
export const hostLeaseMsMax = 60_000;
export const hostLostMsMin = 5_000;
export const hostLostMsMax = 86_400_000;

/** Backups; each becomes a rod with the control-rod work. */
export interface BackupSettings {
  /** How often each cluster is backed up (the first right after it is created); 0 turns scheduled backups off. */
  readonly intervalMs: number;
  /** pg_basebackup --max-rate, bytes per second; 0: no cap. */
  readonly maxRateBytesPerSecond: number;
  /** Retention: backups older than this are deleted, except the newest `countMin`. */
  readonly retentionMs: number;
  readonly countMin: number;
  /** Backups beyond this many (newest first) are deleted whatever their age. */
  readonly countMax: number;
  /** Restore checks (scratch servers) running at once across the cell. */
  readonly verifyConcurrency: number;
  /** A deleted cluster's backups stay restorable this long after the delete, then go with its WAL. */
  readonly deletedRetentionMs: number;
}

/** Failover and replica health; each becomes a rod with the control-rod work. */
export interface HaSettings {
  /** Failed probes in a row before a primary that still has a process counts as lost. */
  readonly unreachableProbesMax: number;
  /** A replica further behind the lost primary than this is not promoted unless forced. */
  readonly failoverLagBytesMax: number;
  /** Circuit breaker: automatic failovers across the cell within the window, then a human acts. */
  readonly failoversMax: number;
  readonly failoverWindowMs: number;
  /** A replica that has not served for this long is replaced with a fresh one. */
  readonly replicaDeadMsMax: number;
  /** Switchover: how long the target may take to catch up before the switchover is called off. */
  readonly switchoverCatchUpMsMax: number;
  /** How often a cluster compares each instance's effective settings with its revision, and puts back what drifted (docs/CONFIG.md). */
  readonly driftCheckMs: number;
  /** A primary's WAL archiver failing this long without a success raises `archive_failing` (docs/STORAGE.md "WAL bounds"). */
  readonly archiveFailingMs: number;
}

/** Storage that protects the database (docs/STORAGE.md). */
export interface StorageSettings {
  /** How often each running instance's use on disk, and the local host's free space, are measured. */
  readonly usageIntervalMs: number;
  /** A storage resize may follow the cluster's previous one only after this long (cloud volumes allow one change every few hours). */
  readonly resizeCooldownMs: number;
  /** The least a storage resize may add, in GB. */
  readonly resizeStepGbMin: number;
  /** Bytes in one GB of a cluster's allocation: 1 GiB; tests set less to fill an allocation in seconds. */
  readonly gbBytes: number;
  /** At this share of its allocation a cluster gets a `storage_warning` event (docs/STORAGE.md "Limits"). */
  readonly warnPercent: number;
  /** At this share its primary turns read-only, and back below it. */
  readonly readOnlyPercent: number;
  /**
   * The fastest a primary is assumed to write, in MB/s: near a threshold its use is measured
   * as often as this rate could close the gap (at most every liveness tick), far from one rarely.
   */
  readonly writeRateMbPerSecond: number;
  /**
   * How far ahead of a primary's measured use the read-only threshold is judged, at the growth
   * its last two measurements show (at most a hundredth of the allocation ahead): about the time
   * from one measurement to the next plus the time the guard takes to turn the servers read-only,
   * so a writer at full speed stops near the threshold rather than well past it.
   */
  readonly readOnlyLeadMs: number;
  /**
   * The share of a host's measured data filesystem that new instances and storage growth leave
   * free, percent (docs/STORAGE.md "Host disk reserve"); counted in `gbBytes`.
   */
  readonly hostDiskReservePercent: number;
}

export const usageIntervalMsMin = 1_000;
export const usageIntervalMsMax = 24 * 3_600_000;

/** Each warm cluster is a primary and a replica running idle: a handful is plenty. */
export const warmPoolSizeMax = 10;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

type Env = Readonly<Record<string, string | undefined>>;

function integer(env: Env, name: string, fallback: number, min: number, max: number, problems: string[]): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    problems.push(`${name}=${raw}: must be an integer from ${min} to ${max}`);
    return fallback;
  }
  return value;
}

function portRange(env: Env, problems: string[]): [number, number] {
  const raw = env['CELLAR_PORT_RANGE'] ?? '15432-15999';
  const match = /^(\d+)-(\d+)$/.exec(raw);
  const low = Number(match?.[1]);
  const high = Number(match?.[2]);
  if (!match || low < 1024 || high > 65535 || high < low) {
    problems.push(`CELLAR_PORT_RANGE=${raw}: must be LOW-HIGH with 1024 <= LOW <= HIGH <= 65535`);
    return [15432, 15999];
  }
  return [low, high];
}

function boolean(env: Env, name: string, fallback: boolean, problems: string[]): boolean {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  if (raw === '1' || raw === 'true') return true;
  if (raw === '0' || raw === 'false') return false;
  problems.push(`${name}=${raw}: must be true, false, 1 or 0`);
  return fallback;
}

/** A comma-separated list of IP literals, each at most once; at most `addressesMax`. */
function addressList(env: Env, name: string, fallback: readonly string[], problems: string[]): readonly string[] {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const addresses = [...new Set(raw.split(',').map((part) => part.trim()))];
  const bad = addresses.filter((address) => isIP(address) === 0);
  if (bad.length > 0 || addresses.length > addressesMax) {
    problems.push(`${name}=${raw}: must be at most ${addressesMax} IPv4 or IPv6 addresses separated by commas${bad.length > 0 ? ` (not an address: ${bad.join(', ')})` : ''}`);
    return fallback;
  }
  return addresses;
}

const addressesMax = 16;

function domainName(env: Env, problems: string[]): string {
  const domain = env['CELLAR_DOMAIN'] || 'cellar.localhost';
  const label = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
  if (domain.length > 200 || !domain.split('.').every((part) => label.test(part))) {
    problems.push(`CELLAR_DOMAIN=${domain}: must be lower-case DNS labels separated by dots, at most 200 characters`);
  }
  return domain;
}

export function loadConfig(env: Env = process.env): Config {
  const problems: string[] = [];
  const [instancePortMin, instancePortMax] = portRange(env, problems);
  const config: Config = {
    home: resolve(env['CELLAR_HOME'] || join(homedir(), '.cellar')),
    dataDir: env['CELLAR_DATA'] ? resolve(env['CELLAR_DATA']) : null,
    storeUrl: env['CELLAR_STORE_URL'] || null,
    apiHost: '127.0.0.1',
    apiPort: integer(env, 'CELLAR_API_PORT', 8432, 1, 65535, problems),
    proxyReadWritePort: integer(env, 'CELLAR_PROXY_PORT', 6432, 1, 65535, problems),
    proxyReadOnlyPort: integer(env, 'CELLAR_PROXY_RO_PORT', 6433, 1, 65535, problems),
    proxyAdminPort: integer(env, 'CELLAR_PROXY_ADMIN_PORT', 6434, 1, 65535, problems),
    proxyClusterConnectionsMax: integer(env, 'CELLAR_PROXY_CLUSTER_CONNECTIONS_MAX', 500, 1, 100_000, problems),
    proxyClusterConnectsPerSecond: integer(env, 'CELLAR_PROXY_CLUSTER_CONNECTS_PER_SECOND', 1_000, 1, 1_000_000, problems),
    proxyClusterBytesPerSecond: integer(env, 'CELLAR_PROXY_CLUSTER_BYTES_PER_SECOND', 0, 0, 10 * 1024 ** 3, problems),
    proxyWaitMsMax: integer(env, 'CELLAR_PROXY_WAIT_MS', 10_000, 0, 600_000, problems),
    proxyStartupMsMax: integer(env, 'CELLAR_PROXY_STARTUP_MS', 30_000, 100, 600_000, problems),
    // Below the certificate's 397 days of validity, or it would be renewed at every check.
    proxyCertificateRenewDays: integer(env, 'CELLAR_PROXY_CERTIFICATE_RENEW_DAYS', 30, 1, 365, problems),
    proxyCertificateCheckMs: integer(env, 'CELLAR_PROXY_CERTIFICATE_CHECK_MS', 3_600_000, 1_000, 86_400_000, problems),
    proxyNativeRelay: boolean(env, 'CELLAR_PROXY_NATIVE_RELAY', true, problems),
    domain: domainName(env, problems),
    instancePortMin,
    instancePortMax,
    pgBin: env['CELLAR_PG_BIN'] || null,
    apiUrl: env['CELLAR_API'] || null,
    token: env['CELLAR_TOKEN'] || null,
    logLevel: env['CELLAR_LOG_LEVEL'] || 'info',
    leaseMs: integer(env, 'CELLAR_LEASE_MS', 10_000, 500, 600_000, problems),
    highTickMs: integer(env, 'CELLAR_HIGH_TICK_MS', 250, 10, 600_000, problems),
    normalTickMs: integer(env, 'CELLAR_NORMAL_TICK_MS', 2_000, 10, 600_000, problems),
    rolloutHealthWaitMs: integer(env, 'CELLAR_ROLLOUT_HEALTH_WAIT_MS', 600_000, 1_000, 24 * 3_600_000, problems),
    templateEnabled: boolean(env, 'CELLAR_TEMPLATE', true, problems),
    warmPoolSize: integer(env, 'CELLAR_WARM_POOL', 0, 0, warmPoolSizeMax, problems),
    backupDir: env['CELLAR_BACKUP_DIR'] || null,
    archiveTimeoutMs: integer(env, 'CELLAR_ARCHIVE_TIMEOUT_MS', 5_000, 1_000, 3_600_000, problems),
    backups: {
      intervalMs: integer(env, 'CELLAR_BACKUP_INTERVAL_MS', 24 * 3_600_000, 0, 365 * 24 * 3_600_000, problems),
      maxRateBytesPerSecond: integer(env, 'CELLAR_BACKUP_MAX_RATE', 0, 0, 1024 ** 3, problems),
      retentionMs: integer(env, 'CELLAR_BACKUP_RETENTION_MS', 7 * 24 * 3_600_000, 60_000, 10 * 365 * 24 * 3_600_000, problems),
      countMin: integer(env, 'CELLAR_BACKUP_COUNT_MIN', 2, 1, 1_000, problems),
      countMax: integer(env, 'CELLAR_BACKUP_COUNT_MAX', 30, 1, 10_000, problems),
      verifyConcurrency: integer(env, 'CELLAR_BACKUP_VERIFY_CONCURRENCY', 1, 1, 16, problems),
      deletedRetentionMs: integer(env, 'CELLAR_DELETED_BACKUP_RETENTION_MS', 7 * 24 * 3_600_000, 1_000, 10 * 365 * 24 * 3_600_000, problems),
    },
    ha: {
      unreachableProbesMax: integer(env, 'CELLAR_UNREACHABLE_PROBES', 3, 1, 100, problems),
      failoverLagBytesMax: integer(env, 'CELLAR_FAILOVER_LAG_BYTES_MAX', 16 * 1024 ** 2, 0, 2 ** 40, problems),
      failoversMax: integer(env, 'CELLAR_FAILOVERS_MAX', 5, 0, 1_000, problems),
      failoverWindowMs: integer(env, 'CELLAR_FAILOVER_WINDOW_MS', 10 * 60_000, 1_000, 7 * 24 * 3_600_000, problems),
      replicaDeadMsMax: integer(env, 'CELLAR_REPLICA_DEAD_MS', 60_000, 1_000, 24 * 3_600_000, problems),
      switchoverCatchUpMsMax: integer(env, 'CELLAR_SWITCHOVER_CATCH_UP_MS', 10_000, 100, 3_600_000, problems),
      driftCheckMs: integer(env, 'CELLAR_DRIFT_CHECK_MS', 60_000, 1_000, 24 * 3_600_000, problems),
      archiveFailingMs: integer(env, 'CELLAR_ARCHIVE_FAILING_MS', 60_000, 1_000, 24 * 3_600_000, problems),
    },
    storage: {
      usageIntervalMs: integer(env, 'CELLAR_USAGE_INTERVAL_MS', 30_000, usageIntervalMsMin, usageIntervalMsMax, problems),
      resizeCooldownMs: integer(env, 'CELLAR_STORAGE_RESIZE_COOLDOWN_MS', 6 * 3_600_000, 0, 30 * 24 * 3_600_000, problems),
      resizeStepGbMin: integer(env, 'CELLAR_STORAGE_RESIZE_STEP_GB', 1, 1, 1_024, problems),
      gbBytes: integer(env, 'CELLAR_STORAGE_GB_BYTES', bytesPerStorageGb, 16 * 1024 ** 2, bytesPerStorageGb, problems),
      warnPercent: integer(env, 'CELLAR_STORAGE_WARN_PERCENT', 80, 50, 94, problems),
      readOnlyPercent: integer(env, 'CELLAR_STORAGE_READ_ONLY_PERCENT', 95, 60, 99, problems),
      writeRateMbPerSecond: integer(env, 'CELLAR_STORAGE_WRITE_RATE_MB_S', 512, 1, 100_000, problems),
      readOnlyLeadMs: integer(env, 'CELLAR_STORAGE_READ_ONLY_LEAD_MS', 300, 0, 5_000, problems),
      hostDiskReservePercent: integer(env, 'CELLAR_HOST_DISK_RESERVE_PERCENT', hostDiskReservePercentDefault, hostDiskReservePercentMin, hostDiskReservePercentMax, problems),
    },
    hosts: {
      controlListenHost: env['CELLAR_AGENT_LISTEN_HOST'] || '0.0.0.0',
      controlListenPort: integer(env, 'CELLAR_AGENT_LISTEN_PORT', 8433, 1, 65535, problems),
      agentPort: integer(env, 'CELLAR_AGENT_PORT', 8435, 1, 65535, problems),
      leaseMs: integer(env, 'CELLAR_HOST_LEASE_MS', 1_500, hostLeaseMsMin, hostLeaseMsMax, problems),
      heartbeatMs: integer(env, 'CELLAR_HOST_HEARTBEAT_MS', 250, 20, 20_000, problems),
      clockMarginMs: integer(env, 'CELLAR_HOST_CLOCK_MARGIN_MS', 250, 0, 60_000, problems),
      joinTokenTtlMs: integer(env, 'CELLAR_HOST_JOIN_TOKEN_TTL_MS', 3_600_000, 60_000, 7 * 24 * 3_600_000, problems),
      controlAddresses: addressList(env, 'CELLAR_CONTROL_ADDRESSES', ['127.0.0.1'], problems),
      localHost: boolean(env, 'CELLAR_LOCAL_HOST', true, problems),
      lostMs: integer(env, 'CELLAR_HOST_LOST_MS', 60_000, hostLostMsMin, hostLostMsMax, problems),
    },
  };
  if (config.hosts.heartbeatMs * 3 > config.hosts.leaseMs) {
    problems.push(`CELLAR_HOST_HEARTBEAT_MS=${config.hosts.heartbeatMs}: must be at most a third of CELLAR_HOST_LEASE_MS=${config.hosts.leaseMs}, so that one lost heartbeat does not cost the lease`);
  }
  if (config.storage.warnPercent >= config.storage.readOnlyPercent) {
    problems.push(`CELLAR_STORAGE_WARN_PERCENT=${config.storage.warnPercent}: must be below CELLAR_STORAGE_READ_ONLY_PERCENT=${config.storage.readOnlyPercent}, so the warning comes first`);
  }
  const levels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
  if (!levels.includes(config.logLevel)) problems.push(`CELLAR_LOG_LEVEL=${config.logLevel}: must be one of ${levels.join(', ')}`);
  if (problems.length > 0) throw new ConfigError(`bad configuration:\n  ${problems.join('\n  ')}`);
  return config;
}

/**
 * The flag catalogue with this process's defaults: the settings that were switches before they
 * were flags (CELLAR_TEMPLATE, CELLAR_PROXY_NATIVE_RELAY) default their flag; a rule overrides them.
 */
export function processFlagCatalogue(config: Pick<Config, 'templateEnabled' | 'proxyNativeRelay'>): FlagDeclaration[] {
  return withProcessDefaults(flagCatalogue, { 'provision-from-template': config.templateEnabled, 'proxy-native-relay': config.proxyNativeRelay });
}
