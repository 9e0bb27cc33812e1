import { useState } from 'preact/hooks';
import { ApiError, request, useResource } from './session.js';
import type { FlagDetail, FlagRuleView, FlagView, FreezeDetail, HostView, RodDetail, RodView } from './types.js';
import { ErrorLine, Page, messageOf, time, useConfirm } from './ui.js';

/** The cell operator's pages (admin tokens only): hosts, flags, rods, the freeze. */

export function HostsPage() {
  const hosts = useResource<{ hosts: HostView[] }>('/v1/hosts', { anyCluster: true, controls: true });
  const [dialog, ask] = useConfirm();
  // A drain or undrain changes the host machine, not a cluster: the page rereads after its own.
  const act = (host: HostView, drain: boolean): void =>
    ask({
      message: drain
        ? `Drain host "${host.name}"? Its instances move to other hosts (replicas first, primaries by switchover) and it takes no new ones.`
        : `Undrain host "${host.name}"? It takes instances again.`,
      action: async () => {
        try {
          await request('POST', `/v1/hosts/${encodeURIComponent(host.name)}/${drain ? 'drain' : 'undrain'}`);
        } finally {
          hosts.reload();
        }
      },
    });
  return (
    <Page title="Hosts">
      {dialog}
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
              <th />
            </tr>
          </thead>
          <tbody>
            {(hosts.data?.hosts ?? []).map((host) => (
              <tr key={host.name} data-testid={`host-${host.name}`} data-state={host.state}>
                <td>{host.name}{host.local ? ' (local)' : ''}</td>
                <td data-testid="host-state">{host.state}</td>
                <td>{host.zone}</td>
                <td class="mono">{host.address}</td>
                <td>{host.used.instances} of {host.capacity.slots}</td>
                <td>{host.used.memoryMb} of {host.capacity.memoryMb}</td>
                <td>{host.used.diskGb} of {host.capacity.diskGb}</td>
                <td>{host.leaseAgeMs === null ? '—' : `${(host.leaseAgeMs / 1000).toFixed(1)} s`}</td>
                <td>
                  {host.state === 'active' && <button type="button" class="small danger" data-testid="host-drain" onClick={() => act(host, true)}>Drain</button>}
                  {(host.state === 'draining' || host.state === 'drained') && <button type="button" class="small" data-testid="host-undrain" onClick={() => act(host, false)}>Undrain</button>}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </Page>
  );
}

export function FlagsPage({ selected }: { selected: string | undefined }) {
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
              <tr key={flag.key} data-testid={`flag-${flag.key}`} class={flag.key === selected ? 'selected' : ''}>
                <td>
                  <a href={`#/flags/${encodeURIComponent(flag.key)}`} class="mono">{flag.key}</a>
                  <div class="muted">{flag.description}</div>
                </td>
                <td class="mono">{String(flag.default)}</td>
                <td>
                  {flag.rules.length === 0
                    ? '—'
                    : flag.rules.map((rule) => (
                        <div key={`${rule.level}:${rule.target}`}>
                          {describeRule(rule)} <span class="muted">({rule.reason})</span>
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
      {selected !== undefined && <FlagEditor flagKey={selected} />}
    </Page>
  );
}

const ruleLevels = ['global', 'cell', 'org', 'cluster'] as const;

function describeRule(rule: FlagRuleView): string {
  return `${rule.level}${rule.target === '' ? '' : ` ${rule.target}`}: ${String(rule.value)}${rule.percent === null ? '' : ` at ${rule.percent}%`}`;
}

/** An audited rule as `{ value, percent }` (src/store/flags.ts), or null for none. */
function describeAudited(audited: unknown): string {
  if (audited === null || typeof audited !== 'object') return 'none';
  const { value, percent } = audited as { value?: unknown; percent?: unknown };
  return `${String(value)}${typeof percent === 'number' ? ` at ${percent}%` : ''}`;
}

/** As the CLI reads a value: true and false are the booleans, anything else a string (a variant). */
function flagValueOf(text: string): boolean | string {
  const trimmed = text.trim();
  if (trimmed === 'true') return true;
  if (trimmed === 'false') return false;
  return trimmed;
}

type FieldProblem = { field: string | undefined; message: string } | null;

function fieldErrorOf(thrown: unknown): FieldProblem {
  return { field: thrown instanceof ApiError ? thrown.field : undefined, message: messageOf(thrown) };
}

/** The error beside one field, when the API named it. */
function FieldError({ error, field }: { error: FieldProblem; field: string }) {
  return error?.field === field ? <p class="error field-error" data-testid={`error-${field}`}>{error.message}</p> : null;
}

function FlagEditor({ flagKey }: { flagKey: string }) {
  const path = `/v1/flags/${encodeURIComponent(flagKey)}`;
  const flag = useResource<FlagDetail>(path, { controls: true });
  const [level, setLevel] = useState<string>('global');
  const [target, setTarget] = useState('');
  const [value, setValue] = useState('');
  const [percent, setPercent] = useState('');
  const [reason, setReason] = useState('');
  const [error, setError] = useState<FieldProblem>(null);
  const [removeReason, setRemoveReason] = useState('');
  const [removeError, setRemoveError] = useState<FieldProblem>(null);
  const [dialog, ask] = useConfirm();
  const detail = flag.data;
  const fields = ['level', 'target', 'value', 'percent', 'reason'];
  const submit = async (event: Event): Promise<void> => {
    event.preventDefault();
    setError(null);
    const trimmedPercent = percent.trim();
    // Empty fields are not sent; a percent that is not a number goes as typed, for the API to name.
    const body = {
      level,
      ...(level === 'global' ? {} : { target: target.trim() }),
      value: flagValueOf(value),
      ...(trimmedPercent === '' ? {} : { percent: Number.isNaN(Number(trimmedPercent)) ? trimmedPercent : Number(trimmedPercent) }),
      reason,
    };
    try {
      await request('PUT', path, body);
      setValue('');
      setPercent('');
      setReason('');
      flag.reload();
    } catch (thrown) {
      setError(fieldErrorOf(thrown));
    }
  };
  const remove = (rule: FlagRuleView): void =>
    ask({
      message: `Remove the ${rule.level}${rule.target === '' ? '' : ` ${rule.target}`} rule of ${flagKey}? The next level decides its value.`,
      action: async () => {
        setRemoveError(null);
        try {
          await request('DELETE', `${path}/rules`, { level: rule.level, ...(rule.level === 'global' ? {} : { target: rule.target }), reason: removeReason });
        } catch (thrown) {
          // Shown beside the reason field too, which stays on the page when the dialog closes.
          setRemoveError(fieldErrorOf(thrown));
          throw thrown;
        }
        setRemoveReason('');
        flag.reload();
      },
    });
  if (detail === undefined) return <ErrorLine error={flag.error} />;
  const allowed = detail.type === 'boolean' ? ['true', 'false'] : (detail.variants ?? []);
  return (
    <div class="panel" data-testid="flag-detail">
      {dialog}
      <h2 class="mono">{detail.key}</h2>
      <p>{detail.description}</p>
      <p>
        Default <strong class="mono">{String(detail.default)}</strong>; values: <span class="mono">{allowed.join(', ')}</span>.
      </p>
      <h3>Rules</h3>
      {detail.rules.length === 0 ? (
        <p class="muted" data-testid="flag-no-rules">No rules: every cluster gets the default.</p>
      ) : (
        <ul class="audit" data-testid="flag-rules">
          {detail.rules.map((rule) => (
            <li key={`${rule.level}:${rule.target}`} data-testid={`flag-rule-${rule.level}${rule.target === '' ? '' : `-${rule.target}`}`}>
              <span class="mono" data-testid="flag-rule-text">{describeRule(rule)}</span> by {rule.setBy} <span class="muted">({rule.reason})</span>{' '}
              <button type="button" class="small danger" data-testid="flag-rule-remove" onClick={() => remove(rule)}>Remove</button>
            </li>
          ))}
        </ul>
      )}
      {detail.rules.length > 0 && (
        <div class="field">
          <label for="flag-remove-reason">Reason for a removal</label>
          <input id="flag-remove-reason" data-testid="flag-remove-reason" value={removeReason} onInput={(event) => setRemoveReason(event.currentTarget.value)} />
          {removeError !== null && <p class="error field-error" data-testid="flag-remove-error">{removeError.message}</p>}
        </div>
      )}
      <h3>Set a rule</h3>
      <form class="form" onSubmit={(event) => void submit(event)} noValidate>
        <div class="field">
          <label for="flag-level">Level</label>
          <select id="flag-level" data-testid="flag-level" value={level} onChange={(event) => setLevel(event.currentTarget.value)}>
            {ruleLevels.map((each) => (
              <option key={each} value={each}>{each}</option>
            ))}
          </select>
          <FieldError error={error} field="level" />
        </div>
        {level !== 'global' && (
          <div class="field">
            <label for="flag-target">Target ({level === 'cell' ? "the cell's name" : level === 'org' ? "the org's id or name" : "the cluster's id"})</label>
            <input id="flag-target" data-testid="flag-target" value={target} onInput={(event) => setTarget(event.currentTarget.value)} />
            <FieldError error={error} field="target" />
          </div>
        )}
        <div class="field">
          <label for="flag-value">Value ({allowed.join(', ')})</label>
          <input id="flag-value" data-testid="flag-value" list="flag-values" value={value} onInput={(event) => setValue(event.currentTarget.value)} />
          <datalist id="flag-values">
            {allowed.map((each) => (
              <option key={each} value={each} />
            ))}
          </datalist>
          <FieldError error={error} field="value" />
        </div>
        <div class="field">
          <label for="flag-percent">Percent of ids (empty: all)</label>
          <input id="flag-percent" data-testid="flag-percent" inputMode="decimal" value={percent} onInput={(event) => setPercent(event.currentTarget.value)} />
          <FieldError error={error} field="percent" />
        </div>
        <div class="field">
          <label for="flag-reason">Reason</label>
          <input id="flag-reason" data-testid="flag-reason" value={reason} onInput={(event) => setReason(event.currentTarget.value)} />
          <FieldError error={error} field="reason" />
        </div>
        {error !== null && !fields.includes(error.field ?? '') && <p class="error" data-testid="flag-error">{error.message}</p>}
        <button type="submit" class="primary" data-testid="flag-submit">Set rule</button>
      </form>
      <h3>Audit</h3>
      <ol class="audit" data-testid="flag-changes">
        {detail.changes.map((change, index) => (
          <li key={`${change.at}-${index}`} data-testid="flag-change">
            <time>{time(change.at)}</time> {change.scope}: {describeAudited(change.oldValue)} → {describeAudited(change.newValue)} by {change.actor} <span class="muted" data-testid="flag-change-reason">{change.reason}</span>
          </li>
        ))}
      </ol>
    </div>
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
