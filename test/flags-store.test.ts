import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pino from 'pino';
import { CellarError } from '../src/lib/errors.js';
import { addCohortMember, createCohort, deleteCohort, flagChanges, loadFlagSnapshot, removeCohortMember, setFlagRule, unsetFlagRule } from '../src/store/flags.js';
import { FlagSnapshotReader } from '../src/store/flag-snapshot.js';
import { createOrg } from '../src/store/tenancy.js';
import { eventually } from './helpers/cellar.js';
import { type TestStore, startTestStore } from './helpers/store.js';

/** Flag rules and cohorts in a real store: validation stores nothing on refusal, every change is audited, a live reader sees changes. */

let store: TestStore;
let orgId: string;
let clusterId: string;
const actor = 'token:test';

before(async () => {
  store = await startTestStore();
  const org = await createOrg(store.pool, 'flags-org');
  assert.ok(org !== null);
  orgId = org.id;
  clusterId = 'cl_flagsstore01';
  await store.pool.query(`insert into clusters (id, org_id, name, spec, secrets) values ($1, $2, 'one', '{}', '{}')`, [clusterId, orgId]);
});

after(async () => {
  await store?.close();
});

async function refused(work: Promise<unknown>, code: string, field: string, message: RegExp): Promise<void> {
  await assert.rejects(work, (error: unknown) => {
    assert.ok(error instanceof CellarError, String(error));
    assert.equal(error.code, code);
    assert.equal(error.field, field);
    assert.match(error.message, message);
    return true;
  });
}

async function counts(): Promise<string> {
  const result = await store.pool.query<{ rules: string; cohorts: string; members: string; changes: string }>(
    'select (select count(*) from flag_rules) as rules, (select count(*) from cohorts) as cohorts, (select count(*) from cohort_members) as members, (select count(*) from control_changes) as changes',
  );
  return JSON.stringify(result.rows[0]);
}

test('a refused change stores nothing and says why: unknown key, a value not of the flag, percent out of range, a target that does not exist, no reason', async () => {
  const before = await counts();
  await refused(setFlagRule(store.pool, { key: 'no-such-flag', level: 'global', value: true, reason: 'r', actor }), 'CELLAR_E_NOT_FOUND', 'key', /no flag "no-such-flag"/);
  await refused(setFlagRule(store.pool, { key: 'durability-default', level: 'global', value: 'fast', reason: 'r', actor }), 'CELLAR_E_INVALID', 'value', /sync, sync-strict, async/);
  await refused(setFlagRule(store.pool, { key: 'backup-verification', level: 'global', value: 'true', reason: 'r', actor }), 'CELLAR_E_INVALID', 'value', /true or false/);
  await refused(setFlagRule(store.pool, { key: 'backup-verification', level: 'global', value: false, percent: 100.5, reason: 'r', actor }), 'CELLAR_E_INVALID', 'percent', /0 to 100/);
  await refused(setFlagRule(store.pool, { key: 'backup-verification', level: 'global', value: false, percent: 10.005, reason: 'r', actor }), 'CELLAR_E_INVALID', 'percent', /two decimals/);
  await refused(setFlagRule(store.pool, { key: 'backup-verification', level: 'org', target: 'org_nothere', value: false, reason: 'r', actor }), 'CELLAR_E_NOT_FOUND', 'target', /no org "org_nothere"/);
  await refused(setFlagRule(store.pool, { key: 'backup-verification', level: 'cluster', target: 'cl_nothere', value: false, reason: 'r', actor }), 'CELLAR_E_NOT_FOUND', 'target', /no live cluster/);
  await refused(setFlagRule(store.pool, { key: 'backup-verification', level: 'cell', target: 'mars', value: false, reason: 'r', actor }), 'CELLAR_E_NOT_FOUND', 'target', /no cell "mars"/);
  await refused(setFlagRule(store.pool, { key: 'backup-verification', level: 'global', value: false, reason: ' ', actor }), 'CELLAR_E_INVALID', 'reason', /reason/);
  await refused(createCohort(store.pool, { name: 'bad', values: { 'durability-default': 'fast' }, reason: 'r', actor }), 'CELLAR_E_INVALID', 'values.durability-default', /sync/);
  await refused(createCohort(store.pool, { name: 'bad', values: { 'warp-drive': true }, reason: 'r', actor }), 'CELLAR_E_NOT_FOUND', 'values', /no flag "warp-drive"/);
  await refused(addCohortMember(store.pool, { name: 'none', kind: 'org', member: orgId, reason: 'r', actor }), 'CELLAR_E_NOT_FOUND', 'name', /no cohort "none"/);
  assert.equal(await counts(), before);
});

