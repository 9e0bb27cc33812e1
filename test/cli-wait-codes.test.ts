import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { makeTempDir } from './helpers/cellar.js';

/**
 * `--wait` on a role change ends on an event's code, whatever its wording. The API here is a
 * stand-in (a fake of the HTTP contract, named as such): the real API cannot be made to show an
 * event whose reason and code disagree, and that disagreement is what proves the CLI reads codes.
 */

const cellarBin = fileURLToPath(new URL('../bundle/bin/cellar.js', import.meta.url));
let server: Server;
let home: string;
let apiUrl: string;
type StandInEvent = { at: string; entity: string; from: string | null; to: string; reason: string; code: string | null };
/** What the cluster's machine records once the request arrives. */
let recordOnRequest: Omit<StandInEvent, 'at'>[] = [];
let events: StandInEvent[] = [];

function cluster() {
  const instances = [{ id: 'in_primaryaaaaa', role: 'primary', state: 'running' }, { id: 'in_replicaaaaaa', role: 'replica', state: 'running' }];
  return { id: 'cl_standinaaaaa', name: 'app', state: 'running', instances, events };
}

before(async () => {
  home = await makeTempDir('cellar-cli-wait-');
  server = createServer((request, response) => {
    request.resume();
    request.on('end', () => {
      if (request.method === 'POST') events = recordOnRequest.map((event) => ({ ...event, at: new Date().toISOString() }));
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(JSON.stringify(cluster()));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  apiUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(async () => {
  await new Promise((resolve) => server.close(resolve));
  await rm(home, { recursive: true, force: true });
});

function switchoverWait(): Promise<{ code: number; stderr: string }> {
  const env = { PATH: process.env['PATH'] ?? '', CELLAR_HOME: join(home, 'home'), CELLAR_API: apiUrl, CELLAR_TOKEN: 'stand-in' };
  return new Promise((resolve) => {
    execFile(process.execPath, [cellarBin, 'clusters', 'switchover', 'app', '--wait', '--timeout', '2'], { env, timeout: 60_000 }, (error, _stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stderr });
    });
  });
}

test('a refusal recorded after the request ends the wait with its reason, however it is worded', async () => {
  recordOnRequest = [{ entity: 'cl_standinaaaaa', from: 'running', to: 'running', reason: 'the target is not ready (new wording)', code: 'switchover_refused' }];
  const result = await switchoverWait();
  assert.equal(result.code, 1);
  assert.match(result.stderr, /the target is not ready \(new wording\)/);
});

test('English that once meant a refusal, without its code, does not end the wait', async () => {
  recordOnRequest = [{ entity: 'cl_standinaaaaa', from: 'running', to: 'running', reason: 'switchover refused: no replica is streaming', code: null }];
  const result = await switchoverWait();
  assert.equal(result.code, 1);
  assert.match(result.stderr, /gave up waiting after 2 s/);
});
