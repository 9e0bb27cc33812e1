/**
 * The cell CA and the one server certificate the proxy presents, `*.<domain>`, so that clients can
 * use `sslmode=verify-full sslrootcert=$CELLAR_HOME/ca.crt` against `<cluster>.<domain>`.
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
export const opensslTimeoutMs = 10_000;
/** 253 characters is the longest name DNS can carry (255 octets on the wire). */
export const hostNameLengthMax = 253;
export const hostLabelLengthMax = 63;

const opensslCommand = 'openssl';
const opensslOutputBytesMax = 64 * 1024;
export const dayMs = 24 * 60 * 60 * 1000;

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

/** Where the proxy's certificate lives, as a key+certificate bundle like the CA's. */
export function proxyCertificatePaths(ca: CertificateAuthorityPaths): { readonly key: string; readonly cert: string } {
  return { key: join(ca.dir, 'proxy.key'), cert: join(ca.dir, 'proxy.crt') };
}

/**
 * The names the proxy's one certificate carries: every cluster as `*.<domain>` (one label, as
 * routing wants), the bare domain, and the loopback names a client may use to reach the proxy.
 */
export function proxyCertificateNames(domain: string): { readonly wildcard: string; readonly dns: readonly string[]; readonly ip: readonly string[] } {
  assertHostName(domain);
  return { wildcard: `*.${domain}`, dns: [domain, 'localhost'], ip: ['127.0.0.1'] };
}

export interface RenewalOptions {
  /** A certificate with less than this left is replaced. */
  readonly renewBeforeMs: number;
  /** The clock the margin is measured on; a seam for tests. */
  readonly nowMs?: () => number;
}

/**
 * The proxy's certificate from disk when it is usable (signed by the current CA, the right names,
 * more than the margin left), else a fresh one. Only the proxy's start and its renewal timer call
 * this: nothing a client sends makes key material.
 */
export async function ensureProxyCertificate(ca: CertificateAuthorityPaths, domain: string, options: RenewalOptions): Promise<KeyPair> {
  const text = await readFileOrNull(proxyCertificatePaths(ca).key);
  // Anything unreadable is replaced, not reported: the CA, not this file, is what clients trust.
  const current = text === null ? null : parseKeyPair(text);
  if (current !== null && (await isUsableProxyCertificate(ca, domain, current, options))) return current;
  return issueProxyCertificate(ca, domain);
}

/**
 * Issues and stores the proxy's certificate valid for `validityDays`, replacing the one on disk.
 * Exported so tests can plant a certificate that is about to expire.
 */
export async function issueProxyCertificate(ca: CertificateAuthorityPaths, domain: string, validityDays = hostValidityDays): Promise<KeyPair> {
  assert(Number.isInteger(validityDays) && validityDays >= 1, `validityDays must be a positive integer, got ${validityDays}`);
  const names = proxyCertificateNames(domain);
  const paths = proxyCertificatePaths(ca);
  const config = opensslConfig(names.wildcard, [
    'basicConstraints = critical,CA:FALSE',
    'keyUsage = critical,digitalSignature',
    'extendedKeyUsage = serverAuth',
    `subjectAltName = ${[names.wildcard, ...names.dns].map((name) => `DNS:${name}`).concat(names.ip.map((address) => `IP:${address}`)).join(',')}`,
    'subjectKeyIdentifier = hash',
    'authorityKeyIdentifier = keyid,issuer',
  ]);
  return withTemporaryDirectory(ca.dir, async (temporary) => {
    const bundle = await issue(temporary, config, validityDays, ['-CA', ca.caCert, '-CAkey', ca.caKey]);
    const pair = parseKeyPair(await readFile(bundle, 'utf8'));
    assert(pair !== null, `openssl wrote no key and certificate for *.${domain}`);
    // rename() replaces atomically: a reader sees the old pair or the new one, never half of each.
    await rename(bundle, paths.key);
    await writeFileIfDifferent(paths.cert, pair.cert, 0o644);
    return pair;
  });
}

/** When `pair` must be replaced: the renewal margin before it expires. */
export function renewAtMs(pair: KeyPair, renewBeforeMs: number): number {
  return Date.parse(new X509Certificate(pair.cert).validTo) - renewBeforeMs;
}

