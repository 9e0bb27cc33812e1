import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ConfigPlan } from '../lib/config-plan.js';
import { CellarError, invalid } from '../lib/errors.js';
import { effectiveSettings, replicasMax, sizeNames, storageGbMax, storageGbMin } from '../lib/sizes.js';
import { changeMachine } from '../machines/change.js';
import { type ChangeProposal, type RevisionRecord, type StoragePolicy, autogrowStepPercentDefault, autogrowStepPercentMax, autogrowStepPercentMin, autogrowThresholdPercentDefault, autogrowThresholdPercentMin, isChangeInProgress, proposeChange, proposeRollback, revisions, setAutogrow } from '../store/config.js';
import { type ClusterSnapshot, findCluster } from '../store/clusters.js';
import type { Pool } from '../store/pool.js';
import type { TokenOwner } from '../store/tenancy.js';

/**
 * A cluster's configuration (docs/CONFIG.md): what it runs with, its revisions, and changes to its
 * settings, size and replicas, each planned first and applied by a change machine.
 */

const settingsPerRequestMax = 100;
const settingValueLengthMax = 1_024;
const reasonLengthMax = 500;

export interface RevisionView {
  revision: number;
  size: string;
  replicas: number;
  settings: Record<string, string>;
  defaults: Record<string, string>;
  diff: readonly { name: string; from: string | number | null; to: string | number | null }[];
  plan: ConfigPlan | null;
  reason: string | null;
  actor: string;
  rollbackOf: number | null;
  createdAt: string;
  /** applied, applying (with its step), failed (with the error) */
  state: string;
  step: string | null;
  error: string | null;
  changeId: string | null;
}

export interface ConfigView {
  cluster: string;
  revision: number;
  size: string;
  replicas: number;
  storageGb: number;
  /** The cluster's own settings. */
  settings: Record<string, string>;
  /** The fleet defaults it runs with. */
  defaults: Record<string, string>;
  /** What its instances run with: size defaults, fleet defaults and its own settings. */
  effective: Record<string, string>;
  /** The revision being applied, if any. */
  applying: RevisionView | null;
}

export interface ProposalView {
  cluster: string;
  dryRun: boolean;
  revision: number | null;
  changeId: string | null;
  plan: ConfigPlan;
  warnings: readonly string[];
}

function stateOf(record: RevisionRecord): string {
  if (record.changeLabel === 'failed') return 'failed';
  return isChangeInProgress(record) ? 'applying' : 'applied';
}

export function revisionView(record: RevisionRecord): RevisionView {
  return {
    revision: record.revision,
    size: record.size,
    replicas: record.replicas,
    settings: record.settings,
    defaults: record.defaults,
    diff: record.diff,
    plan: record.plan,
    reason: record.reason,
    actor: record.actor,
    rollbackOf: record.rollbackOf,
    createdAt: record.createdAt.toISOString(),
    state: stateOf(record),
    step: isChangeInProgress(record) ? record.changeLabel : null,
    error: record.changeLabel === 'failed' ? record.changeError : null,
    changeId: record.changeId,
  };
}

const settingsSchema = {
  type: 'object',
  maxProperties: settingsPerRequestMax,
  propertyNames: { maxLength: 63 },
  additionalProperties: { anyOf: [{ type: 'string', maxLength: settingValueLengthMax }, { type: 'null' }] },
  description: 'Postgres parameters: name → value (units such as 256MB or 5min), or null to remove the cluster\'s own value',
} as const;

const changeBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    settings: settingsSchema,
    size: { type: 'string', enum: sizeNames },
    replicas: { type: 'integer', minimum: 0, maximum: replicasMax },
    storageGb: { type: 'integer', minimum: storageGbMin, maximum: storageGbMax },
    reason: { type: 'string', maxLength: reasonLengthMax },
    dryRun: { type: 'boolean', default: false },
  },
} as const;

const rollbackBody = {
  type: 'object',
  required: ['revision'],
  additionalProperties: false,
  properties: {
    revision: { type: 'integer', minimum: 1, maximum: 2_147_483_647 },
    reason: { type: 'string', maxLength: reasonLengthMax },
    dryRun: { type: 'boolean', default: false },
  },
} as const;

export const configFieldMessages: Readonly<Record<string, string>> = {
  settings: `settings must be an object of at most ${settingsPerRequestMax} parameters, each a string of at most ${settingValueLengthMax} characters or null, names at most 63 characters`,
  size: `size must be one of ${sizeNames.join(', ')}`,
  replicas: `replicas must be a whole number from 0 to ${replicasMax}`,
  storageGb: `storageGb must be a whole number of GB from ${storageGbMin} to ${storageGbMax}`,
  reason: `reason must be a string of at most ${reasonLengthMax} characters`,
  dryRun: 'dryRun must be true or false',
  revision: 'revision must be a whole number from 1',
};

interface AutogrowBody {
  enabled: boolean;
  maxGb?: number;
  thresholdPercent?: number;
  stepPercent?: number;
}

const autogrowBody = {
  type: 'object',
  additionalProperties: false,
  required: ['enabled'],
  properties: {
    enabled: { type: 'boolean' },
    maxGb: { type: 'integer', minimum: storageGbMin, maximum: storageGbMax },
    thresholdPercent: { type: 'integer', minimum: autogrowThresholdPercentMin, maximum: 99 },
    stepPercent: { type: 'integer', minimum: autogrowStepPercentMin, maximum: autogrowStepPercentMax },
  },
} as const;

