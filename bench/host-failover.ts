import { readFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { ClusterView } from '../src/api/view.js';
import { guardPollMs } from '../src/agent/guard.js';
import { loadConfig } from '../src/config.js';
import { livenessIntervalMs, probeIntervalMs } from '../src/machines/instance.js';
import { loadRoutes } from '../src/store/routes.js';
import { type CellOnHosts, type HostAgent, startCellOnHosts } from '../test/helpers/cell-on-hosts.js';
import { postgresTool } from '../test/helpers/tools.js';
import {
  type Report,
  type TimelineEntry,
  type WriteLog,
  Writer,
  clusterTimeline,
  createTable,
  describeCluster,
  discoverEnvironment,
  firstAfterMs,
  haCellarEnvironment,
  isSettled,
  lostIds,
  parseRounds,
  primaryOf,
  throwIfInterrupted,
  timelineText,
  watchInterrupts,
} from './ha.js';
import { median, queryOnce, seconds, sleep, uptime, waitFor } from './lib.js';

/**
 * bench/host-failover: a cluster with two replicas on three hosts (network namespaces running
 * `cellar agent`, test/helpers/cell-on-hosts.ts), a writer through the proxy, and round after
 * round the primary's host cut off (its link down). Per round: seconds from the cut to the first
 * acknowledged write through the same URI; a client inside the cut-off host writing straight to
 * the old primary (synchronous_commit = local, so nothing but the fence can stop it) until the
 * lease has certainly run out plus a second, counting what it got committed after the lease; then
 * the link healed and the old primary back as a streaming replica before the next round. At the
 * end, every acknowledged id must be on the final primary.
 * Goal (issue 13): median under 3 s, 0 acknowledged writes lost, 0 writes accepted after the lease.
 * Floor: the last lease renewal + lease + clock margin, the earliest a promotion may happen by
 * design (lease + margin after the cut at the latest; the last renewal is up to a heartbeat before it).
 *
 *   node dist/bench/host-failover.js [--rounds N] [--json]
 */

const goalRecoveryMsMax = 3_000;
const roundsDefault = 5;
const roundsMax = 50;
const clusterName = 'app';
const table = 'writes';
const writerPauseMs = 5;
const firstWritesWaitMsMax = 30_000;
const writesBeforeCut = 20;
const recoveryWaitMsMax = 60_000;
const recoveryPollMs = 5;
/** Heal to the old primary streaming again: pg_rewind and a start on a loaded machine, with room to spare. */
const rejoinWaitMsMax = 120_000;
const settlePollMs = 200;
/** Writes through the proxy after the recovery, before the heal: the new primary is seen to keep taking them. */
const afterRecoveryMs = 1_000;
/** The direct client keeps trying this long past the lease's certain expiry. */
const directPastLeaseMs = 1_000;
/** One direct attempt: `ip netns exec` + psql, connect and statement bounded inside it too. */
const directAttemptMsMax = 5_000;
const directConnectTimeoutSeconds = 2;
/** Between direct attempts, so the client inside the host does not spin. */
const directPauseMs = 20;
/** Far more attempts than a few seconds of 20 ms pauses can make. */
const directAttemptsMax = 2_000;
/** Ids of the direct client: negative, `-(round * directIdsPerRound + attempt)`, never the writer's. */
const directIdsPerRound = 100_000;
/** The route table as the proxy reads it, polled this often from the cut to the recovery. */
const routePollMs = 10;
const routePollsMax = 10_000;
const agentLogTailChars = 3_000;
const eventRowsMax = 200;

interface DirectAttempt {
  readonly id: number;
  /** Date.now() around the attempt; the namespaces share this machine's clock with the server. */
  readonly startedAtWallMs: number;
  readonly endedAtWallMs: number;
  readonly committed: boolean;
  /** The server's clock_timestamp() in the INSERT, for a committed one. */
  readonly serverAtWallMs: number | null;
  readonly error: string | null;
}

interface Round {
  readonly index: number;
  readonly host: string;
  readonly oldPrimaryId: string;
  readonly newPrimaryId: string;
  /** Cut (its start) to the first acknowledgement of a write issued after the writer's first error after the cut. */
  readonly recoveryMs: number;
  readonly noticedMs: number;
  readonly writerErrors: number;
  readonly firstErrors: readonly string[];
  readonly directAttempts: number;
  readonly directCommitted: number;
  /** Committed direct writes whose acknowledgement reached the client after lease + margin (an upper bound on those committed after it). */
  readonly directAfterLease: number;
  /** The last committed direct write's server time, after the cut. */
  readonly lastDirectCommitMs: number | null;
  /** Committed direct ids found on any instance after the heal (they were on the old timeline). */
  readonly directPresentAfterHeal: number;
  readonly directAfterLeasePresent: number;
  /** What the guard recorded: lease expiry to the postmaster gone, ms; and when it recorded that, after the cut. */
  readonly guardExpiryToGoneMs: number | null;
  readonly oldPrimaryGoneByMs: number | null;
  /** The host's last lease renewal in the store, before the cut (ms, store clock = this machine's). */
  readonly lastRenewalBeforeCutMs: number;
  /** The earliest the control plane may promote: last renewal + lease + margin, after the cut. */
  readonly promoteAllowedMs: number;
  /** The writer's reconnect after the failure: its connect began, and was ready (through the proxy), after the cut. */
  readonly reconnectStartedMs: number | null;
  readonly reconnectedMs: number | null;
  /**
   * SYNs this machine's root namespace (the proxy's, the control plane's, other programs') sent
   * again between the cut and the recovery: a lost SYN costs a 1 s retransmission timeout.
   */
  readonly synRetransmits: number | null;
  /** The cluster's read-write route as the proxy reads it from the store, each change from the cut to the recovery, s after the cut. */
  readonly routeChanges: readonly string[];
  /** Every event of the cluster from the cut to the settle (instances' too), s after the cut. */
  readonly events: readonly string[];
  /** What the control plane (warn and up) and the new primary's agent wrote from the cut to the settle, tails. */
  readonly controlPlaneOutput: string;
  readonly newPrimaryAgentOutput: string;
  /** Heal to the old primary streaming again and the cluster settled with three members. */
  readonly rejoinMs: number;
  readonly timeline: readonly TimelineEntry[];
}

interface Outcome {
  readonly rounds: readonly Round[];
  readonly lost: readonly number[];
  readonly acknowledged: number;
  readonly failure: string | null;
}

interface Settings {
  readonly leaseMs: number;
  readonly heartbeatMs: number;
  readonly clockMarginMs: number;
  readonly highTickMs: number;
  readonly normalTickMs: number;
  readonly unreachableProbes: number;
  readonly failoversMax: number;
}

interface InstanceRow {
  readonly id: string;
  readonly role: string;
  readonly address: string;
  readonly port: number;
}

async function main(): Promise<void> {
  watchInterrupts();
  const options = parseRounds(roundsDefault, roundsMax);
  const report: Report = (line) => (options.json ? process.stderr : process.stdout).write(`${line}\n`);
  const environment = await discoverEnvironment();
  const loadBefore = await uptime();
  report(`bench/host-failover: ${options.rounds} round(s); ${availableParallelism()} cores; ${environment.postgresVersion}; node ${process.version}`);
  report(`load before: ${loadBefore}`);
  const started = performance.now();
  const cell = await startCellOnHosts({ tag: 'bhf', hosts: 3, env: haCellarEnvironment });
  let outcome: Outcome = { rounds: [], lost: [], acknowledged: 0, failure: null };
  let settings: Settings | undefined;
  try {
    settings = settingsOf(cell);
    report(`settings: ${settingsText(settings)}`);
    report(`cell of ${cell.agents.length} namespace hosts up in ${seconds(performance.now() - started, 1)} s`);
    const createStarted = performance.now();
    const cluster = await cell.cellar.cliJson<ClusterView>(['clusters', 'create', clusterName, '--replicas', '2', '--wait']);
    if (cluster.uri === null) throw new Error(`cluster ${clusterName} has no uri`);
    report(`cluster ${clusterName}: created in ${seconds(performance.now() - createStarted, 1)} s; durability ${cluster.durability}; ${cluster.instances.length} instances`);
    report(`each round: cut the primary's host's link under the writer (1 connection through the proxy, insert every ~${writerPauseMs} ms); recovery = cut -> first ack of a write issued after the writer's first error after the cut; a psql inside the cut-off host inserts into the old primary directly (synchronous_commit = local) until lease + margin + ${seconds(directPastLeaseMs, 0)} s; heal; wait for the old primary to stream again`);
    await createTable(cluster.uri, table);
    outcome = await runRounds(cell, cluster.uri, settings, options.rounds, report);
  } finally {
    await cell.destroy();
  }
  const loadAfter = await uptime();
  report(`load after:  ${loadAfter}`);
  printSummary(outcome, settings, report);
  if (options.json) process.stdout.write(`${JSON.stringify(summaryJson(outcome, settings, environment.postgresVersion, loadBefore, loadAfter), null, 2)}\n`);
  if (!passed(outcome)) process.exitCode = 1;
}

function settingsOf(cell: CellOnHosts): Settings {
  const config = loadConfig(cell.cellar.env);
  return {
    leaseMs: config.hosts.leaseMs,
    heartbeatMs: config.hosts.heartbeatMs,
    clockMarginMs: config.hosts.clockMarginMs,
    highTickMs: config.highTickMs,
    normalTickMs: config.normalTickMs,
    unreachableProbes: config.ha.unreachableProbesMax,
    failoversMax: config.ha.failoversMax,
  };
}

function settingsText(settings: Settings): string {
  return [
    `CELLAR_HOST_LEASE_MS=${settings.leaseMs}`,
    `CELLAR_HOST_HEARTBEAT_MS=${settings.heartbeatMs}`,
    `CELLAR_HOST_CLOCK_MARGIN_MS=${settings.clockMarginMs}`,
    `CELLAR_HIGH_TICK_MS=${settings.highTickMs}`,
    `CELLAR_NORMAL_TICK_MS=${settings.normalTickMs}`,
    `CELLAR_UNREACHABLE_PROBES=${settings.unreachableProbes}`,
    `CELLAR_FAILOVERS_MAX=${settings.failoversMax}`,
    `guard poll ${guardPollMs} ms`,
    `instance liveness check ${livenessIntervalMs} ms, full probe ${probeIntervalMs} ms`,
  ].join(', ');
}

function floorMs(settings: Settings): number {
  return settings.leaseMs + settings.clockMarginMs;
}

/** One writer for the whole run; a round that fails stops the run, with the evidence printed. */
async function runRounds(cell: CellOnHosts, uri: string, settings: Settings, rounds: number, report: Report): Promise<Outcome> {
  const writer = Writer.start(uri, table, writerPauseMs);
  const done: Round[] = [];
  let failure: string | null = null;
  let clusterId = '';
  let log: WriteLog;
  try {
    await waitFor('first acknowledged writes', async () => (writer.acknowledgedCount >= writesBeforeCut ? true : undefined), firstWritesWaitMsMax, 20);
    clusterId = (await showCluster(cell)).id;
    for (let index = 1; index <= rounds; index += 1) {
      const roundStartedWallMs = Date.now();
      try {
        throwIfInterrupted();
        const round = await runRound(cell, uri, writer, settings, index);
        done.push(round);
        printRound(round, report);
      } catch (error) {
        failure = `round ${index} failed: ${error instanceof Error ? error.message : String(error)}`;
        report(failure);
        await printEvidence(cell, clusterId, roundStartedWallMs, report);
        break;
      }
    }
  } finally {
    log = await writer.stop();
  }
  const lost = await lostIds(uri, table, log);
  return { rounds: done, lost, acknowledged: log.acknowledged.length, failure };
}

function showCluster(cell: CellOnHosts): Promise<ClusterView> {
  return cell.cellar.cliJson<ClusterView>(['clusters', 'show', clusterName]);
}

/** Settled (running, every replica streaming, commits waiting for a replica) with all three members. */
async function waitFullySettled(cell: CellOnHosts, what: string, timeoutMs: number): Promise<ClusterView> {
  let last = 'not shown yet';
  return waitFor(
    what,
    async () => {
      const cluster = await showCluster(cell);
      last = describeCluster(cluster);
      return cluster.instances.length === 3 && isSettled(cluster) ? cluster : undefined;
    },
    timeoutMs,
    settlePollMs,
  ).catch((error: unknown) => {
    throw new Error(`${error instanceof Error ? error.message : String(error)}; last seen: ${last}`);
  });
}

async function instancesOf(cell: CellOnHosts): Promise<InstanceRow[]> {
  return cell.cellar.storeQuery<InstanceRow>(
    `select i.id, i.role, h.address, i.port
       from instances i join hosts h on h.id = i.host_id join clusters c on c.id = i.cluster_id
      where c.name = $1 and c.deleted_at is null and i.deleted_at is null
      order by i.ordinal`,
    [clusterName],
  );
}

async function runRound(cell: CellOnHosts, uri: string, writer: Writer, settings: Settings, index: number): Promise<Round> {
  const before = await waitFullySettled(cell, `cluster ${clusterName} settled with 3 members before round ${index}`, rejoinWaitMsMax);
  const oldPrimaryId = primaryOf(before).id;
  const oldPrimary = (await instancesOf(cell)).find((instance) => instance.id === oldPrimaryId);
  if (oldPrimary === undefined) throw new Error(`the primary ${oldPrimaryId} has no host in the store`);
  const victim = cell.agents.find((agent) => agent.host.address === oldPrimary.address);
  if (victim === undefined) throw new Error(`the primary's address ${oldPrimary.address} is none of the hosts'`);
  const ackedBefore = writer.acknowledgedCount;
  await waitFor('writes acknowledged before the cut', async () => (writer.acknowledgedCount >= ackedBefore + writesBeforeCut ? true : undefined), firstWritesWaitMsMax, 10);

  const password = decodeURIComponent(new URL(uri).password);
  const psql = await postgresTool('psql');
  const expiryAfterCutMs = floorMs(settings);
  const synRetransmitsBefore = await synRetransmits();
  const routes = await RouteWatcher.start(cell, before.id);
  const controlPlaneOutputFrom = cell.cellar.logs().length;
  const agentOutputFrom = new Map(cell.agents.map((agent) => [agent.name, agent.output.length]));
  const cutAtWallMs = Date.now();
  const cutAtMs = performance.now();
  await cell.network.cut(victim.host);
  const direct = directWrites(cell, victim, oldPrimary, password, psql, index, cutAtWallMs + expiryAfterCutMs + directPastLeaseMs);
  const recoveredAtMs = await waitRecovered(writer, cutAtMs);
  const synRetransmitsAfter = await synRetransmits();
  const routeChanges = (await routes.stop()).map((change) => `${seconds(change.atMs - cutAtMs)} ${change.state}`);
  const attempts = await direct;
  const renewedAtWallMs = await lastRenewal(cell, victim);
  await sleep(afterRecoveryMs);

  const healedAtMs = performance.now();
  await cell.network.heal(victim.host);
  const after = await waitFullySettled(cell, `the old primary ${oldPrimaryId} back as a streaming replica`, rejoinWaitMsMax);
  const rejoinMs = performance.now() - healedAtMs;
  const newPrimaryId = primaryOf(after).id;
  if (newPrimaryId === oldPrimaryId) throw new Error(`${oldPrimaryId} is primary again after the heal: no failover happened`);
  if (after.instances.find((instance) => instance.id === oldPrimaryId)?.role !== 'replica') throw new Error(`${oldPrimaryId} is not a replica after the heal: ${describeCluster(after)}`);

  const expiryWallMs = cutAtWallMs + expiryAfterCutMs;
  const committed = attempts.filter((attempt) => attempt.committed);
  const afterLease = committed.filter((attempt) => attempt.endedAtWallMs > expiryWallMs);
  const present = await directIdsPresent(cell, password, committed.map((attempt) => attempt.id));
  const errorsAfterCut = writer.log.errors.filter((error) => error.atMs >= cutAtMs && error.atMs <= healedAtMs);
  const commitTimes = committed.map((attempt) => attempt.serverAtWallMs).filter((at): at is number => at !== null);
  const lastCommit = commitTimes.length === 0 ? null : Math.max(...commitTimes);
  const guard = await guardRecord(victim, oldPrimaryId, cutAtWallMs);
  const firstError = errorsAfterCut[0];
  const reconnect = firstError === undefined ? undefined : writer.log.connects.find((connect) => connect.startedAtMs >= firstError.atMs);
  return {
    index,
    host: victim.name,
    oldPrimaryId,
    newPrimaryId,
    recoveryMs: recoveredAtMs - cutAtMs,
    noticedMs: (errorsAfterCut[0]?.atMs ?? recoveredAtMs) - cutAtMs,
    writerErrors: errorsAfterCut.length,
    firstErrors: [...new Set(errorsAfterCut.map((error) => error.message))].slice(0, 3),
    directAttempts: attempts.length,
    directCommitted: committed.length,
    directAfterLease: afterLease.length,
    lastDirectCommitMs: lastCommit === null ? null : lastCommit - cutAtWallMs,
    directPresentAfterHeal: present.size,
    directAfterLeasePresent: afterLease.filter((attempt) => present.has(attempt.id)).length,
    guardExpiryToGoneMs: roundOrNull(guard?.expiryToGoneMs ?? null),
    oldPrimaryGoneByMs: guard === undefined ? null : guard.atWallMs - cutAtWallMs,
    lastRenewalBeforeCutMs: cutAtWallMs - renewedAtWallMs,
    promoteAllowedMs: renewedAtWallMs + expiryAfterCutMs - cutAtWallMs,
    reconnectStartedMs: reconnect === undefined ? null : reconnect.startedAtMs - cutAtMs,
    reconnectedMs: reconnect?.connectedAtMs === undefined || reconnect.connectedAtMs === null ? null : reconnect.connectedAtMs - cutAtMs,
    routeChanges,
    synRetransmits: synRetransmitsBefore === null || synRetransmitsAfter === null ? null : synRetransmitsAfter - synRetransmitsBefore,
    events: await eventsSince(cell, after.id, cutAtWallMs),
    controlPlaneOutput: cell.cellar.logs().slice(controlPlaneOutputFrom).slice(-agentLogTailChars),
    newPrimaryAgentOutput: await agentOutputSince(cell, newPrimaryId, agentOutputFrom),
    rejoinMs,
    timeline: clusterTimeline(after, cutAtWallMs),
  };
}

/** A commit in flight at the cut cannot come back over a link that is down, but only a write issued after the writer saw the failure counts. */
function waitRecovered(writer: Writer, cutAtMs: number): Promise<number> {
  return waitFor(
    'the first acknowledged write through the proxy after the cut',
    async () => {
      const firstError = writer.log.errors.find((error) => error.atMs >= cutAtMs);
      if (firstError === undefined) return undefined;
      return writer.log.acknowledged.find((ack) => ack.issuedAtMs > firstError.atMs)?.acknowledgedAtMs;
    },
    recoveryWaitMsMax,
    recoveryPollMs,
  );
}

/**
 * Inside the cut-off host, psql after psql straight to the old primary's address and port: each
 * a new connection and one INSERT committed locally (no standby can be waited for), until
 * `untilWallMs`. What it got committed, and when by the server's clock, is what the fence allowed.
 */
async function directWrites(cell: CellOnHosts, agent: HostAgent, primary: InstanceRow, password: string, psql: string, round: number, untilWallMs: number): Promise<DirectAttempt[]> {
  const attempts: DirectAttempt[] = [];
  for (let attempt = 1; attempt <= directAttemptsMax && Date.now() < untilWallMs; attempt += 1) {
    const id = -(round * directIdsPerRound + attempt);
    const startedAtWallMs = Date.now();
    const result = await cell.network.run(
      agent.host,
      'env',
      [
        `PGPASSWORD=${password}`,
        `PGCONNECT_TIMEOUT=${directConnectTimeoutSeconds}`,
        'PGSSLMODE=disable',
        'PGGSSENCMODE=disable',
        psql,
        '-h', primary.address, '-p', String(primary.port), '-U', 'app', '-d', 'app',
        '-X', '-q', '-t', '-A', '-v', 'ON_ERROR_STOP=1',
        '-c', `set statement_timeout = '1s'; set synchronous_commit = local; insert into ${table} (id) values (${id}) returning (extract(epoch from clock_timestamp()) * 1000)::bigint`,
      ],
      directAttemptMsMax,
    );
    const endedAtWallMs = Date.now();
    const committed = result.code === 0;
    const serverAt = Number(result.stdout.trim().split('\n').at(-1));
    attempts.push({
      id,
      startedAtWallMs,
      endedAtWallMs,
      committed,
      serverAtWallMs: committed && Number.isFinite(serverAt) ? serverAt : null,
      error: committed ? null : result.stderr.trim().split('\n')[0] ?? `exit ${result.code ?? result.signal ?? '?'}`,
    });
    await sleep(directPauseMs);
  }
  return attempts;
}

/** Which of the ids any member of the cluster holds now, each asked directly on its host's address. */
async function directIdsPresent(cell: CellOnHosts, password: string, ids: readonly number[]): Promise<Set<number>> {
  const present = new Set<number>();
  if (ids.length === 0) return present;
  for (const instance of await instancesOf(cell)) {
    const rows = await queryOnce<{ id: string }>(
      { host: instance.address, port: instance.port, user: 'app', password, database: 'app' },
      `select id from ${table} where id in (${ids.map((id) => String(Math.trunc(id))).join(',')})`,
    );
    for (const row of rows) present.add(Number(row.id));
  }
  return present;
}

/** The new primary's agent's output since the cut (the agent output restarts only with the agent). */
async function agentOutputSince(cell: CellOnHosts, instanceId: string, from: ReadonlyMap<string, number>): Promise<string> {
  const address = (await instancesOf(cell)).find((instance) => instance.id === instanceId)?.address;
  const agent = cell.agents.find((candidate) => candidate.host.address === address);
  if (agent === undefined) return '(no agent found)';
  return `${agent.name}: ${agent.output.slice(from.get(agent.name) ?? 0).slice(-agentLogTailChars)}`;
}

/** The guard's record (DIR/agent/fenced.json) of fencing this instance after the cut: lease expiry to the postmaster gone. */
async function guardRecord(agent: HostAgent, instanceId: string, sinceWallMs: number): Promise<{ expiryToGoneMs: number | null; atWallMs: number } | undefined> {
  const text = await readFile(join(agent.dataDir, 'agent', 'fenced.json'), 'utf8').catch(() => '[]');
  let records: { instanceId?: string; expiryToGoneMs?: number; at?: string }[];
  try {
    const parsed = JSON.parse(text) as unknown;
    records = Array.isArray(parsed) ? (parsed as typeof records) : [];
  } catch {
    return undefined;
  }
  const mine = records.filter((record) => record.instanceId === instanceId && Date.parse(record.at ?? '') >= sinceWallMs).at(-1);
  return mine === undefined ? undefined : { expiryToGoneMs: mine.expiryToGoneMs ?? null, atWallMs: Date.parse(mine.at ?? '') };
}

/**
 * Polls the routes the proxy reads (src/store/routes.ts, the same query) and keeps each change of
 * the cluster's primaries: which address, and whether it is healthy (routable) or not.
 */
class RouteWatcher {
  readonly changes: { atMs: number; state: string }[] = [];
  private stopping = false;
  private constructor(
    private readonly pool: pg.Pool,
    private readonly clusterId: string,
  ) {}

  static async start(cell: CellOnHosts, clusterId: string): Promise<RouteWatcher> {
    const state = JSON.parse(await readFile(join(cell.cellar.home, 'store.json'), 'utf8')) as { port: number; password: string };
    // One connection, kept: a new one every poll would load the store the proxy reads.
    const pool = new pg.Pool({ host: '127.0.0.1', port: state.port, user: 'postgres', password: state.password, database: 'cellar', max: 1, query_timeout: 5_000 });
    pool.on('error', () => undefined);
    const watcher = new RouteWatcher(pool, clusterId);
    watcher.loop = watcher.run();
    return watcher;
  }

  private loop: Promise<void> = Promise.resolve();

  private async run(): Promise<void> {
    let last = '';
    for (let poll = 0; poll < routePollsMax && !this.stopping; poll += 1) {
      const route = (await loadRoutes(this.pool)).find((row) => row.clusterId === this.clusterId);
      const primaries = route?.instances.filter((instance) => instance.role === 'primary') ?? [];
      const state = `${route?.paused === true ? 'paused, ' : ''}${primaries.length === 0 ? 'no primary' : primaries.map((primary) => `${primary.host} ${primary.healthy ? 'healthy' : 'NOT healthy'}`).join(', ')}`;
      if (state !== last) {
        const atMs = performance.now();
        const why = primaries.some((primary) => !primary.healthy) ? ` (${await this.whyNotHealthy()})` : '';
        this.changes.push({ atMs, state: `${state}${why}` });
      }
      last = state;
      await sleep(routePollMs);
    }
  }

  /** What the route's health is made of (src/store/routes.ts): the machine's label and the last observed status. */
  private async whyNotHealthy(): Promise<string> {
    const result = await this.pool.query<{ label: string; accepting: string | null; in_recovery: string | null; age_ms: number | null }>(
      `select m.label, i.observed ->> 'accepting' as accepting, i.observed ->> 'inRecovery' as in_recovery,
              extract(epoch from clock_timestamp() - i.observed_at) * 1000 as age_ms
         from instances i join machines m on m.kind = 'instance' and m.entity_id = i.id
        where i.cluster_id = $1 and i.role = 'primary' and i.deleted_at is null and not i.fenced`,
      [this.clusterId],
    );
    return result.rows.map((row) => `label ${row.label}, observed accepting ${row.accepting ?? '-'} inRecovery ${row.in_recovery ?? '-'} written ${row.age_ms === null ? '-' : Math.round(Number(row.age_ms))} ms before`).join('; ');
  }

  async stop(): Promise<{ atMs: number; state: string }[]> {
    this.stopping = true;
    await this.loop.catch(() => undefined);
    await this.pool.end().catch(() => undefined);
    return this.changes;
  }
}

/** TcpExt TCPSynRetrans of this process's network namespace (the root one), or null where the kernel does not say. */
async function synRetransmits(): Promise<number | null> {
  const text = await readFile('/proc/net/netstat', 'utf8').catch(() => '');
  const [names, values] = text.split('\n').filter((line) => line.startsWith('TcpExt:')).map((line) => line.split(' '));
  const index = names?.indexOf('TCPSynRetrans') ?? -1;
  return index < 0 || values?.[index] === undefined ? null : Number(values[index]);
}

/** The store's record of the host's last renewal (its clock is this machine's: the store runs here). Read before the heal. */
async function lastRenewal(cell: CellOnHosts, agent: HostAgent): Promise<number> {
  const [row] = await cell.cellar.storeQuery<{ renewed_ms: number | null }>(
    'select extract(epoch from lease_renewed_at) * 1000 as renewed_ms from hosts where address = $1 and removed_at is null',
    [agent.host.address],
  );
  if (row?.renewed_ms === null || row?.renewed_ms === undefined) throw new Error(`host ${agent.name} has no lease renewal in the store`);
  return Number(row.renewed_ms);
}

/** The cluster's events (every entity's) since a moment, one line each, seconds after it. */
async function eventsSince(cell: CellOnHosts, clusterId: string, sinceWallMs: number): Promise<string[]> {
  const rows = await cell.cellar.storeQuery<{ at_ms: number; kind: string; entity_id: string; from_label: string | null; to_label: string; code: string | null; reason: string }>(
    `select extract(epoch from at) * 1000 as at_ms, kind, entity_id, from_label, to_label, code, reason from events
      where cluster_id = $1 and at >= to_timestamp($2::double precision / 1000) order by id limit ${eventRowsMax}`,
    [clusterId, sinceWallMs],
  );
  return rows.map((row) => `+${seconds(Number(row.at_ms) - sinceWallMs)} ${row.kind} ${row.entity_id} ${row.from_label ?? '-'}->${row.to_label} ${row.code ?? '-'}: ${row.reason}`);
}

function fixedSeconds(ms: number | null): string {
  return ms === null ? '-' : seconds(ms);
}

function roundOrNull(ms: number | null): number | null {
  return ms === null ? null : Math.round(ms);
}

/** What a failed round leaves to look at: the cluster's events since the round began and each agent's log tail. */
async function printEvidence(cell: CellOnHosts, clusterId: string, sinceWallMs: number, report: Report): Promise<void> {
  try {
    report(`events since the round began (${new Date(sinceWallMs).toISOString()}), s after:`);
    for (const event of await eventsSince(cell, clusterId, sinceWallMs)) report(`  ${event}`);
  } catch (error) {
    report(`(could not read the events: ${String(error)})`);
  }
  for (const agent of cell.agents) report(`--- agent ${agent.name} (${agent.host.address}), last ${agentLogTailChars} chars:\n${agent.output.slice(-agentLogTailChars)}`);
  report(`--- control plane, last ${agentLogTailChars} chars:\n${cell.cellar.logs().slice(-agentLogTailChars)}`);
}

// ---------------------------------------------------------------------------------------------
// Output.

function printRound(round: Round, report: Report): void {
  report(`\nround ${round.index}: host ${round.host} cut; ${round.oldPrimaryId} -> ${round.newPrimaryId} primary`);
  report(`  first acknowledged write through the proxy ${seconds(round.recoveryMs)} s after the cut (the writer saw the failure at ${seconds(round.noticedMs)} s; ${round.writerErrors} error(s): ${round.firstErrors.join(' | ')})`);
  const last = round.lastDirectCommitMs === null ? 'none' : `${seconds(round.lastDirectCommitMs)} s`;
  report(`  inside the cut-off host: ${round.directAttempts} direct writes, ${round.directCommitted} committed (the last at ${last} after the cut), ${round.directAfterLease} after the lease; present after the heal: ${round.directPresentAfterHeal} (after the lease: ${round.directAfterLeasePresent})`);
  const gone = round.oldPrimaryGoneByMs === null ? '(no guard record)' : `gone by ${seconds(round.oldPrimaryGoneByMs)} s (lease expiry to gone ${round.guardExpiryToGoneMs ?? '?'} ms)`;
  report(`  lease: last renewal ${seconds(round.lastRenewalBeforeCutMs)} s before the cut, so promotion allowed from ${seconds(round.promoteAllowedMs)} s; old primary ${gone}; promote step began ${fixedSeconds(firstAfterMs(round.timeline, 'promote'))} s`);
  report(`  writer: reconnect began ${fixedSeconds(round.reconnectStartedMs)} s, connected through the proxy ${fixedSeconds(round.reconnectedMs)} s; SYNs retransmitted in the root namespace from the cut to the recovery: ${round.synRetransmits ?? '?'}; heal -> old primary streaming, cluster settled: ${seconds(round.rejoinMs, 1)} s`);
  report(`  cluster events, s after the cut: ${timelineText(round.timeline)}`);
  report(`  read-write route (the proxy's query), s after the cut: ${round.routeChanges.join('; ')}`);
  if (round.recoveryMs < goalRecoveryMsMax) return;
  report('  slower than the goal; every event of the cluster after the cut:');
  for (const event of round.events) report(`    ${event}`);
  report(`  control plane output (warnings) since the cut:\n${round.controlPlaneOutput}`);
  report(`  agent of the new primary since the cut: ${round.newPrimaryAgentOutput}`);
}

function passed(outcome: Outcome): boolean {
  if (outcome.failure !== null || outcome.rounds.length === 0) return false;
  const directKept = outcome.rounds.reduce((sum, round) => sum + round.directAfterLeasePresent, 0);
  return median(outcome.rounds.map((round) => round.recoveryMs)) < goalRecoveryMsMax && outcome.lost.length === 0 && afterLeaseTotal(outcome.rounds) === 0 && directKept === 0;
}

function afterLeaseTotal(rounds: readonly Round[]): number {
  return rounds.reduce((sum, round) => sum + round.directAfterLease, 0);
}

function printSummary(outcome: Outcome, settings: Settings | undefined, report: Report): void {
  const { rounds } = outcome;
  report(`\n== summary (${rounds.length} round(s), seconds)`);
  if (settings !== undefined) report(`settings: ${settingsText(settings)}`);
  if (rounds.length === 0) {
    report(`FAIL: no round completed (${outcome.failure ?? 'no rounds'})`);
    return;
  }
  const recoveries = rounds.map((round) => round.recoveryMs);
  const floor = settings === undefined ? Number.NaN : floorMs(settings);
  report(`cut -> first write     ${recoveries.map((ms) => seconds(ms)).join('  ')}   median ${seconds(median(recoveries))}  max ${seconds(Math.max(...recoveries))}`);
  const allowed = rounds.map((round) => round.promoteAllowedMs);
  report(`promotion allowed      ${allowed.map((ms) => seconds(ms)).join('  ')}   median ${seconds(median(allowed))} (last renewal + lease + margin; lease + margin = ${seconds(floor)})`);
  report(`first write - allowed  ${rounds.map((round) => seconds(round.recoveryMs - round.promoteAllowedMs)).join('  ')}   median ${seconds(median(rounds.map((round) => round.recoveryMs - round.promoteAllowedMs)))}`);
  report(`old primary gone by    ${rounds.map((round) => fixedSeconds(round.oldPrimaryGoneByMs)).join('  ')}   (guard's record; promote step began ${rounds.map((round) => fixedSeconds(firstAfterMs(round.timeline, 'promote'))).join(', ')})`);
  report(`writer saw failure     ${rounds.map((round) => seconds(round.noticedMs)).join('  ')}`);
  report(`direct commits         ${rounds.map((round) => String(round.directCommitted).padStart(5)).join('  ')}   (of ${rounds.map((round) => round.directAttempts).join(', ')} attempts; last at ${rounds.map((round) => (round.lastDirectCommitMs === null ? '-' : seconds(round.lastDirectCommitMs))).join(', ')} s)`);
  report(`accepted after lease   ${rounds.map((round) => String(round.directAfterLease).padStart(5)).join('  ')}   total ${afterLeaseTotal(rounds)}`);
  report(`guard expiry->gone ms  ${rounds.map((round) => String(round.guardExpiryToGoneMs ?? '-').padStart(5)).join('  ')}`);
  report(`heal -> rejoined       ${rounds.map((round) => seconds(round.rejoinMs, 1).padStart(5)).join('  ')}`);
  const labels = ['fence', 'pick', 'promote', 'repoint', 'route', 'rejoin', 'running', 'sync'];
  const labelMedians = labels.map((label) => {
    const values = rounds.map((round) => firstAfterMs(round.timeline, label)).filter((value): value is number => value !== null);
    return `${label} ${values.length === 0 ? '-' : seconds(median(values))}`;
  });
  report(`cluster events, median s after the cut: ${labelMedians.join(', ')}`);
  report(`lost acknowledged      ${outcome.lost.length} of ${outcome.acknowledged} (every acknowledged id checked on the final primary)`);
  report('local SIGKILL failover (one machine, no lease): measured by bench/failover (`npm run bench:failover`), recorded in BENCHMARKS.md');
  const verdict = passed(outcome) ? 'PASS' : 'FAIL';
  const why = outcome.failure === null ? '' : `; ${outcome.failure}`;
  report(`${verdict}: goal median cut -> first write < ${seconds(goalRecoveryMsMax, 1)} s (got ${seconds(median(recoveries))}), 0 lost (got ${outcome.lost.length}), 0 accepted after the lease (got ${afterLeaseTotal(rounds)})${why}`);
}

function summaryJson(outcome: Outcome, settings: Settings | undefined, postgres: string, loadBefore: string, loadAfter: string): unknown {
  const { rounds } = outcome;
  const recoveries = rounds.map((round) => round.recoveryMs);
  return {
    benchmark: 'bench/host-failover',
    date: new Date().toISOString(),
    machine: { cores: availableParallelism(), postgres, node: process.version },
    settings,
    loadBefore,
    loadAfter,
    goal: { recoveryMedianMsBelow: goalRecoveryMsMax, lostMax: 0, acceptedAfterLeaseMax: 0 },
    floorMs: settings === undefined ? null : floorMs(settings),
    promoteAllowedMedianMs: rounds.length === 0 ? null : Math.round(median(rounds.map((round) => round.promoteAllowedMs))),
    recoveryMedianMs: recoveries.length === 0 ? null : Math.round(median(recoveries)),
    recoveryMaxMs: recoveries.length === 0 ? null : Math.round(Math.max(...recoveries)),
    lost: outcome.lost.length,
    acknowledged: outcome.acknowledged,
    acceptedAfterLease: afterLeaseTotal(rounds),
    passed: passed(outcome),
    failure: outcome.failure,
    rounds: rounds.map((round) => ({
      ...round,
      recoveryMs: Math.round(round.recoveryMs),
      noticedMs: Math.round(round.noticedMs),
      rejoinMs: Math.round(round.rejoinMs),
      promoteAllowedMs: Math.round(round.promoteAllowedMs),
      lastRenewalBeforeCutMs: Math.round(round.lastRenewalBeforeCutMs),
      reconnectStartedMs: roundOrNull(round.reconnectStartedMs),
      reconnectedMs: roundOrNull(round.reconnectedMs),
      timeline: round.timeline.map((entry) => ({ ...entry, afterMs: Math.round(entry.afterMs) })),
    })),
  };
}

main().catch((error: unknown) => {
  process.stderr.write(`bench/host-failover failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
