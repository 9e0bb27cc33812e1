import type { FastifyInstance, FastifyRequest } from 'fastify';
import { CellarError } from '../lib/errors.js';
import { type CatalogueEntry, checkSettings } from '../lib/settings.js';
import { instanceMemoryMb } from '../lib/sizes.js';
import { abortSignal, movingLabels, pauseSignal, ratePerMinuteDefault, ratePerMinuteMax, ratePerMinuteMin, resumeSignal, rolloutMachine } from '../machines/rollout.js';
import type { Pool } from '../store/pool.js';
import {
  type FleetDefault,
  type RolloutEvent,
  type RolloutSnapshot,
  changeDefaults,
  findRollout,
  listDefaults,
  listRollouts,
  liveClusterVersions,
  rolloutEvents,
  settingCatalogues,
  signalRollout,
} from '../store/rollouts.js';
import type { TokenOwner } from '../store/tenancy.js';

/**
 * Fleet defaults and rollouts (docs/CONFIG.md, "Fleet defaults and rollouts"), admin only: the
 * defaults every cluster gets beneath its own settings; changing them starts a rollout over the
 * live clusters, which can be listed, shown, paused, resumed and aborted.
 */

/** Parameters one request may change; the catalogue has about 350. */
export const defaultsPerChangeMax = 100;
export const reasonLengthMax = 500;
export const settingValueLengthMax = 1_024;
const rolloutIdLengthMax = 40;
const parameterName = '^[a-z_][a-z0-9_.]{0,62}$';

const fieldMessages = {
  settings: `settings must be an object of 1 to ${defaultsPerChangeMax} parameters, each name → a value (a string of at most ${settingValueLengthMax} characters) or null to remove it`,
  ratePerMinute: `ratePerMinute must be an integer from ${ratePerMinuteMin} to ${ratePerMinuteMax} (clusters started per minute)`,
  reason: `reason must be a string of at most ${reasonLengthMax} characters`,
} as const;

export interface FleetDefaultView {
  name: string;
  value: string;
  setBy: string;
  setAt: string;
}

export interface SettingDiff {
  name: string;
  from: string | null;
  to: string | null;
}

export interface RolloutView {
  id: string;
  /** The machine's label: next, propose, waitCluster (moving), paused, halted, completed, aborted; failed is a bug. */
  state: string;
  error: string | null;
  changes: SettingDiff[];
  defaultsBefore: Record<string, string>;
  defaultsAfter: Record<string, string>;
  ratePerMinute: number;
  reason: string | null;
  createdBy: string;
  createdAt: string;
  finishedAt: string | null;
  clusters: { changed: number; skipped: number; left: number };
  /** The cluster being moved now. */
  current: { clusterId: string; cluster: string | null; revision: number | null } | null;
  /** The last cluster finished (clusters are taken in id order). */
  cursor: { clusterId: string; cluster: string | null } | null;
  /** Where it last stopped by itself (kept after a resume). */
  halt: { clusterId: string; cluster: string; revision: number | null; reason: string; at: string } | null;
}

export interface RolloutEventView {
  at: string;
  from: string | null;
  to: string;
  reason: string;
  code: string | null;
}

export interface RolloutDetail extends RolloutView {
  events: RolloutEventView[];
}

export interface DefaultsView {
  defaults: FleetDefaultView[];
  /** The unfinished rollout (moving, paused or halted), if any. */
  rollout: RolloutView | null;
}

export interface DefaultsChangeView {
  changes: SettingDiff[];
  defaults: Record<string, string>;
  warnings: string[];
  /** Null when every live cluster runs these defaults already. */
  rollout: RolloutView | null;
}

function diff(before: Readonly<Record<string, string>>, after: Readonly<Record<string, string>>): SettingDiff[] {
  const names = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
  return names.filter((name) => before[name] !== after[name]).map((name) => ({ name, from: before[name] ?? null, to: after[name] ?? null }));
}

export function rolloutView(rollout: RolloutSnapshot): RolloutView {
  return {
    id: rollout.id,
    state: rollout.label,
    error: rollout.machineError,
    changes: diff(rollout.defaultsBefore, rollout.defaultsAfter),
    defaultsBefore: rollout.defaultsBefore,
    defaultsAfter: rollout.defaultsAfter,
    ratePerMinute: rollout.ratePerMinute,
    reason: rollout.reason,
    createdBy: rollout.createdBy,
    createdAt: rollout.createdAt.toISOString(),
    finishedAt: rollout.finishedAt?.toISOString() ?? null,
    clusters: { changed: rollout.clustersChanged, skipped: rollout.clustersSkipped, left: rollout.clustersLeft },
    current: rollout.current === null ? null : { clusterId: rollout.current.clusterId, cluster: rollout.current.clusterName, revision: rollout.current.revision },
    cursor: rollout.cursor === null ? null : { clusterId: rollout.cursor.clusterId, cluster: rollout.cursor.clusterName },
    halt: rollout.halt === null ? null : { clusterId: rollout.halt.clusterId, cluster: rollout.halt.clusterName, revision: rollout.halt.revision, reason: rollout.halt.reason, at: rollout.halt.at.toISOString() },
  };
}

