import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type RevisionConfig, planChange, settingChanges } from '../src/lib/config-plan.js';
import type { CatalogueEntry } from '../src/lib/settings.js';

/** The plan of a configuration change, from a small hand-made catalogue (the real one is read in config.test.ts). */

const entry = (name: string, apply: CatalogueEntry['apply'], unit: string | null, extra: Partial<CatalogueEntry> = {}): [string, CatalogueEntry] => [
  name,
  { name, type: 'integer', unit, min: 0, max: 2_147_483_647, enumValues: null, apply, noLowerOnReplicas: false, ...extra },
];

const catalogue = new Map<string, CatalogueEntry>([
  entry('work_mem', 'reload', 'kB'),
  entry('maintenance_work_mem', 'reload', 'kB'),
  entry('effective_cache_size', 'reload', '8kB'),
  entry('shared_buffers', 'restart', '8kB'),
  entry('max_connections', 'restart', null, { noLowerOnReplicas: true }),
  entry('min_wal_size', 'reload', 'MB'),
  entry('max_wal_size', 'reload', 'MB'),
  entry('checkpoint_timeout', 'reload', 's'),
  ['checkpoint_completion_target', { name: 'checkpoint_completion_target', type: 'real', unit: null, min: 0, max: 1, enumValues: null, apply: 'reload', noLowerOnReplicas: false }],
]);

const base: RevisionConfig = { size: 'small', replicas: 1, settings: {}, defaults: {} };

describe('the plan of a change', () => {
  test('a value written another way is no change: 4MB is 4096kB', () => {
    assert.deepEqual(settingChanges(catalogue, base, { ...base, settings: { work_mem: '4096kB' } }), []);
  });

  test('reload parameters only: no restart, no write pause', () => {
    const plan = planChange(catalogue, base, { ...base, settings: { work_mem: '8MB' } });
    assert.deepEqual(plan.settings, [{ name: 'work_mem', from: '4MB', to: '8MB', apply: 'reload' }]);
    assert.equal(plan.order, 'none');
    assert.equal(plan.restart, false);
    assert.equal(plan.expectedWritePauseMs, 0);
  });

  test('raising a restart parameter: replicas first, then a switchover', () => {
    const plan = planChange(catalogue, base, { ...base, settings: { max_connections: '150' } });
    assert.equal(plan.order, 'replicasFirst');
    assert.equal(plan.switchover, true);
    assert.ok(plan.expectedWritePauseMs > 0);
  });

  test('lowering one that replicas must have no lower than their primary: the primary first, in place', () => {
    const plan = planChange(catalogue, { ...base, settings: { max_connections: '150' } }, base);
    assert.equal(plan.order, 'primaryFirst');
    assert.equal(plan.switchover, false);
  });

  test('lowering a restart parameter without that rule: replicas first', () => {
    const plan = planChange(catalogue, { ...base, settings: { shared_buffers: '256MB' } }, base);
    assert.equal(plan.order, 'replicasFirst');
  });

  test('no replica to switch over to: the primary in place', () => {
    const plan = planChange(catalogue, { ...base, replicas: 0 }, { ...base, replicas: 0, settings: { shared_buffers: '256MB' } });
    assert.equal(plan.order, 'primaryInPlace');
  });

  test('a resize changes the tuned defaults and says so; a cluster\'s own value is kept over them', () => {
    const plan = planChange(catalogue, { ...base, settings: { work_mem: '6MB' } }, { ...base, size: 'medium', settings: { work_mem: '6MB' } });
    assert.deepEqual(plan.size, { from: 'small', to: 'medium' });
    assert.ok(plan.settings.some((change) => change.name === 'shared_buffers' && change.apply === 'restart'));
    assert.ok(!plan.settings.some((change) => change.name === 'work_mem'), 'its own work_mem stays');
    assert.match(plan.steps[0] ?? '', /size small → medium/);
  });

  test('fleet defaults sit beneath the cluster\'s own settings', () => {
    const plan = planChange(catalogue, { ...base, settings: { work_mem: '6MB' } }, { ...base, settings: { work_mem: '6MB' }, defaults: { work_mem: '16MB', maintenance_work_mem: '128MB' } });
    assert.deepEqual(plan.settings.map((change) => change.name), ['maintenance_work_mem']);
  });

  test('replicas only: no setting changes, a step that says how replicas come and go', () => {
    const up = planChange(catalogue, base, { ...base, replicas: 3 });
    assert.deepEqual(up.settings, []);
    assert.deepEqual(up.replicas, { from: 1, to: 3 });
    assert.match(up.steps.join('\n'), /add 2 replica/);
    const down = planChange(catalogue, base, { ...base, replicas: 0 });
    assert.match(down.steps.join('\n'), /remove 1 replica.*leaves the routes first/);
  });
});
