import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { TokenView, TokenWithSecret } from '../src/api/tokens.js';
import { TestCellar, eventually } from './helpers/cellar.js';

/** Tokens through the real CLI and API: create, list, scope, revoke, rotate, expiry. */

interface ErrorBody {
  error: { code: string; message: string; field?: string };
}

describe('tokens', () => {
  let cellar: TestCellar;
  let acme: string;

  before(async () => {
    cellar = await TestCellar.create();
    await cellar.start();
    const org = await cellar.api<{ token: string }>('POST', '/v1/orgs', { name: 'acme' });
    assert.equal(org.status, 201);
    acme = org.body.token;
  });

  after(async () => {
    await cellar.destroy();
  });

  async function status(token: string): Promise<{ status: number; body: ErrorBody }> {
    return cellar.api<ErrorBody>('GET', '/v1/clusters', undefined, token);
  }

  test('create shows the secret once; list shows id, name, org, admin, times and status but no secret; only a hash is stored', async () => {
    const created = await cellar.cliJson<TokenWithSecret>(['tokens', 'create', '--org', 'acme', '--name', 'ci deploy', '--expires-in', '1h']);
    assert.match(created.secret, /^cellar_/);
    assert.deepEqual([created.org, created.name, created.admin, created.status], ['acme', 'ci deploy', false, 'active']);
    const expiresInMs = Date.parse(created.expiresAt as string) - Date.parse(created.createdAt);
    assert.equal(expiresInMs, 3_600_000, 'expires an hour after creation');
    assert.equal((await status(created.secret)).status, 200, 'the new token works');
    const listed = await cellar.cliJson<TokenView[]>(['tokens', 'list', '--org', 'acme']);
    const row = listed.find((token) => token.id === created.id);
    assert.ok(row, 'listed');
    assert.equal('secret' in row, false);
    assert.ok(row.lastUsedAt !== null, 'last use recorded');
    const human = await cellar.cli(['tokens', 'list']);
    assert.match(human.stdout, /^ID\s+NAME\s+ORG\s+ADMIN\s+STATUS\s+CREATED\s+EXPIRES\s+LAST USED/m);
    assert.match(human.stdout, /ci deploy\s+acme\s+no\s+active/);
    assert.doesNotMatch(human.stdout, /cellar_/);
    const stored = await cellar.storeQuery<{ secret_hash: string }>('select secret_hash from tokens where id = $1', [created.id]);
    assert.match(stored[0]?.secret_hash ?? '', /^[0-9a-f]{64}$/);
    const leaked = await cellar.storeQuery<{ count: number }>("select count(*)::int as count from tokens t where strpos(row_to_json(t)::text, $1) > 0", [created.secret]);
    assert.equal(leaked[0]?.count, 0, 'the secret is nowhere in the tokens table');
  });

  test('an org token manages only its own org tokens and cannot mint admin tokens; the old org token route still works', async () => {
    const own = await cellar.api<TokenWithSecret>('POST', '/v1/tokens', { name: 'own' }, acme);
    assert.equal(own.status, 201);
    assert.equal(own.body.org, 'acme');
    const adminAttempt = await cellar.api<ErrorBody>('POST', '/v1/tokens', { admin: true }, acme);
    assert.deepEqual([adminAttempt.status, adminAttempt.body.error.field], [403, 'admin']);
    const otherOrg = await cellar.api<ErrorBody>('POST', '/v1/tokens', { org: 'default' }, acme);
    assert.deepEqual([otherOrg.status, otherOrg.body.error.field], [403, 'org']);
    const list = await cellar.api<{ tokens: TokenView[] }>('GET', '/v1/tokens', undefined, acme);
    assert.ok(list.body.tokens.length >= 2);
    assert.ok(list.body.tokens.every((token) => token.org === 'acme' && !token.admin), 'only acme org tokens');
    const adminTokens = await cellar.api<{ tokens: TokenView[] }>('GET', '/v1/tokens?org=default', undefined);
    const adminId = adminTokens.body.tokens.find((token) => token.admin)?.id as string;
    const revokeAdmin = await cellar.api<ErrorBody>('DELETE', `/v1/tokens/${adminId}`, undefined, acme);
    assert.equal(revokeAdmin.status, 404, 'another org’s (admin) token is not found for an org token');
    const legacy = await cellar.api<{ token: string }>('POST', '/v1/orgs/acme/tokens', {});
    assert.equal(legacy.status, 201);
    assert.equal((await status(legacy.body.token)).status, 200);
  });

  test('a revoked token is refused on its next request with a 401 saying so; the token in use is revoked only with --force', async () => {
    const victim = await cellar.cliJson<TokenWithSecret>(['tokens', 'create', '--org', 'acme', '--name', 'to revoke']);
    assert.equal((await status(victim.secret)).status, 200);
    const revoked = await cellar.cliJson<TokenView>(['tokens', 'revoke', victim.id]);
    assert.equal(revoked.status, 'revoked');
    const refused = await status(victim.secret);
    assert.equal(refused.status, 401);
    assert.equal(refused.body.error.code, 'CELLAR_E_UNAUTHENTICATED');
    assert.match(refused.body.error.message, new RegExp(`token \\(${victim.id}\\) was revoked at`));
    const selfId = (await cellar.cliJson<TokenView[]>(['tokens', 'list'])).find((token) => token.current)?.id as string;
    const refusedSelf = await cellar.cli(['tokens', 'revoke', selfId]);
    assert.equal(refusedSelf.code, 1);
    assert.match(refusedSelf.stderr, /is the one making this request.*--force.*\[CELLAR_E_CONFLICT\]/);
    assert.equal((await cellar.api('GET', '/v1/status')).status, 200, 'the CLI token still works');
  });

  test('rotate: the new secret works; the old one is refused at once, or after the grace', async () => {
    const token = await cellar.api<TokenWithSecret>('POST', '/v1/tokens', { org: 'acme', name: 'rotating' });
    const rotated = await cellar.cliJson<TokenWithSecret>(['tokens', 'rotate', token.body.id]);
    assert.equal(rotated.id, token.body.id, 'same token, new secret');
    assert.notEqual(rotated.secret, token.body.secret);
    assert.ok(rotated.rotatedAt !== null);
    assert.equal((await status(rotated.secret)).status, 200);
    const old = await status(token.body.secret);
    assert.equal(old.status, 401);
    assert.match(old.body.error.message, /replaced by a rotation/);
    const graced = await cellar.cliJson<TokenWithSecret>(['tokens', 'rotate', token.body.id, '--grace', '10m']);
    assert.equal((await status(rotated.secret)).status, 200, 'the previous secret works during the grace');
    assert.equal((await status(graced.secret)).status, 200);
    const tooLongGrace = await cellar.api<ErrorBody>('POST', `/v1/tokens/${(await cellar.cliJson<TokenWithSecret>(['tokens', 'create', '--org', 'acme'])).id}/rotate`, { graceSeconds: 90_000 });
    assert.deepEqual([tooLongGrace.status, tooLongGrace.body.error.field], [400, 'graceSeconds']);
  });

  test('a token expiring in 2 s is refused once expired, with a 401 saying so', async () => {
    const expiring = await cellar.cliJson<TokenWithSecret>(['tokens', 'create', '--org', 'acme', '--expires-in', '2s']);
    assert.equal(expiring.status, 'active');
    const refused = await eventually('the token to expire', async () => {
      const response = await status(expiring.secret);
      return response.status === 401 ? response : undefined;
    }, 30_000, 100);
    assert.match(refused.body.error.message, new RegExp(`token \\(${expiring.id}\\) expired at`));
    const listed = await cellar.cliJson<TokenView[]>(['tokens', 'list', '--org', 'acme']);
    assert.equal(listed.find((token) => token.id === expiring.id)?.status, 'expired');
    const rotate = await cellar.api<ErrorBody>('POST', `/v1/tokens/${expiring.id}/rotate`, {});
    assert.deepEqual([rotate.status, rotate.body.error.code], [409, 'CELLAR_E_CONFLICT']);
    const past = await cellar.cli(['tokens', 'create', '--expires-at', '2020-01-01T00:00:00Z']);
    assert.match(past.stderr, /expiresAt .* is not in the future.*\[CELLAR_E_INVALID\]/);
    const both = await cellar.api<ErrorBody>('POST', '/v1/tokens', { expiresInSeconds: 60, expiresAt: '2099-01-01T00:00:00Z' });
    assert.deepEqual([both.status, both.body.error.field], [400, 'expiresAt']);
  });

  test('rotating the CLI’s own token with --force rewrites the credentials file; revoking it with --force locks out until `cellar up` issues a new one', async () => {
    const previousSecret = await cellar.token();
    const selfId = (await cellar.cliJson<TokenView[]>(['tokens', 'list'])).find((token) => token.current)?.id as string;
    const rotated = await cellar.cliJson<TokenWithSecret>(['tokens', 'rotate', selfId, '--force']);
    const stored = JSON.parse(await readFile(join(cellar.home, 'credentials'), 'utf8')) as { token: string };
    assert.equal(stored.token, rotated.secret);
    assert.notEqual(stored.token, previousSecret);
    assert.equal((await cellar.cli(['status'])).code, 0, 'the CLI still works');
    const revoked = await cellar.cliJson<TokenView>(['tokens', 'revoke', selfId, '--force']);
    assert.equal(revoked.status, 'revoked');
    const lockedOut = await cellar.cli(['status']);
    assert.equal(lockedOut.code, 1);
    assert.match(lockedOut.stderr, /was revoked at .*\[CELLAR_E_UNAUTHENTICATED\]/);
    await cellar.stop();
    await cellar.start();
    const afterRestart = await cellar.cli(['status']);
    assert.equal(afterRestart.code, 0, `cellar up wrote a fresh admin token: ${afterRestart.stderr}`);
  });
});
