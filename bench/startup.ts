import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { median } from './lib.js';

/**
 * How long a Cellar program takes to start, bundled (dist/bundle, what runs) against the same
 * sources compiled module by module (dist/src), beside the floor: a bare `node -e 0`.
 * Interleaved rounds, each a fresh process; wall time of the whole process, median.
 *
 *   node dist/bench/startup.js [--rounds N]
 *
 * - `cellar --help`: the CLI alone (every command that talks to the API starts like this);
 * - `cellar down --json` with nothing running: the CLI and the control plane's host module;
 * - importing the control plane (what `cellar up` loads before it starts anything).
 */

const roundsArgument = process.argv.indexOf('--rounds');
const rounds = roundsArgument === -1 ? 20 : Number(process.argv[roundsArgument + 1]);
if (!Number.isInteger(rounds) || rounds < 1 || rounds > 1_000) throw new Error('--rounds must be an integer from 1 to 1000');
const runMsMax = 30_000;

const dist = fileURLToPath(new URL('../', import.meta.url));
const compiled = { cli: join(dist, 'src/bin/cellar.js'), controlPlane: join(dist, 'src/controlplane/controlplane.js') };
const meta = JSON.parse(await readFile(join(dist, 'bundle/meta.json'), 'utf8')) as { outputs: Record<string, { entryPoint?: string }> };
const controlPlaneChunk = Object.entries(meta.outputs).find(([, output]) => output.entryPoint === 'src/controlplane/controlplane.ts')?.[0];
if (controlPlaneChunk === undefined) throw new Error('dist/bundle/meta.json has no output for src/controlplane/controlplane.ts: run npm run build');
const bundled = { cli: join(dist, 'bundle/bin/cellar.js'), controlPlane: join(dist, '..', controlPlaneChunk) };

const home = await mkdtemp(join(tmpdir(), 'cellar-bench-startup-'));
const environment = { PATH: process.env['PATH'] ?? '', CELLAR_HOME: join(home, 'home'), CELLAR_DATA: join(home, 'data') };

function timed(args: readonly string[]): number {
  const started = process.hrtime.bigint();
  const result = spawnSync(process.execPath, args, { env: environment, stdio: ['ignore', 'ignore', 'pipe'], timeout: runMsMax });
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  if (result.status !== 0) throw new Error(`node ${args.join(' ')} exited ${String(result.status ?? result.signal)}: ${result.stderr.toString()}`);
  return ms;
}

const importOf = (file: string) => ['--input-type=module', '-e', `await import(${JSON.stringify(pathToFileURL(file).href)})`];
const cases: readonly { name: string; compiled: readonly string[]; bundled: readonly string[] }[] = [
  { name: 'cellar --help', compiled: [compiled.cli, '--help'], bundled: [bundled.cli, '--help'] },
  { name: 'cellar down --json (nothing running)', compiled: [compiled.cli, 'down', '--json'], bundled: [bundled.cli, 'down', '--json'] },
  { name: 'import the control plane', compiled: importOf(compiled.controlPlane), bundled: importOf(bundled.controlPlane) },
];

try {
  const floor: number[] = [];
  const samples = cases.map(() => ({ compiled: [] as number[], bundled: [] as number[] }));
  // One warm-up of each, then interleaved rounds: the page cache and the CPU's state are the same for all.
  for (const item of cases) {
    timed(item.compiled);
    timed(item.bundled);
  }
  for (let round = 0; round < rounds; round += 1) {
    floor.push(timed(['-e', '0']));
    cases.forEach((item, index) => {
      samples[index]?.compiled.push(timed(item.compiled));
      samples[index]?.bundled.push(timed(item.bundled));
    });
  }
  const floorMs = median(floor);
  console.log(`floor (node -e 0): ${floorMs.toFixed(0)} ms (median of ${rounds})`);
  cases.forEach((item, index) => {
    const sample = samples[index];
    if (sample === undefined) return;
    const [a, b] = [median(sample.compiled), median(sample.bundled)];
    console.log(`${item.name}: bundled ${b.toFixed(0)} ms, module by module ${a.toFixed(0)} ms; above the floor ${(b - floorMs).toFixed(0)} vs ${(a - floorMs).toFixed(0)} ms`);
  });
} finally {
  await rm(home, { recursive: true, force: true });
}
