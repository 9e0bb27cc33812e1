import { isIP } from 'node:net';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { formatJoinToken } from '../dataplane/agent-protocol.js';
import { CellarError, invalid } from '../lib/errors.js';
import { effectiveSettings } from '../lib/sizes.js';
import { tuningInstanceOf } from '../lib/tuning.js';
import { instancePhase } from '../machines/instance.js';
import type { HostDrains } from '../store/drain.js';
import type { HostInstance, HostRecord, HostStore, JoinSecret } from '../store/hosts.js';
import type { TokenOwner } from '../store/tenancy.js';

/**
 * The cell's hosts (docs/HOSTS.md, "Joining and trust"), admin only: add one (its join token is
 * shown once), list, show, remove (revokes its certificates), and a fresh token for a host that
 * has not joined yet.
 */

export const hostNameLengthMax = 40;
export const zoneLengthMax = 40;
/** The longest IPv6 literal (with an embedded IPv4) is 45 characters. */
export const addressLengthMax = 45;
export const memoryMbMin = 256;
export const memoryMbMax = 4_194_304;
export const diskGbMin = 1;
export const diskGbMax = 1_048_576;
export const slotsMin = 1;
export const slotsMax = 1_000;
export const defaultZone = 'default';
export const defaultMemoryMb = 8_192;
export const defaultDiskGb = 100;
export const defaultSlots = 16;
/** Where the printed agent command puts the agent's data, as a suggestion. */
const suggestedAgentDataDir = '/var/lib/cellar-agent';

const dnsLabel = '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$';

const fieldMessages = {
  name: `name must be a DNS label of 1-${hostNameLengthMax} characters: a-z, 0-9 and '-', starting and ending with a letter or digit`,
  address: `address must be an IPv4 or IPv6 literal of at most ${addressLengthMax} characters, not 0.0.0.0 or ::`,
  zone: `zone must be a DNS label of 1-${zoneLengthMax} characters: a-z, 0-9 and '-', starting and ending with a letter or digit`,
  memoryMb: `memoryMb must be an integer from ${memoryMbMin} to ${memoryMbMax}`,
  diskGb: `diskGb must be an integer from ${diskGbMin} to ${diskGbMax}`,
  slots: `slots must be an integer from ${slotsMin} to ${slotsMax}`,
  force: 'force must be true or false',
} as const;

export interface HostView {
  id: string;
  name: string;
  address: string;
  agentPort: number;
  zone: string;
  /** The host machine's label: joining, active, draining, drained, lost, removed. */
  state: string;
  local: boolean;
  capacity: { memoryMb: number; diskGb: number; slots: number };
  used: { instances: number; memoryMb: number; diskGb: number };
  /** Since the agent's last lease renewal, on the store's clock; null: never renewed. */
  leaseAgeMs: number | null;
  /** Each filesystem the host writes to (docs/STORAGE.md), as last measured; null: not measured (yet). */
  filesystems: HostFilesystemView[] | null;
  filesystemsMeasuredAt: string | null;
  createdAt: string;
  joinedAt: string | null;
  removedAt: string | null;
}

export interface HostFilesystemView {
  path: string;
  /** What Cellar writes there: data, backups, home. */
  purposes: string[];
  totalBytes: number;
  freeBytes: number;
  /** Free to Postgres (not root): free less the filesystem's root reserve. */
  availableBytes: number;
}

export interface HostInstanceView {
  id: string;
  cluster: string;
  clusterId: string;
  role: 'primary' | 'replica';
  /** The instance's phase (creating, running, deleting, …). */
  state: string;
  fenced: boolean;
  /** What sizes the host's kernel settings (`cellar host tune`): its size and what it runs with. */
  size: string;
  sharedBuffersMb: number;
  maxConnections: number;
}

/** One host with the instances on it (`hosts show`, drain and undrain). */
export interface HostDetail extends HostView {
  instances: HostInstanceView[];
}

export interface HostWithJoinToken {
  host: HostView;
  /** Shown once: the store keeps only its secret's hash. */
  joinToken: string;
  joinTokenExpiresAt: string;
  /** The agent listener as this control plane believes agents reach it. */
  controlUrl: string;
  /** What to run on the host, as root. */
  agentCommand: string;
}

export interface HostsApiOptions {
  readonly store: HostStore;
  readonly drains: HostDrains;
  readonly joinTokenTtlMs: number;
  readonly agentPort: number;
  /** SHA-256 of the cell CA certificate's DER (hex): every join token pins it. */
  readonly caSha256: string;
  readonly controlUrl: string;
}

