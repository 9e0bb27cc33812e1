import { type ChildProcess, spawn } from 'node:child_process';
import { chmod, chown, mkdtemp, open, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { freePort } from '../src/lib/net.js';
import { isAlive } from '../test/helpers/process.js';
import { ClusterUsers } from '../src/postgres/osuser.js';
import { readCredentials } from '../src/lib/credentials.js';

/**
 * Helpers shared by bench/ programs: bounded child processes, raw Postgres servers started by pid,
 * and a real Cellar (`cellar up`) in a temp dir driven through its CLI. Every wait has a deadline
 * and everything started here is stopped by its pid.
 */

export const cellarBin = fileURLToPath(new URL('../bundle/bin/cellar.js', import.meta.url));

/** libpq must not try TLS or GSS: servers here run ssl=off on 127.0.0.1 or a socket. */
export const libpqEnvironment: Readonly<Record<string, string>> = { LC_ALL: 'C', PGSSLMODE: 'disable', PGGSSENCMODE: 'disable' };

const killGraceMs = 2_000;
const outputTailBytesMax = 64 * 1024;
const stopFastMsMax = 30_000;
const stopImmediateMsMax = 5_000;
const stopKillMsMax = 5_000;
const stopPollMs = 10;
const lookupTimeoutMs = 5_000;
const cellarUpMsMax = 120_000;
const cellarUpPollMs = 20;
const cellarStopMsMax = 30_000;
const cellarDownMsMax = 90_000;
const logLinesMax = 20_000;
const portRangeSize = 40;
const connectTimeoutMs = 5_000;
const queryTimeoutMs = 10_000;
/** A bench polls the store from one loop at a time. */
const storePoolSize = 2;
const fileCreateProbeCount = 200;
/** pino's numeric level for warn. */
const pinoWarnLevel = 40;

export interface OsUser {
  readonly uid: number;
  readonly gid: number;
  /** False when not root: tools then run as the current user. */
  readonly switchUser: boolean;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function median(values: readonly number[]): number {
  if (values.length === 0) throw new Error('median of no values');
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[middle] as number) : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
}

export function seconds(ms: number, digits = 3): string {
  return (ms / 1000).toFixed(digits);
}

/** Polls `check` until it returns a value other than undefined; throws after timeoutMs. */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined>, timeoutMs: number, pollMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    await sleep(pollMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError === undefined ? '' : `: ${String(lastError)}`}`);
}

export interface ExecOptions {
  readonly timeoutMs: number;
  readonly user?: OsUser;
  readonly env?: NodeJS.ProcessEnv;
}

export interface ExecResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs a command to completion in its own process group, killing the group on timeout.
 * Resolves with the exit code (a signal or timeout gives -1); never rejects after spawn.
 */
export function exec(binary: string, args: readonly string[], options: ExecOptions): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, args, {
      env: options.env ?? { ...libpqEnvironment },
      cwd: '/',
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
      ...(options.user?.switchUser ? { uid: options.user.uid, gid: options.user.gid } : {}),
    });
    const stdout = new OutputTail();
    const stderr = new OutputTail();
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child.pid, 'SIGTERM');
      setTimeout(() => killGroup(child.pid, 'SIGKILL'), killGraceMs).unref();
    }, options.timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`${binary}: ${error.message}`));
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      const stderrText = timedOut ? `${stderr.text()}\n(timed out after ${options.timeoutMs} ms)` : stderr.text();
      resolve({ code: code ?? -1, stdout: stdout.text(), stderr: stderrText });
    });
  });
}

/** Like exec, but a non-zero exit is an error naming the command and the tail of its stderr. */
export async function execOk(binary: string, args: readonly string[], options: ExecOptions): Promise<ExecResult> {
  const result = await exec(binary, args, options);
  if (result.code !== 0) throw new Error(`${binary} ${args.join(' ')} exited ${result.code}: ${result.stderr.trim().slice(-2_000)}`);
  return result;
}

function killGroup(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, signal);
  } catch {
    // The group is already gone.
  }
}

/** Keeps the last outputTailBytesMax bytes of a stream. */
class OutputTail {
  private chunks: Buffer[] = [];
  private bytes = 0;

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    while (this.bytes > outputTailBytesMax && this.chunks.length > 1) this.bytes -= this.chunks.shift()?.length ?? 0;
  }

  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

/** The `postgres` OS user when root (Postgres refuses to run as root), else the current user. */
export async function serverUser(): Promise<OsUser> {
  const uid = process.getuid?.() ?? -1;
  const gid = process.getgid?.() ?? -1;
  if (uid !== 0) return { uid, gid, switchUser: false };
  const userId = await execOk('id', ['-u', 'postgres'], { timeoutMs: lookupTimeoutMs });
  const groupId = await execOk('id', ['-g', 'postgres'], { timeoutMs: lookupTimeoutMs });
  return { uid: Number(userId.stdout.trim()), gid: Number(groupId.stdout.trim()), switchUser: true };
}

/** A 0755 temp dir under /tmp (mkdtemp makes 0700, which the postgres user could not traverse). */
export async function makeTempDir(prefix: string, owner?: OsUser): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  await chmod(dir, 0o755);
  if (owner?.switchUser) await chown(dir, owner.uid, owner.gid);
  return dir;
}

/** Two distinct ports the kernel says are free now. */
export async function twoFreePorts(): Promise<[number, number]> {
  const first = await freePort();
  for (let attempt = 0; attempt < 10; attempt += 1) {
    const second = await freePort();
    if (second !== first) return [first, second];
  }
  throw new Error('could not find two distinct free ports');
}

/** `postgres -D pgdata` detached, output to logFile, as the given user; returns its pid. */
export function spawnPostmaster(binDir: string, pgdata: string, logFile: string, user: OsUser): Promise<{ pid: number; exited: () => boolean }> {
  return spawnLogged(join(binDir, 'postgres'), ['-D', pgdata], logFile, user);
}

/** Starts postgres detached as `user` and polls postmaster.pid until it is ready (or a standby); returns its pid. */
export async function startServerReady(binDir: string, user: OsUser, pgdata: string, logFile: string, waitMs: number, pollMs: number): Promise<number> {
  const server = await spawnPostmaster(binDir, pgdata, logFile, user);
  try {
    await waitFor(
      `postgres -D ${pgdata} ready`,
      async () => {
        if (server.exited()) throw new Error(`postgres -D ${pgdata} exited during start; see ${logFile}`);
        const status = await postmasterStatus(pgdata, server.pid);
        return status === 'ready' || status === 'standby' ? true : undefined;
      },
      waitMs,
      pollMs,
    );
  } catch (error) {
    await stopPid(server.pid);
    throw error;
  }
  return server.pid;
}

/** Polls pg_stat_wal_receiver on a standby until it streams. */
export async function waitStandbyStreaming(target: pg.ClientConfig, waitMs: number, pollMs: number): Promise<void> {
  await waitFor(
    'the standby to stream',
    async () => {
      const rows = await queryOnce<{ status: string }>(target, 'select status from pg_stat_wal_receiver');
      return rows[0]?.status === 'streaming' ? true : undefined;
    },
    waitMs,
    pollMs,
  );
}

/** The status word (line 8) of postmaster.pid if the file names this pid, else undefined. */
export async function postmasterStatus(pgdata: string, pid: number): Promise<string | undefined> {
  const text = await readFile(join(pgdata, 'postmaster.pid'), 'utf8').catch(() => '');
  const lines = text.split('\n');
  if (Number(lines[0]) !== pid) return undefined;
  return lines[7]?.trim() || undefined;
}

export { isAlive };

async function waitForExit(pid: number, waitMs: number): Promise<boolean> {
  const deadline = Date.now() + waitMs;
  while (Date.now() < deadline) {
    if (!isAlive(pid)) return true;
    await sleep(stopPollMs);
  }
  return !isAlive(pid);
}

/** Fast shutdown, then immediate, then SIGKILL, each bounded. */
export async function stopPid(pid: number): Promise<void> {
  const steps: ReadonlyArray<readonly [NodeJS.Signals, number]> = [
    ['SIGINT', stopFastMsMax],
    ['SIGQUIT', stopImmediateMsMax],
    ['SIGKILL', stopKillMsMax],
  ];
  for (const [signal, waitMs] of steps) {
    try {
      process.kill(pid, signal);
    } catch {
      return;
    }
    if (await waitForExit(pid, waitMs)) return;
  }
  throw new Error(`pid ${pid} survived SIGKILL for ${stopKillMsMax} ms`);
}

/** One connection, one statement, closed; bounded by connect and query timeouts. */
export async function queryOnce<R extends pg.QueryResultRow>(config: pg.ClientConfig, sql: string): Promise<R[]> {
  const client = new pg.Client({ ...config, connectionTimeoutMillis: connectTimeoutMs, query_timeout: queryTimeoutMs });
  client.on('error', () => {});
  await client.connect();
  try {
    return (await client.query<R>(sql)).rows;
  } finally {
    await client.end().catch(() => {});
  }
}

/** Pids of processes whose command line mentions a path: what a Cellar in that dir left running. */
export async function processesUsing(path: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(path)) pids.push(Number(entry));
  }
  return pids;
}

/** `uptime` as printed, to record the machine's load next to the figures. */
export async function uptime(): Promise<string> {
  const result = await exec('uptime', [], { timeoutMs: lookupTimeoutMs, env: { ...process.env } });
  return result.stdout.trim();
}

/**
 * Mean time to create one empty file in a fresh temp dir under /tmp. Every recipe here creates
 * ~1,000-1,300 files per data directory, so this cost (high on a filesystem full of recently
 * deleted inodes) sets much of the floor; it is recorded beside the figures.
 */
export async function fileCreateMs(count = fileCreateProbeCount): Promise<number> {
  const dir = await mkdtemp(join(tmpdir(), 'cellar-bench-files-'));
  try {
    const started = performance.now();
    for (let index = 0; index < count; index += 1) await (await open(join(dir, `f${index}`), 'wx', 0o600)).close();
    return (performance.now() - started) / count;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** A line Cellar's data plane logged with a duration (pino JSON on stderr). */
export interface TimedLogLine {
  readonly instanceId: string;
  readonly message: string;
  readonly durationMs: number;
  readonly timeMs: number;
}

/** Any line Cellar logged with a duration, with the ids it names (`base backup taken` names a backup, no instance). */
export interface DurationLogLine {
  readonly message: string;
  readonly durationMs: number;
  readonly timeMs: number;
  readonly instanceId: string | null;
  readonly backupId: string | null;
}

/** A warning or error Cellar logged (an engine retry, a failed step). */
export interface WarningLogLine {
  readonly timeMs: number;
  readonly message: string;
  readonly detail: string;
}

export interface CliRun extends ExecResult {
  readonly startedAtMs: number;
  readonly elapsedMs: number;
}

/**
 * A real Cellar: `cellar up` as a child process with its own home, data dir, API port and
 * instance port range under a temp dir, driven through the real CLI.
 */
export class BenchCellar {
  private child: ChildProcess | null = null;
  private output = new OutputTail();
  private stderrRest = '';
  private pool: pg.Pool | null = null;
  readonly timedLogLines: TimedLogLine[] = [];
  readonly durationLogLines: DurationLogLine[] = [];
  readonly warningLogLines: WarningLogLine[] = [];

  private constructor(
    readonly root: string,
    readonly env: NodeJS.ProcessEnv,
  ) {}

  static async create(extraEnv: Readonly<Record<string, string>>): Promise<BenchCellar> {
    const root = await makeTempDir('cellar-bench-');
    const anchor = await freePort();
    const portLow = 20_000 + (anchor % 20_000);
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      CELLAR_HOME: join(root, 'home'),
      CELLAR_DATA: join(root, 'data'),
      CELLAR_API_PORT: String(await freePort()),
      CELLAR_PROXY_PORT: String(await freePort()),
      CELLAR_PROXY_ADMIN_PORT: String(await freePort()),
      CELLAR_PROXY_RO_PORT: String(await freePort()),
      CELLAR_AGENT_LISTEN_HOST: '127.0.0.1',
      CELLAR_AGENT_LISTEN_PORT: String(await freePort()),
      CELLAR_PORT_RANGE: `${portLow}-${portLow + portRangeSize - 1}`,
      // info: the data plane logs each create/start step with its duration, used in the breakdown.
      CELLAR_LOG_LEVEL: 'info',
      CELLAR_API: '',
      CELLAR_TOKEN: '',
      CELLAR_STORE_URL: '',
      ...extraEnv,
    };
    return new BenchCellar(root, env);
  }

  get dataDir(): string {
    return this.env['CELLAR_DATA'] as string;
  }

  /** Starts `cellar up`; resolves when it prints that it is up. */
  async start(): Promise<void> {
    // Its own process group: a Ctrl-C meant for the bench must not stop Cellar before the bench's cleanup does.
    const child = spawn(process.execPath, [cellarBin, 'up'], { env: this.env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    this.child = child;
    child.stdout?.on('data', (chunk: Buffer) => this.output.push(chunk));
    child.stderr?.on('data', (chunk: Buffer) => this.onStderr(chunk));
    await waitFor(
      'cellar up',
      async () => {
        if (child.exitCode !== null) throw new Error(`cellar up exited ${child.exitCode}: ${this.output.text()}`);
        return this.output.text().includes('Cellar is up') ? true : undefined;
      },
      cellarUpMsMax,
      cellarUpPollMs,
    );
  }

  private onStderr(chunk: Buffer): void {
    this.output.push(chunk);
    const lines = (this.stderrRest + chunk.toString('utf8')).split('\n');
    this.stderrRest = lines.pop() ?? '';
    for (const line of lines) this.parseLogLine(line);
  }

  private parseLogLine(line: string): void {
    if (!line.startsWith('{')) return;
    let record: { level?: unknown; msg?: unknown; durationMs?: unknown; instanceId?: unknown; backupId?: unknown; time?: unknown; err?: unknown; label?: unknown };
    try {
      record = JSON.parse(line) as typeof record;
    } catch {
      return; // Not a log record.
    }
    if (typeof record.msg !== 'string') return;
    const timeMs = Number(record.time);
    if (typeof record.level === 'number' && record.level >= pinoWarnLevel && this.warningLogLines.length < logLinesMax) {
      const detail = [record.label, record.err].filter((part) => typeof part === 'string').join(': ');
      this.warningLogLines.push({ timeMs, message: record.msg, detail });
    }
    if (typeof record.durationMs === 'number' && this.durationLogLines.length < logLinesMax) {
      const idOf = (value: unknown): string | null => (typeof value === 'string' ? value : null);
      this.durationLogLines.push({ message: record.msg, durationMs: record.durationMs, timeMs, instanceId: idOf(record.instanceId), backupId: idOf(record.backupId) });
    }
    if (typeof record.durationMs !== 'number' || typeof record.instanceId !== 'string' || this.timedLogLines.length >= logLinesMax) return;
    this.timedLogLines.push({ instanceId: record.instanceId, message: record.msg, durationMs: record.durationMs, timeMs });
  }

  logTail(): string {
    return this.output.text().slice(-4_000);
  }

  /** Runs the CLI with this Cellar's environment and times it from spawn to exit. */
  async cli(args: readonly string[], timeoutMs: number): Promise<CliRun> {
    const startedAtMs = Date.now();
    const started = performance.now();
    const result = await exec(process.execPath, [cellarBin, ...args], { timeoutMs, env: this.env });
    return { ...result, startedAtMs, elapsedMs: performance.now() - started };
  }

  async cliJson<T>(args: readonly string[], timeoutMs: number): Promise<T> {
    const result = await this.cli([...args, '--json'], timeoutMs);
    if (result.code !== 0) throw new Error(`cellar ${args.join(' ')} exited ${result.code}: ${result.stdout}${result.stderr.slice(-2_000)}`);
    return JSON.parse(result.stdout) as T;
  }

  /** One API request with the token `cellar up` wrote, bounded; the status and the parsed JSON body. */
  async api<T>(method: string, path: string, body: unknown, timeoutMs: number): Promise<{ status: number; body: T }> {
    const credentials = await readCredentials(this.env['CELLAR_HOME'] as string);
    if (credentials === null) throw new Error(`no credentials in ${this.env['CELLAR_HOME']}: is cellar up running?`);
    const response = await fetch(new URL(path, credentials.api), {
      method,
      headers: { authorization: `Bearer ${credentials.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await response.text();
    let parsed: unknown;
    try {
      parsed = text === '' ? null : JSON.parse(text);
    } catch {
      parsed = text;
    }
    return { status: response.status, body: parsed as T };
  }

  /** A pool on this Cellar's embedded store, for what the API does not show (machines, catalogues); ended by destroy. */
  async storePool(): Promise<pg.Pool> {
    if (this.pool !== null) return this.pool;
    const state = JSON.parse(await readFile(join(this.env['CELLAR_HOME'] as string, 'store.json'), 'utf8')) as { port: number; password: string };
    this.pool = new pg.Pool({ host: '127.0.0.1', port: state.port, user: 'postgres', password: state.password, database: 'cellar', max: storePoolSize, connectionTimeoutMillis: connectTimeoutMs, query_timeout: queryTimeoutMs });
    this.pool.on('error', () => {});
    return this.pool;
  }

  async storeQuery<R extends pg.QueryResultRow>(sql: string, params: readonly unknown[] = []): Promise<R[]> {
    return (await (await this.storePool()).query<R>(sql, [...params])).rows;
  }

  /** Stops `cellar up` by its pid, runs `cellar down`, stops anything left by pid, removes the dir. */
  async destroy(): Promise<string[]> {
    const problems: string[] = [];
    await this.pool?.end().catch((error: unknown) => problems.push(`ending the store pool: ${String(error)}`));
    this.pool = null;
    const child = this.child;
    if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGINT');
      if (!(await waitForExit(child.pid, cellarStopMsMax))) {
        problems.push(`cellar up (pid ${child.pid}) ignored SIGINT; killed`);
        child.kill('SIGKILL');
      }
    }
    this.child = null;
    const down = await exec(process.execPath, [cellarBin, 'down'], { timeoutMs: cellarDownMsMax, env: this.env });
    if (down.code !== 0) problems.push(`cellar down exited ${down.code}: ${down.stderr.trim()}`);
    for (const pid of await processesUsing(this.root)) {
      problems.push(`pid ${pid} still used ${this.root} after cellar down; stopped`);
      await stopPid(pid).catch((error: unknown) => problems.push(String(error)));
    }
    await rm(this.root, { recursive: true, force: true });
    // Its clusters' OS users outlive `down` (their backups are kept): a bench leaves none behind.
    await new ClusterUsers(join(this.root, 'data')).removeAllOwn().catch((error: unknown) => problems.push(`removing cluster users: ${String(error)}`));
    return problems;
  }
}

