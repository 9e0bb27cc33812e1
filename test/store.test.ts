import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { migrate } from '../src/store/migrate.js';
import { openPool, prepared } from '../src/store/pool.js';
import { authenticate, createOrg, createToken } from '../src/store/tenancy.js';
import { InvariantError } from '../src/lib/assert.js';
import { type TestStore, startTestStore } from './helpers/store.js';

let store: TestStore;
before(async () => {
  store = await startTestStore();
});
after(async () => {
  await store.close();
});

test('two control planes migrating a fresh store at once apply each migration exactly once', async () => {
  // Unique on the server: the run's shared one holds other files' stores too.
  const fresh = `fresh_${process.pid}`;
  await store.pool.query(`create database ${fresh}`);
  const url = new URL(store.url);
  url.pathname = `/${fresh}`;
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
    await store.pool.query(`drop database if exists ${fresh}`);
  }
});

test('a hot statement is prepared once per connection and reused; one name never stands for two texts', async () => {
  const single = openPool(store.url, 1);
  try {
    const org = await createOrg(single, 'prepared-org');
    assert.ok(org !== null);
    const token = await createToken(single, org.id, false);
    const before = await single.query<{ calls: number }>("select count(*)::int as calls from pg_prepared_statements where name = 'tokens_authenticate'");
    assert.deepEqual(before.rows, [{ calls: 0 }], 'not prepared before its first use');
    for (let call = 0; call < 3; call++) assert.equal((await authenticate(single, token)).owner?.orgId, org.id);
    // The pool has one connection: the statement is on it, prepared once, used three times.
    const after = await single.query<{ statement: string; executions: number }>(
      "select statement, (generic_plans + custom_plans)::int as executions from pg_prepared_statements where name = 'tokens_authenticate'",
    );
    assert.equal(after.rows.length, 1);
    assert.match(after.rows[0]?.statement ?? '', /from tokens t join orgs o/);
    assert.equal(after.rows[0]?.executions, 3, 'parsed once, executed three times');
  } finally {
    await single.end();
  }
  assert.doesNotThrow(() => prepared('store_test_probe', 'select 1'));
  assert.doesNotThrow(() => prepared('store_test_probe', 'select 1'), 'the same text again is the same statement');
  assert.throws(() => prepared('store_test_probe', 'select 2'), InvariantError);
});
