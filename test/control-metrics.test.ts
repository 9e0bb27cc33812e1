import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import type { ClusterView } from '../src/api/view.js';
import { TestCellar, eventually, testStorageGbBytes } from './helpers/cellar.js';

/** The control plane's GET /metrics (docs/STORAGE.md, "Metrics") on a real Cellar with one cluster. */

interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

/** The samples of a Prometheus text exposition (label values here hold no escaped quotes). */
function samples(text: string): Sample[] {
  const found: Sample[] = [];
  for (const line of text.split('\n')) {
    const match = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (match === null) continue;
    const labels = Object.fromEntries([...(match[2] ?? '').matchAll(/([a-z_]+)="([^"]*)"/g)].map((label) => [label[1], label[2]]));
    found.push({ name: match[1] as string, labels, value: Number(match[3]) });
  }
  return found;
}

describe('control-plane metrics', () => {
  let cellar: TestCellar;

  async function scrape(token?: string): Promise<{ status: number; contentType: string | null; retryAfter: string | null; text: string }> {
    const response = await fetch(`${cellar.apiUrl}/metrics`, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } });
    return { status: response.status, contentType: response.headers.get('content-type'), retryAfter: response.headers.get('retry-after'), text: await response.text() };
  }

  async function storeClient(): Promise<pg.Client> {
    const client = new pg.Client({ connectionString: await cellar.storeUrl() });
    await client.connect();
    return client;
  }

  before(async () => {
    // Use measured every second (the least allowed) instead of every 30 s, so the cluster is measured within the test's time.
    cellar = await TestCellar.create({ CELLAR_USAGE_INTERVAL_MS: '1000' });
    await cellar.start();
  });

  after(async () => {
    await cellar.destroy();
  });

  test('admins only: 401 without a token, 403 with an org token, in the one error shape', async () => {
    const anonymous = await scrape();
    assert.equal(anonymous.status, 401);
    assert.equal((JSON.parse(anonymous.text) as { error: { code: string } }).error.code, 'CELLAR_E_UNAUTHENTICATED');
    const org = await cellar.api<{ token: string }>('POST', '/v1/orgs', { name: 'tenant' });
    const tenant = await scrape(org.body.token);
    assert.equal(tenant.status, 403);
    assert.equal((JSON.parse(tenant.text) as { error: { code: string } }).error.code, 'CELLAR_E_FORBIDDEN');
    const openapi = (await (await fetch(`${cellar.apiUrl}/openapi.json`)).json()) as { paths: Record<string, unknown> };
    assert.ok(openapi.paths['/metrics'], 'the endpoint is described in the OpenAPI');
  });

  test("a measured cluster's instances, allocation and use, and the host's filesystems, are series; a deleted cluster's are gone", async () => {
    const token = await cellar.token();
    const created = await cellar.api<ClusterView>('POST', '/v1/clusters', { name: 'metered', replicas: 0, storageGb: 3 });
    assert.equal(created.status, 201);
    const measured = await eventually('the primary running and measured', async () => {
      const shown = (await cellar.api<ClusterView>('GET', '/v1/clusters/metered')).body;
      return shown.state === 'running' && shown.storage.usedBytes !== null ? shown : undefined;
    }, 15_000);
    const primary = measured.instances.find((instance) => instance.role === 'primary');
    assert.ok(primary);

    const answer = await scrape(token);
    assert.equal(answer.status, 200, answer.text);
    assert.match(answer.contentType ?? '', /^text\/plain; version=0\.0\.4/);
    const found = samples(answer.text);
    const one = (name: string, labels: Record<string, string>): Sample => {
      const matching = found.filter((sample) => sample.name === name && Object.entries(labels).every(([key, value]) => sample.labels[key] === value));
      assert.equal(matching.length, 1, `one ${name} ${JSON.stringify(labels)} in:\n${answer.text}`);
      return matching[0] as Sample;
    };
    const data = one('cellar_instance_data_bytes', { cluster: 'metered', instance: primary.id, role: 'primary', host: 'local' });
    assert.ok(data.value > 0, `data bytes ${data.value}`);
    assert.ok(one('cellar_instance_wal_bytes', { cluster: 'metered', instance: primary.id }).value > 0);
    assert.ok(one('cellar_instance_usage_age_seconds', { cluster: 'metered', instance: primary.id }).value >= 0);
    assert.equal(one('cellar_cluster_storage_allocated_bytes', { cluster: 'metered' }).value, 3 * testStorageGbBytes);
    assert.equal(one('cellar_cluster_storage_read_only', { cluster: 'metered' }).value, 0, 'writable');
    // Measured every second, so the scrape may see a newer measurement than the view did: the same sum, of that measurement.
    const used = one('cellar_cluster_storage_used_bytes', { cluster: 'metered' }).value;
    const wal = one('cellar_instance_wal_bytes', { cluster: 'metered', instance: primary.id }).value;
    assert.equal(used, data.value + wal, "the cluster's use is its primary's data and WAL");
    const purposes = found.filter((sample) => sample.name === 'cellar_host_filesystem_total_bytes' && sample.labels['host'] === 'local').flatMap((sample) => (sample.labels['purposes'] ?? '').split(','));
    assert.deepEqual(purposes.sort(), ['backups', 'data', 'home']);
    for (const sample of found.filter((candidate) => candidate.name === 'cellar_host_filesystem_available_bytes')) {
      assert.ok(sample.value > 0 && sample.value <= one('cellar_host_filesystem_total_bytes', sample.labels).value, JSON.stringify(sample));
    }

    assert.equal((await cellar.api('DELETE', '/v1/clusters/metered')).status, 202);
    await eventually('the cluster deleted', async () => ((await cellar.api('GET', '/v1/clusters/metered')).status === 404 ? true : undefined), 15_000);
    const afterDelete = await scrape(token);
    assert.equal(afterDelete.status, 200);
    assert.doesNotMatch(afterDelete.text, /cluster="metered"/, 'no series of the deleted cluster');
    assert.match(afterDelete.text, /^cellar_host_filesystem_total_bytes\{host="local"/m, 'the host is still reported');
  });

  test('a store that does not answer within the bound gives 503 in the error shape, not a hung scrape', async () => {
    const blocker = await storeClient();
    try {
      // Reads of clusters wait behind this lock: the scrape's statement timeout fires.
      await blocker.query('begin');
      await blocker.query('lock table clusters in access exclusive mode');
      const answer = await scrape(await cellar.token());
      assert.equal(answer.status, 503, answer.text);
      assert.equal((JSON.parse(answer.text) as { error: { code: string } }).error.code, 'CELLAR_E_STORE_UNAVAILABLE');
      assert.ok(answer.retryAfter !== null);
    } finally {
      await blocker.query('rollback').catch(() => undefined);
      await blocker.end();
    }
    assert.equal((await scrape(await cellar.token())).status, 200, 'scrapes work again once the store answers');
  });
});
