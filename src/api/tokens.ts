import type { FastifyInstance, FastifyRequest } from 'fastify';
import { CellarError, invalid } from '../lib/errors.js';
import type { OrgId } from '../lib/ids.js';
import type { Pool } from '../store/pool.js';
import { type TokenOwner, type TokenRecord, findToken, lastUsedResolutionSeconds, issueToken, listTokens, orgByName, revokeToken, rotateToken } from '../store/tenancy.js';

/**
 * Tokens: create, list, revoke, rotate. An org token manages its own org's org tokens; an admin
 * token manages every org's tokens, admin ones included. Secrets appear only in the answers to
 * create and rotate.
 */

export const tokenNameLengthMax = 64;
/** Ten years: a longer-lived credential should be a conscious exception, not a typo. */
export const tokenLifetimeSecondsMax = 3_650 * 86_400;
/** A rotated-out secret works for at most a day more. */
export const rotateGraceSecondsMax = 86_400;
const orgNameLengthMax = 40;

export interface TokenView {
  id: string;
  name: string | null;
  org: string;
  admin: boolean;
  /** active, expired or revoked */
  status: string;
  createdAt: string;
  expiresAt: string | null;
  lastUsedAt: string | null;
  revokedAt: string | null;
  rotatedAt: string | null;
  /** The token this request was made with. */
  current: boolean;
}

export interface TokenWithSecret extends TokenView {
  /** Shown once: only its hash is stored. */
  secret: string;
}

const fieldMessages = {
  org: 'org must be the name of an existing org',
  admin: 'admin must be true or false',
  name: `name must be 1-${tokenNameLengthMax} printable characters`,
  expiresInSeconds: `expiresInSeconds must be an integer from 1 to ${tokenLifetimeSecondsMax} (3650 days)`,
  expiresAt: `expiresAt must be an ISO 8601 time with a zone (e.g. 2030-01-31T12:00:00Z), in the future and within 3650 days`,
  graceSeconds: `graceSeconds must be an integer from 0 to ${rotateGraceSecondsMax}`,
  force: 'force must be true or false',
} as const;

const tokenViewSchema = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    name: { type: ['string', 'null'] },
    org: { type: 'string' },
    admin: { type: 'boolean' },
    status: { type: 'string', enum: ['active', 'expired', 'revoked'] },
    createdAt: { type: 'string' },
    expiresAt: { type: ['string', 'null'] },
    lastUsedAt: { type: ['string', 'null'], description: `when it last authenticated (to within ${lastUsedResolutionSeconds} s)` },
    revokedAt: { type: ['string', 'null'] },
    rotatedAt: { type: ['string', 'null'] },
    current: { type: 'boolean', description: 'the token this request was made with' },
  },
} as const;

const tokenWithSecretSchema = {
  type: 'object',
  properties: { ...tokenViewSchema.properties, secret: { type: 'string', description: 'the bearer token; shown once' } },
} as const;

const createBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    org: { type: 'string', minLength: 1, maxLength: orgNameLengthMax, description: "default: the requesting token's org" },
    admin: { type: 'boolean', default: false, description: 'an admin token (needs an admin token)' },
    name: { type: 'string', minLength: 1, maxLength: tokenNameLengthMax, pattern: '^[^\\u0000-\\u001f\\u007f]+$' },
    expiresInSeconds: { type: 'integer', minimum: 1, maximum: tokenLifetimeSecondsMax },
    expiresAt: { type: 'string', minLength: 1, maxLength: 64, description: 'ISO 8601 with a zone' },
  },
} as const;

const rotateBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    graceSeconds: { type: 'integer', minimum: 0, maximum: rotateGraceSecondsMax, default: 0, description: 'how long the old secret keeps working' },
    force: { type: 'boolean', default: false, description: 'rotate even the token this request is made with' },
  },
} as const;

const forceQuery = {
  type: 'object',
  additionalProperties: false,
  properties: { force: { type: 'string', enum: ['true', 'false'], description: 'revoke even the token this request is made with' } },
} as const;

const idParams = { type: 'object', properties: { id: { type: 'string', maxLength: 64 } } } as const;

const errorRef = { $ref: 'cellarError#' } as const;

function tokenView(record: TokenRecord, owner: TokenOwner): TokenView {
  return {
    id: record.id,
    name: record.name,
    org: record.orgName,
    admin: record.admin,
    status: record.status,
    createdAt: record.createdAt.toISOString(),
    expiresAt: record.expiresAt?.toISOString() ?? null,
    lastUsedAt: record.lastUsedAt?.toISOString() ?? null,
    revokedAt: record.revokedAt?.toISOString() ?? null,
    rotatedAt: record.rotatedAt?.toISOString() ?? null,
    current: record.id === owner.tokenId,
  };
}

/** ISO 8601 with a date, a time and a zone; a time without a zone would depend on the server's. */
const isoWithZone = /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)$/i;

function parseExpiresAt(text: string, nowMs: number): Date {
  const ms = Date.parse(text.replace(' ', 'T'));
  if (!isoWithZone.test(text) || Number.isNaN(ms)) throw invalid('expiresAt', fieldMessages.expiresAt);
  if (ms <= nowMs) throw invalid('expiresAt', `expiresAt ${text} is not in the future; ${fieldMessages.expiresAt}`);
  if (ms > nowMs + tokenLifetimeSecondsMax * 1000) throw invalid('expiresAt', `expiresAt ${text} is more than 3650 days away; ${fieldMessages.expiresAt}`);
  return new Date(ms);
}

