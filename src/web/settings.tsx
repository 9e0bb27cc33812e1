import { useState } from 'preact/hooks';
import { ApiError, request, useResource } from './session.js';
import type { ConfigView, ProposalView, RevisionView } from './types.js';
import { ErrorLine, Page, messageOf, time } from './ui.js';

/**
 * A cluster's settings: its own settings edited as rows, the plan of the draft (a dryRun) shown
 * before it can be applied, and the revisions, newest first.
 */

interface Draft {
  settings: Record<string, string | null>;
  size: string;
  replicas: string;
  reason: string;
}

function changeOf(config: ConfigView, draft: Draft): Record<string, unknown> {
  const settings = Object.fromEntries(Object.entries(draft.settings).filter(([name, value]) => (config.settings[name] ?? null) !== value));
  return {
    ...(Object.keys(settings).length > 0 ? { settings } : {}),
    ...(draft.size.trim() !== '' && draft.size.trim() !== config.size ? { size: draft.size.trim() } : {}),
    ...(draft.replicas.trim() !== '' && draft.replicas.trim() !== String(config.replicas) ? { replicas: /^\d+$/.test(draft.replicas.trim()) ? Number(draft.replicas.trim()) : draft.replicas.trim() } : {}),
    ...(draft.reason.trim() === '' ? {} : { reason: draft.reason.trim() }),
  };
}

