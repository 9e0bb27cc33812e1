import { randomBytes } from 'node:crypto';
import { readFile, readdir, rm } from 'node:fs/promises';
import { Agent as HttpsAgent, request } from 'node:https';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import type { PeerCertificate } from 'node:tls';
import { parseArgs } from 'node:util';
import { type AgentIdentity, joinCell } from '../src/agent/join.js';
import { loadConfig } from '../src/config.js';
import { type HeartbeatInstance, type HeartbeatRequest, agentHeartbeatPath, controlCommonName } from '../src/dataplane/agent-protocol.js';
import { embeddedStorePaths } from '../src/store/embedded.js';
import { type Report, discoverEnvironment, percentile, throwIfInterrupted, watchInterrupts } from './ha.js';
import { BenchCellar, clockTicksPerSecond, cpuTicks, makeTempDir, median, processesWith, sleep, uptime, waitFor } from './lib.js';

/**
 * bench/host-heartbeats: the control plane's CPU per host heartbeat, and how it grows from a few
 * hosts to 50. A real `cellar up` (no local host) with its real agent listener, certificate
 * checks, lease renewal in its store and heartbeat book; the hosts are simulated in this process:
 * each one added with `cellar hosts add`, joined with the agent's own `joinCell` (its own key,
 * CSR and certificate in a data directory of its own), then sending real heartbeats over mutual
 * TLS (keep-alive, one connection per host, like the agent) at the configured interval, each
 * listing a few instances with a full status. At each size, over a fixed window: CPU time of the
 * `cellar up` process and of the embedded store's postgres processes (from /proc/<pid>/stat),
 * beats answered, and CPU ms per beat with and without the idle baseline (0 hosts) taken off.
 *
 *   node dist/bench/host-heartbeats.js [--sizes 3,10,25,50] [--window-seconds 20] [--instances 3] [--json]
 */

const sizesDefault = [3, 10, 25, 50];
const hostsMax = 200;
const windowSecondsDefault = 20;
const windowSecondsMax = 600;
const instancesDefault = 3;
const instancesMax = 100;
/** After hosts join, before a window: new connections, certificate lookups and host machines settle. */
const warmUpMs = 5_000;
const cliMsMax = 60_000;
const beatTimeoutMs = 5_000;
const responseBytesMax = 1024 * 1024;
/** As the agent: even a beat that ran past its interval waits this long before the next. */
const beatGapMsMin = 10;
const joinedWaitMsMax = 60_000;
/** Host addresses: one /16 no real host of this bench uses (nothing ever connects to them). */
const addressPrefix = '10.254';

interface SimulatedHost {
  readonly name: string;
  readonly identity: AgentIdentity;
  readonly instances: readonly HeartbeatInstance[];
  readonly agent: HttpsAgent;
  answered: number;
  failed: number;
  lastError: string | null;
  readonly latenciesMs: number[];
  stopped: boolean;
  loop: Promise<void> | null;
}

interface Sample {
  readonly upTicks: number;
  readonly storeTicks: number;
  readonly benchCpuMicros: number;
  readonly answered: number;
  readonly failed: number;
  readonly atMs: number;
}

interface SizeResult {
  readonly hosts: number;
  readonly windowMs: number;
  readonly beats: number;
  readonly failedBeats: number;
  readonly beatsPerSecond: number;
  /** What the hosts would send at the interval with instant answers. */
  readonly beatsPerSecondExpected: number;
  readonly upCpuMs: number;
  readonly storeCpuMs: number;
  readonly upCorePercent: number;
  readonly storeCorePercent: number;
  readonly upMsPerBeat: number | null;
  readonly storeMsPerBeat: number | null;
  /** Net of the idle baseline's CPU over the same window. */
  readonly upNetMsPerBeat: number | null;
  readonly storeNetMsPerBeat: number | null;
  readonly latencyMedianMs: number | null;
  readonly latencyP99Ms: number | null;
  /** This process (the simulator) over the window, to show what the machine's other core was doing. */
  readonly simulatorCorePercent: number;
}