test('set, replace and unset a rule: each is audited with its old and new value, who and why; an org is named by id or name', async () => {
  const first = await setFlagRule(store.pool, { key: 'durability-default', level: 'org', target: 'flags-org', value: 'async', percent: 25, reason: 'try async', actor });
  assert.equal(first.before, null);
  assert.deepEqual([first.after.target, first.after.value, first.after.percent], [orgId, 'async', 25]);
  const second = await setFlagRule(store.pool, { key: 'durability-default', level: 'org', target: orgId, value: 'async', reason: 'all of it', actor });
  assert.equal(second.before?.percent, 25);
  assert.equal(second.after.percent, null);
  await unsetFlagRule(store.pool, { key: 'durability-default', level: 'org', target: orgId, reason: 'back', actor });
  await refused(unsetFlagRule(store.pool, { key: 'durability-default', level: 'org', target: orgId, reason: 'again', actor }), 'CELLAR_E_NOT_FOUND', 'target', /no org rule/);
  const audit = await flagChanges(store.pool, 'flag', 'durability-default');
  assert.deepEqual(
    audit.map((change) => [change.scope, change.oldValue, change.newValue, change.actor, change.reason]),
    [
      [`org:${orgId}`, { value: 'async', percent: null }, null, actor, 'back'],
      [`org:${orgId}`, { value: 'async', percent: 25 }, { value: 'async', percent: null }, actor, 'all of it'],
      [`org:${orgId}`, null, { value: 'async', percent: 25 }, actor, 'try async'],
    ],
  );
});

test('cohorts: create with flag values, add and remove an org and a cluster, delete; the snapshot has them; each change audited', async () => {
  await createCohort(store.pool, { name: 'early', description: 'early access', values: { 'backup-verification': false }, reason: 'customer asked', actor });
  await refused(createCohort(store.pool, { name: 'early', values: {}, reason: 'r', actor }), 'CELLAR_E_CONFLICT', 'name', /exists already/);
  await addCohortMember(store.pool, { name: 'early', kind: 'org', member: 'flags-org', reason: 'r', actor });
  const withCluster = await addCohortMember(store.pool, { name: 'early', kind: 'cluster', member: clusterId, reason: 'r', actor });
  assert.deepEqual(withCluster.members, [{ kind: 'cluster', id: clusterId }, { kind: 'org', id: orgId }]);
  await refused(addCohortMember(store.pool, { name: 'early', kind: 'cluster', member: clusterId, reason: 'r', actor }), 'CELLAR_E_CONFLICT', 'member', /already/);
  await refused(addCohortMember(store.pool, { name: 'early', kind: 'cluster', member: 'cl_nothere', reason: 'r', actor }), 'CELLAR_E_NOT_FOUND', 'member', /no live cluster/);
  const snapshot = await loadFlagSnapshot(store.pool);
  assert.deepEqual(snapshot.cohortsByMember.get(orgId)?.map((cohort) => cohort.name), ['early']);
  const removed = await removeCohortMember(store.pool, { name: 'early', kind: 'org', member: 'flags-org', reason: 'r', actor });
  assert.deepEqual(removed.members, [{ kind: 'cluster', id: clusterId }]);
  await deleteCohort(store.pool, { name: 'early', reason: 'done', actor });
  assert.equal((await store.pool.query('select 1 from cohort_members')).rowCount, 0);
  const audit = await flagChanges(store.pool, 'cohort', 'early');
  assert.deepEqual(audit.map((change) => [change.scope, change.newValue === null ? 'removed' : 'set']), [
    ['global', 'removed'],
    [`org:${orgId}`, 'removed'],
    [`cluster:${clusterId}`, 'set'],
    [`org:${orgId}`, 'set'],
    ['global', 'set'],
  ]);
});

test('a live reader sees a change on the notification, well before its poll interval, and keeps its last snapshot when reads fail', async () => {
  const reader = new FlagSnapshotReader({ pool: store.pool, log: pino({ level: 'silent' }), pollMs: 60_000 });
  await reader.start();
  try {
    assert.equal(reader.variant('durability-default', { org: orgId }), 'sync');
    await setFlagRule(store.pool, { key: 'durability-default', level: 'org', target: orgId, value: 'sync-strict', reason: 'live', actor });
    // The poll is a minute away: only the notification can bring this within the deadline.
    await eventually('the reader sees the change', async () => (reader.variant('durability-default', { org: orgId }) === 'sync-strict' ? true : undefined), 10_000, 20);
    assert.equal(reader.evaluate('durability-default', { org: orgId }).decidedBy.level, 'org');
  } finally {
    reader.stop();
    await unsetFlagRule(store.pool, { key: 'durability-default', level: 'org', target: orgId, reason: 'clean up', actor });
  }
  // A reader whose store is gone keeps what it read.
  const broken = new FlagSnapshotReader({ pool: store.pool, log: pino({ level: 'silent' }), pollMs: 60_000 });
  await setFlagRule(store.pool, { key: 'backup-verification', level: 'global', value: false, reason: 'stale test', actor });
  await broken.start();
  assert.equal(broken.enabled('backup-verification', {}), false);
  const original = store.pool.query.bind(store.pool);
  (store.pool as { query: unknown }).query = () => Promise.reject(new Error('connect ECONNREFUSED'));
  try {
    await broken.refresh();
    assert.equal(broken.storeReachable, false);
    assert.equal(broken.enabled('backup-verification', {}), false);
  } finally {
    (store.pool as { query: unknown }).query = original;
    broken.stop();
    await unsetFlagRule(store.pool, { key: 'backup-verification', level: 'global', reason: 'clean up', actor });
  }
});
