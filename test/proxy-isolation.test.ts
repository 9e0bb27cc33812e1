import assert from 'node:assert/strict';
import { appendFile } from 'node:fs/promises';
import { type Server, type Socket, connect, createServer } from 'node:net';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { pino } from 'pino';
import { testPort } from './helpers/ports.js';
import type { ProxyLimits } from '../src/proxy/admission.js';
import { type BackendKey, CancelKeys, type CancelKeyRegistry, type ProxyKey } from '../src/proxy/cancel-keys.js';
import { ProxyMetrics } from '../src/proxy/metrics.js';
import { NativeRelay } from '../src/proxy/native-relay.js';
import { cancelRequestPacket } from '../src/proxy/protocol.js';
import type { EndpointKind, ProxyRoutes, Resolution, Target } from '../src/proxy/routes.js';
import { ProxyServer } from '../src/proxy/server.js';
import { eventually } from './helpers/cellar.js';
import { type TestStore, startTestStore } from './helpers/store.js';

/**
 * The proxy in this process, so a test can put a failing part into it and look at its maps: one
 * connection's failure ends that connection only, malformed lengths are refused, per-cluster state
 * is dropped when a cluster has gone. The server behind it is a real Postgres (the embedded store's
 * server, with a tenant role); the route table is a map the test sets, standing in for the store's
 * routes, which would need a whole control plane.
 */

const tenant = { role: 'proxy_tenant', password: 'proxy-tenant-secret' };
const limits: ProxyLimits = { clusterConnectionsMax: 50, clusterConnectsPerSecond: 10_000, clusterBytesPerSecond: 0, waitMsMax: 1_000, startupMsMax: 10_000 };

/** Routes the test sets by hand: cluster → port. */
class TestRoutes implements ProxyRoutes {
  private readonly ports = new Map<string, number>();
  private readonly listeners: (() => void)[] = [];

  set(cluster: string, port: number): void {
    this.ports.set(cluster, port);
    this.changed();
  }

  delete(clusters: readonly string[]): void {
    for (const cluster of clusters) this.ports.delete(cluster);
    this.changed();
  }

  resolve(key: string, _kind: EndpointKind): Resolution {
    const port = this.ports.get(key);
    return port === undefined ? { unknown: true } : { target: { host: '127.0.0.1', port, clusterKey: key, storageFull: false } };
  }

  storageFull(): null {
    return null;
  }

  refreshNow(): Promise<void> {
    return Promise.resolve();
  }

  stillRouted(target: Target): boolean {
    return this.ports.get(target.clusterKey) === target.port;
  }

  has(key: string): boolean {
    return this.ports.has(key);
  }

  onChange(listener: () => void): void {
    this.listeners.push(listener);
  }

  private changed(): void {
    for (const listener of this.listeners) listener();
  }
}

/** The real registry, made to throw on its next issue when asked: a dependency failing inside a socket data handler. */
class FailingCancelKeys implements CancelKeyRegistry {
  private readonly keys = new CancelKeys();
  failNext = false;

  issue(key: BackendKey): ProxyKey {
    if (this.failNext) {
      this.failNext = false;
      throw new Error('injected cancel-key failure');
    }
    return this.keys.issue(key);
  }

  release(key: ProxyKey): void {
    this.keys.release(key);
  }

  find(processId: number, secretKey: number): BackendKey | undefined {
    return this.keys.find(processId, secretKey);
  }

  get size(): number {
    return this.keys.size;
  }
}

/** A server that is not Postgres (no real one sends a malformed message): answers every connection with `reply` and holds it open. */
async function malformedServer(reply: Buffer): Promise<{ server: Server; port: number }> {
  const server = createServer((socket) => {
    socket.on('error', () => socket.destroy());
    socket.write(reply);
  });
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, resolve));
  const address = server.address();
  assert.ok(typeof address === 'object' && address !== null);
  return { server, port: address.port };
}

function message(type: string, length: number, body: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.write(type, 0, 'latin1');
  header.writeInt32BE(length, 1);
  return Buffer.concat([header, body]);
}

const authenticationOk = message('R', 8, Buffer.from([0, 0, 0, 0]));