function parseOptions(): { sizes: number[]; windowMs: number; instances: number; json: boolean } {
  const { values } = parseArgs({ options: { sizes: { type: 'string' }, 'window-seconds': { type: 'string' }, instances: { type: 'string' }, json: { type: 'boolean' } } });
  const sizes = values.sizes === undefined ? sizesDefault : values.sizes.split(',').map(Number);
  if (sizes.length === 0 || sizes.some((size, index) => !Number.isInteger(size) || size < 1 || size > hostsMax || (index > 0 && size <= (sizes[index - 1] as number)))) {
    throw new Error(`--sizes must be increasing integers from 1 to ${hostsMax}, comma-separated`);
  }
  const windowSeconds = values['window-seconds'] === undefined ? windowSecondsDefault : Number(values['window-seconds']);
  if (!Number.isInteger(windowSeconds) || windowSeconds < 1 || windowSeconds > windowSecondsMax) throw new Error(`--window-seconds must be an integer from 1 to ${windowSecondsMax}`);
  const instances = values.instances === undefined ? instancesDefault : Number(values.instances);
  if (!Number.isInteger(instances) || instances < 0 || instances > instancesMax) throw new Error(`--instances must be an integer from 0 to ${instancesMax}`);
  return { sizes, windowMs: windowSeconds * 1000, instances, json: values.json === true };
}

async function main(): Promise<void> {
  watchInterrupts();
  const options = parseOptions();
  const report: Report = (line) => (options.json ? process.stderr : process.stdout).write(`${line}\n`);
  const environment = await discoverEnvironment();
  const loadBefore = await uptime();
  report(`bench/host-heartbeats: sizes ${options.sizes.join(', ')}; window ${options.windowMs / 1000} s; ${options.instances} instance(s) per host; ${availableParallelism()} cores; ${environment.postgresVersion}; node ${process.version}`);
  report(`load before: ${loadBefore}`);
  const cellar = await BenchCellar.create({ CELLAR_LOCAL_HOST: 'false', CELLAR_LOG_LEVEL: 'warn', CELLAR_BACKUP_INTERVAL_MS: '0' });
  const config = loadConfig(cellar.env);
  const heartbeatMs = config.hosts.heartbeatMs;
  report(`settings: CELLAR_HOST_HEARTBEAT_MS=${heartbeatMs}, CELLAR_HOST_LEASE_MS=${config.hosts.leaseMs}, CELLAR_HIGH_TICK_MS=${config.highTickMs}, CELLAR_NORMAL_TICK_MS=${config.normalTickMs}`);
  const simulatorRoot = await makeTempDir('cellar-bench-hosts-');
  const hosts: SimulatedHost[] = [];
  const results: SizeResult[] = [];
  const problems: string[] = [];
  let idle: Window = { upTicks: 0, storeTicks: 0, benchCpuMicros: 0, answered: 0, failed: 0, atMs: 0, windowMs: 1, latencies: [] };
  let ticksPerSecond = 0;
  try {
    await cellar.start();
    ticksPerSecond = await clockTicksPerSecond();
    const upPid = await cellarUpPid(cellar);
    const storePgdata = embeddedStorePaths(cellar.dataDir).pgdata;
    const controlUrl = `https://127.0.0.1:${cellar.env['CELLAR_AGENT_LISTEN_PORT'] ?? ''}`;
    report(`cellar up pid ${upPid}; store ${storePgdata}; agent listener ${controlUrl}`);
    await sleep(warmUpMs);
    idle = await measureWindow(upPid, storePgdata, hosts, options.windowMs);
    const idleResult = resultOf(0, idle, idle, ticksPerSecond, heartbeatMs);
    report(`\nidle (0 hosts): cellar up ${idleResult.upCpuMs.toFixed(0)} ms CPU (${idleResult.upCorePercent.toFixed(2)} % of a core), store ${idleResult.storeCpuMs.toFixed(0)} ms (${idleResult.storeCorePercent.toFixed(2)} %)`);
    for (const size of options.sizes) {
      throwIfInterrupted();
      const joinStarted = performance.now();
      while (hosts.length < size) {
        const host = await addHost(cellar, controlUrl, simulatorRoot, hosts.length + 1, options.instances);
        hosts.push(host);
        startBeating(host, heartbeatMs);
      }
      await waitFor('every simulated host answered', async () => (hosts.every((host) => host.answered > 0) ? true : undefined), joinedWaitMsMax, 50);
      report(`\n${size} hosts (joined in ${((performance.now() - joinStarted) / 1000).toFixed(1)} s)`);
      await sleep(warmUpMs);
      const sample = await measureWindow(upPid, storePgdata, hosts, options.windowMs);
      const result = resultOf(size, sample, idle, ticksPerSecond, heartbeatMs);
      results.push(result);
      printResult(result, report);
      const failing = hosts.filter((host) => host.lastError !== null).slice(0, 3);
      for (const host of failing) report(`  ${host.name}: last error ${host.lastError ?? ''}`);
    }
  } finally {
    await Promise.all(hosts.map((host) => stopBeating(host)));
    problems.push(...(await cellar.destroy()));
    await rm(simulatorRoot, { recursive: true, force: true });
  }
  const loadAfter = await uptime();
  report(`load after:  ${loadAfter}`);
  printSummary(results, report);
  for (const problem of problems) report(`cleanup: ${problem}`);
  if (options.json) {
    process.stdout.write(`${JSON.stringify({ benchmark: 'bench/host-heartbeats', date: new Date().toISOString(), machine: { cores: availableParallelism(), postgres: environment.postgresVersion, node: process.version }, heartbeatMs, instancesPerHost: options.instances, windowMs: options.windowMs, loadBefore, loadAfter, idle: resultOf(0, idle, idle, ticksPerSecond, heartbeatMs), sizes: results, problems }, null, 2)}\n`);
  }
}