const hostViewSchema = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    name: { type: 'string' },
    address: { type: 'string' },
    agentPort: { type: 'integer' },
    zone: { type: 'string' },
    state: { type: 'string', description: 'joining, active, draining, drained, lost or removed' },
    local: { type: 'boolean', description: "the control plane's own machine" },
    capacity: { type: 'object', properties: { memoryMb: { type: 'integer' }, diskGb: { type: 'integer' }, slots: { type: 'integer' } } },
    used: { type: 'object', properties: { instances: { type: 'integer' }, memoryMb: { type: 'integer' }, diskGb: { type: 'integer' } } },
    leaseAgeMs: { type: ['integer', 'null'], description: "since the agent's last lease renewal; null: never renewed" },
    filesystems: {
      type: ['array', 'null'],
      description: 'each filesystem the host writes to, as last measured; null: not measured (the local host only, for now)',
      items: {
        type: 'object',
        properties: {
          path: { type: 'string' },
          purposes: { type: 'array', items: { type: 'string' } },
          totalBytes: { type: 'integer' },
          freeBytes: { type: 'integer' },
          availableBytes: { type: 'integer' },
        },
      },
    },
    filesystemsMeasuredAt: { type: ['string', 'null'] },
    createdAt: { type: 'string' },
    joinedAt: { type: ['string', 'null'] },
    removedAt: { type: ['string', 'null'] },
  },
} as const;

const hostDetailSchema = {
  type: 'object',
  properties: {
    ...hostViewSchema.properties,
    instances: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          id: { type: 'string' },
          cluster: { type: 'string' },
          clusterId: { type: 'string' },
          role: { type: 'string' },
          state: { type: 'string' },
          fenced: { type: 'boolean' },
          size: { type: 'string' },
          sharedBuffersMb: { type: 'number', description: "shared_buffers it runs with, MB" },
          maxConnections: { type: 'integer' },
        },
      },
    },
  },
} as const;

const joinTokenSchema = {
  type: 'object',
  properties: {
    host: hostViewSchema,
    joinToken: { type: 'string', description: 'shown once; works once, until joinTokenExpiresAt' },
    joinTokenExpiresAt: { type: 'string' },
    controlUrl: { type: 'string' },
    agentCommand: { type: 'string' },
  },
} as const;

const createBody = {
  type: 'object',
  required: ['name', 'address'],
  additionalProperties: false,
  properties: {
    name: { type: 'string', minLength: 1, maxLength: hostNameLengthMax, pattern: dnsLabel },
    address: { type: 'string', minLength: 1, maxLength: addressLengthMax, description: 'IPv4 or IPv6 literal the agent and instances listen on' },
    zone: { type: 'string', minLength: 1, maxLength: zoneLengthMax, pattern: dnsLabel, default: defaultZone },
    memoryMb: { type: 'integer', minimum: memoryMbMin, maximum: memoryMbMax, default: defaultMemoryMb },
    diskGb: { type: 'integer', minimum: diskGbMin, maximum: diskGbMax, default: defaultDiskGb },
    slots: { type: 'integer', minimum: slotsMin, maximum: slotsMax, default: defaultSlots, description: 'instances the host may run' },
  },
} as const;

const nameParams = { type: 'object', properties: { name: { type: 'string', maxLength: hostNameLengthMax } } } as const;
const forceQuery = {
  type: 'object',
  additionalProperties: false,
  properties: { force: { type: 'string', enum: ['true', 'false'], description: 'remove even with live instances (a host lost for good; they are replaced)' } },
} as const;
const errorRef = { $ref: 'cellarError#' } as const;

/** The address as one spelling: IPv6 in its canonical compressed lower-case form, so one host cannot be added twice. */
export function normalizeAddress(address: string): string {
  const version = isIP(address);
  if (version === 0) throw invalid('address', fieldMessages.address);
  const canonical = version === 6 ? new URL(`http://[${address}]/`).hostname.slice(1, -1) : address;
  if (canonical === '0.0.0.0' || canonical === '::') throw invalid('address', fieldMessages.address);
  return canonical;
}

export function hostView(host: HostRecord): HostView {
  return {
    id: host.id,
    name: host.name,
    address: host.address,
    agentPort: host.agentPort,
    zone: host.zone,
    state: host.label,
    local: host.local,
    capacity: { memoryMb: host.memoryMb, diskGb: host.diskGb, slots: host.slots },
    used: host.used,
    leaseAgeMs: host.leaseAgeMs,
    filesystems: host.usage?.filesystems.map((filesystem) => ({ ...filesystem, purposes: [...filesystem.purposes] })) ?? null,
    filesystemsMeasuredAt: host.usageMeasuredAt?.toISOString() ?? null,
    createdAt: host.createdAt.toISOString(),
    joinedAt: host.joinedAt?.toISOString() ?? null,
    removedAt: host.removedAt?.toISOString() ?? null,
  };
}

function instanceView(instance: HostInstance): HostInstanceView {
  const tuning = tuningInstanceOf(effectiveSettings(instance.spec));
  return {
    id: instance.id,
    cluster: instance.clusterName,
    clusterId: instance.clusterId,
    role: instance.role,
    state: instancePhase({ machineLabel: instance.machineLabel, observed: {} }),
    fenced: instance.fenced,
    size: instance.spec.size,
    sharedBuffersMb: tuning.sharedBuffersMb,
    maxConnections: tuning.maxConnections,
  };
}

