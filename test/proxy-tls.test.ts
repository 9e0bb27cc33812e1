import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import { type AddressInfo, type Server, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { type CertificateAuthorityPaths, type KeyPair, assertHostName, dayMs, ensureCellCa, hostValidityDays } from '../src/pki/ca.js';
import { ProxyCertificate, type ProxyCertificateOptions, ensureProxyCertificate, issueProxyCertificate, proxyCertificatePaths } from '../src/proxy/tls.js';

const execFileAsync = promisify(execFile);
const connectTimeoutMs = 5_000;
const renewalWaitMsMax = 30_000;
const domain = 'cellar.localhost';
const renewBeforeMs = 30 * dayMs;
const wildcardNames = 'DNS:*.cellar.localhost, DNS:cellar.localhost, DNS:localhost, IP Address:127.0.0.1';

interface Handshake {
  readonly authorized: boolean;
  readonly subjectAltName: string | undefined;
  readonly serialNumber: string;
  readonly greeting: string;
}

/** Serves `hello` over TLS with whatever certificate `current` gives when a connection arrives, as the proxy does. */
async function startServer(current: () => tls.SecureContext): Promise<{ server: Server; port: number }> {
  const server = createServer((socket) => {
    const secure = new tls.TLSSocket(socket, { isServer: true, secureContext: current() });
    secure.on('error', () => socket.destroy());
    secure.once('secure', () => secure.end('hello'));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port };
}

function connect(port: number, options: tls.ConnectionOptions): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, timeout: connectTimeoutMs, ...options });
    let greeting = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (greeting += chunk));
    socket.on('timeout', () => socket.destroy(new Error(`no TLS handshake within ${connectTimeoutMs} ms`)));
    socket.on('error', reject);
    socket.on('end', () => {
      const peer = socket.getPeerCertificate();
      resolve({ authorized: socket.authorized, subjectAltName: peer.subjectaltname, serialNumber: peer.serialNumber, greeting });
      socket.end();
    });
  });
}

function daysLeft(pair: KeyPair, nowMs = Date.now()): number {
  return (Date.parse(new X509Certificate(pair.cert).validTo) - nowMs) / dayMs;
}

/** Options for a ProxyCertificate on a clock the test moves; `renewed` collects each renewal. */
function renewalOptions(clock: { nowMs: number }, renewed: KeyPair[], failures: unknown[]): ProxyCertificateOptions {
  return {
    renewBeforeMs,
    checkIntervalMs: 20,
    nowMs: () => clock.nowMs,
    onRenewed: (pair) => renewed.push(pair),
    onRenewalFailed: (error) => failures.push(error),
  };
}