/** The `cellar up` process itself (not the CLI calls, nor the proxy or the store it runs). */
async function cellarUpPid(cellar: BenchCellar): Promise<number> {
  const pids = await processesWith(['up'], `CELLAR_HOME=${cellar.env['CELLAR_HOME'] ?? ''}`);
  if (pids.length !== 1) throw new Error(`expected one cellar up process with this CELLAR_HOME, found ${pids.length}`);
  return pids[0] as number;
}

/** `cellar hosts add` (the admin's step), then the agent's own join from a data directory of its own. */
async function addHost(cellar: BenchCellar, controlUrl: string, root: string, index: number, instanceCount: number): Promise<SimulatedHost> {
  const name = `sim${index}`;
  const address = `${addressPrefix}.${Math.floor(index / 256)}.${index % 256}`;
  const added = await cellar.cliJson<{ joinToken: string }>(['hosts', 'add', name, '--address', address, '--zone', `z${(index % 3) + 1}`], cliMsMax);
  const identity = await joinCell({ token: added.joinToken, controlUrl, dataDir: join(root, name) });
  const agent = new HttpsAgent({
    keepAlive: true,
    maxSockets: 1,
    key: identity.key,
    cert: identity.certificate,
    ca: identity.ca,
    minVersion: 'TLSv1.3',
    checkServerIdentity: (_host: string, certificate: PeerCertificate) =>
      certificate.subject?.CN === controlCommonName ? undefined : new Error(`the control plane's certificate is CN=${String(certificate.subject?.CN)}`),
  });
  const instances = Array.from({ length: instanceCount }, (_, ordinal) => simulatedInstance(ordinal));
  return { name, identity, instances, agent, answered: 0, failed: 0, lastError: null, latenciesMs: [], stopped: false, loop: null };
}

/** An instance as an agent reports it: alive, with a full status like a primary's (about the size of a real one). */
function simulatedInstance(ordinal: number): HeartbeatInstance {
  const lsn = `0/${(0x3000000 + ordinal * 0x148).toString(16).toUpperCase()}`;
  return {
    instanceId: `in_${randomBytes(6).toString('hex')}`,
    alive: true,
    statusAgeMs: 250,
    status: {
      running: true,
      pid: 10_000 + ordinal,
      accepting: true,
      inRecovery: ordinal > 0,
      timeline: 1,
      lsn,
      streaming: ordinal > 0 ? true : undefined,
      receiveLsn: lsn,
      archive: ordinal > 0 ? undefined : { lastArchivedWal: '000000010000000000000002', lastArchivedAt: new Date().toISOString(), lagBytes: 328, failedCount: 0, lastFailedWal: null, lastFailedAt: null },
    },
  };
}

/** The agent's loop: a beat, then the rest of the interval (at least a short gap). */
function startBeating(host: SimulatedHost, heartbeatMs: number): void {
  host.loop = (async () => {
    while (!host.stopped) {
      const started = performance.now();
      try {
        await beat(host);
        host.answered += 1;
        host.latenciesMs.push(performance.now() - started);
      } catch (error) {
        host.failed += 1;
        host.lastError = error instanceof Error ? error.message : String(error);
      }
      await sleep(Math.max(heartbeatMs - (performance.now() - started), beatGapMsMin));
    }
  })();
}

