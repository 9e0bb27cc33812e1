import { type Agent, request } from 'node:http';

/**
 * One HTTP exchange with node:http: what the tests' polls and the bad-input run send by the
 * thousand, where fetch cost several times the CPU. Without an agent each request has its own
 * connection (closed after the answer, so a restarted Cellar never meets a stale socket); with
 * one, its kept-alive sockets. A live stream (text/event-stream) never ends: its answer is its
 * status, and the connection is dropped.
 */
export function exchange(
  url: string,
  options: { readonly method: string; readonly headers?: Record<string, string>; readonly body?: string; readonly agent?: Agent; readonly waitMs: number },
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    // A body goes with its length, as fetch sends it (not chunked).
    const headers = { ...options.headers, ...(options.body === undefined ? {} : { 'content-length': String(Buffer.byteLength(options.body)) }) };
    const sent = request(url, { method: options.method, headers, agent: options.agent ?? false, signal: AbortSignal.timeout(options.waitMs) }, (response) => {
      const status = response.statusCode ?? 0;
      if (status === 200 && (response.headers['content-type'] ?? '').startsWith('text/event-stream')) {
        response.destroy();
        resolve({ status, text: '' });
        return;
      }
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (text += chunk));
      response.on('end', () => resolve({ status, text }));
      response.on('error', reject);
    });
    sent.on('error', reject);
    sent.end(options.body);
  });
}
