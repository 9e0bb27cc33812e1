import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { TestCellar } from '../test/helpers/cellar.js';
import { median } from './lib.js';

/**
 * bench/console: the web console's figures (issue 17), in Debian's chromium against a real Cellar:
 * - first load: the bytes the browser downloads for the page (index.html, app.js, app.css, as
 *   sent: brotli), goal under 500 kB;
 * - change to page: from a rod's `PUT` (the store changes) to the rods page showing the new value,
 *   and from a cluster's `POST` to its row on the clusters page (the stream's `change`, then the
 *   refetch), goal under 1 s;
 * - a state change written to the store (an event row, as every transition writes) to the cluster
 *   page showing it, goal under 1 s;
 * - idle requests per minute on a cluster page (the stream itself not counted).
 * Baseline in the same run: the rod changes heard by a bare stream reader (the API's share).
 * Usage: node dist/bench/console.js [rounds]
 */

const roundsDefault = 10;
const roundsMax = 50;
const clusterRounds = 3;
const goalChangeMs = 1_000;
const goalFirstLoadBytes = 500 * 1024;
const idleWindowMs = 60_000;
/** How long one change may take to show before the round counts as failed. */
const showWaitMs = 30_000;
const chromiumArgs = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'];

const rounds = Math.min(Number(process.argv[2] ?? roundsDefault) || roundsDefault, roundsMax);
const cellar = await TestCellar.create();
const profile = await mkdtemp(join(tmpdir(), 'cellar-bench-console-'));
try {
  await cellar.start();
  const token = await cellar.token();
  const context = await chromium.launchPersistentContext(profile, { executablePath: '/usr/bin/chromium', headless: true, args: chromiumArgs });
  const page = await context.newPage();
  let firstLoadBytes = 0;
  page.on('requestfinished', (request) => {
    const path = new URL(request.url()).pathname;
    if (!path.startsWith('/v1/')) void request.sizes().then((sizes) => (firstLoadBytes += sizes.responseBodySize));
  });
  await page.goto(cellar.apiUrl, { waitUntil: 'networkidle' });
  await page.getByTestId('signin-token').fill(token);
  await page.getByTestId('signin-submit').click();
  await page.getByTestId('nav').waitFor();

  const rod = 'rollout.clusters-per-minute';
  await page.goto(`${cellar.apiUrl}/#/rods/${rod}`);
  await page.getByTestId('rod-current').waitFor();
  // Baseline in the same run: the same changes heard by a bare stream reader in this process
  // (the API's share: the feed's poll and the event), without the page's refetch and render.
  const streamController = new AbortController();
  const streamHeard: number[] = [];
  const bare = await fetch(`${cellar.apiUrl}/v1/stream`, { headers: { authorization: `Bearer ${token}` }, signal: streamController.signal });
  const bareReader = bare.body?.pipeThrough(new TextDecoderStream()).getReader();
  void (async () => {
    try {
      for (;;) {
        const chunk = await bareReader?.read();
        if (chunk === undefined || chunk.done) return;
        if (chunk.value.includes('event: change')) streamHeard.push(performance.now());
      }
    } catch {
      // Aborted at the end of the bench.
    }
  })();
  const rodMs: number[] = [];
  const streamMs: number[] = [];
  for (let round = 0; round < rounds; round += 1) {
    const value = 30 + (round % 2);
    const sent = performance.now();
    const put = await cellar.api('PUT', `/v1/rods/${rod}`, { value, reason: `bench round ${round}` });
    if (put.status !== 200) throw new Error(`PUT /v1/rods answered ${put.status}`);
    await page
      .waitForFunction((expected) => document.querySelector('[data-testid="rod-current"]')?.textContent === expected, String(value), { polling: 'raf', timeout: showWaitMs })
      .catch(async (error: unknown) => {
        throw new Error(`round ${round}: the rods page shows ${await page.getByTestId('rod-current').textContent()}, not ${value}: ${String(error)}`);
      });
    rodMs.push(performance.now() - sent);
    const heard = streamHeard.find((at) => at >= sent);
    if (heard !== undefined) streamMs.push(heard - sent);
  }
  streamController.abort();

  await page.goto(`${cellar.apiUrl}/#/clusters`);
  await page.getByTestId('clusters-table').waitFor();
  const clusterMs: number[] = [];
  for (let round = 0; round < clusterRounds; round += 1) {
    const name = `bench-${round}`;
    const sent = performance.now();
    const created = await cellar.api('POST', '/v1/clusters', { name });
    if (created.status !== 201) throw new Error(`POST /v1/clusters answered ${created.status}`);
    await page.getByTestId(`cluster-row-${name}`).waitFor({ timeout: showWaitMs });
    clusterMs.push(performance.now() - sent);
  }

  await page.goto(`${cellar.apiUrl}/#/clusters/bench-0`);
  await page.locator('[data-testid="cluster-state"]', { hasText: /^running$/ }).waitFor({ timeout: 120_000 });
  // A state change written to the store as the engine writes every transition (an event row for
  // the cluster), until the cluster page's DOM holds its text (a MutationObserver notes the time).
  const [machine] = await cellar.storeQuery<{ id: string; entity_id: string }>("select m.id, m.entity_id from machines m join clusters c on c.id = m.entity_id where m.kind = 'cluster' and c.name = 'bench-0'");
  if (machine === undefined) throw new Error('bench-0 has no cluster machine');
  const eventMs: number[] = [];
  for (let round = 0; round < rounds; round += 1) {
    const marker = `bench event ${round}`;
    const shown = page.evaluate(
      ({ text, waitMs }) =>
        new Promise<number>((resolve, reject) => {
          const has = () => document.body.textContent?.includes(text) === true;
          const observer = new MutationObserver(() => {
            if (!has()) return;
            observer.disconnect();
            resolve(Date.now());
          });
          observer.observe(document.body, { subtree: true, childList: true, characterData: true });
          setTimeout(() => reject(new Error(`"${text}" not shown within ${waitMs} ms`)), waitMs);
        }),
      { text: marker, waitMs: showWaitMs },
    );
    const sentAt = Date.now();
    await cellar.storeQuery(`insert into events (machine_id, kind, entity_id, cluster_id, from_label, to_label, reason) values ($1, 'cluster', $2, $2, 'running', 'running', $3)`, [machine.id, machine.entity_id, marker]);
    eventMs.push((await shown) - sentAt);
  }

  let idleRequests = 0;
  page.on('request', (request) => {
    if (new URL(request.url()).pathname !== '/v1/stream') idleRequests += 1;
  });
  await new Promise((resolve) => setTimeout(resolve, idleWindowMs));
  await context.close();

  const result = {
    firstLoadKb: Math.round(firstLoadBytes / 102.4) / 10,
    firstLoadGoalKb: goalFirstLoadBytes / 1024,
    rodChangeToPageMs: { median: Math.round(median(rodMs)), max: Math.round(Math.max(...rodMs)), rounds },
    rodChangeToBareStreamMs: { median: Math.round(median(streamMs)), max: Math.round(Math.max(...streamMs)), heard: streamMs.length },
    storeEventToClusterPageMs: { median: Math.round(median(eventMs)), max: Math.round(Math.max(...eventMs)), rounds },
    clusterCreateToRowMs: { median: Math.round(median(clusterMs)), max: Math.round(Math.max(...clusterMs)), rounds: clusterRounds },
    changeGoalMs: goalChangeMs,
    idleRequestsPerMinuteOnClusterPage: Math.round((idleRequests * 60_000) / idleWindowMs),
  };
  console.log(JSON.stringify(result, null, 2));
} finally {
  await cellar.destroy();
  await rm(profile, { recursive: true, force: true });
}
