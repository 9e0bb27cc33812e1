import { readFile } from 'node:fs/promises';

/**
 * A process's start time, in clock ticks since boot: field 22 of `/proc/<pid>/stat`. With the pid
 * it names one process for good: a pid reused by another process has another start time.
 */

/** `/proc/<pid>/stat` is one line of a few hundred bytes. */
const statBytesMax = 4096;
const startTimeField = 22;

export async function processStartTicks(pid: number): Promise<number | undefined> {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  let text: string;
  try {
    text = (await readFile(`/proc/${pid}/stat`, 'utf8')).slice(0, statBytesMax);
  } catch {
    return undefined;
  }
  return parseStartTicks(text);
}

/** "pid (comm) state ppid …": comm may hold spaces and parentheses, so fields count from the last `)`. */
export function parseStartTicks(stat: string): number | undefined {
  const afterComm = stat.lastIndexOf(')');
  if (afterComm < 0) return undefined;
  // Field 3 (state) is the first after comm.
  const fields = stat.slice(afterComm + 2).split(' ');
  const value = Number(fields[startTimeField - 3]);
  return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
}

/** Whether the process is a zombie (it answers kill 0 until reaped, but runs no more). */
export async function isZombie(pid: number): Promise<boolean> {
  const text = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (text === undefined) return false;
  return text.slice(text.lastIndexOf(')') + 2, text.lastIndexOf(')') + 3) === 'Z';
}
