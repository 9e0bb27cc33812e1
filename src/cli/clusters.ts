import type { Command } from 'commander';
import type { ClusterView } from '../api/view.js';
import { type EventCode, isEventCode } from '../lib/event-codes.js';
import { type ApiClient, ApiError, storeUnavailableCode } from './client.js';
import { type Output, formatBytes, formatTable } from './output.js';

/** `cellar clusters …`: create, list, show, failover, switchover and delete, each with --json, and --wait on long work. */

const waitPollMs = 100;
/** While the cell store is down a wait keeps going (its deadline still holds), asking less often. */
const storeOutagePollMs = 500;
const waitTimeoutSecondsDefault = 600;

interface WaitOptions {
  readonly until: (cluster: ClusterView | null) => boolean;
  readonly timeoutSeconds: number;
  /** Event codes that mean the wait is over without success (e.g. a switchover refused)... */
  readonly abortOn?: readonly EventCode[];
  /** ...when the event is at least this recent (the request's time: an older one is not its answer). */
  readonly abortSinceMs?: number;
  /** Show events from this long before the wait began (a create's first events precede it). */
  readonly historyMs?: number;
}

function describe(cluster: ClusterView): string {
  const instances = cluster.instances.map((instance) => `${instance.role} ${instance.state}`).join(', ');
  return instances === '' ? cluster.state : `${cluster.state} (${instances})`;
}

/** Polls the cluster and prints each state change and event with the time since the wait began. */
async function waitFor(client: ApiClient, out: Output, id: string, options: WaitOptions): Promise<ClusterView | null> {
  const startedMs = Date.now();
  const deadlineMs = startedMs + options.timeoutSeconds * 1000;
  const seenEvents = new Set<string>();
  let lastLine = '';
  for (;;) {
    let cluster: ClusterView | null;
    try {
      cluster = await client.request<ClusterView>('GET', `/v1/clusters/${encodeURIComponent(id)}`);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (error.code === storeUnavailableCode) {
        // The work goes on once the store is back (Cellar restarts its own); only the deadline ends the wait.
        if (lastLine !== error.message) out.progress(`${elapsed(startedMs)}  ${error.message}; still waiting`);
        lastLine = error.message;
        if (Date.now() > deadlineMs) throw new Error(`gave up waiting after ${options.timeoutSeconds} s; ${error.message}`);
        await new Promise((resolve) => setTimeout(resolve, storeOutagePollMs));
        continue;
      }
      if (error.status !== 404) throw error;
      cluster = null;
    }
    const since = elapsed(startedMs);
    for (const event of cluster?.events ?? []) {
      const key = `${event.at}|${event.entity}|${event.to}`;
      if (seenEvents.has(key)) continue;
      seenEvents.add(key);
      if (Date.parse(event.at) < startedMs - (options.historyMs ?? 60_000)) continue;
      out.progress(`${since}  ${event.entity}: ${event.from ?? '-'} -> ${event.to}${event.reason ? ` (${event.reason})` : ''}`);
      if (isAbortEvent(event.code, options.abortOn) && Date.parse(event.at) >= (options.abortSinceMs ?? startedMs)) throw new Error(event.reason);
    }
    const line = cluster === null ? 'gone' : describe(cluster);
    if (line !== lastLine) out.progress(`${since}  ${line}`);
    lastLine = line;
    if (options.until(cluster)) return cluster;
    if (cluster?.state === 'failed') throw new Error(`cluster ${cluster.name} failed: ${cluster.error ?? 'see its events'}`);
    if (Date.now() > deadlineMs) throw new Error(`gave up waiting after ${options.timeoutSeconds} s; the cluster is ${line}`);
    await new Promise((resolve) => setTimeout(resolve, waitPollMs));
  }
}

function isAbortEvent(code: string | null, abortOn: readonly EventCode[] = []): boolean {
  return code !== null && isEventCode(code) && abortOn.includes(code);
}

/** A role change asked for is over without success when one of these is recorded after the request. */
export const roleChangeAbortCodes: readonly EventCode[] = [
  'switchover_refused',
  'switchover_called_off',
  'failover_refused_no_replica',
  'failover_refused_lag',
  'circuit_breaker_open',
];

function elapsed(startedMs: number): string {
  return `${((Date.now() - startedMs) / 1000).toFixed(1).padStart(6)}s`;
}

