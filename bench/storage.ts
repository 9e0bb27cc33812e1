import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import pg from 'pg';
import type { ClusterView } from '../src/api/view.js';
import { measureUsage } from '../src/dataplane/local/usage.js';
import type { ChangeId, InstanceId } from '../src/lib/ids.js';
import { bytesPerStorageGb } from '../src/lib/sizes.js';
import { instancePaths } from '../src/postgres/paths.js';
import { changeState } from '../src/store/config.js';
import { type HaEnvironment, type Report, discoverEnvironment, primaryOf, showCluster, throwIfInterrupted, watchInterrupts } from './ha.js';
import { BenchCellar, median, seconds, sleep, uptime, waitFor } from './lib.js';

/**
 * bench/storage: the storage guard (issue 15, docs/STORAGE.md "Limits") against a writer at full
 * speed. Per round, one cluster (`--replicas 0 --size small --storage-gb G`, real GiB units unless
 * --gb-bytes says otherwise):
 * - pre-fill: an UNLOGGED table (no WAL: fast) through the proxy to ~85 % of the allocation, as the
 *   bench's own walk of the primary's data directory counts it (measureUsage, what Cellar counts);
 * - floor, same cluster, same state: one walk of the data directory (timed); then under a writer
 *   at full speed through the proxy, `ALTER SYSTEM SET default_transaction_read_only = on` +
 *   `pg_reload_conf()` as superuser on the primary, and the time until the writer's next write is
 *   refused; then `ALTER SYSTEM RESET` + reload and the time until a new connection's insert
 *   succeeds. Floor reaction = walk + reload-to-refusal; floor bytes = the crossing's writer's disk rate × it;
 * - Cellar: writers at full speed through the proxy (`--writers`, 2: `insert … select g,
 *   repeat('x', 1000) from generate_series(1, 2000) g` in a loop into a logged table; a dropped
 *   connection is reopened) until the first SQLSTATE 25006 whose message starts with `cluster `.
 *   The bench walks the data directory every ~`--sample-ms` (20) ms: the crossing is the moment
 *   (interpolated between two walks) the use reached CELLAR_STORAGE_READ_ONLY_PERCENT (95) of the
 *   allocation; bytes past it are those of the first walk begun after the writers stopped (a
 *   round refused short of the threshold, which Cellar judges a lead ahead at the growth it
 *   measured, has its crossing projected at the writers' growth: its times and bytes are
 *   negative, before the threshold). The
 *   store is polled every ~20 ms for where the time goes: Cellar's own measurements near the
 *   threshold, the cluster marked full, the `storage_read_only` event;
 * - resize: POST /v1/clusters/NAME/config {storageGb: 2G}, and a new connection + one-row insert
 *   through the proxy every ~20 ms: the time from the request to the first success;
 * - every acknowledged row is checked to be stored.
 * Goals (issue 15): past the threshold by under 1 % of the allocation; writable again within 2 s
 * of a resize (both in every round). Exit 1 on a failed round, a lost row or a goal missed.
 *
 *   node dist/bench/storage.js [--rounds N] [--storage-gb G] [--gb-bytes B] [--writers W] [--sample-ms MS] [--json]
 */

const goalPastPercentMax = 1;
const goalWritableMsMax = 2_000;
const roundsDefault = 3;
const roundsMax = 10;
const storageGbDefault = 4;
const storageGbMax = 64;
const writersDefault = 2;
const writersMax = 8;
const sampleMsDefault = 20;
/** Cellar's default read-only threshold (CELLAR_STORAGE_READ_ONLY_PERCENT); the bench leaves it as it is. */
const readOnlyPercent = 95;
const prefillPercent = 85;
/** The floor's writer must end below this, well short of the threshold, for the crossing to start from below it. */
const floorCeilingPercent = 92;
/** Rows per pre-fill statement at most (~230 MB of heap): short enough to stop near the target, long enough to be fast. */
const prefillRowsMax = 200_000;
/** A 1000-character row takes ~1.17 kB of heap (7 to a page); the first statement uses this, the rest what was measured. */
const prefillRowBytesGuess = 1_170;
const prefillStatementsMax = 200;
const prefillStatementMsMax = 300_000;
const rowsPerBatch = 2_000;
const rowPad = 1_000;
/** Far past any threshold here: a guard that never acts fails the round instead of filling the disk. */
const crossWaitMsMax = 300_000;
const writerConnectMsMax = 15_000;
const writerQueryMsMax = 120_000;
const writerReconnectPauseMs = 5;
const floorWriterWarmupMs = 500;
const floorRefusalWaitMsMax = 30_000;
const proberIntervalMs = 20;
const proberConnectMsMax = 5_000;
const proberQueryMsMax = 10_000;
const writableWaitMsMax = 120_000;
const storePollMs = 20;
const changeWaitMsMax = 120_000;
const samplesMax = 200_000;
const createWaitSecondsMax = 300;
const cliMsMax = (createWaitSecondsMax + 30) * 1_000;
const apiRequestMsMax = 30_000;
const superuserConnectMsMax = 5_000;
const superuserQueryMsMax = 10_000;
const mib = 1024 ** 2;
const errorMessageShownChars = 400;

const nowMs = (): number => performance.timeOrigin + performance.now();

