import { type ChildProcess, type StdioOptions, execFile, execFileSync, spawn } from 'node:child_process';
import { isAlive } from './process.js';
import { randomInt } from 'node:crypto';

/**
 * Network namespaces as database hosts for tests: N hosts, each its own network stack with one
 * address on a private /24, joined by a Linux bridge, and the root namespace (where the test and
 * the control plane run) on the same /24 as the gateway.
 *
 * The bridge lives in a namespace of its own (the switch), not in the root namespace. Frames
 * bridged between hosts then meet only the switch namespace's netfilter, which is empty: with
 * br_netfilter loaded and `bridge-nf-call-iptables = 1` (the default, and this machine's value),
 * a bridge in the root namespace would hand every frame between two hosts to the root's FORWARD
 * chain, where a firewall (Docker's DROP policy, for one) would block it. So no sysctl or rule of
 * this machine is read or changed. Nothing reaches the outside world: the switch has no uplink,
 * and the hosts have no default route, only their /24.
 *
 * Names: the tag is `<label><pid, base 36, 5 characters><sequence, 2 characters>`, so every name
 * says which process made it (see removeStaleTestNetworks) and link names stay within the
 * kernel's 15 characters:
 *   namespaces `cellar-<tag>-sw` (switch) and `cellar-<tag>-h<i>` (hosts);
 *   in the switch: bridge `cb<tag>`, host ports `cv<tag>h<i>`, the gateway's port `cv<tag>b`;
 *   in each host: `eth0`; in the root namespace: `cv<tag>r`, holding the gateway address.
 * Deleting the switch namespace destroys the bridge and every veth pair (each has an end in it).
 */

/** Every `ip` call is bounded; a slow one is a broken machine, not something to wait out. */
const ipCallMsMax = 5_000;
/** Bound on run(), unless the caller gives one. */
const runMsDefault = 30_000;
const runOutputBytesMax = 16 * 1024 * 1024;
export const hostsMax = 16;
/** Random /24s tried before giving up: collisions are rare, so a few tries are plenty. */
const subnetAttemptsMax = 20;
const labelPattern = /^[a-z]{1,3}$/;
/** Linux pid_max is at most 2^22 = "2hwkg" in base 36. */
const pidDigits = 5;
const sequenceDigits = 2;
const sequenceMax = 36 ** sequenceDigits;
const hostAddressOffset = 10;
/** `cellar-<label><pid><sequence>-(sw|h<i>)`, groups: tag, pid. */
const namespacePattern = /^cellar-([a-z]{1,3}([0-9a-z]{5})[0-9a-z]{2})-(sw|h[0-9]{1,2})$/;
/** The gateway's veth in the root namespace: `cv<tag>r`. */
const rootLinkPattern = /^cv([a-z]{1,3}([0-9a-z]{5})[0-9a-z]{2})r$/;

export interface TestHost {
  /** `h1`, `h2`, … */
  readonly name: string;
  readonly namespace: string;
  readonly address: string;
}