function printCluster(out: Output, cluster: ClusterView): void {
  if (out.json) return out.result(cluster);
  out.line(`${cluster.name} (${cluster.id})  ${cluster.state}`);
  out.line(`  size ${cluster.size}, ${cluster.replicas} replica(s), ${cluster.storageGb} GB, Postgres ${cluster.version}`);
  out.line(`  durability ${cluster.durability}${cluster.replication === null ? '' : `, commits now ${cluster.replication === 'sync' ? 'wait for a replica' : 'do not wait for a replica'}`}`);
  out.line(`  ${storageLine(cluster)}`);
  if (cluster.archive) out.line(`  ${archiveLine(cluster.archive)}`);
  for (const warning of cluster.warnings ?? []) out.line(`  warning: ${warning}`);
  if (cluster.uri) out.line(`  uri           ${cluster.uri}`);
  if (cluster.readOnlyUri) out.line(`  readOnlyUri   ${cluster.readOnlyUri}`);
  if (cluster.error) out.line(`  error         ${cluster.error}`);
  out.line(
    formatTable(
      ['INSTANCE', 'ROLE', 'STATE', 'PORT', 'LSN', 'LAG BYTES', 'DATA', 'WAL'],
      cluster.instances.map((instance) => [
        instance.id,
        instance.role,
        instance.state,
        String(instance.port ?? '-'),
        instance.lsn ?? '-',
        String(instance.lagBytes ?? '-'),
        instance.dataBytes === null ? '-' : formatBytes(instance.dataBytes),
        instance.walBytes === null ? '-' : formatBytes(instance.walBytes),
      ]),
    ).replace(/^/gm, '  '),
  );
}

/** `storage 1.2 GB of 10 GB (12 %), WAL 48 MB, READ-ONLY (full), autogrow to 50 GB at 90 %`: the primary's use against the allocation. */
function storageLine(cluster: ClusterView): string {
  const { storage } = cluster;
  const wal = cluster.instances.find((instance) => instance.role === 'primary')?.walBytes ?? null;
  const use = storage.usedBytes === null ? `not measured yet, of ${storage.allocatedGb} GB` : `${formatBytes(storage.usedBytes)} of ${storage.allocatedGb} GB (${storage.percent} %)`;
  const readOnly = storage.locked ? ', LOCKED (wrote past its whole allocation: resize to connect)' : storage.readOnly ? ', READ-ONLY (storage full)' : '';
  const autogrow = storage.autogrow === null ? '' : `, autogrow to ${storage.autogrow.maxGb} GB at ${storage.autogrow.thresholdPercent} %`;
  return `storage       ${use}${wal === null ? '' : `, WAL ${formatBytes(wal)}`}${readOnly}${autogrow}`;
}

/** WAL archiving at a glance: how far behind, since when, and whether it fails. */
function archiveLine(archive: NonNullable<ClusterView['archive']>): string {
  const lag = archive.lagBytes === null ? 'lag unknown' : `${(archive.lagBytes / 1024 / 1024).toFixed(1)} MB not yet archived`;
  const age = archive.lastArchivedAt === null ? 'nothing archived yet' : `last archived ${Math.round((Date.now() - Date.parse(archive.lastArchivedAt)) / 1000)} s ago`;
  const failing = archive.failedCount > 0 && archive.lastFailedAt !== null && (archive.lastArchivedAt === null || archive.lastFailedAt > archive.lastArchivedAt);
  return `archiving     ${lag}, ${age}${failing ? `; FAILING since ${archive.lastFailedAt ?? '?'} (${archive.lastFailedWal ?? '?'})` : ''}`;
}

function timeoutOption(value: string): number {
  const seconds = Number(value);
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > 86_400) throw new Error('--timeout must be an integer from 1 to 86400 seconds');
  return seconds;
}