/** Sends `bytes`, returns everything the proxy answers until it closes. */
function rawExchange(port: number, bytes: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket: Socket = connect({ host: '127.0.0.1', port }, () => socket.write(bytes));
    socket.setTimeout(5_000, () => socket.destroy(new Error('no close within 5 s')));
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', reject);
    socket.on('close', () => resolve(Buffer.concat(chunks)));
  });
}

describe('proxy isolation: failures stay in their connection, per-cluster state is bounded', () => {
  let store: TestStore;
  let postgresPort: number;
  let routes: TestRoutes;
  let cancelKeys: FailingCancelKeys;
  let metrics: ProxyMetrics;
  let proxy: ProxyServer;
  let relay: NativeRelay | null;
  let proxyPort: number;
  const logLines: string[] = [];
  const fakes: Server[] = [];

  const client = (cluster: string) => new pg.Client({ host: '127.0.0.1', port: proxyPort, user: `${tenant.role}.${cluster}`, password: tenant.password, database: 'cellar', ssl: false });

  before(async () => {
    // Its own server: the test adds a role and a pg_hba.conf line.
    store = await startTestStore({ own: true });
    postgresPort = Number(new URL(store.url).port);
    // The store admits only its superuser over TCP, and the proxy refuses platform roles: a tenant role and its hba line.
    await store.pool.query(`create role ${tenant.role} login password '${tenant.password}'`);
    const hbaFile = (await store.pool.query<{ hba_file: string }>('show hba_file')).rows[0]?.hba_file as string;
    await appendFile(hbaFile, `host    cellar       ${tenant.role}         127.0.0.1/32  scram-sha-256\n`);
    await store.pool.query('select pg_reload_conf()');
    await eventually('the tenant role to log in', async () => {
      const direct = new pg.Client({ host: '127.0.0.1', port: postgresPort, user: tenant.role, password: tenant.password, database: 'cellar' });
      await direct.connect();
      await direct.end();
      return true;
    }, 10_000);
    const log = pino({ level: 'warn' }, { write: (line: string) => void logLines.push(line) });
    routes = new TestRoutes();
    cancelKeys = new FailingCancelKeys();
    metrics = new ProxyMetrics();
    relay = NativeRelay.load(log);
    relay?.start();
    proxyPort = await testPort();
    proxy = new ProxyServer({ host: '127.0.0.1', readWritePort: proxyPort, readOnlyPort: await testPort(), routes, log, limits, metrics, tls: null, relay, cancelKeys });
    await proxy.start();
  });

  after(async () => {
    await proxy.stop();
    relay?.stop();
    for (const server of fakes) server.close();
    await store.close();
  });

  test('a throw inside a socket data handler (the cancel-key registry failing) ends that one connection with a log line; open and new connections go on', async () => {
    routes.set('one', postgresPort);
    const open = client('one');
    await open.connect();
    cancelKeys.failNext = true;
    const failing = client('one');
    failing.on('error', () => undefined);
    await assert.rejects(failing.connect());
    assert.ok(logLines.some((line) => line.includes('injected cancel-key failure') && line.includes('the connection ends')), logLines.join(''));
    assert.deepEqual((await open.query<{ one: number }>('select 1 as one')).rows, [{ one: 1 }], 'a connection open before still works');
    const next = client('one');
    await next.connect();
    assert.deepEqual((await next.query<{ one: number }>('select 1 as one')).rows, [{ one: 1 }], 'a new connection works');
    await next.end();
    await open.end();
    await eventually('the cancel keys of closed clients to be released', async () => (proxy.cancelKeyCount === 0 ? true : undefined), 5_000);
  });

  test('a connection whose instance leaves its route (fenced on a host cut off, which never closes it) is ended; others stay', async () => {
    routes.set('leaving', postgresPort);
    routes.set('staying', postgresPort);
    const leaving = client('leaving');
    const ended = new Promise<Error>((resolve) => leaving.once('error', resolve));
    await leaving.connect();
    const staying = client('staying');
    await staying.connect();
    routes.delete(['leaving']);
    const error = await Promise.race([ended, new Promise<Error>((_, reject) => setTimeout(() => reject(new Error('the connection was not ended within 5 s')), 5_000).unref())]);
    assert.match(error.message, /terminated|closed|ECONNRESET/i);
    assert.deepEqual((await staying.query<{ one: number }>('select 1 as one')).rows, [{ one: 1 }], 'a connection still routed goes on');
    await staying.end();
  });

  test('a server that sends a BackendKeyData of the wrong length, or a message length below 4, ends that client with 08P01; the proxy goes on', async () => {
    const shortKey = await malformedServer(Buffer.concat([authenticationOk, message('K', 8, Buffer.alloc(4)), message('Z', 5, Buffer.from('I'))]));
    const shortLength = await malformedServer(Buffer.concat([authenticationOk, message('S', 2, Buffer.alloc(0))]));
    fakes.push(shortKey.server, shortLength.server);
    routes.set('short-key', shortKey.port);
    routes.set('short-length', shortLength.port);
    for (const cluster of ['short-key', 'short-length']) {
      const bad = client(cluster);
      bad.on('error', () => undefined);
      await assert.rejects(bad.connect(), (error: { code?: string; message: string }) => {
        assert.equal(error.code, '08P01', error.message);
        assert.match(error.message, new RegExp(`the server of cluster "${cluster}" broke the protocol`));
        return true;
      });
    }
    const good = client('one');
    await good.connect();
    assert.deepEqual((await good.query<{ one: number }>('select 1 as one')).rows, [{ one: 1 }]);
    await good.end();
  });

  test('a client sending malformed lengths (a 12-byte CancelRequest, a 20-byte SSLRequest, a length past the limit) gets 08P01 and a close, no wait and no crash', async () => {
    const cancel = cancelRequestPacket(1, 2);
    cancel.writeInt32BE(12, 0);
    const shortCancel = await rawExchange(proxyPort, cancel.subarray(0, 12));
    assert.match(shortCancel.toString('latin1'), /C08P01/);
    assert.match(shortCancel.toString('latin1'), /invalid CancelRequest length 12/);
    const ssl = Buffer.alloc(20);
    ssl.writeInt32BE(20, 0);
    ssl.writeInt32BE(80877103, 4);
    assert.match((await rawExchange(proxyPort, ssl)).toString('latin1'), /invalid SSLRequest length 20/);
    const huge = Buffer.alloc(8);
    huge.writeInt32BE(2 ** 31 - 1, 0);
    assert.match((await rawExchange(proxyPort, huge)).toString('latin1'), /invalid startup packet length 2147483647/);
    // Not a crash: the proxy still serves.
    const good = client('one');
    await good.connect();
    await good.end();
  });

  test('churning 150 cluster names leaves state and metric series only while a cluster has a route or a connection', async () => {
    const names = Array.from({ length: 150 }, (_, index) => `churn-${index}`);
    for (const name of names) routes.set(name, postgresPort);
    const baseline = proxy.clusterStateCount;
    let next = 0;
    const concurrency = 4;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < names.length) {
          const connection = client(names[next++] as string);
          await connection.connect();
          await connection.end();
        }
      }),
    );
    await eventually('every churned connection to close in the proxy', async () => (proxy.cancelKeyCount === 0 ? true : undefined), 10_000);
    assert.equal(proxy.clusterStateCount, baseline + names.length, 'a routed cluster keeps its state (its rate bucket) without connections');
    assert.ok((await metrics.seriesOf('churn-0')) > 0);
    // One cluster's route goes while a client is connected: its state stays until that client closes.
    const held = client('churn-0');
    await held.connect();
    routes.delete(names);
    assert.equal(proxy.clusterStateCount, baseline + 1, 'only the cluster with a connection is left');
    assert.equal(await metrics.seriesOf('churn-1'), 0, 'a pruned cluster has no metric series');
    await held.end();
    await eventually('the last churned cluster to be pruned once its connection closed', async () => (proxy.clusterStateCount === baseline ? true : undefined), 10_000);
    assert.equal(await metrics.seriesOf('churn-0'), 0);
  });
});