function eventView(event: RolloutEvent): RolloutEventView {
  return { at: event.at.toISOString(), from: event.from, to: event.to, reason: event.reason, code: event.code };
}

function defaultView(entry: FleetDefault): FleetDefaultView {
  return { name: entry.name, value: entry.value, setBy: entry.setBy, setAt: entry.setAt.toISOString() };
}

const diffSchema = { type: 'object', properties: { name: { type: 'string' }, from: { type: ['string', 'null'] }, to: { type: ['string', 'null'] } } } as const;
const settingsMapSchema = { type: 'object', additionalProperties: { type: 'string' } } as const;
const clusterRefSchema = { type: ['object', 'null'], properties: { clusterId: { type: 'string' }, cluster: { type: ['string', 'null'] }, revision: { type: ['integer', 'null'] } } } as const;

const rolloutSchema = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    state: { type: 'string', description: 'next, propose, waitCluster (moving), paused, halted, completed or aborted' },
    error: { type: ['string', 'null'] },
    changes: { type: 'array', items: diffSchema },
    defaultsBefore: settingsMapSchema,
    defaultsAfter: settingsMapSchema,
    ratePerMinute: { type: 'integer' },
    reason: { type: ['string', 'null'] },
    createdBy: { type: 'string' },
    createdAt: { type: 'string' },
    finishedAt: { type: ['string', 'null'] },
    clusters: { type: 'object', properties: { changed: { type: 'integer' }, skipped: { type: 'integer' }, left: { type: 'integer' } } },
    current: clusterRefSchema,
    cursor: { type: ['object', 'null'], properties: { clusterId: { type: 'string' }, cluster: { type: ['string', 'null'] } } },
    halt: {
      type: ['object', 'null'],
      description: 'where it last stopped by itself',
      properties: { clusterId: { type: 'string' }, cluster: { type: 'string' }, revision: { type: ['integer', 'null'] }, reason: { type: 'string' }, at: { type: 'string' } },
    },
  },
} as const;

const rolloutDetailSchema = {
  type: 'object',
  properties: {
    ...rolloutSchema.properties,
    events: {
      type: 'array',
      items: { type: 'object', properties: { at: { type: 'string' }, from: { type: ['string', 'null'] }, to: { type: 'string' }, reason: { type: 'string' }, code: { type: ['string', 'null'] } } },
    },
  },
} as const;

const defaultsSchema = {
  type: 'object',
  properties: {
    defaults: { type: 'array', items: { type: 'object', properties: { name: { type: 'string' }, value: { type: 'string' }, setBy: { type: 'string' }, setAt: { type: 'string' } } } },
    rollout: { ...rolloutSchema, type: ['object', 'null'] },
  },
} as const;

const defaultsChangeSchema = {
  type: 'object',
  properties: {
    changes: { type: 'array', items: diffSchema },
    defaults: settingsMapSchema,
    warnings: { type: 'array', items: { type: 'string' } },
    rollout: { ...rolloutSchema, type: ['object', 'null'] },
  },
} as const;

const changeBody = {
  type: 'object',
  required: ['settings'],
  additionalProperties: false,
  properties: {
    settings: {
      type: 'object',
      minProperties: 1,
      maxProperties: defaultsPerChangeMax,
      propertyNames: { pattern: parameterName },
      additionalProperties: { anyOf: [{ type: 'string', maxLength: settingValueLengthMax }, { type: 'null' }] },
      description: 'parameter name → value, or null to remove that default',
    },
    ratePerMinute: { type: 'integer', minimum: ratePerMinuteMin, maximum: ratePerMinuteMax, default: ratePerMinuteDefault, description: 'clusters started per minute at most' },
    reason: { type: 'string', maxLength: reasonLengthMax },
  },
} as const;

const idParams = { type: 'object', properties: { id: { type: 'string', maxLength: rolloutIdLengthMax } } } as const;
const errorRef = { $ref: 'cellarError#' } as const;

/** The smallest instance any cluster may have: a fleet default must fit every size. */
const smallestMemoryMb = Math.min(...Object.values(instanceMemoryMb));

