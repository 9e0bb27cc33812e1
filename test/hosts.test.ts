import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { ClusterView } from '../src/api/view.js';
import { eventually, queryUri } from './helpers/cellar.js';
import { type CellOnHosts, startCellOnHosts } from './helpers/cell-on-hosts.js';

/**
 * Many hosts end to end (issue 13): a control plane in the root namespace, database hosts as
 * network namespaces each running `cellar agent`, real Postgres servers on the hosts' addresses.
 */

interface HostRow {
  readonly id: string;
  readonly name: string;
  readonly address: string;
  readonly zone: string;
  readonly state: string;
}

describe('a cluster on three hosts', () => {
  let cell: CellOnHosts;
  let app: ClusterView;
  let hostsById: Map<string, HostRow>;

  before(async () => {
    cell = await startCellOnHosts({ tag: 'hc', hosts: 3 });
    app = await cell.cellar.cliJson<ClusterView>(['clusters', 'create', 'app', '--replicas', '2', '--wait']);
    const hosts = await cell.cellar.cliJson<HostRow[]>(['hosts', 'list']);
    hostsById = new Map(hosts.map((host) => [host.id, host]));
  });

  after(async () => {
    await cell?.destroy();
  });

  test('its primary and two replicas are placed on three distinct hosts in three zones, each placement an event', async () => {
    assert.equal(app.state, 'running');
    const rows = await cell.cellar.storeQuery<{ id: string; host_id: string | null }>('select id, host_id from instances where cluster_id = $1 and deleted_at is null', [app.id]);
    assert.equal(rows.length, 3);
    const hostIds = new Set(rows.map((row) => row.host_id));
    assert.equal(hostIds.size, 3, `distinct hosts: ${JSON.stringify(rows)}`);
    const zones = new Set([...hostIds].map((id) => hostsById.get(id ?? '')?.zone));
    assert.equal(zones.size, 3);
    const placed = await cell.cellar.storeQuery<{ reason: string }>(
      `select e.reason from events e join machines m on m.id = e.machine_id where m.kind = 'instance' and m.cluster_id = $1 and e.code = 'instance_placed'`,
      [app.id],
    );
    assert.equal(placed.length, 3);
    for (const event of placed) assert.match(event.reason, /placed on host h\d \(zone z\d\)/);
  });

  test('writes go through the proxy to the primary on its host; the read-only endpoint reaches a replica on another', async () => {
    assert.ok(app.uri && app.readOnlyUri);
    await queryUri(app.uri, 'create table notes (id int primary key, body text)');
    await queryUri(app.uri, "insert into notes values (1, 'from the root namespace')");
    const [primary] = await queryUri<{ address: string }>(app.uri, 'select host(inet_server_addr()) as address');
    const primaryHost = [...hostsById.values()].find((host) => host.address === primary?.address);
    assert.ok(primaryHost !== undefined, `the primary answers on a host's address, not ${primary?.address}`);
    const replica = await eventually('the row on a replica through the read-only endpoint', async () => {
      const [row] = await queryUri<{ body: string; replica: boolean; address: string }>(
        app.readOnlyUri as string,
        'select (select body from notes where id = 1) as body, pg_is_in_recovery() as replica, host(inet_server_addr()) as address',
      ).catch(() => []);
      return row?.replica === true && row.body !== null ? row : undefined;
    }, 20_000);
    assert.equal(replica.body, 'from the root namespace');
    assert.notEqual(replica.address, primary?.address);
  });
});
