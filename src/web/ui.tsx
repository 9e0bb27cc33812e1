import type { ComponentChildren } from 'preact';
import { useState } from 'preact/hooks';
import { ApiError } from './session.js';

/** Shared pieces: the confirmation dialog, copy buttons, errors and number formats. */

export interface Confirmation {
  /** What will happen, as the dialog's question. */
  message: string;
  action: () => Promise<void>;
}

/** `ask` opens the dialog; the action runs on confirm only. The dialog shows the action's error. */
export function useConfirm(): [ComponentChildren, (confirmation: Confirmation) => void] {
  const [pending, setPending] = useState<Confirmation | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const close = (): void => {
    setPending(null);
    setError(null);
  };
  const confirm = async (): Promise<void> => {
    if (pending === null) return;
    setBusy(true);
    try {
      await pending.action();
      close();
    } catch (thrown) {
      setError(messageOf(thrown));
    } finally {
      setBusy(false);
    }
  };
  const dialog =
    pending === null ? null : (
      <div class="backdrop">
        <div class="dialog" role="dialog" aria-modal="true" data-testid="confirm-dialog">
          <p data-testid="confirm-message">{pending.message}</p>
          {error !== null && <p class="error" data-testid="confirm-error">{error}</p>}
          <div class="buttons">
            <button type="button" data-testid="confirm-cancel" onClick={close}>Cancel</button>
            <button type="button" class="danger" data-testid="confirm-ok" disabled={busy} onClick={() => void confirm()}>Confirm</button>
          </div>
        </div>
      </div>
    );
  return [dialog, (confirmation) => setPending(confirmation)];
}

export function messageOf(thrown: unknown): string {
  return thrown instanceof ApiError || thrown instanceof Error ? thrown.message : String(thrown);
}

export function CopyButton({ text, testId }: { text: string; testId: string }) {
  const [copied, setCopied] = useState(false);
  const copy = async (): Promise<void> => {
    await navigator.clipboard.writeText(text).catch(() => undefined);
    setCopied(true);
  };
  return (
    <button type="button" class="small" data-testid={testId} onClick={() => void copy()}>
      {copied ? 'Copied' : 'Copy'}
    </button>
  );
}

export function ErrorLine({ error }: { error: ApiError | string | undefined | null }) {
  if (error === undefined || error === null) return null;
  return <p class="error" data-testid="page-error">{typeof error === 'string' ? error : error.message}</p>;
}

export function bytes(value: number | null | undefined): string {
  if (value === null || value === undefined) return '—';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let scaled = value;
  let unit = 0;
  while (Math.abs(scaled) >= 1024 && unit < units.length - 1) {
    scaled /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? scaled : scaled.toFixed(1)} ${units[unit]}`;
}

export function time(iso: string | null | undefined): string {
  if (iso === null || iso === undefined) return '—';
  return new Date(iso).toLocaleString();
}

export function Page({ title, children, actions }: { title: ComponentChildren; children: ComponentChildren; actions?: ComponentChildren }) {
  return (
    <section class="page">
      <header class="page-head">
        <h1>{title}</h1>
        {actions !== undefined && <div class="actions">{actions}</div>}
      </header>
      {children}
    </section>
  );
}
