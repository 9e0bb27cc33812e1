import type { FastifyInstance, FastifyRequest } from 'fastify';
import { CellarError, invalid } from '../lib/errors.js';
import { type FlagDeclaration, type FlagValue, flagKeyLengthMax } from '../lib/flag-catalogue.js';
import { type Cohort, type FlagContext, type FlagRule, type RuleLevel, evaluateFlag, localCellName, percentMax, percentMin, ruleLevels, staleFlags } from '../lib/flags.js';
import type { ControlChangeRecord } from '../store/controls.js';
import type { FlagSnapshotReader } from '../store/flag-snapshot.js';
import {
  addCohortMember,
  cohortDescriptionLengthMax,
  cohortNameLengthMax,
  createCohort,
  deleteCohort,
  flagChanges,
  flagOrThrow,
  loadCohorts,
  loadFlagSnapshot,
  reasonLengthMax,
  removeCohortMember,
  resolveTarget,
  setFlagRule,
  unsetFlagRule,
} from '../store/flags.js';
import type { Pool } from '../store/pool.js';
import type { TokenOwner } from '../store/tenancy.js';

/**
 * Feature flags and cohorts (docs/CONTROLS.md, "Flags"), admin only: the catalogue with each flag's
 * rules, setting and unsetting a rule, which rule decides for an org or cluster and why, the stale
 * flags, and cohorts with their members. Every change is audited (`control_changes`).
 */

/** Changes shown with one flag or cohort, newest first. */
export const auditShownMax = 50;
const targetLengthMax = 64;

const fieldMessages = {
  level: `level must be one of ${ruleLevels.join(', ')}`,
  target: `target must be a string of at most ${targetLengthMax} characters: a cell's name, an org's id or name, or a cluster's id`,
  value: 'value must be a JSON boolean (a boolean flag) or one of the flag\'s variants (a string flag)',
  percent: `percent must be a number from ${percentMin} to ${percentMax} with at most two decimals`,
  reason: `reason must be a non-empty string of at most ${reasonLengthMax} characters`,
  name: `name must be a DNS label of 1-${cohortNameLengthMax} characters`,
  description: `description must be at most ${cohortDescriptionLengthMax} characters`,
  values: 'values must be an object: flag key → value',
  kind: 'kind must be org or cluster',
  member: `member must be an org's id or name, or a cluster's id, of at most ${targetLengthMax} characters`,
} as const;

export interface FlagRuleView {
  level: RuleLevel;
  target: string;
  value: FlagValue;
  percent: number | null;
  reason: string;
  setBy: string;
  setAt: string;
}

export interface FlagView {
  key: string;
  type: 'boolean' | 'string';
  variants: string[] | null;
  default: FlagValue;
  owner: string;
  kind: string;
  expires: string;
  description: string;
  environmentVariable: string | null;
  rules: FlagRuleView[];
  /** Cohorts that set this flag, with the value they set. */
  cohorts: { name: string; value: FlagValue; members: number }[];
}

export interface ControlChangeView {
  at: string;
  scope: string;
  oldValue: unknown;
  newValue: unknown;
  actor: string;
  reason: string;
}

export interface FlagDetail extends FlagView {
  changes: ControlChangeView[];
}

export interface FlagRuleChangeView {
  key: string;
  before: FlagRuleView | null;
  after: FlagRuleView | null;
}

export interface FlagExplainView {
  key: string;
  context: { cell: string; org: string | null; cluster: string | null };
  value: FlagValue;
  /** cluster, org, cohort, cell, global or default. */
  decidedBy: { level: string; target?: string; percent?: number | null; cohort?: string };
  why: string;
}

export interface StaleFlagView {
  key: string;
  reasons: string[];
}

export interface CohortView {
  name: string;
  description: string;
  values: Record<string, FlagValue>;
  members: { kind: 'org' | 'cluster'; id: string }[];
}

export interface CohortDetail extends CohortView {
  changes: ControlChangeView[];
}

