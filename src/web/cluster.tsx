import { useMemo, useState } from 'preact/hooks';
import { TimeChart } from './chart.js';
import { MachineDiagram } from './diagram.js';
import { request, useResource } from './session.js';
import type { BackupView, ClusterView, MachineTable, Samples } from './types.js';
import { CopyButton, ErrorLine, Page, bytes, messageOf, time, useConfirm } from './ui.js';

/** One cluster: instances, connection strings, its machine, charts, backups, events and actions. */

/** Lag and LSNs move without events: a cluster page also refetches on this period (docs/CONSOLE.md "Live"). */
export const clusterRefreshMs = 10_000;
const samplesMinutes = 15;
const eventsShownMax = 50;

export function ClusterPage({ name }: { name: string }) {
  const path = `/v1/clusters/${encodeURIComponent(name)}`;
  const cluster = useResource<ClusterView>(path, { cluster: name, everyMs: clusterRefreshMs });
  const machines = useResource<{ machines: MachineTable[] }>('/v1/machines');
  const samples = useResource<Samples>(`${path}/samples?minutes=${samplesMinutes}`, { cluster: name, everyMs: clusterRefreshMs });
  const backups = useResource<{ backups: BackupView[] }>(`${path}/backups`, { cluster: name });
  const [dialog, ask] = useConfirm();
  const [actionError, setActionError] = useState<string | null>(null);
  const [chosenInstance, setChosenInstance] = useState<string | null>(null);
  const view = cluster.data;
  const hasReplica = view?.instances.some((instance) => instance.role === 'replica') === true;

  const act = (message: string, action: () => Promise<unknown>) =>
    ask({
      message,
      action: async () => {
        setActionError(null);
        await action();
        cluster.reload();
      },
    });

  if (view === undefined) {
    return (
      <Page title={name}>
        <ErrorLine error={cluster.error} />
        {cluster.error === undefined && <p class="muted">Loading…</p>}
      </Page>
    );
  }
  const machine = machines.data?.machines.find((table) => table.kind === 'cluster');
  const instanceMachine = machines.data?.machines.find((table) => table.kind === 'instance');
  // The chosen instance, or the primary (else the first) while none is chosen or it is gone.
  const shownInstance =
    view.instances.find((instance) => instance.id === chosenInstance) ?? view.instances.find((instance) => instance.role === 'primary') ?? view.instances[0];
  return (
    <Page
      title={
        <>
          {view.name} <span class={`state state-${view.state}`} data-testid="cluster-state">{view.state}</span>
        </>
      }
      actions={
        <>
          <a class="button" href={`#/clusters/${encodeURIComponent(name)}/settings`} data-testid="settings-link">Settings</a>
          <button type="button" disabled={!hasReplica} data-testid="switchover" onClick={() => act(`Switch cluster "${name}" over to a replica? Writes pause briefly.`, () => request('POST', `${path}/switchover`, {}))}>
            Switchover
          </button>
          <button type="button" class="danger" disabled={!hasReplica} data-testid="failover" onClick={() => act(`Fail cluster "${name}" over to its most advanced replica now?`, () => request('POST', `${path}/failover`, {}))}>
            Failover
          </button>
          <button type="button" class="danger" data-testid="delete" onClick={() => act(`Delete cluster "${name}"? Its backups are kept for the retention period.`, async () => { await request('DELETE', path); location.hash = '#/clusters'; })}>
            Delete
          </button>
        </>
      }
    >
      {dialog}
      <ErrorLine error={actionError ?? cluster.error} />
      {view.error !== null && <p class="error" data-testid="cluster-error">{view.error}</p>}
      {view.warnings.map((warning) => (
        <p class="warning" key={warning}>{warning}</p>
      ))}
      <dl class="facts">
        <dt>Machine</dt>
        <dd data-testid="cluster-label">{view.machineLabel ?? '—'}</dd>
        <dt>Size</dt>
        <dd>{view.size}</dd>
        <dt>Postgres</dt>
        <dd>{view.version}</dd>
        <dt>Durability</dt>
        <dd>{view.durability}</dd>
        <dt>Storage</dt>
        <dd>
          {bytes(view.storage.usedBytes)} of {view.storage.allocatedGb} GB{view.storage.percent === null ? '' : ` (${view.storage.percent}%)`}
          {view.storage.readOnly ? ' — read-only: full' : ''}
        </dd>
      </dl>

      <h2>Connection</h2>
      <ConnectionString label="Read-write" uri={view.uri} testId="cluster-uri" />
      <ConnectionString label="Read-only" uri={view.readOnlyUri} testId="cluster-readonly-uri" />

      <h2>Instances</h2>
      <div class="table-wrap">
        <table data-testid="instances">
          <thead>
            <tr>
              <th>Instance</th>
              <th>Role</th>
              <th>State</th>
              <th>Machine</th>
              <th>Host</th>
              <th>LSN</th>
              <th>Lag</th>
            </tr>
          </thead>
          <tbody>
            {view.instances.map((instance) => (
              <tr key={instance.id} data-testid={`instance-${instance.id}`} data-role={instance.role} class={instance.id === shownInstance?.id ? 'selected clickable' : 'clickable'} onClick={() => setChosenInstance(instance.id)}>
                <td>{instance.id}</td>
                <td data-testid="instance-role">{instance.role}{instance.fenced ? ' (fenced)' : ''}</td>
                <td>{instance.state}</td>
                <td data-testid="instance-label">{instance.machineLabel ?? '—'}</td>
                <td>{instance.host ?? '—'}</td>
                <td class="mono">{instance.lsn ?? '—'}</td>
                <td>{bytes(instance.lagBytes)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>

      <h2>State machine</h2>
      {machine === undefined ? <ErrorLine error={machines.error} /> : <MachineDiagram machine={machine} current={view.machineLabel} events={view.events} entity={view.id} />}
      {instanceMachine !== undefined && shownInstance !== undefined && (
        <>
          <h3>
            Instance{' '}
            <select data-testid="instance-machine-select" value={shownInstance.id} onChange={(event) => setChosenInstance(event.currentTarget.value)}>
              {view.instances.map((instance) => (
                <option key={instance.id} value={instance.id}>
                  {instance.id} ({instance.role})
                </option>
              ))}
            </select>{' '}
            now <span data-testid="instance-machine-label">{shownInstance.machineLabel ?? '—'}</span>
          </h3>
          <MachineDiagram machine={instanceMachine} current={shownInstance.machineLabel} events={view.events} entity={shownInstance.id} testId="instance-diagram" />
        </>
      )}

      <h2>Over the last {samplesMinutes} minutes</h2>
      <Charts samples={samples.data} />
      <ErrorLine error={samples.error} />

      <h2>Backups</h2>
      <Backups name={name} backups={backups.data?.backups} ask={ask} onError={setActionError} onStarted={backups.reload} />

      <h2>Events</h2>
      <ol class="events" data-testid="events">
        {[...view.events]
          .reverse()
          .slice(0, eventsShownMax)
          .map((event, index) => (
            <li key={`${event.at}-${index}`} data-testid="event">
              <time>{time(event.at)}</time> <span class="mono">{event.entity === view.id ? 'cluster' : event.entity}</span>{' '}
              <span data-testid="event-move">{event.from ?? '∅'} → {event.to}</span> <span class="muted">{event.reason}</span>
            </li>
          ))}
      </ol>
    </Page>
  );
}

function ConnectionString({ label, uri, testId }: { label: string; uri: string | null; testId: string }) {
  return (
    <div class="connection">
      <span class="connection-label">{label}</span>
      <code data-testid={testId}>{uri ?? 'not routable yet'}</code>
      {uri !== null && <CopyButton text={uri} testId={`copy-${testId}`} />}
    </div>
  );
}

function Charts({ samples }: { samples: Samples | undefined }) {
  const series = useMemo(() => {
    const list = samples?.samples ?? [];
    return {
      times: list.map((sample) => Date.parse(sample.at) / 1000),
      lag: list.map((sample) => sample.lagBytes),
      connections: list.map((sample) => sample.connections),
      transactions: list.map((sample) => sample.transactionsPerSecond),
    };
  }, [samples]);
  return (
    <div class="charts">
      <TimeChart title="Replication lag" unit="bytes" times={series.times} values={series.lag} windowSeconds={samplesMinutes * 60} testId="chart-lag" />
      <TimeChart title="Connections" unit="clients" times={series.times} values={series.connections} windowSeconds={samplesMinutes * 60} testId="chart-connections" />
      <TimeChart title="Throughput" unit="transactions/s" times={series.times} values={series.transactions} windowSeconds={samplesMinutes * 60} testId="chart-transactions" />
    </div>
  );
}

function Backups({ name, backups, ask, onError, onStarted }: { name: string; backups: BackupView[] | undefined; ask: ReturnType<typeof useConfirm>[1]; onError: (message: string | null) => void; onStarted: () => void }) {
  const [restoreTo, setRestoreTo] = useState('');
  const backUp = async (): Promise<void> => {
    try {
      onError(null);
      await request('POST', `/v1/clusters/${encodeURIComponent(name)}/backups`);
      // A backup's start records no cluster event, so the stream does not announce it.
      onStarted();
    } catch (thrown) {
      onError(messageOf(thrown));
    }
  };
  return (
    <>
      <div class="inline-form">
        <button type="button" data-testid="backup-now" onClick={() => void backUp()}>Back up now</button>
        <label>
          Restore into a new cluster named <input value={restoreTo} onInput={(event) => setRestoreTo(event.currentTarget.value)} data-testid="restore-to" placeholder="new-name" />
        </label>
      </div>
      {backups === undefined || backups.length === 0 ? (
        <p class="muted">No backups yet.</p>
      ) : (
        <div class="table-wrap">
          <table data-testid="backups">
            <thead>
              <tr>
                <th>Started</th>
                <th>Why</th>
                <th>Status</th>
                <th>Verified</th>
                <th>Size</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {backups.map((backup) => (
                <tr key={backup.id} data-testid={`backup-${backup.id}`}>
                  <td>{time(backup.startedAt)}</td>
                  <td>{backup.reason}</td>
                  <td>{backup.status}{backup.error === null ? '' : `: ${backup.error}`}</td>
                  <td>{backup.verified === null ? 'not yet' : backup.verified ? 'verified' : 'failed'}</td>
                  <td>{bytes(backup.bytes)}</td>
                  <td>
                    <button
                      type="button"
                      class="small"
                      disabled={backup.finishedAt === null || restoreTo.trim() === ''}
                      data-testid="restore"
                      onClick={() =>
                        ask({
                          message: `Restore backup ${backup.id} into a new cluster "${restoreTo.trim()}"?`,
                          action: async () => {
                            const to = restoreTo.trim();
                            await request('POST', `/v1/backups/${encodeURIComponent(backup.id)}/restore`, { to });
                            location.hash = `#/clusters/${encodeURIComponent(to)}`;
                          },
                        })
                      }
                    >
                      Restore
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </>
  );
}
