import type { FastifyInstance, FastifyRequest } from 'fastify';
import { CellarError } from '../lib/errors.js';
import { type Rod, type RodName, type RodValueMap, rodCatalogue } from '../lib/rod-catalogue.js';
import { controlChanges } from '../store/controls.js';
import type { Pool } from '../store/pool.js';
import { type StoredRod, globalScope, loadRods, localCell, rodOrNotFound, scopeFor, setRod } from '../store/rods.js';
import type { TokenOwner } from '../store/tenancy.js';

/**
 * Control rods (docs/CONTROLS.md "Rods"), admin only: list them with their values, show one with
 * its recent changes, set one within its bounds with a reason. Every process that reads a rod
 * takes a new value within one tick of the lane that reads it.
 */

export const rodReasonLengthMax = 500;
/** Changes `GET /v1/rods/{name}` shows, newest first. */
export const rodChangesShownMax = 20;
const rodNameLengthMax = 100;

const fieldMessages = {
  value: 'value must be a whole number within the rod\'s bounds (`cellar rods show NAME` gives them)',
  reason: `reason is required: a string of 1 to ${rodReasonLengthMax} characters saying why`,
  cell: 'cell must be a cell name (lower-case letters, digits and hyphens, at most 63)',
} as const;

export interface RodView {
  name: string;
  unit: string;
  min: number;
  max: number;
  /** This process's default: the environment variable's value, else the catalogue's. */
  default: number;
  envVar: string | null;
  description: string;
  /** What processes of this cell run with now. */
  value: number;
  /** Where the value comes from: 'default', 'global' or 'cell:NAME'. */
  source: string;
  updatedAt: string | null;
  updatedBy: string | null;
  /** Values stored per scope (global and cells); the cell's wins in that cell. */
  stored: { scope: string; value: number; updatedAt: string; updatedBy: string }[];
}

export interface RodChangeView {
  at: string;
  scope: string;
  actor: string;
  oldValue: number | null;
  newValue: number | null;
  reason: string;
}

export interface RodDetail extends RodView {
  changes: RodChangeView[];
}

export interface RodSetView extends RodDetail {
  /** The value stored at that scope before, null when there was none (the default applied). */
  before: number | null;
}

const errorRef = { $ref: 'cellarError#' } as const;
const nameParams = { type: 'object', properties: { name: { type: 'string', maxLength: rodNameLengthMax } } } as const;

const storedSchema = {
  type: 'object',
  properties: { scope: { type: 'string' }, value: { type: 'integer' }, updatedAt: { type: 'string' }, updatedBy: { type: 'string' } },
} as const;
const rodProperties = {
  name: { type: 'string' },
  unit: { type: 'string' },
  min: { type: 'integer' },
  max: { type: 'integer' },
  default: { type: 'integer' },
  envVar: { type: 'string', nullable: true },
  description: { type: 'string' },
  value: { type: 'integer' },
  source: { type: 'string' },
  updatedAt: { type: 'string', nullable: true },
  updatedBy: { type: 'string', nullable: true },
  stored: { type: 'array', items: storedSchema },
} as const;
const rodSchema = { type: 'object', properties: rodProperties } as const;
const changeSchema = {
  type: 'object',
  properties: {
    at: { type: 'string' },
    scope: { type: 'string' },
    actor: { type: 'string' },
    oldValue: { type: 'integer', nullable: true },
    newValue: { type: 'integer', nullable: true },
    reason: { type: 'string' },
  },
} as const;
const rodDetailSchema = { type: 'object', properties: { ...rodProperties, changes: { type: 'array', items: changeSchema } } } as const;
const rodSetSchema = { type: 'object', properties: { ...rodProperties, changes: { type: 'array', items: changeSchema }, before: { type: 'integer', nullable: true } } } as const;

const setBody = {
  type: 'object',
  required: ['value', 'reason'],
  additionalProperties: false,
  properties: {
    value: { type: 'integer', description: 'the new value, within the rod\'s [min, max]' },
    reason: { type: 'string', minLength: 1, maxLength: rodReasonLengthMax, description: 'why: kept in the audit and the event' },
    cell: { type: 'string', maxLength: 63, description: 'set it for one cell only (wins over the global value there); absent: global' },
  },
} as const;

