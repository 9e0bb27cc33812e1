import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer, request, type Server } from 'node:https';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { readFenced } from '../src/agent/guard.js';
import { loadIdentity } from '../src/agent/identity.js';
import type { DesiredInstance, HeartbeatRequest, HeartbeatResponse, LeaseAnswer } from '../src/dataplane/agent-protocol.js';
import type { InstanceSpec, ServerSetting } from '../src/dataplane/dataplane.js';
import { AgentClient, type ControlTls } from '../src/dataplane/remote/agent-client.js';
import { HeartbeatBook } from '../src/dataplane/remote/heartbeat-view.js';
import { InvariantError } from '../src/lib/assert.js';
import { systemClock } from '../src/lib/clock.js';
import { PermanentError, TransientError } from '../src/lib/failure.js';
import { newId } from '../src/lib/ids.js';
import { testPort } from './helpers/ports.js';
import { Binaries } from '../src/postgres/binaries.js';
import { ClusterUsers } from '../src/postgres/osuser.js';
import { instancePaths } from '../src/postgres/paths.js';
import { isAlive, serverPid, stopServer } from '../src/postgres/server.js';
import { cellarBin, eventually, makeTempDir } from './helpers/cellar.js';
import { type TestCa, type TestPair, issueCertificate, makeTestCa } from './helpers/certs.js';
import { seedDataDir } from './helpers/prepared.js';

/**
 * `cellar agent` as a real process with its own data directory, a fake control plane (HTTPS with
 * mutual TLS, answering heartbeats as the real one will) and the control plane's AgentClient.
 * The fake stands in for the control plane's agent listener, which another branch builds.
 */

const leaseMs = 4_000;
const heartbeatMs = 250;
const hostId = 'ho_agenttest';
const pgVersion = Math.max(...(await Binaries.discover({ pgBin: null })).versions());
const agentStartMsMax = 30_000;
const clusterId = newId('cluster');
const secrets = { superuserPassword: 'su-secret', replicationPassword: 'repl-secret', appPassword: 'app-secret' };

let root: string;
let dataDir: string;
let ca: TestCa;
let control: TestPair;
let hostPair: TestPair;
let forged: TestPair;
let agentPort: number;
let controlPlane: FakeControlPlane;
let agent: AgentProcess | null = null;
let client: AgentClient;
const specs: InstanceSpec[] = [];

/** The agent listener's heartbeat route, as docs/HOSTS.md describes it, and a switch to stop answering. */
class FakeControlPlane {
  readonly book = new HeartbeatBook(systemClock);
  readonly desired = new Map<string, DesiredInstance>();
  answering = true;
  beats = 0;
  private server: Server | null = null;

  async listen(pair: TestPair, port: number): Promise<void> {
    const server = createServer({ key: pair.key, cert: pair.certificate, ca: ca.certificate, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' }, (req, res) => this.handle(req, res));
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    this.server = server;
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    if (!this.answering) {
      req.socket.destroy();
      return;
    }
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const beat = JSON.parse(Buffer.concat(chunks).toString('utf8')) as HeartbeatRequest;
      this.book.record(beat.hostId, beat, systemClock.nowMs());
      this.beats += 1;
      const answer: HeartbeatResponse = { leaseMs, heartbeatMs, instances: [...this.desired.values()] };
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answer));
    });
  }

  async close(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise((resolve) => this.server?.close(resolve) ?? resolve(undefined));
  }
}

class AgentProcess {
  output = '';
  private constructor(readonly child: ChildProcess) {}