async function stopBeating(host: SimulatedHost): Promise<void> {
  host.stopped = true;
  await host.loop;
  host.agent.destroy();
}

function beat(host: SimulatedHost): Promise<void> {
  const body: HeartbeatRequest = { hostId: host.identity.hostId, instances: host.instances, leaseLeftMs: 1_000 };
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const outgoing = request(
      new URL(agentHeartbeatPath, host.identity.controlUrl),
      { method: 'POST', agent: host.agent, timeout: beatTimeoutMs, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } },
      (response) => {
        let bytes = 0;
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          if (bytes > responseBytesMax) outgoing.destroy(new Error(`answer over ${responseBytesMax} bytes`));
          else chunks.push(chunk);
        });
        response.on('end', () => {
          const status = response.statusCode ?? 0;
          if (status >= 200 && status < 300) resolve();
          else reject(new Error(`heartbeat answered ${status}: ${Buffer.concat(chunks).toString('utf8').slice(0, 300)}`));
        });
        response.on('error', reject);
      },
    );
    outgoing.on('timeout', () => outgoing.destroy(new Error(`no answer within ${beatTimeoutMs} ms`)));
    outgoing.on('error', reject);
    outgoing.end(payload);
  });
}

// ---------------------------------------------------------------------------------------------
// CPU.

/**
 * The store's postmaster and its children (backends, checkpointer, WAL writer, …) by ppid. A
 * child that exits is reaped by the postmaster, whose cutime/cstime then hold its whole CPU time,
 * so self + reaped children + live children counts every backend across the window.
 */
async function storeTicks(pgdata: string): Promise<number> {
  const postmasterPid = Number((await readFile(join(pgdata, 'postmaster.pid'), 'utf8')).split('\n')[0]);
  const own = await statFields(postmasterPid);
  if (own === undefined) throw new Error(`the store's postmaster ${postmasterPid} is gone`);
  let ticks = own.utime + own.stime + own.cutime + own.cstime;
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const fields = await statFields(Number(entry));
    if (fields?.ppid === postmasterPid) ticks += fields.utime + fields.stime;
  }
  return ticks;
}

async function statFields(pid: number): Promise<{ ppid: number; utime: number; stime: number; cutime: number; cstime: number } | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (stat === undefined) return undefined;
  // Fields after the command name's closing parenthesis: state is the 3rd field of the line, ppid the 4th, utime..cstime 14..17.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { ppid: Number(fields[1]), utime: Number(fields[11]), stime: Number(fields[12]), cutime: Number(fields[13]), cstime: Number(fields[14]) };
}

async function sample(upPid: number, pgdata: string, hosts: readonly SimulatedHost[]): Promise<Sample> {
  const upTicks = await cpuTicks(upPid);
  if (upTicks === undefined) throw new Error(`cellar up (pid ${upPid}) is gone`);
  const usage = process.cpuUsage();
  return {
    upTicks,
    storeTicks: await storeTicks(pgdata),
    benchCpuMicros: usage.user + usage.system,
    answered: hosts.reduce((sum, host) => sum + host.answered, 0),
    failed: hosts.reduce((sum, host) => sum + host.failed, 0),
    atMs: performance.now(),
  };
}

/** What changed over one window. */
interface Window extends Sample {
  readonly windowMs: number;
  /** Answer latencies of the beats answered in the window. */
  readonly latencies: readonly number[];
}

async function measureWindow(upPid: number, pgdata: string, hosts: readonly SimulatedHost[], windowMs: number): Promise<Window> {
  const latencyFrom = hosts.map((host) => host.latenciesMs.length);
  const start = await sample(upPid, pgdata, hosts);
  await sleep(windowMs);
  const end = await sample(upPid, pgdata, hosts);
  const latencies = hosts.flatMap((host, index) => host.latenciesMs.slice(latencyFrom[index]));
  return {
    upTicks: end.upTicks - start.upTicks,
    storeTicks: end.storeTicks - start.storeTicks,
    benchCpuMicros: end.benchCpuMicros - start.benchCpuMicros,
    answered: end.answered - start.answered,
    failed: end.failed - start.failed,
    atMs: end.atMs,
    windowMs: end.atMs - start.atMs,
    latencies,
  };
}

