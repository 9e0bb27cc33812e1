import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { assert } from '../lib/assert.js';
import { sleep } from '../lib/clock.js';
import { openLogForAppend, readSmallFile, replaceFile } from './files.js';
import { controlPlaneUserName, formatTail, run, type RunAs } from './osuser.js';

/**
 * Server primitives for one data directory: initdb, config files, start detached, wait, stop.
 * Nothing here knows about clusters, so the embedded cell store can use the same code.
 */

/** initdb of an empty cluster takes ~1.1 s here (fsync dominated); a slow disk gets ample margin. */
export const initdbMsMax = 120_000;
/** Crash recovery of a busy server can take a while before it reports ready. */
export const readyWaitMsMax = 60_000;
/** Start takes ~0.12 s here; pg_ctl's 100 ms poll would add most of that again. */
export const readyPollMs = 10;
/** Fast shutdown (SIGINT) aborts sessions and checkpoints; give the checkpoint time to finish. */
export const stopFastMsMax = 30_000;
/** Immediate shutdown (SIGQUIT) needs no checkpoint; then SIGKILL as the last resort. */
export const stopImmediateMsMax = 5_000;
export const stopKillMsMax = 5_000;
export const stopPollMs = 10;
const logTailBytes = 16 * 1024;

export const cellarConfFile = 'cellar.conf';
/** Appended to postgresql.conf so Cellar's settings live in files it owns and rewrites whole. */
export const includeLine = `include_if_exists = '${cellarConfFile}'`;

export interface InitdbOptions {
  readonly binDir: string;
  /** Must not exist, or be empty; initdb creates it 0700. */
  readonly pgdata: string;
  readonly runAs: RunAs;
  readonly superuser?: string;
}

export async function initdb(options: InitdbOptions): Promise<void> {
  const args = [
    '-D', options.pgdata,
    '--no-locale', '-E', 'UTF8',
    '--data-checksums',
    '-U', options.superuser ?? 'postgres',
    // Never trust: Cellar's pg_hba.conf and pg_ident.conf replace initdb's before the first start.
    '--auth-local=peer', '--auth-host=scram-sha-256',
  ];
  await run(join(options.binDir, 'initdb'), args, { runAs: options.runAs, timeoutMs: initdbMsMax });
  await ensureIncludeLine(options.pgdata, options.runAs);
}

/** Idempotent: postgresql.conf ends with the include of cellar.conf exactly once. */
export async function ensureIncludeLine(pgdata: string, runAs: RunAs): Promise<void> {
  const path = join(pgdata, 'postgresql.conf');
  const text = await readSmallFile(path);
  if (text === undefined) throw new Error(`${path} is missing`);
  if (text.split('\n').includes(includeLine)) return;
  await replaceFile(path, `${text}${text.endsWith('\n') ? '' : '\n'}${includeLine}\n`, 0o600, runAs);
}

/** The ident map that admits Cellar's own OS user, and only it, as the `postgres` role on the local socket. */
export const identMapName = 'cellar';

export function renderIdent(): string {
  const osUser = controlPlaneUserName();
  assert(/^[a-z_][a-z0-9_.-]*$/i.test(osUser), `OS user name ${osUser} cannot go in pg_ident.conf`);
  return ['# Written by Cellar; rewritten on every start. Do not edit.', `${identMapName}  ${osUser}  postgres`, ''].join('\n');
}

/** The local line every server of Cellar's has: peer authentication through the map, never trust. */
export const localHbaLine = `local   all          postgres                           peer map=${identMapName}`;

/** pg_hba.conf and pg_ident.conf, written together (a map named in one must exist in the other). */
export async function writeAuthFiles(pgdata: string, hba: string, runAs: RunAs): Promise<void> {
  assert(!/\strust\b/.test(hba), 'no trust in any pg_hba.conf');
  await writeConfText(pgdata, 'pg_ident.conf', renderIdent(), runAs);
  await writeConfText(pgdata, 'pg_hba.conf', hba, runAs);
}

