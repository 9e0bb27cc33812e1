import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { Agent } from 'node:http';
import { rm, rmdir, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { ClusterView } from '../src/api/view.js';
import { ClusterUsers, resolveRunAs } from '../src/postgres/osuser.js';
import { fallbackDataRoot, resolveDataDir } from '../src/postgres/paths.js';
import { exchange } from './helpers/http.js';
import { type RunResult, TestCellar, cellarBin, eventually, makeTempDir, processesUsing, queryUri } from './helpers/cellar.js';

/** Bad requests and bad start-up paths get a 4xx (or a sentence) in the one error shape, never a 5xx or errno text. */

interface ErrorBody {
  error: { code: string; message: string; field?: string };
}

/** One HTTP/1.1 exchange over a raw socket, for requests fetch refuses to send (huge headers, garbage). */
function rawExchange(port: number, request: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (text += chunk));
    // The server closes after answering; what it sent before the close is the answer.
    socket.on('error', () => undefined);
    socket.on('close', () => {
      const match = /^HTTP\/1\.1 (\d{3})[^\r]*\r\n[\s\S]*?\r\n\r\n([\s\S]*)$/.exec(text);
      if (match === null) reject(new Error(`no HTTP answer: ${JSON.stringify(text.slice(0, 200))}`));
      else resolve({ status: Number(match[1]), body: match[2] as string });
    });
    socket.setTimeout(10_000, () => socket.destroy());
    socket.write(request);
  });
}

async function send(url: string, init: RequestInit): Promise<{ status: number; text: string }> {
  const response = await fetch(url, init);
  return { status: response.status, text: await response.text() };
}

function assertErrorShape(text: string, what: string): ErrorBody {
  const body = JSON.parse(text) as ErrorBody;
  assert.equal(typeof body.error?.code, 'string', `${what}: ${text}`);
  assert.match(body.error.code, /^CELLAR_E_[A-Z_]+$/, what);
  assert.equal(typeof body.error.message, 'string', what);
  return body;
}

