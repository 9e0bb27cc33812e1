import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { rm, writeFile } from 'node:fs/promises';
import { type IncomingMessage, type Server, createServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ApiClient, ApiError } from '../src/cli/client.js';
import { makeTempDir } from './helpers/cellar.js';
import { issueCertificate, makeTestCa } from './helpers/certs.js';

/**
 * The CLI's HTTP client against a stand-in API (a fake of the HTTP contract, named as such): what it
 * sends, how it reads answers and errors, and the bound on what it reads.
 */

interface Seen {
  method: string | undefined;
  url: string | undefined;
  authorization: string | undefined;
  connection: string | undefined;
  body: string;
}

let server: Server;
let api: string;
const seen: Seen[] = [];

function readBody(request: IncomingMessage): Promise<string> {
  return new Promise((resolve) => {
    let body = '';
    request.setEncoding('utf8');
    request.on('data', (chunk: string) => (body += chunk));
    request.on('end', () => resolve(body));
  });
}

before(async () => {
  server = createServer((request, response) => {
    void readBody(request).then((body) => {
      seen.push({ method: request.method, url: request.url, authorization: request.headers.authorization, connection: request.headers.connection, body });
      if (request.url === '/v1/huge') {
        response.writeHead(200, { 'content-type': 'application/json' });
        response.end(`[${'1,'.repeat(4096)}1]`);
      } else if (request.url === '/v1/refused') {
        response.writeHead(400, { 'content-type': 'application/json' });
        response.end(JSON.stringify({ error: { code: 'CELLAR_E_INVALID', message: 'name is too long', field: 'name' } }));
      } else if (request.url === '/v1/garbled') {
        response.writeHead(502, { 'content-type': 'text/html' });
        response.end('<html>bad gateway</html>');
      } else {
        response.writeHead(200, { 'content-type': 'application/json' });
        response.end(JSON.stringify({ echoed: body === '' ? null : JSON.parse(body) }));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  api = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  await new Promise((resolve) => server.close(resolve));
});

test('a request carries the token and its JSON body, on a connection that closes with the answer', async () => {
  const client = new ApiClient({ api, token: 'cellar_standin' });
  const answer = await client.request<{ echoed: unknown }>('POST', '/v1/clusters', { name: 'app', replicas: 1 });
  assert.deepEqual(answer, { echoed: { name: 'app', replicas: 1 } });
  const request = seen.at(-1);
  assert.deepEqual([request?.method, request?.url, request?.authorization, request?.connection], ['POST', '/v1/clusters', 'Bearer cellar_standin', 'close']);
});

test("an error answer is an ApiError with the API's code, message and field; one without the shape names the status", async () => {
  const client = new ApiClient({ api, token: 'cellar_standin' });
  await assert.rejects(client.request('GET', '/v1/refused'), (error: unknown) => {
    assert.ok(error instanceof ApiError);
    assert.deepEqual([error.status, error.code, error.message, error.field], [400, 'CELLAR_E_INVALID', 'name is too long', 'name']);
    return true;
  });
  await assert.rejects(client.request('GET', '/v1/garbled'), (error: unknown) => {
    assert.ok(error instanceof ApiError);
    assert.deepEqual([error.status, error.code, error.message], [502, 'CELLAR_E_INTERNAL', 'HTTP 502']);
    return true;
  });
});

test('an answer past the limit is refused, naming the limit, and the CLI reads no further', async () => {
  const client = new ApiClient({ api, token: 'cellar_standin' }, 1024);
  await assert.rejects(client.request('GET', '/v1/huge'), (error: unknown) => {
    assert.ok(error instanceof ApiError);
    assert.match(error.message, /the API's answer to GET \/v1\/huge is over the limit of 1024 bytes/);
    return true;
  });
  // The same answer under the default limit is read whole.
  const whole = await new ApiClient({ api, token: 'cellar_standin' }).request<number[]>('GET', '/v1/huge');
  assert.equal(whole.length, 4097);
});

test('an API that does not listen is CELLAR_E_UNREACHABLE, naming the address', async () => {
  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const port = (closed.address() as AddressInfo).port;
  await new Promise((resolve) => closed.close(resolve));
  const client = new ApiClient({ api: `http://127.0.0.1:${port}`, token: 'cellar_standin' });
  await assert.rejects(client.request('GET', '/v1/clusters'), (error: unknown) => {
    assert.ok(error instanceof ApiError);
    assert.equal(error.code, 'CELLAR_E_UNREACHABLE');
    assert.match(error.message, new RegExp(`cannot reach the Cellar API at http://127\\.0\\.0\\.1:${port} \\(connect ECONNREFUSED`));
    return true;
  });
});

test('the CLI reaches an API behind HTTPS, trusting the CA it is given, and refuses one it is not', async () => {
  const ca = await makeTestCa();
  const leaf = await issueCertificate(ca, 'cellar-api', ['127.0.0.1']);
  const dir = await makeTempDir('cellar-cli-https-');
  const secure = createHttpsServer({ key: leaf.key, cert: leaf.certificate }, (request, response) => {
    request.resume();
    response.writeHead(200, { 'content-type': 'application/json' });
    response.end(JSON.stringify({ clusters: [] }));
  });
  try {
    await writeFile(join(dir, 'ca.crt'), ca.certificate);
    await new Promise<void>((resolve) => secure.listen(0, '127.0.0.1', resolve));
    const url = `https://127.0.0.1:${(secure.address() as AddressInfo).port}`;
    const cellarBin = fileURLToPath(new URL('../bundle/bin/cellar.js', import.meta.url));
    const list = (extraCa: boolean) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
        const env = { PATH: process.env['PATH'] ?? '', CELLAR_HOME: join(dir, 'home'), CELLAR_API: url, CELLAR_TOKEN: 'cellar_standin', ...(extraCa ? { NODE_EXTRA_CA_CERTS: join(dir, 'ca.crt') } : {}) };
        execFile(process.execPath, [cellarBin, 'clusters', 'list', '--json'], { env, timeout: 60_000 }, (error, stdout, stderr) => {
          resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stdout, stderr });
        });
      });
    const trusted = await list(true);
    assert.equal(trusted.code, 0, trusted.stderr);
    assert.deepEqual(JSON.parse(trusted.stdout), [], 'the list, read over HTTPS');
    const untrusted = await list(false);
    assert.equal(untrusted.code, 1);
    assert.match(untrusted.stdout, /CELLAR_E_UNREACHABLE/);
    assert.match(untrusted.stdout, /certificate/);
  } finally {
    await new Promise((resolve) => secure.close(resolve));
    await rm(dir, { recursive: true, force: true });
  }
});
