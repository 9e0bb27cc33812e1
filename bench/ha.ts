import { appendFile, chown, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import type { ClusterView, InstanceView } from '../src/api/view.js';
import { loadConfig } from '../src/config.js';
import { Binaries } from '../src/postgres/binaries.js';
import { instancePaths } from '../src/postgres/paths.js';
import type { InstanceId } from '../src/lib/ids.js';
import {
  type BenchCellar,
  type OsUser,
  execOk,
  libpqEnvironment,
  makeTempDir,
  queryOnce,
  serverUser,
  sleep,
  startServerReady,
  waitStandbyStreaming,
  stopPid,
  twoFreePorts,
  waitFor,
} from './lib.js';

/**
 * What bench/failover and bench/switchover share: the promote floor (a raw standby promoted the
 * way Cellar promotes), a Cellar cluster driven through the CLI, and clients through the proxy
 * that timestamp every write and every new connection.
 */

/**
 * The circuit breaker would turn automatic failover off after CELLAR_FAILOVERS_MAX (default 5)
 * failovers in its window; a bench that kills the primary round after round must not trip it.
 */
export const haCellarEnvironment: Readonly<Record<string, string>> = { CELLAR_FAILOVERS_MAX: '1000' };

const createWaitSecondsMax = 300;
const createCliMsMax = (createWaitSecondsMax + 30) * 1000;
const showCliMsMax = 30_000;
const settlePollMs = 200;
const initdbMsMax = 120_000;
const readyWaitMsMax = 60_000;
const readyPollMs = 10;
const baseBackupMsMax = 300_000;
const streamingWaitMsMax = 60_000;
const streamingPollMs = 10;
/** Cellar's own promote poll (src/dataplane/local/promote.ts): the floor polls the same way. */
const promotePollMs = 5;
const promoteWaitMsMax = 60_000;
const connectTimeoutMs = 15_000;
const queryTimeoutMs = 15_000;
/** A client end() on a dead socket normally returns at once; never wait on it longer than this. */
const clientEndMsMax = 1_000;
const writerReconnectPauseMs = 10;
/** ~20 minutes of writes at the fastest pace here: a stuck stop cannot grow memory without bound. */
const writeAttemptsMax = 1_000_000;
const connectAttemptsMax = 200_000;
/** Cellar's initdb flags (src/postgres/server.ts) except host auth trust, so no password is needed. */
const initdbFlags = ['--no-locale', '-E', 'UTF8', '--data-checksums', '-U', 'postgres', '--auth-local=trust', '--auth-host=trust'];

export type Report = (line: string) => void;

/** Ctrl-C or SIGTERM stops a bench at the next round boundary, so every finally still cleans up. */
let interruptedBy: NodeJS.Signals | null = null;

export function watchInterrupts(): void {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => (interruptedBy = signal));
}

export function throwIfInterrupted(): void {
  if (interruptedBy !== null) throw new Error(`interrupted by ${interruptedBy}; cleaning up`);
}

export function parseRounds(roundsDefault: number, roundsMax: number): { rounds: number; json: boolean } {
  const { values } = parseArgs({ options: { rounds: { type: 'string' }, json: { type: 'boolean' } } });
  const rounds = values.rounds === undefined ? roundsDefault : Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > roundsMax) throw new Error(`--rounds must be an integer from 1 to ${roundsMax}`);
  return { rounds, json: values.json === true };
}

export interface HaEnvironment {
  readonly binDir: string;
  readonly user: OsUser;
  readonly postgresVersion: string;
}

/** The same binaries Cellar would pick: CELLAR_PG_BIN first, then the newest installed major. */
export async function discoverEnvironment(): Promise<HaEnvironment> {
  const binaries = await Binaries.discover({ pgBin: loadConfig().pgBin });
  const newest = binaries.versions().at(-1);
  if (newest === undefined) throw new Error('no PostgreSQL binaries found');
  const binDir = binaries.binFor(newest);
  const version = await execOk(join(binDir, 'postgres'), ['--version'], { timeoutMs: 10_000 });
  return { binDir, user: await serverUser(), postgresVersion: version.stdout.trim() };
}

export function percentile(values: readonly number[], fraction: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))] as number;
}

