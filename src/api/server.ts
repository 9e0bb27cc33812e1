import swagger from '@fastify/swagger';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { CellarError, errorCatalogue, invalid } from '../lib/errors.js';
import {
  type ClusterSpec,
  backupIntervalHoursMax,
  backupIntervalHoursMin,
  clusterNameLengthMax,
  defaultReplicas,
  defaultSize,
  defaultDurability,
  defaultStorageGb,
  durabilities,
  isDurability,
  isSizeName,
  replicasMax,
  sizeNames,
  storageGbMax,
  storageGbMin,
} from '../lib/sizes.js';
import { clusterKind, clusterMachine } from '../machines/cluster.js';
import { type ClusterSnapshot, cellCounts, findCluster, findClusterById, insertCluster, listClusters, requestClusterAction } from '../store/clusters.js';
import { requestDestroy } from '../store/machine-store.js';
import { adoptWarmCluster, warmPoolCounts } from '../store/warm-pool.js';
import type { Pool } from '../store/pool.js';
import { type TokenOwner, authenticate, createOrg, createToken, listOrgs, orgByName } from '../store/tenancy.js';
import { registerBackupRoutes } from './backups.js';
import { registerConfigRoutes } from './config.js';
import { registerConsole } from './console.js';
import { type StoragePolicy, diskReserveOf } from '../store/config.js';
import { withFleetDefaults } from '../store/rollouts.js';
import { errorHandler } from './errors.js';
import { guardedServerOptions, registerInputGuards } from './guards.js';
import { registerTokenRoutes } from './tokens.js';
import { type HostsApiOptions, registerHostRoutes } from './hosts.js';
import { registerRolloutRoutes } from './rollouts.js';
import { registerRodRoutes } from './rods.js';
import { type RodValueMap, catalogueDefaults } from '../lib/rod-catalogue.js';
import { registerFlagRoutes } from './flags.js';
import type { FlagSnapshotReader } from '../store/flag-snapshot.js';
import { freezeView, registerFreezeRoutes } from './freeze.js';
import { readFreeze } from '../store/freeze.js';
import { registerHealth } from './health.js';
import { metricsPath, registerMetricsRoute } from './metrics.js';
import { ChangeFeed } from './change-feed.js';
import { registerConsoleApi } from './console-api.js';
import { type ProxyEndpoints, clusterView } from './view.js';
import { lazySchemaCompilers } from './schema-compilers.js';

export interface ApiOptions {
  readonly pool: Pool;
  readonly log: Logger;
  /** Postgres major versions the data plane can run; the highest is the default. */
  readonly versions: readonly number[];
  /** The proxy endpoints the connection URIs point at. */
  readonly proxy: ProxyEndpoints;
  /** Extra facts for `GET /v1/status` (engine owner, step counts). */
  readonly status?: () => Record<string, unknown>;
  /** Whether Cellar runs the store itself (and restarts it), for what a 503 tells the user. */
  readonly embeddedStore?: boolean;
  /** How long a deleted cluster's backups are kept: shown as each one's purge time. */
  readonly deletedBackupRetentionMs: number;
  /** How storage may grow (step, cooldown): CELLAR_STORAGE_RESIZE_*. */
  readonly storagePolicy: StoragePolicy;
  /** The hosts routes (docs/HOSTS.md); absent: none. */
  readonly hosts?: HostsApiOptions;
  /** Each control rod's value in this process when none is stored; absent: the catalogue's defaults. */
  readonly rodDefaults?: RodValueMap;
  /** This process's live flags (docs/CONTROLS.md); absent: no flag routes, and every choice takes its default. */
  readonly flags?: FlagSnapshotReader;
}

declare module 'fastify' {
  interface FastifyRequest {
    owner: TokenOwner | null;
  }
}

const fieldMessages = {
  name: `name must be a DNS label of 1-${clusterNameLengthMax} characters: a-z, 0-9 and '-', starting and ending with a letter or digit`,
  replicas: `replicas must be an integer from 0 to ${replicasMax}`,
  size: `size must be one of ${sizeNames.join(', ')}`,
  storageGb: `storageGb must be an integer from ${storageGbMin} to ${storageGbMax}`,
  version: 'version must be an installed Postgres major version',
  durability: `durability must be one of ${durabilities.join(', ')}`,
  backupIntervalHours: `backupIntervalHours must be an integer from ${backupIntervalHoursMin} to ${backupIntervalHoursMax}`,
} as const;

