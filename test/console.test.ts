import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, afterEach, before, describe, test, type TestContext } from 'node:test';
import { type BrowserContext, type Locator, type Page, chromium } from 'playwright-core';
import { TestCellar, eventually } from './helpers/cellar.js';

/**
 * The web console in a real browser (Debian's chromium, headless, driven by playwright-core)
 * against one real Cellar shared by the file's tests. Every test leaves a screenshot in
 * test-output/console/ (git-ignored).
 */

const chromiumPath = '/usr/bin/chromium';
const chromiumArgs = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'];
const outputDir = fileURLToPath(new URL('../../test-output/console/', import.meta.url));
/** Creating a cluster with a replica from the prepared template, on a loaded 2-core machine. */
const runningWaitMs = 120_000;
/** A change in the store reaches the page through the stream within a second; this is the bound for slow machines. */
const liveWaitMs = 30_000;
/** The stream checks the token at every 10 s ping at the latest. */
const revokedWaitMs = 30_000;
const uiWaitMs = 10_000;

let cellar: TestCellar;
let context: BrowserContext;
let profileDir: string;
let adminToken: string;
const clusterName = 'web-app';
/** Pages a test opened and has not closed: a failed test's are photographed and closed after it. */
const openPages = new Set<Page>();
/** What each page logged as an error (script errors, CSP refusals), less failed requests the test made on purpose. */
const pageErrors = new WeakMap<Page, string[]>();

async function openSignedIn(token: string): Promise<Page> {
  const page = await context.newPage();
  openPages.add(page);
  page.on('close', () => openPages.delete(page));
  const errors: string[] = [];
  pageErrors.set(page, errors);
  page.on('pageerror', (error) => errors.push(error.message));
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) errors.push(message.text());
  });
  page.setDefaultTimeout(uiWaitMs);
  await page.goto(cellar.apiUrl);
  await page.getByTestId('signin-token').fill(token);
  await page.getByTestId('signin-submit').click();
  await page.getByTestId('nav').waitFor();
  return page;
}