  static async start(): Promise<AgentProcess> {
    const child = spawn(process.execPath, [cellarBin, 'agent', '--data', dataDir], {
      env: { ...process.env, CELLAR_HOME: join(root, 'home'), CELLAR_HOST_LEASE_MS: String(leaseMs), CELLAR_HOST_HEARTBEAT_MS: String(heartbeatMs), CELLAR_LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const started = new AgentProcess(child);
    child.stdout?.on('data', (chunk: Buffer) => (started.output += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (started.output += chunk.toString()));
    await eventually(
      'the agent to serve',
      async () => {
        if (child.exitCode !== null) throw new Error(`cellar agent exited ${child.exitCode}:\n${started.output}`);
        return started.output.includes('agent of host') ? true : undefined;
      },
      agentStartMsMax,
      25,
    );
    return started;
  }

  async kill(signal: NodeJS.Signals): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill(signal);
    await exited;
  }
}

function controlTls(pair: TestPair): ControlTls {
  return { key: pair.key, certificate: pair.certificate, ca: ca.certificate };
}

function clientWith(pair: TestPair): AgentClient {
  return new AgentClient({ host: { address: '127.0.0.1', agentPort }, tls: controlTls(pair) });
}

async function newSpec(): Promise<InstanceSpec> {
  const spec: InstanceSpec = { instanceId: newId('instance'), clusterId, host: '127.0.0.1', port: await testPort(), peers: [], pgVersion, settings: { shared_buffers: '16MB', max_connections: '20' }, secrets };
  specs.push(spec);
  return spec;
}

/** A raw request to the agent with some certificate: what it answers outside the client's mapping. */
function agentRequest(pair: TestPair, method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const outgoing = request(
      { host: '127.0.0.1', port: agentPort, method, path, key: pair.key, cert: pair.certificate, ca: ca.certificate, agent: false, headers: payload === undefined ? {} : { 'content-type': 'application/json' } },
      (incoming) => {
        let text = '';
        incoming.on('data', (chunk: Buffer) => (text += chunk.toString()));
        incoming.on('end', () => resolve({ status: incoming.statusCode ?? 0, body: JSON.parse(text) as unknown }));
      },
    );
    outgoing.on('error', reject);
    outgoing.end(payload);
  });
}

async function guardPid(): Promise<number> {
  return (JSON.parse(await readFile(join(dataDir, 'agent', 'guard.pid'), 'utf8')) as { pid: number }).pid;
}

async function connectRefused(port: number): Promise<boolean> {
  const connection = new pg.Client({ host: '127.0.0.1', port, user: 'app', password: secrets.appPassword, database: 'app', connectionTimeoutMillis: 2_000 });
  connection.on('error', () => undefined);
  try {
    await connection.connect();
    await connection.end();
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ECONNREFUSED';
  }
}

/** What joining leaves in DIR/agent (docs/HOSTS.md, "Joining and trust"). */
async function writeIdentity(dir: string, controlUrl: string): Promise<void> {
  const agentDir = join(dir, 'agent');
  await mkdir(agentDir, { mode: 0o700 });
  await writeFile(join(agentDir, 'host.json'), JSON.stringify({ hostId, name: 'host-a', address: '127.0.0.1', agentPort, controlUrl }));
  await writeFile(join(agentDir, 'key.pem'), hostPair.key, { mode: 0o600 });
  await writeFile(join(agentDir, 'cert.pem'), hostPair.certificate);
  await writeFile(join(agentDir, 'ca.pem'), ca.certificate);
}

before(async () => {
  root = await makeTempDir('cellar-agent-test-');
  dataDir = join(root, 'data');
  // The run's prepared template: createPrimary copies it instead of running initdb.
  await seedDataDir(dataDir, { store: false, templates: true });
  ca = await makeTestCa();
  control = await issueCertificate(ca, 'cellar-control', ['127.0.0.1']);
  hostPair = await issueCertificate(ca, 'host-a', ['127.0.0.1']);
  forged = await issueCertificate(await makeTestCa('Forged CA'), 'cellar-control', ['127.0.0.1']);
  agentPort = await testPort();
  const controlPort = await testPort();
  await writeIdentity(dataDir, `https://127.0.0.1:${controlPort}`);
  controlPlane = new FakeControlPlane();
  await controlPlane.listen(control, controlPort);
  agent = await AgentProcess.start();
  client = clientWith(control);
});

after(async () => {
  client?.close();
  await agent?.kill('SIGKILL');
  const guard = await guardPid().catch(() => undefined);
  if (guard !== undefined && isAlive(guard)) process.kill(guard, 'SIGTERM');
  for (const spec of specs) await stopServer(instancePaths(dataDir, spec.instanceId).pgdata, 'immediate').catch(() => undefined);
  await controlPlane?.close();
  await rm(root, { recursive: true, force: true });
  await new ClusterUsers(dataDir).removeAllOwn();
});

test('an identity is refused, naming the file, when a file is missing, the key is open to others, the directory writable by others, or the CA is another', async () => {
  const dir = join(root, 'identity-check');
  await mkdir(dir, { mode: 0o711 });
  await writeIdentity(dir, 'https://127.0.0.1:8433');
  assert.equal((await loadIdentity(dir)).hostId, hostId);
  const agentDir = join(dir, 'agent');
  await chmod(join(agentDir, 'key.pem'), 0o644);
  await assert.rejects(loadIdentity(dir), /key\.pem is open to group or others/);
  await chmod(join(agentDir, 'key.pem'), 0o600);
  await chmod(agentDir, 0o777);
  await assert.rejects(loadIdentity(dir), /agent directory .* is writable by group or others/);
  await chmod(agentDir, 0o700);
  await writeFile(join(agentDir, 'ca.pem'), (await makeTestCa('Another CA')).certificate);
  await assert.rejects(loadIdentity(dir), /cert\.pem is not signed by the cell CA/);
  await rm(join(agentDir, 'cert.pem'));
  await assert.rejects(loadIdentity(dir), /cert\.pem is missing/);
});

test('a primary is created, started, configured and its status and settings taken through the AgentClient, and the next heartbeat lists it alive', async () => {
  const primary = await newSpec();
  controlPlane.desired.set(primary.instanceId, { instanceId: primary.instanceId, role: 'primary', fenceOnLeaseLoss: true, fenced: false });
  await client.createPrimary(primary);
  await client.start(primary);
  const status = await client.status(primary);
  assert.equal(status.running, true);
  assert.equal(status.accepting, true);
  assert.equal(status.inRecovery, false);
  assert.equal(status.pid, await serverPid(instancePaths(dataDir, primary.instanceId).pgdata));
  const workMemOf = (rows: readonly ServerSetting[]) => rows.find((row) => row.name === 'work_mem');
  const configured = await client.configure({ ...primary, settings: { ...primary.settings, work_mem: '5MB' } });
  assert.deepEqual([workMemOf(configured)?.setting, workMemOf(configured)?.sourceFile, workMemOf(configured)?.foreign], [String(5 * 1024), 'cellar.conf', false]);
  assert.deepEqual(workMemOf(await client.settings(primary)), workMemOf(configured));
  await eventually('a heartbeat listing the primary alive', async () => (controlPlane.book.lastAliveOn(hostId, primary.instanceId) === true ? true : undefined), 10_000, 20);
  const specFile = join(dataDir, 'agent', 'specs', `${primary.instanceId}.json`);
  assert.equal(JSON.parse(await readFile(specFile, 'utf8')).wanted, 'running');
});

test('operations are refused to a certificate of another CA and to a host certificate; bad args and unknown operations are 400', async () => {
  const [primary] = specs;
  assert.ok(primary !== undefined);
  const forgedClient = clientWith(forged);
  await assert.rejects(forgedClient.status(primary), (error: unknown) => error instanceof TransientError && /unreachable for status/.test(error.message));
  forgedClient.close();
  const hostClient = clientWith(hostPair);
  await assert.rejects(hostClient.status(primary), (error: unknown) => error instanceof PermanentError && /CN=cellar-control.*CN=host-a/.test(error.message));
  hostClient.close();
  // A peer host may ask about the lease; the control plane may not be asked for bad args.
  const lease = await agentRequest(hostPair, 'GET', '/v1/lease');
  assert.equal(lease.status, 200);
  assert.deepEqual({ ...(lease.body as LeaseAnswer), leftMs: 0, silentMs: 0 }, { hostId, leased: true, leftMs: 0, silentMs: 0 });
  const bad = await agentRequest(control, 'POST', '/v1/ops/start', { args: [{ instanceId: '../etc' }] });
  assert.equal(bad.status, 400);
  assert.equal((bad.body as { error: { code: string; failure: string } }).error.code, 'CELLAR_E_INVALID');
  assert.equal((bad.body as { error: { failure: string } }).error.failure, 'invariant');
  const unknown = await agentRequest(control, 'POST', '/v1/ops/format', { args: [] });
  assert.equal(unknown.status, 400);
  await assert.rejects(client.stop('in_../x' as never), InvariantError);
});

test('a replica whose postmaster is SIGKILLed is restarted in place by the agent; a fenced one is not', async (t) => {
  const primary = await newSpec();
  const replica = await newSpec();
  controlPlane.desired.set(primary.instanceId, { instanceId: primary.instanceId, role: 'primary', fenceOnLeaseLoss: false, fenced: false });
  controlPlane.desired.set(replica.instanceId, { instanceId: replica.instanceId, role: 'replica', fenceOnLeaseLoss: false, fenced: false });
  await client.createPrimary(primary);
  await client.start(primary);
  await client.createReplica(replica, { host: '127.0.0.1', port: primary.port, slotName: replica.instanceId });
  await client.start(replica);
  const before = await client.status(replica);
  assert.equal(before.inRecovery, true);
  assert.ok(before.pid !== undefined);
  process.kill(before.pid, 'SIGKILL');
  const killedAtMs = performance.now();
  const restarted = await eventually(
    'the replica restarted by the agent',
    async () => {
      const status = await client.status(replica);
      return status.accepting && status.pid !== before.pid ? status : undefined;
    },
    30_000,
    50,
  );
  assert.equal(restarted.inRecovery, true);
  t.diagnostic(`replica SIGKILLed to accepting again: ${Math.round(performance.now() - killedAtMs)} ms`);

  // Fenced (an old primary between its failover and its rejoin): the agent never starts it itself.
  controlPlane.desired.set(replica.instanceId, { instanceId: replica.instanceId, role: 'replica', fenceOnLeaseLoss: false, fenced: true });
  const fencedAt = controlPlane.beats;
  await eventually('the agent to hear it is fenced', async () => (controlPlane.beats > fencedAt + 1 ? true : undefined), 10_000, 20);
  assert.ok(restarted.pid !== undefined);
  process.kill(restarted.pid, 'SIGKILL');
  const killedAgain = controlPlane.beats;
  // Supervision looks at every beat: several beats with the server down and nothing started.
  await eventually('several heartbeats after the kill', async () => (controlPlane.beats > killedAgain + 6 ? true : undefined), 15_000, 20);
  assert.equal((await client.status(replica)).running, false, 'a fenced instance stays down');
  controlPlane.desired.set(replica.instanceId, { instanceId: replica.instanceId, role: 'replica', fenceOnLeaseLoss: false, fenced: false });
  await client.start(replica);
});

test('an agent SIGKILLed and started again within the lease adopts its instances: same postmasters, same guard', async () => {
  const pidsBefore = await Promise.all(specs.map((spec) => serverPid(instancePaths(dataDir, spec.instanceId).pgdata)));
  const guardBefore = await guardPid();
  await agent?.kill('SIGKILL');
  agent = await AgentProcess.start();
  const beatsAtStart = controlPlane.beats;
  await eventually('a heartbeat from the new agent', async () => (controlPlane.beats > beatsAtStart ? true : undefined), 10_000, 20);
  const pidsAfter = await Promise.all(specs.map((spec) => serverPid(instancePaths(dataDir, spec.instanceId).pgdata)));
  assert.deepEqual(pidsAfter, pidsBefore);
  assert.ok(pidsAfter.every((pid) => pid !== undefined));
  assert.equal(await guardPid(), guardBefore);
  assert.ok(isAlive(guardBefore));
  assert.deepEqual(await readFenced(dataDir), []);
});

test('when the control plane stops answering, the guard fences the primary marked fenceOnLeaseLoss and leaves the others', async (t) => {
  const [fencedPrimary, keptPrimary, replica] = specs;
  assert.ok(fencedPrimary !== undefined && keptPrimary !== undefined && replica !== undefined);
  const fencedPid = await serverPid(instancePaths(dataDir, fencedPrimary.instanceId).pgdata);
  const keptPid = await serverPid(instancePaths(dataDir, keptPrimary.instanceId).pgdata);
  assert.ok(fencedPid !== undefined && keptPid !== undefined);
  controlPlane.answering = false;
  await eventually('the primary fenced', async () => (isAlive(fencedPid) ? undefined : true), leaseMs + 10_000, 20);
  assert.equal(await connectRefused(fencedPrimary.port), true);
  assert.equal(await serverPid(instancePaths(dataDir, keptPrimary.instanceId).pgdata), keptPid);
  // The guard records after it has seen the postmaster gone: a moment after the test may.
  const records = await eventually('the fence recorded', async () => {
    const found = await readFenced(dataDir);
    return found.length > 0 ? found : undefined;
  }, 5_000, 20);
  assert.equal(records.length, 1);
  const [record] = records;
  assert.equal(record?.instanceId, fencedPrimary.instanceId);
  assert.equal(record?.outcome, 'fenced');
  t.diagnostic(`lease expiry to postmaster gone: ${record?.expiryToGoneMs} ms`);
  // Without a lease nothing is started, and the host says so to a peer.
  await assert.rejects(client.start(fencedPrimary), (error: unknown) => error instanceof TransientError && /holds no lease/.test(error.message));
  assert.equal(((await agentRequest(hostPair, 'GET', '/v1/lease')).body as LeaseAnswer).leased, false);
  controlPlane.answering = true;
  await eventually('the lease renewed', async () => (((await agentRequest(hostPair, 'GET', '/v1/lease')).body as LeaseAnswer).leased ? true : undefined), 10_000, 20);
});