interface Options {
  readonly rounds: number;
  readonly storageGb: number;
  readonly gbBytes: number;
  readonly writers: number;
  readonly sampleMs: number;
  readonly json: boolean;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: { rounds: { type: 'string' }, 'storage-gb': { type: 'string' }, 'gb-bytes': { type: 'string' }, writers: { type: 'string' }, 'sample-ms': { type: 'string' }, json: { type: 'boolean' } },
  });
  const integer = (name: string, text: string | undefined, fallback: number, min: number, max: number): number => {
    const value = text === undefined ? fallback : Number(text);
    if (!Number.isInteger(value) || value < min || value > max) throw new Error(`--${name} must be an integer from ${min} to ${max}`);
    return value;
  };
  return {
    rounds: integer('rounds', values.rounds, roundsDefault, 1, roundsMax),
    storageGb: integer('storage-gb', values['storage-gb'], storageGbDefault, 1, storageGbMax),
    // Cellar's own bounds for CELLAR_STORAGE_GB_BYTES (src/config.ts).
    gbBytes: integer('gb-bytes', values['gb-bytes'], bytesPerStorageGb, 16 * mib, bytesPerStorageGb),
    writers: integer('writers', values.writers, writersDefault, 1, writersMax),
    sampleMs: integer('sample-ms', values['sample-ms'], sampleMsDefault, 0, 1_000),
    json: values.json === true,
  };
}

// ---------------------------------------------------------------------------------------------
// The bench's own measurement of the primary's data directory.

interface Sample {
  readonly startMs: number;
  readonly endMs: number;
  readonly bytes: number;
}

/** Walks the data directory back to back, `pauseMs` apart, until stopped; bounded by samplesMax. */
class Sampler {
  readonly samples: Sample[] = [];
  private stopped = false;
  private failure: unknown = null;
  private readonly loop: Promise<void>;

  constructor(
    private readonly pgdata: string,
    private readonly pauseMs: number,
  ) {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    try {
      while (!this.stopped && this.samples.length < samplesMax) {
        const startMs = nowMs();
        const usage = await measureUsage(this.pgdata);
        this.samples.push({ startMs, endMs: nowMs(), bytes: usage.dataBytes + usage.walBytes });
        await sleep(this.pauseMs);
      }
    } catch (error) {
      this.failure = error;
    }
  }

  /** The first sample begun at or after `ms`, waiting for it (bounded). */
  async firstFrom(ms: number, waitMsMax: number): Promise<Sample> {
    return waitFor(
      'a walk of the data directory begun after the writers stopped',
      async () => {
        if (this.failure !== null) throw this.failure;
        return this.samples.find((sample) => sample.startMs >= ms);
      },
      waitMsMax,
      5,
    );
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
    if (this.failure !== null) throw this.failure;
  }
}

const midMs = (sample: Sample): number => (sample.startMs + sample.endMs) / 2;

/** When the use reached `bytes`: interpolated between the walks either side (each at its midpoint); null if never. */
function crossingMs(samples: readonly Sample[], bytes: number): number | null {
  const index = samples.findIndex((sample) => sample.bytes >= bytes);
  if (index < 0) return null;
  const after = samples[index] as Sample;
  const before = samples[index - 1];
  if (before === undefined || after.bytes === before.bytes) return midMs(after);
  return midMs(before) + ((bytes - before.bytes) / (after.bytes - before.bytes)) * (midMs(after) - midMs(before));
}

/**
 * When the disk would have reached `bytes` at the growth the walks before `untilMs` show, counted
 * from the last of them: for a round refused before it got there. Null without growth.
 */
function projectedCrossingMs(samples: readonly Sample[], fromMs: number, untilMs: number, bytes: number): number | null {
  const rate = growthRate(samples, fromMs, untilMs);
  const last = samples.filter((sample) => midMs(sample) <= untilMs).at(-1);
  if (last === undefined || !(rate > 0)) return null;
  return midMs(last) + ((bytes - last.bytes) / rate) * 1000;
}

/** Bytes per second the disk use grew between two moments, from the walks nearest them. */
function growthRate(samples: readonly Sample[], fromMs: number, toMs: number): number {
  const inside = samples.filter((sample) => midMs(sample) >= fromMs && midMs(sample) <= toMs);
  const first = inside[0];
  const last = inside.at(-1);
  if (first === undefined || last === undefined || last === first) return Number.NaN;
  return ((last.bytes - first.bytes) / (midMs(last) - midMs(first))) * 1000;
}

// ---------------------------------------------------------------------------------------------
// Clients through the proxy.

type PgError = Error & { code?: string; hint?: string; detail?: string };

interface Refusal {
  readonly atMs: number;
  readonly message: string;
  readonly hint: string;
  readonly clear: boolean;
}

/**
 * Inserts batches on `connections` connections at full speed until `stopWhen` says a refusal is
 * the one awaited (or until stopped). A connection that drops (the proxy ends write connections
 * when the cluster fills up) or meets the server's own read-only words is reopened, as a pool would.
 */
class Writers {
  acknowledgedRows = 0;
  readonly acknowledgedAtMs: number[] = [];
  readonly dropsAtMs: number[] = [];
  readonly serverWordsAtMs: number[] = [];
  refusal: Refusal | null = null;
  stoppedAtMs: number | null = null;
  private stopped = false;
  private failure: unknown = null;
  private readonly loops: Promise<void>[];

  constructor(
    private readonly uri: string,
    private readonly table: string,
    connections: number,
    private readonly stopWhen: (refusal: Refusal) => boolean,
    private readonly deadlineMs: number,
  ) {
    this.loops = Array.from({ length: connections }, () => this.run());
  }

  private async connect(): Promise<pg.Client> {
    const client = new pg.Client({ connectionString: this.uri, connectionTimeoutMillis: writerConnectMsMax, query_timeout: writerQueryMsMax });
    client.on('error', () => {});
    await client.connect();
    return client;
  }

