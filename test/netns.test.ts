import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { chown, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { Binaries } from '../src/postgres/binaries.js';
import { resolveRunAs } from '../src/postgres/osuser.js';
import { templatePaths } from '../src/postgres/paths.js';
import { makeTempDir } from './helpers/cellar.js';
import { createTestNetwork, listLinks, listNamespaces, removeStaleTestNetworks, type TestHost, type TestNetwork } from './helpers/netns.js';
import { preparedDataDir } from './helpers/prepared.js';

/** The test harness of many hosts on one machine: network namespaces on a private bridge. */

/** A connection to a cut host gets no answer at all; this bounds each attempt. */
const connectMsMax = 500;
const readyMsMax = 15_000;
const pollMs = 50;
const copyMsMax = 60_000;
const stopMsMax = 15_000;

/** A TCP server on one address that greets each connection with its name and prints its pid and port. */
const serverScript = `
const [address, name] = process.argv.slice(1);
const server = require('node:net').createServer((socket) => socket.end(name + '\\n'));
server.listen(0, address, () => console.log(JSON.stringify({ pid: process.pid, port: server.address().port })));
`;
/** Prints the greeting of the server at address:port, or exits 1 when there is none within the bound. */
const clientScript = `
const [address, port, timeoutMs] = process.argv.slice(1);
const socket = require('node:net').connect(Number(port), address);
let text = '';
socket.setTimeout(Number(timeoutMs), () => process.exit(1));
socket.on('data', (chunk) => (text += chunk));
socket.on('end', () => { process.stdout.write(text); process.exit(0); });
socket.on('error', () => process.exit(1));
`;

interface Server {
  readonly child: ChildProcess;
  readonly address: string;
  readonly port: number;
  readonly pid: number;
}

let network: TestNetwork;
let hosts: readonly [TestHost, TestHost, TestHost];
let tempDir: string;
const servers = new Map<string, Server>();
let rootServer: Server;

before(async () => {
  network = await createTestNetwork({ tag: 'nt', hosts: 3 });
  hosts = network.hosts as [TestHost, TestHost, TestHost];
  tempDir = await makeTempDir('cellar-netns-');
  for (const host of hosts) servers.set(host.name, await startServer(network.spawn(host, process.execPath, ['-e', serverScript, host.address, host.name]), host.address));
  rootServer = await startServer(spawn(process.execPath, ['-e', serverScript, network.gateway, 'root'], { stdio: ['ignore', 'pipe', 'pipe'] }), network.gateway);
});

after(async () => {
  rootServer?.child.kill('SIGKILL');
  await network?.remove();
  if (tempDir !== undefined) await rm(tempDir, { recursive: true, force: true });
});

function serverOf(host: TestHost): Server {
  const server = servers.get(host.name);
  assert.ok(server, `a server runs on ${host.name}`);
  return server;
}

async function startServer(child: ChildProcess, address: string): Promise<Server> {
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const deadline = Date.now() + readyMsMax;
  while (Date.now() < deadline) {
    const line = output.split('\n').find((candidate) => candidate.startsWith('{'));
    if (line !== undefined) {
      const { pid, port } = JSON.parse(line) as { pid: number; port: number };
      return { child, address, port, pid };
    }
    if (child.exitCode !== null) throw new Error(`server on ${address} exited ${child.exitCode}: ${output}`);
    await sleep(pollMs);
  }
  throw new Error(`server on ${address} did not listen within ${readyMsMax} ms: ${output}`);
}

/** The greeting of the server, from the root namespace; null when it cannot be reached within the bound. */
function greetingFromRoot(server: { address: string; port: number }): Promise<string | null> {
  return new Promise((resolve) => {
    const socket = connect(server.port, server.address);
    let text = '';
    socket.setTimeout(connectMsMax, () => {
      socket.destroy();
      resolve(null);
    });
    socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
    socket.on('end', () => resolve(text.trim()));
    socket.on('error', () => resolve(null));
  });
}

/** The greeting of the server, from inside a host's namespace; null when it cannot be reached within the bound. */
async function greetingFrom(host: TestHost, server: { address: string; port: number }): Promise<string | null> {
  const result = await network.run(host, process.execPath, ['-e', clientScript, server.address, String(server.port), String(connectMsMax)]);
  return result.code === 0 ? result.stdout.trim() : null;
}

async function waitFor(what: string, condition: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + readyMsMax;
  while (Date.now() < deadline) {
    if (await condition()) return;
    await sleep(pollMs);
  }
  throw new Error(`${what} did not happen within ${readyMsMax} ms`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

test('every host has its own address on one /24, the gateway is .1, and each namespace has only lo and eth0', async () => {
  const prefix = network.gateway.replace(/\.1$/, '');
  assert.equal(network.subnet, `${prefix}.0/24`);
  assert.deepEqual(hosts.map((host) => host.address), [`${prefix}.11`, `${prefix}.12`, `${prefix}.13`]);
  for (const host of hosts) assert.deepEqual((await listLinks(host.namespace)).sort(), ['eth0', 'lo']);
  const routes = await network.run(hosts[0], 'ip', ['-j', 'route', 'show']);
  assert.deepEqual((JSON.parse(routes.stdout) as { dst: string }[]).map((route) => route.dst), [network.subnet], 'no default route: nothing leaves the test network');
});

test('the pid spawn() returns is the program itself, so a signal to it reaches the program', async () => {
  for (const host of hosts) {
    const server = serverOf(host);
    assert.equal(server.pid, server.child.pid, `the server on ${host.name} reports the spawned pid as its own`);
  }
  const extra = await startServer(network.spawn(hosts[0], process.execPath, ['-e', serverScript, hosts[0].address, 'extra']), hosts[0].address);
  const exited = new Promise<NodeJS.Signals | null>((resolve) => extra.child.once('exit', (_code, signal) => resolve(signal)));
  assert.ok(extra.child.kill('SIGTERM'));
  assert.equal(await exited, 'SIGTERM', 'the program itself died of the signal');
});

test('each host reaches every other host and the root namespace over TCP, and the root namespace reaches each host', async () => {
  for (const host of hosts) assert.equal(await greetingFromRoot(serverOf(host)), host.name, `root → ${host.name}`);
  for (const from of hosts) {
    assert.equal(await greetingFrom(from, rootServer), 'root', `${from.name} → root`);
    for (const to of hosts) assert.equal(await greetingFrom(from, serverOf(to)), to.name, `${from.name} → ${to.name}`);
  }
});

test('a cut host is unreachable from the root namespace and the other hosts and reaches nobody, yet works inside; heal restores it', async () => {
  const [cut, other] = hosts;
  await network.cut(cut);
  try {
    assert.equal(await greetingFromRoot(serverOf(cut)), null, 'root cannot reach the cut host');
    assert.equal(await greetingFrom(other, serverOf(cut)), null, 'another host cannot reach the cut host');
    assert.equal(await greetingFrom(cut, serverOf(other)), null, 'the cut host cannot reach another host');
    assert.equal(await greetingFrom(cut, rootServer), null, 'the cut host cannot reach the root namespace');
    assert.equal(await greetingFrom(cut, serverOf(cut)), cut.name, 'inside the cut host its own server still answers on the host address');
    assert.equal(await greetingFrom(other, serverOf(hosts[2])), hosts[2].name, 'the other hosts still reach each other');
  } finally {
    await network.heal(cut);
  }
  await waitFor('root reaching the healed host', async () => (await greetingFromRoot(serverOf(cut))) === cut.name);
  await waitFor('the healed host reaching another host', async () => (await greetingFrom(cut, serverOf(other))) === other.name);
});

test('a Postgres server run as the postgres user inside a host, listening on the host address, is reached from the root namespace and from another host', async () => {
  const host = hosts[1];
  const binaries = await Binaries.discover({ pgBin: null });
  const version = Math.max(...binaries.versions());
  const binDir = binaries.binFor(version);
  const owner = await resolveRunAs();
  const pgdata = join(tempDir, 'pgdata');
  const runDir = join(tempDir, 'run');
  // cp -a keeps the template's owner (postgres) and its 0700 mode, which the server insists on.
  await execBounded('cp', ['-a', templatePaths(await preparedDataDir(), version).pgdata, pgdata]);
  await mkdir(runDir, { mode: 0o700 });
  await chown(runDir, owner.uid, owner.gid);
  // Root's file outside the data directory: nothing is written into the postgres user's tree.
  const hbaFile = join(tempDir, 'pg_hba.conf');
  await writeFile(hbaFile, `host all all ${network.subnet} trust\n`, { mode: 0o644 });
  const server = network.spawn(host, join(binDir, 'postgres'), ['-D', pgdata, '-c', `listen_addresses=${host.address}`, '-c', 'port=5432', '-c', `unix_socket_directories=${runDir}`, '-c', `hba_file=${hbaFile}`], { user: owner.name });
  let log = '';
  server.stderr?.on('data', (chunk: Buffer) => (log += chunk.toString()));
  server.stdout?.on('data', (chunk: Buffer) => (log += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => server.once('exit', (code) => resolve(code)));
  try {
    const client = await connectWhenReady(host.address, () => log);
    try {
      const row = (await client.query<{ address: string; user: string }>('select host(inet_server_addr()) as address, current_user as "user"')).rows[0];
      assert.deepEqual(row, { address: host.address, user: 'postgres' });
    } finally {
      await client.end();
    }
    const psql = await network.run(hosts[2], join(binDir, 'psql'), ['-X', '-At', '-h', host.address, '-U', 'postgres', '-d', 'postgres', '-c', 'select 1 + 1']);
    assert.equal(psql.stdout.trim(), '2', `psql from ${hosts[2].name}: ${psql.stderr}`);
    const postmasterPid = Number((await readFile(join(pgdata, 'postmaster.pid'), 'utf8')).split('\n')[0]);
    assert.equal(postmasterPid, server.pid, 'the spawned pid is the postmaster, not a wrapper');
  } finally {
    server.kill('SIGINT');
    let timer: NodeJS.Timeout | undefined;
    const stopped = await Promise.race([exited, new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), stopMsMax)))]);
    clearTimeout(timer);
    if (stopped === 'timeout') server.kill('SIGKILL');
    assert.equal(stopped, 0, `SIGINT to the spawned pid shut the postmaster down cleanly: ${log}`);
  }
});

