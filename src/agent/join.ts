import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFile, rename } from 'node:fs/promises';
import https from 'node:https';
import { isIP } from 'node:net';
import { join } from 'node:path';
import type { PeerCertificate } from 'node:tls';
import {
  type JoinRequest,
  type JoinResponse,
  type JoinTokenParts,
  agentCaPath,
  agentJoinPath,
  controlCommonName,
  parseJoinToken,
} from '../dataplane/agent-protocol.js';
import { CellarError } from '../lib/errors.js';
import { certificateSha256, withTemporaryDirectory } from '../pki/ca.js';
import { makeKeyAndCsr } from '../pki/hosts.js';
import { ensureDirectoryTree, readSmallFile, replaceFile } from '../postgres/files.js';
import { selfRunAs } from '../postgres/osuser.js';

/**
 * `cellar agent --join TOKEN --control URL --data DIR` (docs/HOSTS.md, "Joining and trust"): the
 * agent trusts the CA whose fingerprint the token carries and nothing else, makes its key on the
 * host, and keeps its identity in DIR/agent (root's, 0700).
 */

/** Each request to the control plane during a join. */
export const joinRequestTimeoutMs = 15_000;
/** A CA certificate or a join answer is a few KiB; more is not one. */
export const joinResponseBytesMax = 256 * 1024;

export const agentDirName = 'agent';
export const identityFiles = { host: 'host.json', key: 'key.pem', certificate: 'cert.pem', ca: 'ca.pem' } as const;

/** `DIR/agent/host.json`. */
export interface HostIdentityFile {
  readonly hostId: string;
  readonly name: string;
  readonly address: string;
  readonly agentPort: number;
  readonly controlUrl: string;
}

export interface AgentIdentity extends HostIdentityFile {
  /** PEM: the host's private key, its certificate and the cell CA's. */
  readonly key: string;
  readonly certificate: string;
  readonly ca: string;
}

export interface JoinOptions {
  readonly token: string;
  readonly controlUrl: string;
  readonly dataDir: string;
}

export function agentDir(dataDir: string): string {
  return join(dataDir, agentDirName);
}

function joinError(message: string): CellarError {
  return new CellarError('CELLAR_E_JOIN_TOKEN', message, 'token');
}

/** The control plane's URL: https with a host and a port, nothing else. */
export function parseControlUrl(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new CellarError('CELLAR_E_INVALID', `--control ${text}: must be a URL like https://10.0.0.1:8433`, 'control');
  }
  if (url.protocol !== 'https:' || url.pathname !== '/' || url.search !== '' || url.username !== '' || url.password !== '') {
    throw new CellarError('CELLAR_E_INVALID', `--control ${text}: must be https://HOST:PORT with no path (the agent listener, CELLAR_AGENT_LISTEN_PORT)`, 'control');
  }
  return url;
}

/**
 * Joins the cell: nothing is written unless the CA matches the token and the control plane
 * signed the key; the key never leaves DIR/agent. Refuses a data directory that has joined already.
 */
export async function joinCell(options: JoinOptions): Promise<AgentIdentity> {
  const parsed = parseJoinToken(options.token);
  if ('problem' in parsed) throw joinError(parsed.problem);
  const control = parseControlUrl(options.controlUrl);
  const ca = await fetchPinnedCa(control, parsed);
  const dir = agentDir(options.dataDir);
  if ((await readSmallFile(join(dir, identityFiles.host)).catch(() => undefined)) !== undefined) {
    throw new CellarError('CELLAR_E_CONFLICT', `${dir} holds an identity already (${identityFiles.host}); remove ${dir} to join again`, 'data');
  }
  await ensureDirectoryTree(dir, 0o700, selfRunAs());
  return withTemporaryDirectory(dir, async (temporary) => {
    const { keyPath, csr } = await makeKeyAndCsr(temporary);
    const key = await readFile(keyPath, 'utf8');
    const answer = await requestJson<JoinResponse>(control, 'POST', agentJoinPath, { token: options.token, csr } satisfies JoinRequest, ca);
    checkJoinAnswer(answer, key, ca, parsed);
    const identity: HostIdentityFile = { hostId: answer.hostId, name: answer.name, address: answer.address, agentPort: answer.agentPort, controlUrl: control.origin };
    const owner = selfRunAs();
    // rename replaces whatever is at key.pem and never writes through a link.
    await rename(keyPath, join(dir, identityFiles.key));
    await replaceFile(join(dir, identityFiles.certificate), answer.certificate, 0o644, owner);
    await replaceFile(join(dir, identityFiles.ca), ca, 0o644, owner);
    // Last: its presence says the directory has a complete identity.
    await replaceFile(join(dir, identityFiles.host), `${JSON.stringify(identity, null, 2)}\n`, 0o644, owner);
    return { ...identity, key, certificate: answer.certificate, ca };
  });
}

