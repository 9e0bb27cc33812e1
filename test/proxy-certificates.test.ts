import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { X509Certificate, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { lstat, readFile, readdir, stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import type { ClusterView } from '../src/api/view.js';
import { loadConfig } from '../src/config.js';
import { makeLogger } from '../src/lib/log.js';
import { testPort } from './helpers/ports.js';

/** Fresh ports for a second proxy are picked again after a collision this many times at most. */
const portAttemptsMax = 5;
import { type RunningProxy, routesSnapshotFile, startProxy } from '../src/proxy/main.js';
import { metricsTokenFileName } from '../src/proxy/metrics.js';
import { dayMs, ensureCellCa, hostValidityDays } from '../src/pki/ca.js';
import { issueProxyCertificate } from '../src/proxy/tls.js';
import { TestCellar } from './helpers/cellar.js';
import { postgresTool } from './helpers/tools.js';

/** The proxy makes no key material for what clients send, renews its one certificate, and keeps its metrics to the operator. */

const psqlBin = await postgresTool('psql');
const domain = 'cellar.localhost';
const floodHandshakes = 50;
const handshakeTimeoutMs = 5_000;
const wildcardNames = 'DNS:*.cellar.localhost, DNS:cellar.localhost, DNS:localhost, IP Address:127.0.0.1';

function psql(conninfo: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(psqlBin, ['-X', '-A', '-t', conninfo, '-c', 'select current_user'], { env: { ...process.env, PGGSSENCMODE: 'disable', PGCONNECT_TIMEOUT: '5' }, timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stdout: stdout.trim(), stderr: stderr.trim() });
    });
  });
}

/**
 * Every path under `root`, except the subtrees only Postgres servers write (a data directory,
 * which holds PG_VERSION, and the backup store's WAL archive): they change on their own.
 */
async function listTree(root: string): Promise<string[]> {
  const paths: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    const entries = await readdir(dir).catch((): string[] => []);
    if (entries.includes('PG_VERSION') || (dir.endsWith('/wal') && dir.includes('/backups/'))) return;
    for (const entry of entries) {
      const path = join(dir, entry);
      paths.push(path);
      if ((await lstat(path).catch(() => null))?.isDirectory() === true) await walk(path);
    }
  };
  await walk(root);
  return paths.sort();
}

/**
 * Every path under the home and the data directory, but the route snapshot's temporary file: route
 * polls rewrite the snapshot whenever a route changes (an LSN moves), handshakes never do.
 */
async function listHomeAndData(cellar: TestCellar): Promise<string[]> {
  const routesTemporary = join(cellar.home, `${routesSnapshotFile}.tmp`);
  return [...(await listTree(cellar.home)), ...(await listTree(cellar.dataDir))].filter((path) => path !== routesTemporary);
}

/** `count` server names: random labels under the domain, deeper names under it, and names that have nothing to do with it. */
function randomServerNames(count: number): string[] {
  const label = () => `x${randomBytes(6).toString('hex')}`;
  const shapes = [() => `${label()}.${domain}`, () => `${label()}.${label()}.${domain}`, () => `${label()}.example.com`, () => `${label()}.internal`, () => label()];
  return Array.from({ length: count }, (_, index) => (shapes[index % shapes.length] as () => string)());
}

interface Presented {
  readonly serialNumber: string;
  readonly subjectAltName: string | undefined;
  readonly validTo: string;
}

/** One TLS handshake as `servername`, after an SSLRequest or direct (ALPN postgresql); the certificate the proxy presented. */
async function handshake(port: number, servername: string, direct: boolean): Promise<Presented> {
  const options = { servername, rejectUnauthorized: false, ALPNProtocols: ['postgresql'] };
  let secure: tls.TLSSocket;
  if (direct) {
    secure = tls.connect({ host: '127.0.0.1', port, ...options });
  } else {
    const socket = connect({ host: '127.0.0.1', port });
    socket.setTimeout(handshakeTimeoutMs, () => socket.destroy(new Error(`no answer to SSLRequest within ${handshakeTimeoutMs} ms`)));
    await once(socket, 'connect');
    const sslRequest = Buffer.alloc(8);
    sslRequest.writeInt32BE(8, 0);
    sslRequest.writeInt32BE(80877103, 4);
    socket.write(sslRequest);
    const [answer] = (await once(socket, 'data')) as [Buffer];
    assert.equal(answer.toString(), 'S', 'the proxy accepts the SSLRequest');
    socket.setTimeout(0);
    secure = tls.connect({ socket, ...options });
  }
  secure.setTimeout(handshakeTimeoutMs, () => secure.destroy(new Error(`no TLS handshake within ${handshakeTimeoutMs} ms`)));
  try {
    await once(secure, 'secureConnect');
    const peer = secure.getPeerCertificate();
    return { serialNumber: peer.serialNumber, subjectAltName: peer.subjectaltname, validTo: peer.valid_to };
  } finally {
    secure.destroy();
  }
}