  private async run(): Promise<void> {
    let client: pg.Client | null = null;
    try {
      while (!this.stopped) {
        if (nowMs() > this.deadlineMs) throw new Error(`no write refused within ${crossWaitMsMax} ms (${this.acknowledgedRows} rows acknowledged)`);
        if (client === null) client = await this.connect();
        try {
          await client.query(`insert into ${this.table} select g, repeat('x', ${rowPad}) from generate_series(1, ${rowsPerBatch}) g`);
          this.acknowledgedRows += rowsPerBatch;
          this.acknowledgedAtMs.push(nowMs());
        } catch (error) {
          const failure = error as PgError;
          const atMs = nowMs();
          if (failure.code === '25006') {
            const refusal = { atMs, message: failure.message, hint: failure.hint ?? '', clear: failure.message.startsWith('cluster ') };
            if (this.stopWhen(refusal)) {
              this.refusal ??= refusal;
              this.stop();
              break;
            }
            // The server's own words, in the moment before the proxy ends this connection: reopen.
            this.serverWordsAtMs.push(atMs);
          } else if (failure.code !== undefined) {
            throw failure;
          } else {
            this.dropsAtMs.push(atMs);
          }
          await client.end().catch(() => {});
          client = null;
          await sleep(writerReconnectPauseMs);
        }
      }
    } catch (error) {
      this.failure ??= error;
      this.stop();
    } finally {
      await client?.end().catch(() => {});
    }
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.stoppedAtMs = nowMs();
  }

  /** Resolves when every connection has stopped; throws what stopped one that failed. */
  async done(): Promise<void> {
    await Promise.all(this.loops);
    if (this.failure !== null) throw this.failure;
  }

  /** Waits for the awaited refusal (or a failure), bounded by the deadline given at start. */
  async refused(): Promise<Refusal> {
    await waitFor('the writers to be refused', async () => (this.refusal !== null || this.failure !== null || this.stopped ? true : undefined), Math.max(0, this.deadlineMs - nowMs()) + 1_000, 2);
    await this.done();
    if (this.refusal === null) throw new Error('the writers stopped without a refusal');
    return this.refusal;
  }
}

/** A new connection + a one-row insert through the proxy every ~proberIntervalMs, until one succeeds. */
async function probeUntilWritable(uri: string, table: string, waitMsMax: number): Promise<{ atMs: number; tries: number; clearRefusals: number; otherErrors: string[] }> {
  const deadline = nowMs() + waitMsMax;
  let tries = 0;
  let clearRefusals = 0;
  const otherErrors: string[] = [];
  while (nowMs() < deadline) {
    tries += 1;
    const started = nowMs();
    const client = new pg.Client({ connectionString: uri, connectionTimeoutMillis: proberConnectMsMax, query_timeout: proberQueryMsMax });
    client.on('error', () => {});
    try {
      await client.connect();
      await client.query(`insert into ${table} values (${tries}, 'probe')`);
      return { atMs: nowMs(), tries, clearRefusals, otherErrors };
    } catch (error) {
      const failure = error as PgError;
      if (failure.code === '25006' && failure.message.startsWith('cluster ')) clearRefusals += 1;
      else if (otherErrors.length < 3) otherErrors.push(`${failure.code ?? '-'} ${failure.message}`);
    } finally {
      await client.end().catch(() => {});
    }
    await sleep(Math.max(0, proberIntervalMs - (nowMs() - started)));
  }
  throw new Error(`no insert succeeded within ${waitMsMax} ms (${tries} tries; ${clearRefusals} refused as full; ${otherErrors.join(' | ')})`);
}

