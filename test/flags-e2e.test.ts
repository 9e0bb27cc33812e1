import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { CohortDetail, FlagDetail, FlagExplainView, FlagRuleChangeView, FlagView, StaleFlagView } from '../src/api/flags.js';
import type { ClusterView } from '../src/api/view.js';
import { TestCellar, eventually, makeTempDir } from './helpers/cellar.js';
import { testPort } from './helpers/ports.js';

/**
 * Flags end to end (docs/CONTROLS.md, "Flags"): the CLI sets durability-default for one org and
 * creates there follow it; explain names the rule; a cohort reaches a cluster of another org; a
 * non-admin is refused and nothing changes; the audit has every change.
 */

const proxyBin = fileURLToPath(new URL('../bundle/bin/cellar-proxy.js', import.meta.url));
/** Making the cell CA and the proxy's certificate with the openssl CLI takes seconds on a busy machine. */
const proxyStartWaitMs = 60_000;

interface ErrorBody {
  error: { code: string; message: string; field?: string };
}

let cellar: TestCellar;
const tokens: Record<string, string> = {};
const orgIds: Record<string, string> = {};

before(async () => {
  // At info, so the data plane's "primary data directory created" line says whether the template was used.
  cellar = await TestCellar.create({ CELLAR_LOG_LEVEL: 'info' });
  await cellar.start();
  for (const name of ['alpha', 'beta', 'gamma']) {
    const created = await cellar.api<{ org: { id: string }; token: string }>('POST', '/v1/orgs', { name });
    assert.equal(created.status, 201);
    tokens[name] = created.body.token;
    orgIds[name] = created.body.org.id;
  }
});

after(async () => {
  await cellar?.destroy();
});

async function create(org: string, name: string): Promise<ClusterView> {
  const created = await cellar.api<ClusterView>('POST', '/v1/clusters', { name, replicas: 1, size: 'micro' }, tokens[org]);
  assert.equal(created.status, 201, JSON.stringify(created.body));
  return created.body;
}

async function remove(org: string, name: string): Promise<void> {
  assert.equal((await cellar.api('DELETE', `/v1/clusters/${name}`, undefined, tokens[org])).status, 202);
}

/** An explain the admin reads; anything but 200 fails with the answer. */
async function explain(path: string): Promise<FlagExplainView> {
  const answer = await cellar.api<FlagExplainView>('GET', path);
  assert.equal(answer.status, 200, `GET ${path}: ${JSON.stringify(answer.body)}`);
  return answer.body;
}

async function changeCount(): Promise<number> {
  return (await cellar.storeQuery<{ count: number }>('select count(*)::int as count from control_changes'))[0]?.count ?? -1;
}