export function registerTokenRoutes(app: FastifyInstance, pool: Pool, ownerOf: (request: FastifyRequest) => TokenOwner): void {
  /** A token the owner may see and change: its own org's org tokens, or any token for an admin. */
  async function manageableToken(owner: TokenOwner, id: string): Promise<TokenRecord> {
    const record = await findToken(pool, id);
    if (record === null || (!owner.admin && (record.orgId !== owner.orgId || record.admin))) {
      throw new CellarError('CELLAR_E_NOT_FOUND', `no token with id "${id}" that this token may manage`, 'id');
    }
    return record;
  }

  async function targetOrg(owner: TokenOwner, name: string | undefined): Promise<OrgId> {
    if (name === undefined || name === owner.orgName) return owner.orgId;
    if (!owner.admin) throw new CellarError('CELLAR_E_FORBIDDEN', `an org token manages only its own org's tokens (org "${owner.orgName}")`, 'org');
    const orgId = await orgByName(pool, name);
    if (orgId === null) throw new CellarError('CELLAR_E_NOT_FOUND', `no org named "${name}"`, 'org');
    return orgId;
  }

  app.get<{ Querystring: { org?: string } }>(
    '/v1/tokens',
    {
      config: { fieldMessages },
      schema: {
        summary: "List tokens: the org's (an admin token: every org's, or one org's with ?org=)",
        querystring: { type: 'object', additionalProperties: false, properties: { org: { type: 'string', maxLength: orgNameLengthMax } } },
        response: { 200: { type: 'object', properties: { tokens: { type: 'array', items: tokenViewSchema } } }, 403: errorRef, 404: errorRef },
      },
    },
    async (request) => {
      const owner = ownerOf(request);
      const orgId = owner.admin && request.query.org === undefined ? null : await targetOrg(owner, request.query.org);
      return { tokens: (await listTokens(pool, orgId, owner.admin)).map((record) => tokenView(record, owner)) };
    },
  );

  app.post<{ Body: { org?: string; admin: boolean; name?: string; expiresInSeconds?: number; expiresAt?: string } }>(
    '/v1/tokens',
    {
      config: { fieldMessages },
      schema: {
        summary: 'Create a token (the secret is in this answer only)',
        body: createBody,
        response: { 201: tokenWithSecretSchema, 400: errorRef, 403: errorRef, 404: errorRef },
      },
    },
    async (request, reply) => {
      const owner = ownerOf(request);
      const body = request.body ?? { admin: false };
      if (body.admin && !owner.admin) throw new CellarError('CELLAR_E_FORBIDDEN', 'only an admin token can create admin tokens', 'admin');
      if (body.expiresAt !== undefined && body.expiresInSeconds !== undefined) throw invalid('expiresAt', 'give expiresInSeconds or expiresAt, not both');
      const expiresAt = body.expiresAt === undefined ? null : parseExpiresAt(body.expiresAt, Date.now());
      const orgId = await targetOrg(owner, body.org);
      const { secret, record } = await issueToken(pool, { orgId, admin: body.admin, name: body.name ?? null, expiresAt, expiresInSeconds: body.expiresInSeconds ?? null });
      const created: TokenWithSecret = { ...tokenView(record, owner), secret };
      return reply.status(201).send(created);
    },
  );

  app.delete<{ Params: { id: string }; Querystring: { force?: 'true' | 'false' } }>(
    '/v1/tokens/:id',
    {
      config: { fieldMessages },
      schema: {
        summary: 'Revoke a token: refused from its next request on (the token making this request only with ?force=true)',
        params: idParams,
        querystring: forceQuery,
        response: { 200: tokenViewSchema, 404: errorRef, 409: errorRef },
      },
    },
    async (request) => {
      const owner = ownerOf(request);
      const record = await manageableToken(owner, request.params.id);
      if (record.id === owner.tokenId && request.query.force !== 'true') {
        throw new CellarError('CELLAR_E_CONFLICT', `token ${record.id} is the one making this request: revoking it locks this client out; pass force=true (cellar tokens revoke --force) to revoke it anyway`, 'id');
      }
      const revoked = await revokeToken(pool, record.id);
      return tokenView(revoked ?? record, owner);
    },
  );

  app.post<{ Params: { id: string }; Body: { graceSeconds: number; force: boolean } }>(
    '/v1/tokens/:id/rotate',
    {
      config: { fieldMessages },
      schema: {
        summary: 'Give a token a new secret; the old one is refused after graceSeconds (default 0)',
        params: idParams,
        body: rotateBody,
        response: { 200: tokenWithSecretSchema, 400: errorRef, 404: errorRef, 409: errorRef },
      },
    },
    async (request) => {
      const owner = ownerOf(request);
      const body = request.body ?? { graceSeconds: 0, force: false };
      const record = await manageableToken(owner, request.params.id);
      if (record.status !== 'active') throw new CellarError('CELLAR_E_CONFLICT', `token ${record.id} is ${record.status}; create a new one instead`, 'id');
      if (record.id === owner.tokenId && body.graceSeconds === 0 && !body.force) {
        throw new CellarError(
          'CELLAR_E_CONFLICT',
          `token ${record.id} is the one making this request: without a grace its secret stops working at once; pass graceSeconds or force=true (cellar tokens rotate --force)`,
          'id',
        );
      }
      const rotated = await rotateToken(pool, record.id, body.graceSeconds);
      if (rotated === null) throw new CellarError('CELLAR_E_CONFLICT', `token ${record.id} was revoked or expired meanwhile; create a new one instead`, 'id');
      const answer: TokenWithSecret = { ...tokenView(rotated.record, owner), secret: rotated.secret };
      return answer;
    },
  );
}
