import { constants } from 'node:fs';
import { open, unlink } from 'node:fs/promises';
import { totalmem } from 'node:os';
import { dirname } from 'node:path';
import { assert } from '../lib/assert.js';
import { type Recommendation, isSatisfied, transparentHugePageName } from '../lib/tuning.js';
import { replaceFile } from '../postgres/files.js';
import { selfRunAs } from '../postgres/osuser.js';

/**
 * This machine's kernel settings (`cellar host tune`): read the current values, and apply the
 * recommended ones by writing a sysctl.d file and loading it. Every read and write is one bounded
 * system call on a kernel file; a value that cannot be read or set says why instead of failing the
 * rest (a container typically mounts /proc/sys read-only).
 */

export const transparentHugePagePath = '/sys/kernel/mm/transparent_hugepage/enabled';
/** Kernel files hold one short line; anything longer is not the value we asked for. */
const kernelValueBytesMax = 4_096;
const meminfoBytesMax = 64 * 1024;
const procSysRoot = '/proc/sys';
/** Our keys only: letters, digits, `_`, `-` and dots; never a path. */
const sysctlKeyPattern = /^[a-z0-9_-]+(\.[a-z0-9_-]+)+$/;
const sysctlFileMode = 0o644;

export interface CurrentValue {
  readonly name: string;
  /** null: it could not be read (`why` says so). */
  readonly value: string | null;
  readonly why?: string;
}

export interface KeyOutcome {
  readonly name: string;
  readonly set: boolean;
  /** What was asked of the kernel (the recommendation, or a current value that already satisfies it). */
  readonly wanted: string;
  /** What the kernel holds afterwards, null when it cannot be read. */
  readonly value: string | null;
  readonly why?: string;
}

export interface ApplyReport {
  readonly file: string;
  readonly fileWritten: boolean;
  readonly fileError?: string;
  readonly keys: readonly KeyOutcome[];
}

export function kernelPathOf(recommendation: Pick<Recommendation, 'name' | 'target'>): string {
  if (recommendation.target === 'sysfs') {
    assert(recommendation.name === transparentHugePageName, `no sysfs file is known for ${recommendation.name}`);
    return transparentHugePagePath;
  }
  assert(sysctlKeyPattern.test(recommendation.name), `${recommendation.name} is not a sysctl key`);
  return `${procSysRoot}/${recommendation.name.replaceAll('.', '/')}`;
}

function errorCode(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

/**
 * Why a file could not be read or written, as the operator needs to hear it: `kernel` files are
 * settings under /proc/sys or /sys, the `sysctl` file is the one `--apply` writes.
 */
export function describeFailure(path: string, error: unknown, access: 'read' | 'write', kind: 'kernel' | 'sysctl'): string {
  switch (errorCode(error)) {
    case 'EROFS':
      return kind === 'kernel'
        ? `${dirname(path)} is read-only here (a container, or /proc/sys mounted read-only): set it on the host that runs this one`
        : `${dirname(path)} is on a read-only file system`;
    case 'EACCES':
    case 'EPERM':
      return `permission denied ${access === 'write' ? 'writing' : 'reading'} ${path}: run as root${kind === 'kernel' ? ', outside a container that withholds CAP_SYS_ADMIN' : ''}`;
    case 'ENOENT':
      return kind === 'kernel' ? `${path} does not exist: this kernel (or this network namespace) has no such setting` : `the directory ${dirname(path)} does not exist`;
    case 'ENOTDIR':
      return `a part of ${dirname(path)} is not a directory`;
    case 'EINVAL':
      return `the kernel refused the value (${path})`;
    case 'ELOOP':
      return `${path} is a symbolic link, which Cellar does not follow`;
    default:
      return `${path}: ${error instanceof Error ? error.message : String(error)}`;
  }
}

/** The first `bytesMax` bytes of a kernel file, without following a link or blocking. */
async function readKernelFile(path: string, bytesMax: number): Promise<string> {
  const handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    // Kernel files report size 0, so read to a fixed bound rather than by stat.
    const buffer = Buffer.alloc(bytesMax);
    const { bytesRead } = await handle.read(buffer, 0, bytesMax, 0);
    return buffer.subarray(0, bytesRead).toString('utf8');
  } finally {
    await handle.close();
  }
}

/** The value as sysctl prints it: fields separated by one space. THP's file marks the active choice in brackets. */
function normalize(recommendation: Pick<Recommendation, 'target'>, text: string): string {
  if (recommendation.target === 'sysfs') return /\[([a-z]+)\]/.exec(text)?.[1] ?? text.trim();
  return text.trim().split(/\s+/).join(' ');
}

export async function readCurrent(recommendation: Pick<Recommendation, 'name' | 'target'>): Promise<CurrentValue> {
  const path = kernelPathOf(recommendation);
  try {
    return { name: recommendation.name, value: normalize(recommendation, await readKernelFile(path, kernelValueBytesMax)) };
  } catch (error) {
    return { name: recommendation.name, value: null, why: describeFailure(path, error, 'read', 'kernel') };
  }
}