async function connectWhenReady(address: string, log: () => string): Promise<pg.Client> {
  const deadline = Date.now() + readyMsMax;
  for (;;) {
    const client = new pg.Client({ host: address, port: 5432, user: 'postgres', database: 'postgres', connectionTimeoutMillis: connectMsMax });
    try {
      await client.connect();
      return client;
    } catch (error) {
      await client.end().catch(() => undefined);
      if (Date.now() > deadline) throw new Error(`Postgres on ${address} not reachable within ${readyMsMax} ms: ${String(error)}\n${log()}`);
      await sleep(pollMs);
    }
  }
}

function execBounded(command: string, args: readonly string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { timeout: copyMsMax }, (error, _stdout, stderr) => (error ? reject(new Error(`${command} ${args.join(' ')}: ${stderr}`)) : resolve()));
  });
}

test('removeStaleTestNetworks deletes the namespaces of a run whose process is gone, and nothing of a live one', async () => {
  const gone = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
  const gonePid = await new Promise<number>((resolve) => gone.once('exit', () => resolve(gone.pid as number)));
  const staleNamespace = `cellar-nt${gonePid.toString(36).padStart(5, '0')}zz-sw`;
  await execBounded('ip', ['netns', 'add', staleNamespace]);
  try {
    // Another test file's first network sweeps too, and may have come first: what counts is that it is gone.
    await removeStaleTestNetworks();
    const remaining = (await listNamespaces()).map((namespace) => namespace.name);
    assert.ok(!remaining.includes(staleNamespace));
    for (const host of hosts) assert.ok(remaining.includes(host.namespace), `this live run's ${host.namespace} is kept`);
  } finally {
    await execBounded('ip', ['netns', 'delete', staleNamespace]).catch(() => undefined);
  }
});

test('remove() deletes every namespace and link named with the tag, kills what ran inside, and may be called again', async () => {
  const inside = [...servers.values()].map((server) => server.child);
  const exits = inside.map((child) => (child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((resolve) => child.once('exit', resolve))));
  await network.remove();
  await network.remove();
  await Promise.all(exits);
  assert.deepEqual((await listNamespaces()).map((namespace) => namespace.name).filter((name) => name.includes(network.tag)), []);
  assert.deepEqual((await listLinks()).filter((name) => name.includes(network.tag)), []);
});
