/**
 * The cell CA, and the openssl helpers every certificate of the cell is made with: the proxy's
 * (src/proxy/tls.ts), the control plane's (control.ts) and the hosts' (hosts.ts).
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
import { currentAbortSignal } from '../lib/abort.js';
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

/** The CA certificate's PEM, as agents receive it. */
export async function caCertificatePem(ca: CertificateAuthorityPaths): Promise<string> {
  return readFile(ca.caCert, 'utf8');
}

/** SHA-256 of a PEM certificate's DER bytes, lower-case hex: what a join token pins. */
export function certificateSha256(pem: string): string {
  return new X509Certificate(pem).fingerprint256.replaceAll(':', '').toLowerCase();
}

/** A certificate's serial as Node reports it for a peer (upper-case hex): the form the store keeps. */
export function certificateSerial(pem: string): string {
  return new X509Certificate(pem).serialNumber.toUpperCase();
}

/**
 * Whether `pair` is a certificate of the current CA for its key, with more than `renewBeforeMs`
 * left at `nowMs`. Anything unparseable is not usable (it is replaced, not reported).
 */
export async function isIssuedAndFresh(ca: CertificateAuthorityPaths, pair: KeyPair, renewBeforeMs: number, nowMs: number): Promise<X509Certificate | null> {
  const authority = new X509Certificate(await readFile(ca.caCert, 'utf8'));
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(pair.cert);
    if (!certificate.checkPrivateKey(createPrivateKey(pair.key))) return null;
  } catch {
    return null;
  }
  // A certificate from an earlier CA (the tls directory was reset) would fail every peer.
  if (!certificate.checkIssued(authority) || !certificate.verify(authority.publicKey)) return null;
  if (Date.parse(certificate.validTo) - renewBeforeMs <= nowMs) return null;
  return certificate;
}

/** Runs `openssl req -x509` in `temporary` and returns the path of the key+certificate bundle. */
export async function issue(temporary: string, config: string, validityDays: number, signer: readonly string[]): Promise<string> {
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
export function opensslConfig(commonName: string, extensions: readonly string[]): string {
  assert(!/[\n\r\\$"]/.test(commonName), `common name ${JSON.stringify(commonName)} would break the openssl config`);
  return [
    '[req]', 'distinguished_name = dn', 'prompt = no', 'x509_extensions = ext',
    '[dn]', `CN = ${commonName}`,
    '[ext]', ...extensions,
    '',
  ].join('\n');
}

/** Runs openssl bounded by `opensslTimeoutMs` (and the current step's abort); resolves with what it printed. */
export function runOpenssl(args: readonly string[]): Promise<{ readonly stdout: string; readonly stderr: string }> {
  const signal = currentAbortSignal();
  return new Promise((resolve, reject) => {
    execFile(
      opensslCommand,
      args,
      {
        timeout: opensslTimeoutMs,
        killSignal: 'SIGKILL',
        maxBuffer: opensslOutputBytesMax,
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
        ...(signal === undefined ? {} : { signal }),
      },
      (error, stdout, stderr) => {
        if (error === null) resolve({ stdout, stderr });
        else reject(new Error(`openssl ${args[0] ?? ''} failed (${error.killed ? `killed after ${opensslTimeoutMs} ms` : `code ${String(error.code)}`}): ${stderr.trim()}`));
      },
    );
  });
}

export async function readFileOrNull(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    if (isErrorCode(error, 'ENOENT')) return null;
    throw error;
  }
}

export function parseKeyPair(text: string): KeyPair | null {
  const key = /-----BEGIN PRIVATE KEY-----\n[^-]+-----END PRIVATE KEY-----\n/.exec(text)?.[0];
  const cert = /-----BEGIN CERTIFICATE-----\n[^-]+-----END CERTIFICATE-----\n/.exec(text)?.[0];
  return key === undefined || cert === undefined ? null : { key, cert };
}

export async function writeFileIfDifferent(path: string, content: string, mode: number): Promise<void> {
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

export async function withTemporaryDirectory<T>(parent: string, body: (temporary: string) => Promise<T>): Promise<T> {
  // Inside `parent` so the final rename stays on one file system.
  const temporary = await mkdtemp(join(parent, '.tmp-'));
  try {
    return await body(temporary);
  } finally {
    await rm(temporary, { recursive: true, force: true });
  }
}

export function isErrorCode(error: unknown, code: string): boolean {
  return error instanceof Error && (error as NodeJS.ErrnoException).code === code;
}
