import { createHash, randomBytes } from 'node:crypto';
import { type OrgId, newId } from '../lib/ids.js';
import { type Pool, inTransaction } from './pool.js';

/** Orgs and bearer tokens. Only a token's sha256 is stored; the token is shown once. */

export const defaultOrgName = 'default';

export interface TokenOwner {
  readonly orgId: OrgId;
  readonly orgName: string;
  readonly admin: boolean;
}

function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

function newSecretToken(): string {
  return `cellar_${randomBytes(24).toString('base64url')}`;
}

export async function findTokenOwner(db: Pool, token: string): Promise<TokenOwner | null> {
  const result = await db.query<{ org_id: string; name: string; admin: boolean }>(
    'select t.org_id, o.name, t.admin from tokens t join orgs o on o.id = t.org_id where t.secret_hash = $1',
    [hashToken(token)],
  );
  const row = result.rows[0];
  return row === undefined ? null : { orgId: row.org_id as OrgId, orgName: row.name, admin: row.admin };
}

export async function createOrg(db: Pool, name: string): Promise<{ id: OrgId; name: string } | null> {
  const id = newId('org');
  const result = await db.query('insert into orgs (id, name) values ($1, $2) on conflict (name) do nothing', [id, name]);
  return result.rowCount === 1 ? { id, name } : null;
}

export async function listOrgs(db: Pool): Promise<{ id: string; name: string; created_at: Date }[]> {
  return (await db.query<{ id: string; name: string; created_at: Date }>('select id, name, created_at from orgs order by created_at')).rows;
}

export async function orgByName(db: Pool, name: string): Promise<OrgId | null> {
  const result = await db.query<{ id: string }>('select id from orgs where name = $1', [name]);
  return (result.rows[0]?.id as OrgId | undefined) ?? null;
}

export async function createToken(db: Pool, orgId: OrgId, admin: boolean): Promise<string> {
  const token = newSecretToken();
  await db.query('insert into tokens (id, org_id, secret_hash, admin) values ($1, $2, $3, $4)', [newId('token'), orgId, hashToken(token), admin]);
  return token;
}

/** An admin token in the default org (made if missing): for the platform operator on this host. */
export async function issueAdminToken(db: Pool): Promise<string> {
  return inTransaction(db, async (client) => {
    await client.query('insert into orgs (id, name) values ($1, $2) on conflict (name) do nothing', [newId('org'), defaultOrgName]);
    const org = await client.query<{ id: string }>('select id from orgs where name = $1', [defaultOrgName]);
    const token = newSecretToken();
    await client.query('insert into tokens (id, org_id, secret_hash, admin) values ($1, $2, $3, true)', [newId('token'), org.rows[0]?.id, hashToken(token)]);
    return token;
  });
}
