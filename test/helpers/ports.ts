import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isAlive } from './process.js';
import { isPortFree } from '../../src/lib/net.js';

/**
 * Ports for tests, safe when several test files run at once. A port from bind(0) is in the
 * kernel's ephemeral range, where any outgoing connection of any process may take it between the
 * test picking it and the server binding it (seen: the proxy's EADDRINUSE in CI). So each test
 * process claims a block below that range, by an atomic mkdir that names its pid (a dead pid's
 * block is taken over), and hands out its ports in order.
 */

const blockSize = 64;
const rangeLow = 10_000;
const claimAttemptsMax = 200;
const portLocksDir = join(tmpdir(), 'cellar-test-ports');

/** Where the kernel starts picking ephemeral ports; test ports stay below it. */
function ephemeralLow(): number {
  const text = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8');
  const low = Number(text.trim().split(/\s+/)[0]);
  if (!Number.isInteger(low) || low <= rangeLow + blockSize) throw new Error(`ip_local_port_range starts at ${text.trim()}: no room for test ports from ${rangeLow}`);
  return low;
}

/** The block locks this process holds, released when it exits. */
const claimedLocks = new Set<string>();

/** Takes the lock of block `index` for this process; false if a live process holds it. */
function tryClaim(index: number): boolean {
  const lock = join(portLocksDir, String(index));
  try {
    mkdirSync(lock);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    let owner: number;
    try {
      owner = Number(readFileSync(join(lock, 'pid'), 'utf8').trim());
    } catch {
      return false; // Claimed a moment ago, its pid not written yet.
    }
    if (owner > 0 && isAlive(owner)) return false;
    // A block left by a killed run (or a claim interrupted before its pid was written).
    rmSync(lock, { recursive: true, force: true });
    return false;
  }
  writeFileSync(join(lock, 'pid'), String(process.pid));
  // One exit listener for all of this process's blocks (a file with many Cellars claims many).
  if (claimedLocks.size === 0) process.once('exit', () => claimedLocks.forEach((claimed) => rmSync(claimed, { recursive: true, force: true })));
  claimedLocks.add(lock);
  return true;
}

let block: { next: number; end: number } | undefined;

function claimBlock(): { next: number; end: number } {
  mkdirSync(portLocksDir, { recursive: true, mode: 0o1777 });
  const blocks = Math.floor((ephemeralLow() - rangeLow) / blockSize);
  const start = process.pid % blocks;
  for (let attempt = 0; attempt < claimAttemptsMax; attempt += 1) {
    const index = (start + attempt) % blocks;
    if (tryClaim(index)) {
      const low = rangeLow + index * blockSize;
      return { next: low, end: low + blockSize };
    }
  }
  throw new Error(`no free block of ${blockSize} test ports after ${claimAttemptsMax} attempts (locks in ${portLocksDir})`);
}

/** `count` consecutive ports of this process's blocks, each free right now (skipping any in use). */
export async function testPorts(count: number): Promise<number[]> {
  if (count > blockSize) throw new Error(`asked for ${count} consecutive test ports, at most ${blockSize}`);
  for (let attempt = 0; attempt < claimAttemptsMax; attempt += 1) {
    if (block === undefined || block.next + count > block.end) block = claimBlock();
    const ports = Array.from({ length: count }, (_, offset) => (block as { next: number }).next + offset);
    block.next += count;
    const free = await Promise.all(ports.map((port) => isPortFree(port)));
    if (free.every(Boolean)) return ports;
  }
  throw new Error(`no ${count} free consecutive test ports after ${claimAttemptsMax} attempts`);
}

/** One port for a test server. */
export async function testPort(): Promise<number> {
  const [port] = await testPorts(1);
  if (port === undefined) throw new Error('testPorts(1) returned nothing');
  return port;
}
