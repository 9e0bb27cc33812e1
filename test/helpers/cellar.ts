import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { chmod, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { ClusterUsers } from '../../src/postgres/osuser.js';
import { testPorts } from './ports.js';
import { metricsTokenFileName } from '../../src/proxy/metrics.js';
import { exchange } from './http.js';
import { seedDataDir } from './prepared.js';
import { createStoreDatabase, dropStoreDatabase } from './shared-store.js';
import { storeUrlFor } from '../../src/store/embedded.js';
import type { ClusterView } from '../../src/api/view.js';

/**
 * A real Cellar for tests: `cellar up` as a child process with its own home, data directory, API
 * port and instance port range, and helpers to drive it through the real CLI and API.
 */

export const cellarBin = fileURLToPath(new URL('../../bundle/bin/cellar.js', import.meta.url));
const upWaitMsMax = 90_000;
const pollMs = 50;
/** A request to the API that does not answer within this fails (a poll then tries again). */
const apiWaitMsMax = 60_000;
const portRangeSize = 40;

export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export async function makeTempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  // mkdtemp makes 0700; the postgres OS user must traverse it to reach its data directories.
  await chmod(dir, 0o755);
  return dir;
}


/** Bytes in one GB of a test cluster's allocation, unless a test sets CELLAR_STORAGE_GB_BYTES itself. */
export const testStorageGbBytes = 256 * 1024 ** 2;
/**
 * The writer speed a primary's next measurement is timed by (CELLAR_STORAGE_WRITE_RATE_MB_S,
 * 512 MB/s by default), scaled with the test GB: a test allocation then fills as fast, relative to
 * its size, as a real one, and its primary is walked as often as a real one would be, not four
 * times as often. A test that sets its own GB keeps the default rate.
 */
const testWriteRateMbPerSecond = Math.round((512 * testStorageGbBytes) / 1024 ** 3);

export interface TestCellarOptions {
  /**
   * `shared` (the default): a database of its own on the run's shared store server, when the run
   * has one (test/helpers/shared-store.ts). `embedded`: the store `cellar up` makes and runs
   * itself, for tests of that store (its files, its restart, `cellar down` stopping it).
   */
  readonly store?: 'shared' | 'embedded';
}

export class TestCellar {
  private child: ChildProcess | null = null;
  private output = '';

  private constructor(
    readonly root: string,
    readonly env: NodeJS.ProcessEnv,
    /** Its database on the run's shared store server, dropped by `destroy`. */
    private readonly sharedStoreUrl: string | null,
  ) {}

  static async create(extraEnv: Record<string, string> = {}, options: TestCellarOptions = {}): Promise<TestCellar> {
    const sharedStoreUrl = options.store === 'embedded' || extraEnv['CELLAR_STORE_URL'] !== undefined ? null : await createStoreDatabase();
    try {
      return await TestCellar.make(extraEnv, sharedStoreUrl);
    } catch (error) {
      if (sharedStoreUrl !== null) await dropStoreDatabase(sharedStoreUrl);
      throw error;
    }
  }

