/**
 * The one server certificate the proxy presents, `*.<domain>`, so that clients can use
 * `sslmode=verify-full sslrootcert=$CELLAR_HOME/ca.crt` against `<cluster>.<domain>`. The cell CA
 * and the openssl helpers are in src/pki.
 */
import { X509Certificate } from 'node:crypto';
import { readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import tls from 'node:tls';
import { assert } from '../lib/assert.js';
import {
  type CertificateAuthorityPaths,
  type KeyPair,
  assertHostName,
  dayMs,
  hostValidityDays,
  isIssuedAndFresh,
  issue,
  opensslConfig,
  parseKeyPair,
  readFileOrNull,
  withTemporaryDirectory,
  writeFileIfDifferent,
} from '../pki/ca.js';

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
  const nowMs = options.nowMs ?? Date.now;
  const certificate = await isIssuedAndFresh(ca, pair, options.renewBeforeMs, nowMs());
  if (certificate === null) return false;
  // One made before the names changed (a new CELLAR_DOMAIN) would fail verify-full.
  const names = proxyCertificateNames(domain);
  // checkHost answers with the name that matched: the wildcard for a cluster's name.
  if (certificate.checkHost(`cluster.${domain}`) !== names.wildcard) return false;
  for (const name of names.dns) if (certificate.checkHost(name, { wildcards: false }) !== name) return false;
  for (const address of names.ip) if (certificate.checkIP(address) !== address) return false;
  return true;
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
