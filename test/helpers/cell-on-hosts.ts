import type { ChildProcess } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ClusterUsers } from '../../src/postgres/osuser.js';
import { TestCellar, cellarBin, eventually } from './cellar.js';
import { type TestHost, type TestNetwork, createTestNetwork } from './netns.js';
import { testPorts } from './ports.js';
import { seedDataDir } from './prepared.js';

/**
 * A cell whose database hosts are network namespaces (docs/HOSTS.md): the control plane, its
 * store and the proxy in the root namespace, running no databases itself; each host an agent in
 * its own namespace with its own data directory, joined with a token from `cellar hosts add`.
 * The backup store is one directory all of them use (what a shared mount would be on real hosts).
 */

export interface HostAgent {
  readonly name: string;
  readonly host: TestHost;
  readonly dataDir: string;
  process: ChildProcess;
  output: string;
}

export interface CellOnHosts {
  readonly cellar: TestCellar;
  readonly network: TestNetwork;
  readonly agents: readonly HostAgent[];
  readonly controlUrl: string;
  /** The lease and heartbeat the cell runs with, for tests and benchmarks to state. */
  readonly settings: Readonly<Record<string, string>>;
  /** SIGKILLs a host's agent (its servers and lease guard keep running) and waits for it to exit. */
  killAgent(agent: HostAgent): Promise<void>;
  /** Starts a host's agent again on its joined data directory. */
  startAgent(agent: HostAgent): Promise<void>;
  /** Stops everything this made: agents, the control plane, every server, the network, OS users, files. */
  destroy(): Promise<void>;
}

export interface CellOnHostsOptions {
  /** 1–3 lower-case letters for the network's names. */
  readonly tag: string;
  readonly hosts: number;
  /** Zone of each host by index; default `z<i+1>`. */
  readonly zones?: readonly string[];
  readonly env?: Readonly<Record<string, string>>;
}

const agentExitWaitMs = 10_000;
const joinWaitMs = 60_000;

export async function startCellOnHosts(options: CellOnHostsOptions): Promise<CellOnHosts> {
  const network = await createTestNetwork({ tag: options.tag, hosts: options.hosts });
  const agents: HostAgent[] = [];
  let cellar: TestCellar | undefined;
  try {
    const [listenPort] = await testPorts(1);
    const settings = {
      CELLAR_HOST_LEASE_MS: '1500',
      CELLAR_HOST_HEARTBEAT_MS: '250',
      CELLAR_HOST_CLOCK_MARGIN_MS: '250',
      ...options.env,
    };
    cellar = await TestCellar.create({
      // Agents reach the control plane on the network's gateway; the proxy and the control plane reach instances from it.
      CELLAR_AGENT_LISTEN_HOST: network.gateway,
      CELLAR_AGENT_LISTEN_PORT: String(listenPort),
      CELLAR_CONTROL_ADDRESSES: `127.0.0.1,${network.gateway}`,
      CELLAR_LOCAL_HOST: 'false',
      ...settings,
    });
    const backupDir = join(cellar.root, 'backups');
    cellar.env['CELLAR_BACKUP_DIR'] = backupDir;
    await cellar.start();
    const controlUrl = `https://${network.gateway}:${listenPort}`;
    for (const [index, host] of network.hosts.entries()) {
      const name = `h${index + 1}`;
      const zone = options.zones?.[index] ?? `z${index + 1}`;
      const added = await cellar.cliJson<{ joinToken: string }>(['hosts', 'add', name, '--address', host.address, '--zone', zone]);
      const dataDir = join(cellar.root, 'hosts', name);
      await mkdir(join(cellar.root, 'hosts'), { recursive: true, mode: 0o711 });
      // The run's prepared template, so no agent runs initdb and builds one.
      await seedDataDir(dataDir, { store: false, templates: true });
      const agent: HostAgent = { name, host, dataDir, process: undefined as unknown as ChildProcess, output: '' };
      agents.push(agent);
      launch(network, cellar, agent, backupDir, ['--join', added.joinToken, '--control', controlUrl]);
    }
    let lastSeen = '';
    await eventually(
      'every host active and heard from',
      async () => {
        const { hosts } = await (cellar as TestCellar).read<{ hosts: { name: string; state: string; leaseAgeMs: number | null }[] }>('/v1/hosts');
        lastSeen = JSON.stringify(hosts);
        const ready = hosts.filter((host) => host.state === 'active' && host.leaseAgeMs !== null && host.leaseAgeMs < 1_000);
        return ready.length === agents.length ? true : undefined;
      },
      joinWaitMs,
    ).catch((error: unknown) => {
      throw new Error(`${(error as Error).message}; hosts: ${lastSeen}\ncontrol plane: ${(cellar as TestCellar).logs().slice(-3000)}\n${agents.map((agent) => `--- ${agent.name}:\n${agent.output}`).join('\n')}`);
    });
    const made = cellar;
    return {
      cellar: made,
      network,
      agents,
      controlUrl,
      settings,
      killAgent: (agent) => stopAgent(agent, 'SIGKILL'),
      async startAgent(agent) {
        launch(network, made, agent, backupDir, []);
        await eventually(`agent ${agent.name} serving again`, async () => (agent.output.includes('agent of host') ? true : undefined), joinWaitMs);
      },
      destroy: () => destroyAll(network, made, agents),
    };
  } catch (error) {
    if (cellar !== undefined) await destroyAll(network, cellar, agents).catch(() => undefined);
    else await network.remove();
    throw error;
  }
}

function launch(network: TestNetwork, cellar: TestCellar, agent: HostAgent, backupDir: string, joinArgs: readonly string[]): void {
  const child = network.spawn(agent.host, process.execPath, [cellarBin, 'agent', '--data', agent.dataDir, '--backup-dir', backupDir, ...joinArgs], {
    env: { ...cellar.env, CELLAR_LOG_LEVEL: "info" },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  agent.process = child;
  agent.output = '';
  child.stdout?.on('data', (chunk: Buffer) => (agent.output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (agent.output += chunk.toString()));
}

async function stopAgent(agent: HostAgent, signal: NodeJS.Signals): Promise<void> {
  const child = agent.process;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  const timeout = new Promise<void>((resolve) => setTimeout(resolve, agentExitWaitMs).unref());
  await Promise.race([exited, timeout]);
  if (child.exitCode === null && child.signalCode === null) {
    child.kill('SIGKILL');
    await exited;
  }
}

async function destroyAll(network: TestNetwork, cellar: TestCellar, agents: readonly HostAgent[]): Promise<void> {
  for (const agent of agents) await stopAgent(agent, 'SIGTERM');
  // The servers and guards left in the hosts go with their namespaces.
  await network.remove();
  for (const agent of agents) await new ClusterUsers(agent.dataDir).removeAllOwn();
  await cellar.destroy();
}

/** The agent's guard's pid (DIR/agent/guard.pid), to check it outlives the agent. */
export async function guardPid(agent: HostAgent): Promise<number> {
  return Number((await readFile(join(agent.dataDir, 'agent', 'guard.pid'), 'utf8')).trim());
}
