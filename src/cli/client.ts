import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import type { Config } from '../config.js';
import { type Credentials, credentialsFileName, readCredentials } from '../lib/credentials.js';
import type { ErrorCode } from '../lib/errors.js';

/** The CLI's only way into Cellar: the HTTP API, found through credentials or the environment. */

const requestTimeoutMs = 30_000;
/** The largest answer a command reads (a page of a list is far smaller). */
const responseBytesMax = 64 * 1024 ** 2;
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
  constructor(
    private readonly credentials: Credentials,
    private readonly responseBytesLimit = responseBytesMax,
  ) {}

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const url = new URL(path, this.credentials.api);
    const text = body === undefined ? undefined : JSON.stringify(body);
    let answer: { status: number; body: string };
    try {
      answer = await exchange(url, method, this.credentials.token, text, this.responseBytesLimit);
    } catch (error) {
      if (error instanceof ApiError) throw error;
      const reason = error instanceof Error ? error.message : String(error);
      throw new ApiError(0, 'CELLAR_E_UNREACHABLE', `cannot reach the Cellar API at ${this.credentials.api} (${reason}); is \`cellar up\` running?`, undefined);
    }
    const payload = parseJson(answer.body) as { error?: { code: string; message: string; field?: string } };
    if (answer.status < 200 || answer.status > 299) {
      const error = payload.error ?? { code: 'CELLAR_E_INTERNAL', message: `HTTP ${answer.status}` };
      throw new ApiError(answer.status, error.code, error.message, error.field);
    }
    return payload as T;
  }
}

/**
 * One request over node:http, on a connection of its own that closes with the answer. Not fetch:
 * its HTTP parser is WebAssembly that V8 compiles on first use and finishes compiling before the
 * process may exit, which cost every command ~0.15 s of CPU and its exit (a command makes a
 * handful of requests, so a kept-alive connection saves nothing).
 */
function exchange(url: URL, method: string, token: string, body: string | undefined, bytesMax: number): Promise<{ status: number; body: string }> {
  const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { authorization: `Bearer ${token}` };
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(Buffer.byteLength(body));
    }
    const request = send(url, { method, headers, agent: false, signal: AbortSignal.timeout(requestTimeoutMs) }, (response) => {
      const chunks: Buffer[] = [];
      let bytes = 0;
      response.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        if (bytes > bytesMax) {
          // Settled first, so an 'end' that still follows cannot resolve it with a part.
          reject(new ApiError(response.statusCode ?? 0, 'CELLAR_E_INTERNAL', `the API's answer to ${method} ${url.pathname} is over the limit of ${bytesMax} bytes`, undefined));
          request.destroy();
          return;
        }
        chunks.push(chunk);
      });
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end(body);
  });
}

function parseJson(text: string): unknown {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === 'object' && value !== null ? value : {};
  } catch {
    return {};
  }
}