function ruleView(rule: FlagRule): FlagRuleView {
  return { level: rule.level, target: rule.target, value: rule.value, percent: rule.percent, reason: rule.reason, setBy: rule.setBy, setAt: rule.setAt };
}

function changeView(change: ControlChangeRecord): ControlChangeView {
  return { at: change.at.toISOString(), scope: change.scope, oldValue: change.oldValue, newValue: change.newValue, actor: change.actor, reason: change.reason };
}

function cohortView(cohort: Cohort): CohortView {
  return { name: cohort.name, description: cohort.description, values: { ...cohort.values }, members: cohort.members.map((member) => ({ ...member })) };
}

function flagView(flag: FlagDeclaration, rules: readonly FlagRule[], cohorts: readonly Cohort[]): FlagView {
  return {
    key: flag.key,
    type: flag.type,
    variants: flag.type === 'string' ? [...flag.variants] : null,
    default: flag.default,
    owner: flag.owner,
    kind: flag.kind,
    expires: flag.expires,
    description: flag.description,
    environmentVariable: flag.environmentVariable ?? null,
    rules: rules.filter((rule) => rule.flagKey === flag.key).map(ruleView),
    cohorts: cohorts.filter((cohort) => cohort.values[flag.key] !== undefined).map((cohort) => ({ name: cohort.name, value: cohort.values[flag.key] as FlagValue, members: cohort.members.length })),
  };
}

const valueSchema = { anyOf: [{ type: 'boolean' }, { type: 'string', maxLength: 64 }] } as const;
const anySchema = {} as const;
const ruleSchema = {
  type: 'object',
  properties: { level: { type: 'string' }, target: { type: 'string' }, value: valueSchema, percent: { type: ['number', 'null'] }, reason: { type: 'string' }, setBy: { type: 'string' }, setAt: { type: 'string' } },
} as const;
const changeSchema = {
  type: 'object',
  properties: { at: { type: 'string' }, scope: { type: 'string' }, oldValue: anySchema, newValue: anySchema, actor: { type: 'string' }, reason: { type: 'string' } },
} as const;
const flagSchema = {
  type: 'object',
  properties: {
    key: { type: 'string' },
    type: { type: 'string', enum: ['boolean', 'string'] },
    variants: { type: ['array', 'null'], items: { type: 'string' } },
    default: valueSchema,
    owner: { type: 'string' },
    kind: { type: 'string', enum: ['release', 'operational', 'experiment'] },
    expires: { type: 'string' },
    description: { type: 'string' },
    environmentVariable: { type: ['string', 'null'] },
    rules: { type: 'array', items: ruleSchema },
    cohorts: { type: 'array', items: { type: 'object', properties: { name: { type: 'string' }, value: valueSchema, members: { type: 'integer' } } } },
  },
} as const;
const flagDetailSchema = { type: 'object', properties: { ...flagSchema.properties, changes: { type: 'array', items: changeSchema } } } as const;
const cohortSchema = {
  type: 'object',
  properties: {
    name: { type: 'string' },
    description: { type: 'string' },
    values: { type: 'object', additionalProperties: valueSchema },
    members: { type: 'array', items: { type: 'object', properties: { kind: { type: 'string' }, id: { type: 'string' } } } },
  },
} as const;
const cohortDetailSchema = { type: 'object', properties: { ...cohortSchema.properties, changes: { type: 'array', items: changeSchema } } } as const;

const keyParams = { type: 'object', properties: { key: { type: 'string', maxLength: flagKeyLengthMax } } } as const;
const nameParams = { type: 'object', properties: { name: { type: 'string', maxLength: cohortNameLengthMax } } } as const;
const reasonProperty = { type: 'string', maxLength: reasonLengthMax } as const;
const levelProperty = { type: 'string', enum: ruleLevels } as const;
const targetProperty = { type: 'string', maxLength: targetLengthMax } as const;
const errorRef = { $ref: 'cellarError#' } as const;

export interface FlagsApiOptions {
  /** This process's live flags: its catalogue carries the process's defaults. */
  readonly reader: FlagSnapshotReader;
}

