import assert from 'node:assert/strict';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { ClusterView } from '../src/api/view.js';
import { TestCellar } from './helpers/cellar.js';

/** Two Cellars on one host, told apart only by CELLAR_HOME, CELLAR_API_PORT and the port range. */

let first: TestCellar;
let second: TestCellar;

before(async () => {
  [first, second] = await Promise.all([TestCellar.create(), TestCellar.create()]);
  await Promise.all([first.start(), second.start()]);
});

after(async () => {
  await Promise.all([first.destroy(), second.destroy()]);
});

test('two Cellars run side by side: each has its own credentials (0600), store and clusters, with ports from its own range', async () => {
  for (const cellar of [first, second]) {
    const mode = (await stat(join(cellar.home, 'credentials'))).mode & 0o777;
    assert.equal(mode, 0o600, 'credentials are readable by their owner only');
  }
  const [a, b] = await Promise.all([
    first.cliJson<ClusterView>(['clusters', 'create', 'same-name', '--replicas', '0', '--wait']),
    second.cliJson<ClusterView>(['clusters', 'create', 'same-name', '--replicas', '0', '--wait']),
  ]);
  assert.equal(a.state, 'running');
  assert.equal(b.state, 'running');
  const range = (cellar: TestCellar) => (cellar.env['CELLAR_PORT_RANGE'] as string).split('-').map(Number) as [number, number];
  for (const [cellar, cluster] of [[first, a], [second, b]] as const) {
    const [low, high] = range(cellar);
    const port = cluster.instances[0]?.port ?? 0;
    assert.ok(port >= low && port <= high, `port ${port} within ${low}-${high}`);
  }
  assert.notEqual(a.id, b.id);
  assert.deepEqual((await first.cliJson<ClusterView[]>(['clusters', 'list'])).map((cluster) => cluster.id), [a.id]);
  assert.deepEqual((await second.cliJson<ClusterView[]>(['clusters', 'list'])).map((cluster) => cluster.id), [b.id]);
});
