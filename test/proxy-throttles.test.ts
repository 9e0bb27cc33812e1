import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { connect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import type { ClusterView } from '../src/api/view.js';
import { TestCellar, sleep } from './helpers/cellar.js';

/** The proxy's throttles, pause and metrics, with limits set low through the environment. */

const connectionsMax = 3;
const bytesPerSecond = 2_000_000;
const waitMs = 1_500;
const toleranceRatio = 0.1;
/** Above waitMs (a paused client must get its 57P03 before this ends it) and short enough to outlive in a test. */
const startupMs = 2_500;

function psqlCopy(uri: string, command: string): Promise<number> {
  const startedMs = performance.now();
  return new Promise((resolve, reject) => {
    execFile('/usr/lib/postgresql/15/bin/psql', ['-X', '-o', '/dev/null', uri, '-c', command], { timeout: 60_000, env: { ...process.env, PGGSSENCMODE: 'disable' } }, (error, _stdout, stderr) => {
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

  test('a bulk COPY through the proxy runs at the set bandwidth within 10%, in both directions', async () => {
    const rowBytes = 1_000;
    const rows = 6_000;
    const outBefore = await cellar.proxyMetric(new RegExp(`cellar_proxy_bytes_total\\{cluster="${app.routeKey}",direction="out"\\} (\\d+)`));
    const outMs = await psqlCopy(app.uri as string, `copy (select repeat('x', ${rowBytes}) from generate_series(1, ${rows})) to stdout`);
    const outBytes = (await cellar.proxyMetric(new RegExp(`cellar_proxy_bytes_total\\{cluster="${app.routeKey}",direction="out"\\} (\\d+)`))) - outBefore;
    const outRate = outBytes / (outMs / 1000);
    assert.ok(outBytes >= rowBytes * rows, `copied ${outBytes} bytes out`);
    assert.ok(Math.abs(outRate - bytesPerSecond) / bytesPerSecond <= toleranceRatio, `out: ${Math.round(outRate)} B/s against ${bytesPerSecond}`);

    await psqlCopy(app.uri as string, 'create table if not exists sink (body text)');
    const inBefore = await cellar.proxyMetric(new RegExp(`cellar_proxy_bytes_total\\{cluster="${app.routeKey}",direction="in"\\} (\\d+)`));
    const inMs = await psqlCopy(app.uri as string, `\\copy sink from program 'head -c ${rowBytes * rows} /dev/zero | tr "\\\\000" "y" | fold -w ${rowBytes}'`);
    const inBytes = (await cellar.proxyMetric(new RegExp(`cellar_proxy_bytes_total\\{cluster="${app.routeKey}",direction="in"\\} (\\d+)`))) - inBefore;
    const inRate = inBytes / (inMs / 1000);
    assert.ok(inBytes >= rowBytes * rows, `copied ${inBytes} bytes in`);
    assert.ok(Math.abs(inRate - bytesPerSecond) / bytesPerSecond <= toleranceRatio, `in: ${Math.round(inRate)} B/s against ${bytesPerSecond}`);
  });

  test('a paused route holds new connections: they proceed when it resumes, or get 57P03 past the wait', async () => {
    await cellar.storeQuery('update clusters set route_paused = true where route_key = $1', [app.routeKey]);
    await sleep(600); // a route poll or two
    const waiting = new pg.Client({ connectionString: app.uri as string });
    const startedMs = performance.now();
    const connecting = waiting.connect();
    await sleep(500);
    await cellar.storeQuery('update clusters set route_paused = false where route_key = $1', [app.routeKey]);
    await connecting;
    const waitedMs = performance.now() - startedMs;
    await waiting.end();
    assert.ok(waitedMs >= 450, `the connection waited (${Math.round(waitedMs)} ms) while the route was paused`);

    await cellar.storeQuery('update clusters set route_paused = true where route_key = $1', [app.routeKey]);
    await sleep(600);
    const refused = new pg.Client({ connectionString: app.uri as string });
    await assert.rejects(refused.connect(), (error: { code?: string; message: string }) => {
      assert.equal(error.code, '57P03');
      assert.match(error.message, new RegExp(`cluster "${app.routeKey}" is paused .*gave up after ${waitMs} ms`));
      return true;
    });
    await cellar.storeQuery('update clusters set route_paused = false where route_key = $1', [app.routeKey]);
  });

  test('an established connection outlives the startup deadline: idle past it, it still answers', async () => {
    const client = new pg.Client({ connectionString: app.uri as string });
    await client.connect();
    await sleep(startupMs * 1.5);
    const result = await client.query<{ one: number }>('select 1 as one');
    await client.end();
    assert.equal(result.rows[0]?.one, 1);
  });

  test('TLS (terminated in the native relay): a client silent after its handshake is closed at the startup deadline; an established TLS connection outlives it', async () => {
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
    await once(silent, 'close');
    const closedAfterMs = performance.now() - connectedMs;
    assert.ok(closedAfterMs < startupMs * 2, `closed ${Math.round(closedAfterMs)} ms after the handshake`);
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
