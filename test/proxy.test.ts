import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { readFile, readdir } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import type { ClusterView } from '../src/api/view.js';
import { cancelRequestPacket } from '../src/proxy/protocol.js';
import { stopEmbeddedStore } from '../src/store/embedded.js';
import { TestCellar, eventually, queryUri } from './helpers/cellar.js';
import { postgresTool } from './helpers/tools.js';

/** The proxy, end to end: real psql and node-postgres clients, real servers behind it. */

const psqlBin = await postgresTool('psql');

function psql(args: readonly string[], env: Record<string, string> = {}, conninfo?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const defaults = conninfo === undefined ? { PGSSLMODE: 'disable' } : {};
  return new Promise((resolve) => {
    execFile(psqlBin, ['-X', '-A', '-t', ...(conninfo === undefined ? [] : [conninfo]), ...args], { env: { ...process.env, ...defaults, PGGSSENCMODE: 'disable', PGCONNECT_TIMEOUT: '5', ...env }, timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stdout: stdout.trim(), stderr: stderr.trim() });
    });
  });
}

describe('proxy', () => {
  let cellar: TestCellar;
  let app: ClusterView;
  let password: string;
  let proxyPort: number;

  before(async () => {
    // Embedded: static stability stops this Cellar's store.
    cellar = await TestCellar.create({}, { store: 'embedded' });
    await cellar.start();
    app = await cellar.cliJson<ClusterView>(['clusters', 'create', 'app', '--wait']);
    const uri = new URL(app.uri as string);
    password = decodeURIComponent(uri.password);
    proxyPort = Number(uri.port);
  });

  after(async () => {
    await cellar.destroy();
  });

  test('psql and node-postgres connect through the proxy by user role.cluster and by options -c cluster=', async () => {
    const byUser = await psql([app.uri as string, '-c', 'select current_user']);
    assert.deepEqual([byUser.code, byUser.stdout], [0, 'app'], byUser.stderr);
    const byOptions = await psql(['-h', '127.0.0.1', '-p', String(proxyPort), '-U', 'app', '-d', 'app', '-c', 'select current_user'], {
      PGPASSWORD: password,
      PGOPTIONS: `-c cluster=${app.routeKey}`,
    });
    assert.deepEqual([byOptions.code, byOptions.stdout], [0, 'app'], byOptions.stderr);
    const client = new pg.Client({ host: '127.0.0.1', port: proxyPort, user: `app.${app.routeKey}`, password, database: 'app', ssl: false });
    await client.connect();
    const result = await client.query<{ user: string; replica: boolean }>('select current_user as user, pg_is_in_recovery() as replica');
    await client.end();
    assert.deepEqual(result.rows[0], { user: 'app', replica: false });
  });

  test('TLS: psql and node-postgres verify-full against CLUSTER.<domain> with the cell CA, routed by SNI', async () => {
    const caFile = join(cellar.home, 'ca.crt');
    const host = `${app.routeKey}.cellar.localhost`;
    const verified = await psql(['-c', 'select current_user'], {}, `host=${host} hostaddr=127.0.0.1 port=${proxyPort} user=app dbname=app sslmode=verify-full sslrootcert=${caFile} password=${password}`);
    assert.deepEqual([verified.code, verified.stdout], [0, 'app'], verified.stderr);
    const uriUserWithTls = await psql(['-c', 'select current_user'], {}, `host=${host} hostaddr=127.0.0.1 port=${proxyPort} user=app.${app.routeKey} dbname=app sslmode=verify-full sslrootcert=${caFile} password=${password}`);
    assert.deepEqual([uriUserWithTls.code, uriUserWithTls.stdout], [0, 'app'], `the URI's user role.cluster also works with TLS: ${uriUserWithTls.stderr}`);
    const wrongName = await psql(['-c', 'select 1'], {}, `host=evil.example hostaddr=127.0.0.1 port=${proxyPort} user=app.${app.routeKey} dbname=app sslmode=verify-full sslrootcert=${caFile} password=${password}`);
    assert.notEqual(wrongName.code, 0);
    assert.match(wrongName.stderr, /does not match host name "evil\.example"/);
    const client = new pg.Client({ host: '127.0.0.1', port: proxyPort, user: 'app', password, database: 'app', ssl: { ca: await readFile(caFile, 'utf8'), servername: host } });
    await client.connect();
    const encrypted = (client as unknown as { connection: { stream: { encrypted?: boolean } } }).connection.stream.encrypted;
    const result = await client.query<{ user: string }>('select current_user as user');
    await client.end();
    assert.equal(encrypted, true);
    assert.equal(result.rows[0]?.user, 'app');
  });

  test('TLS: direct TLS (first byte a ClientHello, ALPN postgresql) reaches the server; without ALPN, or with bytes after SSLRequest, the client is dropped', async () => {
    const ca = await readFile(join(cellar.home, 'ca.crt'), 'utf8');
    const servername = `${app.routeKey}.cellar.localhost`;
    const direct = tlsConnect({ host: '127.0.0.1', port: proxyPort, servername, ca, ALPNProtocols: ['postgresql'] });
    await once(direct, 'secureConnect');
    assert.equal(direct.alpnProtocol, 'postgresql');
    direct.write(startupPacket({ user: 'app', database: 'app' }));
    const [reply] = (await once(direct, 'data')) as [Buffer];
    direct.destroy();
    assert.equal(String.fromCharCode(reply[0] ?? 0), 'R', 'the server asks for authentication');
    const noAlpn = tlsConnect({ host: '127.0.0.1', port: proxyPort, servername, ca });
    const received: Buffer[] = [];
    noAlpn.on('data', (chunk: Buffer) => received.push(chunk));
    noAlpn.on('error', () => undefined);
    noAlpn.once('secureConnect', () => noAlpn.write(startupPacket({ user: 'app', database: 'app' })));
    await once(noAlpn, 'close');
    assert.equal(Buffer.concat(received).length, 0, 'direct TLS without ALPN postgresql is closed unanswered');
    const sslRequest = Buffer.alloc(8);
    sslRequest.writeInt32BE(8, 0);
    sslRequest.writeInt32BE(80877103, 4);
    const injected = await rawExchange(proxyPort, Buffer.concat([sslRequest, Buffer.from('injected')]));
    assert.equal(injected.length, 0, 'closed without an answer');
  });

  test('an unknown cluster, a missing routing key and a bad startup packet get an ErrorResponse with the right SQLSTATE', async () => {
    const unknown = await psql(['-h', '127.0.0.1', '-p', String(proxyPort), '-U', 'app.nope', '-d', 'app', '-c', 'select 1']);
    assert.notEqual(unknown.code, 0);
    assert.match(unknown.stderr, /FATAL: {2}cluster "nope" does not exist/);
    const client = new pg.Client({ host: '127.0.0.1', port: proxyPort, user: 'app.nope', password: 'x', database: 'app', ssl: false });
    await assert.rejects(client.connect(), (error: { code?: string }) => error.code === '3D000');
    const noKey = new pg.Client({ host: '127.0.0.1', port: proxyPort, user: 'app', password: 'x', database: 'app', ssl: false });
    await assert.rejects(noKey.connect(), (error: { code?: string; message: string }) => error.code === '3D000' && /connect as user ROLE\.CLUSTER/.test(error.message));
    const reply = await rawExchange(proxyPort, Buffer.from([0, 0, 0, 3, 0, 0, 0, 0]));
    assert.equal(reply[0], 'E'.charCodeAt(0), 'an ErrorResponse, not a bare close');
    assert.match(reply.toString('latin1'), /C08P01/);
    assert.match(reply.toString('latin1'), /invalid startup packet length 3/);
  });

  test('the native relay carries connections after startup, plain and TLS (terminated in its thread): large messages both ways arrive whole, bytes are counted, a vanished client ends its server session', async () => {
    const relayed = new RegExp(`cellar_proxy_native_relay_total\\{cluster="${app.routeKey}"\\} (\\d+)`);
    const bytesIn = new RegExp(`cellar_proxy_bytes_total\\{cluster="${app.routeKey}",direction="in"\\} (\\d+)`);
    const bytesOut = new RegExp(`cellar_proxy_bytes_total\\{cluster="${app.routeKey}",direction="out"\\} (\\d+)`);
    const host = `${app.routeKey}.cellar.localhost`;
    const ca = await readFile(join(cellar.home, 'ca.crt'), 'utf8');
    const clients = {
      plain: () => new pg.Client({ connectionString: app.uri as string }),
      tls: () => new pg.Client({ host: '127.0.0.1', port: proxyPort, user: 'app', password, database: 'app', ssl: { ca, servername: host } }),
    };
    // 32 MB each way: far past a socket buffer and a TLS record, so both directions go through partial writes and waits.
    const large = 'x'.repeat(32 * 1024 * 1024);
    for (const [mode, makeClient] of Object.entries(clients)) {
      const relayedBefore = await cellar.proxyMetric(relayed);
      const [inBefore, outBefore] = [await cellar.proxyMetric(bytesIn), await cellar.proxyMetric(bytesOut)];
      const client = makeClient();
      await client.connect();
      assert.equal(await cellar.proxyMetric(relayed), relayedBefore + 1, `the ${mode} connection went to the native relay`);
      const encrypted = (client as unknown as { connection: { stream: { encrypted?: boolean } } }).connection.stream.encrypted === true;
      assert.equal(encrypted, mode === 'tls', `${mode}: encrypted`);
      const sent = await client.query<{ length: number; md5: string }>('select length($1) as length, md5($1) as md5', [large]);
      assert.deepEqual(sent.rows[0], { length: large.length, md5: createHash('md5').update(large).digest('hex') }, `${mode}: client to server`);
      const received = await client.query<{ text: string }>(`select repeat('y', ${large.length}) as text`);
      assert.equal(received.rows[0]?.text, 'y'.repeat(large.length), `${mode}: server to client`);
      const pid = (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid;
      assert.ok((await cellar.proxyMetric(bytesIn)) - inBefore >= large.length, `${mode}: bytes in counted while the connection is open`);
      assert.ok((await cellar.proxyMetric(bytesOut)) - outBefore >= large.length, `${mode}: bytes out counted while the connection is open`);
      // The client goes away without a Terminate: its server session must end too.
      client.on('error', () => undefined);
      (client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
      const observer = new pg.Client({ connectionString: app.uri as string });
      await observer.connect();
      const gone = await eventually(`the server session of the vanished ${mode} client to end`, async () => {
        const rows = await observer.query('select 1 from pg_stat_activity where pid = $1', [pid]);
        return rows.rowCount === 0 || undefined;
      }, 10_000);
      assert.equal(gone, true);
      await observer.end();
    }
  });

  test('churn through the native relay leaves nothing behind: clients that vanish right after startup or mid-result, plain and TLS, end their connections in the proxy', async () => {
    const open = new RegExp(`cellar_proxy_connections\\{cluster="${app.routeKey}",endpoint="readWrite"\\} (\\d+)`);
    const proxyPid = Number((await readFile(join(cellar.home, 'proxy.pid'), 'utf8')).trim());
    const descriptors = async () => (await readdir(`/proc/${proxyPid}/fd`)).length;
    const ca = await readFile(join(cellar.home, 'ca.crt'), 'utf8');
    const host = `${app.routeKey}.cellar.localhost`;
    // No connection of this file is meant to be open now; the proxy counts the earlier tests' last
    // ones down when it sees them close, which may be just after those tests ended.
    await eventually('the earlier tests\' connections to end in the proxy', async () => ((await cellar.proxyMetric(open)) === 0 ? true : undefined), 10_000);
    const descriptorsBefore = await descriptors();
    const sessions = 400;
    const concurrency = 8;
    let next = 0;
    const session = async (index: number): Promise<void> => {
      // Plain connections are routed by role.cluster, TLS ones by SNI.
      const tls = index % 2 === 1;
      const client = new pg.Client({ host: '127.0.0.1', port: proxyPort, user: tls ? 'app' : `app.${app.routeKey}`, password, database: 'app', ssl: tls ? { ca, servername: host } : false });
      client.on('error', () => undefined);
      await client.connect();
      const stream = (client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream;
      const ending = index % 3;
      if (ending === 0) return stream.destroy();
      if (ending === 1) {
        const result = client.query("select repeat('z', 1000) from generate_series(1, 5000)").catch(() => undefined);
        await new Promise((resolve) => setTimeout(resolve, index % 5));
        stream.destroy();
        await result;
        return;
      }
      await client.query('select 1');
      await client.end();
    };
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < sessions) await session(next++);
      }),
    );
    await eventually('every churned connection to end in the proxy', async () => {
      const now = await cellar.proxyMetric(open);
      if (now !== 0) throw new Error(`${now} connections open, 0 before`);
      return true;
    }, 10_000);
    await eventually('the proxy to hold no more descriptors than before', async () => {
      const now = await descriptors();
      if (now > descriptorsBefore) throw new Error(`${now} descriptors, ${descriptorsBefore} before`);
      return true;
    }, 10_000);
  });

  test('a CancelRequest through the proxy cancels the right backend: pg_sleep(30) ends with a cancel error', async (t) => {
    const client = new pg.Client({ connectionString: app.uri as string });
    await client.connect();
    const processId = (client as unknown as { processID: number }).processID;
    const secretKey = (client as unknown as { secretKey: number }).secretKey;
    const sleeping = client.query('select pg_sleep(30)');
    const [backend] = await eventually('the backend to be running pg_sleep', async () => {
      const rows = await queryUri<{ pid: number }>(app.uri as string, `select pid from pg_stat_activity where state = 'active' and query like 'select pg_sleep%'`);
      return rows.length === 1 ? rows : undefined;
    }, 10_000, 20);
    const cancelledAt = Date.now();
    // Expected before the cancel is sent: the query may fail before the proxy has closed the cancelling connection.
    const cancelled = assert.rejects(sleeping, (error: { code?: string }) => error.code === '57014');
    await rawExchange(proxyPort, cancelRequestPacket(processId, secretKey));
    await cancelled;
    t.diagnostic(`cancelled in ${Date.now() - cancelledAt} ms`);
    const [after] = await queryUri<{ count: number }>(app.uri as string, 'select count(*)::int as count from pg_stat_activity where pid = $1', [backend?.pid]);
    assert.equal(after?.count, 1, 'the query was cancelled, not its backend ended');
    await client.end();
  });

  test('static stability: with the control plane SIGKILLed and the store stopped, open connections work and new ones succeed', async () => {
    const open = new pg.Client({ connectionString: app.uri as string });
    await open.connect();
    await open.query('create table if not exists stable (id int)');
    await cellar.stop('SIGKILL');
    assert.ok(await stopEmbeddedStore(cellar.dataDir), 'the store was running and is now stopped');
    try {
      await open.query('insert into stable values (1)');
      const fresh = new pg.Client({ connectionString: app.uri as string });
      await fresh.connect();
      const rows = await fresh.query<{ count: string }>('select count(*) from stable');
      await fresh.end();
      assert.equal(rows.rows[0]?.count, '1');
      const readOnly = new pg.Client({ connectionString: app.readOnlyUri as string });
      await readOnly.connect();
      const replica = await readOnly.query<{ replica: boolean }>('select pg_is_in_recovery() as replica');
      await readOnly.end();
      assert.equal(replica.rows[0]?.replica, true);
    } finally {
      await open.end();
      await cellar.start();
    }
    const shown = await eventually('the control plane to answer again', async () => (await cellar.cluster('app')).state === 'running' || undefined, 30_000);
    assert.equal(shown, true);
  });
});

function startupPacket(parameters: Record<string, string>): Buffer {
  const body = Buffer.from(`${Object.entries(parameters).map(([name, value]) => `${name}\0${value}\0`).join('')}\0`);
  const header = Buffer.alloc(8);
  header.writeInt32BE(8 + body.length, 0);
  header.writeInt32BE(196608, 4);
  return Buffer.concat([header, body]);
}

/** Sends raw bytes to the proxy and collects what comes back until it closes (bounded). */
function rawExchange(port: number, bytes: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = connect({ host: '127.0.0.1', port }, () => socket.write(bytes));
    socket.setTimeout(5_000, () => socket.destroy(new Error('no close within 5 s')));
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', reject);
    socket.on('close', () => resolve(Buffer.concat(chunks)));
  });
}
