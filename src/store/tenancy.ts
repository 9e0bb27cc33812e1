import { createHash, randomBytes } from 'node:crypto';
import { type OrgId, newId } from '../lib/ids.js';
import { type Pool, inTransaction, prepared } from './pool.js';

/**
 * Orgs and bearer tokens. Only a token's sha256 is stored; the secret is shown once (at create or
 * rotate). A token may expire, be revoked, or be rotated (a new secret; the old one works on for
 * a grace period the caller chooses, 0 by default).
 */

export const defaultOrgName = 'default';
/** A list answers with at most this many tokens (oldest first). */
export const tokensPerListMax = 1_000;
/** last_used_at is this coarse, so that authenticating is not a write on every request. */
export const lastUsedResolutionSeconds = 60;

export interface TokenOwner {
  readonly tokenId: string;
  readonly orgId: OrgId;
  readonly orgName: string;
  readonly admin: boolean;
}

/** Who a bearer token is, or a sentence saying why it is refused. */
export type Authentication = { readonly owner: TokenOwner; readonly refused?: undefined } | { readonly owner?: undefined; readonly refused: string };

export type TokenStatus = 'active' | 'expired' | 'revoked';

export interface TokenRecord {
  readonly id: string;
  readonly name: string | null;
  readonly orgId: OrgId;
  readonly orgName: string;
  readonly admin: boolean;
  readonly createdAt: Date;
  readonly expiresAt: Date | null;
  readonly lastUsedAt: Date | null;
  readonly revokedAt: Date | null;
  readonly rotatedAt: Date | null;
  readonly status: TokenStatus;
}

export interface TokenSpec {
  readonly orgId: OrgId;
  readonly admin: boolean;
  readonly name: string | null;
  /** At most one of these two; neither means the token does not expire. */
  readonly expiresAt: Date | null;
  readonly expiresInSeconds: number | null;
}

function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

function newSecretToken(): string {
  return `cellar_${randomBytes(24).toString('base64url')}`;
}

interface TokenRow {
  id: string;
  name: string | null;
  org_id: string;
  org_name: string;
  admin: boolean;
  created_at: Date;
  expires_at: Date | null;
  last_used_at: Date | null;
  revoked_at: Date | null;
  rotated_at: Date | null;
  status: TokenStatus;
}

const tokenSelect = `
select t.id, t.name, t.org_id, o.name as org_name, t.admin, t.created_at, t.expires_at, t.last_used_at, t.revoked_at, t.rotated_at,
       case when t.revoked_at is not null then 'revoked' when t.expires_at <= now() then 'expired' else 'active' end as status
  from tokens t join orgs o on o.id = t.org_id`;

function tokenRecord(row: TokenRow): TokenRecord {
  return {
    id: row.id,
    name: row.name,
    orgId: row.org_id as OrgId,
    orgName: row.org_name,
    admin: row.admin,
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    lastUsedAt: row.last_used_at,
    revokedAt: row.revoked_at,
    rotatedAt: row.rotated_at,
    status: row.status,
  };
}

interface AuthenticationRow {
  id: string;
  org_id: string;
  org_name: string;
  admin: boolean;
  revoked_at: Date | null;
  expires_at: Date | null;
  rotated_at: Date | null;
  expired: boolean;
  current_secret: boolean;
  grace_over: boolean;
  last_use_stale: boolean;
}

const authenticateToken = prepared(
  'tokens_authenticate',
  `select t.id, t.org_id, o.name as org_name, t.admin, t.revoked_at, t.expires_at, t.rotated_at,
            coalesce(t.expires_at <= now(), false) as expired,
            t.secret_hash = $1 as current_secret,
            coalesce(t.previous_expires_at <= now(), true) as grace_over,
            (t.last_used_at is null or t.last_used_at < now() - make_interval(secs => $2)) as last_use_stale
       from tokens t join orgs o on o.id = t.org_id
      where t.secret_hash = $1 or t.previous_secret_hash = $1`,
);

