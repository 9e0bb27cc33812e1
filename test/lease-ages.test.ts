import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { StoreLeaseAges } from '../src/store/local-host.js';
import { eventually } from './helpers/cellar.js';
import { type TestStore, startTestStore } from './helpers/store.js';

/**
 * A control-plane process that receives no heartbeats (engine only) judges hosts by the renewals
 * the store recorded, on the store's clock: a host renewed a moment ago is heard from, one whose
 * last renewal is old is silent for that long, and one never renewed is unknown.
 */

let store: TestStore;

before(async () => {
  store = await startTestStore();
  const insert = (id: string, address: string, renewed: string) =>
    store.pool.query(
      `insert into hosts (id, name, address, agent_port, zone, memory_mb, disk_gb, slots, lease_renewed_at)
       values ($1, $1, $2, 8435, 'z', 1024, 10, 4, ${renewed})`,
      [id, address],
    );
  await insert('ho_fresh', '10.0.0.1', 'clock_timestamp()');
  await insert('ho_stale', '10.0.0.2', "clock_timestamp() - interval '5 seconds'");
  await insert('ho_never', '10.0.0.3', 'null');
});

after(async () => {
  await store.close();
});

test('lease ages come from the store: fresh, stale by its age, unknown when never renewed; a renewal shows at the next poll', async () => {
  const ages = new StoreLeaseAges(store.pool, 50);
  ages.start();
  try {
    await eventually('the first poll', async () => (ages.silentMs('ho_stale') !== undefined ? true : undefined), 5_000, 20);
    const stale = ages.silentMs('ho_stale') ?? 0;
    assert.ok(stale >= 5_000, `stale by at least 5 s, got ${stale}`);
    assert.ok((ages.silentMs('ho_fresh') ?? Infinity) < stale);
    assert.equal(ages.silentMs('ho_never'), undefined);
    await store.pool.query("update hosts set lease_renewed_at = clock_timestamp() where id = 'ho_stale'");
    await eventually('the renewal read back', async () => ((ages.silentMs('ho_stale') ?? Infinity) < 5_000 ? true : undefined), 5_000, 20);
  } finally {
    await ages.stop();
  }
});
