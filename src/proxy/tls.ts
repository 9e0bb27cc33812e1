/**
 * The cell CA and the per-cluster server certificates the proxy presents, so that clients can use
 * `sslmode=verify-full sslrootcert=$CELLAR_HOME/ca.crt` against `<cluster>.<domain>`.
 *
 * Node's crypto cannot issue X.509 certificates, so this shells out to the `openssl` CLI (3.0+).
 * Private keys never travel on argv: openssl writes them into a private temporary directory.
 *
 * On disk, `<x>.key` holds the private key followed by its certificate, so one atomic rename (or
 * link, for the CA) commits the pair and no reader or racing writer can see a key with another
 * key's certificate. `<x>.crt` is a copy of the certificate for people and for `openssl verify`.
 */
import { execFile } from 'node:child_process';
import { X509Certificate, createPrivateKey, randomBytes } from 'node:crypto';
import { chmod, link, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import tls from 'node:tls';
import { assert } from '../lib/assert.js';
import { invalid } from '../lib/errors.js';

export const caValidityDays = 3650;
/** The most browsers and Apple clients accept for a server certificate. */
export const hostValidityDays = 397;
export const renewBeforeDays = 30;
export const opensslTimeoutMs = 10_000;
export const secureContextsMax = 1024;
/** 253 characters is the longest name DNS can carry (255 octets on the wire). */
export const hostNameLengthMax = 253;
export const hostLabelLengthMax = 63;

const opensslCommand = 'openssl';
const opensslOutputBytesMax = 64 * 1024;
const dayMs = 24 * 60 * 60 * 1000;

export interface CertificateAuthorityPaths {
  readonly dir: string;
  readonly caCert: string;
  readonly caKey: string;
}

export interface KeyPair {
  readonly key: string;
  readonly cert: string;
}

const hostLabelPattern = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/;

/** Host names reach an openssl config file and a file name, so only plain DNS names pass. */
export function assertHostName(name: string): void {
  if (name.length === 0) throw invalid('hostName', 'host name is empty');
  if (name.length > hostNameLengthMax) {
    throw invalid('hostName', `host name is ${name.length} characters long, more than ${hostNameLengthMax}`);
  }
  for (const label of name.split('.')) {
    if (label.length === 0) throw invalid('hostName', `host name ${JSON.stringify(name)} has an empty label`);
    if (label.length > hostLabelLengthMax) {
      throw invalid('hostName', `host name label ${JSON.stringify(label)} is ${label.length} characters long, more than ${hostLabelLengthMax}`);
    }
    if (!hostLabelPattern.test(label)) {
      throw invalid('hostName', `host name label ${JSON.stringify(label)} must be lower-case a-z, 0-9 and '-', not starting or ending with '-'`);
    }
  }
}

/** Creates the cell CA the first time; afterwards (or when another process won the race) reuses it. */
export async function ensureCellCa(home: string): Promise<CertificateAuthorityPaths> {
  const dir = join(home, 'tls');
  const ca: CertificateAuthorityPaths = { dir, caCert: join(dir, 'ca.crt'), caKey: join(dir, 'ca.key') };
  await mkdir(dir, { recursive: true, mode: 0o700 });
  if ((await readFileOrNull(ca.caKey)) === null) await createCa(ca);
  const text = await readFileOrNull(ca.caKey);
  assert(text !== null, `the cell CA at ${ca.caKey} is missing right after it was created`);
  // Unlike a host certificate, a damaged CA cannot be quietly replaced: clients trust this one.
  const pair = parseKeyPair(text);
  assert(pair !== null, `${ca.caKey} does not hold a private key followed by its certificate`);
  const caCertificate = new X509Certificate(pair.cert);
  assert(caCertificate.ca, `${ca.caKey} holds a certificate that is not a CA`);
  // Both copies hold the same bytes in every process, so racing rewrites agree.
  await writeFileIfDifferent(ca.caCert, pair.cert, 0o644);
  await writeFileIfDifferent(join(home, 'ca.crt'), pair.cert, 0o644);
  return ca;
}

async function createCa(ca: CertificateAuthorityPaths): Promise<void> {
  const commonName = `Cellar cell CA ${randomBytes(4).toString('hex')}`;
  const config = opensslConfig(commonName, [
    'basicConstraints = critical,CA:TRUE,pathlen:0',
    'keyUsage = critical,keyCertSign,cRLSign',
    'subjectKeyIdentifier = hash',
  ]);
  await withTemporaryDirectory(ca.dir, async (temporary) => {
    const bundle = await issue(temporary, config, caValidityDays, []);
    // link() fails if ca.key exists: the first process to get here wins and the others use its CA.
    try {
      await link(bundle, ca.caKey);
    } catch (error) {
      if (!isErrorCode(error, 'EEXIST')) throw error;
    }
  });
}

/** Returns the cached certificate for `name`, issuing a new one if it is absent, foreign or about to expire. */
export async function ensureHostCertificate(ca: CertificateAuthorityPaths, name: string): Promise<KeyPair> {
  assertHostName(name);
  const text = await readFileOrNull(hostKeyPath(ca, name));
  // The hosts directory is a cache: anything unreadable in it is replaced, not reported.
  const cached = text === null ? null : parseKeyPair(text);
  if (cached !== null && (await isUsableHostCertificate(ca, name, cached))) return cached;
  return issueHostCertificate(ca, name);
}

/**
 * Issues and stores a certificate for `name` valid for `validityDays`, replacing any cached one.
 * Exported so tests can plant a certificate that is about to expire.
 */
export async function issueHostCertificate(ca: CertificateAuthorityPaths, name: string, validityDays = hostValidityDays): Promise<KeyPair> {
  assertHostName(name);
  assert(Number.isInteger(validityDays) && validityDays >= 1, `validityDays must be a positive integer, got ${validityDays}`);
  const hostsDir = join(ca.dir, 'hosts');
  await mkdir(hostsDir, { recursive: true, mode: 0o700 });
  const config = opensslConfig(name, [
    'basicConstraints = critical,CA:FALSE',
    'keyUsage = critical,digitalSignature',
    'extendedKeyUsage = serverAuth',
    `subjectAltName = DNS:${name}`,
    'subjectKeyIdentifier = hash',
    'authorityKeyIdentifier = keyid,issuer',
  ]);
  return withTemporaryDirectory(hostsDir, async (temporary) => {
    const bundle = await issue(temporary, config, validityDays, ['-CA', ca.caCert, '-CAkey', ca.caKey]);
    const pair = parseKeyPair(await readFile(bundle, 'utf8'));
    assert(pair !== null, `openssl wrote no key and certificate for ${name}`);
    // rename() replaces atomically: a reader sees the old pair or the new one, never half of each.
    await rename(bundle, hostKeyPath(ca, name));
    await writeFileIfDifferent(join(hostsDir, `${name}.crt`), pair.cert, 0o644);
    return pair;
  });
}

function hostKeyPath(ca: CertificateAuthorityPaths, name: string): string {
  return join(ca.dir, 'hosts', `${name}.key`);
}

async function isUsableHostCertificate(ca: CertificateAuthorityPaths, name: string, pair: KeyPair): Promise<boolean> {
  const authority = new X509Certificate(await readFile(ca.caCert, 'utf8'));
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(pair.cert);
    if (!certificate.checkPrivateKey(createPrivateKey(pair.key))) return false;
  } catch {
    return false; // Not parseable: replace it like any other unusable cache entry.
  }
  // A certificate from an earlier CA (the tls directory was reset) would fail every client.
  if (!certificate.checkIssued(authority) || !certificate.verify(authority.publicKey)) return false;
  if (certificate.checkHost(name) !== name) return false;
  return Date.parse(certificate.validTo) - Date.now() > renewBeforeDays * dayMs;
}