  private static async make(extraEnv: Record<string, string>, sharedStoreUrl: string | null): Promise<TestCellar> {
    const root = await makeTempDir('cellar-test-');
    // Instances get a range of their own; the services a port each, all from this process's blocks.
    const instancePorts = await testPorts(portRangeSize);
    const [apiPort, proxyPort, proxyAdminPort, proxyReadOnlyPort, agentListenPort] = await testPorts(5);
    const portLow = instancePorts[0] ?? 0;
    const portHigh = instancePorts[instancePorts.length - 1] ?? 0;
    // Its processes trust only the cell's own CA. A system bundle named in NODE_EXTRA_CA_CERTS (as
    // on the machines this suite runs on) is parsed at every Node start: ~50 ms of CPU each, for
    // every `cellar up`, proxy, agent and CLI run of the suite (several hundred).
    const { NODE_EXTRA_CA_CERTS: _systemBundle, ...inherited } = process.env;
    const env: NodeJS.ProcessEnv = {
      ...inherited,
      CELLAR_HOME: join(root, 'home'),
      CELLAR_DATA: join(root, 'data'),
      CELLAR_API_PORT: String(apiPort),
      CELLAR_PROXY_PORT: String(proxyPort),
      CELLAR_PROXY_ADMIN_PORT: String(proxyAdminPort),
      CELLAR_PROXY_RO_PORT: String(proxyReadOnlyPort),
      // Agents of tests reach the control plane on loopback unless a test says otherwise.
      CELLAR_AGENT_LISTEN_HOST: '127.0.0.1',
      CELLAR_AGENT_LISTEN_PORT: String(agentListenPort),
      CELLAR_PORT_RANGE: `${portLow}-${portHigh}`,
      CELLAR_LOG_LEVEL: 'warn',
      // Scheduled backups (and their restore checks) would load every test; backup tests turn them on.
      CELLAR_BACKUP_INTERVAL_MS: '0',
      CELLAR_API: '',
      CELLAR_TOKEN: '',
      ...(sharedStoreUrl === null ? {} : { CELLAR_STORE_URL: sharedStoreUrl }),
      // A storage "GB" of 256 MiB: placement counts allocations against this machine's real free
      // disk (less its reserve), so tests' clusters must not ask for tens of real gigabytes.
      CELLAR_STORAGE_GB_BYTES: String(testStorageGbBytes),
      ...(extraEnv['CELLAR_STORAGE_GB_BYTES'] === undefined ? { CELLAR_STORAGE_WRITE_RATE_MB_S: String(testWriteRateMbPerSecond) } : {}),
      ...extraEnv,
    };
    // A Cellar given its own data directory starts from the run's prepared store and template
    // instead of running initdb and building the template itself (test/helpers/prepared.ts).
    if (env['CELLAR_DATA'] === join(root, 'data')) await seedDataDir(env['CELLAR_DATA'], { store: !env['CELLAR_STORE_URL'], templates: true });
    return new TestCellar(root, env, sharedStoreUrl);
  }

  /** The proxy's metrics token, which every scrape must carry. */
  async proxyMetricsToken(): Promise<string> {
    return (await readFile(join(this.home, metricsTokenFileName), 'utf8')).trim();
  }

  /** The first group of `pattern` in the proxy's /metrics text, as a number (0 when absent). */
  async proxyMetric(pattern: RegExp): Promise<number> {
    const response = await fetch(`http://127.0.0.1:${this.env['CELLAR_PROXY_ADMIN_PORT']}/metrics`, { headers: { authorization: `Bearer ${await this.proxyMetricsToken()}` } });
    const text = await response.text();
    if (response.status !== 200) throw new Error(`the proxy's /metrics answered ${response.status}: ${text}`);
    const match = pattern.exec(text);
    return match?.[1] === undefined ? 0 : Number(match[1]);
  }

  get dataDir(): string {
    return this.env['CELLAR_DATA'] as string;
  }

  get home(): string {
    return this.env['CELLAR_HOME'] as string;
  }