/** The CA from the control plane, unverified: the token's fingerprint is what makes it trusted. */
async function fetchPinnedCa(control: URL, token: JoinTokenParts): Promise<string> {
  const pem = await requestText(control, 'GET', agentCaPath, undefined, null);
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(pem);
  } catch {
    throw new CellarError('CELLAR_E_INVALID', `${control.origin}${agentCaPath} did not answer with a certificate: is --control the agent listener?`, 'control');
  }
  if (certificateSha256(pem) !== token.caSha256 || !certificate.ca) {
    throw joinError(`the CA certificate ${control.origin} presents (SHA-256 ${certificateSha256(pem)}) is not the one the join token names (${token.caSha256}): refusing to trust it; check --control, or whether something sits between this host and the control plane`);
  }
  return pem;
}

function checkJoinAnswer(answer: JoinResponse, key: string, ca: string, token: JoinTokenParts): void {
  const authority = new X509Certificate(ca);
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(answer.certificate);
  } catch {
    throw new Error('the control plane answered the join without a certificate');
  }
  if (!certificate.checkIssued(authority) || !certificate.verify(authority.publicKey)) throw new Error('the certificate the control plane answered with is not signed by the cell CA');
  if (!certificate.checkPrivateKey(createPrivateKey(key))) throw new Error("the certificate the control plane answered with is not for this host's key");
  if (answer.hostId !== token.hostId) throw new Error(`the control plane answered for host ${answer.hostId}, not ${token.hostId}`);
  if (isIP(answer.address) === 0 || !Number.isInteger(answer.agentPort)) throw new Error('the control plane answered the join with a malformed address or agent port');
}

/** Verify the server as the cell CA's `cellar-control`, whatever address the agent reached it by. */
function checkControlIdentity(_host: string, certificate: PeerCertificate): Error | undefined {
  const commonName = certificate.subject?.CN;
  return commonName === controlCommonName ? undefined : new Error(`the server's certificate is for ${String(commonName)}, not ${controlCommonName}`);
}

async function requestJson<T>(control: URL, method: string, path: string, body: unknown, ca: string | null): Promise<T> {
  const text = await requestText(control, method, path, body, ca);
  return JSON.parse(text) as T;
}

/** One bounded request; `ca` null: the server is not verified (only for the CA itself, checked against the token). */
function requestText(control: URL, method: string, path: string, body: unknown, ca: string | null): Promise<string> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const request = https.request(
      new URL(path, control),
      {
        method,
        minVersion: 'TLSv1.3',
        timeout: joinRequestTimeoutMs,
        ...(ca === null ? { rejectUnauthorized: false } : { ca, checkServerIdentity: checkControlIdentity }),
        headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
        agent: false,
      },
      (response) => {
        const chunks: Buffer[] = [];
        let bytes = 0;
        response.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          if (bytes > joinResponseBytesMax) request.destroy(new Error(`${control.origin}${path} answered more than ${joinResponseBytesMax} bytes`));
          else chunks.push(chunk);
        });
        response.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const status = response.statusCode ?? 0;
          if (status >= 200 && status < 300) return resolve(text);
          reject(answerError(control, path, status, text));
        });
        response.on('error', reject);
      },
    );
    request.on('timeout', () => request.destroy(new Error(`${control.origin}${path} did not answer within ${joinRequestTimeoutMs} ms`)));
    request.on('error', (error) => reject(new Error(`cannot reach the control plane at ${control.origin} (${error.message})`)));
    request.end(payload);
  });
}

function answerError(control: URL, path: string, status: number, text: string): Error {
  try {
    const error = (JSON.parse(text) as { error?: { code?: string; message?: string } }).error;
    if (error?.code === 'CELLAR_E_JOIN_TOKEN') return joinError(error.message ?? 'the join token was refused');
    if (error?.message !== undefined) return new Error(`${control.origin}${path} answered ${status}: ${error.message} [${error.code ?? '?'}]`);
  } catch {
    // Not the one error shape: report the status alone.
  }
  return new Error(`${control.origin}${path} answered ${status}`);
}

/** The agent's identity from DIR/agent, as `joinCell` wrote it; never through a link. */
export async function loadAgentIdentity(dataDir: string): Promise<AgentIdentity> {
  const dir = agentDir(dataDir);
  const read = async (name: string): Promise<string> => {
    const text = await readSmallFile(join(dir, name));
    if (text === undefined) throw new Error(`${join(dir, name)} is missing: join the cell first with \`cellar agent --join TOKEN --control URL --data ${dataDir}\``);
    return text;
  };
  const hostText = await read(identityFiles.host);
  const host = parseHostIdentity(hostText, join(dir, identityFiles.host));
  return { ...host, key: await read(identityFiles.key), certificate: await read(identityFiles.certificate), ca: await read(identityFiles.ca) };
}

function parseHostIdentity(text: string, path: string): HostIdentityFile {
  let value: Partial<Record<keyof HostIdentityFile, unknown>>;
  try {
    value = JSON.parse(text) as typeof value;
  } catch {
    throw new Error(`${path} is not JSON`);
  }
  const { hostId, name, address, agentPort, controlUrl } = value;
  if (typeof hostId !== 'string' || typeof name !== 'string' || typeof address !== 'string' || typeof controlUrl !== 'string' || typeof agentPort !== 'number' || !Number.isInteger(agentPort)) {
    throw new Error(`${path} must hold {"hostId", "name", "address", "agentPort", "controlUrl"}`);
  }
  return { hostId, name, address, agentPort, controlUrl };
}
