import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { migrate } from '../src/store/migrate.js';
import { openPool } from '../src/store/pool.js';
import { type TestStore, startTestStore } from './helpers/store.js';

let store: TestStore;
before(async () => {
  store = await startTestStore();
});
after(async () => {
  await store.close();
});

test('two control planes migrating a fresh store at once apply each migration exactly once', async () => {
  await store.pool.query('create database fresh');
  const url = new URL(store.url);
  url.pathname = '/fresh';
  const first = openPool(url.toString(), 2);
  const second = openPool(url.toString(), 2);
  try {
    const [a, b] = await Promise.all([migrate(first), migrate(second)]);
    assert.ok(a.length > 0 || b.length > 0, 'someone applied the migrations');
    assert.deepEqual([...a, ...b].sort(), [...new Set([...a, ...b])].sort(), 'no migration applied twice');
    const applied = await first.query<{ version: number }>('select version from cellar_migrations order by version');
    assert.deepEqual(applied.rows.map((row) => row.version), [...a, ...b].sort((x, y) => x - y));
    assert.deepEqual(await migrate(first), [], 'a later start has nothing to do');
  } finally {
    await first.end();
    await second.end();
  }
});
