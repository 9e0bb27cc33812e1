import { spawn } from 'node:child_process';
import { lstat, open, readdir, unlink } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { basename, join } from 'node:path';
import { currentAbortSignal } from '../lib/abort.js';
import { assert } from '../lib/assert.js';

/**
 * Who Postgres runs as. Postgres refuses to run as root, so a root Cellar runs every server and
 * tool as the `postgres` OS user; any other Cellar runs them as itself.
 */
export interface RunAs {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
  /** True when children must switch to uid/gid (Cellar is root and the target user is not). */
  readonly switchUser: boolean;
}

const lookupTimeoutMs = 5_000;
/** Enough stderr to explain a failure without flooding a log line. */
const stderrTailLines = 20;
/** Captured output is bounded; the tail is what explains a failure. */
const outputBytesMax = 1024 * 1024;
/** Between SIGTERM and SIGKILL of a timed-out child's process group. */
const killGraceMs = 2_000;

/** The cell store (and the template every new primary is copied from) runs as this user when Cellar is root. */
export const postgresUserName = 'postgres';
/** useradd and userdel lock /etc/passwd; another Cellar may hold it for a moment. */
const userCommandAttemptsMax = 5;
const userCommandRetryMs = 200;
const userCommandMsMax = 30_000;

/** Cellar itself, as a RunAs: children run without switching user. */
export function selfRunAs(): RunAs {
  const uid = process.getuid?.();
  const gid = process.getgid?.();
  assert(uid !== undefined && gid !== undefined, 'the local data plane needs a POSIX host');
  return { name: userInfo().username, uid, gid, switchUser: false };
}

/** The OS user whose local socket connections are mapped to the `postgres` role (peer auth): Cellar's own. */
export function controlPlaneUserName(): string {
  return userInfo().username;
}

export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/** The user the cell store and templates run as: `postgres` when Cellar is root, the current user otherwise. */
export async function resolveRunAs(): Promise<RunAs> {
  if (!isRoot()) return selfRunAs();
  const user = await lookupUser(postgresUserName);
  if (user === undefined) throw new Error(`OS user ${postgresUserName} does not exist; install the PostgreSQL server package, which creates it`);
  return user;
}

/** The OS user by name, or undefined when there is none. */
export async function lookupUser(name: string): Promise<RunAs | undefined> {
  let stdout: string;
  try {
    ({ stdout } = await run('getent', ['passwd', name], { inheritEnvironment: true, timeoutMs: lookupTimeoutMs }));
  } catch (error) {
    // getent exits 2 for "no such key".
    if (error instanceof CommandError && /exited with 2/.test(error.message)) return undefined;
    throw error;
  }
  const fields = stdout.trim().split(':');
  const uid = Number(fields[2]);
  const gid = Number(fields[3]);
  if (!Number.isInteger(uid) || !Number.isInteger(gid)) throw new Error(`cannot parse getent passwd ${name}: ${stdout}`);
  if (uid === 0) throw new Error(`OS user ${name} is root; Cellar runs servers only as unprivileged users`);
  return { name, uid, gid, switchUser: true };
}

/** Where Postgres keeps its dynamic shared memory segments (dynamic_shared_memory_type = posix, Linux's default). */
export const posixShmDir = '/dev/shm';
const segmentName = /^PostgreSQL\.\d+$/;

/**
 * Removes the dynamic shared memory segments of one OS user's servers from /dev/shm. A postmaster
 * killed outright (SIGKILL, the OOM killer) never removes its own; only a later start of the same
 * data directory would, and a destroyed instance has none: each left 1 MB of memory behind for
 * good. Only names Postgres gives, and only entries that uid owns; unlink never follows a link, so
 * a link the user planted there is removed, never what it points to. The user's processes must be
 * gone. Returns how many it removed.
 */