function numberOrNull(value: unknown): number | null {
  return typeof value === 'number' ? value : null;
}

function rodView(rod: Rod, defaults: RodValueMap, stored: readonly StoredRod[]): RodView {
  const mine = stored.filter((row) => row.name === rod.name);
  const cell = mine.find((row) => row.scope === `cell:${localCell}`);
  const global = mine.find((row) => row.scope === globalScope);
  const deciding = cell ?? global;
  return {
    name: rod.name,
    unit: rod.unit,
    min: rod.min,
    max: rod.max,
    default: defaults[rod.name as RodName],
    envVar: rod.envVar,
    description: rod.description,
    value: deciding?.value ?? defaults[rod.name as RodName],
    source: deciding?.scope ?? 'default',
    updatedAt: deciding?.updatedAt.toISOString() ?? null,
    updatedBy: deciding?.updatedBy ?? null,
    stored: mine.map((row) => ({ scope: row.scope, value: row.value, updatedAt: row.updatedAt.toISOString(), updatedBy: row.updatedBy })),
  };
}

export function registerRodRoutes(app: FastifyInstance, pool: Pool, defaults: RodValueMap, ownerOf: (request: FastifyRequest) => TokenOwner): void {
  function requireAdmin(request: FastifyRequest): TokenOwner {
    const owner = ownerOf(request);
    if (!owner.admin) throw new CellarError('CELLAR_E_FORBIDDEN', "control rods are the cell operator's: this needs an admin token");
    return owner;
  }

  async function detail(rod: Rod): Promise<RodDetail> {
    const changes = await controlChanges(pool, { kind: 'rod', name: rod.name }, rodChangesShownMax);
    return {
      ...rodView(rod, defaults, await loadRods(pool)),
      changes: changes.map((change) => ({
        at: change.at.toISOString(),
        scope: change.scope,
        actor: change.actor,
        oldValue: numberOrNull(change.oldValue),
        newValue: numberOrNull(change.newValue),
        reason: change.reason,
      })),
    };
  }

  app.get('/v1/rods', { schema: { summary: 'Every control rod with its value now, bounds, unit and default (admin)', response: { 200: { type: 'object', properties: { rods: { type: 'array', items: rodSchema } } }, 403: errorRef } } }, async (request) => {
    requireAdmin(request);
    const stored = await loadRods(pool);
    return { rods: rodCatalogue.map((rod) => rodView(rod, defaults, stored)) };
  });

  app.get<{ Params: { name: string } }>(
    '/v1/rods/:name',
    { schema: { summary: 'One control rod with its recent changes (who, when, old, new, why) (admin)', params: nameParams, response: { 200: rodDetailSchema, 403: errorRef, 404: errorRef } } },
    async (request) => {
      requireAdmin(request);
      return detail(rodOrNotFound(request.params.name));
    },
  );

  app.put<{ Params: { name: string }; Body: { value: number; reason: string; cell?: string } }>(
    '/v1/rods/:name',
    {
      config: { fieldMessages },
      // Before the body is checked: a token that may not set rods learns nothing about the body.
      preValidation: async (request) => {
        requireAdmin(request);
      },
      schema: {
        summary: 'Set a control rod within its bounds, with a reason; audited, an event, and taken by every process that reads it within one tick (admin)',
        params: nameParams,
        body: setBody,
        response: { 200: rodSetSchema, 400: errorRef, 403: errorRef, 404: errorRef },
      },
    },
    async (request) => {
      const owner = requireAdmin(request);
      const rod = rodOrNotFound(request.params.name);
      const { value, reason, cell } = request.body;
      if (reason.trim() === '') throw new CellarError('CELLAR_E_INVALID', fieldMessages.reason, 'reason');
      const { before } = await setRod(pool, { name: rod.name, value, scope: scopeFor(cell ?? null), actor: `token:${owner.tokenId}`, reason });
      const view: RodSetView = { ...(await detail(rod)), before };
      return view;
    },
  );
}