async function isUsableProxyCertificate(ca: CertificateAuthorityPaths, domain: string, pair: KeyPair, options: RenewalOptions): Promise<boolean> {
  const authority = new X509Certificate(await readFile(ca.caCert, 'utf8'));
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(pair.cert);
    if (!certificate.checkPrivateKey(createPrivateKey(pair.key))) return false;
  } catch {
    return false; // Not parseable: replace it like any other unusable file.
  }
  // A certificate from an earlier CA (the tls directory was reset) would fail every client.
  if (!certificate.checkIssued(authority) || !certificate.verify(authority.publicKey)) return false;
  // One made before the names changed (a new CELLAR_DOMAIN) would fail verify-full.
  const names = proxyCertificateNames(domain);
  // checkHost answers with the name that matched: the wildcard for a cluster's name.
  if (certificate.checkHost(`cluster.${domain}`) !== names.wildcard) return false;
  for (const name of names.dns) if (certificate.checkHost(name, { wildcards: false }) !== name) return false;
  for (const address of names.ip) if (certificate.checkIP(address) !== address) return false;
  const nowMs = options.nowMs ?? Date.now;
  return renewAtMs(pair, options.renewBeforeMs) > nowMs();
}

export interface ProxyCertificateOptions extends RenewalOptions {
  /** How often the renewal timer looks at the expiry date. */
  readonly checkIntervalMs: number;
  /** Told of each renewed certificate (the native relay's copy); a throw is logged like a failed renewal. */
  readonly onRenewed: (pair: KeyPair) => void;
  readonly onRenewalFailed: (error: unknown) => void;
}

/**
 * The one certificate the proxy presents for every server name, made or loaded at start and
 * replaced by a timer before it expires. Memory and files stay one certificate whatever clients send.
 */
export class ProxyCertificate {
  readonly #ca: CertificateAuthorityPaths;
  readonly #domain: string;
  readonly #options: ProxyCertificateOptions;
  #pair: KeyPair;
  #context: tls.SecureContext;
  #timer: NodeJS.Timeout | null = null;
  #renewing: Promise<void> | null = null;

  private constructor(ca: CertificateAuthorityPaths, domain: string, options: ProxyCertificateOptions, pair: KeyPair) {
    this.#ca = ca;
    this.#domain = domain;
    this.#options = options;
    this.#pair = pair;
    this.#context = tls.createSecureContext({ key: pair.key, cert: pair.cert });
  }

  static async start(ca: CertificateAuthorityPaths, domain: string, options: ProxyCertificateOptions): Promise<ProxyCertificate> {
    assert(Number.isInteger(options.checkIntervalMs) && options.checkIntervalMs >= 1, `checkIntervalMs must be a positive integer, got ${options.checkIntervalMs}`);
    assert(options.renewBeforeMs >= 0 && options.renewBeforeMs < hostValidityDays * dayMs, `renewBeforeMs must be below the validity of ${hostValidityDays} days, got ${options.renewBeforeMs}`);
    const certificate = new ProxyCertificate(ca, domain, options, await ensureProxyCertificate(ca, domain, options));
    certificate.#timer = setInterval(() => void certificate.renewIfDue(), options.checkIntervalMs);
    // The proxy's listeners keep the process alive, not a timer that runs once an hour.
    certificate.#timer.unref();
    return certificate;
  }

  get pair(): KeyPair {
    return this.#pair;
  }

  get secureContext(): tls.SecureContext {
    return this.#context;
  }

  /** No renewal starts after this; one already under way is awaited, so nothing writes the files after stop. */
  async stop(): Promise<void> {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    await this.#renewing;
  }

  /** Replaces the certificate when it is within the margin of expiry; one renewal at a time. */
  renewIfDue(): Promise<void> {
    const nowMs = this.#options.nowMs ?? Date.now;
    if (this.#renewing !== null || renewAtMs(this.#pair, this.#options.renewBeforeMs) > nowMs()) return this.#renewing ?? Promise.resolve();
    this.#renewing = this.#renew().finally(() => (this.#renewing = null));
    return this.#renewing;
  }

  async #renew(): Promise<void> {
    try {
      // Through the file: another proxy on this home may have renewed it already.
      const pair = await ensureProxyCertificate(this.#ca, this.#domain, this.#options);
      const context = tls.createSecureContext({ key: pair.key, cert: pair.cert });
      this.#pair = pair;
      this.#context = context;
      this.#options.onRenewed(pair);
    } catch (error) {
      // The old certificate still serves; the next check tries again.
      this.#options.onRenewalFailed(error);
    }
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