interface SecureContextEntry {
  readonly pair: Promise<KeyPair>;
  readonly context: Promise<tls.SecureContext>;
  /** Set once the context is built: when its certificate enters the renewal window. */
  renewAtMs: number | undefined;
}

/** A bounded, least-recently-used map from server name to TLS context, for an SNICallback. */
export class SecureContextCache {
  readonly #ca: CertificateAuthorityPaths;
  readonly #entriesMax: number;
  // Map iteration order is insertion order and get() re-inserts, so the first key is the least recently used.
  readonly #entries = new Map<string, SecureContextEntry>();

  constructor(ca: CertificateAuthorityPaths, options?: { entriesMax?: number }) {
    const entriesMax = options?.entriesMax ?? secureContextsMax;
    assert(Number.isInteger(entriesMax) && entriesMax >= 1, `entriesMax must be a positive integer, got ${entriesMax}`);
    this.#ca = ca;
    this.#entriesMax = entriesMax;
  }

  get size(): number {
    return this.#entries.size;
  }

  get(serverName: string): Promise<tls.SecureContext> {
    return this.#entry(serverName).context;
  }

  /** The key and certificate behind `get`, for TLS terminated outside Node (the native relay). */
  keyPair(serverName: string): Promise<KeyPair> {
    return this.#entry(serverName).pair;
  }