/** Saves what the page shows, and checks it logged no error (a script error, a CSP refusal). */
async function screenshot(t: TestContext, page: Page, name: string): Promise<void> {
  const path = join(outputDir, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  t.diagnostic(`screenshot: ${path}`);
  assert.deepEqual(pageErrors.get(page) ?? [], [], 'the page logged no error');
}

/** The text of a test id, trimmed; waits for it to exist. */
async function textOf(page: Page, testId: string): Promise<string> {
  return ((await page.getByTestId(testId).first().textContent()) ?? '').trim();
}

/** The shared cluster's page, signed in as admin, once the cluster runs: the page, its primary's row and the primary's id. */
async function openRunningCluster(): Promise<{ page: Page; primaryRow: Locator; primary: string }> {
  const page = await openSignedIn(adminToken);
  await page.goto(`${cellar.apiUrl}/#/clusters/${clusterName}`);
  await page.locator('[data-testid="cluster-state"]', { hasText: /^running$/ }).waitFor({ timeout: runningWaitMs });
  const primaryRow = page.locator('[data-testid^="instance-"][data-role="primary"]');
  const primary = (await primaryRow.getAttribute('data-testid'))?.slice('instance-'.length);
  assert.ok(primary);
  return { page, primaryRow, primary };
}

describe('the web console', { timeout: 600_000 }, () => {
  before(async () => {
    await mkdir(outputDir, { recursive: true });
    cellar = await TestCellar.create();
    await cellar.start();
    adminToken = await cellar.token();
    profileDir = await mkdtemp(join(tmpdir(), 'cellar-console-chromium-'));
    context = await chromium.launchPersistentContext(profileDir, { executablePath: chromiumPath, headless: true, args: chromiumArgs, viewport: { width: 1280, height: 900 } });
  });

  afterEach(async (context) => {
    // Each test's own hook: its context is the test's (node:test types it wider).
    const t = context as TestContext;
    for (const page of openPages) {
      const path = join(outputDir, `failed-${t.name.replace(/[^a-z0-9]+/gi, '-').slice(0, 60)}.png`);
      await page.screenshot({ path, fullPage: true });
      t.diagnostic(`screenshot of a failed test's page: ${path}; it logged: ${JSON.stringify(pageErrors.get(page) ?? [])}`);
      await page.close();
    }
  });

  after(async () => {
    await context?.close();
    if (profileDir !== undefined) await rm(profileDir, { recursive: true, force: true });
    await cellar?.destroy();
  });

  test('the console is served at / with its security headers and compressed assets', async () => {
    const index = await fetch(`${cellar.apiUrl}/`, { headers: { 'accept-encoding': 'br' } });
    assert.equal(index.status, 200);
    assert.match(index.headers.get('content-security-policy') ?? '', /default-src 'self'/);
    assert.equal(index.headers.get('x-content-type-options'), 'nosniff');
    assert.equal(index.headers.get('referrer-policy'), 'no-referrer');
    const script = await fetch(`${cellar.apiUrl}/app.js`, { headers: { 'accept-encoding': 'br, gzip' } });
    assert.equal(script.status, 200);
    assert.equal(script.headers.get('content-encoding'), 'br');
    const missing = await fetch(`${cellar.apiUrl}/v1/no-such-route`, { headers: { authorization: `Bearer ${adminToken}` } });
    assert.equal(missing.status, 404);
    assert.ok(((await missing.json()) as { error?: unknown }).error, 'an unknown API path keeps the API error shape');
  });

  test("a refused token is the sign-in form's error, with the API's message", async (t) => {
    const page = await context.newPage();
    openPages.add(page);
    page.on('close', () => openPages.delete(page));
    await page.goto(cellar.apiUrl);
    await page.getByTestId('signin-token').fill('not-a-token');
    await page.getByTestId('signin-submit').click();
    const shown = await textOf(page, 'signin-error');
    const direct = await cellar.api<{ error: { message: string } }>('GET', '/v1/whoami', undefined, 'not-a-token');
    assert.equal(direct.status, 401);
    assert.equal(shown, direct.body.error.message);
    assert.equal(await page.getByTestId('nav').count(), 0, 'not signed in');
    await screenshot(t, page, 'signin-refused');
    await page.close();
  });

  test('sign in, create a cluster from the form, watch it reach running without reloading, with its events, diagram and connection string', async (t) => {
    const page = await openSignedIn(adminToken);
    let loads = 0;
    page.on('load', () => (loads += 1));
    await page.getByTestId('nav-new').click();
    await page.getByTestId('create-name').fill(clusterName);
    await page.getByTestId('create-replicas').fill('1');
    await page.getByTestId('create-submit').click();
    await page.getByTestId('cluster-state').waitFor();
    await page.locator('[data-testid="cluster-state"]', { hasText: /^running$/ }).waitFor({ timeout: runningWaitMs });
    assert.equal(loads, 0, 'the page was never reloaded');
    const events = await page.getByTestId('event').count();
    assert.ok(events > 0, 'the timeline shows the cluster events');
    const label = await textOf(page, 'cluster-label');
    assert.equal(label, 'running');
    await page.locator(`[data-testid="diagram-current"][data-label="${label}"]`).waitFor();
    assert.match(await textOf(page, 'cluster-uri'), /^postgresql:\/\/.+@127\.0\.0\.1:\d+\//);
    assert.match(await textOf(page, 'cluster-readonly-uri'), /^postgresql:\/\//);
    assert.equal(await page.locator('[data-testid^="instance-"][data-role]').count(), 2, 'the primary and its replica are listed');
    await screenshot(t, page, 'cluster-running');
    // A narrow window: one column, nothing wider than the screen.
    await page.setViewportSize({ width: 380, height: 900 });
    // The charts take their new width once their resize observer has run.
    await page.waitForFunction(() => document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1, undefined, { timeout: uiWaitMs });
    await screenshot(t, page, 'cluster-narrow');
    await page.close();
  });

  test("a bad value in the form shows the API's message beside its field, and nothing is created", async (t) => {
    const page = await openSignedIn(adminToken);
    await page.goto(`${cellar.apiUrl}/#/new`);
    await page.getByTestId('create-name').fill('Bad_Name');
    await page.getByTestId('create-submit').click();
    const shown = await textOf(page, 'error-name');
    const direct = await cellar.api<{ error: { message: string; field: string } }>('POST', '/v1/clusters', { name: 'Bad_Name' });
    assert.equal(direct.status, 400);
    assert.equal(direct.body.error.field, 'name');
    assert.equal(shown, direct.body.error.message, "the API's own message, beside the name field");
    await page.getByTestId('create-name').fill('good-name-but');
    await page.getByTestId('create-replicas').fill('99');
    await page.getByTestId('create-submit').click();
    await page.getByTestId('error-replicas').waitFor();
    assert.equal(await page.getByTestId('error-name').count(), 0, 'the old error is gone');
    await screenshot(t, page, 'create-bad-value');
    const clusters = await cellar.api<{ clusters: { name: string }[] }>('GET', '/v1/clusters');
    assert.deepEqual(clusters.body.clusters.map((cluster) => cluster.name).filter((name) => name !== clusterName), [], 'nothing else was created');
    await page.close();
  });

  test('a switchover asks first, then the roles and labels change live', async (t) => {
    const { page, primary: oldPrimary } = await openRunningCluster();
    await page.getByTestId('switchover').click();
    await page.getByTestId('confirm-dialog').waitFor();
    await page.getByTestId('confirm-ok').click();
    await page.locator(`[data-testid="instance-${oldPrimary}"][data-role="replica"]`).waitFor({ timeout: runningWaitMs });
    await page.locator('[data-testid^="instance-"][data-role="primary"]').waitFor();
    await page.locator('[data-testid="cluster-state"]', { hasText: /^running$/ }).waitFor({ timeout: runningWaitMs });
    // The diagram marks the cluster's last transitions: the switchover's way out of running and back.
    await eventually('the diagram to mark a transition back to running', async () => ((await page.locator('[data-testid="diagram-recent"][data-to="running"]').count()) > 0 ? true : undefined), liveWaitMs);
    const moves = await page.getByTestId('event-move').allTextContents();
    assert.ok(moves.some((move) => move.includes('→ promote')), `the timeline shows the switchover's promotion: ${moves.join('; ')}`);
    await screenshot(t, page, 'switchover');
    await page.close();
  });

  test('a settings change shows its plan before it can be applied, then joins the history', async (t) => {
    const page = await openSignedIn(adminToken);
    await page.goto(`${cellar.apiUrl}/#/clusters/${clusterName}/settings`);
    await page.getByTestId('setting-new-name').fill('work_mem');
    await page.getByTestId('setting-new-value').fill('8MB');
    await page.getByTestId('setting-add').click();
    assert.equal(await page.getByTestId('apply-button').isDisabled(), true, 'nothing to apply before the plan is shown');
    // The parameter catalogue is read from the first running cluster of its version a few seconds
    // after it runs; until then the API asks to try again, and so does a person.
    await eventually('the plan of the draft', async () => {
      await page.getByTestId('plan-button').click();
      return (await page.getByTestId('plan-step').first().waitFor({ timeout: 1_000 }).then(() => true, () => undefined));
    }, liveWaitMs, 500);
    assert.match((await page.getByTestId('plan').textContent()) ?? '', /work_mem/);
    await page.getByTestId('apply-button').click();
    const applied = await textOf(page, 'settings-applied');
    const revision = /Revision (\d+)/.exec(applied)?.[1];
    assert.ok(revision, applied);
    await page.getByTestId(`revision-${revision}`).waitFor();
    await screenshot(t, page, 'settings');
    await page.close();
  });

  test('a rod set from its page shows its audit entry', async (t) => {
    const rodName = 'rollout.clusters-per-minute';
    const before = await cellar.api<{ value: number; min: number; max: number }>('GET', `/v1/rods/${rodName}`);
    const value = before.body.value < before.body.max ? before.body.value + 1 : before.body.value - 1;
    const reason = `console test ${Date.now()}`;
    const page = await openSignedIn(adminToken);
    await page.getByTestId('nav-rods').click();
    await page.getByTestId(`rod-${rodName}`).getByRole('link').click();
    await page.getByTestId('rod-detail').waitFor();
    await page.getByTestId('rod-new-value').fill(String(value));
    await page.getByTestId('rod-reason').fill(reason);
    await page.getByTestId('rod-submit').click();
    await page.locator('[data-testid="rod-change-reason"]', { hasText: reason }).waitFor({ timeout: liveWaitMs });
    await page.locator('[data-testid="rod-current"]', { hasText: new RegExp(`^${value}$`) }).waitFor();
    await screenshot(t, page, 'rod-audit');
    const restored = await cellar.api('PUT', `/v1/rods/${rodName}`, { value: before.body.value, reason: 'console test: restore' });
    assert.equal(restored.status, 200);
    await page.close();
  });

  test('the freeze asks first: cancel freezes nothing, confirm freezes, then thaw', async (t) => {
    const frozen = async (): Promise<boolean> => (await cellar.api<{ frozen: boolean }>('GET', '/v1/freeze')).body.frozen;
    const page = await openSignedIn(adminToken);
    await page.getByTestId('nav-freeze').click();
    await page.locator('[data-testid="freeze-state"][data-frozen="false"]').waitFor();
    await page.getByTestId('freeze-reason').fill('console test');
    await page.getByTestId('freeze-button').click();
    await page.getByTestId('confirm-dialog').waitFor();
    await screenshot(t, page, 'freeze-asks');
    await page.getByTestId('confirm-cancel').click();
    await page.getByTestId('confirm-dialog').waitFor({ state: 'detached' });
    assert.equal(await frozen(), false, 'cancel froze nothing');
    await page.getByTestId('freeze-button').click();
    await page.getByTestId('confirm-ok').click();
    await page.locator('[data-testid="freeze-state"][data-frozen="true"]').waitFor();
    assert.equal(await frozen(), true);
    await page.getByTestId('freeze-reason').fill('console test done');
    await page.getByTestId('thaw-button').click();
    await page.getByTestId('confirm-ok').click();
    await page.locator('[data-testid="freeze-state"][data-frozen="false"]').waitFor();
    assert.equal(await frozen(), false);
    await screenshot(t, page, 'freeze-thawed');
    await page.close();
  });

  test('a flag rule set from its page shows with its audit (a bad value refused beside its field), then is removed behind a confirmation; changes by others show live', async (t) => {
    const flagKey = 'durability-default';
    // A cluster-level rule on a cluster that exists already: durability-default is read at create only.
    const cluster = await cellar.api<{ id: string }>('GET', `/v1/clusters/${clusterName}`);
    assert.equal(cluster.status, 200);
    const target = cluster.body.id;
    const rules = async (): Promise<{ level: string; target: string; value: unknown }[]> => (await cellar.api<{ rules: { level: string; target: string; value: unknown }[] }>('GET', `/v1/flags/${flagKey}`)).body.rules;
    const reason = `console flag test ${Date.now()}`;
    const page = await openSignedIn(adminToken);
    await page.getByTestId('nav-flags').click();
    await page.getByTestId(`flag-${flagKey}`).getByRole('link').click();
    await page.getByTestId('flag-detail').waitFor();
    await page.getByTestId('flag-level').selectOption('cluster');
    await page.getByTestId('flag-target').fill(target);
    await page.getByTestId('flag-value').fill('maybe');
    await page.getByTestId('flag-reason').fill(reason);
    await page.getByTestId('flag-submit').click();
    const shown = await textOf(page, 'error-value');
    const direct = await cellar.api<{ error: { message: string; field: string } }>('PUT', `/v1/flags/${flagKey}`, { level: 'cluster', target, value: 'maybe', reason });
    assert.equal(direct.status, 400);
    assert.equal(direct.body.error.field, 'value');
    assert.equal(shown, direct.body.error.message, "the API's own message, beside the value field");
    assert.deepEqual(await rules(), [], 'the bad value set nothing');
    await screenshot(t, page, 'flag-bad-value');

    await page.getByTestId('flag-value').fill('async');
    await page.getByTestId('flag-percent').fill('150');
    await page.getByTestId('flag-submit').click();
    const percentShown = await textOf(page, 'error-percent');
    const percentDirect = await cellar.api<{ error: { message: string; field: string } }>('PUT', `/v1/flags/${flagKey}`, { level: 'cluster', target, value: 'async', percent: 150, reason });
    assert.equal(percentDirect.status, 400);
    assert.equal(percentShown, percentDirect.body.error.message, "the API's own message, beside the percent field");
    await page.getByTestId('flag-percent').fill('');
    await page.getByTestId('flag-submit').click();
    const rule = page.getByTestId(`flag-rule-cluster-${target}`);
    await rule.waitFor();
    assert.match(await rule.getByTestId('flag-rule-text').innerText(), /: async$/);
    await page.locator('[data-testid="flag-change-reason"]', { hasText: reason }).waitFor();
    assert.equal(await page.getByTestId('error-value').count(), 0, 'the old error is gone');
    assert.deepEqual((await rules()).map((each) => [each.level, each.target, each.value]), [['cluster', target, 'async']]);
    await screenshot(t, page, 'flag-rule-set');

    await page.getByTestId('flag-remove-reason').fill(`${reason}: done`);
    await rule.getByTestId('flag-rule-remove').click();
    await page.getByTestId('confirm-dialog').waitFor();
    await page.getByTestId('confirm-cancel').click();
    assert.equal((await rules()).length, 1, 'cancel removed nothing');
    await rule.getByTestId('flag-rule-remove').click();
    await page.getByTestId('confirm-ok').click();
    await page.getByTestId('flag-no-rules').waitFor();
    assert.deepEqual(await rules(), []);
    await page.locator('[data-testid="flag-change-reason"]', { hasText: `${reason}: done` }).waitFor();

    // Another operator's change reaches the open page through the stream, without a reload.
    const other = await cellar.api('PUT', `/v1/flags/${flagKey}`, { level: 'cluster', target, value: 'sync', reason: `${reason}: by the API` });
    assert.equal(other.status, 200);
    await page.locator('[data-testid="flag-change-reason"]', { hasText: `${reason}: by the API` }).waitFor({ timeout: liveWaitMs });
    await rule.waitFor();
    const removed = await cellar.api('DELETE', `/v1/flags/${flagKey}/rules`, { level: 'cluster', target, reason: `${reason}: cleanup` });
    assert.equal(removed.status, 200);
    await page.getByTestId('flag-no-rules').waitFor({ timeout: liveWaitMs });
    await screenshot(t, page, 'flag-rule-removed');
    await page.close();
  });

  test("a host drain asks first; on the one local host, whose instances have nowhere to go, it is refused with the API's message", async (t) => {
    const hosts = await cellar.api<{ hosts: { name: string; state: string; local: boolean }[] }>('GET', '/v1/hosts');
    const host = hosts.body.hosts.find((each) => each.local);
    assert.ok(host, 'the cell has its local host');
    assert.equal(host.state, 'active');
    const stateOf = async (): Promise<string | undefined> => (await cellar.api<{ hosts: { name: string; state: string }[] }>('GET', '/v1/hosts')).body.hosts.find((each) => each.name === host.name)?.state;
    const page = await openSignedIn(adminToken);
    await page.getByTestId('nav-hosts').click();
    const row = page.getByTestId(`host-${host.name}`);
    await row.getByTestId('host-drain').click();
    await page.getByTestId('confirm-dialog').waitFor();
    await page.getByTestId('confirm-cancel').click();
    await page.getByTestId('confirm-dialog').waitFor({ state: 'detached' });
    assert.equal(await stateOf(), 'active', 'cancel drained nothing');
    await row.getByTestId('host-drain').click();
    await page.getByTestId('confirm-ok').click();
    try {
      const shown = await textOf(page, 'confirm-error');
      // Refused again the same way: a refused drain changes nothing.
      const direct = await cellar.api<{ error: { code: string; message: string; field: string } }>('POST', `/v1/hosts/${host.name}/drain`);
      assert.equal(direct.status, 409);
      assert.equal(direct.body.error.code, 'CELLAR_E_PLACEMENT');
      assert.equal(shown, direct.body.error.message, "the API's own message, in the dialog");
      assert.equal(await stateOf(), 'active', 'the host was not drained');
      assert.equal(await row.getAttribute('data-state'), 'active');
      await screenshot(t, page, 'host-drain-refused');
      await page.getByTestId('confirm-cancel').click();
    } finally {
      // Were it drained after all, the other tests need their host back.
      if ((await stateOf()) !== 'active') await cellar.api('POST', `/v1/hosts/${host.name}/undrain`);
    }
    await page.close();
  });

  test("a failover asks first and cancel changes nothing; an instance's own machine is drawn for the instance chosen", async (t) => {
    const { page, primaryRow, primary } = await openRunningCluster();
    await page.getByTestId('failover').click();
    await page.getByTestId('confirm-dialog').waitFor();
    assert.match(await textOf(page, 'confirm-message'), /Fail cluster "web-app" over/);
    await screenshot(t, page, 'failover-asks');
    await page.getByTestId('confirm-cancel').click();
    await page.getByTestId('confirm-dialog').waitFor({ state: 'detached' });
    const after = await cellar.api<{ instances: { id: string; role: string }[] }>('GET', `/v1/clusters/${clusterName}`);
    assert.equal(after.body.instances.find((instance) => instance.role === 'primary')?.id, primary, 'cancel failed nothing over');

    // The primary's machine is drawn first, its label current; choosing the replica draws the replica's.
    assert.equal(await page.getByTestId('instance-machine-select').inputValue(), primary);
    const primaryLabel = await primaryRow.getByTestId('instance-label').innerText();
    await page.locator(`[data-testid="instance-diagram-current"][data-label="${primaryLabel}"]`).waitFor();
    const replicaRow = page.locator('[data-testid^="instance-"][data-role="replica"]');
    const replica = (await replicaRow.getAttribute('data-testid'))?.slice('instance-'.length);
    assert.ok(replica);
    await replicaRow.click();
    assert.equal(await page.getByTestId('instance-machine-select').inputValue(), replica);
    const replicaLabel = await replicaRow.getByTestId('instance-label').innerText();
    await page.locator(`[data-testid="instance-diagram-current"][data-label="${replicaLabel}"]`).waitFor();
    assert.equal(await textOf(page, 'instance-machine-label'), replicaLabel);
    await page.getByTestId('instance-machine-select').selectOption(primary);
    await page.locator(`[data-testid="instance-diagram-current"][data-label="${primaryLabel}"]`).waitFor();
    await page.getByTestId('instance-diagram').scrollIntoViewIfNeeded();
    await screenshot(t, page, 'instance-machine');
    await page.close();
  });

  test('the page says when it has lost the API, and comes back by itself', async (t) => {
    const page = await openSignedIn(adminToken);
    await page.goto(`${cellar.apiUrl}/#/clusters/${clusterName}`);
    await page.getByTestId('cluster-state').waitFor();
    await cellar.stop();
    await page.getByTestId('lost-banner').waitFor({ timeout: liveWaitMs });
    assert.match(await textOf(page, 'lost-banner'), /Lost the API since \d/);
    await screenshot(t, page, 'lost');
    await cellar.start();
    await page.getByTestId('lost-banner').waitFor({ state: 'detached', timeout: liveWaitMs });
    await page.getByTestId('cluster-state').waitFor();
    await page.close();
  });

  test("an org token sees no operator pages and no other org's clusters; revoking it signs the page out", async (t) => {
    const acme = await cellar.api<{ token: string }>('POST', '/v1/orgs', { name: 'acme' });
    assert.equal(acme.status, 201);
    const acmeCluster = await cellar.api('POST', '/v1/clusters', { name: 'acme-db' }, acme.body.token);
    assert.equal(acmeCluster.status, 201);
    const other = await cellar.api<{ token: string }>('POST', '/v1/orgs', { name: 'other' });
    assert.equal(other.status, 201);
    const tenant = await cellar.api<{ id: string; secret: string }>('POST', '/v1/tokens', { org: 'other', admin: false, name: 'console-test' });
    assert.equal(tenant.status, 201);

    const page = await openSignedIn(tenant.body.secret);
    const requested: string[] = [];
    page.on('request', (request) => requested.push(new URL(request.url()).pathname));
    assert.match(await textOf(page, 'who'), /org other/);
    assert.equal(await page.locator('[data-testid="nav-hosts"], [data-testid="nav-flags"], [data-testid="nav-rods"], [data-testid="nav-freeze"]').count(), 0, 'no operator links');
    await page.getByTestId('clusters-table').waitFor();
    await page.getByTestId('clusters-empty').waitFor();
    assert.equal(await page.locator('[data-testid^="cluster-row-"]').count(), 0, "neither acme's nor the admin's clusters");
    for (const operatorPage of ['hosts', 'flags', 'rods', 'freeze']) {
      await page.goto(`${cellar.apiUrl}/#/${operatorPage}`);
      await page.getByTestId('operator-only').waitFor();
    }
    assert.deepEqual(requested.filter((path) => /^\/v1\/(hosts|flags|rods|freeze)/.test(path)), [], 'nothing operator-only was fetched with the tenant token');
    await screenshot(t, page, 'tenant');

    const revoked = await cellar.api('DELETE', `/v1/tokens/${tenant.body.id}`);
    assert.equal(revoked.status, 200);
    await page.getByTestId('signed-out-message').waitFor({ timeout: revokedWaitMs });
    await page.getByTestId('signin-token').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('cellar.token')), null, 'the token is forgotten');
    await screenshot(t, page, 'revoked');
    await page.close();
  });

  test('"back up now" shows the new backup among the cluster\'s backups', async (t) => {
    const listed = async (): Promise<string[]> => (await cellar.api<{ backups: { id: string }[] }>('GET', `/v1/clusters/${clusterName}/backups`)).body.backups.map((backup) => backup.id);
    const before = await listed();
    const page = await openSignedIn(adminToken);
    await page.goto(`${cellar.apiUrl}/#/clusters/${clusterName}`);
    await page.getByTestId('cluster-state').waitFor();
    await page.getByTestId('backup-now').click();
    const newId = await eventually('the new backup in the API', async () => (await listed()).find((id) => !before.includes(id)), liveWaitMs);
    await page.getByTestId(`backup-${newId}`).waitFor();
    await page.getByTestId(`backup-${newId}`).scrollIntoViewIfNeeded();
    await screenshot(t, page, 'backup-now');
    await page.close();
  });
});