export function registerHostRoutes(app: FastifyInstance, options: HostsApiOptions, ownerOf: (request: FastifyRequest) => TokenOwner): void {
  const { store } = options;

  function requireAdmin(request: FastifyRequest): void {
    if (!ownerOf(request).admin) throw new CellarError('CELLAR_E_FORBIDDEN', 'hosts are the cell operator\'s: this needs an admin token');
  }

  async function liveHost(name: string): Promise<HostRecord> {
    const host = await store.hostByName(name);
    if (host === null) throw new CellarError('CELLAR_E_NOT_FOUND', `no host named "${name}"`, 'name');
    return host;
  }

  async function detail(host: HostRecord): Promise<HostDetail> {
    return { ...hostView(host), instances: (await store.instancesOn(host.id, slotsMax)).map(instanceView) };
  }

  async function reread(host: HostRecord): Promise<HostDetail> {
    return detail((await store.hostById(host.id)) ?? host);
  }

  function withToken(host: HostRecord, token: JoinSecret): HostWithJoinToken {
    const joinToken = formatJoinToken({ hostId: host.id, secret: token.secret, caSha256: options.caSha256 });
    return {
      host: hostView(host),
      joinToken,
      joinTokenExpiresAt: token.expiresAt.toISOString(),
      controlUrl: options.controlUrl,
      agentCommand: `cellar agent --join ${joinToken} --control ${options.controlUrl} --data ${suggestedAgentDataDir}`,
    };
  }

  app.post<{ Body: { name: string; address: string; zone: string; memoryMb: number; diskGb: number; slots: number } }>(
    '/v1/hosts',
    { config: { fieldMessages }, schema: { summary: 'Add a host; its one-time join token is in the answer (admin)', body: createBody, response: { 201: joinTokenSchema, 400: errorRef, 409: errorRef } } },
    async (request, reply) => {
      requireAdmin(request);
      const body = request.body;
      const address = normalizeAddress(body.address);
      const created = await store.createHost(
        { name: body.name, address, zone: body.zone, memoryMb: body.memoryMb, diskGb: body.diskGb, slots: body.slots, agentPort: options.agentPort },
        options.joinTokenTtlMs,
      );
      return reply.status(201).send(withToken(created.host, created.token));
    },
  );

  app.get('/v1/hosts', { schema: { summary: "The cell's hosts with what they hold (admin)", response: { 200: { type: 'object', properties: { hosts: { type: 'array', items: hostViewSchema } } } } } }, async (request) => {
    requireAdmin(request);
    return { hosts: (await store.hosts()).map(hostView) };
  });

  app.get<{ Params: { name: string } }>(
    '/v1/hosts/:name',
    { config: { fieldMessages }, schema: { summary: 'Show a host with the instances on it (admin)', params: nameParams, response: { 200: hostDetailSchema, 404: errorRef } } },
    async (request) => {
      requireAdmin(request);
      return detail(await liveHost(request.params.name));
    },
  );

  app.post<{ Params: { name: string } }>(
    '/v1/hosts/:name/drain',
    {
      config: { fieldMessages },
      schema: {
        summary: 'Drain a host: its instances move to other hosts (replicas first, primaries by switchover) and it takes no new ones; refused when they would have nowhere to go (admin)',
        params: nameParams,
        response: { 200: hostDetailSchema, 404: errorRef, 409: errorRef },
      },
    },
    async (request) => {
      requireAdmin(request);
      const host = await liveHost(request.params.name);
      await options.drains.requestDrain(host.id);
      return reread(host);
    },
  );

  app.post<{ Params: { name: string } }>(
    '/v1/hosts/:name/undrain',
    {
      config: { fieldMessages },
      schema: { summary: 'A draining or drained host takes instances again (back from maintenance, or a drain called off) (admin)', params: nameParams, response: { 200: hostDetailSchema, 404: errorRef, 409: errorRef } },
    },
    async (request) => {
      requireAdmin(request);
      const host = await liveHost(request.params.name);
      await options.drains.requestUndrain(host.id);
      return reread(host);
    },
  );

  app.delete<{ Params: { name: string }; Querystring: { force?: 'true' | 'false' } }>(
    '/v1/hosts/:name',
    {
      config: { fieldMessages },
      schema: { summary: 'Remove a host: its certificates are revoked (admin); refused while instances live there unless force', params: nameParams, querystring: forceQuery, response: { 200: hostViewSchema, 404: errorRef, 409: errorRef } },
    },
    async (request) => {
      requireAdmin(request);
      const host = await liveHost(request.params.name);
      await store.markHostRemoved(host.id, request.query.force === 'true');
      const removed = await store.hostById(host.id);
      return hostView(removed ?? host);
    },
  );

  app.post<{ Params: { name: string } }>(
    '/v1/hosts/:name/token',
    { config: { fieldMessages }, schema: { summary: 'A fresh join token for a host that has not joined yet; the earlier one stops working (admin)', params: nameParams, response: { 201: joinTokenSchema, 404: errorRef, 409: errorRef } } },
    async (request, reply) => {
      requireAdmin(request);
      const host = await liveHost(request.params.name);
      const token = await store.replaceJoinToken(host.id, options.joinTokenTtlMs);
      if (token === null) throw new CellarError('CELLAR_E_CONFLICT', `host "${host.name}" has joined already: a join token is only for a host that has not`, 'name');
      return reply.status(201).send(withToken(host, token));
    },
  );
}
