import type { FastifyInstance } from 'fastify';
import type { Pool } from '../store/pool.js';
import { storeRetryAfterSeconds } from './errors.js';

/**
 * `GET /healthz`: ready only while the cell store answers, since no request can be served
 * without it. A load balancer or `cellar up`'s caller reads `reason` to learn why not.
 */

/** A hung store must not hang the health check: the check itself answers within this. */
export const storeCheckMsMax = 2_000;

export function registerHealth(app: FastifyInstance, pool: Pool): void {
  app.get('/healthz', { schema: { hide: true } }, async (_request, reply) => {
    const problem = await storeProblem(pool);
    if (problem === null) return { ok: true };
    return reply.status(503).header('retry-after', String(storeRetryAfterSeconds)).send({ ok: false, reason: `the cell store is unreachable: ${problem}` });
  });
}

async function storeProblem(pool: Pool): Promise<string | null> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve(`no answer within ${storeCheckMsMax} ms`), storeCheckMsMax);
  });
  const check = pool.query('select 1').then(
    () => null,
    (error: unknown) => (error instanceof Error ? error.message : String(error)) || 'connection failed',
  );
  try {
    return await Promise.race([check, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
