import pg from 'pg';

/**
 * A client that inserts sequential ids through one endpoint and records every id whose commit
 * was acknowledged. On any error it reconnects (the failover tests' "user"); every wait is bounded.
 */

export interface WriterStats {
  /** Ids whose INSERT returned success: the commit was acknowledged. */
  readonly acknowledged: number[];
  /** Errors seen (connection lost, refused, …), in order. */
  readonly errors: string[];
  /** performance.now() of each acknowledgement, parallel to `acknowledged`. */
  readonly acknowledgedAtMs: number[];
}

export interface Writer {
  readonly stats: WriterStats;
  stop(): Promise<WriterStats>;
}

const connectTimeoutMs = 15_000;
const queryTimeoutMs = 15_000;
const reconnectPauseMs = 20;

export function startWriter(uri: string, table: string, pauseMs = 5): Writer {
  const stats: WriterStats = { acknowledged: [], errors: [], acknowledgedAtMs: [] };
  let stopping = false;
  let next = 1;
  const loop = (async () => {
    let client: pg.Client | null = null;
    while (!stopping) {
      try {
        if (client === null) {
          client = new pg.Client({ connectionString: uri, connectionTimeoutMillis: connectTimeoutMs, query_timeout: queryTimeoutMs });
          client.on('error', () => undefined);
          await client.connect();
        }
        const id = next;
        next += 1;
        await client.query(`insert into ${table} (id) values ($1)`, [id]);
        stats.acknowledged.push(id);
        stats.acknowledgedAtMs.push(performance.now());
        if (pauseMs > 0) await new Promise((resolve) => setTimeout(resolve, pauseMs));
      } catch (error) {
        stats.errors.push(error instanceof Error ? error.message : String(error));
        await client?.end().catch(() => undefined);
        client = null;
        await new Promise((resolve) => setTimeout(resolve, reconnectPauseMs));
      }
    }
    await client?.end().catch(() => undefined);
  })();
  return {
    stats,
    async stop() {
      stopping = true;
      await loop;
      return stats;
    },
  };
}