export async function removeSharedMemoryOf(uid: number): Promise<number> {
  assert(uid !== 0, 'never remove segments of root');
  let names: string[];
  try {
    names = await readdir(posixShmDir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw error;
  }
  let removed = 0;
  for (const name of names) {
    if (!segmentName.test(name)) continue;
    const path = join(posixShmDir, name);
    const stats = await lstat(path).catch(() => null);
    if (stats === null || stats.isDirectory() || stats.uid !== uid) continue;
    try {
      await unlink(path);
      removed += 1;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }
  return removed;
}

/** `cellar_cl_abc…`: within useradd's 32 characters, and a valid Postgres-style name. */
export function clusterUserName(clusterId: string): string {
  assert(/^cl_[a-z0-9]{1,24}$/.test(clusterId), `cluster id ${clusterId} cannot name an OS user`);
  return `cellar_${clusterId}`;
}

/**
 * One OS user per cluster when Cellar is root (DESIGN §3a): a shell obtained inside one cluster's
 * server reaches only that cluster's files. Without root every cluster runs as Cellar itself, and
 * the cell is single-tenant. Each user is tagged with the data directory in its comment, so the
 * users of one Cellar can be found (and removed) without touching anything else.
 */
export class ClusterUsers {
  private readonly known = new Map<string, RunAs>();
  /** useradd/userdel of this process one at a time; across processes the retry handles the lock. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly dataDir: string) {}

  get perCluster(): boolean {
    return isRoot();
  }

  /** The cluster's user, made when missing. */
  async ensure(clusterId: string): Promise<RunAs> {
    if (!this.perCluster) return selfRunAs();
    const cached = this.known.get(clusterId);
    if (cached !== undefined) return cached;
    const name = clusterUserName(clusterId);
    const user = (await lookupUser(name)) ?? (await this.serialised(() => this.add(name, clusterId)));
    this.known.set(clusterId, user);
    return user;
  }

  /** The cluster's user if it exists (a purged cluster's does not). */
  async find(clusterId: string): Promise<RunAs | undefined> {
    if (!this.perCluster) return selfRunAs();
    return this.known.get(clusterId) ?? lookupUser(clusterUserName(clusterId));
  }

  /**
   * Removes the cluster's user, and the shared memory segments its servers left behind; its
   * processes must be gone. No-op when it is gone.
   */
  async remove(clusterId: string): Promise<void> {
    if (!this.perCluster) return;
    const name = clusterUserName(clusterId);
    this.known.delete(clusterId);
    const user = await lookupUser(name);
    if (user === undefined) return;
    await removeSharedMemoryOf(user.uid);
    await this.serialised(() => withRetries(() => run('userdel', [name], { inheritEnvironment: true, timeoutMs: userCommandMsMax })));
  }

  comment(): string {
    return `Cellar cluster, data ${this.dataDir}`.replace(/[:\n]/g, '_');
  }

  /** The names of every cluster user this data directory made (by their comment). */
  async listOwn(): Promise<string[]> {
    const { stdout } = await run('getent', ['passwd'], { inheritEnvironment: true, timeoutMs: lookupTimeoutMs });
    return stdout
      .split('\n')
      .map((line) => line.split(':'))
      .filter((fields) => fields[4] === this.comment() && /^cellar_cl_[a-z0-9]+$/.test(fields[0] ?? ''))
      .map((fields) => fields[0] ?? '');
  }

  /** Removes every cluster user of this data directory (an uninstall, or a test's clean-up); their processes must be gone. */
  async removeAllOwn(): Promise<number> {
    const names = await this.listOwn();
    for (const name of names) await this.remove(name.slice('cellar_'.length));
    return names.length;
  }

  private async add(name: string, clusterId: string): Promise<RunAs> {
    const again = await lookupUser(name);
    if (again !== undefined) return again;
    const args = ['--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', '--user-group', '--comment', this.comment(), name];
    await withRetries(async () => {
      if ((await lookupUser(name)) !== undefined) return;
      await run('useradd', args, { inheritEnvironment: true, timeoutMs: userCommandMsMax });
    });
    const user = await lookupUser(name);
    if (user === undefined) throw new Error(`useradd ${name} for cluster ${clusterId} succeeded but the user is not there`);
    return user;
  }

  private serialised<T>(work: () => Promise<T>): Promise<T> {
    const next = this.queue.then(work, work);
    this.queue = next.catch(() => undefined);
    return next;
  }
}

async function withRetries<T>(work: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await work();
    } catch (error) {
      if (attempt >= userCommandAttemptsMax) throw error;
      await new Promise((resolve) => setTimeout(resolve, userCommandRetryMs * attempt));
    }
  }
}