  #entry(serverName: string): SecureContextEntry {
    // No await before the entry is in the map: concurrent callers for one name share one generation.
    let entry = this.#entries.get(serverName);
    // A process that runs past renewal must not keep serving a certificate that is about to lapse.
    if (entry === undefined || (entry.renewAtMs !== undefined && entry.renewAtMs <= Date.now())) entry = this.#build(serverName);
    this.#entries.delete(serverName);
    this.#entries.set(serverName, entry);
    while (this.#entries.size > this.#entriesMax) {
      const oldest = this.#entries.keys().next();
      assert(oldest.done !== true, 'a cache over its size limit has no entries');
      this.#entries.delete(oldest.value);
    }
    return entry;
  }

  #build(serverName: string): SecureContextEntry {
    const pair = ensureHostCertificate(this.#ca, serverName);
    const entry: SecureContextEntry = {
      pair,
      context: pair.then((issued) => {
        entry.renewAtMs = Date.parse(new X509Certificate(issued.cert).validTo) - renewBeforeDays * dayMs;
        return tls.createSecureContext({ key: issued.key, cert: issued.cert });
      }),
      renewAtMs: undefined,
    };
    // A failure is not cached: the next handshake for the name tries again.
    entry.context.catch(() => {
      if (this.#entries.get(serverName) === entry) this.#entries.delete(serverName);
    });
    return entry;
  }
}

/** Runs `openssl req -x509` in `temporary` and returns the path of the key+certificate bundle. */
async function issue(temporary: string, config: string, validityDays: number, signer: readonly string[]): Promise<string> {
  const configPath = join(temporary, 'openssl.cnf');
  const keyPath = join(temporary, 'new.key');
  const certPath = join(temporary, 'new.crt');
  await writeFile(configPath, config, { mode: 0o600 });
  await runOpenssl([
    'req', '-x509', '-config', configPath,
    '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-noenc',
    '-keyout', keyPath, '-out', certPath, '-days', String(validityDays),
    ...signer,
  ]);
  const bundlePath = join(temporary, 'bundle.key');
  await writeFile(bundlePath, (await readFile(keyPath, 'utf8')) + (await readFile(certPath, 'utf8')), { mode: 0o600 });
  await chmod(bundlePath, 0o600);
  return bundlePath;
}

/** The subject and extensions go in a config file: it keeps argv free of names and needs no system openssl.cnf. */
function opensslConfig(commonName: string, extensions: readonly string[]): string {
  assert(!/[\n\r\\$"]/.test(commonName), `common name ${JSON.stringify(commonName)} would break the openssl config`);
  return [
    '[req]', 'distinguished_name = dn', 'prompt = no', 'x509_extensions = ext',
    '[dn]', `CN = ${commonName}`,
    '[ext]', ...extensions,
    '',
  ].join('\n');
}

function runOpenssl(args: readonly string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(
      opensslCommand,
      args,
      { timeout: opensslTimeoutMs, killSignal: 'SIGKILL', maxBuffer: opensslOutputBytesMax, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } },
      (error, _stdout, stderr) => {
        if (error === null) resolve();
        else reject(new Error(`openssl ${args[0] ?? ''} failed (${error.killed ? `killed after ${opensslTimeoutMs} ms` : `code ${String(error.code)}`}): ${stderr.trim()}`));
      },
    );
  });
}

async function readFileOrNull(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    if (isErrorCode(error, 'ENOENT')) return null;
    throw error;
  }
}

function parseKeyPair(text: string): KeyPair | null {
  const key = /-----BEGIN PRIVATE KEY-----\n[^-]+-----END PRIVATE KEY-----\n/.exec(text)?.[0];
  const cert = /-----BEGIN CERTIFICATE-----\n[^-]+-----END CERTIFICATE-----\n/.exec(text)?.[0];
  return key === undefined || cert === undefined ? null : { key, cert };
}

async function writeFileIfDifferent(path: string, content: string, mode: number): Promise<void> {
  const current = await readFile(path, 'utf8').catch(() => null);
  if (current === content) return;
  const temporary = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await writeFile(temporary, content, { mode });
    await chmod(temporary, mode); // writeFile's mode is filtered by the umask.
    await rename(temporary, path);
  } finally {
    await rm(temporary, { force: true });
  }
}

async function withTemporaryDirectory<T>(parent: string, body: (temporary: string) => Promise<T>): Promise<T> {
  // Inside `parent` so the final rename stays on one file system.
  const temporary = await mkdtemp(join(parent, '.tmp-'));
  try {
    return await body(temporary);
  } finally {
    await rm(temporary, { recursive: true, force: true });
  }
}

function isErrorCode(error: unknown, code: string): boolean {
  return error instanceof Error && (error as NodeJS.ErrnoException).code === code;
}
