import { join } from 'node:path';
import type { Config } from '../config.js';
import { type Credentials, credentialsFileName, readCredentials } from '../lib/credentials.js';
import type { ErrorCode } from '../lib/errors.js';

/** The CLI's only way into Cellar: the HTTP API, found through credentials or the environment. */

const requestTimeoutMs = 30_000;
/** The API's answer while the cell store does not answer; its message is the sentence the user reads. */
export const storeUnavailableCode: ErrorCode = 'CELLAR_E_STORE_UNAVAILABLE';

export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field: string | undefined,
  ) {
    super(message);
  }
}

export async function resolveCredentials(config: Config): Promise<Credentials> {
  const stored = await readCredentials(config.home);
  const api = config.apiUrl ?? stored?.api ?? `http://${config.apiHost}:${config.apiPort}`;
  const token = config.token ?? stored?.token;
  if (token === undefined) {
    throw new Error(`no API token: run \`cellar up\` first (it writes ${join(config.home, credentialsFileName)}), or set CELLAR_TOKEN`);
  }
  return { api, token };
}

export class ApiClient {
  constructor(private readonly credentials: Credentials) {}

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    let response: Response;
    try {
      response = await fetch(new URL(path, this.credentials.api), {
        method,
        headers: { authorization: `Bearer ${this.credentials.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(requestTimeoutMs),
      });
    } catch (error) {
      const reason = error instanceof Error ? (error.cause instanceof Error ? error.cause.message : error.message) : String(error);
      throw new ApiError(0, 'CELLAR_E_UNREACHABLE', `cannot reach the Cellar API at ${this.credentials.api} (${reason}); is \`cellar up\` running?`, undefined);
    }
    const payload = (await response.json().catch(() => ({}))) as { error?: { code: string; message: string; field?: string } };
    if (!response.ok) {
      const error = payload.error ?? { code: 'CELLAR_E_INTERNAL', message: `HTTP ${response.status}` };
      throw new ApiError(response.status, error.code, error.message, error.field);
    }
    return payload as T;
  }
}