const errorSchema = {
  type: 'object',
  properties: {
    error: {
      type: 'object',
      properties: { code: { type: 'string', enum: Object.keys(errorCatalogue) }, message: { type: 'string' }, field: { type: 'string' } },
      required: ['code', 'message'],
    },
  },
} as const;

const instanceSchema = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    role: { type: 'string', enum: ['primary', 'replica'] },
    state: { type: 'string' },
    machineLabel: { type: 'string', description: "its instance machine's label now" },
    host: { type: ['string', 'null'], description: 'the name of the host it lives on' },
    port: { type: ['integer', 'null'] },
    lsn: { type: ['string', 'null'] },
    lagBytes: { type: ['integer', 'null'] },
    streaming: { type: ['boolean', 'null'] },
    fenced: { type: 'boolean' },
    dataBytes: { type: ['integer', 'null'], description: 'its data directory on disk, without pg_wal, as last measured' },
    walBytes: { type: ['integer', 'null'], description: 'its pg_wal on disk, as last measured' },
    measuredAt: { type: ['string', 'null'] },
  },
} as const;

const clusterSchema = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    name: { type: 'string' },
    state: { type: 'string', description: 'creating, running, degraded, failing-over, switching-over, promoting, rejoining, deleting, deleted or failed' },
    machineLabel: { type: 'string', description: "the cluster machine's label now (GET /v1/machines has its transition table)" },
    size: { type: 'string' },
    replicas: { type: 'integer' },
    storageGb: { type: 'integer' },
    storage: {
      type: 'object',
      description: "use against the allocation: the primary's data and WAL, as last measured (null figures before the first measurement); whether the primary is read-only because the storage is full; the autogrow policy (null: off)",
      properties: {
        allocatedGb: { type: 'integer' },
        usedBytes: { type: ['integer', 'null'] },
        percent: { type: ['number', 'null'] },
        measuredAt: { type: ['string', 'null'] },
        readOnly: { type: 'boolean' },
        locked: { type: 'boolean' },
        autogrow: {
          type: ['object', 'null'],
          properties: { maxGb: { type: 'integer' }, thresholdPercent: { type: 'integer' }, stepPercent: { type: 'integer' } },
        },
      },
    },
    version: { type: 'integer' },
    durability: { type: 'string', enum: durabilities },
    backupIntervalHours: { type: ['integer', 'null'], description: "hours between scheduled base backups; null: the cell's default" },
    replication: { type: ['string', 'null'], enum: ['sync', 'async', null], description: 'what commits wait for now' },
    warnings: { type: 'array', items: { type: 'string' }, description: 'what threatens the cluster though it serves (failing WAL archiving); empty: nothing' },
    archive: {
      type: ['object', 'null'],
      description: 'continuous WAL archiving from the primary',
      properties: {
        lastArchivedWal: { type: ['string', 'null'] },
        lastArchivedAt: { type: ['string', 'null'] },
        lagBytes: { type: ['integer', 'null'] },
        failedCount: { type: 'integer' },
        lastFailedWal: { type: ['string', 'null'] },
        lastFailedAt: { type: ['string', 'null'] },
      },
    },
    routeKey: { type: ['string', 'null'], description: 'cell-unique key the proxy routes by' },
    uri: { type: ['string', 'null'], description: 'read-write connection URI (through the proxy)' },
    readOnlyUri: { type: ['string', 'null'] },
    error: { type: ['string', 'null'] },
    createdAt: { type: 'string' },
    instances: { type: 'array', items: instanceSchema },
    events: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          at: { type: 'string' },
          entity: { type: 'string' },
          from: { type: ['string', 'null'] },
          to: { type: 'string' },
          reason: { type: 'string', description: 'why, for people; the wording may change' },
          code: { type: ['string', 'null'], description: 'what happened, stable: decide by this (null for a plain move)' },
        },
      },
    },
  },
} as const;

