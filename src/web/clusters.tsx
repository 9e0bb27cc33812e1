import { useState } from 'preact/hooks';
import { useResource } from './session.js';
import type { ClusterView } from './types.js';
import { ErrorLine, Page, bytes } from './ui.js';

/** The org's clusters (every org's, for an admin token), with a filter and sortable columns. */

type Column = 'name' | 'state' | 'size' | 'version' | 'replicas' | 'lag' | 'storage';

const columns: { key: Column; title: string }[] = [
  { key: 'name', title: 'Name' },
  { key: 'state', title: 'State' },
  { key: 'size', title: 'Size' },
  { key: 'version', title: 'Version' },
  { key: 'replicas', title: 'Replicas' },
  { key: 'lag', title: 'Lag' },
  { key: 'storage', title: 'Storage' },
];

export function maxLag(cluster: ClusterView): number | null {
  const lags = cluster.instances.map((instance) => instance.lagBytes).filter((lag): lag is number => lag !== null);
  return lags.length === 0 ? null : Math.max(...lags);
}

function sortValue(cluster: ClusterView, column: Column): string | number {
  switch (column) {
    case 'name':
      return cluster.name;
    case 'state':
      return cluster.state;
    case 'size':
      return cluster.size;
    case 'version':
      return cluster.version;
    case 'replicas':
      return cluster.replicas;
    case 'lag':
      return maxLag(cluster) ?? -1;
    case 'storage':
      return cluster.storage.percent ?? -1;
  }
}

export function ClustersPage() {
  const clusters = useResource<{ clusters: ClusterView[] }>('/v1/clusters', { anyCluster: true });
  const [filter, setFilter] = useState('');
  const [sort, setSort] = useState<{ column: Column; descending: boolean }>({ column: 'name', descending: false });
  const needle = filter.trim().toLowerCase();
  const shown = (clusters.data?.clusters ?? [])
    .filter((cluster) => needle === '' || `${cluster.name} ${cluster.state} ${cluster.size} ${cluster.version}`.toLowerCase().includes(needle))
    .sort((left, right) => {
      const a = sortValue(left, sort.column);
      const b = sortValue(right, sort.column);
      const order = a < b ? -1 : a > b ? 1 : 0;
      return sort.descending ? -order : order;
    });
  return (
    <Page title="Clusters" actions={<a class="button" href="#/new" data-testid="new-cluster">New cluster</a>}>
      <input class="filter" type="search" placeholder="Filter by name, state, size or version" value={filter} onInput={(event) => setFilter(event.currentTarget.value)} data-testid="clusters-filter" aria-label="Filter clusters" />
      <ErrorLine error={clusters.error} />
      <div class="table-wrap">
        <table data-testid="clusters-table">
          <thead>
            <tr>
              {columns.map(({ key, title }) => (
                <th key={key}>
                  <button type="button" class="sort" data-testid={`sort-${key}`} onClick={() => setSort({ column: key, descending: sort.column === key ? !sort.descending : false })}>
                    {title}
                    {sort.column === key ? (sort.descending ? ' ▼' : ' ▲') : ''}
                  </button>
                </th>
              ))}
            </tr>
          </thead>
          <tbody>
            {shown.map((cluster) => (
              <tr key={cluster.id} data-testid={`cluster-row-${cluster.name}`}>
                <td>
                  <a href={`#/clusters/${encodeURIComponent(cluster.name)}`}>{cluster.name}</a>
                </td>
                <td data-testid="cluster-row-state">
                  <span class={`state state-${cluster.state}`}>{cluster.state}</span>
                </td>
                <td>{cluster.size}</td>
                <td>{cluster.version}</td>
                <td>{cluster.replicas}</td>
                <td>{bytes(maxLag(cluster))}</td>
                <td>
                  {cluster.storage.percent === null ? '—' : `${cluster.storage.percent}%`} of {cluster.storage.allocatedGb} GB
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {clusters.data !== undefined && shown.length === 0 && <p class="muted" data-testid="clusters-empty">{needle === '' ? 'No clusters yet.' : 'No cluster matches the filter.'}</p>}
    </Page>
  );
}
