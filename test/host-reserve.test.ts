import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { ProposalView } from '../src/api/config.js';
import type { ClusterView } from '../src/api/view.js';
import { TestCellar, eventually } from './helpers/cellar.js';

/**
 * The host disk reserve end to end (docs/STORAGE.md "Host disk reserve"): the local host's data
 * filesystem is given known figures in the store, and a create and a storage resize that would
 * eat into the reserve are refused through the API and the CLI, leaving nothing behind.
 */

interface ErrorBody {
  readonly error: { readonly code: string; readonly message: string; readonly field?: string };
}

const binaryGb = 1024 ** 3;
/** The figures written for the local host's data filesystem: 14 GB available of 100 GB, so 4 GB above the default 10 % reserve. */
const totalBytes = 100 * binaryGb;
const availableBytes = 14 * binaryGb;
/** The local host's own measurement runs at start, then not again for the test's length (the longest interval allowed), so the figures written stay. */
const usageIntervalMs = 24 * 3_600_000;

describe('host disk reserve', () => {
  let cellar: TestCellar;

  before(async () => {
    cellar = await TestCellar.create({ CELLAR_USAGE_INTERVAL_MS: String(usageIntervalMs), CELLAR_STORAGE_GB_BYTES: String(binaryGb) });
    await cellar.start();
    // Overwrite only after the start's own round has written, or that round could put the real figures back.
    await eventually('the local host measured', async () => {
      const [row] = await cellar.storeQuery<{ measured: boolean }>('select usage_measured_at is not null as measured from hosts where local');
      return row?.measured === true ? row : undefined;
    }, 30_000);
    const usage = { filesystems: [{ path: cellar.dataDir, totalBytes, freeBytes: availableBytes, availableBytes, purposes: ['data', 'backups', 'home'] }] };
    await cellar.storeQuery('update hosts set usage = $1 where local', [usage]);
  });

  after(async () => {
    await cellar.destroy();
  });

  async function counts(): Promise<{ clusters: number; machines: number; revisions: number }> {
    const [row] = await cellar.storeQuery<{ clusters: number; machines: number; revisions: number }>(
      'select (select count(*) from clusters)::int as clusters, (select count(*) from machines)::int as machines, (select count(*) from config_revisions)::int as revisions',
    );
    assert.ok(row);
    return row;
  }

  test('a create whose allocation would eat into the reserve is a 409 naming the host and its numbers, and makes nothing', async () => {
    const before = await counts();
    const refused = await cellar.api<ErrorBody>('POST', '/v1/clusters', { name: 'big', size: 'micro', replicas: 0, storageGb: 5 });
    assert.equal(refused.status, 409);
    assert.equal(refused.body.error.code, 'CELLAR_E_PLACEMENT');
    assert.equal(
      refused.body.error.message,
      'cannot place the cluster: 1 instance needs room on active hosts with a free slot, 256 MB and 5 GB each; there is room for 0; local: data filesystem: 14 GB available, less 0 B allocated to its instances and not yet written, less a 10 GB reserve (10 % of 100 GB), leaves 4.0 GB (5.0 GB needed)',
    );
    const cli = await cellar.cli(['clusters', 'create', 'big', '--size', 'micro', '--replicas', '0', '--storage-gb', '5']);
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr, /CELLAR_E_PLACEMENT/);
    assert.match(cli.stderr, /local: data filesystem: 14 GB available.*leaves 4\.0 GB \(5\.0 GB needed\)/);
    assert.deepEqual(await counts(), before, 'no cluster, machine or revision');
  });

  test('a storage resize its host cannot take above the reserve is a 409 naming the host, with no revision stored; a smaller one is taken', async () => {
    const small = await cellar.cliJson<ClusterView>(['clusters', 'create', 'small', '--size', 'micro', '--replicas', '0', '--storage-gb', '1', '--wait']);
    assert.equal(small.state, 'running');
    const before = await counts();
    // 14 GB − the 1 GB allocation less what it wrote − 10 GB reserve leaves a little over 3 GB: 4 GB more is refused.
    const refused = await cellar.api<ErrorBody>('POST', '/v1/clusters/small/config', { storageGb: 5 });
    assert.equal(refused.status, 409);
    assert.equal(refused.body.error.code, 'CELLAR_E_PLACEMENT');
    assert.equal(refused.body.error.field, 'storageGb');
    assert.match(
      refused.body.error.message,
      /^storageGb: the hosts cannot take storage grown from 1 GB to 5 GB: host local \(1 instance of the cluster, 4 GB more each\): data filesystem: 14 GB available, less [\d.]+ [MG]B allocated to its instances and not yet written, less a 10 GB reserve \(10 % of 100 GB\), leaves 3\.\d GB \(4\.0 GB needed\)$/,
    );
    const cli = await cellar.cli(['clusters', 'resize', 'small', '--storage-gb', '5']);
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr, /CELLAR_E_PLACEMENT/);
    assert.match(cli.stderr, /host local .*\(4\.0 GB needed\)/);
    assert.deepEqual(await counts(), before, 'no revision, no change machine');
    const [spec] = await cellar.storeQuery<{ storage_gb: number }>("select (spec ->> 'storageGb')::int as storage_gb from clusters where name = 'small'");
    assert.equal(spec?.storage_gb, 1);
    const taken = await cellar.api<ProposalView>('POST', '/v1/clusters/small/config', { storageGb: 3 });
    assert.equal(taken.status, 201, JSON.stringify(taken.body));
    assert.equal(taken.body.revision, 2);
  });
});