// ---------------------------------------------------------------------------------------------
// The promote floor: a raw primary made once, and per measurement a fresh standby (pg_basebackup)
// promoted with pg_promote(false) and a 5 ms poll of pg_is_in_recovery(), as Cellar does.

export interface FloorPrimary {
  readonly environment: HaEnvironment;
  readonly root: string;
  readonly sockets: string;
  readonly port: number;
  readonly pid: number;
}

function serverSettings(port: number, sockets: string): string {
  return `\nport = ${port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '${sockets}'\n`;
}

/** Starts postgres detached and polls postmaster.pid until ready (or standby). */
function startServer(environment: HaEnvironment, pgdata: string, logFile: string): Promise<number> {
  return startServerReady(environment.binDir, environment.user, pgdata, logFile, readyWaitMsMax, readyPollMs);
}

export async function startFloorPrimary(environment: HaEnvironment): Promise<FloorPrimary> {
  const { user } = environment;
  const root = await makeTempDir('cellar-bench-floor-', user);
  try {
    const sockets = join(root, 's');
    await mkdir(sockets, { mode: 0o700 });
    if (user.switchUser) await chown(sockets, user.uid, user.gid);
    const pgdata = join(root, 'p');
    await execOk(join(environment.binDir, 'initdb'), ['-D', pgdata, ...initdbFlags], { user, env: { ...libpqEnvironment }, timeoutMs: initdbMsMax });
    const [port] = await twoFreePorts();
    await appendFile(join(pgdata, 'postgresql.conf'), serverSettings(port, sockets));
    const pid = await startServer(environment, pgdata, join(root, 'p.log'));
    return { environment, root, sockets, port, pid };
  } catch (error) {
    await rm(root, { recursive: true, force: true });
    throw error;
  }
}

export async function stopFloorPrimary(floor: FloorPrimary): Promise<void> {
  try {
    await stopPid(floor.pid);
  } finally {
    await rm(floor.root, { recursive: true, force: true });
  }
}

/** One promote of a fresh streaming standby, in ms from pg_promote(false) to pg_is_in_recovery() false. */
export async function measurePromote(floor: FloorPrimary, index: number): Promise<number> {
  const { environment } = floor;
  const standby = join(floor.root, `standby-${index}`);
  const [standbyPort] = await twoFreePorts();
  let pid: number | null = null;
  try {
    const args = ['-h', '127.0.0.1', '-p', String(floor.port), '-U', 'postgres', '-D', standby, '-X', 'stream', '-c', 'fast'];
    await execOk(join(environment.binDir, 'pg_basebackup'), args, { user: environment.user, env: { ...libpqEnvironment }, timeoutMs: baseBackupMsMax });
    await writeStandbyFiles(floor, standby, standbyPort);
    pid = await startServer(environment, standby, join(floor.root, `standby-${index}.log`));
    const target = { host: floor.sockets, port: standbyPort, user: 'postgres', database: 'postgres' };
    await waitStandbyStreaming(target, streamingWaitMsMax, streamingPollMs);
    return await timePromote(target);
  } finally {
    if (pid !== null) await stopPid(pid);
    await rm(standby, { recursive: true, force: true });
  }
}

async function writeStandbyFiles(floor: FloorPrimary, standby: string, standbyPort: number): Promise<void> {
  const conninfo = `host=127.0.0.1 port=${floor.port} user=postgres sslmode=disable gssencmode=disable`;
  // The copied postgresql.conf names the primary's port; a later line wins.
  await appendFile(join(standby, 'postgresql.conf'), `${serverSettings(standbyPort, floor.sockets)}primary_conninfo = '${conninfo}'\n`);
  const signal = join(standby, 'standby.signal');
  await writeFile(signal, '', { mode: 0o600 });
  const { user } = floor.environment;
  if (user.switchUser) await chown(signal, user.uid, user.gid);
}