export function registerRolloutRoutes(app: FastifyInstance, pool: Pool, options: { readonly versions: readonly number[] }, ownerOf: (request: FastifyRequest) => TokenOwner): void {
  function requireAdmin(request: FastifyRequest): TokenOwner {
    const owner = ownerOf(request);
    if (!owner.admin) throw new CellarError('CELLAR_E_FORBIDDEN', "fleet defaults and rollouts are the cell operator's: this needs an admin token");
    return owner;
  }

  async function rolloutById(id: string): Promise<RolloutSnapshot> {
    const rollout = await findRollout(pool, id);
    if (rollout === null) throw new CellarError('CELLAR_E_NOT_FOUND', `no rollout ${id}`, 'id');
    return rollout;
  }

  async function unfinished(): Promise<RolloutView | null> {
    const open = (await listRollouts(pool)).find((rollout) => rollout.finishedAt === null);
    return open === undefined ? null : rolloutView(open);
  }

  /**
   * The catalogues a default is checked against: every live cluster's version must have one; with
   * no live cluster, the installed versions' that are stored, at least one.
   */
  async function catalogues(): Promise<ReadonlyMap<string, CatalogueEntry>[]> {
    const stored = await settingCatalogues(pool);
    const live = await liveClusterVersions(pool);
    const missing = live.filter((version) => !stored.has(version));
    if (missing.length > 0) {
      throw new CellarError('CELLAR_E_CATALOGUE_MISSING', `no parameter catalogue is stored yet for Postgres ${missing.join(', ')}: it is read when the first cluster of that version runs; try again then`, 'settings');
    }
    const versions = [...new Set([...live, ...options.versions.filter((version) => stored.has(version))])];
    if (versions.length === 0) {
      throw new CellarError('CELLAR_E_CATALOGUE_MISSING', `no parameter catalogue is stored yet (installed: Postgres ${options.versions.join(', ')}): it is read when the first cluster runs; try again then`, 'settings');
    }
    return versions.map((version) => stored.get(version) as ReadonlyMap<string, CatalogueEntry>);
  }

  app.get('/v1/defaults', { schema: { summary: "The fleet's default settings and the unfinished rollout, if any (admin)", response: { 200: defaultsSchema, 403: errorRef } } }, async (request) => {
    requireAdmin(request);
    const view: DefaultsView = { defaults: (await listDefaults(pool)).map(defaultView), rollout: await unfinished() };
    return view;
  });

  app.put<{ Body: { settings: Record<string, string | null>; ratePerMinute: number; reason?: string } }>(
    '/v1/defaults',
    {
      config: { fieldMessages },
      schema: {
        summary: 'Change fleet defaults (null removes one) and roll them out over the live clusters at the given rate; refused while another rollout is unfinished (admin)',
        body: changeBody,
        response: { 200: defaultsChangeSchema, 202: defaultsChangeSchema, 400: errorRef, 403: errorRef, 409: errorRef },
      },
    },
    async (request, reply) => {
      const owner = requireAdmin(request);
      const body = request.body;
      const checked = await catalogues();
      let warnings: string[] = [];
      const changed = await changeDefaults(
        pool,
        rolloutMachine,
        { settings: body.settings, ratePerMinute: body.ratePerMinute, reason: body.reason ?? null, actor: `token:${owner.tokenId}` },
        (values) => {
          const found = new Set<string>();
          for (const catalogue of checked) {
            for (const warning of checkSettings(catalogue, values, smallestMemoryMb).warnings) found.add(warning);
          }
          warnings = [...found];
        },
      );
      const rollout = changed.rolloutId === null ? null : await findRollout(pool, changed.rolloutId);
      const view: DefaultsChangeView = { changes: diff(changed.before, changed.after), defaults: changed.after, warnings, rollout: rollout === null ? null : rolloutView(rollout) };
      return reply.status(rollout === null ? 200 : 202).send(view);
    },
  );

  app.get('/v1/rollouts', { schema: { summary: 'Rollouts, newest first (admin)', response: { 200: { type: 'object', properties: { rollouts: { type: 'array', items: rolloutSchema } } }, 403: errorRef } } }, async (request) => {
    requireAdmin(request);
    return { rollouts: (await listRollouts(pool)).map(rolloutView) };
  });

  app.get<{ Params: { id: string } }>(
    '/v1/rollouts/:id',
    { schema: { summary: 'One rollout with its events: where it is, or where it halted and why (admin)', params: idParams, response: { 200: rolloutDetailSchema, 403: errorRef, 404: errorRef } } },
    async (request) => {
      requireAdmin(request);
      const rollout = await rolloutById(request.params.id);
      const detail: RolloutDetail = { ...rolloutView(rollout), events: (await rolloutEvents(pool, rollout.id)).map(eventView) };
      return detail;
    },
  );

  const actions = [
    { signal: pauseSignal, allowed: movingLabels, summary: 'Pause a moving rollout: the cluster in hand is finished, then it waits (admin)' },
    { signal: resumeSignal, allowed: ['paused', 'halted'], summary: 'Resume a paused or halted rollout; a halted one looks at the cluster it stopped at again (admin)' },
    { signal: abortSignal, allowed: [...movingLabels, 'paused', 'halted'], summary: "Abort a rollout: clusters not reached keep their defaults; a change under way finishes as the cluster's own (admin)" },
  ] as const;
  for (const action of actions) {
    app.post<{ Params: { id: string } }>(
      `/v1/rollouts/:id/${action.signal}`,
      { schema: { summary: action.summary, params: idParams, response: { 202: rolloutSchema, 403: errorRef, 404: errorRef, 409: errorRef } } },
      async (request, reply) => {
        requireAdmin(request);
        const id = request.params.id;
        await signalRollout(pool, id, action.signal, action.allowed);
        return reply.status(202).send(rolloutView(await rolloutById(id)));
      },
    );
  }
}

