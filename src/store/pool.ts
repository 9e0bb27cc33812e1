import pg from 'pg';

/** Connections per control-plane process; the engine's in-flight steps and the API share them. */
export const storePoolSizeMax = 10;
const connectTimeoutMs = 5_000;
const statementTimeoutMs = 30_000;

export type Pool = pg.Pool;
export type Queryable = pg.Pool | pg.PoolClient;

export function openPool(url: string, max: number = storePoolSizeMax): pg.Pool {
  const pool = new pg.Pool({
    connectionString: url,
    max,
    connectionTimeoutMillis: connectTimeoutMs,
    statement_timeout: statementTimeoutMs,
    application_name: 'cellar',
  });
  // An idle client losing its connection (store restart) must not crash the process.
  pool.on('error', () => undefined);
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
