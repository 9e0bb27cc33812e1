import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Certificates for tests, made with the openssl CLI as the cell CA makes them: a CA, the control
 * plane's certificate (CN=cellar-control) and hosts' (SAN IP), each for server and client use.
 */

const opensslMsMax = 20_000;

export interface TestCa {
  readonly key: string;
  readonly certificate: string;
}

export interface TestPair {
  readonly key: string;
  readonly certificate: string;
}

function openssl(args: readonly string[], cwd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('openssl', args, { cwd, timeout: opensslMsMax }, (error, _stdout, stderr) => (error ? reject(new Error(`openssl ${args[0]}: ${stderr || error.message}`)) : resolve()));
  });
}

async function inScratch<T>(work: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'cellar-test-certs-'));
  try {
    return await work(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export function makeTestCa(name = 'Cellar test CA'): Promise<TestCa> {
  return inScratch(async (dir) => {
    await openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'ca.key'], dir);
    await openssl(['req', '-x509', '-new', '-key', 'ca.key', '-subj', `/CN=${name}`, '-days', '2', '-out', 'ca.crt', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
    return { key: await readFile(join(dir, 'ca.key'), 'utf8'), certificate: await readFile(join(dir, 'ca.crt'), 'utf8') };
  });
}

/** A leaf signed by `ca`: CN `commonName`, SAN IP for each of `ips`, server and client auth. */
export function issueCertificate(ca: TestCa, commonName: string, ips: readonly string[] = []): Promise<TestPair> {
  return inScratch(async (dir) => {
    await writeFile(join(dir, 'ca.key'), ca.key, { mode: 0o600 });
    await writeFile(join(dir, 'ca.crt'), ca.certificate);
    const extensions = ['basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature', 'extendedKeyUsage=serverAuth,clientAuth'];
    if (ips.length > 0) extensions.push(`subjectAltName=${ips.map((ip) => `IP:${ip}`).join(',')}`);
    await writeFile(join(dir, 'ext.cnf'), `${extensions.join('\n')}\n`);
    await openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'leaf.key'], dir);
    await openssl(['req', '-new', '-key', 'leaf.key', '-subj', `/CN=${commonName}`, '-out', 'leaf.csr'], dir);
    await openssl(['x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', 'ext.cnf', '-out', 'leaf.crt'], dir);
    return { key: await readFile(join(dir, 'leaf.key'), 'utf8'), certificate: await readFile(join(dir, 'leaf.crt'), 'utf8') };
  });
}
