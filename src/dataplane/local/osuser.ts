import { spawn } from 'node:child_process';
import { chown, chmod, mkdir, open, writeFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { assert } from '../../lib/assert.js';

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

export const postgresUserName = 'postgres';

/** The user servers run as: `postgres` when Cellar is root, the current user otherwise. */
export async function resolveRunAs(): Promise<RunAs> {
  const uid = process.getuid?.();
  const gid = process.getgid?.();
  assert(uid !== undefined && gid !== undefined, 'the local data plane needs a POSIX host');
  if (uid !== 0) return { name: `uid ${uid}`, uid, gid, switchUser: false };
  const result = await run('getent', ['passwd', postgresUserName], { inheritEnvironment: true, timeoutMs: lookupTimeoutMs });
  const fields = result.stdout.trim().split(':');
  const userUid = Number(fields[2]);
  const userGid = Number(fields[3]);
  assert(Number.isInteger(userUid) && Number.isInteger(userGid), `cannot parse getent passwd ${postgresUserName}: ${result.stdout}`);
  assert(userUid !== 0, `OS user ${postgresUserName} must not be root`);
  return { name: postgresUserName, uid: userUid, gid: userGid, switchUser: true };
}

/** Creates a directory (and missing parents) and gives it to the run-as user with this mode. */
export async function ensureDirFor(path: string, mode: number, runAs: RunAs): Promise<void> {
  await mkdir(path, { recursive: true, mode: 0o755 });
  await chmod(path, mode);
  if (runAs.switchUser) await chown(path, runAs.uid, runAs.gid);
}

/** Writes a file owned by the run-as user. Mode is applied at creation so secrets are never world-readable. */
export async function writeFileFor(path: string, content: string, mode: number, runAs: RunAs): Promise<void> {
  await writeFile(path, content, { mode });
  await chmod(path, mode);
  if (runAs.switchUser) await chown(path, runAs.uid, runAs.gid);
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
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child.pid, 'SIGTERM');
      setTimeout(() => killGroup(child.pid, 'SIGKILL'), killGraceMs).unref();
    }, options.timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(new CommandError(`${command}: ${error.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0 && !timedOut) {
        resolve({ stdout: stdout.text(), stderr: stderr.text() });
        return;
      }
      const ending = timedOut ? `timed out after ${options.timeoutMs} ms` : signal ? `killed by ${signal}` : `exited with ${code}`;
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