/** fsync a directory so a rename inside it survives an OS crash. */
export async function fsyncDir(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export interface RunOptions {
  /** Run as this user; omitted means as Cellar itself. */
  readonly runAs?: RunAs;
  readonly timeoutMs: number;
  /** The child's whole environment (passwords go here, never in argv). */
  readonly env?: Readonly<Record<string, string>>;
  /** Inherit Cellar's environment (only for locating tools on PATH). */
  readonly inheritEnvironment?: boolean;
  readonly cwd?: string;
}

export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
}

export class CommandError extends Error {
  override name = 'CommandError';
}

/**
 * Runs a tool to completion and returns its output, or rejects with the command's name, its
 * arguments, how it ended and the tail of its stderr. Arguments never hold secrets (they are
 * visible in /proc), so quoting them in the error is safe; the environment is never quoted.
 */
export function run(binary: string, args: readonly string[], options: RunOptions): Promise<RunResult> {
  const command = `${basename(binary)} ${args.join(' ')}`.trim();
  return new Promise((resolve, reject) => {
    const child = spawn(binary, args, {
      // A clean environment: a stray PGHOST or PGPASSWORD of Cellar's must not steer a tool.
      env: options.inheritEnvironment ? undefined : { LC_ALL: 'C', ...options.env },
      // The target user may not be able to enter Cellar's working directory (e.g. /root).
      cwd: options.cwd ?? '/',
      stdio: ['ignore', 'pipe', 'pipe'],
      // Own process group, so a timeout can kill helpers the tool forked (pg_basebackup does).
      detached: true,
      ...(options.runAs?.switchUser ? { uid: options.runAs.uid, gid: options.runAs.gid } : {}),
    });
    const stdout = new BoundedText();
    const stderr = new BoundedText();
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    let timedOut = false;
    let aborted = false;
    const terminate = (): void => {
      killGroup(child.pid, 'SIGTERM');
      setTimeout(() => killGroup(child.pid, 'SIGKILL'), killGraceMs).unref();
    };
    const timer = setTimeout(() => {
      timedOut = true;
      terminate();
    }, options.timeoutMs);
    // The step that started this tool ran out of time: the tool must not outlive it.
    const stepSignal = currentAbortSignal();
    const onAbort = (): void => {
      aborted = true;
      terminate();
    };
    stepSignal?.addEventListener('abort', onAbort, { once: true });
    const settle = (): void => {
      clearTimeout(timer);
      stepSignal?.removeEventListener('abort', onAbort);
    };
    child.on('error', (error) => {
      settle();
      reject(new CommandError(`${command}: ${error.message}`));
    });
    child.on('close', (code, signal) => {
      settle();
      if (code === 0 && !timedOut && !aborted) {
        resolve({ stdout: stdout.text(), stderr: stderr.text() });
        return;
      }
      const ending = aborted ? 'stopped: its step ran out of time' : timedOut ? `timed out after ${options.timeoutMs} ms` : signal ? `killed by ${signal}` : `exited with ${code}`;
      reject(new CommandError(`${command}: ${ending}${formatTail(stderr.text())}`));
    });
  });
}

function killGroup(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, signal);
  } catch {
    // The group is already gone.
  }
}

/** The last lines of a tool's output, indented, for an error message. */
export function formatTail(text: string, lines: number = stderrTailLines): string {
  const tail = text.trimEnd().split('\n').slice(-lines).join('\n  ');
  return tail === '' ? '' : `\n  ${tail}`;
}

/** Keeps at most outputBytesMax of a stream, dropping the oldest chunks first. */
class BoundedText {
  private chunks: Buffer[] = [];
  private bytes = 0;

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    while (this.bytes > outputBytesMax && this.chunks.length > 1) {
      this.bytes -= this.chunks.shift()?.length ?? 0;
    }
  }

  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}