export function SettingsPage({ name }: { name: string }) {
  const path = `/v1/clusters/${encodeURIComponent(name)}/config`;
  const config = useResource<ConfigView>(path, { cluster: name });
  const history = useResource<{ revisions: RevisionView[] }>(`${path}/revisions`, { cluster: name });
  const [draft, setDraft] = useState<Draft>({ settings: {}, size: '', replicas: '', reason: '' });
  const [newName, setNewName] = useState('');
  const [newValue, setNewValue] = useState('');
  const [plan, setPlan] = useState<{ key: string; proposal: ProposalView } | null>(null);
  const [error, setError] = useState<{ field: string | undefined; message: string } | null>(null);
  const [applied, setApplied] = useState<number | null>(null);
  const view = config.data;
  if (view === undefined) {
    return (
      <Page title={`${name}: settings`}>
        <ErrorLine error={config.error} />
      </Page>
    );
  }
  const merged: Record<string, string | null> = { ...view.settings, ...draft.settings };
  const change = changeOf(view, draft);
  const key = JSON.stringify(change);
  const fail = (thrown: unknown): void => setError({ field: thrown instanceof ApiError ? thrown.field : undefined, message: messageOf(thrown) });
  const planDraft = async (): Promise<void> => {
    setError(null);
    setApplied(null);
    try {
      setPlan({ key, proposal: await request<ProposalView>('POST', path, { ...change, dryRun: true }) });
    } catch (thrown) {
      setPlan(null);
      fail(thrown);
    }
  };
  const apply = async (): Promise<void> => {
    setError(null);
    try {
      const proposal = await request<ProposalView>('POST', path, change);
      setApplied(proposal.revision);
      setPlan(null);
      setDraft({ settings: {}, size: '', replicas: '', reason: '' });
      config.reload();
      history.reload();
    } catch (thrown) {
      fail(thrown);
    }
  };
  const setSetting = (setting: string, value: string | null): void => setDraft({ ...draft, settings: { ...draft.settings, [setting]: value } });
  return (
    <Page title={<><a href={`#/clusters/${encodeURIComponent(name)}`}>{name}</a>: settings</>}>
      <p class="muted">Revision {view.revision}{view.applying !== null ? `; revision ${view.applying.revision} is being applied (${view.applying.step ?? view.applying.state})` : ''}.</p>
      <div class="form">
        <div class="field">
          <label for="settings-size">Size</label>
          <input id="settings-size" data-testid="settings-size" placeholder={view.size} value={draft.size} onInput={(event) => setDraft({ ...draft, size: event.currentTarget.value })} />
        </div>
        <div class="field">
          <label for="settings-replicas">Replicas</label>
          <input id="settings-replicas" data-testid="settings-replicas" placeholder={String(view.replicas)} value={draft.replicas} onInput={(event) => setDraft({ ...draft, replicas: event.currentTarget.value })} />
        </div>
      </div>
      <h2>Own settings</h2>
      <div class="table-wrap">
        <table data-testid="settings">
          <thead>
            <tr>
              <th>Setting</th>
              <th>Value</th>
              <th>Runs with</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {Object.entries(merged).map(([setting, value]) => (
              <tr key={setting} data-testid={`setting-${setting}`}>
                <td class="mono">{setting}</td>
                <td>{value === null ? <span class="muted">default (removed)</span> : <input value={value} data-testid={`setting-value-${setting}`} onInput={(event) => setSetting(setting, event.currentTarget.value)} />}</td>
                <td class="mono">{view.effective[setting] ?? '—'}</td>
                <td>{value !== null && <button type="button" class="small" onClick={() => setSetting(setting, null)}>Remove</button>}</td>
              </tr>
            ))}
            <tr>
              <td><input placeholder="work_mem" value={newName} data-testid="setting-new-name" onInput={(event) => setNewName(event.currentTarget.value)} /></td>
              <td><input placeholder="8MB" value={newValue} data-testid="setting-new-value" onInput={(event) => setNewValue(event.currentTarget.value)} /></td>
              <td />
              <td>
                <button type="button" class="small" data-testid="setting-add" disabled={newName.trim() === ''} onClick={() => { setSetting(newName.trim(), newValue); setNewName(''); setNewValue(''); }}>
                  Add
                </button>
              </td>
            </tr>
          </tbody>
        </table>
      </div>
      <div class="field">
        <label for="settings-reason">Reason</label>
        <input id="settings-reason" data-testid="settings-reason" value={draft.reason} onInput={(event) => setDraft({ ...draft, reason: event.currentTarget.value })} />
      </div>
      {error !== null && <p class="error" data-testid="settings-error">{error.field === undefined ? '' : `${error.field}: `}{error.message}</p>}
      <div class="buttons">
        <button type="button" data-testid="plan-button" onClick={() => void planDraft()}>Plan</button>
        <button type="button" class="primary" data-testid="apply-button" disabled={plan === null || plan.key !== key} onClick={() => void apply()}>Apply this plan</button>
      </div>
      {applied !== null && <p data-testid="settings-applied">Revision {applied} is being applied.</p>}
      {plan !== null && plan.key === key && <Plan proposal={plan.proposal} />}
      <h2>History</h2>
      <ErrorLine error={history.error} />
      <ol class="revisions" data-testid="revisions">
        {(history.data?.revisions ?? []).map((revision) => (
          <li key={revision.revision} data-testid={`revision-${revision.revision}`}>
            <strong>#{revision.revision}</strong> {time(revision.createdAt)} · {revision.state}{revision.step === null ? '' : ` (${revision.step})`} · {revision.actor}
            {revision.rollbackOf !== null ? ` · rollback of #${revision.rollbackOf}` : ''}
            {revision.reason !== null && <span class="muted"> · {revision.reason}</span>}
            {revision.error !== null && <span class="error"> · {revision.error}</span>}
            <ul>
              {revision.diff.map((entry) => (
                <li key={entry.name} class="mono">{entry.name}: {entry.from ?? 'default'} → {entry.to ?? 'default'}</li>
              ))}
            </ul>
          </li>
        ))}
      </ol>
    </Page>
  );
}

function Plan({ proposal }: { proposal: ProposalView }) {
  const plan = proposal.plan;
  return (
    <div class="plan" data-testid="plan">
      <h3>The plan</h3>
      <p>
        {plan.restart ? `Restarts (${plan.order})` : 'No restart'}
        {plan.switchover ? ', with a switchover' : ''}; writes wait at most {plan.expectedWritePauseMs} ms.
      </p>
      <ol>
        {plan.steps.map((step) => (
          <li key={step} data-testid="plan-step">{step}</li>
        ))}
      </ol>
      {(proposal.warnings ?? []).map((warning) => (
        <p class="warning" key={warning}>{warning}</p>
      ))}
    </div>
  );
}
