import { rm } from 'node:fs/promises';
import { makeTempDir, TestCellar } from '../test/helpers/cellar.js';

/**
 * bench/test-cellar: what the prepared store and template (test/helpers/prepared.ts) save each
 * end-to-end test file. A/B, interleaved so that load from elsewhere hits both alike: a test
 * Cellar's `cellar up` plus its first cluster, started from the prepared copy or from scratch
 * (its own initdb and template build). Usage: node dist/bench/test-cellar.js [rounds]
 */
const rounds = Number(process.argv[2] ?? 3);
const results: Record<string, number[]> = { prepared: [], scratch: [] };
for (let round = 0; round < rounds; round += 1) {
  for (const mode of ['prepared', 'scratch'] as const) {
    const started = performance.now();
    const own = mode === 'scratch' ? await makeTempDir('cellar-measure-') : undefined;
    const cellar = await TestCellar.create(own === undefined ? {} : { CELLAR_DATA: `${own}/data` });
    await cellar.start();
    const upMs = performance.now() - started;
    const created = await cellar.cli(['clusters', 'create', 'x', '--replicas', '0', '--wait']);
    if (created.code !== 0) throw new Error(created.stderr);
    const totalMs = performance.now() - started;
    await cellar.destroy();
    if (own !== undefined) await rm(own, { recursive: true, force: true });
    results[mode]?.push(totalMs);
    console.log(`${mode} round ${round}: up ${Math.round(upMs)} ms, up + first cluster ${Math.round(totalMs)} ms`);
  }
}
for (const [mode, values] of Object.entries(results)) console.log(`${mode}: median ${Math.round(values.sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? 0)} ms of ${values.map(Math.round).join(', ')}`);