export const autogrowFieldMessages: Readonly<Record<string, string>> = {
  enabled: 'enabled must be true or false',
  maxGb: `maxGb must be a whole number of GB from ${storageGbMin} to ${storageGbMax}, above the cluster's allocation`,
  thresholdPercent: `thresholdPercent must be a whole number from ${autogrowThresholdPercentMin}, below the read-only threshold`,
  stepPercent: `stepPercent must be a whole number from ${autogrowStepPercentMin} to ${autogrowStepPercentMax}`,
};

interface ChangeBody {
  settings?: Record<string, string | null>;
  size?: string;
  replicas?: number;
  storageGb?: number;
  reason?: string;
  dryRun?: boolean;
}

export function registerConfigRoutes(app: FastifyInstance, pool: Pool, ownerOf: (request: FastifyRequest) => TokenOwner, storagePolicy: StoragePolicy): void {
  async function liveCluster(owner: TokenOwner, name: string): Promise<ClusterSnapshot> {
    const cluster = await findCluster(pool, owner.orgId, name);
    if (cluster === null) throw new CellarError('CELLAR_E_NOT_FOUND', `no cluster named "${name}"`, 'name');
    return cluster;
  }

  const actorOf = (owner: TokenOwner): string => `token:${owner.tokenId}`;

  function proposalView(cluster: ClusterSnapshot, proposal: ChangeProposal, dryRun: boolean): ProposalView {
    return { cluster: cluster.name, dryRun, revision: proposal.revision, changeId: proposal.changeId, plan: proposal.plan, warnings: proposal.warnings };
  }

  app.get<{ Params: { name: string } }>('/v1/clusters/:name/config', { schema: { summary: "A cluster's configuration: its size, replicas, own settings, fleet defaults and what its instances run with" } }, async (request) => {
    const cluster = await liveCluster(ownerOf(request), request.params.name);
    const [latest] = await revisions(pool, cluster.id, 1);
    const view: ConfigView = {
      cluster: cluster.name,
      revision: latest?.revision ?? 1,
      size: cluster.spec.size,
      replicas: cluster.spec.replicas,
      storageGb: cluster.spec.storageGb,
      settings: { ...cluster.spec.settings },
      defaults: { ...cluster.spec.defaults },
      effective: effectiveSettings(cluster.spec),
      applying: latest !== undefined && isChangeInProgress(latest) ? revisionView(latest) : null,
    };
    return view;
  });

  app.get<{ Params: { name: string } }>('/v1/clusters/:name/config/revisions', { schema: { summary: "A cluster's configuration revisions, newest first" } }, async (request) => {
    const cluster = await liveCluster(ownerOf(request), request.params.name);
    return { cluster: cluster.name, revisions: (await revisions(pool, cluster.id)).map(revisionView) };
  });

  app.post<{ Params: { name: string }; Body: ChangeBody }>(
    '/v1/clusters/:name/config',
    { config: { fieldMessages: configFieldMessages }, schema: { summary: 'Change settings, size or replicas: validated and planned, then applied by a change (201), or only planned (dryRun: 200)', body: changeBody } },
    async (request, reply) => {
      const owner = ownerOf(request);
      const cluster = await liveCluster(owner, request.params.name);
      const body = request.body;
      const change = {
        ...(body.settings === undefined ? {} : { settings: body.settings }),
        ...(body.size === undefined ? {} : { size: body.size }),
        ...(body.replicas === undefined ? {} : { replicas: body.replicas }),
        ...(body.storageGb === undefined ? {} : { storageGb: body.storageGb }),
      };
      const dryRun = body.dryRun === true;
      const proposal = await proposeChange(pool, changeMachine, { clusterId: cluster.id, actor: actorOf(owner), change, dryRun, ...(body.reason === undefined ? {} : { reason: body.reason }) }, storagePolicy);
      return reply.code(dryRun ? 200 : 201).send(proposalView(cluster, proposal, dryRun));
    },
  );

  app.put<{ Params: { name: string }; Body: AutogrowBody }>(
    '/v1/clusters/:name/autogrow',
    { config: { fieldMessages: autogrowFieldMessages }, schema: { summary: 'Turn storage autogrow on (grow by stepPercent past thresholdPercent, up to maxGb) or off; off by default', body: autogrowBody } },
    async (request) => {
      const owner = ownerOf(request);
      const cluster = await liveCluster(owner, request.params.name);
      const body = request.body;
      if (body.enabled && body.maxGb === undefined) throw invalid('maxGb', `maxGb is required to turn autogrow on: the ceiling it grows to, above the cluster's ${cluster.spec.storageGb} GB`);
      const policy = body.enabled
        ? { maxGb: body.maxGb as number, thresholdPercent: body.thresholdPercent ?? autogrowThresholdPercentDefault, stepPercent: body.stepPercent ?? autogrowStepPercentDefault }
        : null;
      await setAutogrow(pool, cluster.id, policy, storagePolicy);
      return { cluster: cluster.name, autogrow: policy };
    },
  );

  app.post<{ Params: { name: string }; Body: { revision: number; reason?: string; dryRun?: boolean } }>(
    '/v1/clusters/:name/config/rollback',
    { config: { fieldMessages: configFieldMessages }, schema: { summary: 'A new revision equal to an earlier one, applied like any change', body: rollbackBody } },
    async (request, reply) => {
      const owner = ownerOf(request);
      const cluster = await liveCluster(owner, request.params.name);
      const dryRun = request.body.dryRun === true;
      const proposal = await proposeRollback(pool, changeMachine, cluster.id, request.body.revision, actorOf(owner), {
        dryRun,
        ...(request.body.reason === undefined ? {} : { reason: request.body.reason }),
      });
      return reply.code(dryRun ? 200 : 201).send(proposalView(cluster, proposal, dryRun));
    },
  );
}
