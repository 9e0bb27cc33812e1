import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { TestCellar } from '../test/helpers/cellar.js';
import { median, waitFor } from './lib.js';

/**
 * bench/rods: how long a control rod change takes to act (docs/CONTROLS.md "Rods"), in the engine
 * and in the proxy, measured from the moment `PUT /v1/rods/{name}` is sent:
 * - engine: `engine.normal-tick-ms` lowered from 600000 (a lane asleep for ten minutes) to 50;
 *   the effect is the normal lane's next claim (its counter in `GET /v1/status`);
 * - proxy: `proxy.cluster-bytes-per-second` set to a new value; the effect is the proxy running
 *   with it (`cellar_proxy_rod` on its /metrics, read after its buckets were re-rated).
 * Goal: within one tick of the lane that reads the rod (the normal lane's default, 2000 ms; for
 * the proxy, its rods poll of 1000 ms). Usage: node dist/bench/rods.js [rounds]
 */

const roundsDefault = 10;
const roundsMax = 100;
const goalEngineMs = 2_000;
const goalProxyMs = 1_000;
/** Polls of the effect: well under the figures measured (milliseconds). */
const effectPollMs = 2;
const effectWaitMsMax = 30_000;
const asleepTickMs = 600_000;
const awakeTickMs = 50;

interface Status {
  engine: { ticks: Record<string, number> } | null;
}

/** A lane counts as asleep once its claims stop for this long (ten ticks of the fast value). */
const quietMs = 10 * awakeTickMs;

/** The counter's value once it has not moved for `quietMs`. */
async function quiet(read: () => Promise<number>): Promise<number> {
  let last = await read();
  let sinceMs = performance.now();
  return waitFor('the lane to sleep', async () => {
    const now = await read();
    if (now !== last) {
      last = now;
      sinceMs = performance.now();
      return undefined;
    }
    return performance.now() - sinceMs >= quietMs ? now : undefined;
  }, effectWaitMsMax, effectPollMs);
}

const rounds = Math.min(roundsMax, Math.max(1, Number(process.argv[2] ?? roundsDefault) || roundsDefault));
const cellar = await TestCellar.create();
try {
  await cellar.start();
  const put = async (name: string, value: number): Promise<void> => {
    const answer = await cellar.api<unknown>('PUT', `/v1/rods/${name}`, { value, reason: 'bench/rods' });
    if (answer.status !== 200) throw new Error(`PUT /v1/rods/${name} answered ${answer.status}: ${JSON.stringify(answer.body)}`);
  };
  const normalTicks = async (): Promise<number> => (await cellar.api<Status>('GET', '/v1/status')).body.engine?.ticks['normal'] ?? 0;
  const proxyRod = () => cellar.proxyMetric(/cellar_proxy_rod\{rod="proxy\.cluster-bytes-per-second"\} (\d+)/);

  const engineMs: number[] = [];
  const proxyMs: number[] = [];
  const floorMs: number[] = [];
  // The floor, same store, same run: an UPDATE that NOTIFYs at commit, to a session that LISTENs,
  // then a read of the row — what a rod change and its reader do at the least, with no API and no
  // process in between.
  const store = JSON.parse(await readFile(join(cellar.home, 'store.json'), 'utf8')) as { port: number; password: string };
  const connect = async (): Promise<pg.Client> => {
    const client = new pg.Client({ host: '127.0.0.1', port: store.port, user: 'postgres', password: store.password, database: 'cellar' });
    await client.connect();
    return client;
  };
  const [writer, listener] = [await connect(), await connect()];
  try {
    await writer.query('create temporary table floor_rod (value int)');
    await writer.query('insert into floor_rod values (0)');
    await listener.query('listen bench_rods_floor');
    for (let round = 0; round < rounds; round += 1) {
      const heard = new Promise<void>((resolve) => listener.once('notification', () => resolve()));
      const startedMs = performance.now();
      await writer.query(`begin; update floor_rod set value = ${round}; select pg_notify('bench_rods_floor', ''); commit`);
      await heard;
      await listener.query('select 1');
      floorMs.push(performance.now() - startedMs);
    }
  } finally {
    await writer.end();
    await listener.end();
  }
  for (let round = 0; round < rounds; round += 1) {
    // The lane asleep for ten minutes: wait for the claim the change's wake-up makes, then past it.
    const awake = await normalTicks();
    await put('engine.normal-tick-ms', asleepTickMs);
    await waitFor('the claim the change wakes the lane for', async () => ((await normalTicks()) > awake ? true : undefined), effectWaitMsMax, effectPollMs);
    const before = await quiet(normalTicks);
    const engineStartedMs = performance.now();
    await put('engine.normal-tick-ms', awakeTickMs);
    await waitFor('the normal lane to claim', async () => ((await normalTicks()) > before ? true : undefined), effectWaitMsMax, effectPollMs);
    engineMs.push(performance.now() - engineStartedMs);

    const bytes = (round + 1) * 1024 ** 2;
    const proxyStartedMs = performance.now();
    await put('proxy.cluster-bytes-per-second', bytes);
    await waitFor('the proxy to run with the new limit', async () => ((await proxyRod()) === bytes ? true : undefined), effectWaitMsMax, effectPollMs);
    proxyMs.push(performance.now() - proxyStartedMs);
    console.log(`round ${round + 1}: engine ${engineMs.at(-1)?.toFixed(1)} ms, proxy ${proxyMs.at(-1)?.toFixed(1)} ms`);
  }
  const line = (what: string, values: number[], goalMs: number): string =>
    `${what}: median ${median(values).toFixed(1)} ms, max ${Math.max(...values).toFixed(1)} ms over ${values.length} changes (goal: within ${goalMs} ms, one tick of the lane that reads it) — ${Math.max(...values) <= goalMs ? 'met' : 'MISSED'}`;
  console.log(line('rod change → engine acts (normal lane, 600000 → 50 ms)', engineMs, goalEngineMs));
  console.log(line('rod change → proxy runs with it (bytes per second)', proxyMs, goalProxyMs));
  console.log(`floor (an UPDATE + NOTIFY at commit heard by a LISTENing session, then a read): median ${median(floorMs).toFixed(1)} ms, max ${Math.max(...floorMs).toFixed(1)} ms over ${floorMs.length}`);
} finally {
  await cellar.destroy();
}