const createClusterBody = {
  type: 'object',
  required: ['name'],
  additionalProperties: false,
  properties: {
    name: { type: 'string', minLength: 1, maxLength: clusterNameLengthMax, pattern: '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$' },
    replicas: { type: 'integer', minimum: 0, maximum: replicasMax, default: defaultReplicas },
    size: { type: 'string', enum: sizeNames, default: defaultSize },
    storageGb: { type: 'integer', minimum: storageGbMin, maximum: storageGbMax, default: defaultStorageGb },
    version: { type: 'integer' },
    durability: { type: 'string', enum: durabilities },
    backupIntervalHours: { type: 'integer', minimum: backupIntervalHoursMin, maximum: backupIntervalHoursMax },
  },
} as const;

const failoverBody = {
  type: 'object',
  additionalProperties: false,
  properties: { force: { type: 'boolean', default: false, description: 'promote the most advanced replica even if it lags past the limit' } },
} as const;

const switchoverBody = {
  type: 'object',
  additionalProperties: false,
  properties: { to: { type: 'string', maxLength: 64, description: 'instance id of the replica to promote; default: the most advanced streaming replica' } },
} as const;

function ownerOf(request: FastifyRequest): TokenOwner {
  if (request.owner === null) throw new CellarError('CELLAR_E_UNAUTHENTICATED', 'a bearer token is required (Authorization: Bearer …)');
  return request.owner;
}

function requireAdmin(request: FastifyRequest): TokenOwner {
  const owner = ownerOf(request);
  if (!owner.admin) throw new CellarError('CELLAR_E_FORBIDDEN', 'this needs an admin token');
  return owner;
}

