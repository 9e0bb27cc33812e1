import { useEffect, useState } from 'preact/hooks';
import type { ApiErrorBody, Whoami } from './types.js';

/**
 * The signed-in tab: its token (sessionStorage), who it is, the one stream of changes, and whether
 * the API is reachable. Every request goes through `request`, which signs the page out on a 401.
 */

const tokenKey = 'cellar.token';
/** The stream is retried after 1 s, doubling up to 10 s (docs/CONSOLE.md "Live"). */
export const streamRetryFirstMs = 1_000;
export const streamRetryMaxMs = 10_000;
/** One SSE message larger than this is the API misbehaving: drop the stream and reconnect. */
const streamBufferCharsMax = 1_000_000;

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field: string | undefined,
  ) {
    super(message);
  }
}

export interface Change {
  /** Null: everything may have changed (the stream came back after a loss). */
  clusters: string[] | null;
  controls: boolean;
}

interface SessionState {
  token: string | null;
  whoami: Whoami | null;
  /** Why the page was signed out (the API's message), shown on the sign-in page. */
  signedOutMessage: string | null;
  /** When the stream was lost, and when a request last failed to reach the API; null: fine. */
  streamLostSince: Date | null;
  requestLostSince: Date | null;
}

export const session: SessionState = {
  token: sessionStorage.getItem(tokenKey),
  whoami: null,
  signedOutMessage: null,
  streamLostSince: null,
  requestLostSince: null,
};

const listeners = new Set<() => void>();
const changeListeners = new Set<(change: Change) => void>();
let streamController: AbortController | null = null;

function emit(): void {
  for (const listener of listeners) listener();
}

/** Re-renders the caller whenever the session changes. */
export function useSession(): SessionState {
  const [, setVersion] = useState(0);
  useEffect(() => {
    const listener = (): void => setVersion((version) => version + 1);
    listeners.add(listener);
    return () => listeners.delete(listener);
  }, []);
  return session;
}

export function lostSince(): Date | null {
  const times = [session.streamLostSince, session.requestLostSince].filter((time): time is Date => time !== null);
  return times.length === 0 ? null : new Date(Math.min(...times.map((time) => time.getTime())));
}

export function onChange(listener: (change: Change) => void): () => void {
  changeListeners.add(listener);
  return () => changeListeners.delete(listener);
}

function announce(change: Change): void {
  for (const listener of changeListeners) listener(change);
}

function setRequestLost(lost: boolean): void {
  const was = session.requestLostSince !== null;
  if (lost === was) return;
  session.requestLostSince = lost ? new Date() : null;
  emit();
}

/** Checks the token with the API, keeps it for the tab and opens the stream; throws the API's error. */
export async function signIn(token: string): Promise<void> {
  session.token = token;
  try {
    // A refused token here is the form's error, not a sign-out.
    session.whoami = await request<Whoami>('GET', '/v1/whoami', undefined, { signOutOnRefusal: false });
  } catch (error) {
    session.token = null;
    throw error;
  }
  sessionStorage.setItem(tokenKey, token);
  session.signedOutMessage = null;
  emit();
  startStream();
}

/** Resumes a tab that has a token already (a reload), retrying while the API cannot be reached. */
export async function resume(): Promise<void> {
  const token = session.token;
  let retryMs = streamRetryFirstMs;
  while (session.token === token && token !== null) {
    try {
      session.whoami = await request<Whoami>('GET', '/v1/whoami');
      emit();
      startStream();
      return;
    } catch (error) {
      // A 401 has signed out already; anything else is the API away: the banner says so.
      if (error instanceof ApiError && error.status !== 0 && error.status < 500) return;
    }
    await new Promise((resolve) => setTimeout(resolve, retryMs));
    retryMs = Math.min(retryMs * 2, streamRetryMaxMs);
  }
}

export function signOut(message: string | null = null): void {
  sessionStorage.removeItem(tokenKey);
  streamController?.abort();
  streamController = null;
  Object.assign(session, { token: null, whoami: null, signedOutMessage: message, streamLostSince: null, requestLostSince: null });
  location.hash = '#/';
  emit();
}

/** One API call with the tab's token; the error is the API's own (`{"error":{code,message,field}}`). */
export async function request<T>(method: string, path: string, body?: unknown, options: { signOutOnRefusal?: boolean } = {}): Promise<T> {
  const token = session.token;
  if (token === null) throw new ApiError(401, 'CELLAR_E_UNAUTHENTICATED', 'signed out', undefined);
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
  } catch {
    setRequestLost(true);
    throw new ApiError(0, 'CELLAR_E_UNREACHABLE', 'the API cannot be reached', undefined);
  }
  const text = await response.text().catch(() => '');
  let parsed: unknown = null;
  try {
    parsed = text === '' ? null : JSON.parse(text);
  } catch {
    parsed = null;
  }
  // A proxy or a dead store in front answers 502-504: the API is as good as lost.
  setRequestLost(response.status >= 502 && response.status <= 504);
  if (response.ok) return parsed as T;
  const error = (parsed as ApiErrorBody | null)?.error;
  const message = error?.message ?? `the API answered ${response.status}`;
  // Only the token in use now: a late answer for a token already signed out changes nothing.
  if (response.status === 401 && session.token === token && options.signOutOnRefusal !== false) signOut(message);
  throw new ApiError(response.status, error?.code ?? 'CELLAR_E_HTTP', message, error?.field);
}

