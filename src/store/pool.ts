import pg from 'pg';
import { assert } from '../lib/assert.js';

/** Connections per control-plane process; the engine's in-flight steps and the API share them. */
export const storePoolSizeMax = 10;
const connectTimeoutMs = 5_000;
const statementTimeoutMs = 30_000;
/**
 * An idle connection is kept this long. pg's default (10 s) closed the ones a burst of steps had
 * opened between two bursts, and each new one costs the store a backend start and both sides a
 * SCRAM exchange: an idle control plane with three clusters opened about one a second.
 */
const idleTimeoutMs = 5 * 60_000;

/** Names given to prepared statements, each with its one text: a name reused for another text is a bug. */
const preparedTexts = new Map<string, string>();

/**
 * A statement the store runs many times a second (the engine's claims and commits, the probe's
 * record, the API's cluster reads, the token check), named so that each connection parses and
 * plans it once instead of on every call: an API read of a cluster took 4.5–4.9 ms of CPU across
 * the processes, ~3.6 ms prepared (interleaved). Only for fixed SQL text. The pool's statements are prepared after
 * `migrate` ran, so no schema change of this Cellar's happens under them.
 */
export function prepared(name: string, text: string): (values: unknown[]) => pg.QueryConfig {
  const known = preparedTexts.get(name);
  assert(known === undefined || known === text, `prepared statement ${name} is given two texts`);
  preparedTexts.set(name, text);
  return (values) => ({ name, text, values });
}

export type Pool = pg.Pool;
export type Queryable = pg.Pool | pg.PoolClient;

export function openPool(url: string, max: number = storePoolSizeMax): pg.Pool {
  const pool = new pg.Pool({
    connectionString: url,
    max,
    connectionTimeoutMillis: connectTimeoutMs,
    idleTimeoutMillis: idleTimeoutMs,
    statement_timeout: statementTimeoutMs,
    application_name: 'cellar',
  });
  // A client losing its connection (store restart) must not crash the process: idle ones report
  // to the pool, and checked-out ones between two queries (a transaction, a held LISTEN) to their
  // own listener. Either way the next query on it fails, and the pool drops it when released.
  pool.on('error', () => undefined);
  pool.on('connect', (client) => client.on('error', () => undefined));
  return pool;
}

export async function inTransaction<T>(pool: pg.Pool, work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query('begin');
    const result = await work(client);
    await client.query('commit');
    return result;
  } catch (error) {
    await client.query('rollback').catch(() => undefined);
    throw error;
  } finally {
    client.release();
  }
}

/**
 * SQLSTATEs that mean the server is going away or not yet there (admin_shutdown, crash_shutdown,
 * cannot_connect_now); all of class 08 (connection exception) counts too.
 */
const unavailableSqlStates: ReadonlySet<string> = new Set(['57P01', '57P02', '57P03']);
/** Socket errors of a store that is gone, restarting or out of reach. */
const unavailableErrnoCodes: ReadonlySet<string> = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN']);
/** node-postgres reports a lost or timed-out connection by message only, without a code. */
const unavailableMessages: readonly RegExp[] = [/^Connection terminated/, /^timeout exceeded when trying to connect/, /not queryable/];
/** Errors wrap errors (cause, AggregateError); a few levels are all node-postgres and net use. */
const causeDepthMax = 4;

/**
 * Whether an error says the store cannot be reached now (as opposed to a bad query): callers turn it
 * into "try again shortly" rather than a fault.
 */
export function isStoreUnavailable(error: unknown, depth = 0): boolean {
  if (depth > causeDepthMax || !(error instanceof Error)) return false;
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && (unavailableSqlStates.has(code) || /^08[0-9A-Z]{3}$/.test(code) || unavailableErrnoCodes.has(code))) return true;
  if (unavailableMessages.some((pattern) => pattern.test(error.message))) return true;
  if (error instanceof AggregateError && error.errors.some((inner) => isStoreUnavailable(inner, depth + 1))) return true;
  return isStoreUnavailable(error.cause, depth + 1);
}

/** A unique violation of exactly this constraint (23505 with its name). */
export function isUniqueViolation(error: unknown, constraint: string): boolean {
  const pgError = error as { code?: string; constraint?: string };
  return pgError.code === '23505' && pgError.constraint === constraint;
}