export function registerClusterCommands(program: Command, connect: () => Promise<{ client: ApiClient; out: Output }>): void {
  const clusters = program.command('clusters').description('create, list, show and delete Postgres clusters');

  clusters
    .command('create <name>')
    .description('create a cluster: a primary and its replicas')
    .option('--replicas <n>', 'number of streaming replicas (0-5)', '1')
    .option('--size <size>', 'instance size: micro, small, medium, large', 'small')
    .option('--storage-gb <gb>', 'storage per instance in GB', '10')
    .option('--version <major>', 'Postgres major version (default: newest installed)')
    .option('--durability <mode>', 'sync (default with replicas), sync-strict or async (default without)')
    .option('--backup-interval-hours <hours>', "hours between scheduled base backups (default: the cell's, daily)")
    .option('--wait', 'wait until the cluster is running, showing each step')
    .option('--timeout <seconds>', 'give up waiting after this long', timeoutOption, waitTimeoutSecondsDefault)
    .option('--json', 'print JSON')
    .action(async (name: string, options: { replicas: string; size: string; storageGb: string; version?: string; durability?: string; backupIntervalHours?: string; wait?: boolean; timeout: number }) => {
      const { client, out } = await connect();
      const body = {
        name,
        replicas: numberOrText(options.replicas),
        size: options.size,
        storageGb: numberOrText(options.storageGb),
        ...(options.version === undefined ? {} : { version: numberOrText(options.version) }),
        ...(options.durability === undefined ? {} : { durability: options.durability }),
        ...(options.backupIntervalHours === undefined ? {} : { backupIntervalHours: numberOrText(options.backupIntervalHours) }),
      };
      const created = await client.request<ClusterView>('POST', '/v1/clusters', body);
      if (!options.wait || created.state === 'running') return printCluster(out, created);
      out.progress(`creating ${created.name} (${created.id})`);
      const ready = await waitFor(client, out, created.id, { until: (cluster) => cluster?.state === 'running', timeoutSeconds: options.timeout });
      if (ready) printCluster(out, ready);
    });

  clusters
    .command('list')
    .description('list the clusters of your org')
    .option('--json', 'print JSON')
    .action(async () => {
      const { client, out } = await connect();
      const { clusters: list } = await client.request<{ clusters: ClusterView[] }>('GET', '/v1/clusters');
      if (out.json) return out.result(list);
      if (list.length === 0) return out.line('no clusters; create one with `cellar clusters create NAME --wait`');
      out.line(formatTable(['NAME', 'STATE', 'SIZE', 'REPLICAS', 'VERSION', 'URI'], list.map((c) => [c.name, c.state, c.size, String(c.replicas), String(c.version), c.uri ?? '-'])));
    });

  clusters
    .command('show <name>')
    .description('show a cluster, its instances and its recent events')
    .option('--json', 'print JSON')
    .action(async (name: string) => {
      const { client, out } = await connect();
      const cluster = await client.request<ClusterView>('GET', `/v1/clusters/${encodeURIComponent(name)}`);
      printCluster(out, cluster);
      if (!out.json) for (const event of cluster.events.slice(-10)) out.line(`  ${event.at}  ${event.entity}: ${event.from ?? '-'} -> ${event.to}  ${event.reason}`);
    });

  clusters
    .command('failover <name>')
    .description('fail over now: fence the primary and promote the most advanced replica')
    .option('--force', 'promote even a replica that lags past the limit (writes may be lost)')
    .option('--wait', 'wait until the new primary takes writes, showing each step')
    .option('--timeout <seconds>', 'give up waiting after this long', timeoutOption, waitTimeoutSecondsDefault)
    .option('--json', 'print JSON')
    .action(async (name: string, options: { force?: boolean; wait?: boolean; timeout: number }) => {
      const { client, out } = await connect();
      const requestedAtMs = Date.now();
      const before = await client.request<ClusterView>('POST', `/v1/clusters/${encodeURIComponent(name)}/failover`, { force: options.force === true });
      await finishRoleChange(client, out, before, 'failover', { ...options, requestedAtMs });
    });

  clusters
    .command('switchover <name>')
    .description('move the primary role to a replica gracefully: new connections wait, none fail')
    .option('--to <instance>', 'the replica to promote (default: the most advanced streaming one)')
    .option('--wait', 'wait until the new primary takes writes, showing each step')
    .option('--timeout <seconds>', 'give up waiting after this long', timeoutOption, waitTimeoutSecondsDefault)
    .option('--json', 'print JSON')
    .action(async (name: string, options: { to?: string; wait?: boolean; timeout: number }) => {
      const { client, out } = await connect();
      const requestedAtMs = Date.now();
      const before = await client.request<ClusterView>('POST', `/v1/clusters/${encodeURIComponent(name)}/switchover`, options.to === undefined ? {} : { to: options.to });
      await finishRoleChange(client, out, before, 'switchover', { ...options, requestedAtMs });
    });

  clusters
    .command('delete <name>')
    .description('delete a cluster: stop its servers and remove their data')
    .option('--wait', 'wait until every instance is gone')
    .option('--timeout <seconds>', 'give up waiting after this long', timeoutOption, waitTimeoutSecondsDefault)
    .option('--json', 'print JSON')
    .action(async (name: string, options: { wait?: boolean; timeout: number }) => {
      const { client, out } = await connect();
      const deleting = await client.request<ClusterView>('DELETE', `/v1/clusters/${encodeURIComponent(name)}`);
      if (!options.wait) return out.json ? out.result(deleting) : out.line(`${deleting.name}: ${deleting.state}`);
      const gone = await waitFor(client, out, deleting.id, { until: (cluster) => cluster === null || cluster.state === 'deleted', timeoutSeconds: options.timeout });
      if (out.json) return out.result(gone ?? { ...deleting, state: 'deleted' });
      out.line(`${deleting.name}: deleted`);
    });
}

const primaryOf = (cluster: ClusterView | null): string | undefined => cluster?.instances.find((instance) => instance.role === 'primary')?.id;

/** Prints the request's outcome, or waits until another instance is the primary and the cluster runs. */
async function finishRoleChange(client: ApiClient, out: Output, before: ClusterView, what: string, options: { wait?: boolean; timeout: number; requestedAtMs: number }): Promise<void> {
  if (!options.wait) return out.json ? out.result(before) : out.line(`${before.name}: ${what} requested (watch with \`cellar clusters show ${before.name}\`)`);
  out.progress(`${what} of ${before.name} from ${primaryOf(before) ?? '?'}`);
  const after = await waitFor(client, out, before.id, {
    until: (cluster) => cluster?.state === 'running' && primaryOf(cluster) !== primaryOf(before),
    timeoutSeconds: options.timeout,
    abortOn: roleChangeAbortCodes,
    historyMs: 1_000,
    abortSinceMs: options.requestedAtMs,
  });
  if (after) printCluster(out, after);
}

/** Leaves non-numbers as text so the API, not the CLI, names the field and its limit. */
function numberOrText(value: string): number | string {
  return /^-?\d+$/.test(value) ? Number(value) : value;
}
