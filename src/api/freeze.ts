import type { FastifyInstance, FastifyRequest } from 'fastify';
import { CellarError } from '../lib/errors.js';
import { findCluster } from '../store/clusters.js';
import type { ControlChangeRecord } from '../store/controls.js';
import { type FreezeState, freezeHistory, nudgeCluster, readFreeze, setFrozen } from '../store/freeze.js';
import type { Pool } from '../store/pool.js';
import type { TokenOwner } from '../store/tenancy.js';

/**
 * The freeze and the nudge (docs/CONTROLS.md "Freeze", "Nudge"). `GET|POST|DELETE /v1/freeze`
 * are the cell operator's (admin); `POST /v1/clusters/:name/nudge` is the cluster owner's, like
 * its other actions.
 */

export const freezeReasonLengthMax = 500;

const fieldMessages = {
  reason: `reason must be a string of 1 to ${freezeReasonLengthMax} characters: why the cell is frozen or thawed (it is audited)`,
} as const;

export interface FreezeView {
  frozen: boolean;
  since: string | null;
  actor: string | null;
  reason: string | null;
}

export interface FreezeChangeView {
  at: string;
  frozen: boolean;
  actor: string;
  reason: string;
}

export interface FreezeDetail extends FreezeView {
  /** Freezes and thaws, newest first (the audit, control_changes). */
  history: FreezeChangeView[];
}

export interface NudgeView {
  cluster: string;
  /** Unfinished machines of the cluster made due now (its own, its instances', its changes' and backups'). */
  machines: number;
}

export function freezeView(state: FreezeState): FreezeView {
  return { frozen: state.frozen, since: state.since?.toISOString() ?? null, actor: state.actor, reason: state.reason };
}

function changeView(change: ControlChangeRecord): FreezeChangeView {
  const after = change.newValue as { frozen?: unknown } | null;
  return { at: change.at.toISOString(), frozen: after?.frozen === true, actor: change.actor, reason: change.reason };
}

const freezeViewSchema = {
  frozen: { type: 'boolean' },
  since: { type: ['string', 'null'] },
  actor: { type: ['string', 'null'] },
  reason: { type: ['string', 'null'] },
} as const;

const freezeSchema = { type: 'object', properties: freezeViewSchema } as const;

const freezeDetailSchema = {
  type: 'object',
  properties: {
    ...freezeViewSchema,
    history: {
      type: 'array',
      items: { type: 'object', properties: { at: { type: 'string' }, frozen: { type: 'boolean' }, actor: { type: 'string' }, reason: { type: 'string' } } },
    },
  },
} as const;

const reasonBody = {
  type: 'object',
  additionalProperties: false,
  required: ['reason'],
  properties: { reason: { type: 'string', minLength: 1, maxLength: freezeReasonLengthMax, description: 'why (audited)' } },
} as const;

const errorRef = { $ref: 'cellarError#' } as const;
const nameParams = { type: 'object', properties: { name: { type: 'string', maxLength: 64 } } } as const;

export function registerFreezeRoutes(app: FastifyInstance, pool: Pool, ownerOf: (request: FastifyRequest) => TokenOwner): void {
  function requireAdmin(request: FastifyRequest): TokenOwner {
    const owner = ownerOf(request);
    if (!owner.admin) throw new CellarError('CELLAR_E_FORBIDDEN', "the freeze is the cell operator's: this needs an admin token");
    return owner;
  }

  app.get('/v1/freeze', { schema: { summary: 'Whether the cell is frozen, since when, by whom and why, with the recent freezes and thaws (admin)', response: { 200: freezeDetailSchema, 403: errorRef } } }, async (request) => {
    requireAdmin(request);
    const detail: FreezeDetail = { ...freezeView(await readFreeze(pool)), history: (await freezeHistory(pool)).map(changeView) };
    return detail;
  });

  for (const frozen of [true, false]) {
    app.route<{ Body: { reason: string } }>({
      method: frozen ? 'POST' : 'DELETE',
      url: '/v1/freeze',
      config: { fieldMessages },
      schema: {
        summary: frozen
          ? 'Freeze the cell: rollouts, new provisioning, configuration changes and scheduled backups wait (accepted and queued); failover, switchover and replica replacement go on (admin)'
          : 'Thaw the cell: what waited for the freeze goes on at once (admin)',
        body: reasonBody,
        response: { 200: freezeSchema, 400: errorRef, 403: errorRef, 409: errorRef },
      },
      handler: async (request) => {
        const owner = requireAdmin(request);
        return freezeView(await setFrozen(pool, frozen, `token:${owner.tokenId}`, request.body.reason));
      },
    });
  }

  app.post<{ Params: { name: string } }>(
    '/v1/clusters/:name/nudge',
    { schema: { summary: "Make the cluster's machines (and its instances') due now: the tick rate is a minimum, not a promise to wait", params: nameParams, response: { 202: { type: 'object', properties: { cluster: { type: 'string' }, machines: { type: 'integer' } } }, 404: errorRef } } },
    async (request, reply) => {
      const owner = ownerOf(request);
      const cluster = await findCluster(pool, owner.orgId, request.params.name);
      if (cluster === null) throw new CellarError('CELLAR_E_NOT_FOUND', `no cluster named "${request.params.name}"`, 'name');
      const view: NudgeView = { cluster: cluster.name, machines: await nudgeCluster(pool, cluster.id) };
      return reply.status(202).send(view);
    },
  );
}
