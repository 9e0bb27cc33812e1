import { useState } from 'preact/hooks';
import { ApiError, request } from './session.js';
import type { ClusterView } from './types.js';
import { Page, messageOf } from './ui.js';

/**
 * Create a cluster. The console checks nothing itself: the API's 400 names the field, and its
 * message is shown beside that field (an error without a field, above the button).
 */

interface Field {
  key: string;
  label: string;
  kind: 'text' | 'number' | 'select';
  placeholder?: string;
  options?: string[];
}

const fields: Field[] = [
  { key: 'name', label: 'Name', kind: 'text', placeholder: 'app' },
  { key: 'replicas', label: 'Replicas', kind: 'number', placeholder: '0' },
  { key: 'size', label: 'Size', kind: 'text', placeholder: 'default' },
  { key: 'storageGb', label: 'Storage (GB)', kind: 'number', placeholder: 'default' },
  { key: 'version', label: 'Postgres version', kind: 'number', placeholder: 'newest installed' },
  { key: 'durability', label: 'Durability', kind: 'select', options: ['', 'async', 'sync', 'sync-strict'] },
  { key: 'backupIntervalHours', label: 'Backup every (hours)', kind: 'number', placeholder: "the cell's default" },
];

/** A field left empty is not sent (the API's default); a number field's text is sent as a number if it is one. */
function body(values: Record<string, string>): Record<string, string | number> {
  const result: Record<string, string | number> = {};
  for (const field of fields) {
    const raw = (values[field.key] ?? '').trim();
    if (raw === '') continue;
    result[field.key] = field.kind === 'number' && /^-?\d+(\.\d+)?$/.test(raw) ? Number(raw) : raw;
  }
  return result;
}

export function CreatePage() {
  const [values, setValues] = useState<Record<string, string>>({});
  const [error, setError] = useState<{ field: string | undefined; message: string } | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event: Event): Promise<void> => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const created = await request<ClusterView>('POST', '/v1/clusters', body(values));
      location.hash = `#/clusters/${encodeURIComponent(created.name)}`;
    } catch (thrown) {
      const field = thrown instanceof ApiError && fields.some((known) => known.key === thrown.field) ? thrown.field : undefined;
      setError({ field, message: messageOf(thrown) });
    } finally {
      setBusy(false);
    }
  };
  return (
    <Page title="New cluster">
      <form class="form" onSubmit={(event) => void submit(event)} data-testid="create-form" noValidate>
        {fields.map((field) => (
          <div class="field" key={field.key}>
            <label for={`create-${field.key}`}>{field.label}</label>
            {field.kind === 'select' ? (
              <select id={`create-${field.key}`} data-testid={`create-${field.key}`} value={values[field.key] ?? ''} onChange={(event) => setValues({ ...values, [field.key]: event.currentTarget.value })}>
                {(field.options ?? []).map((option) => (
                  <option key={option} value={option}>{option === '' ? 'default' : option}</option>
                ))}
              </select>
            ) : (
              <input
                id={`create-${field.key}`}
                data-testid={`create-${field.key}`}
                inputMode={field.kind === 'number' ? 'numeric' : 'text'}
                placeholder={field.placeholder}
                value={values[field.key] ?? ''}
                aria-invalid={error?.field === field.key}
                onInput={(event) => setValues({ ...values, [field.key]: event.currentTarget.value })}
              />
            )}
            {error !== null && error.field === field.key && <p class="error field-error" data-testid={`error-${field.key}`}>{error.message}</p>}
          </div>
        ))}
        {error !== null && error.field === undefined && <p class="error" data-testid="create-error">{error.message}</p>}
        <button type="submit" class="primary" disabled={busy} data-testid="create-submit">Create</button>
      </form>
    </Page>
  );
}
