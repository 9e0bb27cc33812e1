import { randomInt } from 'node:crypto';
import { type Socket, connect } from 'node:net';
import { backendConnectTimeoutMs } from './backend.js';
import { cancelRequestPacket } from './protocol.js';

/**
 * Cancel keys: the proxy gives each client a key of its own in place of the server's
 * BackendKeyData (a server's process id and secret never leave the proxy), and routes a
 * CancelRequest carrying it to the server that owns it. Changes when cancellation does.
 */

/** A server's own BackendKeyData, and where that server listens. */
export interface BackendKey {
  readonly host: string;
  readonly port: number;
  readonly processId: number;
  readonly secretKey: number;
}

/** The key a client sees. */
export interface ProxyKey {
  readonly processId: number;
  readonly secretKey: number;
}

/** Where issued keys live; an interface so a test can put one in that fails. */
export interface CancelKeyRegistry {
  /** A new key no live client holds, standing for `key` until released. Throws when none can be found. */
  issue(key: BackendKey): ProxyKey;
  release(key: ProxyKey): void;
  find(processId: number, secretKey: number): BackendKey | undefined;
  readonly size: number;
}

/** A collision among 2^62 keys is rare; this many in a row means something is wrong. */
const cancelKeyAttemptsMax = 16;
const int32Max = 2 ** 31 - 1;

function keyText(processId: number, secretKey: number): string {
  return `${processId}:${secretKey}`;
}

/** Bounded by the proxy's connections: a key is released when its client closes. */
export class CancelKeys implements CancelKeyRegistry {
  private readonly keys = new Map<string, BackendKey>();

  issue(key: BackendKey): ProxyKey {
    for (let attempt = 0; attempt < cancelKeyAttemptsMax; attempt += 1) {
      const candidate = { processId: randomInt(1, int32Max), secretKey: randomInt(-int32Max, int32Max) };
      const text = keyText(candidate.processId, candidate.secretKey);
      if (this.keys.has(text)) continue;
      this.keys.set(text, key);
      return candidate;
    }
    throw new Error(`could not issue a unique cancel key in ${cancelKeyAttemptsMax} attempts`);
  }

  release(key: ProxyKey): void {
    this.keys.delete(keyText(key.processId, key.secretKey));
  }

  find(processId: number, secretKey: number): BackendKey | undefined {
    return this.keys.get(keyText(processId, secretKey));
  }

  get size(): number {
    return this.keys.size;
  }
}

/** A CancelRequest goes to the backend that owns the key; the client is closed either way, as Postgres does. */
export function forwardCancel(keys: CancelKeyRegistry, client: Socket, processId: number, secretKey: number): void {
  client.end();
  const key = keys.find(processId, secretKey);
  if (key === undefined) return;
  const backend = connect({ host: key.host, port: key.port });
  backend.setTimeout(backendConnectTimeoutMs, () => backend.destroy());
  backend.on('error', () => backend.destroy());
  backend.once('connect', () => backend.end(cancelRequestPacket(key.processId, key.secretKey)));
}
