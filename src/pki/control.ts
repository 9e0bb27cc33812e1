import { rename } from 'node:fs/promises';
import { join } from 'node:path';
import { assert } from '../lib/assert.js';
import {
  type CertificateAuthorityPaths,
  type KeyPair,
  dayMs,
  hostValidityDays,
  isIssuedAndFresh,
  issue,
  opensslConfig,
  parseKeyPair,
  readFileOrNull,
  withTemporaryDirectory,
  writeFileIfDifferent,
} from './ca.js';

/**
 * The control plane's own certificate, from the cell CA: it serves the agent listener with it and
 * presents it as a client to the agents, which serve operations to this common name alone.
 */

/** Renewed at start when it has less than this left (a control plane restarts well within a year). */
export const controlCertificateRenewBeforeMs = 30 * dayMs;

export function controlCertificatePaths(ca: CertificateAuthorityPaths): { readonly key: string; readonly cert: string } {
  return { key: join(ca.dir, 'control.key'), cert: join(ca.dir, 'control.crt') };
}

/**
 * The certificate on disk when it is usable (this CA's, for `commonName`, more than the margin
 * left), else a fresh one. `commonName` is the protocol's (agent-protocol.ts), which pki may not import.
 */
export async function ensureControlCertificate(ca: CertificateAuthorityPaths, commonName: string, nowMs: number = Date.now()): Promise<KeyPair> {
  const text = await readFileOrNull(controlCertificatePaths(ca).key);
  const current = text === null ? null : parseKeyPair(text);
  if (current !== null) {
    const certificate = await isIssuedAndFresh(ca, current, controlCertificateRenewBeforeMs, nowMs);
    if (certificate !== null && certificate.subject === `CN=${commonName}`) return current;
  }
  return issueControlCertificate(ca, commonName);
}

/** Issues and stores the control certificate valid for `validityDays`; exported so tests can plant one about to expire. */
export async function issueControlCertificate(ca: CertificateAuthorityPaths, commonName: string, validityDays = hostValidityDays): Promise<KeyPair> {
  assert(Number.isInteger(validityDays) && validityDays >= 1, `validityDays must be a positive integer, got ${validityDays}`);
  const paths = controlCertificatePaths(ca);
  const config = opensslConfig(commonName, [
    'basicConstraints = critical,CA:FALSE',
    'keyUsage = critical,digitalSignature',
    'extendedKeyUsage = serverAuth,clientAuth',
    `subjectAltName = DNS:${commonName}`,
    'subjectKeyIdentifier = hash',
    'authorityKeyIdentifier = keyid,issuer',
  ]);
  return withTemporaryDirectory(ca.dir, async (temporary) => {
    const bundle = await issue(temporary, config, validityDays, ['-CA', ca.caCert, '-CAkey', ca.caKey]);
    const pair = parseKeyPair(await readFileOrNull(bundle) ?? '');
    assert(pair !== null, `openssl wrote no key and certificate for ${commonName}`);
    // Two control planes on one home may both renew: each rename is whole, and both pairs are valid.
    await rename(bundle, paths.key);
    await writeFileIfDifferent(paths.cert, pair.cert, 0o644);
    return pair;
  });
}