  get apiUrl(): string {
    return `http://127.0.0.1:${this.env['CELLAR_API_PORT']}`;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Starts `cellar up` and waits until the API answers with the credentials it wrote. */
  async start(extraArgs: readonly string[] = [], extraEnv: Record<string, string> = {}): Promise<void> {
    // A restart must wait for its own "Cellar is up", not find the previous start's.
    const outputFrom = this.output.length;
    const child = spawn(process.execPath, [cellarBin, 'up', ...extraArgs], { env: { ...this.env, ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    child.stdout?.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    const deadline = Date.now() + upWaitMsMax;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`cellar up exited ${child.exitCode}:\n${this.output}`);
      if (this.output.includes('Cellar is up', outputFrom)) return;
      await sleep(pollMs);
    }
    throw new Error(`cellar up did not come up in ${upWaitMsMax} ms:\n${this.output}`);
  }

  /** Stops the control plane the way Ctrl-C does and waits for it to exit. */
  async stop(signal: NodeJS.Signals = 'SIGINT'): Promise<void> {
    const child = this.child;
    if (child === null || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill(signal);
    await exited;
    this.child = null;
  }

  logs(): string {
    return this.output;
  }

  /** Runs the real CLI with this Cellar's environment. */
  cli(args: readonly string[], timeoutMs = 120_000): Promise<RunResult> {
    return new Promise((resolve) => {
      execFile(process.execPath, [cellarBin, ...args], { env: this.env, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1;
        resolve({ code, stdout, stderr });
      });
    });
  }

  async cliJson<T>(args: readonly string[]): Promise<T> {
    const result = await this.cli([...args, '--json']);
    if (result.code !== 0) throw new Error(`cellar ${args.join(' ')} failed (${result.code}): ${result.stdout}${result.stderr}`);
    return JSON.parse(result.stdout) as T;
  }

  async token(): Promise<string> {
    const credentials = JSON.parse(await readFile(join(this.home, 'credentials'), 'utf8')) as { token: string };
    return credentials.token;
  }

  async api<T>(method: string, path: string, body?: unknown, token?: string): Promise<{ status: number; body: T }> {
    const answer = await exchange(`${this.apiUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${token ?? (await this.token())}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      waitMs: apiWaitMsMax,
    });
    return { status: answer.status, body: JSON.parse(answer.text) as T };
  }

  /**
   * GET of an API path with this Cellar's admin token (or `token`), in this process: what a
   * command's `--json` prints for a read, for the polls of `eventually`, where a CLI process per
   * poll would start a Node each time (the suite's largest cost once). Throws, like `cliJson`, on
   * any answer but 200, so a poll tries again.
   */
  async read<T>(path: string, token?: string): Promise<T> {
    const { status, body } = await this.api<T>('GET', path, undefined, token);
    if (status !== 200) throw new Error(`GET ${path}: ${status} ${JSON.stringify(body).slice(0, 500)}`);
    return body;
  }

  /** The cluster as `clusters show NAME --json` prints it (GET /v1/clusters/NAME), read in this process. */
  cluster(name: string, token?: string): Promise<ClusterView> {
    return this.read<ClusterView>(`/v1/clusters/${encodeURIComponent(name)}`, token);
  }

  /** Where this Cellar's store is: CELLAR_STORE_URL, or the embedded store's (from its state file, once it started). */
  async storeUrl(): Promise<string> {
    const external = this.env['CELLAR_STORE_URL'];
    if (external !== undefined && external !== '') return external;
    return storeUrlFor(JSON.parse(await readFile(join(this.home, 'store.json'), 'utf8')) as { port: number; password: string });
  }

  /** A query on this Cellar's store, for checks the API does not expose (ports, rows). */
  async storeQuery<T extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<T[]> {
    const client = new pg.Client({ connectionString: await this.storeUrl() });
    await client.connect();
    try {
      return (await client.query<T>(sql, params)).rows;
    } finally {
      await client.end();
    }
  }

  /** Stops everything (`cellar down`), checks nothing of this Cellar still runs, removes its files. */
  async destroy(): Promise<void> {
    await this.stop();
    await this.cli(['down']);
    for (const pid of await processesUsing(this.root)) process.kill(pid, 'SIGKILL');
    if (this.sharedStoreUrl !== null) await dropStoreDatabase(this.sharedStoreUrl);
    await rm(this.root, { recursive: true, force: true });
    // The clusters' OS users outlive `down` (their backups are kept); a test leaves none behind.
    await new ClusterUsers(this.dataDir).removeAllOwn();
  }
}

/** Pids of processes whose command line mentions a path (a data directory): leak detection. */
export async function processesUsing(path: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(path)) pids.push(Number(entry));
  }
  return pids;
}

/** One query over a fresh connection (through the proxy, by a cluster's URI); bounded connect. */
export async function queryUri<T extends pg.QueryResultRow>(uri: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: uri, connectionTimeoutMillis: 15_000 });
  // A server killed under the client emits 'error'; the query's own rejection reports it.
  client.on('error', () => undefined);
  await client.connect();
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Postmasters (not their backends, whose command lines are rewritten) running on a data directory. */
export async function postmasters(dataDir: string): Promise<string[]> {
  const found: string[] = [];
  for (const pid of await processesUsing(dataDir)) {
    const text = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    const cmdline = text.split('\0');
    const dataArg = cmdline.indexOf('-D');
    if (!cmdline[0]?.endsWith('/postgres') || dataArg < 0) continue;
    // A child the postmaster has just forked carries its command line until it names itself (one
    // answering the probe's SSLRequest never does): a postmaster's parent is not a postmaster of the same data.
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (Number.isInteger(parent) && (await readFile(`/proc/${parent}/cmdline`, 'utf8').catch(() => '')) === text) continue;
    found.push(cmdline[dataArg + 1] ?? '');
  }
  return found.sort();
}

/** The postmaster pid of one of this Cellar's instances (first line of postmaster.pid), for real kills. */
export async function postmasterPid(dataDir: string, instanceId: string): Promise<number> {
  const text = await readFile(join(dataDir, 'instances', instanceId, 'pgdata', 'postmaster.pid'), 'utf8');
  return Number(text.split('\n')[0]);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls until `check` returns a value (not undefined) or the deadline passes. */
export async function eventually<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 60_000, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    await sleep(intervalMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${String(lastError)}` : ''}`);
}
