import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import { promisify } from 'node:util';
import {
  SecureContextCache,
  assertHostName,
  ensureCellCa,
  ensureHostCertificate,
  hostValidityDays,
  issueHostCertificate,
  renewBeforeDays,
  type CertificateAuthorityPaths,
} from '../src/proxy/tls.js';

const execFileAsync = promisify(execFile);
const dayMs = 24 * 60 * 60 * 1000;
const connectTimeoutMs = 5_000;

interface Handshake {
  readonly authorized: boolean;
  readonly subjectAltName: string | undefined;
  readonly greeting: string;
}

/** Serves `hello` over TLS with certificates chosen by SNI from `cache`. */
async function startServer(cache: SecureContextCache): Promise<{ server: tls.Server; port: number }> {
  const server = tls.createServer(
    {
      SNICallback: (serverName, callback) => {
        cache.get(serverName).then(
          (context) => callback(null, context),
          (error: Error) => callback(error),
        );
      },
    },
    (socket) => socket.end('hello'),
  );
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
      resolve({ authorized: socket.authorized, subjectAltName: socket.getPeerCertificate().subjectaltname, greeting });
      socket.end();
    });
  });
}

describe('cell CA and host certificates', () => {
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
      // The host certificate signed with the winning key must verify against the published ca.crt.
      const raceCa = results[0]!;
      await issueHostCertificate(raceCa, 'race.cellar.localhost');
      await execFileAsync('openssl', ['verify', '-CAfile', join(raceHome, 'ca.crt'), join(raceCa.dir, 'hosts', 'race.cellar.localhost.crt')]);
    } finally {
      await rm(raceHome, { recursive: true, force: true });
    }
  });

  test('a real TLS client trusting only $home/ca.crt verifies SNI certificates, generated on demand, and rejects the wrong name', async () => {
    const cache = new SecureContextCache(ca);
    const { server, port } = await startServer(cache);
    try {
      const trust = { ca: await readFile(join(home, 'ca.crt')), checkServerIdentity: tls.checkServerIdentity };
      const app = await connect(port, { servername: 'app.cellar.localhost', ...trust });
      assert.deepEqual(app, { authorized: true, subjectAltName: 'DNS:app.cellar.localhost', greeting: 'hello' });
      const other = await connect(port, { servername: 'other.cellar.localhost', ...trust });
      assert.deepEqual(other, { authorized: true, subjectAltName: 'DNS:other.cellar.localhost', greeting: 'hello' });
      await assert.rejects(
        connect(port, {
          servername: 'app.cellar.localhost',
          ca: trust.ca,
          checkServerIdentity: (_host, certificate) => tls.checkServerIdentity('evil.example', certificate),
        }),
        { code: 'ERR_TLS_CERT_ALTNAME_INVALID' },
      );
      // Without the cell CA the same certificate is untrusted: the CA, not luck, makes it verify.
      await assert.rejects(connect(port, { servername: 'app.cellar.localhost' }), { code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' });
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  test('openssl verify -CAfile $home/ca.crt accepts a host certificate, which names the host and serves TLS clients for 397 days', async () => {
    const pair = await ensureHostCertificate(ca, 'app.cellar.localhost');
    const hostCert = join(ca.dir, 'hosts', 'app.cellar.localhost.crt');
    assert.equal(await readFile(hostCert, 'utf8'), pair.cert);
    assert.equal((await stat(join(ca.dir, 'hosts', 'app.cellar.localhost.key'))).mode & 0o777, 0o600);
    const { stdout } = await execFileAsync('openssl', ['verify', '-CAfile', join(home, 'ca.crt'), '-purpose', 'sslserver', hostCert]);
    assert.equal(stdout.trim(), `${hostCert}: OK`);
    const certificate = new X509Certificate(pair.cert);
    assert.equal(certificate.subjectAltName, 'DNS:app.cellar.localhost');
    assert.deepEqual(certificate.keyUsage, ['1.3.6.1.5.5.7.3.1']); // serverAuth
    const validDays = (Date.parse(certificate.validTo) - Date.parse(certificate.validFrom)) / dayMs;
    assert.ok(Math.abs(validDays - hostValidityDays) < 1, `host certificate valid for ${validDays} days`);
  });

  test('a cached host certificate is reused while it is far from expiry', async () => {
    const first = await ensureHostCertificate(ca, 'reuse.cellar.localhost');
    const second = await ensureHostCertificate(ca, 'reuse.cellar.localhost');
    assert.deepEqual(second, first);
  });

  test(`a host certificate expiring within ${renewBeforeDays} days is replaced by a fresh one`, async () => {
    const shortLived = await issueHostCertificate(ca, 'renew.cellar.localhost', 1);
    const renewed = await ensureHostCertificate(ca, 'renew.cellar.localhost');
    assert.notEqual(renewed.cert, shortLived.cert);
    assert.notEqual(renewed.key, shortLived.key);
    const remainingDays = (Date.parse(new X509Certificate(renewed.cert).validTo) - Date.now()) / dayMs;
    assert.ok(remainingDays > hostValidityDays - 1, `renewed certificate has ${remainingDays} days left`);
    assert.equal(await readFile(join(ca.dir, 'hosts', 'renew.cellar.localhost.crt'), 'utf8'), renewed.cert);
  });

  test('a host certificate from a previous CA is replaced by one the current CA signed', async () => {
    const otherHome = await mkdtemp(join(tmpdir(), 'cellar-tls-other-'));
    try {
      const otherCa = await ensureCellCa(otherHome);
      const foreign = await issueHostCertificate({ ...otherCa, dir: ca.dir }, 'moved.cellar.localhost');
      const replaced = await ensureHostCertificate(ca, 'moved.cellar.localhost');
      assert.notEqual(replaced.cert, foreign.cert);
      assert.ok(new X509Certificate(replaced.cert).checkIssued(new X509Certificate(await readFile(ca.caCert, 'utf8'))));
    } finally {
      await rm(otherHome, { recursive: true, force: true });
    }
  });

  test('SecureContextCache shares one generation between concurrent requests and holds at most entriesMax names', async () => {
    const cache = new SecureContextCache(ca, { entriesMax: 2 });
    const contexts = await Promise.all(Array.from({ length: 5 }, () => cache.get('flight.cellar.localhost')));
    for (const context of contexts) assert.equal(context, contexts[0]);
    assert.equal(await cache.get('flight.cellar.localhost'), contexts[0]);
    await cache.get('b.cellar.localhost');
    await cache.get('c.cellar.localhost');
    assert.equal(cache.size, 2);
    // flight was the least recently used, so it was dropped and is built afresh.
    assert.notEqual(await cache.get('flight.cellar.localhost'), contexts[0]);
  });

  test('SecureContextCache rejects a bad server name and does not cache the failure', async () => {
    const cache = new SecureContextCache(ca);
    await assert.rejects(cache.get('../etc'), { code: 'CELLAR_E_INVALID' });
    assert.equal(cache.size, 0);
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
