import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import type { ClusterView } from '../src/api/view.js';
import { loadConfig } from '../src/config.js';
import { embeddedStorePaths, ensureEmbeddedStore, stopEmbeddedStore } from '../src/store/embedded.js';
import { TestCellar, cellarBin, eventually, makeTempDir, queryUri, postmasters } from './helpers/cellar.js';

/** The cell store dies under a running Cellar: the API says so (503), the proxy serves on, and work resumes once it is back. */

const outageWaitMsMax = 30_000;
const convergeWaitMsMax = 120_000;
const outagePollMs = 10;

interface ErrorBody {
  error: { code: string; message: string };
}

/** One request, unauthenticated or with a token; the body as text so a non-JSON answer is seen too. */
async function get(url: string, token?: string): Promise<{ status: number; retryAfter: string | null; text: string }> {
  const response = await fetch(url, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } });
  return { status: response.status, retryAfter: response.headers.get('retry-after'), text: await response.text() };
}

/** A client held open through the proxy across the outage; its errors surface in its queries. */
async function holdConnection(uri: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: uri, connectionTimeoutMillis: 15_000 });
  client.on('error', () => undefined);
  await client.connect();
  await client.query('create table if not exists ticks (n int)');
  return client;
}

/** `cellar clusters create NAME --wait --json` in the background, with what it has printed so far. */
function createInBackground(cellar: TestCellar, name: string): { stderr: () => string; result: Promise<{ code: number | null; stdout: string; stderr: string }> } {
  const child = spawn(process.execPath, [cellarBin, 'clusters', 'create', name, '--wait', '--json'], { env: cellar.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const result = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => child.once('exit', (code) => resolve({ code, stdout, stderr })));
  return { stderr: () => stderr, result };
}

function countLines(logs: string, message: string): number {
  return logs.split('\n').filter((line) => line.includes(message)).length;
}

describe('embedded store SIGKILLed mid-create', () => {
  let cellar: TestCellar;

  before(async () => {
    cellar = await TestCellar.create({ CELLAR_LOG_LEVEL: 'info' }, { store: 'embedded' });
    await cellar.start();
  });

  after(async () => {
    await cellar.destroy();
  });

  test('`cellar up` restarts the store; the API answers 503 CELLAR_E_STORE_UNAVAILABLE meanwhile and /healthz is not ready; the create finishes with one primary per cluster; the proxy serves throughout; nothing leaks', async (t) => {
    const steady = await cellar.cliJson<ClusterView>(['clusters', 'create', 'steady', '--replicas', '0', '--wait']);
    const held = await holdConnection(steady.uri as string);
    t.after(() => held.end().catch(() => undefined));
    const token = await cellar.token();

    const create = createInBackground(cellar, 'midway');
    await eventually('the create request to have been answered', async () => (create.stderr().includes('creating midway (') ? true : undefined), outageWaitMsMax, outagePollMs);
    const storePid = Number((await readFile(join(embeddedStorePaths(cellar.dataDir).pgdata, 'postmaster.pid'), 'utf8')).split('\n')[0]);
    process.kill(storePid, 'SIGKILL');
    const killedAtMs = performance.now();

    // The proxy works from its cached routes: an open connection and a new one, while the store is gone.
    await held.query('insert into ticks values (1)');
    assert.deepEqual(await queryUri<{ one: number }>(steady.uri as string, 'select 1 as one'), [{ one: 1 }]);

    const unavailable = await eventually('a 503 from the API', async () => {
      const answer = await get(`${cellar.apiUrl}/v1/clusters`, token);
      return answer.status === 503 ? answer : undefined;
    }, outageWaitMsMax, outagePollMs);
    assert.equal(unavailable.retryAfter, '2');
    const body = JSON.parse(unavailable.text) as ErrorBody;
    assert.equal(body.error.code, 'CELLAR_E_STORE_UNAVAILABLE');
    assert.match(body.error.message, /restarting/);

    const notReady = await eventually('/healthz to say not ready', async () => {
      const answer = await get(`${cellar.apiUrl}/healthz`);
      return answer.status === 503 ? (JSON.parse(answer.text) as { ok: boolean; reason: string }) : undefined;
    }, outageWaitMsMax, outagePollMs);
    assert.equal(notReady.ok, false);
    assert.match(notReady.reason, /^the cell store is unreachable: /);

    await eventually('the API to answer 200 again', async () => ((await get(`${cellar.apiUrl}/v1/clusters`, token)).status === 200 ? true : undefined), outageWaitMsMax, outagePollMs);
    const recoveredSeconds = (performance.now() - killedAtMs) / 1000;
    const restarted = /"attempts":(\d+),"downMs":(\d+),"msg":"the embedded cell store is up again"/.exec(cellar.logs());
    const breakdown = restarted === null ? '' : ` (the supervisor saw it down for ${restarted[2]} ms, ${restarted[1]} start attempt(s))`;
    t.diagnostic(`seconds from store SIGKILL to API 200: ${recoveredSeconds.toFixed(2)}${breakdown}`);
    assert.deepEqual(JSON.parse((await get(`${cellar.apiUrl}/healthz`)).text), { ok: true });
    assert.notEqual(Number((await readFile(join(embeddedStorePaths(cellar.dataDir).pgdata, 'postmaster.pid'), 'utf8')).split('\n')[0]), storePid, 'a new postmaster');

    const created = await Promise.race([create.result, new Promise<never>((_, reject) => setTimeout(() => reject(new Error('the create did not finish')), convergeWaitMsMax).unref())]);
    assert.equal(created.code, 0, created.stderr);
    assert.match(created.stderr, /the cell store is unavailable \(Cellar is restarting it\); try again in 2 s; still waiting/, 'the waiting CLI said what happened, and waited on');
    const midway = JSON.parse(created.stdout) as ClusterView;
    assert.equal(midway.state, 'running');
    await held.query('insert into ticks values (2)');
    assert.deepEqual((await held.query<{ n: number }>('select n from ticks order by n')).rows, [{ n: 1 }, { n: 2 }], 'the held connection worked through the outage');

    const primaries = await cellar.storeQuery<{ name: string; primaries: number }>(
      `select c.name, count(*) filter (where i.role = 'primary')::int as primaries
         from clusters c join instances i on i.cluster_id = c.id and i.deleted_at is null group by c.name order by c.name`,
    );
    assert.deepEqual(primaries, [{ name: 'midway', primaries: 1 }, { name: 'steady', primaries: 1 }], 'one primary per cluster');
    const instances = [...steady.instances, ...midway.instances].map((instance) => instance.id).sort();
    assert.equal(midway.instances.length, 2, 'midway has its primary and its replica');
    const live = await cellar.storeQuery<{ id: string }>('select id from instances where deleted_at is null order by id');
    assert.deepEqual(live.map((row) => row.id), instances, 'no extra instance rows');
    assert.deepEqual((await readdir(join(cellar.dataDir, 'instances'))).sort(), instances, 'no extra instance directories');
    const ports = await cellar.storeQuery<{ port: number; instance_id: string }>('select port, instance_id from ports order by instance_id');
    const instancePorts = [...steady.instances, ...midway.instances].map((instance) => [instance.id, instance.port]).sort();
    assert.deepEqual(ports.map((row) => [row.instance_id, row.port]), instancePorts, 'ports held only by the live instances');
    const expected = [...instances.map((id) => join(cellar.dataDir, 'instances', id, 'pgdata')), embeddedStorePaths(cellar.dataDir).pgdata].sort();
    assert.deepEqual(await postmasters(cellar.dataDir), expected, 'exactly one postmaster per live instance, and one store');

    // Logged once per change of state, not once per retry or tick.
    const logs = cellar.logs();
    assert.equal(countLines(logs, 'the embedded cell store is down'), 1, logs);
    assert.equal(countLines(logs, 'the embedded cell store is up again'), 1, logs);
    assert.ok(countLines(logs, 'the cell store is unreachable; the engine waits') <= 1, logs);
    assert.equal(countLines(logs, 'claim failed'), 0, logs);
    assert.equal(countLines(logs, 'engine fault'), 0, logs);
  });
});

describe('external store (CELLAR_STORE_URL) stopped', () => {
  let storeRoot: string;
  let storeConfig: ReturnType<typeof loadConfig>;
  let cellar: TestCellar;

  before(async () => {
    storeRoot = await makeTempDir('cellar-external-store-');
    storeConfig = loadConfig({ CELLAR_HOME: join(storeRoot, 'home'), CELLAR_DATA: join(storeRoot, 'data') });
    const url = await ensureEmbeddedStore(storeConfig);
    cellar = await TestCellar.create({ CELLAR_STORE_URL: url });
    await cellar.start();
  });

  after(async () => {
    await cellar.destroy();
    await stopEmbeddedStore(join(storeRoot, 'data'));
    await rm(storeRoot, { recursive: true, force: true });
  });

  test('while the store is down: 503 with Retry-After, /healthz not ready with the reason, the CLI prints a sentence, the proxy serves; all answers come back with the store', async (t) => {
    const steady = await cellar.cliJson<ClusterView>(['clusters', 'create', 'steady', '--replicas', '0', '--wait']);
    const held = await holdConnection(steady.uri as string);
    t.after(() => held.end().catch(() => undefined));
    const token = await cellar.token();

    await stopEmbeddedStore(join(storeRoot, 'data'));
    // The engine finds the store gone at its next tick; everything below happens after that, over several more.
    await eventually('the engine to say it waits for the store', async () => (countLines(cellar.logs(), 'the cell store is unreachable; the engine waits') > 0 ? true : undefined), outageWaitMsMax, outagePollMs);

    const answer = await get(`${cellar.apiUrl}/v1/clusters`, token);
    assert.equal(answer.status, 503, answer.text);
    assert.equal(answer.retryAfter, '2');
    const body = JSON.parse(answer.text) as ErrorBody;
    assert.equal(body.error.code, 'CELLAR_E_STORE_UNAVAILABLE');
    assert.match(body.error.message, /CELLAR_STORE_URL/);

    const health = await get(`${cellar.apiUrl}/healthz`);
    assert.equal(health.status, 503);
    const reason = (JSON.parse(health.text) as { ok: boolean; reason: string }).reason;
    assert.match(reason, /^the cell store is unreachable: \S/);

    const listed = await cellar.cli(['clusters', 'list']);
    assert.equal(listed.code, 1);
    assert.match(listed.stderr, /^cellar: the cell store is unavailable \(check the server at CELLAR_STORE_URL\); try again in 2 s \[CELLAR_E_STORE_UNAVAILABLE\]\n$/);

    await held.query('insert into ticks values (1)');
    assert.deepEqual(await queryUri<{ one: number }>(steady.uri as string, 'select 1 as one'), [{ one: 1 }]);
    // Still down after all of the above (several engine ticks since it first said so): the engine said so once.
    assert.equal((await get(`${cellar.apiUrl}/healthz`)).status, 503);
    assert.equal(countLines(cellar.logs(), 'the cell store is unreachable; the engine waits'), 1, cellar.logs());
    assert.equal(countLines(cellar.logs(), 'claim failed'), 0, cellar.logs());

    await ensureEmbeddedStore(storeConfig);
    await eventually('/healthz to be ready again', async () => ((await get(`${cellar.apiUrl}/healthz`)).status === 200 ? true : undefined), outageWaitMsMax, outagePollMs);
    const back = await get(`${cellar.apiUrl}/v1/clusters`, token);
    assert.equal(back.status, 200, back.text);
  });
});