test('a flag set for one org through the CLI decides the durability of creates there only; explain names the rule; a cohort reaches a cluster of another org; the audit has every change', async () => {
  const listed = (await cellar.api<{ flags: FlagView[] }>('GET', '/v1/flags')).body.flags;
  assert.deepEqual(listed.map((flag) => flag.key), ['durability-default', 'provision-from-template', 'backup-verification', 'proxy-native-relay']);

  const set = await cellar.cliJson<FlagRuleChangeView>(['flags', 'set', 'durability-default', 'async', '--org', 'alpha', '--reason', 'alpha tries async']);
  assert.deepEqual([set.before, set.after?.level, set.after?.target, set.after?.value], [null, 'org', orgIds['alpha'], 'async']);

  const human = await cellar.cli(['flags', 'explain', 'durability-default', '--org', 'beta']);
  assert.match(human.stdout, /durability-default = sync\n\s+decided by the catalogue's default: no rule applies/);
  await cellar.cliJson<CohortDetail>(['cohorts', 'create', 'early', '--set', 'durability-default=async', '--description', 'early access', '--reason', 'customer asked']);

  const alphaCluster = await create('alpha', 'a1');
  const betaCluster = await create('beta', 'b1');
  assert.equal(alphaCluster.durability, 'async', 'the org rule decides');
  assert.equal(betaCluster.durability, 'sync', 'another org keeps the default');

  const explained = await cellar.cliJson<FlagExplainView>(['flags', 'explain', 'durability-default', '--cluster', alphaCluster.id]);
  assert.deepEqual([explained.value, explained.decidedBy.level, explained.decidedBy.target, explained.context.org], ['async', 'org', orgIds['alpha'], orgIds['alpha']]);
  assert.match(explained.why, new RegExp(`org rule for ${orgIds['alpha']}`));

  // The cohort gets beta's cluster and the org gamma: each gets async, nothing else of beta does.
  await cellar.cliJson<CohortDetail>(['cohorts', 'add', 'early', '--cluster', betaCluster.id, '--reason', 'their first cluster']);
  await cellar.cliJson<CohortDetail>(['cohorts', 'add', 'early', '--org', 'gamma', '--reason', 'all of gamma']);
  const viaCohort = await explain(`/v1/flags/durability-default/explain?cluster=${betaCluster.id}`);
  assert.deepEqual([viaCohort.value, viaCohort.decidedBy.level, viaCohort.decidedBy.cohort], ['async', 'cohort', 'early']);
  assert.match(viaCohort.why, new RegExp(`cohort early, which ${betaCluster.id} is a member of`));
  // A percentage: explain shows the bucket either way. Before b1's delete: a deleted cluster is no
  // explain's target (404), and a delete finishes as soon as its machine has run.
  assert.equal((await cellar.api('PUT', '/v1/flags/backup-verification', { level: 'global', value: false, percent: 50, reason: 'half' })).status, 200);
  const halved = await explain(`/v1/flags/backup-verification/explain?cluster=${betaCluster.id}`);
  assert.match(halved.why, /buckets at \d+\.\d\d/);
  await cellar.cliJson(['flags', 'unset', 'backup-verification', '--reason', 'undo']);
  // What follows needs no running clusters: deleting them at once keeps the machine free for the rest.
  await remove('alpha', 'a1');
  await remove('beta', 'b1');
  assert.equal((await create('gamma', 'g1')).durability, 'async', "a cohort's org member creates with its value");
  await remove('gamma', 'g1');
  assert.equal((await create('beta', 'b2')).durability, 'sync', 'a non-member of the same org does not');
  await remove('beta', 'b2');

  const shown = (await cellar.api<FlagDetail>('GET', '/v1/flags/durability-default')).body;
  assert.deepEqual(shown.cohorts, [{ name: 'early', value: 'async', members: 2 }]);
  assert.deepEqual(shown.changes.map((change) => [change.scope, change.newValue, change.reason]), [[`org:${orgIds['alpha']}`, { value: 'async', percent: null }, 'alpha tries async']]);
  const cohort = (await cellar.api<CohortDetail>('GET', '/v1/cohorts/early')).body;
  assert.deepEqual(cohort.changes.map((change) => change.reason), ['all of gamma', 'their first cluster', 'customer asked']);
  const audit = await cellar.storeQuery<{ kind: string; name: string; scope: string; actor: string }>('select kind, name, scope, actor from control_changes order by id');
  assert.deepEqual(audit.map((change) => `${change.kind} ${change.name} ${change.scope}`), [
    `flag durability-default org:${orgIds['alpha']}`,
    'cohort early global',
    `cohort early cluster:${betaCluster.id}`,
    `cohort early org:${orgIds['gamma']}`,
    'flag backup-verification global',
    'flag backup-verification global',
  ]);
  assert.ok(audit.every((change) => change.actor.startsWith('token:')));
  const events = await cellar.storeQuery<{ kind: string; entity_id: string; code: string }>(`select kind, entity_id, code from events where kind in ('flag', 'cohort') order by id`);
  assert.deepEqual(events.map((event) => `${event.kind} ${event.entity_id} ${event.code}`), audit.map((change) => `${change.kind} ${change.name} ${change.kind}_changed`), 'every audited change is an event too');
  const stale = (await cellar.api<{ stale: StaleFlagView[] }>('GET', '/v1/flags-stale')).body.stale;
  assert.deepEqual(stale, []);
});

test('a non-admin token is refused (403) on every flag and cohort route and nothing changes; bad input is refused naming the field', async () => {
  const before = await changeCount();
  const org = tokens['alpha'];
  const attempts: [string, string, unknown][] = [
    ['GET', '/v1/flags', undefined],
    ['PUT', '/v1/flags/durability-default', { level: 'org', target: 'alpha', value: 'sync', reason: 'mine' }],
    ['DELETE', '/v1/flags/durability-default/rules', { level: 'org', target: 'alpha', reason: 'mine' }],
    ['GET', '/v1/flags/durability-default/explain?org=alpha', undefined],
    ['GET', '/v1/flags-stale', undefined],
    ['POST', '/v1/cohorts', { name: 'mine', values: {}, reason: 'mine' }],
    ['POST', '/v1/cohorts/early/members/add', { kind: 'org', member: 'alpha', reason: 'mine' }],
    ['DELETE', '/v1/cohorts/early', { reason: 'mine' }],
  ];
  for (const [method, path, body] of attempts) {
    const answer = await cellar.api<ErrorBody>(method, path, body, org);
    assert.equal(answer.status, 403, `${method} ${path}`);
    assert.equal(answer.body.error.code, 'CELLAR_E_FORBIDDEN');
  }
  const unknown = await cellar.api<ErrorBody>('PUT', '/v1/flags/warp-drive', { level: 'global', value: true, reason: 'r' });
  assert.deepEqual([unknown.status, unknown.body.error.field], [404, 'key']);
  assert.match(unknown.body.error.message, /no flag "warp-drive"/);
  const badValue = await cellar.api<ErrorBody>('PUT', '/v1/flags/durability-default', { level: 'global', value: 'fast', reason: 'r' });
  assert.deepEqual([badValue.status, badValue.body.error.field], [400, 'value']);
  assert.match(badValue.body.error.message, /sync, sync-strict, async/);
  const badPercent = await cellar.api<ErrorBody>('PUT', '/v1/flags/durability-default', { level: 'global', value: 'async', percent: 101, reason: 'r' });
  assert.deepEqual([badPercent.status, badPercent.body.error.field], [400, 'percent']);
  const noOrg = await cellar.api<ErrorBody>('PUT', '/v1/flags/durability-default', { level: 'org', target: 'nobody', value: 'async', reason: 'r' });
  assert.deepEqual([noOrg.status, noOrg.body.error.field], [404, 'target']);
  const cli = await cellar.cli(['flags', 'set', 'durability-default', 'fast', '--reason', 'r']);
  assert.equal(cli.code, 1);
  assert.match(cli.stderr, /value of flag durability-default must be one of sync, sync-strict, async.*\[CELLAR_E_INVALID\]/);
  assert.equal(await changeCount(), before, 'nothing was stored');
});

test('a proxy reads proxy-native-relay from its store at start: a global rule turns the native relay off, and its log says which rule decided', async () => {
  await cellar.cliJson(['flags', 'set', 'proxy-native-relay', 'false', '--reason', 'relay investigation']);
  const home = await makeTempDir('cellar-flags-proxy-');
  const child = spawn(process.execPath, [proxyBin], {
    env: {
      ...cellar.env,
      CELLAR_HOME: home,
      CELLAR_STORE_URL: await cellar.storeUrl(),
      CELLAR_PROXY_PORT: String(await testPort()),
      CELLAR_PROXY_RO_PORT: String(await testPort()),
      CELLAR_PROXY_ADMIN_PORT: String(await testPort()),
      CELLAR_PROXY_NATIVE_RELAY: 'true',
      CELLAR_LOG_LEVEL: 'info',
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr.on('data', (chunk: Buffer) => (log += chunk.toString()));
  try {
    const listening = await eventually(
      'the second proxy to listen',
      async () => {
        if (child.exitCode !== null) throw new Error(`the proxy exited ${child.exitCode}: ${log}`);
        return log.split('\n').find((line) => line.includes('proxy listening'));
      },
      proxyStartWaitMs,
    );
    const fields = JSON.parse(listening) as { nativeRelay: boolean; nativeRelayDecidedBy: string };
    assert.equal(fields.nativeRelay, false, 'the global rule beats CELLAR_PROXY_NATIVE_RELAY=true');
    assert.match(fields.nativeRelayDecidedBy, /^global rule/);
  } finally {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    if (child.exitCode === null) child.kill('SIGTERM');
    await exited;
    await rm(home, { recursive: true, force: true });
    await cellar.cliJson(['flags', 'unset', 'proxy-native-relay', '--reason', 'done']);
  }
});

test('provision-from-template off for one org: its new primary is made by initdb, not from the template', async () => {
  await cellar.cliJson(['flags', 'set', 'provision-from-template', 'false', '--org', 'gamma', '--reason', 'compare initdb']);
  try {
    const created = await cellar.api<ClusterView>('POST', '/v1/clusters', { name: 'g-initdb', replicas: 0, size: 'micro' }, tokens['gamma']);
    assert.equal(created.status, 201);
    const primary = await eventually(
      'the primary instance row',
      async () => (await cellar.api<ClusterView>('GET', '/v1/clusters/g-initdb', undefined, tokens['gamma'])).body.instances.find((instance) => instance.role === 'primary')?.id,
      30_000,
    );
    const line = await eventually('the primary data directory to be created', async () => cellar.logs().split('\n').find((text) => text.includes('primary data directory created') && text.includes(primary)), 60_000);
    assert.equal((JSON.parse(line) as { template: boolean }).template, false);
  } finally {
    await cellar.cliJson(['flags', 'unset', 'provision-from-template', '--org', 'gamma', '--reason', 'done']);
    await remove('gamma', 'g-initdb');
  }
});