export async function readCurrentValues(recommendations: readonly Recommendation[]): Promise<CurrentValue[]> {
  return Promise.all(recommendations.map(readCurrent));
}

/** This machine's memory and swap, MB (swap from /proc/meminfo; 0 when it cannot be read). */
export async function readHostMemory(): Promise<{ memoryMb: number; swapMb: number }> {
  const memoryMb = Math.floor(totalmem() / 1024 / 1024);
  let swapMb = 0;
  try {
    const match = /^SwapTotal:\s+(\d+) kB$/m.exec(await readKernelFile('/proc/meminfo', meminfoBytesMax));
    if (match?.[1] !== undefined) swapMb = Math.floor(Number(match[1]) / 1024);
  } catch {
    // Without /proc/meminfo the ratio is computed as if there were no swap: the safer side.
  }
  return { memoryMb, swapMb };
}

/** The value to ask for: a current one that already satisfies a limit is kept (a higher file-max is not lowered). */
export function wantedValue(recommendation: Recommendation, current: CurrentValue | undefined): string {
  if (recommendation.comparison !== 'equal' && current?.value != null && isSatisfied(recommendation, current.value) === true) return current.value;
  return recommendation.recommended;
}

export function sysctlFileText(recommendations: readonly Recommendation[], wanted: ReadonlyMap<string, string>, header: readonly string[]): string {
  const lines = header.map((line) => `# ${line}`);
  for (const recommendation of recommendations) {
    if (recommendation.target !== 'sysctl') continue;
    lines.push(`# ${recommendation.reason}`, `${recommendation.name} = ${wanted.get(recommendation.name) ?? recommendation.recommended}`);
  }
  return `${lines.join('\n')}\n`;
}

async function writeKernelValue(path: string, value: string): Promise<void> {
  // No O_CREAT: a kernel file that is absent must stay absent, never become a regular file.
  const handle = await open(path, constants.O_WRONLY | constants.O_NOFOLLOW);
  try {
    await handle.write(`${value}\n`);
  } finally {
    await handle.close();
  }
}

/** Writes one value and reads it back: the kernel may keep less (huge pages on fragmented memory). */
async function loadOne(recommendation: Recommendation, wanted: string): Promise<KeyOutcome> {
  const path = kernelPathOf(recommendation);
  try {
    await writeKernelValue(path, wanted);
  } catch (error) {
    const current = await readCurrent(recommendation);
    return { name: recommendation.name, set: false, wanted, value: current.value, why: describeFailure(path, error, 'write', 'kernel') };
  }
  const after = await readCurrent(recommendation);
  if (after.value === wanted) return { name: recommendation.name, set: true, wanted, value: after.value };
  const why = after.value === null ? after.why : `the kernel holds ${after.value} after writing ${wanted}${recommendation.name === 'vm.nr_hugepages' ? ' (not enough contiguous free memory: it takes effect at the next boot, from the sysctl file)' : ''}`;
  return { name: recommendation.name, set: false, wanted, value: after.value, ...(why === undefined ? {} : { why }) };
}

async function removeStaging(path: string): Promise<void> {
  await unlink(`${path}.new`).catch((error: unknown) => {
    if (errorCode(error) !== 'ENOENT' && errorCode(error) !== 'ENOTDIR') throw error;
  });
}

/**
 * Writes the sysctl keys to `sysctlFile` whole (a staging file renamed over it, never through a
 * link), then loads every value in the recommendations' order and reads each back. When the file
 * cannot be written nothing is loaded: the file is what makes the values survive a reboot, and a
 * host set by hand but not by file would drift back silently.
 */
export async function applyTuning(recommendations: readonly Recommendation[], current: readonly CurrentValue[], sysctlFile: string, header: readonly string[]): Promise<ApplyReport> {
  const currentByName = new Map(current.map((value) => [value.name, value]));
  const wanted = new Map(recommendations.map((recommendation) => [recommendation.name, wantedValue(recommendation, currentByName.get(recommendation.name))]));
  try {
    await replaceFile(sysctlFile, sysctlFileText(recommendations, wanted, header), sysctlFileMode, selfRunAs());
  } catch (error) {
    await removeStaging(sysctlFile);
    const fileError = describeFailure(sysctlFile, error, 'write', 'sysctl');
    const keys = recommendations.map((recommendation) => ({
      name: recommendation.name,
      set: false,
      wanted: wanted.get(recommendation.name) ?? recommendation.recommended,
      value: currentByName.get(recommendation.name)?.value ?? null,
      why: 'not loaded: the sysctl file could not be written',
    }));
    return { file: sysctlFile, fileWritten: false, fileError, keys };
  }
  const keys: KeyOutcome[] = [];
  // In order, one at a time: huge pages and the ratio must be in place before strict overcommit.
  for (const recommendation of recommendations) keys.push(await loadOne(recommendation, wanted.get(recommendation.name) ?? recommendation.recommended));
  return { file: sysctlFile, fileWritten: true, keys };
}