export async function authenticate(db: Pool, token: string): Promise<Authentication> {
  const result = await db.query<AuthenticationRow>(authenticateToken([hashToken(token), lastUsedResolutionSeconds]));
  const row = result.rows[0];
  if (row === undefined) return { refused: 'this bearer token is not known to this Cellar' };
  if (row.revoked_at !== null) return { refused: `this token (${row.id}) was revoked at ${row.revoked_at.toISOString()}; ask for a new one (cellar tokens create)` };
  if (row.expired) return { refused: `this token (${row.id}) expired at ${row.expires_at?.toISOString() ?? '?'}; ask for a new one (cellar tokens create)` };
  if (!row.current_secret && row.grace_over) {
    return { refused: `this secret of token ${row.id} was replaced by a rotation at ${row.rotated_at?.toISOString() ?? '?'}; use the new secret` };
  }
  if (row.last_use_stale) await db.query('update tokens set last_used_at = now() where id = $1', [row.id]);
  return { owner: { tokenId: row.id, orgId: row.org_id as OrgId, orgName: row.org_name, admin: row.admin } };
}

/** The owner of a token that authenticates now; null when it is unknown, revoked or expired. */
export async function findTokenOwner(db: Pool, token: string): Promise<TokenOwner | null> {
  return (await authenticate(db, token)).owner ?? null;
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

/** Makes a token; the secret is returned here and never again. */
export async function issueToken(db: Pool, spec: TokenSpec): Promise<{ secret: string; record: TokenRecord }> {
  const secret = newSecretToken();
  const id = newId('token');
  await db.query(
    `insert into tokens (id, org_id, secret_hash, admin, name, expires_at)
     values ($1, $2, $3, $4, $5, case when $7::int is null then $6::timestamptz else now() + make_interval(secs => $7::int) end)`,
    [id, spec.orgId, hashToken(secret), spec.admin, spec.name, spec.expiresAt, spec.expiresInSeconds],
  );
  return { secret, record: (await findToken(db, id)) as TokenRecord };
}

export async function createToken(db: Pool, orgId: OrgId, admin: boolean): Promise<string> {
  return (await issueToken(db, { orgId, admin, name: null, expiresAt: null, expiresInSeconds: null })).secret;
}

export async function findToken(db: Pool, id: string): Promise<TokenRecord | null> {
  const row = (await db.query<TokenRow>(`${tokenSelect} where t.id = $1`, [id])).rows[0];
  return row === undefined ? null : tokenRecord(row);
}

/** Tokens of one org (or of every org), oldest first; admin tokens only when asked for. */
export async function listTokens(db: Pool, orgId: OrgId | null, includeAdmin: boolean): Promise<TokenRecord[]> {
  const result = await db.query<TokenRow>(
    `${tokenSelect} where ($1::text is null or t.org_id = $1) and ($2 or not t.admin) order by t.created_at, t.id limit $3`,
    [orgId, includeAdmin, tokensPerListMax],
  );
  return result.rows.map(tokenRecord);
}

/** Revokes a token (again: the first revocation time stays). */
export async function revokeToken(db: Pool, id: string): Promise<TokenRecord | null> {
  await db.query('update tokens set revoked_at = coalesce(revoked_at, now()) where id = $1', [id]);
  return findToken(db, id);
}

/**
 * Gives an active token a new secret; the old one authenticates for `graceSeconds` more (a second
 * rotation within the grace ends the first old secret at once). Null when the token is not active.
 */
export async function rotateToken(db: Pool, id: string, graceSeconds: number): Promise<{ secret: string; record: TokenRecord } | null> {
  const secret = newSecretToken();
  const result = await db.query(
    `update tokens
        set previous_secret_hash = secret_hash, previous_expires_at = now() + make_interval(secs => $3),
            secret_hash = $2, rotated_at = now()
      where id = $1 and revoked_at is null and (expires_at is null or expires_at > now())`,
    [id, hashToken(secret), graceSeconds],
  );
  if (result.rowCount !== 1) return null;
  return { secret, record: (await findToken(db, id)) as TokenRecord };
}

/** An admin token in the default org (made if missing): for the platform operator on this host. */
export async function issueAdminToken(db: Pool): Promise<string> {
  return inTransaction(db, async (client) => {
    await client.query('insert into orgs (id, name) values ($1, $2) on conflict (name) do nothing', [newId('org'), defaultOrgName]);
    const org = await client.query<{ id: string }>('select id from orgs where name = $1', [defaultOrgName]);
    const token = newSecretToken();
    await client.query("insert into tokens (id, org_id, secret_hash, admin, name) values ($1, $2, $3, true, 'cellar up')", [newId('token'), org.rows[0]?.id, hashToken(token)]);
    return token;
  });
}