export interface RunOutput {
  /** null when the command was killed (by the time bound or a signal). */
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface SpawnInNamespaceOptions {
  /** Run as this OS user (setpriv, which execs: the pid stays the program's). Default: root. */
  readonly user?: string;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  readonly stdio?: StdioOptions;
}

export interface TestNetwork {
  readonly tag: string;
  /** The root namespace's address on the network: where hosts reach the test (and a control plane). */
  readonly gateway: string;
  /** `a.b.c.0/24` */
  readonly subnet: string;
  readonly hosts: readonly TestHost[];
  /** Takes the host's link down at both ends: nothing in or out; traffic inside the host still flows. */
  cut(host: TestHost): Promise<void>;
  heal(host: TestHost): Promise<void>;
  /**
   * A child process inside the host's namespace. `ip netns exec` (and setpriv) exec the program
   * without forking, so the returned pid is the program's own and a signal to it reaches it.
   */
  spawn(host: TestHost, command: string, args: readonly string[], options?: SpawnInNamespaceOptions): ChildProcess;
  /** Runs a command inside the host's namespace to completion (or `timeoutMs`); never rejects on a nonzero exit. */
  run(host: TestHost, command: string, args: readonly string[], timeoutMs?: number): Promise<RunOutput>;
  /** Kills what still runs in the hosts and deletes every namespace and link of this network; idempotent. */
  remove(): Promise<void>;
}

export interface TestNetworkOptions {
  /** 1–3 lowercase letters naming the test file's networks (the pid and a sequence are added). */
  readonly tag: string;
  readonly hosts: number;
}

let sequence = 0;
let staleSwept = false;
/** Namespaces of networks not yet removed, for the exit hook. */
const liveNamespaces = new Map<string, readonly string[]>();
let exitHookInstalled = false;

export async function createTestNetwork(options: TestNetworkOptions): Promise<TestNetwork> {
  if (!labelPattern.test(options.tag)) throw new Error(`tag must be 1–3 lowercase letters (it goes into 15-character link names), got ${JSON.stringify(options.tag)}`);
  if (!Number.isInteger(options.hosts) || options.hosts < 1 || options.hosts > hostsMax) throw new Error(`hosts must be 1–${hostsMax}, got ${options.hosts}`);
  if (sequence >= sequenceMax) throw new Error(`at most ${sequenceMax} test networks per process`);
  if (!staleSwept) {
    await removeStaleTestNetworks();
    staleSwept = true;
  }
  const tag = `${options.tag}${process.pid.toString(36).padStart(pidDigits, '0')}${(sequence++).toString(36).padStart(sequenceDigits, '0')}`;
  const names = networkNames(tag, options.hosts);
  installExitHook();
  liveNamespaces.set(tag, names.namespaces);
  try {
    return await build(tag, names, options.hosts);
  } catch (error) {
    await removeNamespaces(tag, names.namespaces).catch(() => undefined);
    throw error;
  }
}

interface NetworkNames {
  readonly switchNamespace: string;
  readonly bridge: string;
  readonly rootLink: string;
  readonly switchGatewayLink: string;
  readonly hostNamespaces: readonly string[];
  readonly hostLinks: readonly string[];
  /** Switch first: deleting it takes every link with it. */
  readonly namespaces: readonly string[];
}

function networkNames(tag: string, hostCount: number): NetworkNames {
  const indexes = Array.from({ length: hostCount }, (_, index) => index + 1);
  const switchNamespace = `cellar-${tag}-sw`;
  const hostNamespaces = indexes.map((index) => `cellar-${tag}-h${index}`);
  return {
    switchNamespace,
    bridge: `cb${tag}`,
    rootLink: `cv${tag}r`,
    switchGatewayLink: `cv${tag}b`,
    hostNamespaces,
    hostLinks: indexes.map((index) => `cv${tag}h${index}`),
    namespaces: [switchNamespace, ...hostNamespaces],
  };
}

async function build(tag: string, names: NetworkNames, hostCount: number): Promise<TestNetwork> {
  const sw = names.switchNamespace;
  await ip(['netns', 'add', sw]);
  await ip(['-n', sw, 'link', 'add', names.bridge, 'type', 'bridge']);
  await ip(['-n', sw, 'link', 'set', names.bridge, 'up']);
  await ip(['link', 'add', names.rootLink, 'type', 'veth', 'peer', 'name', names.switchGatewayLink, 'netns', sw]);
  await ip(['-n', sw, 'link', 'set', names.switchGatewayLink, 'master', names.bridge, 'up']);
  const prefix = await claimSubnet(names.rootLink);
  const gateway = `${prefix}.1`;
  await ip(['link', 'set', names.rootLink, 'up']);

  const hosts: TestHost[] = [];
  for (let index = 0; index < hostCount; index++) {
    const namespace = names.hostNamespaces[index] as string;
    const link = names.hostLinks[index] as string;
    const address = `${prefix}.${hostAddressOffset + index + 1}`;
    await ip(['netns', 'add', namespace]);
    await ip(['-n', namespace, 'link', 'set', 'lo', 'up']);
    await ip(['-n', sw, 'link', 'add', link, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', namespace]);
    await ip(['-n', sw, 'link', 'set', link, 'master', names.bridge, 'up']);
    await ip(['-n', namespace, 'addr', 'add', `${address}/24`, 'dev', 'eth0']);
    await ip(['-n', namespace, 'link', 'set', 'eth0', 'up']);
    hosts.push({ name: `h${index + 1}`, namespace, address });
  }

  const linkOf = (host: TestHost): string => {
    const index = names.hostNamespaces.indexOf(host.namespace);
    if (index < 0) throw new Error(`${host.namespace} is not a host of test network ${tag}`);
    return names.hostLinks[index] as string;
  };
  const setLink = async (host: TestHost, state: 'up' | 'down'): Promise<void> => {
    await ip(['-n', host.namespace, 'link', 'set', 'eth0', state]);
    await ip(['-n', sw, 'link', 'set', linkOf(host), state]);
  };
  let removed: Promise<void> | undefined;
  return {
    tag,
    gateway,
    subnet: `${prefix}.0/24`,
    hosts,
    cut: (host) => setLink(host, 'down'),
    heal: (host) => setLink(host, 'up'),
    spawn: (host, command, args, options = {}) => {
      linkOf(host);
      return spawn('ip', ['netns', 'exec', host.namespace, ...asUser(options.user), command, ...args], {
        stdio: options.stdio ?? ['ignore', 'pipe', 'pipe'],
        ...(options.env === undefined ? {} : { env: options.env }),
        ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
      });
    },
    run: (host, command, args, timeoutMs = runMsDefault) => {
      linkOf(host);
      return runBounded('ip', ['netns', 'exec', host.namespace, command, ...args], timeoutMs);
    },
    remove: () => {
      removed ??= removeNamespaces(tag, names.namespaces);
      // A removal that failed (an `ip` call timed out) is tried afresh by the next call.
      removed.catch(() => (removed = undefined));
      return removed;
    },
  };
}

function asUser(user: string | undefined): string[] {
  if (user === undefined) return [];
  return ['setpriv', `--reuid=${user}`, `--regid=${user}`, '--init-groups', '--'];
}

/**
 * A random 10.<200–255>.<0–255>.0/24 that no address or route of this machine touches, with the
 * gateway address on `link`. Checked again after assigning, since a test file running at the same
 * time may have picked the same /24 in between: then the later one (by name) gives way.
 */
async function claimSubnet(link: string): Promise<string> {
  for (let attempt = 0; attempt < subnetAttemptsMax; attempt++) {
    const prefix = `10.${200 + randomInt(56)}.${randomInt(256)}`;
    if ((await holdersOf(prefix)).length > 0) continue;
    await ip(['addr', 'add', `${prefix}.1/24`, 'dev', link]);
    const others = (await holdersOf(prefix)).filter((holder) => holder !== link);
    // Two test networks that raced to one /24: the one whose name sorts first keeps it.
    if (others.every((other) => rootLinkPattern.test(other) && other > link)) return prefix;
    await ip(['addr', 'del', `${prefix}.1/24`, 'dev', link]);
  }
  throw new Error(`no free 10.2xx.y.0/24 found on this machine after ${subnetAttemptsMax} tries`);
}

/** Links with an address in `prefix`.0/24 (or in a wider network containing it), and `route:<dst>` for routes that overlap it. */
async function holdersOf(prefix: string): Promise<string[]> {
  const subnet = ipv4ToNumber(`${prefix}.0`);
  const overlaps = (address: string, length: number): boolean => {
    const bits = Math.min(length, 24);
    const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
    return ((ipv4ToNumber(address) & mask) >>> 0) === ((subnet & mask) >>> 0);
  };
  const links = JSON.parse(await ip(['-j', '-4', 'addr', 'show'])) as { ifname: string; addr_info?: { local: string; prefixlen: number }[] }[];
  const holders = links.filter((link) => (link.addr_info ?? []).some((info) => overlaps(info.local, info.prefixlen))).map((link) => link.ifname);
  const routes = JSON.parse(await ip(['-j', '-4', 'route', 'show'])) as { dst: string; dev?: string }[];
  for (const route of routes) {
    if (route.dst === 'default' || (route.dev !== undefined && holders.includes(route.dev))) continue;
    const [address, length] = route.dst.split('/');
    if (overlaps(address as string, length === undefined ? 32 : Number(length))) holders.push(`route:${route.dst}`);
  }
  return holders;
}

function ipv4ToNumber(address: string): number {
  return address.split('.').reduce((sum, part) => sum * 256 + Number(part), 0);
}

/**
 * Removes the networks left by processes that are gone (a run killed before its exit hook ran).
 * A pid reused by a live process keeps its leftovers until that process is gone too.
 */
export async function removeStaleTestNetworks(): Promise<string[]> {
  const removed: string[] = [];
  for (const { name } of await listNamespaces()) {
    const match = namespacePattern.exec(name);
    if (match === null || isAlive(parseInt(match[2] as string, 36))) continue;
    await killInside(name);
    await ip(['netns', 'delete', name]);
    removed.push(name);
  }
  // A root link outlives its switch only if the run died between making the pair and the switch's deletion.
  for (const link of await listLinks()) {
    const match = rootLinkPattern.exec(link);
    if (match === null || isAlive(parseInt(match[2] as string, 36))) continue;
    await ip(['link', 'delete', link]).catch(() => undefined);
    removed.push(link);
  }
  return removed;
}

export async function listNamespaces(): Promise<{ name: string }[]> {
  const text = await ip(['-j', 'netns', 'list']);
  // `ip -j netns list` prints nothing at all (not `[]`) when there are none.
  return text.trim() === '' ? [] : (JSON.parse(text) as { name: string }[]);
}

export async function listLinks(namespace?: string): Promise<string[]> {
  const text = await ip([...(namespace === undefined ? [] : ['-n', namespace]), '-j', 'link', 'show']);
  return (JSON.parse(text) as { ifname: string }[]).map((link) => link.ifname);
}

/** SIGKILL to every process inside a namespace: all of them were started by the test that made it. */
async function killInside(namespace: string): Promise<void> {
  const pids = await ip(['netns', 'pids', namespace]).catch(() => '');
  for (const pid of pids.split('\n').filter((line) => /^[0-9]+$/.test(line))) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
}

/**
 * The root link goes first and explicitly: a deleted namespace is torn down by the kernel later,
 * so the veth pairs with an end in it would linger a moment in the root namespace.
 */
async function removeNamespaces(tag: string, namespaces: readonly string[]): Promise<void> {
  const rootLink = `cv${tag}r`;
  if ((await listLinks()).includes(rootLink)) await ip(['link', 'delete', rootLink]);
  const existing = new Set((await listNamespaces()).map((namespace) => namespace.name));
  for (const namespace of namespaces) {
    if (!existing.has(namespace)) continue;
    await killInside(namespace);
    await ip(['netns', 'delete', namespace]);
  }
  liveNamespaces.delete(tag);
}

/** A test that ends without remove() (a failed assertion before its cleanup) still leaves nothing behind. */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const namespaces of liveNamespaces.values()) {
      for (const namespace of namespaces) {
        try {
          const pids = execFileSync('ip', ['netns', 'pids', namespace], { timeout: ipCallMsMax, stdio: ['ignore', 'pipe', 'ignore'] }).toString();
          for (const pid of pids.split('\n').filter((line) => /^[0-9]+$/.test(line))) process.kill(Number(pid), 'SIGKILL');
          execFileSync('ip', ['netns', 'delete', namespace], { timeout: ipCallMsMax, stdio: 'ignore' });
        } catch {
          // Already gone, or the process is exiting anyway: removeStaleTestNetworks sweeps the rest.
        }
      }
    }
  });
}

async function ip(args: readonly string[]): Promise<string> {
  const result = await runBounded('ip', args, ipCallMsMax);
  if (result.code !== 0) throw new Error(`ip ${args.join(' ')} failed (${result.code ?? result.signal}): ${result.stderr.trim()}`);
  return result.stdout;
}

function runBounded(command: string, args: readonly string[], timeoutMs: number): Promise<RunOutput> {
  return new Promise((resolve) => {
    execFile(command, args, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: runOutputBytesMax }, (error, stdout, stderr) => {
      if (error === null) return resolve({ code: 0, signal: null, stdout, stderr });
      const code = typeof error.code === 'number' ? error.code : null;
      // A command that could not start at all (ENOENT) has a string code: report it in stderr.
      const startFailure = typeof error.code === 'string' ? `${error.message}\n` : '';
      resolve({ code: code ?? (error.signal === null || error.signal === undefined ? 127 : null), signal: (error.signal ?? null) as NodeJS.Signals | null, stdout, stderr: `${startFailure}${stderr}` });
    });
  });
}
