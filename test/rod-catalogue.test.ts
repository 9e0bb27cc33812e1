import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { ConfigError, loadConfig } from '../src/config.js';
import { catalogueDefaults, findRod, rodCatalogue, rodValueProblem } from '../src/lib/rod-catalogue.js';
import { TokenBucket } from '../src/proxy/throttle.js';
import { processRodDefaults } from '../src/store/rods.js';

/** The rod catalogue (docs/CONTROLS.md "Rods"): pure checks, no store. */

const configSource = await readFile(new URL('../../src/config.ts', import.meta.url), 'utf8');

test('every rod has a unique dotted kebab-case name, a description, and whole-number bounds with its default inside', () => {
  const names = rodCatalogue.map((rod) => rod.name);
  assert.equal(new Set(names).size, names.length, 'names are unique');
  for (const rod of rodCatalogue) {
    assert.match(rod.name, /^[a-z]+(-[a-z]+)*\.[a-z]+(-[a-z]+)*$/, `${rod.name}: group.kebab-name`);
    assert.ok(rod.description.length > 10, `${rod.name} says what it steers`);
    for (const bound of [rod.min, rod.max, rod.default]) assert.ok(Number.isSafeInteger(bound), `${rod.name}: ${bound} is a whole number`);
    assert.ok(rod.min <= rod.default && rod.default <= rod.max, `${rod.name}: default ${rod.default} within [${rod.min}, ${rod.max}]`);
    assert.equal(rodValueProblem(rod, rod.default), null);
  }
});

test('the issue\'s rates are all rods: ticks, claims, admission, rollout rate, backup rate and checks, proxy throttles, failover breaker, warm pool', () => {
  for (const name of [
    'engine.high-tick-ms',
    'engine.normal-tick-ms',
    'engine.claims-per-tick',
    'provisioning.creates-per-tick',
    'rollout.clusters-per-minute',
    'backup.max-rate-bytes-per-second',
    'backup.verify-concurrency',
    'proxy.cluster-connections-max',
    'proxy.cluster-connects-per-second',
    'proxy.cluster-bytes-per-second',
    'ha.failovers-max',
    'ha.failover-window-ms',
    'warm-pool.size',
  ]) {
    assert.notEqual(findRod(name), null, name);
  }
  assert.equal(findRod('engine.no-such-rod'), null);
});

test('every environment variable a rod names is read by config.ts, with the same bounds and default', () => {
  const defaults = processRodDefaults(loadConfig({}));
  assert.deepEqual(defaults, catalogueDefaults(), "with no environment the process runs at the catalogue's defaults");
  for (const rod of rodCatalogue) {
    if (rod.envVar === null) continue;
    assert.ok(configSource.includes(`'${rod.envVar}'`), `${rod.envVar} is read in src/config.ts`);
    for (const value of [rod.min, rod.max]) {
      assert.equal(processRodDefaults(loadConfig({ [rod.envVar]: String(value) }))[rod.name], value, `${rod.envVar}=${value} is the process's default of ${rod.name}`);
    }
    for (const value of [rod.min - 1, rod.max + 1]) {
      assert.throws(() => loadConfig({ [rod.envVar as string]: String(value) }), ConfigError, `${rod.envVar}=${value} is refused at start as it would be as a rod`);
    }
  }
});

test('a value outside the bounds, or not whole, is refused naming the rod, its bounds and unit', () => {
  const rod = findRod('engine.normal-tick-ms');
  assert.ok(rod !== null);
  assert.equal(rodValueProblem(rod, 9), 'engine.normal-tick-ms must be a whole number from 10 to 600000 (ms); got 9');
  assert.notEqual(rodValueProblem(rod, 600_001), null);
  assert.notEqual(rodValueProblem(rod, 100.5), null);
  assert.equal(rodValueProblem(rod, 10), null);
});

test('a re-rated token bucket counts what accrued at the old rate, then the new; a debt stays owed', () => {
  const bucket = new TokenBucket(1_000, 1_000, 0);
  assert.equal(bucket.reserve(3_000, 0), 2_000, 'a debt of 2000 tokens takes 2 s at 1000/s');
  bucket.setRate(4_000, 4_000, 1_000);
  assert.equal(bucket.rate, 4_000);
  // 1 s at the old rate paid 1000 of the debt; the other 1000 (and one token) take about 250 ms at the new rate.
  assert.equal(bucket.waitMs(1_000), (1_001 / 4_000) * 1_000);
  assert.equal(bucket.reserve(0, 1_250), 0, 'paid off a quarter second later');
});
