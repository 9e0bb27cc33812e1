import { useState } from 'preact/hooks';
import { ApiError, request, useResource } from './session.js';
import type { FlagView, FreezeDetail, HostView, RodDetail, RodView } from './types.js';
import { ErrorLine, Page, messageOf, time, useConfirm } from './ui.js';

/** The cell operator's pages (admin tokens only): hosts, flags, rods, the freeze. */

export function HostsPage() {
  const hosts = useResource<{ hosts: HostView[] }>('/v1/hosts', { anyCluster: true, controls: true });
  return (
    <Page title="Hosts">
      <ErrorLine error={hosts.error} />
      <div class="table-wrap">
        <table data-testid="hosts">
          <thead>
            <tr>
              <th>Host</th>
              <th>State</th>
              <th>Zone</th>
              <th>Address</th>
              <th>Instances</th>
              <th>Memory (MB)</th>
              <th>Disk (GB)</th>
              <th>Lease age</th>
            </tr>
          </thead>
          <tbody>
            {(hosts.data?.hosts ?? []).map((host) => (
              <tr key={host.name} data-testid={`host-${host.name}`}>
                <td>{host.name}{host.local ? ' (local)' : ''}</td>
                <td>{host.state}</td>
                <td>{host.zone}</td>
                <td class="mono">{host.address}</td>
                <td>{host.used.instances} of {host.capacity.slots}</td>
                <td>{host.used.memoryMb} of {host.capacity.memoryMb}</td>
                <td>{host.used.diskGb} of {host.capacity.diskGb}</td>
                <td>{host.leaseAgeMs === null ? '—' : `${(host.leaseAgeMs / 1000).toFixed(1)} s`}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </Page>
  );
}

export function FlagsPage() {
  const flags = useResource<{ flags: FlagView[] }>('/v1/flags', { controls: true });
  return (
    <Page title="Flags">
      <ErrorLine error={flags.error} />
      <div class="table-wrap">
        <table data-testid="flags">
          <thead>
            <tr>
              <th>Flag</th>
              <th>Default</th>
              <th>Rules</th>
              <th>Kind</th>
              <th>Expires</th>
            </tr>
          </thead>
          <tbody>
            {(flags.data?.flags ?? []).map((flag) => (
              <tr key={flag.key} data-testid={`flag-${flag.key}`}>
                <td>
                  <span class="mono">{flag.key}</span>
                  <div class="muted">{flag.description}</div>
                </td>
                <td class="mono">{String(flag.default)}</td>
                <td>
                  {flag.rules.length === 0
                    ? '—'
                    : flag.rules.map((rule) => (
                        <div key={`${rule.level}:${rule.target}`}>
                          {rule.level}{rule.target === '' ? '' : ` ${rule.target}`}: <span class="mono">{String(rule.value)}</span>
                          {rule.percent === null ? '' : ` at ${rule.percent}%`} <span class="muted">({rule.reason})</span>
                        </div>
                      ))}
                </td>
                <td>{flag.kind}</td>
                <td>{flag.expires}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </Page>
  );
}

export function RodsPage({ selected }: { selected: string | undefined }) {
  const rods = useResource<{ rods: RodView[] }>('/v1/rods', { controls: true });
  return (
    <Page title="Rods">
      <ErrorLine error={rods.error} />
      <div class="table-wrap">
        <table data-testid="rods">
          <thead>
            <tr>
              <th>Rod</th>
              <th>Value</th>
              <th>Bounds</th>
              <th>Default</th>
              <th>From</th>
            </tr>
          </thead>
          <tbody>
            {(rods.data?.rods ?? []).map((rod) => (
              <tr key={rod.name} data-testid={`rod-${rod.name}`} class={rod.name === selected ? 'selected' : ''}>
                <td>
                  <a href={`#/rods/${encodeURIComponent(rod.name)}`} class="mono">{rod.name}</a>
                </td>
                <td data-testid="rod-value">{rod.value} {rod.unit}</td>
                <td>{rod.min}–{rod.max}</td>
                <td>{rod.default}</td>
                <td>{rod.source}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {selected !== undefined && <RodEditor name={selected} />}
    </Page>
  );
}

function RodEditor({ name }: { name: string }) {
  const rod = useResource<RodDetail>(`/v1/rods/${encodeURIComponent(name)}`, { controls: true });
  const [value, setValue] = useState('');
  const [reason, setReason] = useState('');
  const [error, setError] = useState<{ field: string | undefined; message: string } | null>(null);
  const detail = rod.data;
  const submit = async (event: Event): Promise<void> => {
    event.preventDefault();
    setError(null);
    try {
      await request('PUT', `/v1/rods/${encodeURIComponent(name)}`, { value: /^-?\d+$/.test(value.trim()) ? Number(value.trim()) : value, reason });
      setValue('');
      setReason('');
      rod.reload();
    } catch (thrown) {
      setError({ field: thrown instanceof ApiError ? thrown.field : undefined, message: messageOf(thrown) });
    }
  };
  if (detail === undefined) return <ErrorLine error={rod.error} />;
  return (
    <div class="panel" data-testid="rod-detail">
      <h2 class="mono">{detail.name}</h2>
      <p>{detail.description}</p>
      <p>
        Now <strong data-testid="rod-current">{detail.value}</strong> {detail.unit}, within {detail.min}–{detail.max} (default {detail.default}).
      </p>
      <form class="form" onSubmit={(event) => void submit(event)} noValidate>
        <div class="field">
          <label for="rod-new-value">New value ({detail.min}–{detail.max} {detail.unit})</label>
          <input id="rod-new-value" data-testid="rod-new-value" inputMode="numeric" value={value} onInput={(event) => setValue(event.currentTarget.value)} />
          {error?.field === 'value' && <p class="error field-error" data-testid="error-value">{error.message}</p>}
        </div>
        <div class="field">
          <label for="rod-reason">Reason</label>
          <input id="rod-reason" data-testid="rod-reason" value={reason} onInput={(event) => setReason(event.currentTarget.value)} />
          {error?.field === 'reason' && <p class="error field-error" data-testid="error-reason">{error.message}</p>}
        </div>
        {error !== null && error.field !== 'value' && error.field !== 'reason' && <p class="error" data-testid="rod-error">{error.message}</p>}
        <button type="submit" class="primary" data-testid="rod-submit">Set</button>
      </form>
      <h3>Audit</h3>
      <ol class="audit" data-testid="rod-changes">
        {detail.changes.map((change, index) => (
          <li key={`${change.at}-${index}`} data-testid="rod-change">
            <time>{time(change.at)}</time> {change.scope}: {change.oldValue ?? 'default'} → {change.newValue ?? 'default'} by {change.actor} <span class="muted" data-testid="rod-change-reason">{change.reason}</span>
          </li>
        ))}
      </ol>
    </div>
  );
}

export function FreezePage() {
  const freeze = useResource<FreezeDetail>('/v1/freeze', { controls: true });
  const [reason, setReason] = useState('');
  const [dialog, ask] = useConfirm();
  const detail = freeze.data;
  const change = (frozen: boolean): void =>
    ask({
      message: frozen
        ? 'Freeze the cell? Rollouts, new provisioning, configuration changes and scheduled backups wait until it is thawed; failover and switchover go on.'
        : 'Thaw the cell? What waited for the freeze goes on at once.',
      action: async () => {
        await request(frozen ? 'POST' : 'DELETE', '/v1/freeze', { reason });
        setReason('');
        freeze.reload();
      },
    });
  return (
    <Page title="Freeze">
      {dialog}
      <ErrorLine error={freeze.error} />
      {detail !== undefined && (
        <>
          <p data-testid="freeze-state" data-frozen={String(detail.frozen)}>
            {detail.frozen ? `Frozen since ${time(detail.since)} by ${detail.actor ?? '?'}: ${detail.reason ?? ''}` : 'Not frozen.'}
          </p>
          <div class="inline-form">
            <label>
              Reason <input data-testid="freeze-reason" value={reason} onInput={(event) => setReason(event.currentTarget.value)} />
            </label>
            {detail.frozen ? (
              <button type="button" class="primary" data-testid="thaw-button" onClick={() => change(false)}>Thaw</button>
            ) : (
              <button type="button" class="danger" data-testid="freeze-button" onClick={() => change(true)}>Freeze</button>
            )}
          </div>
          <h2>History</h2>
          <ol class="audit" data-testid="freeze-history">
            {detail.history.map((entry, index) => (
              <li key={`${entry.at}-${index}`}>
                <time>{time(entry.at)}</time> {entry.frozen ? 'froze' : 'thawed'} by {entry.actor} <span class="muted">{entry.reason}</span>
              </li>
            ))}
          </ol>
        </>
      )}
    </Page>
  );
}
