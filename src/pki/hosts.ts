import { X509Certificate, createPublicKey, randomBytes } from 'node:crypto';
import { chmod, readFile, rename, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { assert } from '../lib/assert.js';
import { invalid } from '../lib/errors.js';
import { type CertificateAuthorityPaths, assertHostName, runOpenssl, withTemporaryDirectory } from './ca.js';

/**
 * Host certificates (docs/HOSTS.md, "Joining and trust"): the agent makes its key and a CSR; the
 * control plane signs the CSR's key with the cell CA, and only its key: the subject, names and
 * usages are the CA's choice, whatever the CSR asks for.
 */

/** A P-256 CSR is under 1 KiB and an RSA 4096 one under 2 KiB; anything near this is not one. */
export const csrBytesMax = 16 * 1024;
export const rsaModulusBitsMin = 2048;
/** Curves at least as strong as P-256. */
const acceptedCurves: ReadonlySet<string> = new Set(['prime256v1', 'secp384r1', 'secp521r1']);
/** Random serials, 64 bits of entropy or more as the CA/Browser forum asks; the top bit stays clear so it is positive. */
const serialBytes = 16;
/** Host names are DNS labels under this suffix in the certificate's names. */
export const hostDnsSuffix = 'hosts.cellar';

export interface HostCertificateRequest {
  /** A DNS label: the subject's CN and `<name>.hosts.cellar`. */
  readonly name: string;
  /** An IPv4 or IPv6 literal. */
  readonly address: string;
  readonly validityDays: number;
}

export interface SignedHostCertificate {
  readonly certificate: string;
  /** Upper-case hex, as Node reports a peer certificate's serial. */
  readonly serial: string;
  readonly notAfter: Date;
}

const csrPattern = /^-----BEGIN CERTIFICATE REQUEST-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE REQUEST-----\n?$/;

/**
 * Refuses a CSR that is not one PEM request, whose self-signature does not verify (it was not made
 * with the key it carries), or whose key is weaker than EC P-256 / RSA 2048.
 */
export async function checkCertificateRequest(ca: CertificateAuthorityPaths, csrPem: string): Promise<void> {
  if (Buffer.byteLength(csrPem) > csrBytesMax) throw invalid('csr', `csr is longer than the limit of ${csrBytesMax} bytes`);
  if (!csrPattern.test(csrPem)) throw invalid('csr', 'csr must be one PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----)');
  await withTemporaryDirectory(ca.dir, async (temporary) => {
    const csrPath = join(temporary, 'host.csr');
    await writeFile(csrPath, csrPem, { mode: 0o600 });
    let printed: { readonly stdout: string; readonly stderr: string };
    try {
      printed = await runOpenssl(['req', '-in', csrPath, '-noout', '-verify', '-pubkey']);
    } catch {
      throw invalid('csr', 'csr is not a valid certificate request');
    }
    // openssl 3.0 exits 0 when the self-signature does not verify; only its report tells.
    if (!/verify OK/.test(printed.stderr)) throw invalid('csr', "csr's signature does not verify with its own key (it was not made with the key it carries)");
    const publicKeyPem = printed.stdout;
    assertStrongKey(publicKeyPem);
  });
}

function assertStrongKey(publicKeyPem: string): void {
  const key = createPublicKey(publicKeyPem);
  const details = key.asymmetricKeyDetails ?? {};
  const type = key.asymmetricKeyType;
  if (type === 'ec' && details.namedCurve !== undefined && acceptedCurves.has(details.namedCurve)) return;
  if ((type === 'rsa' || type === 'rsa-pss') && (details.modulusLength ?? 0) >= rsaModulusBitsMin) return;
  if (type === 'ed25519' || type === 'ed448') return;
  const what = type === 'ec' ? `EC ${details.namedCurve ?? 'unknown curve'}` : type === 'rsa' || type === 'rsa-pss' ? `RSA ${details.modulusLength ?? 0}` : String(type);
  throw invalid('csr', `csr's key is ${what}: it must be EC P-256 or stronger, RSA of at least ${rsaModulusBitsMin} bits, or Ed25519`);
}

/** Signs the CSR's key as the host's certificate: CN=<name>, SAN IP:<address> and DNS:<name>.hosts.cellar, server and client auth. */
export async function signHostCertificate(ca: CertificateAuthorityPaths, csrPem: string, request: HostCertificateRequest): Promise<SignedHostCertificate> {
  assertHostName(request.name);
  assert(!request.name.includes('.'), `host name ${request.name} must be one DNS label`);
  assert(isIP(request.address) !== 0, `host address ${request.address} must be an IP literal`);
  assert(Number.isInteger(request.validityDays) && request.validityDays >= 1, `validityDays must be a positive integer, got ${request.validityDays}`);
  await checkCertificateRequest(ca, csrPem);
  const serialBuffer = randomBytes(serialBytes);
  serialBuffer[0] = (serialBuffer[0] ?? 0) & 0x7f;
  return withTemporaryDirectory(ca.dir, async (temporary) => {
    const csrPath = join(temporary, 'host.csr');
    const extensionsPath = join(temporary, 'host.cnf');
    const certificatePath = join(temporary, 'host.crt');
    await writeFile(csrPath, csrPem, { mode: 0o600 });
    await writeFile(
      extensionsPath,
      [
        '[ext]',
        'basicConstraints = critical,CA:FALSE',
        'keyUsage = critical,digitalSignature,keyEncipherment',
        'extendedKeyUsage = serverAuth,clientAuth',
        `subjectAltName = IP:${request.address},DNS:${request.name}.${hostDnsSuffix}`,
        'subjectKeyIdentifier = hash',
        'authorityKeyIdentifier = keyid,issuer',
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    await runOpenssl([
      'x509', '-req', '-in', csrPath, '-CA', ca.caCert, '-CAkey', ca.caKey,
      '-set_serial', `0x${serialBuffer.toString('hex')}`, '-days', String(request.validityDays),
      // The CA's subject, not the CSR's; extensions only from the file (x509 copies none from a CSR by default).
      '-subj', `/CN=${request.name}`, '-extfile', extensionsPath, '-extensions', 'ext', '-out', certificatePath,
    ]);
    const certificate = await readFile(certificatePath, 'utf8');
    const parsed = new X509Certificate(certificate);
    return { certificate, serial: parsed.serialNumber.toUpperCase(), notAfter: new Date(parsed.validTo) };
  });
}

export interface KeyAndRequest {
  /** `dir/key.pem`, 0600. */
  readonly keyPath: string;
  readonly csr: string;
}

/**
 * The agent's key pair and CSR: openssl writes the key into a private temporary directory inside
 * `dir` (never on argv), which is moved to `dir/key.pem` (a rename replaces whatever is there,
 * never writes through it). The CSR's subject does not matter: the CA sets it.
 */
export async function makeKeyAndCsr(dir: string): Promise<KeyAndRequest> {
  const keyPath = join(dir, 'key.pem');
  const csr = await withTemporaryDirectory(dir, async (temporary) => {
    const configPath = join(temporary, 'openssl.cnf');
    const temporaryKeyPath = join(temporary, 'key.pem');
    const csrPath = join(temporary, 'host.csr');
    await writeFile(configPath, ['[req]', 'distinguished_name = dn', 'prompt = no', '[dn]', 'CN = cellar-agent', ''].join('\n'), { mode: 0o600 });
    await runOpenssl(['req', '-new', '-config', configPath, '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-noenc', '-keyout', temporaryKeyPath, '-out', csrPath]);
    await chmod(temporaryKeyPath, 0o600);
    const request = await readFile(csrPath, 'utf8');
    await rename(temporaryKeyPath, keyPath);
    return request;
  });
  return { keyPath, csr };
}
