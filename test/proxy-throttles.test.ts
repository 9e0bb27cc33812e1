import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import type { ClusterView } from '../src/api/view.js';
import { TestCellar, eventually } from './helpers/cellar.js';
import { postgresTool } from './helpers/tools.js';

/** The proxy's throttles, pause and metrics, with limits set low through the environment. */

const connectionsMax = 3;
const bytesPerSecond = 2_000_000;
const waitMs = 1_500;
const psqlBin = await postgresTool('psql');
/** Above waitMs (a paused client must get its 57P03 before this ends it) and short enough to outlive in a test. */
const startupMs = 2_500;

/** `promise`, or a failure naming `what` once `deadlineMs` has passed. */
async function withDeadline<T>(promise: Promise<T>, deadlineMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${deadlineMs} ms waiting for ${what}`)), deadlineMs);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

function psqlCopy(uri: string, command: string): Promise<number> {
  const startedMs = performance.now();
  return new Promise((resolve, reject) => {
    execFile(psqlBin, ['-X', '-o', '/dev/null', uri, '-c', command], { timeout: 60_000, env: { ...process.env, PGGSSENCMODE: 'disable' } }, (error, _stdout, stderr) => {
      if (error) reject(new Error(`${error.message}: ${stderr}`));
      else resolve(performance.now() - startedMs);
    });
  });
}

describe('proxy throttles, pause and metrics', () => {
  let cellar: TestCellar;
  let app: ClusterView;

  before(async () => {
    cellar = await TestCellar.create({
      CELLAR_PROXY_CLUSTER_CONNECTIONS_MAX: String(connectionsMax),
      CELLAR_PROXY_CLUSTER_BYTES_PER_SECOND: String(bytesPerSecond),
      CELLAR_PROXY_WAIT_MS: String(waitMs),
      CELLAR_PROXY_STARTUP_MS: String(startupMs),
    });
    await cellar.start();
    app = await cellar.cliJson<ClusterView>(['clusters', 'create', 'app', '--replicas', '0', '--wait']);
  });

  after(async () => {
    await cellar.destroy();
  });

  test('past the per-cluster connection limit a client gets SQLSTATE 53300 naming the cluster and the limit', async () => {
    const open: pg.Client[] = [];
    try {
      for (let index = 0; index < connectionsMax; index += 1) {
        const client = new pg.Client({ connectionString: app.uri as string });
        await client.connect();
        open.push(client);
      }
      const extra = new pg.Client({ connectionString: app.uri as string });
      await assert.rejects(extra.connect(), (error: { code?: string; message: string }) => {
        assert.equal(error.code, '53300');
        assert.equal(error.message, `too many connections for cluster "${app.routeKey}" (limit ${connectionsMax})`);
        return true;
      });
    } finally {
      await Promise.all(open.map((client) => client.end()));
    }
    assert.ok((await cellar.proxyMetric(new RegExp(`cellar_proxy_throttle_events_total\\{cluster="${app.routeKey}",throttle="connections"\\} (\\d+)`))) >= 1);
  });

  test('a bulk COPY through a cluster with a bandwidth limit is paced by the proxy, in both directions', async (t) => {
    const rowBytes = 1_000;
    const rows = 6_000;
    const bytesMetric = (direction: string) => cellar.proxyMetric(new RegExp(`cellar_proxy_bytes_total\\{cluster="${app.routeKey}",direction="${direction}"\\} (\\d+)`));
    const pausesMetric = () => cellar.proxyMetric(new RegExp(`cellar_proxy_throttle_events_total\\{cluster="${app.routeKey}",throttle="bandwidth"\\} (\\d+)`));
    const nativeMetric = () => cellar.proxyMetric(new RegExp(`cellar_proxy_native_relay_total\\{cluster="${app.routeKey}"\\} (\\d+)`));
    const nativeBefore = await nativeMetric();

    const outBefore = await bytesMetric('out');
    const outPausesBefore = await pausesMetric();
    const outMs = await psqlCopy(app.uri as string, `copy (select repeat('x', ${rowBytes}) from generate_series(1, ${rows})) to stdout`);
    const outBytes = (await bytesMetric('out')) - outBefore;
    const outPauses = (await pausesMetric()) - outPausesBefore;
    t.diagnostic(`out: ${outBytes} bytes in ${Math.round(outMs)} ms = ${Math.round(outBytes / (outMs / 1000))} B/s against a limit of ${bytesPerSecond}; ${outPauses} pauses`);
    assert.ok(outBytes >= rowBytes * rows, `copied ${outBytes} bytes out`);
    // Three times the limit's worth of bytes cannot pass the bucket without the source being paused.
    assert.ok(outPauses >= 1, 'the server side was paused to keep to the limit');

    await psqlCopy(app.uri as string, 'create table if not exists sink (body text)');
    const inBefore = await bytesMetric('in');
    const inPausesBefore = await pausesMetric();
    const inMs = await psqlCopy(app.uri as string, `\\copy sink from program 'head -c ${rowBytes * rows} /dev/zero | tr "\\\\000" "y" | fold -w ${rowBytes}'`);
    const inBytes = (await bytesMetric('in')) - inBefore;
    const inPauses = (await pausesMetric()) - inPausesBefore;
    t.diagnostic(`in: ${inBytes} bytes in ${Math.round(inMs)} ms = ${Math.round(inBytes / (inMs / 1000))} B/s against a limit of ${bytesPerSecond}; ${inPauses} pauses`);
    assert.ok(inBytes >= rowBytes * rows, `copied ${inBytes} bytes in`);
    assert.ok(inPauses >= 1, 'the client side was paused to keep to the limit');
    assert.equal(await nativeMetric(), nativeBefore, 'a limited cluster is relayed in JavaScript, where the bucket is, never by the native relay');
  });

  test('a paused route holds new connections: they proceed when it resumes, or get 57P03 past the wait', async (t) => {
    await cellar.storeQuery('update clusters set route_paused = true where route_key = $1', [app.routeKey]);
    // Until the proxy's route poll sees the pause a connection goes through; once it refuses one
    // past its wait, the proxy holds new connections for this cluster.
    const refusal = await eventually('the proxy to hold and then refuse a connection to the paused route', async () => {
      const probe = new pg.Client({ connectionString: app.uri as string });
      try {
        await probe.connect();
        await probe.end();
        return undefined;
      } catch (error) {
        return error as { code?: string; message: string };
      }
    }, 30_000);
    assert.equal(refusal.code, '57P03');
    assert.match(refusal.message, new RegExp(`cluster "${app.routeKey}" is paused .*gave up after ${waitMs} ms`));

    const waiting = new pg.Client({ connectionString: app.uri as string });
    const startedMs = performance.now();
    let connected = false;
    const connecting = waiting.connect().then(() => (connected = true));
    // The client sends its startup as soon as TCP connects; from then on the proxy, which knows the
    // route is paused, holds it (until the store says otherwise and the next route poll sees it).
    const stream = (waiting as unknown as { connection: { stream: Socket } }).connection.stream;
    if (stream.connecting) await withDeadline(once(stream, 'connect'), waitMs, 'the client to reach the proxy');
    assert.equal(connected, false, 'no connection to the paused route went through');
    await cellar.storeQuery('update clusters set route_paused = false where route_key = $1', [app.routeKey]);
    await connecting;
    t.diagnostic(`the connection waited ${Math.round(performance.now() - startedMs)} ms while the route was paused`);
    const [row] = (await waiting.query<{ one: number }>('select 1 as one')).rows;
    await waiting.end();
    assert.equal(row?.one, 1, 'the held connection proceeds once the route resumes');
  });

  test('an established connection outlives the startup deadline: after a silent client was closed at that deadline, it still answers', async () => {
    const client = new pg.Client({ connectionString: app.uri as string });
    await client.connect();
    const port = Number(new URL(app.uri as string).port);
    const silent = connect({ host: '127.0.0.1', port });
    silent.on('error', () => undefined);
    await once(silent, 'connect');
    // Opened after the established client, so by its close the established one is past the deadline too.
    await withDeadline(once(silent, 'close'), startupMs * 10, 'the proxy to close a client that sends no startup');
    const result = await client.query<{ one: number }>('select 1 as one');
    await client.end();
    assert.equal(result.rows[0]?.one, 1);
  });

  test('TLS (terminated in the native relay): a client silent after its handshake is closed at the startup deadline; an established TLS connection outlives it', async (t) => {
    const uri = new URL(app.uri as string);
    const established = new pg.Client({ host: '127.0.0.1', port: Number(uri.port), user: decodeURIComponent(uri.username), password: decodeURIComponent(uri.password), database: 'app', ssl: { rejectUnauthorized: false } });
    await established.connect();
    const sslRequest = Buffer.alloc(8);
    sslRequest.writeInt32BE(8, 0);
    sslRequest.writeInt32BE(80877103, 4);
    const raw = connect({ host: '127.0.0.1', port: Number(uri.port) }, () => raw.write(sslRequest));
    const [answer] = (await once(raw, 'data')) as [Buffer];
    assert.equal(answer.toString(), 'S');
    const silent = tlsConnect({ socket: raw, rejectUnauthorized: false });
    silent.on('error', () => undefined);
    await once(silent, 'secureConnect');
    const connectedMs = performance.now();
    await withDeadline(once(silent, 'close'), startupMs * 10, 'the proxy to close a TLS client silent after its handshake');
    t.diagnostic(`closed ${Math.round(performance.now() - connectedMs)} ms after the handshake (startup deadline ${startupMs} ms)`);
    const result = await established.query<{ one: number }>('select 1 as one');
    await established.end();
    assert.equal(result.rows[0]?.one, 1);
  });

  test('metrics count connections, bytes and routing errors per cluster', async () => {
    const unknown = new pg.Client({ connectionString: (app.uri as string).replace(`app.${app.routeKey}`, 'app.nope') });
    await assert.rejects(unknown.connect());
    assert.ok((await cellar.proxyMetric(new RegExp(`cellar_proxy_connections_total\\{cluster="${app.routeKey}",endpoint="readWrite"\\} (\\d+)`))) >= connectionsMax);
    assert.ok((await cellar.proxyMetric(/cellar_proxy_routing_errors_total\{cluster="",reason="unknown_cluster"\} (\d+)/)) >= 1);
    assert.equal(await cellar.proxyMetric(/cellar_proxy_store_reachable (\d+)/), 1);
    assert.ok((await cellar.proxyMetric(/cellar_proxy_routes (\d+)/)) >= 1);
  });
});