export function registerFlagRoutes(app: FastifyInstance, pool: Pool, options: FlagsApiOptions, ownerOf: (request: FastifyRequest) => TokenOwner): void {
  function requireAdmin(request: FastifyRequest): TokenOwner {
    const owner = ownerOf(request);
    if (!owner.admin) throw new CellarError('CELLAR_E_FORBIDDEN', "flags and cohorts are the cell operator's: this needs an admin token");
    return owner;
  }
  const actorOf = (owner: TokenOwner): string => `token:${owner.tokenId}`;
  const catalogue = (): FlagDeclaration[] => options.reader.catalogueEntries();
  const declaration = (key: string): FlagDeclaration => options.reader.declaration(flagOrThrow(key).key) as FlagDeclaration;

  app.get('/v1/flags', { schema: { summary: 'Every flag in the catalogue with its rules and the cohorts that set it (admin)', response: { 200: { type: 'object', properties: { flags: { type: 'array', items: flagSchema } } }, 403: errorRef } } }, async (request) => {
    requireAdmin(request);
    // Read now, not from the snapshot: an operator looks right after a change.
    const snapshot = await loadFlagSnapshot(pool);
    return { flags: catalogue().map((flag) => flagView(flag, snapshot.rules, snapshot.cohorts)) };
  });

  app.get<{ Params: { key: string } }>(
    '/v1/flags/:key',
    { schema: { summary: 'One flag: its declaration, rules, cohorts and recent changes (admin)', params: keyParams, response: { 200: flagDetailSchema, 403: errorRef, 404: errorRef } } },
    async (request) => {
      requireAdmin(request);
      const flag = declaration(request.params.key);
      const snapshot = await loadFlagSnapshot(pool);
      const detail: FlagDetail = { ...flagView(flag, snapshot.rules, snapshot.cohorts), changes: (await flagChanges(pool, 'flag', flag.key, auditShownMax)).map(changeView) };
      return detail;
    },
  );

  app.put<{ Params: { key: string }; Body: { level: RuleLevel; target?: string; value: FlagValue; percent?: number | null; reason: string } }>(
    '/v1/flags/:key',
    {
      config: { fieldMessages },
      schema: {
        summary: "Set the flag's rule at one level (global, cell, org, cluster), optionally for a percentage of ids; replaces the rule there (admin)",
        params: keyParams,
        body: {
          type: 'object',
          required: ['level', 'value', 'reason'],
          additionalProperties: false,
          properties: { level: levelProperty, target: targetProperty, value: valueSchema, percent: { type: ['number', 'null'], minimum: percentMin, maximum: percentMax }, reason: reasonProperty },
        },
        response: { 200: { type: 'object', properties: { key: { type: 'string' }, before: { ...ruleSchema, type: ['object', 'null'] }, after: ruleSchema } }, 400: errorRef, 403: errorRef, 404: errorRef },
      },
    },
    async (request) => {
      const owner = requireAdmin(request);
      const body = request.body;
      const changed = await setFlagRule(pool, { key: request.params.key, level: body.level, ...(body.target === undefined ? {} : { target: body.target }), value: body.value, percent: body.percent ?? null, reason: body.reason, actor: actorOf(owner) });
      await options.reader.refresh();
      const view: FlagRuleChangeView = { key: request.params.key, before: changed.before === null ? null : ruleView(changed.before), after: ruleView(changed.after) };
      return view;
    },
  );

  app.delete<{ Params: { key: string }; Body: { level: RuleLevel; target?: string; reason: string } }>(
    '/v1/flags/:key/rules',
    {
      config: { fieldMessages },
      schema: {
        summary: "Remove the flag's rule at one level and target; the next level decides (admin)",
        params: keyParams,
        body: { type: 'object', required: ['level', 'reason'], additionalProperties: false, properties: { level: levelProperty, target: targetProperty, reason: reasonProperty } },
        response: { 200: { type: 'object', properties: { key: { type: 'string' }, before: ruleSchema, after: { type: 'null' } } }, 400: errorRef, 403: errorRef, 404: errorRef },
      },
    },
    async (request) => {
      const owner = requireAdmin(request);
      const body = request.body;
      const removed = await unsetFlagRule(pool, { key: request.params.key, level: body.level, ...(body.target === undefined ? {} : { target: body.target }), reason: body.reason, actor: actorOf(owner) });
      await options.reader.refresh();
      const view: FlagRuleChangeView = { key: request.params.key, before: ruleView(removed), after: null };
      return view;
    },
  );

  app.get<{ Params: { key: string }; Querystring: { org?: string; cluster?: string; cell?: string } }>(
    '/v1/flags/:key/explain',
    {
      config: { fieldMessages: { org: 'org must be an org id or name', cluster: "cluster must be a cluster's id", cell: "cell must be a cell's name" } },
      schema: {
        summary: "The flag's value for an org and/or cluster, which rule decided and why (admin)",
        params: keyParams,
        querystring: { type: 'object', additionalProperties: false, properties: { org: targetProperty, cluster: targetProperty, cell: targetProperty } },
        response: { 200: { type: 'object', properties: { key: { type: 'string' }, context: { type: 'object', properties: { cell: { type: 'string' }, org: { type: ['string', 'null'] }, cluster: { type: ['string', 'null'] } } }, value: valueSchema, decidedBy: { type: 'object', additionalProperties: true }, why: { type: 'string' } } }, 400: errorRef, 403: errorRef, 404: errorRef },
      },
    },
    async (request) => {
      requireAdmin(request);
      const flag = declaration(request.params.key);
      const query = request.query;
      const cell = query.cell ?? localCellName;
      await resolveTarget(pool, 'cell', cell).catch(renameField('cell'));
      let org = query.org === undefined ? undefined : await resolveTarget(pool, 'org', query.org).catch(renameField('org'));
      let cluster: string | undefined;
      if (query.cluster !== undefined) {
        cluster = await resolveTarget(pool, 'cluster', query.cluster).catch(renameField('cluster'));
        const owning = await pool.query<{ org_id: string }>('select org_id from clusters where id = $1', [cluster]);
        const clusterOrg = owning.rows[0]?.org_id;
        if (org !== undefined && clusterOrg !== org) throw invalid('cluster', `cluster ${cluster} is not in org ${query.org}`);
        org = clusterOrg;
      }
      const context: FlagContext = { cell, ...(org === undefined ? {} : { org }), ...(cluster === undefined ? {} : { cluster }) };
      const evaluation = evaluateFlag(flag, context, await loadFlagSnapshot(pool));
      const view: FlagExplainView = { key: flag.key, context: { cell, org: org ?? null, cluster: cluster ?? null }, value: evaluation.value, decidedBy: { ...evaluation.decidedBy }, why: evaluation.why };
      return view;
    },
  );

  app.get('/v1/flags-stale', { schema: { summary: 'Flags past their expiry or fully rolled out: remove them and the code behind them (admin)', response: { 200: { type: 'object', properties: { stale: { type: 'array', items: { type: 'object', properties: { key: { type: 'string' }, reasons: { type: 'array', items: { type: 'string' } } } } } } }, 403: errorRef } } }, async (request) => {
    requireAdmin(request);
    const stale: StaleFlagView[] = staleFlags(catalogue(), await loadFlagSnapshot(pool), new Date()).map((entry) => ({ key: entry.key, reasons: [...entry.reasons] }));
    return { stale };
  });

  app.get('/v1/cohorts', { schema: { summary: 'Cohorts with their flag values and members (admin)', response: { 200: { type: 'object', properties: { cohorts: { type: 'array', items: cohortSchema } } }, 403: errorRef } } }, async (request) => {
    requireAdmin(request);
    return { cohorts: (await loadCohorts(pool)).map(cohortView) };
  });

  app.get<{ Params: { name: string } }>(
    '/v1/cohorts/:name',
    { schema: { summary: 'One cohort with its recent changes (admin)', params: nameParams, response: { 200: cohortDetailSchema, 403: errorRef, 404: errorRef } } },
    async (request) => {
      requireAdmin(request);
      const cohort = (await loadCohorts(pool, request.params.name))[0];
      if (cohort === undefined) throw new CellarError('CELLAR_E_NOT_FOUND', `no cohort "${request.params.name}"`, 'name');
      const detail: CohortDetail = { ...cohortView(cohort), changes: (await flagChanges(pool, 'cohort', cohort.name, auditShownMax)).map(changeView) };
      return detail;
    },
  );

  app.post<{ Body: { name: string; description?: string; values: Record<string, FlagValue>; reason: string } }>(
    '/v1/cohorts',
    {
      config: { fieldMessages },
      schema: {
        summary: 'Create a cohort: a named set of orgs and clusters that all get these flag values (admin)',
        body: {
          type: 'object',
          required: ['name', 'values', 'reason'],
          additionalProperties: false,
          properties: { name: { type: 'string', maxLength: cohortNameLengthMax }, description: { type: 'string', maxLength: cohortDescriptionLengthMax }, values: { type: 'object', maxProperties: 64, additionalProperties: valueSchema }, reason: reasonProperty },
        },
        response: { 201: cohortSchema, 400: errorRef, 403: errorRef, 404: errorRef, 409: errorRef },
      },
    },
    async (request, reply) => {
      const owner = requireAdmin(request);
      const body = request.body;
      const cohort = await createCohort(pool, { name: body.name, ...(body.description === undefined ? {} : { description: body.description }), values: body.values, reason: body.reason, actor: actorOf(owner) });
      await options.reader.refresh();
      return reply.status(201).send(cohortView(cohort));
    },
  );

  app.delete<{ Params: { name: string }; Body: { reason: string } }>(
    '/v1/cohorts/:name',
    {
      config: { fieldMessages },
      schema: { summary: 'Delete a cohort: its members fall back to their other rules (admin)', params: nameParams, body: { type: 'object', required: ['reason'], additionalProperties: false, properties: { reason: reasonProperty } }, response: { 200: cohortSchema, 400: errorRef, 403: errorRef, 404: errorRef } },
    },
    async (request) => {
      const owner = requireAdmin(request);
      const cohort = await deleteCohort(pool, { name: request.params.name, reason: request.body.reason, actor: actorOf(owner) });
      await options.reader.refresh();
      return cohortView(cohort);
    },
  );

  const memberBody = { type: 'object', required: ['kind', 'member', 'reason'], additionalProperties: false, properties: { kind: { type: 'string', enum: ['org', 'cluster'] }, member: targetProperty, reason: reasonProperty } } as const;
  for (const action of ['add', 'remove'] as const) {
    app.post<{ Params: { name: string }; Body: { kind: 'org' | 'cluster'; member: string; reason: string } }>(
      `/v1/cohorts/:name/members/${action}`,
      {
        config: { fieldMessages },
        schema: { summary: action === 'add' ? 'Add an org or a cluster to a cohort (admin)' : 'Remove an org or a cluster from a cohort (admin)', params: nameParams, body: memberBody, response: { 200: cohortSchema, 400: errorRef, 403: errorRef, 404: errorRef, 409: errorRef } },
      },
      async (request) => {
        const owner = requireAdmin(request);
        const change = { name: request.params.name, kind: request.body.kind, member: request.body.member, reason: request.body.reason, actor: actorOf(owner) };
        const cohort = action === 'add' ? await addCohortMember(pool, change) : await removeCohortMember(pool, change);
        await options.reader.refresh();
        return cohortView(cohort);
      },
    );
  }
}

/** A target that does not resolve, named by the query field it came from. */
function renameField(field: string): (error: unknown) => never {
  return (error: unknown) => {
    if (error instanceof CellarError) throw new CellarError(error.code, error.message, field);
    throw error;
  };
}