/** `floodHandshakes` handshakes with random names, half after an SSLRequest and half direct; the certificates presented. */
async function flood(port: number): Promise<Presented[]> {
  const presented: Presented[] = [];
  for (const [index, name] of randomServerNames(floodHandshakes).entries()) presented.push(await handshake(port, name, index % 2 === 0));
  return presented;
}

function metrics(port: number, authorization?: string, path = '/metrics'): Promise<Response> {
  return fetch(`http://127.0.0.1:${port}${path}`, authorization === undefined ? {} : { headers: { authorization } });
}

describe('proxy certificates and metrics', () => {
  let cellar: TestCellar;
  let routeKey: string;
  let password: string;
  let proxyPort: number;

  before(async () => {
    cellar = await TestCellar.create();
    await cellar.start();
    const app = await cellar.cliJson<ClusterView>(['clusters', 'create', 'app', '--wait']);
    routeKey = app.routeKey ?? assert.fail('the created cluster has no route key');
    const uri = new URL(app.uri as string);
    password = decodeURIComponent(uri.password);
    proxyPort = Number(uri.port);
  });

  after(async () => {
    await cellar.destroy();
  });

  /** verify-full against CLUSTER.<domain> with only the cell CA trusted, through the proxy on `port`. */
  async function assertVerifyFull(port: number): Promise<void> {
    const caFile = join(cellar.home, 'ca.crt');
    const result = await psql(`host=${routeKey}.${domain} hostaddr=127.0.0.1 port=${port} user=app dbname=app sslmode=verify-full sslrootcert=${caFile} password=${password}`);
    assert.deepEqual([result.code, result.stdout], [0, 'app'], result.stderr);
  }

  /**
   * A second proxy on fresh ports for this Cellar, in this process, with TLS terminated in JavaScript.
   * A port that was free a moment ago can be taken by then (an outgoing connection's local port):
   * then it tries other ports, a bounded number of times.
   */
  async function startSecondProxy(extraEnv: Record<string, string> = {}): Promise<{ proxy: RunningProxy; port: number; adminPort: number }> {
    for (let attempt = 1; attempt <= portAttemptsMax; attempt++) {
      const ports = await Promise.all([testPort(), testPort(), testPort()]);
      const [port, readOnlyPort, adminPort] = ports;
      if (new Set(ports).size < ports.length) continue;
      const config = loadConfig({
        ...cellar.env,
        CELLAR_PROXY_PORT: String(port),
        CELLAR_PROXY_RO_PORT: String(readOnlyPort),
        CELLAR_PROXY_ADMIN_PORT: String(adminPort),
        CELLAR_PROXY_NATIVE_RELAY: 'false',
        ...extraEnv,
      });
      try {
        return { proxy: await startProxy(config, makeLogger('warn', process.stderr)), port, adminPort };
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error;
      }
    }
    throw new Error(`no three free ports for a second proxy in ${portAttemptsMax} attempts`);
  }

  test(`a flood of ${floodHandshakes} TLS handshakes with random server names (native relay) creates no file and gets the one wildcard certificate; verify-full still works`, async () => {
    const filesBefore = await listHomeAndData(cellar);
    // The listing reaches where certificates live (so a per-name file would show) and the cluster's files.
    assert.ok(filesBefore.includes(join(cellar.home, 'tls', 'proxy.key')) && filesBefore.some((path) => path.startsWith(cellar.dataDir)));
    const presented = await flood(proxyPort);
    assert.deepEqual(await listHomeAndData(cellar), filesBefore);
    const forCluster = await handshake(proxyPort, `${routeKey}.${domain}`, false);
    assert.equal(forCluster.subjectAltName, wildcardNames);
    for (const each of presented) assert.deepEqual(each, forCluster, 'every name gets the same certificate');
    await assertVerifyFull(proxyPort);
  });

  test('a proxy started with a certificate on disk within the renewal margin replaces it; with a smaller margin (CELLAR_PROXY_CERTIFICATE_RENEW_DAYS) it keeps it', async () => {
    const ca = await ensureCellCa(cellar.home);
    const planted = new X509Certificate((await issueProxyCertificate(ca, domain, 20)).cert);
    const keeping = await startSecondProxy({ CELLAR_PROXY_CERTIFICATE_RENEW_DAYS: '10' });
    try {
      const kept = await handshake(keeping.port, `${routeKey}.${domain}`, true);
      assert.equal(kept.serialNumber, planted.serialNumber, '20 days left, 10-day margin: the certificate on disk serves');
    } finally {
      await keeping.proxy.stop();
    }
    const renewing = await startSecondProxy();
    try {
      const renewed = await handshake(renewing.port, `${routeKey}.${domain}`, false);
      assert.notEqual(renewed.serialNumber, planted.serialNumber, '20 days left, 30-day default margin: replaced at start');
      const daysLeft = (Date.parse(renewed.validTo) - Date.now()) / dayMs;
      assert.ok(daysLeft > hostValidityDays - 1, `the new certificate has ${daysLeft} days left`);
      assert.equal(new X509Certificate(await readFile(join(ca.dir, 'proxy.crt'), 'utf8')).serialNumber, renewed.serialNumber, 'the fresh certificate replaced the one on disk');
      await assertVerifyFull(renewing.port);
    } finally {
      await renewing.proxy.stop();
    }
  });

  test(`a flood of ${floodHandshakes} TLS handshakes with random server names (TLS in JavaScript) creates no file; verify-full still works`, async () => {
    const second = await startSecondProxy();
    try {
      const filesBefore = await listHomeAndData(cellar);
      const presented = await flood(second.port);
      assert.deepEqual(await listHomeAndData(cellar), filesBefore);
      const forCluster = await handshake(second.port, `${routeKey}.${domain}`, true);
      for (const each of presented) assert.deepEqual(each, forCluster, 'every name gets the same certificate');
      await assertVerifyFull(second.port);
    } finally {
      await second.proxy.stop();
    }
  });

  test('/metrics answers 401 in the error shape without the token or with a wrong one, 200 with the token from $CELLAR_HOME (0600), which every proxy of the home shares', async () => {
    const adminPort = Number(cellar.env['CELLAR_PROXY_ADMIN_PORT']);
    const tokenFile = join(cellar.home, metricsTokenFileName);
    assert.equal((await stat(tokenFile)).mode & 0o777, 0o600);
    const token = await cellar.proxyMetricsToken();
    assert.match(token, /^[A-Za-z0-9_-]{43}$/);
    const wrongToken = `${token.slice(0, -1)}${token.endsWith('A') ? 'B' : 'A'}`;
    for (const authorization of [undefined, `Bearer ${wrongToken}`, `Bearer ${token}x`, `Basic ${token}`, 'Bearer']) {
      const response = await metrics(adminPort, authorization);
      assert.equal(response.status, 401, `${authorization ?? 'no header'}`);
      assert.equal(response.headers.get('www-authenticate'), 'Bearer realm="cellar-proxy-metrics"');
      const body = (await response.json()) as { error: { code: string; message: string } };
      assert.equal(body.error.code, 'CELLAR_E_UNAUTHENTICATED');
      assert.match(body.error.message, /proxy-metrics\.token/);
      assert.doesNotMatch(JSON.stringify(body), new RegExp(routeKey), 'no cluster is named to a client without the token');
    }
    const scraped = await metrics(adminPort, `Bearer ${token}`);
    assert.equal(scraped.status, 200);
    assert.match(await scraped.text(), /^cellar_proxy_routes \d+$/m);
    const unknownPath = await metrics(adminPort, `Bearer ${token}`, '/other');
    assert.equal(unknownPath.status, 404);
    assert.equal(((await unknownPath.json()) as { error: { code: string } }).error.code, 'CELLAR_E_NOT_FOUND');
    const second = await startSecondProxy();
    try {
      assert.equal((await metrics(second.adminPort, `Bearer ${token}`)).status, 200, 'the token is made once per home');
      assert.equal(await cellar.proxyMetricsToken(), token);
    } finally {
      await second.proxy.stop();
    }
  });
});