/** A long-running program started detached as `user`, its output appended to logFile; stop it with stopPid(pid). */
export async function spawnLogged(
  binary: string,
  args: readonly string[],
  logFile: string,
  user: OsUser,
  env: NodeJS.ProcessEnv = { LC_ALL: 'C' },
): Promise<{ pid: number; exited: () => boolean }> {
  const log = await open(logFile, 'a', 0o644);
  try {
    const child: ChildProcess = spawn(binary, args, {
      detached: true,
      stdio: ['ignore', log.fd, log.fd],
      cwd: '/',
      env,
      ...(user.switchUser ? { uid: user.uid, gid: user.gid } : {}),
    });
    let exited = false;
    child.once('exit', () => (exited = true));
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', reject);
    });
    child.unref();
    if (child.pid === undefined) throw new Error(`${binary} has no pid`);
    return { pid: child.pid, exited: () => exited };
  } finally {
    await log.close();
  }
}

const certificateMsMax = 30_000;
const certificateDays = 7;

/**
 * A self-signed P-256 certificate and key (0600) in dir, owned by `owner`, for a server that must
 * speak TLS; clients use sslmode=require, which does not check it.
 */
export async function selfSignedCertificate(dir: string, name: string, commonName: string, owner: OsUser): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  const args = ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', String(certificateDays), '-subj', `/CN=${commonName}`];
  await execOk('openssl', args, { timeoutMs: certificateMsMax, env: { ...process.env } });
  await chmod(key, 0o600);
  await chmod(cert, 0o644);
  if (owner.switchUser) {
    await chown(key, owner.uid, owner.gid);
    await chown(cert, owner.uid, owner.gid);
  }
  return { cert, key };
}

