import { X509Certificate, createPrivateKey } from 'node:crypto';
import { lstat } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { controlCommonName } from '../dataplane/agent-protocol.js';
import { readSmallFile } from '../postgres/files.js';

/**
 * Who this agent is, read from `DIR/agent/` (docs/HOSTS.md, "Joining and trust"): what joining
 * wrote there, checked before anything listens, so a bad file fails the start with its name.
 */

export const agentDirName = 'agent';
export const hostFileName = 'host.json';
export const keyFileName = 'key.pem';
export const certificateFileName = 'cert.pem';
export const caFileName = 'ca.pem';
/** host.json and PEM files are a few kilobytes; a bigger one is not what joining wrote. */
export const identityFileBytesMax = 64 * 1024;
/** Group or others may write: someone else could replace the agent's key or its CA. */
const writableByOthersMask = 0o022;
/** Group or others may read or write: the key must be the agent's alone. */
const keyOpenToOthersMask = 0o077;

export interface AgentIdentity {
  readonly hostId: string;
  readonly name: string;
  /** IP literal: the agent listens here and its certificate names it (SAN IP). */
  readonly address: string;
  readonly agentPort: number;
  /** `https://CP:8433`: where heartbeats go. */
  readonly controlUrl: string;
  /** PEM text. */
  readonly key: string;
  readonly certificate: string;
  readonly ca: string;
}

export class AgentIdentityError extends Error {
  override name = 'AgentIdentityError';
}

export function agentDirectory(dataDir: string): string {
  return join(dataDir, agentDirName);
}

export async function loadIdentity(dataDir: string): Promise<AgentIdentity> {
  const dir = agentDirectory(dataDir);
  await checkOwnDirectory(dataDir, 'the data directory');
  await checkOwnDirectory(dir, 'the agent directory');
  const host = parseHostFile(await readIdentityFile(dir, hostFileName), join(dir, hostFileName));
  await checkKeyMode(join(dir, keyFileName));
  const key = await readIdentityFile(dir, keyFileName);
  const certificate = await readIdentityFile(dir, certificateFileName);
  const ca = await readIdentityFile(dir, caFileName);
  checkPems(dir, key, certificate, ca, host.address);
  return { ...host, key, certificate, ca };
}

/** Root's (the agent's own user), a real directory, writable by no one else. */
async function checkOwnDirectory(path: string, what: string): Promise<void> {
  const stats = await lstat(path).catch((error: unknown) => {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new AgentIdentityError(`${what} ${path} does not exist; join the cell first (cellar agent --join TOKEN --control URL --data DIR)`);
    }
    throw error;
  });
  if (!stats.isDirectory()) throw new AgentIdentityError(`${what} ${path} is not a directory (a link is refused)`);
  const self = process.getuid?.();
  if (self !== undefined && stats.uid !== self) throw new AgentIdentityError(`${what} ${path} belongs to uid ${stats.uid}, not to the agent's user (uid ${self}); it must be root's`);
  if ((stats.mode & writableByOthersMask) !== 0) {
    throw new AgentIdentityError(`${what} ${path} is writable by group or others (mode ${(stats.mode & 0o777).toString(8)}); chmod go-w it`);
  }
}

async function checkKeyMode(path: string): Promise<void> {
  const stats = await lstat(path).catch(() => undefined);
  // A missing key is reported by the read, with the same wording as the other files.
  if (stats === undefined) return;
  if ((stats.mode & keyOpenToOthersMask) !== 0) {
    throw new AgentIdentityError(`${path} is open to group or others (mode ${(stats.mode & 0o777).toString(8)}); the private key must be 0600`);
  }
}

async function readIdentityFile(dir: string, fileName: string): Promise<string> {
  const path = join(dir, fileName);
  let text: string | undefined;
  try {
    text = await readSmallFile(path, identityFileBytesMax);
  } catch (error) {
    throw new AgentIdentityError(`${path}: ${error instanceof Error ? error.message : String(error)}`);
  }
  if (text === undefined) throw new AgentIdentityError(`${path} is missing; join the cell again (cellar agent --join TOKEN --control URL --data DIR)`);
  return text;
}

type HostFile = Omit<AgentIdentity, 'key' | 'certificate' | 'ca'>;

function parseHostFile(text: string, path: string): HostFile {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new AgentIdentityError(`${path} is not JSON: ${error instanceof Error ? error.message : String(error)}`);
  }
  if (typeof parsed !== 'object' || parsed === null) throw new AgentIdentityError(`${path} must hold an object {hostId, name, address, agentPort, controlUrl}`);
  const fields = parsed as Record<string, unknown>;
  const requiredText = (field: string): string => {
    const value = fields[field];
    if (typeof value !== 'string' || value === '') throw new AgentIdentityError(`${path}: ${field} must be a non-empty string`);
    return value;
  };
  const address = requiredText('address');
  if (isIP(address) === 0) throw new AgentIdentityError(`${path}: address ${address} must be an IPv4 or IPv6 literal`);
  const agentPort = fields['agentPort'];
  if (typeof agentPort !== 'number' || !Number.isInteger(agentPort) || agentPort < 1 || agentPort > 65535) {
    throw new AgentIdentityError(`${path}: agentPort must be an integer from 1 to 65535`);
  }
  const controlUrl = requiredText('controlUrl');
  let url: URL;
  try {
    url = new URL(controlUrl);
  } catch {
    throw new AgentIdentityError(`${path}: controlUrl ${controlUrl} is not a URL`);
  }
  if (url.protocol !== 'https:') throw new AgentIdentityError(`${path}: controlUrl ${controlUrl} must be https://`);
  return { hostId: requiredText('hostId'), name: requiredText('name'), address, agentPort, controlUrl };
}

/** The key is the certificate's, the certificate is the cell CA's and names the address: else TLS would fail later, less clearly. */
function checkPems(dir: string, key: string, certificate: string, ca: string, address: string): void {
  const parse = <T>(fileName: string, make: () => T): T => {
    try {
      return make();
    } catch (error) {
      throw new AgentIdentityError(`${join(dir, fileName)} is not valid PEM: ${error instanceof Error ? error.message : String(error)}`);
    }
  };
  const privateKey = parse(keyFileName, () => createPrivateKey(key));
  const hostCertificate = parse(certificateFileName, () => new X509Certificate(certificate));
  const caCertificate = parse(caFileName, () => new X509Certificate(ca));
  if (!hostCertificate.checkPrivateKey(privateKey)) throw new AgentIdentityError(`${join(dir, keyFileName)} is not the key of ${join(dir, certificateFileName)}`);
  if (!hostCertificate.checkIssued(caCertificate) || !hostCertificate.verify(caCertificate.publicKey)) {
    throw new AgentIdentityError(`${join(dir, certificateFileName)} is not signed by the cell CA in ${join(dir, caFileName)}`);
  }
  if (hostCertificate.checkIP(address) === undefined) throw new AgentIdentityError(`${join(dir, certificateFileName)} does not name the host's address ${address} (SAN IP)`);
  if (commonNameOf(hostCertificate.subject) === controlCommonName) {
    throw new AgentIdentityError(`${join(dir, certificateFileName)} is the control plane's certificate (CN=${controlCommonName}), not a host's`);
  }
}

/** `CN=…` from an X509Certificate subject (lines of `key=value`). */
export function commonNameOf(subject: string): string | undefined {
  for (const line of subject.split('\n')) {
    if (line.startsWith('CN=')) return line.slice('CN='.length);
  }
  return undefined;
}
