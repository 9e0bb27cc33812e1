import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import pg from 'pg';
import { currentAbortSignal } from '../lib/abort.js';
import { assert } from '../lib/assert.js';

/**
 * Short-lived node-postgres connections the driver makes to its instances: over the 0700 unix
 * socket directory as the superuser (peer, reachable only by root and the run-as user), or over
 * TCP with a password. Every connection has a connect timeout and a statement timeout.
 */

/** Local connections are cheap; a server that does not answer in this time is not healthy. */
export const connectTimeoutMs = 5_000;
/** Driver statements are catalogue reads and role updates; none should take long. */
export const statementTimeoutMs = 10_000;

export interface ConnectTarget {
  /** A socket directory (starts with `/`) or a TCP host. */
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly database: string;
  readonly password?: string;
  readonly connectTimeoutMs?: number;
  /**
   * The session sends no settings of its own (statement_timeout, application_name), so its
   * pg_settings are the server's, what any new session starts with. The client-side query
   * timeout still bounds its statements.
   */
  readonly plainSession?: boolean;
}

/** node-postgres settings for a connection to `target`: its timeouts, and no TLS (a socket or 127.0.0.1 only). */
export function clientConfig(target: ConnectTarget): pg.ClientConfig {
  return {
    host: target.host,
    port: target.port,
    user: target.user,
    database: target.database,
    ...(target.password === undefined ? {} : { password: target.password }),
    // Everything is on 127.0.0.1 or a socket and the servers run ssl=off; say so, not "prefer".
    ssl: false,
    connectionTimeoutMillis: target.connectTimeoutMs ?? connectTimeoutMs,
    ...(target.plainSession === true ? {} : { statement_timeout: statementTimeoutMs, application_name: 'cellar' }),
    query_timeout: statementTimeoutMs + 1_000,
  };
}

export async function withClient<T>(target: ConnectTarget, use: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client(clientConfig(target));
  // A server shutting down under an idle client emits 'error'; unhandled it would crash Cellar.
  client.on('error', () => {});
  // The step using this connection ran out of time: end the connection, and with it the query.
  const stepSignal = currentAbortSignal();
  stepSignal?.throwIfAborted();
  const onAbort = (): void => void client.end().catch(() => {});
  stepSignal?.addEventListener('abort', onAbort, { once: true });
  try {
    await client.connect();
    return await use(client);
  } finally {
    stepSignal?.removeEventListener('abort', onAbort);
    await client.end().catch(() => {});
  }
}

export function localSuperuser(runDir: string, port: number, connectTimeout?: number): ConnectTarget {
  return {
    host: runDir,
    port,
    user: 'postgres',
    database: 'postgres',
    ...(connectTimeout === undefined ? {} : { connectTimeoutMs: connectTimeout }),
  };
}

/** The SQLSTATE of a server error, or undefined for anything else (refused, timeout, …). */
export function sqlState(error: unknown): string | undefined {
  return error instanceof pg.DatabaseError ? error.code : undefined;
}

/** Connection refused or the socket file missing: nothing listens there. */
export function isNotListening(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ECONNREFUSED' || code === 'ENOENT';
}

const scramIterations = 4096;
const scramSaltBytes = 16;

/**
 * A SCRAM-SHA-256 verifier (RFC 5803 format, as Postgres stores it), computed here so that the
 * plaintext password never reaches the server, its logs or pg_stat_activity; psql's \password
 * does the same. Postgres SASLprep-normalises passwords; for ASCII that is the identity, and the
 * control plane generates ASCII passwords, which the assert holds it to.
 */
export function scramVerifier(password: string, salt: Buffer = randomBytes(scramSaltBytes)): string {
  assert(/^[\x20-\x7e]+$/.test(password), 'generated passwords are printable ASCII');
  const salted = pbkdf2Sync(password, salt, scramIterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const serverKey = createHmac('sha256', salted).update('Server Key').digest();
  return `SCRAM-SHA-256$${scramIterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

export const { escapeIdentifier, escapeLiteral } = pg;