function resultOf(hosts: number, window: Window, idle: Window, ticksPerSecond: number, heartbeatMs: number): SizeResult {
  const msPerTick = 1000 / ticksPerSecond;
  const upCpuMs = window.upTicks * msPerTick;
  const storeCpuMs = window.storeTicks * msPerTick;
  // The idle baseline's CPU scaled to this window's length.
  const scale = window.windowMs / idle.windowMs;
  const upIdleMs = idle.upTicks * msPerTick * scale;
  const storeIdleMs = idle.storeTicks * msPerTick * scale;
  const beats = window.answered;
  const perBeat = (ms: number): number | null => (beats === 0 ? null : ms / beats);
  const { latencies } = window;
  return {
    hosts,
    windowMs: Math.round(window.windowMs),
    beats,
    failedBeats: window.failed,
    beatsPerSecond: (beats * 1000) / window.windowMs,
    beatsPerSecondExpected: (hosts * 1000) / heartbeatMs,
    upCpuMs,
    storeCpuMs,
    upCorePercent: (upCpuMs / window.windowMs) * 100,
    storeCorePercent: (storeCpuMs / window.windowMs) * 100,
    upMsPerBeat: perBeat(upCpuMs),
    storeMsPerBeat: perBeat(storeCpuMs),
    upNetMsPerBeat: perBeat(upCpuMs - upIdleMs),
    storeNetMsPerBeat: perBeat(storeCpuMs - storeIdleMs),
    latencyMedianMs: latencies.length === 0 ? null : median(latencies),
    latencyP99Ms: latencies.length === 0 ? null : percentile(latencies, 0.99),
    simulatorCorePercent: (window.benchCpuMicros / 1000 / window.windowMs) * 100,
  };
}

// ---------------------------------------------------------------------------------------------
// Output.

function fixed(value: number | null, digits: number): string {
  return value === null ? '-' : value.toFixed(digits);
}

function printResult(result: SizeResult, report: Report): void {
  report(`  beats answered ${result.beats} in ${(result.windowMs / 1000).toFixed(1)} s = ${result.beatsPerSecond.toFixed(1)}/s (at the interval: ${result.beatsPerSecondExpected.toFixed(1)}/s), failed ${result.failedBeats}; answer latency median ${fixed(result.latencyMedianMs, 1)} ms, p99 ${fixed(result.latencyP99Ms, 1)} ms`);
  report(`  cellar up: ${result.upCpuMs.toFixed(0)} ms CPU = ${result.upCorePercent.toFixed(1)} % of a core; ${fixed(result.upMsPerBeat, 3)} ms per beat (${fixed(result.upNetMsPerBeat, 3)} net of idle)`);
  report(`  store:     ${result.storeCpuMs.toFixed(0)} ms CPU = ${result.storeCorePercent.toFixed(1)} % of a core; ${fixed(result.storeMsPerBeat, 3)} ms per beat (${fixed(result.storeNetMsPerBeat, 3)} net of idle)`);
  report(`  simulator (this process): ${result.simulatorCorePercent.toFixed(1)} % of a core`);
}

function printSummary(results: readonly SizeResult[], report: Report): void {
  report('\n== summary (CPU ms per heartbeat answered; % of one core over the window)');
  report('hosts  beats/s (expected)  up ms/beat (net)   up %core  store ms/beat (net)  store %core  total ms/beat  latency p50/p99 ms');
  for (const result of results) {
    const total = result.upMsPerBeat === null || result.storeMsPerBeat === null ? null : result.upMsPerBeat + result.storeMsPerBeat;
    report(
      `${String(result.hosts).padStart(5)}  ${result.beatsPerSecond.toFixed(1).padStart(7)} (${result.beatsPerSecondExpected.toFixed(1).padStart(5)})    ${fixed(result.upMsPerBeat, 3)} (${fixed(result.upNetMsPerBeat, 3)})`.padEnd(48) +
        `${result.upCorePercent.toFixed(1).padStart(6)}    ${fixed(result.storeMsPerBeat, 3)} (${fixed(result.storeNetMsPerBeat, 3)})`.padEnd(31) +
        `${result.storeCorePercent.toFixed(1).padStart(6)}       ${fixed(total, 3).padStart(6)}        ${fixed(result.latencyMedianMs, 1)}/${fixed(result.latencyP99Ms, 1)}`,
    );
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`bench/host-heartbeats failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