/** The connection is open before the clock starts: Cellar's promote step also connects first. */
async function timePromote(target: pg.ClientConfig): Promise<number> {
  const client = new pg.Client({ ...target, connectionTimeoutMillis: connectTimeoutMs, query_timeout: queryTimeoutMs });
  client.on('error', () => {});
  await client.connect();
  try {
    const started = performance.now();
    await client.query('select pg_promote(false)');
    const deadline = started + promoteWaitMsMax;
    while (performance.now() < deadline) {
      const rows = (await client.query<{ recovery: boolean }>('select pg_is_in_recovery() as recovery')).rows;
      if (rows[0]?.recovery === false) return performance.now() - started;
      await sleep(promotePollMs);
    }
    throw new Error(`the floor standby was still in recovery ${promoteWaitMsMax} ms after pg_promote`);
  } finally {
    await client.end().catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// A Cellar cluster through the CLI.

export async function createCluster(cellar: BenchCellar, name: string): Promise<ClusterView> {
  const created = await cellar.cliJson<ClusterView>(['clusters', 'create', name, '--wait', '--timeout', String(createWaitSecondsMax)], createCliMsMax);
  if (created.uri === null) throw new Error(`cluster ${name} has no uri: ${JSON.stringify(created)}`);
  return created;
}

export function showCluster(cellar: BenchCellar, name: string): Promise<ClusterView> {
  return cellar.cliJson<ClusterView>(['clusters', 'show', name], showCliMsMax);
}

export function primaryOf(cluster: ClusterView): InstanceView {
  const primaries = cluster.instances.filter((instance) => instance.role === 'primary');
  if (primaries.length !== 1) throw new Error(`cluster ${cluster.name} has ${primaries.length} primaries: ${JSON.stringify(cluster.instances)}`);
  return primaries[0] as InstanceView;
}

/**
 * Running, every instance running, every replica streaming, and commits waiting for a replica
 * again: only then does a sync cluster promise that an acknowledged write survives the primary.
 */
export function isSettled(cluster: ClusterView): boolean {
  if (cluster.state !== 'running') return false;
  if (!cluster.instances.every((instance) => instance.state === 'running' && !instance.fenced && (instance.role === 'primary' || instance.streaming === true))) return false;
  return cluster.durability === 'async' || cluster.replication === 'sync';
}

/** Until settled, and, if awayFrom is given, with another instance as primary; bounded. */
export function waitSettled(cellar: BenchCellar, name: string, awayFrom: string | null, timeoutMs: number): Promise<ClusterView> {
  let last = 'not shown yet';
  return waitFor(
    `cluster ${name} to settle${awayFrom === null ? '' : ` away from ${awayFrom}`}`,
    async () => {
      const cluster = await showCluster(cellar, name);
      last = describeCluster(cluster);
      if (awayFrom !== null && primaryOf(cluster).id === awayFrom) return undefined;
      return isSettled(cluster) ? cluster : undefined;
    },
    timeoutMs,
    settlePollMs,
  ).catch((error: unknown) => {
    throw new Error(`${error instanceof Error ? error.message : String(error)}; last seen: ${last}`);
  });
}

export function describeCluster(cluster: ClusterView): string {
  const instances = cluster.instances.map((instance) => `${instance.id} ${instance.role} ${instance.state}${instance.streaming === true ? ' streaming' : ''}${instance.fenced ? ' fenced' : ''}`);
  return `${cluster.state}, replication ${cluster.replication ?? '-'}; ${instances.join('; ')}`;
}

/** The first line of postmaster.pid (src/postgres/paths.ts). */
export async function postmasterPid(cellar: BenchCellar, instanceId: string): Promise<number> {
  const text = await readFile(join(instancePaths(cellar.dataDir, instanceId as InstanceId).pgdata, 'postmaster.pid'), 'utf8');
  const pid = Number(text.split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`postmaster.pid of ${instanceId} names no pid: ${text.slice(0, 200)}`);
  return pid;
}

export interface TimelineEntry {
  /** The label the cluster entered. */
  readonly label: string;
  /** Since the reference time; the event's clock is the store's now() at the hop's commit. */
  readonly afterMs: number;
  readonly reason: string;
}

/**
 * The cluster machine's hops since `sinceWallMs` (Date.now() of the kill or the CLI spawn), plus
 * `sync`/`async` when durability changed. An event is written when the step before the label
 * finishes, so `route` is when repoint ended and `rejoin` is when the proxy's route was switched.
 */
export function clusterTimeline(cluster: ClusterView, sinceWallMs: number): TimelineEntry[] {
  const entries: TimelineEntry[] = [];
  for (const event of cluster.events) {
    const afterMs = Date.parse(event.at) - sinceWallMs;
    if (event.entity !== cluster.id || afterMs < 0) continue;
    const label = event.from !== event.to ? event.to : durabilityLabel(event.reason);
    if (label !== null) entries.push({ label, afterMs, reason: event.reason });
  }
  return entries.sort((a, b) => a.afterMs - b.afterMs);
}

/** The reasons maintainSync gives (src/machines/cluster.ts) when commits start or stop waiting for a replica. */
function durabilityLabel(reason: string): string | null {
  if (reason.startsWith('commits wait for a replica')) return 'sync';
  if (reason.includes('dropped to async')) return 'async';
  return null;
}

export function timelineText(timeline: readonly TimelineEntry[]): string {
  return timeline.map((entry) => `${entry.label} ${(entry.afterMs / 1000).toFixed(3)}`).join(', ');
}

export function firstAfterMs(timeline: readonly TimelineEntry[], label: string): number | null {
  return timeline.find((entry) => entry.label === label)?.afterMs ?? null;
}

/** Warnings Cellar logged from `sinceWallMs` on, one line each, at most `linesMax`. */
export function warningsSince(cellar: BenchCellar, sinceWallMs: number, linesMax: number): string[] {
  const lines = cellar.warningLogLines.filter((line) => line.timeMs >= sinceWallMs);
  const shown = lines.slice(0, linesMax).map((line) => `+${((line.timeMs - sinceWallMs) / 1000).toFixed(3)} ${line.message}${line.detail ? ` (${line.detail})` : ''}`);
  return lines.length > linesMax ? [...shown, `… and ${lines.length - linesMax} more`] : shown;
}

/** What the data plane logged with a duration from `sinceWallMs` on (promote, rewind, start), one line each. */
export function dataPlaneSince(cellar: BenchCellar, sinceWallMs: number): string[] {
  return cellar.timedLogLines
    .filter((line) => line.timeMs >= sinceWallMs)
    .map((line) => `+${((line.timeMs - sinceWallMs) / 1000).toFixed(3)} ${line.instanceId} ${line.message} (${(line.durationMs / 1000).toFixed(3)} s)`);
}

/** The last `linesMax` lines of an instance's postgres.log that match `pattern`: evidence for a slow step. */
export async function postgresLogExcerpt(cellar: BenchCellar, instanceId: string, pattern: RegExp, linesMax: number): Promise<string[]> {
  const text = await readFile(instancePaths(cellar.dataDir, instanceId as InstanceId).log, 'utf8').catch((error: unknown) => `(cannot read: ${String(error)})`);
  return text.split('\n').filter((line) => pattern.test(line)).slice(-linesMax);
}

// ---------------------------------------------------------------------------------------------
// Clients through the proxy.

async function endBounded(client: pg.Client): Promise<void> {
  await Promise.race([client.end().catch(() => {}), sleep(clientEndMsMax)]);
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export interface Acknowledgement {
  readonly id: number;
  /** performance.now() when the INSERT was sent (or its connect began, after an error). */
  readonly issuedAtMs: number;
  readonly acknowledgedAtMs: number;
}

export interface WriteError {
  readonly atMs: number;
  readonly message: string;
}

/** A new connection of the writer: when its connect began and when it was ready (null if it failed). */
export interface WriterConnect {
  readonly startedAtMs: number;
  readonly connectedAtMs: number | null;
}

export interface WriteLog {
  readonly acknowledged: Acknowledgement[];
  readonly errors: WriteError[];
  readonly connects: WriterConnect[];
}

/**
 * One client on one persistent connection inserting sequential ids into `table`, reconnecting
 * after any error (like an application would), timestamping each attempt's issue and outcome.
 */
export class Writer {
  readonly log: WriteLog = { acknowledged: [], errors: [], connects: [] };
  private stopping = false;
  private readonly loop: Promise<void>;

  private constructor(
    private readonly uri: string,
    private readonly table: string,
    private readonly pauseMs: number,
  ) {
    this.loop = this.run();
  }

  static start(uri: string, table: string, pauseMs: number): Writer {
    return new Writer(uri, plainIdentifier(table), pauseMs);
  }

  private async run(): Promise<void> {
    let client: pg.Client | null = null;
    let next = 1;
    for (let attempt = 0; attempt < writeAttemptsMax && !this.stopping; attempt += 1) {
      const issuedAtMs = performance.now();
      try {
        if (client === null) {
          client = new pg.Client({ connectionString: this.uri, connectionTimeoutMillis: connectTimeoutMs, query_timeout: queryTimeoutMs });
          client.on('error', () => {});
          const connect: { startedAtMs: number; connectedAtMs: number | null } = { startedAtMs: issuedAtMs, connectedAtMs: null };
          if (this.log.connects.length < connectAttemptsMax) this.log.connects.push(connect);
          await client.connect();
          connect.connectedAtMs = performance.now();
        }
        const id = next;
        next += 1;
        await client.query(`insert into ${this.table} (id) values ($1)`, [id]);
        this.log.acknowledged.push({ id, issuedAtMs, acknowledgedAtMs: performance.now() });
        await sleep(this.pauseMs);
      } catch (error) {
        this.log.errors.push({ atMs: performance.now(), message: messageOf(error) });
        if (client !== null) await endBounded(client);
        client = null;
        await sleep(writerReconnectPauseMs);
      }
    }
    if (client !== null) await endBounded(client);
  }

  get acknowledgedCount(): number {
    return this.log.acknowledged.length;
  }

  async stop(): Promise<WriteLog> {
    this.stopping = true;
    await this.loop;
    return this.log;
  }
}

/** A table name is interpolated into SQL (identifiers cannot be bound): only plain lower-case names pass. */
function plainIdentifier(name: string): string {
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`table name ${name} is not a plain identifier`);
  return name;
}

/** Acknowledged ids the table does not hold: writes a client was told were committed, then lost. */
export async function lostIds(uri: string, table: string, log: WriteLog): Promise<number[]> {
  const rows = await queryOnce<{ id: string }>({ connectionString: uri }, `select id from ${plainIdentifier(table)}`);
  const present = new Set(rows.map((row) => Number(row.id)));
  return log.acknowledged.map((ack) => ack.id).filter((id) => !present.has(id));
}

export async function createTable(uri: string, table: string): Promise<void> {
  await queryOnce({ connectionString: uri }, `create table ${plainIdentifier(table)} (id bigint primary key)`);
}

/** The longest wait between consecutive acknowledgements that ended inside [fromMs, toMs]. */
export function longestGapMs(log: WriteLog, fromMs: number, toMs: number): number {
  let longest = 0;
  const times = log.acknowledged.map((ack) => ack.acknowledgedAtMs);
  for (let index = 1; index < times.length; index += 1) {
    const at = times[index] as number;
    if (at < fromMs || at > toMs) continue;
    longest = Math.max(longest, at - (times[index - 1] as number));
  }
  return longest;
}

export interface ConnectAttempt {
  readonly startedAtMs: number;
  readonly endedAtMs: number;
  readonly error: string | null;
}

/**
 * A NEW connection through the proxy every intervalMs (one at a time): connect, `select 1`,
 * close. Each attempt's span runs from the connect to the query's result.
 */
export class Connector {
  readonly attempts: ConnectAttempt[] = [];
  private stopping = false;
  private readonly loop: Promise<void>;

  constructor(
    private readonly uri: string,
    private readonly intervalMs: number,
  ) {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    for (let attempt = 0; attempt < connectAttemptsMax && !this.stopping; attempt += 1) {
      const startedAtMs = performance.now();
      const client = new pg.Client({ connectionString: this.uri, connectionTimeoutMillis: connectTimeoutMs, query_timeout: queryTimeoutMs });
      client.on('error', () => {});
      let error: string | null = null;
      try {
        await client.connect();
        await client.query('select 1');
      } catch (caught) {
        error = messageOf(caught);
      }
      this.attempts.push({ startedAtMs, endedAtMs: performance.now(), error });
      await endBounded(client);
      await sleep(this.intervalMs);
    }
  }

  async stop(): Promise<ConnectAttempt[]> {
    this.stopping = true;
    await this.loop;
    return this.attempts;
  }
}