export async function buildApi(options: ApiOptions): Promise<FastifyInstance> {
  const { pool, log } = options;
  const app = Fastify({
    // Requests are logged at info by Fastify; the API child logs only warnings and worse.
    loggerInstance: log.child({ component: 'api' }, { level: 'warn' }) as FastifyBaseLogger,
    ...guardedServerOptions,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: true, allErrors: false } },
    schemaController: lazySchemaCompilers(),
  });
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'Cellar API', version: '1', description: 'Self-hosted Postgres database-as-a-service.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });
  app.setErrorHandler(errorHandler(log, options.embeddedStore ?? false));
  app.addSchema({ $id: 'cellarError', ...errorSchema });
  registerInputGuards(app);
  app.decorateRequest('owner', null);
  app.addHook('onRequest', async (request) => {
    const header = request.headers.authorization;
    // /healthz and /openapi.json need no token, and must answer without the store.
    if (header === undefined || !(request.url.startsWith('/v1/') || request.url.split('?')[0] === metricsPath)) return;
    const match = /^Bearer\s+(\S+)$/i.exec(header);
    if (!match?.[1]) throw new CellarError('CELLAR_E_UNAUTHENTICATED', 'the Authorization header must be "Bearer <token>"');
    const authentication = await authenticate(pool, match[1]);
    if (authentication.refused !== undefined) throw new CellarError('CELLAR_E_UNAUTHENTICATED', authentication.refused);
    request.owner = authentication.owner;
  });

  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  registerHealth(app, pool);

  app.get('/v1/status', { schema: { summary: "Cell status; an org token's counts cover its own org only" } }, async (request) => {
    const owner = ownerOf(request);
    // Everyone sees whether the cell is frozen (why a create waits); who and why are the operator's.
    const freeze = freezeView(await readFreeze(pool));
    if (!owner.admin) return { ok: true, versions: options.versions, scope: 'org', org: owner.orgName, cell: await cellCounts(pool, owner.orgId), freeze: { frozen: freeze.frozen, since: freeze.frozen ? freeze.since : null } };
    return { ok: true, versions: options.versions, scope: 'cell', cell: await cellCounts(pool, null), warmPool: await warmPoolCounts(pool), freeze, ...options.status?.() };
  });

  app.get('/v1/orgs', { schema: { summary: 'List orgs (admin)' } }, async (request) => {
    requireAdmin(request);
    return { orgs: await listOrgs(pool) };
  });

  app.post<{ Body: { name: string } }>(
    '/v1/orgs',
    {
      config: { fieldMessages: { name: fieldMessages.name } },
      schema: {
        summary: 'Create an org and its first token (admin)',
        body: { type: 'object', required: ['name'], additionalProperties: false, properties: { name: createClusterBody.properties.name } },
        response: { 400: errorSchema },
      },
    },
    async (request, reply) => {
      requireAdmin(request);
      const org = await createOrg(pool, request.body.name);
      if (org === null) throw invalid('name', `name: an org named "${request.body.name}" already exists`);
      const token = await createToken(pool, org.id, false);
      return reply.status(201).send({ org, token });
    },
  );

  app.post<{ Params: { name: string } }>('/v1/orgs/:name/tokens', { schema: { summary: 'Issue a token for an org (admin)' } }, async (request, reply) => {
    requireAdmin(request);
    const orgId = await orgByName(pool, request.params.name);
    if (orgId === null) throw new CellarError('CELLAR_E_NOT_FOUND', `no org named "${request.params.name}"`, 'name');
    return reply.status(201).send({ token: await createToken(pool, orgId, false) });
  });

  app.get('/v1/clusters', { schema: { summary: 'List clusters', response: { 200: { type: 'object', properties: { clusters: { type: 'array', items: clusterSchema } } } } } }, async (request) => {
    const owner = ownerOf(request);
    return { clusters: (await listClusters(pool, owner.orgId)).map((cluster) => clusterView(cluster, options.proxy, options.storagePolicy.gbBytes)) };
  });

  app.post<{ Body: { name: string; replicas: number; size: string; storageGb: number; version?: number; durability?: string; backupIntervalHours?: number } }>(
    '/v1/clusters',
    {
      config: { fieldMessages },
      schema: { summary: 'Create a cluster', body: createClusterBody, response: { 201: clusterSchema, 400: errorSchema } },
    },
    async (request, reply) => {
      const owner = ownerOf(request);
      const body = request.body;
      const pgVersion = body.version ?? Math.max(...options.versions);
      if (!options.versions.includes(pgVersion)) {
        throw invalid('version', `version must be one of the installed Postgres versions: ${options.versions.join(', ')}`);
      }
      if (!isSizeName(body.size)) throw invalid('size', fieldMessages.size);
      // The flag chooses among durabilities that need a replica; without one only async is possible.
      const durability = body.durability ?? (body.replicas > 0 && options.flags !== undefined ? options.flags.variant('durability-default', { org: owner.orgId }) : defaultDurability(body.replicas));
      if (!isDurability(durability)) throw invalid('durability', fieldMessages.durability);
      if (durability !== 'async' && body.replicas === 0) throw invalid('durability', `durability ${durability} needs at least 1 replica (replicas is 0); use async`);
      const schedule = body.backupIntervalHours === undefined ? {} : { backupIntervalHours: body.backupIntervalHours };
      // With the fleet's defaults already, so that a warm cluster made on them is adopted.
      const spec = await withFleetDefaults(pool, { size: body.size, replicas: body.replicas, storageGb: body.storageGb, pgVersion, durability, ...schedule } satisfies ClusterSpec);
      const id = (await adoptWarmCluster(pool, owner.orgId, body.name, spec)) ?? (await insertCluster(pool, clusterMachine, owner.orgId, body.name, spec, { reserve: diskReserveOf(options.storagePolicy) }));
      const created = await findClusterById(pool, owner.orgId, id);
      return reply.status(201).send(created && clusterView(created, options.proxy, options.storagePolicy.gbBytes));
    },
  );

  app.get<{ Params: { name: string } }>(
    '/v1/clusters/:name',
    { schema: { summary: 'Show a cluster by name or id', response: { 200: clusterSchema, 404: errorSchema } } },
    async (request) => {
      const owner = ownerOf(request);
      const cluster = (await findCluster(pool, owner.orgId, request.params.name)) ?? (await findClusterById(pool, owner.orgId, request.params.name));
      if (cluster === null) throw new CellarError('CELLAR_E_NOT_FOUND', `no cluster named "${request.params.name}"`, 'name');
      return clusterView(cluster, options.proxy, options.storagePolicy.gbBytes);
    },
  );

  app.delete<{ Params: { name: string } }>(
    '/v1/clusters/:name',
    { schema: { summary: 'Delete a cluster (asynchronous: watch its state)', response: { 202: clusterSchema, 404: errorSchema } } },
    async (request, reply) => {
      const owner = ownerOf(request);
      const cluster = await findCluster(pool, owner.orgId, request.params.name);
      if (cluster === null) throw new CellarError('CELLAR_E_NOT_FOUND', `no cluster named "${request.params.name}"`, 'name');
      await requestDestroy(pool, clusterKind, cluster.id);
      const updated = await findClusterById(pool, owner.orgId, cluster.id);
      return reply.status(202).send(updated && clusterView(updated, options.proxy, options.storagePolicy.gbBytes));
    },
  );

  app.post<{ Params: { name: string }; Body: { force?: boolean } }>(
    '/v1/clusters/:name/failover',
    { config: { fieldMessages }, schema: { summary: 'Fail over to the most advanced replica now (asynchronous: watch its state)', body: failoverBody, response: { 202: clusterSchema, 404: errorSchema, 409: errorSchema } } },
    async (request, reply) => {
      const owner = ownerOf(request);
      const cluster = await actionableCluster(owner, request.params.name, 'fail over');
      if (!cluster.instances.some((instance) => instance.role === 'replica')) throw new CellarError('CELLAR_E_CONFLICT', `cluster "${cluster.name}" has no replica to fail over to`, 'name');
      await requestClusterAction(pool, cluster.id, request.body?.force === true ? ['failover', 'force'] : ['failover']);
      return reply.status(202).send(clusterView(cluster, options.proxy, options.storagePolicy.gbBytes));
    },
  );

  app.post<{ Params: { name: string }; Body: { to?: string } }>(
    '/v1/clusters/:name/switchover',
    { config: { fieldMessages }, schema: { summary: 'Move the primary role to a replica, gracefully (asynchronous: watch its state)', body: switchoverBody, response: { 202: clusterSchema, 400: errorSchema, 404: errorSchema, 409: errorSchema } } },
    async (request, reply) => {
      const owner = ownerOf(request);
      const cluster = await actionableCluster(owner, request.params.name, 'switch over');
      const to = request.body?.to ?? null;
      const replicas = cluster.instances.filter((instance) => instance.role === 'replica');
      if (replicas.length === 0) throw new CellarError('CELLAR_E_CONFLICT', `cluster "${cluster.name}" has no replica to switch over to`, 'name');
      if (to !== null && !replicas.some((instance) => instance.id === to)) {
        throw invalid('to', `to must be the id of a replica of cluster "${cluster.name}": ${replicas.map((instance) => instance.id).join(', ')}`);
      }
      await requestClusterAction(pool, cluster.id, ['switchover'], to);
      return reply.status(202).send(clusterView(cluster, options.proxy, options.storagePolicy.gbBytes));
    },
  );

  registerBackupRoutes(app, pool, { proxy: options.proxy, deletedRetentionMs: options.deletedBackupRetentionMs, gbBytes: options.storagePolicy.gbBytes, hostDiskReserve: diskReserveOf(options.storagePolicy) }, ownerOf);
  registerConfigRoutes(app, pool, ownerOf, options.storagePolicy);
  registerTokenRoutes(app, pool, ownerOf);
  if (options.hosts !== undefined) registerHostRoutes(app, options.hosts, ownerOf);
  registerRolloutRoutes(app, pool, { versions: options.versions }, ownerOf);
  registerRodRoutes(app, pool, options.rodDefaults ?? catalogueDefaults(), ownerOf);
  if (options.flags !== undefined) registerFlagRoutes(app, pool, { reader: options.flags }, ownerOf);
  registerFreezeRoutes(app, pool, ownerOf);
  registerMetricsRoute(app, pool, ownerOf, { bytesPerGb: options.storagePolicy.gbBytes });
  registerConsoleApi(app, { pool, feed: new ChangeFeed(pool, options.log), ownerOf });
  await registerConsole(app);

  /** A live cluster of the org whose machine is watching (not creating, deleting or mid-failover). */
  async function actionableCluster(owner: TokenOwner, name: string, action: string): Promise<ClusterSnapshot> {
    const cluster = await findCluster(pool, owner.orgId, name);
    if (cluster === null) throw new CellarError('CELLAR_E_NOT_FOUND', `no cluster named "${name}"`, 'name');
    if (cluster.machineLabel !== 'running' || cluster.destroyRequested) {
      const state = clusterView(cluster, options.proxy, options.storagePolicy.gbBytes).state;
      throw new CellarError('CELLAR_E_CONFLICT', `cannot ${action} cluster "${name}" while it is ${state}; try again when it is running`, 'name');
    }
    return cluster;
  }

  return app;
}