async function queryUri<R extends pg.QueryResultRow>(uri: string, sql: string, timeoutMs: number): Promise<R[]> {
  const client = new pg.Client({ connectionString: uri, connectionTimeoutMillis: writerConnectMsMax, query_timeout: timeoutMs });
  client.on('error', () => {});
  await client.connect();
  try {
    return (await client.query<R>(sql)).rows;
  } finally {
    await client.end().catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// Cellar's side, from its store: its measurements of the primary and the cluster's full mark.

interface Measurement {
  readonly atMs: number;
  readonly bytes: number;
}

/** Polls the store for the primary's measurements and the cluster's mark, until stopped. */
class StoreWatch {
  readonly measurements: Measurement[] = [];
  markedAtMs: number | null = null;
  private stopped = false;
  private failure: unknown = null;
  private readonly loop: Promise<void>;

  constructor(
    private readonly cellar: BenchCellar,
    private readonly clusterName: string,
    private readonly instanceId: string,
    private readonly deadlineMs: number,
  ) {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    try {
      while (!this.stopped && nowMs() < this.deadlineMs) {
        const [row] = await this.cellar.storeQuery<{ measured_ms: number | null; bytes: string | null; marked: boolean }>(
          `select extract(epoch from i.usage_measured_at) * 1000 as measured_ms,
                  ((i.usage ->> 'dataBytes')::bigint + (i.usage ->> 'walBytes')::bigint)::text as bytes,
                  c.storage_read_only is not null as marked
             from instances i join clusters c on c.id = i.cluster_id where i.id = $1 and c.name = $2`,
          [this.instanceId, this.clusterName],
        );
        if (row !== undefined && row.measured_ms !== null && row.bytes !== null && this.measurements.at(-1)?.atMs !== Number(row.measured_ms)) {
          this.measurements.push({ atMs: Number(row.measured_ms), bytes: Number(row.bytes) });
        }
        if (row?.marked === true && this.markedAtMs === null) this.markedAtMs = nowMs();
        await sleep(storePollMs);
      }
    } catch (error) {
      this.failure = error;
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
    if (this.failure !== null) throw this.failure;
  }
}

function eventAtMs(cluster: ClusterView, code: string, afterMs: number): number | null {
  const times = cluster.events.filter((event) => event.code === code).map((event) => Date.parse(event.at)).filter((ms) => ms >= afterMs - 1_000);
  return times.length === 0 ? null : Math.min(...times);
}

// ---------------------------------------------------------------------------------------------
// A round.

interface Floor {
  readonly walkMs: number;
  readonly reloadToRefusedMs: number;
  readonly reloadToWritableMs: number;
  /** The floor's own writer (same connections), for comparison; the floor's bytes use the crossing's rate. */
  readonly rateBytesPerSecond: number;
  readonly reactionMs: number;
}

interface Crossing {
  readonly rateBytesPerSecond: number;
  readonly rowsBytesPerSecond: number;
  /** From the crossing: Cellar's first measurement at or past the threshold (committed), the mark, the event, the first dropped write connection, the clear refusal. */
  readonly measuredMs: number | null;
  readonly markedMs: number | null;
  readonly eventMs: number | null;
  readonly firstDropMs: number | null;
  readonly refusedMs: number;
  /** Gaps between Cellar's measurements of the primary in the 3 s before it saw the threshold. */
  readonly measurementGapsMs: readonly number[];
  /** Bytes past the threshold in Cellar's first measurement at or past it. */
  readonly measuredPastBytes: number | null;
  readonly pastAtRefusalBytes: number;
  readonly pastSettledBytes: number;
  readonly walkMedianMs: number;
  readonly walkPeriodMedianMs: number;
  readonly drops: number;
  readonly serverWords: number;
  readonly rowsAfterRefusal: number;
  readonly message: string;
  readonly hint: string;
}

interface Resize {
  readonly toGb: number;
  readonly writableMs: number;
  readonly changeDoneMs: number;
  readonly eventMs: number | null;
  readonly tries: number;
  readonly clearRefusals: number;
}

interface Round {
  readonly index: number;
  readonly allocatedBytes: number;
  readonly prefillMs: number;
  readonly prefillPercent: number;
  readonly floor: Floor;
  readonly crossing: Crossing;
  readonly resize: Resize;
  readonly acknowledgedRows: number;
  readonly storedRows: number;
}

interface Outcome {
  readonly rounds: readonly Round[];
  readonly failure: string | null;
}

async function main(): Promise<void> {
  watchInterrupts();
  const options = parseOptions();
  const report: Report = (line) => (options.json ? process.stderr : process.stdout).write(`${line}\n`);
  const environment = await discoverEnvironment();
  const loadBefore = await uptime();
  const allocatedBytes = options.storageGb * options.gbBytes;
  report(`bench/storage: ${options.rounds} round(s); ${availableParallelism()} cores; ${environment.postgresVersion}; node ${process.version}`);
  report(`load before: ${loadBefore}`);
  report(
    `each round: a cluster of ${options.storageGb} GB (${Math.round(allocatedBytes / mib)} MiB; 1 GB = ${options.gbBytes} bytes), no replica, size small; pre-filled (unlogged) to ~${prefillPercent} %; ` +
      `${options.writers} writer(s) at full speed through the proxy (${rowsPerBatch} rows of ${rowPad} characters per insert) until the clear refusal; the data directory walked every ~${options.sampleMs} ms; then a resize to ${options.storageGb * 2} GB`,
  );
  const cellarEnvironment = {
    CELLAR_USAGE_INTERVAL_MS: '30000',
    CELLAR_STORAGE_RESIZE_COOLDOWN_MS: '0',
    ...(options.gbBytes === bytesPerStorageGb ? {} : { CELLAR_STORAGE_GB_BYTES: String(options.gbBytes) }),
  };
  const cellar = await BenchCellar.create(cellarEnvironment);
  const problems: string[] = [];
  let outcome: Outcome = { rounds: [], failure: null };
  try {
    const upStarted = performance.now();
    await cellar.start();
    report(`cellar up: ${seconds(performance.now() - upStarted, 1)} s`);
    outcome = await runRounds(cellar, options, report);
  } finally {
    problems.push(...(await cellar.destroy()));
  }
  const loadAfter = await uptime();
  report(`load after:  ${loadAfter}`);
  printSummary(outcome, report);
  for (const problem of problems) report(`cleanup: ${problem}`);
  if (options.json) process.stdout.write(`${JSON.stringify(summaryJson(outcome, options, environment, cellarEnvironment, loadBefore, loadAfter, problems), null, 2)}\n`);
  if (verdict(outcome) !== 'PASS') process.exitCode = 1;
}

async function runRounds(cellar: BenchCellar, options: Options, report: Report): Promise<Outcome> {
  const done: Round[] = [];
  for (let index = 1; index <= options.rounds; index += 1) {
    try {
      throwIfInterrupted();
      const round = await runRound(cellar, options, index, report);
      done.push(round);
      printRound(round, report);
      if (round.storedRows < round.acknowledgedRows) return { rounds: done, failure: `round ${index}: ${round.acknowledgedRows - round.storedRows} acknowledged rows are missing` };
    } catch (error) {
      const failure = `round ${index} failed: ${error instanceof Error ? error.message : String(error)}`;
      report(failure);
      report(`cellar output tail:\n${cellar.logTail()}`);
      return { rounds: done, failure };
    }
  }
  return { rounds: done, failure: null };
}

async function runRound(cellar: BenchCellar, options: Options, index: number, report: Report): Promise<Round> {
  report(`\nround ${index}: creating the cluster, pre-filling, floor, crossing, resize`);
  const name = `storage-${index}`;
  const created = await cellar.cliJson<ClusterView>(
    ['clusters', 'create', name, '--replicas', '0', '--size', 'small', '--storage-gb', String(options.storageGb), '--wait', '--timeout', String(createWaitSecondsMax)],
    cliMsMax,
  );
  try {
    if (created.uri === null) throw new Error(`cluster ${name} has no uri`);
    const uri = created.uri;
    const primary = primaryOf(created);
    if (primary.port === null) throw new Error(`the primary ${primary.id} has no port`);
    const pgdata = instancePaths(cellar.dataDir, primary.id as InstanceId).pgdata;
    const [secret] = await cellar.storeQuery<{ password: string | null }>(`select secrets ->> 'superuserPassword' as password from clusters where name = $1`, [name]);
    if (typeof secret?.password !== 'string') throw new Error(`no superuser password stored for ${name}`);
    const superuser = `postgresql://postgres:${encodeURIComponent(secret.password)}@127.0.0.1:${primary.port}/postgres?sslmode=disable`;
    const allocatedBytes = options.storageGb * options.gbBytes;
    const thresholdBytes = (allocatedBytes * readOnlyPercent) / 100;
    await queryUri(uri, 'create unlogged table pad (id bigint, pad text); create table written (id bigint, pad text); create table floor_written (id bigint, pad text); create table probe (id bigint, pad text)', superuserQueryMsMax);

    const prefillStarted = nowMs();
    const prefilled = await prefill(uri, pgdata, (allocatedBytes * prefillPercent) / 100);
    const prefillMs = nowMs() - prefillStarted;

    const floor = await floorStep(uri, superuser, pgdata, options);
    const afterFloor = await measureUsage(pgdata);
    const afterFloorBytes = afterFloor.dataBytes + afterFloor.walBytes;
    // The floor's writer must leave room below the threshold, or Cellar's guard acts in the floor's place.
    if (afterFloorBytes >= (allocatedBytes * floorCeilingPercent) / 100) {
      throw new Error(`the floor's writer left the cluster at ${((afterFloorBytes / allocatedBytes) * 100).toFixed(1)} % (past ${floorCeilingPercent} %): the allocation is too small for this writer; give a larger --storage-gb or --gb-bytes`);
    }
    const crossing = await crossingStep(cellar, name, primary.id, uri, pgdata, thresholdBytes, options);
    const resize = await resizeStep(cellar, name, uri, options.storageGb * 2);
    const [stored] = await queryUri<{ rows: string }>(uri, 'select count(*)::text as rows from written', writerQueryMsMax);
    return {
      index,
      allocatedBytes,
      prefillMs,
      prefillPercent: (prefilled / allocatedBytes) * 100,
      floor,
      crossing,
      resize: resize.resize,
      acknowledgedRows: crossing.acknowledgedRows,
      storedRows: Number(stored?.rows ?? 0),
    };
  } finally {
    // Each round's cluster holds gigabytes: it goes before the next one is made.
    const deleted = await cellar.cli(['clusters', 'delete', name, '--wait', '--timeout', String(createWaitSecondsMax)], cliMsMax);
    if (deleted.code !== 0) report(`round ${index}: deleting ${name} exited ${deleted.code}: ${deleted.stderr.slice(-1_000)}`);
  }
}

/** Unlogged inserts through the proxy until the walk counts `targetBytes`; each statement sized from the last one's bytes per row. */
async function prefill(uri: string, pgdata: string, targetBytes: number): Promise<number> {
  const client = new pg.Client({ connectionString: uri, connectionTimeoutMillis: writerConnectMsMax, query_timeout: prefillStatementMsMax });
  client.on('error', () => {});
  await client.connect();
  try {
    const used = async (): Promise<number> => {
      const usage = await measureUsage(pgdata);
      return usage.dataBytes + usage.walBytes;
    };
    let bytes = await used();
    let rowBytes = prefillRowBytesGuess;
    let next = 0;
    for (let statement = 0; statement < prefillStatementsMax; statement += 1) {
      const rows = Math.min(prefillRowsMax, Math.floor((targetBytes - bytes) / rowBytes));
      if (rows < rowsPerBatch) return bytes;
      await client.query(`insert into pad select g, repeat('x', ${rowPad}) from generate_series(${next + 1}, ${next + rows}) g`);
      next += rows;
      const after = await used();
      if (after > bytes) rowBytes = (after - bytes) / rows;
      bytes = after;
    }
    throw new Error(`${prefillStatementsMax} pre-fill statements and still below ${Math.round(targetBytes / mib)} MiB`);
  } finally {
    await client.end().catch(() => {});
  }
}

/** The raw steps the guard needs, without Cellar, on the same cluster in the same state. */
async function floorStep(uri: string, superuser: string, pgdata: string, options: Options): Promise<Floor> {
  const walkStarted = nowMs();
  await measureUsage(pgdata);
  const walkMs = nowMs() - walkStarted;
  const admin = new pg.Client({ connectionString: superuser, connectionTimeoutMillis: superuserConnectMsMax, query_timeout: superuserQueryMsMax });
  admin.on('error', () => {});
  await admin.connect();
  const sampler = new Sampler(pgdata, options.sampleMs);
  // The proxy does not know of this read-only server, so the refusal is the server's own words.
  const writers = new Writers(uri, 'floor_written', options.writers, () => true, nowMs() + floorRefusalWaitMsMax + floorWriterWarmupMs);
  let readOnlySet = false;
  try {
    const writerStarted = nowMs();
    await sleep(floorWriterWarmupMs);
    await admin.query('alter system set default_transaction_read_only = on');
    readOnlySet = true;
    const reloadAtMs = nowMs();
    await admin.query('select pg_reload_conf()');
    const refusal = await writers.refused();
    const rateBytesPerSecond = growthRate(sampler.samples, writerStarted, reloadAtMs);
    await admin.query('alter system reset default_transaction_read_only');
    const resetAtMs = nowMs();
    await admin.query('select pg_reload_conf()');
    readOnlySet = false;
    const writable = await probeUntilWritable(uri, 'probe', floorRefusalWaitMsMax);
    const reactionMs = walkMs + (refusal.atMs - reloadAtMs);
    return { walkMs, reloadToRefusedMs: refusal.atMs - reloadAtMs, reloadToWritableMs: writable.atMs - resetAtMs, rateBytesPerSecond, reactionMs };
  } finally {
    writers.stop();
    await writers.done().catch(() => {});
    await sampler.stop().catch(() => {});
    if (readOnlySet) await admin.query('alter system reset default_transaction_read_only; select pg_reload_conf()').catch(() => {});
    await admin.end().catch(() => {});
  }
}

async function crossingStep(
  cellar: BenchCellar,
  name: string,
  instanceId: string,
  uri: string,
  pgdata: string,
  thresholdBytes: number,
  options: Options,
): Promise<Crossing & { acknowledgedRows: number }> {
  const startedMs = nowMs();
  const deadlineMs = startedMs + crossWaitMsMax;
  const sampler = new Sampler(pgdata, options.sampleMs);
  const watch = new StoreWatch(cellar, name, instanceId, deadlineMs + 5_000);
  const writers = new Writers(uri, 'written', options.writers, (refusal) => refusal.clear, deadlineMs);
  try {
    const refusal = await writers.refused();
    const stoppedMs = writers.stoppedAtMs ?? refusal.atMs;
    const atRefusal = await sampler.firstFrom(refusal.atMs, 10_000);
    const settled = await sampler.firstFrom(nowMs(), 10_000);
    await sampler.stop();
    await watch.stop();
    // Stopped short of the threshold (Cellar judges it a lead ahead at the growth it measured):
    // the crossing is where the writers' growth would have carried the disk, after the refusal.
    const crossMs = crossingMs(sampler.samples, thresholdBytes) ?? projectedCrossingMs(sampler.samples, startedMs, refusal.atMs, thresholdBytes);
    if (crossMs === null) throw new Error(`refused (${refusal.message}) with no growth to project the crossing from: last walk ${Math.round((sampler.samples.at(-1)?.bytes ?? 0) / mib)} MiB`);
    // The measurement the guard acted on: the first at or past the threshold, or (judged a lead
    // ahead) the last one before the mark.
    const seen = watch.measurements.find((measurement) => measurement.bytes >= thresholdBytes && (watch.markedAtMs === null || measurement.atMs <= watch.markedAtMs)) ??
      watch.measurements.filter((measurement) => watch.markedAtMs !== null && measurement.atMs <= watch.markedAtMs).at(-1);
    const gaps: number[] = [];
    if (seen !== undefined) {
      const near = watch.measurements.filter((measurement) => measurement.atMs <= seen.atMs && measurement.atMs >= seen.atMs - 3_000);
      for (let index = 1; index < near.length; index += 1) gaps.push((near[index] as Measurement).atMs - (near[index - 1] as Measurement).atMs);
    }
    const shown = await showCluster(cellar, name);
    const eventMs = eventAtMs(shown, 'storage_read_only', startedMs);
    const walks = sampler.samples.map((sample) => sample.endMs - sample.startMs);
    const periods = sampler.samples.slice(1).map((sample, index) => sample.startMs - (sampler.samples[index] as Sample).startMs);
    // The proxy ends write connections only when the cluster is marked full, before or after the crossing.
    const firstDrop = writers.dropsAtMs[0] ?? null;
    const rowsBytesPerSecond = ((writers.acknowledgedAtMs.filter((ms) => ms <= crossMs).length * rowsPerBatch * rowPad) / Math.max(1, crossMs - startedMs)) * 1000;
    return {
      rateBytesPerSecond: growthRate(sampler.samples, startedMs, crossMs),
      rowsBytesPerSecond,
      measuredMs: seen === undefined ? null : seen.atMs - crossMs,
      markedMs: watch.markedAtMs === null ? null : watch.markedAtMs - crossMs,
      eventMs: eventMs === null ? null : eventMs - crossMs,
      firstDropMs: firstDrop === null ? null : firstDrop - crossMs,
      refusedMs: refusal.atMs - crossMs,
      measurementGapsMs: gaps,
      measuredPastBytes: seen === undefined ? null : seen.bytes - thresholdBytes,
      pastAtRefusalBytes: atRefusal.bytes - thresholdBytes,
      pastSettledBytes: settled.bytes - thresholdBytes,
      walkMedianMs: median(walks),
      walkPeriodMedianMs: periods.length === 0 ? Number.NaN : median(periods),
      drops: writers.dropsAtMs.length,
      serverWords: writers.serverWordsAtMs.length,
      rowsAfterRefusal: writers.acknowledgedAtMs.filter((ms) => ms > refusal.atMs && ms <= stoppedMs + writerQueryMsMax).length * rowsPerBatch,
      message: refusal.message,
      hint: refusal.hint,
      acknowledgedRows: writers.acknowledgedRows,
    };
  } finally {
    writers.stop();
    await writers.done().catch(() => {});
    await sampler.stop().catch(() => {});
    await watch.stop().catch(() => {});
  }
}

async function resizeStep(cellar: BenchCellar, name: string, uri: string, toGb: number): Promise<{ resize: Resize }> {
  const path = `/v1/clusters/${encodeURIComponent(name)}/config`;
  const requestedMs = nowMs();
  const probing = probeUntilWritable(uri, 'probe', writableWaitMsMax);
  // Settled either way before it is awaited: a refused request must not leave it unhandled.
  probing.catch(() => {});
  const response = await cellar.api<{ changeId?: string; error?: unknown }>('POST', path, { storageGb: toGb, reason: 'bench/storage' }, apiRequestMsMax);
  if (response.status !== 201 || typeof response.body?.changeId !== 'string') throw new Error(`POST ${path} answered ${response.status}: ${JSON.stringify(response.body).slice(0, 1_000)}`);
  const changeId = response.body.changeId as ChangeId;
  const pool = await cellar.storePool();
  const changeDoneAtMs = await waitFor(
    `change ${changeId} done`,
    async () => {
      const state = await changeState(pool, changeId);
      if (state?.failed === true) throw new Error(`change ${changeId} failed: ${state.error ?? 'no reason recorded'}`);
      return state?.done === true ? nowMs() : undefined;
    },
    changeWaitMsMax,
    storePollMs,
  );
  const writable = await probing;
  const eventMs = eventAtMs(await showCluster(cellar, name), 'storage_writable', requestedMs);
  return {
    resize: { toGb, writableMs: writable.atMs - requestedMs, changeDoneMs: changeDoneAtMs - requestedMs, eventMs: eventMs === null ? null : eventMs - requestedMs, tries: writable.tries, clearRefusals: writable.clearRefusals },
  };
}

// ---------------------------------------------------------------------------------------------
// Output.

const mb = (bytes: number): string => (bytes / mib).toFixed(1);
const percentOf = (bytes: number, allocatedBytes: number): string => ((bytes / allocatedBytes) * 100).toFixed(2);
const msOrDash = (ms: number | null): string => (ms === null ? '-' : seconds(ms));
/** From the crossing: `+0.120 s` after it, `-0.107 s` before it. */
const fromCrossing = (ms: number | null): string => (ms === null ? '-' : `${ms < 0 ? '' : '+'}${seconds(ms)} s`);

function printRound(round: Round, report: Report): void {
  const { floor, crossing, resize, allocatedBytes } = round;
  report(`\nround ${round.index}: pre-filled to ${round.prefillPercent.toFixed(1)} % in ${seconds(round.prefillMs, 1)} s`);
  report(
    `  floor: walk ${seconds(floor.walkMs)} s + reload to refused ${seconds(floor.reloadToRefusedMs)} s = ${seconds(floor.reactionMs)} s; at the crossing's ${mb(crossing.rateBytesPerSecond)} MiB/s that is ${mb(floorBytes(round))} MiB (${percentOf(floorBytes(round), allocatedBytes)} %) (its own writer ${mb(floor.rateBytesPerSecond)} MiB/s); reset to writable ${seconds(floor.reloadToWritableMs)} s`,
  );
  report(
    `  cellar: disk grew ${mb(crossing.rateBytesPerSecond)} MiB/s (rows ${mb(crossing.rowsBytesPerSecond)} MiB/s); from the crossing: Cellar's deciding measurement ${fromCrossing(crossing.measuredMs)} (${crossing.measuredPastBytes === null ? '-' : mb(crossing.measuredPastBytes)} MiB past; its measurements before, every ${crossing.measurementGapsMs.map((ms) => seconds(ms)).join(', ') || '-'} s), marked full ${fromCrossing(crossing.markedMs)}, first write connection ended ${fromCrossing(crossing.firstDropMs)}, storage_read_only event ${fromCrossing(crossing.eventMs)}, refused ${fromCrossing(crossing.refusedMs)}`,
  );
  report(
    `    past the threshold: ${mb(crossing.pastAtRefusalBytes)} MiB (${percentOf(crossing.pastAtRefusalBytes, allocatedBytes)} %) at the refusal, ${mb(crossing.pastSettledBytes)} MiB (${percentOf(crossing.pastSettledBytes, allocatedBytes)} %) once the writers stopped; ` +
      `bench walk ${seconds(crossing.walkMedianMs)} s every ${seconds(crossing.walkPeriodMedianMs)} s; connections ended ${crossing.drops}, server's own words ${crossing.serverWords}, rows acknowledged after the refusal ${crossing.rowsAfterRefusal}`,
  );
  if (round.index === 1) report(`    clear error: ${crossing.message.slice(0, errorMessageShownChars)}\n    hint: ${crossing.hint.slice(0, errorMessageShownChars)}`);
  report(
    `  resize to ${resize.toGb} GB: writable ${seconds(resize.writableMs)} s after the request (change done ${seconds(resize.changeDoneMs)} s, storage_writable event ${msOrDash(resize.eventMs)} s; ${resize.tries} probes, ${resize.clearRefusals} refused as full)` +
      (writableBeforeResize(round) ? '; writable before the request (space freed below its mark, as a checkpoint removing WAL does): not counted' : ''),
  );
  report(`  rows: ${round.acknowledgedRows} acknowledged, ${round.storedRows} stored${round.storedRows < round.acknowledgedRows ? ' — LOST ROWS' : ''}`);
}

type Verdict = 'PASS' | 'FAIL';

/** The cluster turned writable before the resize was asked for (space freed below its mark): the round says nothing of a resize. */
const writableBeforeResize = (round: Round): boolean => round.resize.eventMs !== null && round.resize.eventMs < 0;
/** Resize to writable, for the rounds that were still full when it was asked for. */
const resizeWritableMs = (round: Round): number | null => (writableBeforeResize(round) ? null : round.resize.writableMs);

/** What the floor's reaction lets the crossing's writer put past the threshold. */
const floorBytes = (round: Round): number => (round.crossing.rateBytesPerSecond * round.floor.reactionMs) / 1000;

const pastPercent = (round: Round): number => (Math.max(round.crossing.pastAtRefusalBytes, round.crossing.pastSettledBytes) / round.allocatedBytes) * 100;

function verdict(outcome: Outcome): Verdict {
  if (outcome.failure !== null || outcome.rounds.length === 0) return 'FAIL';
  const met =
    outcome.rounds.some((round) => resizeWritableMs(round) !== null) &&
    outcome.rounds.every((round) => pastPercent(round) < goalPastPercentMax && (resizeWritableMs(round) ?? 0) <= goalWritableMsMax && round.storedRows >= round.acknowledgedRows);
  return met ? 'PASS' : 'FAIL';
}

function printSummary(outcome: Outcome, report: Report): void {
  const { rounds } = outcome;
  report(`\n== summary (${rounds.length} round(s))`);
  if (rounds.length === 0) {
    report(`FAIL: no round completed (${outcome.failure ?? 'no rounds'})`);
    return;
  }
  const line = (label: string, pick: (round: Round) => number | null, unit: 's' | '%' | 'MiB/s'): void => {
    const values = rounds.map(pick);
    const present = values.filter((value): value is number => value !== null && Number.isFinite(value));
    const shown = (value: number): string => (unit === 's' ? seconds(value) : unit === '%' ? value.toFixed(2) : mb(value));
    const cells = values.map((value) => (value === null || !Number.isFinite(value) ? '-' : shown(value)).padStart(7)).join(' ');
    report(`${`${label} (${unit})`.padEnd(52)}${cells}   ${present.length === 0 ? 'not measured' : `median ${shown(median(present))}  max ${shown(Math.max(...present))}`}`);
  };
  line('writer: disk growth', (round) => round.crossing.rateBytesPerSecond, 'MiB/s');
  line('floor: one walk of the data directory', (round) => round.floor.walkMs, 's');
  line('floor: reload to the write refused', (round) => round.floor.reloadToRefusedMs, 's');
  line('floor: reaction (walk + reload to refused)', (round) => round.floor.reactionMs, 's');
  line('floor: past the threshold (rate x reaction)', (round) => (floorBytes(round) / round.allocatedBytes) * 100, '%');
  line('cellar: crossing to its deciding measurement', (round) => round.crossing.measuredMs, 's');
  line('cellar: its measurement interval at the threshold', (round) => round.crossing.measurementGapsMs.at(-1) ?? null, 's');
  line('cellar: past the threshold at that measurement', (round) => (round.crossing.measuredPastBytes === null ? null : (round.crossing.measuredPastBytes / round.allocatedBytes) * 100), '%');
  line('cellar: crossing to marked full', (round) => round.crossing.markedMs, 's');
  line('cellar: measured to marked full', (round) => (round.crossing.markedMs === null || round.crossing.measuredMs === null ? null : round.crossing.markedMs - round.crossing.measuredMs), 's');
  line('cellar: marked full to the clear refusal', (round) => (round.crossing.markedMs === null ? null : round.crossing.refusedMs - round.crossing.markedMs), 's');
  line('cellar: crossing to storage_read_only event', (round) => round.crossing.eventMs, 's');
  line('cellar: crossing to the clear refusal', (round) => round.crossing.refusedMs, 's');
  line('cellar: past the threshold at the refusal', (round) => (round.crossing.pastAtRefusalBytes / round.allocatedBytes) * 100, '%');
  line('cellar: past the threshold, writers stopped', (round) => (round.crossing.pastSettledBytes / round.allocatedBytes) * 100, '%');
  line('floor: reset + reload to writable', (round) => round.floor.reloadToWritableMs, 's');
  line('cellar: resize request to change done', (round) => round.resize.changeDoneMs, 's');
  line('cellar: resize request to writable', resizeWritableMs, 's');
  const lost = rounds.reduce((sum, round) => sum + Math.max(0, round.acknowledgedRows - round.storedRows), 0);
  report(`rows: ${rounds.reduce((sum, round) => sum + round.acknowledgedRows, 0)} acknowledged, ${lost} lost`);
  const worstPast = Math.max(...rounds.map(pastPercent));
  const resized = rounds.map(resizeWritableMs).filter((ms): ms is number => ms !== null);
  // No round still full at its resize measures nothing: not met.
  const worstWritable = resized.length === 0 ? Number.POSITIVE_INFINITY : Math.max(...resized);
  report(
    `${verdict(outcome)}: goals past the threshold < ${goalPastPercentMax} % of the allocation in every round (got max ${worstPast.toFixed(2)} %: ${worstPast < goalPastPercentMax ? 'met' : 'not met'}); ` +
      `writable within ${seconds(goalWritableMsMax, 1)} s of a resize (got max ${seconds(worstWritable)}: ${worstWritable <= goalWritableMsMax ? 'met' : 'not met'}); 0 lost rows (got ${lost})${outcome.failure === null ? '' : `; ${outcome.failure}`}`,
  );
}

function summaryJson(outcome: Outcome, options: Options, environment: HaEnvironment, cellarEnvironment: Readonly<Record<string, string>>, loadBefore: string, loadAfter: string, problems: readonly string[]): unknown {
  return {
    benchmark: 'bench/storage',
    date: new Date().toISOString(),
    machine: { cores: availableParallelism(), postgres: environment.postgresVersion, node: process.version },
    options,
    cellarEnv: cellarEnvironment,
    loadBefore,
    loadAfter,
    goal: { pastPercentMax: goalPastPercentMax, writableMsMax: goalWritableMsMax },
    verdict: verdict(outcome),
    failure: outcome.failure,
    rounds: outcome.rounds,
    problems,
  };
}

main().catch((error: unknown) => {
  process.stderr.write(`bench/storage failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