/** Postgres config string literal: single quotes doubled, backslashes escaped. */
export function quoteConfValue(value: string): string {
  assert(!/[\n\r\0]/.test(value), 'a config value cannot span lines');
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

export function renderConf(settings: Readonly<Record<string, string>>): string {
  const lines = ['# Written by Cellar; rewritten whole on every start. Do not edit.'];
  for (const [name, value] of Object.entries(settings)) {
    assert(/^[a-z_][a-z0-9_.]*$/.test(name), `bad setting name ${JSON.stringify(name)}`);
    lines.push(`${name} = ${quoteConfValue(value)}`);
  }
  return `${lines.join('\n')}\n`;
}

/**
 * Replaces a config file inside pgdata atomically (write then rename), mode 0600 because Cellar's
 * files may hold a replication password. A reload never sees half a file.
 */
export async function writeConf(pgdata: string, fileName: string, settings: Readonly<Record<string, string>>, runAs: RunAs): Promise<void> {
  await writeConfText(pgdata, fileName, renderConf(settings), runAs);
}

export async function writeConfText(pgdata: string, fileName: string, text: string, runAs: RunAs): Promise<void> {
  await replaceFile(join(pgdata, fileName), text, 0o600, runAs);
}

export interface PostmasterPid {
  readonly pid: number;
  readonly dataDir: string;
  readonly port: number | undefined;
  readonly socketDir: string | undefined;
  /** `starting`, `stopping`, `ready` or `standby`; undefined while the postmaster writes the file. */
  readonly status: string | undefined;
}

/** Parses pgdata/postmaster.pid (layout from pidfile.h); undefined if absent or still empty. */
export async function readPostmasterPid(pgdata: string): Promise<PostmasterPid | undefined> {
  let text: string | undefined;
  try {
    text = await readSmallFile(join(pgdata, 'postmaster.pid'));
  } catch {
    return undefined;
  }
  if (text === undefined) return undefined;
  const lines = text.split('\n');
  const pid = Number(lines[0]);
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  const port = Number(lines[3]);
  return {
    pid,
    dataDir: lines[1] ?? '',
    port: Number.isInteger(port) && port > 0 ? port : undefined,
    socketDir: lines[4]?.trim() || undefined,
    status: lines[7]?.trim() || undefined,
  };
}

/** Alive and not a zombie. EPERM means the pid exists but belongs to another user. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  return !isZombie(pid);
}

/** A zombie answers kill(0) until its parent reaps it; it is not a running server. */
function isZombie(pid: number): boolean {
  // /proc/<pid>/stat: "pid (comm) S ..."; comm may contain spaces and parentheses.
  const stat = readFileSyncSafe(`/proc/${pid}/stat`);
  if (stat === undefined) return false;
  const afterComm = stat.lastIndexOf(')') + 2;
  return stat.slice(afterComm, afterComm + 1) === 'Z';
}

function readFileSyncSafe(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * Whether a live pid is the postmaster of this data directory. After a crash and reboot the pid in
 * a stale postmaster.pid may belong to anything; /proc tells. Without /proc, trust the pid file.
 */
function isPostmasterOf(pid: number, pgdata: string): boolean {
  const cmdline = readFileSyncSafe(`/proc/${pid}/cmdline`);
  if (cmdline === undefined) return !existsProc();
  const argv = cmdline.split('\0');
  const dashD = argv.indexOf('-D');
  return (argv[0] ?? '').endsWith('postgres') && dashD >= 0 && resolve(argv[dashD + 1] ?? '') === resolve(pgdata);
}

function existsProc(): boolean {
  return readFileSyncSafe('/proc/self/stat') !== undefined;
}

/** The pid of the postmaster running on pgdata, or undefined (no pid file, stale, or reused pid). */
export async function serverPid(pgdata: string): Promise<number | undefined> {
  const file = await readPostmasterPid(pgdata);
  if (file === undefined) return undefined;
  return isAlive(file.pid) && isPostmasterOf(file.pid, pgdata) ? file.pid : undefined;
}

/**
 * Starts `postgres -D pgdata` in its own session with output appended to logFile, so it outlives
 * Cellar, and waits until it accepts connections. Idempotent: a running server is only awaited.
 * Returns the postmaster's pid.
 */
export async function startDetached(binDir: string, pgdata: string, logFile: string, runAs: RunAs): Promise<number> {
  const running = await serverPid(pgdata);
  if (running !== undefined) {
    await waitReady(pgdata, running, logFile, () => !isAlive(running));
    return running;
  }
  await removeForeignPidFile(pgdata);
  const pid = await spawnPostmaster(binDir, pgdata, logFile, runAs);
  await waitReady(pgdata, pid.pid, logFile, pid.exited);
  return pid.pid;
}

/**
 * A stale postmaster.pid whose pid now belongs to another process of the same user makes
 * Postgres refuse to start ("lock file already exists"); one with a dead pid it handles itself.
 */
async function removeForeignPidFile(pgdata: string): Promise<void> {
  const file = await readPostmasterPid(pgdata);
  if (file === undefined || !isAlive(file.pid) || isPostmasterOf(file.pid, pgdata)) return;
  await rm(join(pgdata, 'postmaster.pid'), { force: true });
}

async function spawnPostmaster(binDir: string, pgdata: string, logFile: string, runAs: RunAs): Promise<{ pid: number; exited: () => boolean }> {
  // The log sits in Cellar's own directory and stays Cellar's: the server writes to the descriptor.
  const log = await openLogForAppend(logFile);
  try {
    const child = spawn(join(binDir, 'postgres'), ['-D', pgdata], {
      detached: true,
      stdio: ['ignore', log.fd, log.fd],
      cwd: '/',
      env: { LC_ALL: 'C' },
      ...(runAs.switchUser ? { uid: runAs.uid, gid: runAs.gid } : {}),
    });
    let exited = false;
    child.on('exit', () => {
      exited = true;
    });
    const spawnError = await new Promise<Error | undefined>((resolveSpawn) => {
      child.once('spawn', () => resolveSpawn(undefined));
      child.once('error', (error) => resolveSpawn(error));
    });
    if (spawnError !== undefined) throw new Error(`postgres -D ${pgdata}: ${spawnError.message}`);
    child.unref();
    assert(child.pid !== undefined, 'spawned postgres has no pid');
    return { pid: child.pid, exited: () => exited };
  } finally {
    await log.close();
  }
}

/** Polls postmaster.pid until the server reports `ready` or `standby`; fails early if it died. */
export async function waitReady(pgdata: string, pid: number, logFile: string, exited: () => boolean): Promise<void> {
  const deadline = Date.now() + readyWaitMsMax;
  while (Date.now() < deadline) {
    if (exited()) throw new Error(`postgres -D ${pgdata} exited during start${await logTail(logFile)}`);
    const file = await readPostmasterPid(pgdata);
    if (file?.pid === pid && (file.status === 'ready' || file.status === 'standby')) return;
    await sleep(readyPollMs);
  }
  throw new Error(`postgres -D ${pgdata} not ready after ${readyWaitMsMax} ms${await logTail(logFile)}`);
}

export async function logTail(logFile: string): Promise<string> {
  try {
    const handle = await open(logFile, 'r');
    try {
      const { size } = await handle.stat();
      const length = Math.min(size, logTailBytes);
      const buffer = Buffer.alloc(length);
      await handle.read(buffer, 0, length, size - length);
      return formatTail(buffer.toString('utf8'));
    } finally {
      await handle.close();
    }
  } catch {
    return '';
  }
}

/**
 * Fast (or immediate) shutdown, escalating to immediate and then SIGKILL if a bound passes. No-op if no server
 * runs on pgdata (including a stale pid file).
 */
export async function stopServer(pgdata: string, mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
  const pid = await serverPid(pgdata);
  if (pid === undefined) return;
  const steps: ReadonlyArray<readonly [NodeJS.Signals, number]> = [
    ['SIGINT', stopFastMsMax],
    ['SIGQUIT', stopImmediateMsMax],
    ['SIGKILL', stopKillMsMax],
  ];
  for (const [signal, waitMs] of mode === 'fast' ? steps : steps.slice(1)) {
    if (!signalIfAlive(pid, signal)) return;
    if (await waitForExit(pid, waitMs)) return;
  }
  throw new Error(`postgres ${pid} on ${pgdata} survived SIGKILL for ${stopKillMsMax} ms`);
}

function signalIfAlive(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

export async function waitForExit(pid: number, waitMs: number): Promise<boolean> {
  const deadline = Date.now() + waitMs;
  while (Date.now() < deadline) {
    if (!isAlive(pid)) return true;
    await sleep(stopPollMs);
  }
  return !isAlive(pid);
}