function startStream(): void {
  streamController?.abort();
  const controller = new AbortController();
  streamController = controller;
  void runStream(controller);
}

function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

function setStreamLost(lost: boolean): void {
  if (lost === (session.streamLostSince !== null)) return;
  session.streamLostSince = lost ? new Date() : null;
  emit();
}

/** The one stream of the tab (GET /v1/stream, read with fetch to send the token), kept open until sign-out. */
async function runStream(controller: AbortController): Promise<void> {
  let retryMs = streamRetryFirstMs;
  while (!controller.signal.aborted) {
    try {
      const ended = await readStream(controller, () => {
        retryMs = streamRetryFirstMs;
      });
      if (ended === 'denied') return;
    } catch {
      // Dropped or refused: retried below.
    }
    if (controller.signal.aborted) return;
    setStreamLost(true);
    await pause(retryMs, controller.signal);
    retryMs = Math.min(retryMs * 2, streamRetryMaxMs);
  }
}

async function readStream(controller: AbortController, onHello: () => void): Promise<'ended' | 'denied'> {
  const token = session.token;
  if (token === null) return 'denied';
  const response = await fetch('/v1/stream', { headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' }, signal: controller.signal });
  if (response.status === 401) {
    const body = (await response.json().catch(() => null)) as ApiErrorBody | null;
    if (session.token === token) signOut(body?.error.message ?? 'the token was refused');
    return 'denied';
  }
  if (!response.ok || response.body === null) throw new Error(`the stream answered ${response.status}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return 'ended';
    buffer += value.replace(/\r\n?/g, '\n');
    if (buffer.length > streamBufferCharsMax) throw new Error('a stream message too large');
    let end = buffer.indexOf('\n\n');
    while (end >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      end = buffer.indexOf('\n\n');
      let event = 'message';
      let data = '';
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data += (data === '' ? '' : '\n') + line.slice(5).trimStart();
      }
      if (event === 'hello') {
        onHello();
        const wasLost = session.streamLostSince !== null;
        setStreamLost(false);
        // Whatever changed while the stream was down was not announced: refetch everything.
        if (wasLost) announce({ clusters: null, controls: true });
      } else if (event === 'change') {
        const change = JSON.parse(data) as { clusters?: string[]; controls?: boolean };
        announce({ clusters: change.clusters ?? [], controls: change.controls === true });
      } else if (event === 'denied') {
        const body = JSON.parse(data) as ApiErrorBody;
        if (session.token === token) signOut(body.error.message);
        return 'denied';
      }
    }
  }
}

/** What a view refetches on: a cluster's changes, any cluster's, the controls', and a period. */
export interface Freshness {
  cluster?: string;
  anyCluster?: boolean;
  controls?: boolean;
  everyMs?: number;
}

export interface Resource<T> {
  data: T | undefined;
  error: ApiError | undefined;
  reload: () => void;
}

/** GET `path` now, again on the changes `freshness` names, and every `everyMs`; null: nothing. */
export function useResource<T>(path: string | null, freshness: Freshness = {}): Resource<T> {
  const [state, setState] = useState<{ path: string | null; data: T | undefined; error: ApiError | undefined }>({ path, data: undefined, error: undefined });
  const [version, setVersion] = useState(0);
  useEffect(() => {
    if (path === null) return;
    let current = true;
    request<T>('GET', path).then(
      (data) => current && setState({ path, data, error: undefined }),
      (error: unknown) => current && setState((previous) => ({ path, data: previous.path === path ? previous.data : undefined, error: error instanceof ApiError ? error : new ApiError(0, 'CELLAR_E_CONSOLE', String(error), undefined) })),
    );
    return () => {
      current = false;
    };
  }, [path, version]);
  useEffect(() => {
    const reload = (): void => setVersion((value) => value + 1);
    const unsubscribe = onChange((change) => {
      const named = change.clusters === null || (freshness.anyCluster === true && change.clusters.length > 0) || (freshness.cluster !== undefined && change.clusters.includes(freshness.cluster));
      if (named || (freshness.controls === true && change.controls)) reload();
    });
    const timer = freshness.everyMs === undefined ? undefined : setInterval(reload, freshness.everyMs);
    return () => {
      unsubscribe();
      if (timer !== undefined) clearInterval(timer);
    };
  }, [freshness.cluster, freshness.anyCluster, freshness.controls, freshness.everyMs]);
  const fresh = state.path === path;
  return { data: fresh ? state.data : undefined, error: fresh ? state.error : undefined, reload: () => setVersion((value) => value + 1) };
}

/** The hash route, e.g. `#/clusters/app` → ['clusters', 'app']. */
export function useRoute(): string[] {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const listener = (): void => setHash(location.hash);
    addEventListener('hashchange', listener);
    return () => removeEventListener('hashchange', listener);
  }, []);
  return hash.replace(/^#\/?/, '').split('/').filter((part) => part !== '').map(decodeURIComponent);
}