async function waitFor(what: string, check: () => boolean): Promise<void> {
  const deadline = Date.now() + renewalWaitMsMax;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${renewalWaitMsMax} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe('cell CA and the proxy certificate', () => {
  let home: string;
  let ca: CertificateAuthorityPaths;

  before(async () => {
    home = await mkdtemp(join(tmpdir(), 'cellar-tls-'));
    ca = await ensureCellCa(home);
  });

  after(async () => {
    await rm(home, { recursive: true, force: true });
  });

  test('ensureCellCa is idempotent: a second call keeps the same CA, key 0600, cert 0644, $home/ca.crt equal to it', async () => {
    const caCertBefore = await readFile(ca.caCert, 'utf8');
    const caKeyBefore = await readFile(ca.caKey, 'utf8');
    const again = await ensureCellCa(home);
    assert.deepEqual(again, ca);
    assert.equal(await readFile(ca.caCert, 'utf8'), caCertBefore);
    assert.equal(await readFile(ca.caKey, 'utf8'), caKeyBefore);
    assert.equal((await stat(ca.caKey)).mode & 0o777, 0o600);
    assert.equal((await stat(ca.caCert)).mode & 0o777, 0o644);
    assert.equal(await readFile(join(home, 'ca.crt'), 'utf8'), caCertBefore);
    const certificate = new X509Certificate(caCertBefore);
    assert.equal(certificate.ca, true);
    assert.match(certificate.subject, /^CN=Cellar cell CA [0-9a-f]{8}$/);
    const validDays = (Date.parse(certificate.validTo) - Date.parse(certificate.validFrom)) / dayMs;
    assert.ok(Math.abs(validDays - 3650) < 1, `CA valid for ${validDays} days`);
  });

  test('concurrent ensureCellCa calls on a fresh home agree on one CA whose certificate matches its key', async () => {
    const raceHome = await mkdtemp(join(tmpdir(), 'cellar-tls-race-'));
    try {
      // Each caller reads $home/ca.crt as soon as its call returns: a later winner must not replace it.
      const seen = await Promise.all(
        Array.from({ length: 6 }, async () => {
          const result = await ensureCellCa(raceHome);
          return { result, caCert: await readFile(join(raceHome, 'ca.crt'), 'utf8') };
        }),
      );
      const results = seen.map((each) => each.result);
      const caCert = await readFile(join(raceHome, 'ca.crt'), 'utf8');
      for (const each of seen) assert.equal(each.caCert, caCert);
      const { stdout } = await execFileAsync('openssl', ['x509', '-in', results[0]!.caKey, '-noout', '-fingerprint']);
      const { stdout: expected } = await execFileAsync('openssl', ['x509', '-in', join(raceHome, 'ca.crt'), '-noout', '-fingerprint']);
      assert.equal(stdout, expected);
      // The proxy certificate signed with the winning key must verify against the published ca.crt.
      const raceCa = results[0]!;
      await issueProxyCertificate(raceCa, domain);
      await execFileAsync('openssl', ['verify', '-CAfile', join(raceHome, 'ca.crt'), proxyCertificatePaths(raceCa).cert]);
    } finally {
      await rm(raceHome, { recursive: true, force: true });
    }
  });

  test('a real TLS client trusting only $home/ca.crt verifies the one wildcard certificate for any cluster name, and rejects other names', async () => {
    const certificate = await ProxyCertificate.start(ca, domain, renewalOptions({ nowMs: Date.now() }, [], []));
    const { server, port } = await startServer(() => certificate.secureContext);
    try {
      const trust = { ca: await readFile(join(home, 'ca.crt')), checkServerIdentity: tls.checkServerIdentity };
      const app = await connect(port, { servername: 'app.cellar.localhost', ...trust });
      assert.deepEqual({ ...app, serialNumber: '' }, { authorized: true, subjectAltName: wildcardNames, serialNumber: '', greeting: 'hello' });
      const other = await connect(port, { servername: 'other.cellar.localhost', ...trust });
      assert.equal(other.serialNumber, app.serialNumber, 'every name gets the same certificate');
      const byAddress = await connect(port, trust);
      assert.equal(byAddress.authorized, true, 'a client that connects to 127.0.0.1 without a name verifies too');
      for (const wrongName of ['evil.example', 'a.b.cellar.localhost']) {
        await assert.rejects(
          connect(port, { servername: 'app.cellar.localhost', ca: trust.ca, checkServerIdentity: (_host, peer) => tls.checkServerIdentity(wrongName, peer) }),
          { code: 'ERR_TLS_CERT_ALTNAME_INVALID' },
          `${wrongName} is not covered`,
        );
      }
      // Without the cell CA the same certificate is untrusted: the CA, not luck, makes it verify.
      await assert.rejects(connect(port, { servername: 'app.cellar.localhost' }), { code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' });
    } finally {
      await certificate.stop();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  test('openssl verify -CAfile $home/ca.crt accepts the proxy certificate: key 0600, serverAuth, 397 days, no per-name files', async () => {
    const pair = await ensureProxyCertificate(ca, domain, { renewBeforeMs });
    const paths = proxyCertificatePaths(ca);
    assert.equal(await readFile(paths.cert, 'utf8'), pair.cert);
    assert.equal(await readFile(paths.key, 'utf8'), pair.key + pair.cert);
    assert.equal((await stat(paths.key)).mode & 0o777, 0o600);
    const { stdout } = await execFileAsync('openssl', ['verify', '-CAfile', join(home, 'ca.crt'), '-purpose', 'sslserver', paths.cert]);
    assert.equal(stdout.trim(), `${paths.cert}: OK`);
    const certificate = new X509Certificate(pair.cert);
    assert.equal(certificate.subjectAltName, wildcardNames);
    assert.deepEqual(certificate.keyUsage, ['1.3.6.1.5.5.7.3.1']); // serverAuth
    const validDays = (Date.parse(certificate.validTo) - Date.parse(certificate.validFrom)) / dayMs;
    assert.ok(Math.abs(validDays - hostValidityDays) < 1, `proxy certificate valid for ${validDays} days`);
    assert.deepEqual((await readdir(ca.dir)).sort(), ['ca.crt', 'ca.key', 'proxy.crt', 'proxy.key']);
  });

  test('the proxy certificate on disk is reused while it is far from expiry', async () => {
    const first = await ensureProxyCertificate(ca, domain, { renewBeforeMs });
    const second = await ensureProxyCertificate(ca, domain, { renewBeforeMs });
    assert.deepEqual(second, first);
  });

  test('a proxy certificate on disk with less than the renewal margin left is replaced by a fresh one', async () => {
    const shortLived = await issueProxyCertificate(ca, domain, 20);
    const renewed = await ensureProxyCertificate(ca, domain, { renewBeforeMs });
    assert.notEqual(renewed.cert, shortLived.cert);
    assert.notEqual(renewed.key, shortLived.key);
    assert.ok(daysLeft(renewed) > hostValidityDays - 1, `renewed certificate has ${daysLeft(renewed)} days left`);
    assert.equal(await readFile(proxyCertificatePaths(ca).cert, 'utf8'), renewed.cert);
    // With a smaller margin the same 20-day certificate is still good: the margin decides.
    const planted = await issueProxyCertificate(ca, domain, 20);
    assert.deepEqual(await ensureProxyCertificate(ca, domain, { renewBeforeMs: 10 * dayMs }), planted);
  });

  test('a proxy certificate from a previous CA, or for another domain, is replaced by one the current CA signed for this domain', async () => {
    const otherHome = await mkdtemp(join(tmpdir(), 'cellar-tls-other-'));
    try {
      const otherCa = await ensureCellCa(otherHome);
      const foreign = await issueProxyCertificate({ ...otherCa, dir: ca.dir }, domain);
      const replaced = await ensureProxyCertificate(ca, domain, { renewBeforeMs });
      assert.notEqual(replaced.cert, foreign.cert);
      assert.ok(new X509Certificate(replaced.cert).checkIssued(new X509Certificate(await readFile(ca.caCert, 'utf8'))));
      const otherDomain = await issueProxyCertificate(ca, 'other.localhost');
      const forThisDomain = await ensureProxyCertificate(ca, domain, { renewBeforeMs });
      assert.notEqual(forThisDomain.cert, otherDomain.cert);
      assert.equal(new X509Certificate(forThisDomain.cert).subjectAltName, wildcardNames);
    } finally {
      await rm(otherHome, { recursive: true, force: true });
    }
  });

  test('the renewal timer replaces the certificate once it comes within the margin, and TLS clients get the new one', async () => {
    const planted = await issueProxyCertificate(ca, domain, 40);
    const clock = { nowMs: Date.now() };
    const renewed: KeyPair[] = [];
    const failures: unknown[] = [];
    const certificate = await ProxyCertificate.start(ca, domain, renewalOptions(clock, renewed, failures));
    const { server, port } = await startServer(() => certificate.secureContext);
    try {
      assert.deepEqual(certificate.pair, planted, '40 days left is outside the 30-day margin: kept at start');
      const trust = { ca: await readFile(join(home, 'ca.crt')), servername: 'app.cellar.localhost' };
      const before = await connect(port, trust);
      clock.nowMs += 15 * dayMs;
      await waitFor('the renewal', () => renewed.length > 0);
      assert.deepEqual(failures, []);
      assert.equal(renewed.length, 1);
      assert.deepEqual(certificate.pair, renewed[0]);
      assert.notEqual(certificate.pair.key, planted.key);
      assert.ok(daysLeft(certificate.pair) > hostValidityDays - 1, `renewed certificate has ${daysLeft(certificate.pair)} days left`);
      assert.equal(await readFile(proxyCertificatePaths(ca).cert, 'utf8'), certificate.pair.cert);
      const after = await connect(port, trust);
      assert.equal(after.authorized, true);
      assert.notEqual(after.serialNumber, before.serialNumber, 'new handshakes get the renewed certificate');
      await certificate.renewIfDue();
      assert.equal(renewed.length, 1, 'a fresh certificate is not renewed again');
    } finally {
      await certificate.stop();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  test('a renewal that fails keeps the current certificate serving and reports the failure', async () => {
    const planted = await issueProxyCertificate(ca, domain, 40);
    const clock = { nowMs: Date.now() };
    const renewed: KeyPair[] = [];
    const failures: unknown[] = [];
    // The CA key is gone: openssl cannot sign.
    const certificate = await ProxyCertificate.start({ ...ca, caKey: join(home, 'missing.key') }, domain, renewalOptions(clock, renewed, failures));
    try {
      clock.nowMs += 15 * dayMs;
      await waitFor('the failed renewal', () => failures.length > 0);
      await certificate.stop();
      assert.deepEqual(renewed, []);
      assert.deepEqual(certificate.pair, planted);
      assert.match(String(failures[0]), /openssl req failed/);
    } finally {
      await certificate.stop();
    }
  });
});

test('assertHostName accepts lower-case DNS names and rejects path tricks, upper case, edge hyphens and long labels', () => {
  assert.doesNotThrow(() => assertHostName('app.cellar.localhost'));
  assert.doesNotThrow(() => assertHostName('a-1.b'));
  assert.doesNotThrow(() => assertHostName(`${'a'.repeat(63)}.b`));
  for (const bad of ['../x', 'A.b', '-a.b', 'a-.b', `${'a'.repeat(64)}.b`, '', 'a..b', 'a.b.', 'a b.c', 'a_b.c', `${'a.'.repeat(127)}ab`]) {
    assert.throws(() => assertHostName(bad), { code: 'CELLAR_E_INVALID' }, `accepted ${JSON.stringify(bad)}`);
  }
  assert.throws(() => assertHostName(`${'a'.repeat(64)}.b`), /64 characters long, more than 63/);
  assert.throws(() => assertHostName('A.b'), /label "A" must be lower-case/);
});