describe('bad input', () => {
  let cellar: TestCellar;
  let admin: string;
  let orgToken: string;

  before(async () => {
    cellar = await TestCellar.create();
    await cellar.start();
    admin = await cellar.token();
    const org = await cellar.api<{ token: string }>('POST', '/v1/orgs', { name: 'acme' });
    orgToken = org.body.token;
  });

  after(async () => {
    await cellar.destroy();
  });

  test('%00 and control characters in path parameters and body strings are a 400 naming the field', async () => {
    const cases: [string, string, unknown, string][] = [
      ['GET', '/v1/clusters/%00', undefined, 'name'],
      ['GET', '/v1/clusters/a%01b', undefined, 'name'],
      ['DELETE', '/v1/clusters/app%7F', undefined, 'name'],
      ['GET', '/v1/backups/bk_%00', undefined, 'id'],
      ['DELETE', '/v1/tokens/tok_%0A', undefined, 'id'],
      ['POST', '/v1/clusters', { name: 'a\u0000b' }, 'name'],
      ['POST', '/v1/tokens', { name: 'line\nbreak' }, 'name'],
      ['POST', '/v1/clusters/app/switchover', { to: 'in_\u0000' }, 'to'],
    ];
    for (const [method, path, body, field] of cases) {
      const response = await cellar.api<ErrorBody>(method, path, body, admin);
      assert.equal(response.status, 400, `${method} ${path}`);
      assert.equal(response.body.error.code, 'CELLAR_E_INVALID');
      assert.equal(response.body.error.field, field, `${method} ${path}`);
      assert.match(response.body.error.message, /must not contain control characters/);
    }
    const long = await cellar.api<ErrorBody>('GET', `/v1/clusters/${'x'.repeat(300)}`, undefined, admin);
    assert.equal(long.status, 400);
    assert.equal(long.body.error.field, 'name');
    assert.match(long.body.error.message, /longer than the limit of 200 characters/);
  });

  test('unknown routes, bad URLs, and bodies, URLs and headers past their limits answer in the error shape, stating the limit', async () => {
    const headers = { authorization: `Bearer ${admin}` };
    const notFound = await send(`${cellar.apiUrl}/v1/nothing-here`, { headers });
    assert.equal(notFound.status, 404);
    assert.equal(assertErrorShape(notFound.text, '404').error.code, 'CELLAR_E_NOT_FOUND');
    const wrongMethod = await send(`${cellar.apiUrl}/v1/clusters`, { method: 'PUT', headers });
    assert.equal(wrongMethod.status, 404);
    assertErrorShape(wrongMethod.text, 'PUT');
    const badUrl = await send(`${cellar.apiUrl}/v1/clusters/%E0%A4%A`, { headers });
    assert.equal(badUrl.status, 400);
    assert.equal(assertErrorShape(badUrl.text, 'bad URL').error.field, 'url');
    const bigBody = await send(`${cellar.apiUrl}/v1/clusters`, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'x'.repeat(70_000) }),
    });
    assert.equal(bigBody.status, 413);
    const tooLarge = assertErrorShape(bigBody.text, '413');
    assert.equal(tooLarge.error.code, 'CELLAR_E_TOO_LARGE');
    assert.match(tooLarge.error.message, /limit of 65536 bytes/);
    const longUrl = await send(`${cellar.apiUrl}/v1/clusters/${'x'.repeat(5_000)}`, { headers });
    assert.equal(longUrl.status, 414);
    assert.match(assertErrorShape(longUrl.text, '414').error.message, /limit of 4096 bytes/);
    const port = Number(cellar.env['CELLAR_API_PORT']);
    const bigHeaders = await rawExchange(port, `GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Padding: ${'a'.repeat(20_000)}\r\n\r\n`);
    assert.equal(bigHeaders.status, 431);
    const headersError = assertErrorShape(bigHeaders.body, '431');
    assert.equal(headersError.error.code, 'CELLAR_E_HEADERS_TOO_LARGE');
    assert.match(headersError.error.message, /limit of 16384 bytes/);
    const garbage = await rawExchange(port, 'NOT HTTP AT ALL\r\n\r\n');
    assert.equal(garbage.status, 400);
    assertErrorShape(garbage.body, 'garbage');
    const badJson = await send(`${cellar.apiUrl}/v1/clusters`, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body: '{"name":' });
    assert.equal(badJson.status, 400);
    assertErrorShape(badJson.text, 'bad JSON');
  });

  test('backupIntervalHours is null (not 0) when unset, and an org token sees only its own org in /v1/status', async () => {
    const created = await cellar.api<ClusterView>('POST', '/v1/clusters', { name: 'counted', replicas: 0 }, admin);
    assert.equal(created.status, 201);
    assert.equal(created.body.backupIntervalHours, null);
    const set = await cellar.api<ClusterView>('POST', '/v1/clusters', { name: 'scheduled', replicas: 0, backupIntervalHours: 6 }, admin);
    assert.equal(set.body.backupIntervalHours, 6);
    const openapi = (await (await fetch(`${cellar.apiUrl}/openapi.json`)).json()) as { components?: unknown; paths: Record<string, Record<string, { responses?: Record<string, { content?: Record<string, { schema?: { properties?: Record<string, { type?: unknown }> } }> }> }>> };
    const schemaType = openapi.paths['/v1/clusters/{name}']?.['get']?.responses?.['200']?.content?.['application/json']?.schema?.properties?.['backupIntervalHours']?.type;
    const property = openapi.paths['/v1/clusters/{name}']?.['get']?.responses?.['200']?.content?.['application/json']?.schema?.properties?.['backupIntervalHours'] as { type?: unknown; nullable?: boolean } | undefined;
    assert.ok(JSON.stringify(schemaType).includes('null') || property?.nullable === true, `the schema allows null: ${JSON.stringify(property)}`);
    const cellStatus = await cellar.api<{ scope: string; cell: { clusters: number }; warmPool?: unknown }>('GET', '/v1/status', undefined, admin);
    assert.equal(cellStatus.body.scope, 'cell');
    assert.equal(cellStatus.body.cell.clusters, 2);
    const orgStatus = await cellar.api<{ scope: string; org: string; cell: { clusters: number; instances: number }; warmPool?: unknown; engine?: unknown }>('GET', '/v1/status', undefined, orgToken);
    assert.deepEqual([orgStatus.body.scope, orgStatus.body.org, orgStatus.body.cell.clusters, orgStatus.body.cell.instances], ['org', 'acme', 0, 0]);
    assert.equal(orgStatus.body.warmPool, undefined, 'no cell-wide warm pool counts for an org token');
    assert.equal(orgStatus.body.engine, undefined, 'no cell-wide engine counts for an org token');
    for (const name of ['counted', 'scheduled']) await cellar.cliJson(['clusters', 'delete', name, '--wait']);
  });

  test('a bad-input run of every endpoint in /openapi.json answers no 5xx', async (t) => {
    /** A request that does not answer within this fails the run rather than hang it. */
    const requestWaitMs = 30_000;
    const openapi = (await (await fetch(`${cellar.apiUrl}/openapi.json`)).json()) as { paths: Record<string, Record<string, unknown>> };
    const badSegments = ['%00', 'a%01b', '%7F', 'x'.repeat(300), 'x'.repeat(5_000), '%', '%zz', '%FF%FE', '..', '%2e%2e%2f', 'Bad_Name', '-', '%F0%9F%92%A9', "'; drop table orgs; --", '%20', '0', 'null', 'tok_', 'cl_xxxxxxxxxxxx'];
    const badBodies: (string | undefined)[] = [
      undefined,
      '',
      '{',
      'null',
      '[]',
      '"text"',
      '12',
      '{}',
      '{"name":12}',
      '{"name":null}',
      '{"name":"a\\u0000"}',
      '{"name":["x"]}',
      '{"to":{"deep":true}}',
      '{"force":"yes"}',
      '{"replicas":"one","name":"x!"}',
      '{"time":"yesterday","lsn":"FFFFFFFF/FFFFFFFF"}',
      '{"expiresInSeconds":-1}',
      '{"expiresAt":"not a time"}',
      '{"graceSeconds":1e309}',
      '{"__proto__":{"admin":true}}',
      `{"name":"${'x'.repeat(80_000)}"}`,
      `${'['.repeat(5_000)}${']'.repeat(5_000)}`,
    ];
    const tokens = [admin, orgToken, 'cellar_not_a_real_token', undefined];
    let requests = 0;
    const failures: string[] = [];
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    t.after(() => agent.destroy());
    for (const [template, methods] of Object.entries(openapi.paths)) {
      // A path that names nothing but is well formed reaches the body's validation (parameters are
      // checked first): it takes every bad body. Each bad segment takes the first few, with every token.
      const paths = template.includes('{') ? [template.replace(/\{[^}]+\}/g, 'nosuch'), ...badSegments.map((segment) => template.replace(/\{[^}]+\}/g, segment))] : [template, `${template}?org=%00&force=maybe`];
      for (const method of Object.keys(methods)) {
        for (const [index, path] of paths.entries()) {
          const bodies = method === 'get' || method === 'delete' ? [undefined] : index === 0 || !template.includes('{') ? badBodies : badBodies.slice(0, 3);
          // Every bad body with the admin token; every kind of token with the first bodies.
          const combinations = [...bodies.map((body) => [body, admin] as const), ...tokens.slice(1).flatMap((token) => bodies.slice(0, 3).map((body) => [body, token] as const))];
          for (const [body, token] of combinations) {
            const headers = { ...(token === undefined ? {} : { authorization: `Bearer ${token}` }), ...(body === undefined ? {} : { 'content-type': 'application/json' }) };
            // One kept-alive connection for the whole run: fetch cost the test several times the CPU.
            const { status, text } = await exchange(`${cellar.apiUrl}${path}`, { method: method.toUpperCase(), headers, ...(body === undefined ? {} : { body }), agent, waitMs: requestWaitMs });
            requests += 1;
            if (status >= 500) failures.push(`${method.toUpperCase()} ${path.slice(0, 80)} ${body?.slice(0, 60) ?? ''} -> ${status} ${text.slice(0, 200)}`);
            else if (status >= 400) assertErrorShape(text, `${method} ${path.slice(0, 80)}`);
          }
        }
      }
    }
    console.log(`bad-input run of every endpoint: ${requests} requests, ${failures.length} 5xx`);
    assert.deepEqual(failures, []);
    assert.ok(requests > 500, 'the run covered the API');
  });

  describe('start-up paths', () => {
    let root: string;
    before(async () => {
      root = await makeTempDir('cellar-paths-');
    });
    after(async () => {
      await rm(root, { recursive: true, force: true });
    });

    function up(env: Record<string, string>): Promise<RunResult> {
      return new Promise((resolve) => {
        execFile(process.execPath, [cellarBin, 'up'], { env: { ...cellar.env, CELLAR_DATA: '', CELLAR_STORE_URL: '', ...env }, timeout: 60_000 }, (error, stdout, stderr) => {
          resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stdout, stderr });
        });
      });
    }

    async function assertRefusedBeforeStart(result: RunResult, pattern: RegExp, path: string): Promise<void> {
      assert.equal(result.code, 1, result.stderr);
      assert.match(result.stderr, pattern);
      assert.doesNotMatch(result.stderr, /\b(EACCES|EPERM|ENOENT|ENOTDIR|EROFS|EEXIST|ENAMETOOLONG|ELOOP|ENOSPC|errno)\b|\n\s+at /, 'a sentence, not errno text or a stack');
      assert.deepEqual(await processesUsing(path), [], `nothing runs from ${path}`);
    }

    test('a CELLAR_HOME with a space works: the data and backup paths derived from it are safe, and a cluster archives its WAL', async () => {
      const home = join(root, 'my home');
      const spaced = await TestCellar.create({ CELLAR_HOME: home, CELLAR_DATA: '' });
      const dataDir = resolveDataDir({ home, dataDir: null }, await resolveRunAs());
      // The fallback root is made by this test when the host has none: it goes too.
      const fallbackRootExisted = existsSync(fallbackDataRoot);
      try {
        assert.doesNotMatch(dataDir, /\s/, `the data dir derived from the home is safe: ${dataDir}`);
        await spaced.start();
        const created = await spaced.cliJson<ClusterView>(['clusters', 'create', 'spaced', '--replicas', '0', '--wait']);
        assert.equal(created.state, 'running');
        await queryUri(created.uri as string, 'create table t as select generate_series(1, 1000) as id');
        const archived = await eventually('a WAL file archived', async () => {
          const shown = await spaced.cluster('spaced');
          return shown.archive?.lastArchivedWal ?? undefined;
        }, 30_000);
        assert.match(archived, /^[0-9A-F]{24}$/);
      } finally {
        await spaced.destroy();
        await new ClusterUsers(dataDir).removeAllOwn();
        await rm(dataDir, { recursive: true, force: true });
        if (!fallbackRootExisted) await rmdir(fallbackDataRoot).catch(() => undefined);
      }
    });

    test('an explicit CELLAR_BACKUP_DIR with a space is refused before anything starts, naming the setting', async () => {
      const home = join(root, 'h0');
      const result = await up({ CELLAR_HOME: home, CELLAR_BACKUP_DIR: join(root, 'my backups') });
      await assertRefusedBeforeStart(result, /CELLAR_BACKUP_DIR: the backup directory .*my backups contains a space/, home);
      assert.equal(existsSync(join(home, 'data', 'store')), false, 'no store was made');
    });

    test('an unusable home, data directory or backup directory is a sentence naming the setting', async () => {
      const file = join(root, 'a-file');
      await writeFile(file, 'not a directory');
      await assertRefusedBeforeStart(await up({ CELLAR_HOME: join(file, 'home') }), /CELLAR_HOME: the home directory .* cannot be used: .* is a file, not a directory/, file);
      await assertRefusedBeforeStart(
        await up({ CELLAR_HOME: join(root, 'h1'), CELLAR_DATA: '/proc/cellar-data' }),
        /CELLAR_DATA: the data directory \/proc\/cellar-data cannot be used: \/proc does not accept new directories/,
        '/proc/cellar-data',
      );
      await assertRefusedBeforeStart(
        await up({ CELLAR_HOME: join(root, 'h2'), CELLAR_DATA: join(root, 'd'.repeat(90)) }),
        /CELLAR_DATA: the data directory .* is too long: .* past the limit of 99/,
        join(root, 'h2'),
      );
      await assertRefusedBeforeStart(await up({ CELLAR_HOME: join(root, 'h3'), CELLAR_BACKUP_DIR: join(root, '100%') }), /CELLAR_BACKUP_DIR: the backup directory .*100% contains/, join(root, 'h3'));
      await eventually('no Cellar process left from these starts', async () => ((await processesUsing(root)).length === 0 ? true : undefined), 5_000);
    });
  });
});