/** Kernel clock ticks per second, the unit of utime/stime in /proc/<pid>/stat. */
export async function clockTicksPerSecond(): Promise<number> {
  const result = await execOk('getconf', ['CLK_TCK'], { timeoutMs: lookupTimeoutMs, env: { ...process.env } });
  const ticks = Number(result.stdout.trim());
  if (!Number.isInteger(ticks) || ticks <= 0) throw new Error(`getconf CLK_TCK printed ${result.stdout}`);
  return ticks;
}

/** User + system CPU time a process has used so far, in clock ticks; undefined once it is gone. */
export async function cpuTicks(pid: number): Promise<number | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (stat === undefined) return undefined;
  // The command name (field 2) may contain spaces; fields after its closing parenthesis are plain.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
  return Number(fields[11]) + Number(fields[12]);
}

/** Pids whose argv contains every one of `args` and whose environment has `envEntry` (e.g. `CELLAR_HOME=/tmp/x`). */
export async function processesWith(args: readonly string[], envEntry: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const argv = (await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')).split('\0');
    if (!args.every((arg) => argv.includes(arg))) continue;
    const environ = (await readFile(`/proc/${entry}/environ`, 'utf8').catch(() => '')).split('\0');
    if (environ.includes(envEntry)) pids.push(Number(entry));
  }
  return pids;
}
