import type { AgentOperation } from '../dataplane/agent-protocol.js';

/**
 * JSON schemas of each operation's `args`: the arguments of the DataPlane method of that name
 * (src/dataplane/dataplane.ts), in order. Ids are checked by shape because they name files and
 * OS users on this host. Objects allow properties the control plane adds later (a newer spec).
 */

const passwordCharsMax = 1024;
const settingValueCharsMax = 4096;
const settingsMax = 200;
const standbysMax = 16;

const instanceId = { type: 'string', pattern: '^in_[a-z0-9]{1,40}$' } as const;
const clusterId = { type: 'string', pattern: '^cl_[a-z0-9]{1,24}$' } as const;
const backupId = { type: 'string', pattern: '^[a-z0-9_]{1,64}$' } as const;
const port = { type: 'integer', minimum: 1, maximum: 65535 } as const;
const pgVersion = { type: 'integer', minimum: 10, maximum: 99 } as const;

const secrets = {
  type: 'object',
  required: ['superuserPassword', 'replicationPassword', 'appPassword'],
  properties: {
    superuserPassword: { type: 'string', maxLength: passwordCharsMax },
    replicationPassword: { type: 'string', maxLength: passwordCharsMax },
    appPassword: { type: 'string', maxLength: passwordCharsMax },
  },
} as const;

/** An IP literal (checked again by the driver, which writes it into pg_hba). */
const ipAddress = { type: 'string', minLength: 2, maxLength: 45, pattern: '^[0-9a-fA-F.:]+$' } as const;
/** A cluster's hosts plus the control plane's addresses. */
const peersMax = 64;

const spec = {
  type: 'object',
  required: ['instanceId', 'clusterId', 'host', 'port', 'peers', 'pgVersion', 'settings', 'secrets'],
  properties: {
    instanceId,
    clusterId,
    host: ipAddress,
    port,
    peers: { type: 'array', maxItems: peersMax, items: ipAddress },
    pgVersion,
    settings: { type: 'object', maxProperties: settingsMax, additionalProperties: { type: 'string', maxLength: settingValueCharsMax } },
    secrets,
  },
} as const;

const upstream = {
  type: 'object',
  required: ['host', 'port', 'slotName'],
  properties: { host: { type: 'string', minLength: 1, maxLength: 255 }, port, slotName: { type: 'string', pattern: '^[a-z0-9_]{1,63}$' } },
} as const;

const restoreSource = {
  type: 'object',
  required: ['clusterId', 'backupId'],
  properties: {
    clusterId,
    backupId,
    targetTime: { type: 'string', maxLength: 64 },
    targetLsn: { type: 'string', pattern: '^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$' },
    sourcePrimary: spec,
  },
} as const;

/** Each operation's arguments: the required ones, then the optional ones. */
const argumentLists: Record<AgentOperation, { readonly required: readonly object[]; readonly optional?: readonly object[] }> = {
  status: { required: [spec] },
  alive: { required: [instanceId] },
  stop: { required: [instanceId], optional: [{ enum: ['fast', 'immediate'] }] },
  setSynchronousStandbys: { required: [spec, { type: 'array', maxItems: standbysMax, items: instanceId }] },
  allowPeers: { required: [spec] },
  configure: { required: [spec] },
  settings: { required: [spec] },
  checkpoint: { required: [spec] },
  usage: { required: [spec] },
  follow: { required: [spec, upstream] },
  promote: { required: [spec] },
  dropSlot: { required: [upstream, secrets] },
  start: { required: [spec] },
  createPrimary: { required: [spec] },
  createReplica: { required: [spec, upstream] },
  restorePrimary: { required: [spec, restoreSource] },
  rejoin: { required: [spec, upstream] },
  takeBaseBackup: { required: [spec, spec, backupId, { type: 'integer', minimum: 0 }] },
  checkBackup: { required: [clusterId, backupId, pgVersion] },
  deleteBackup: { required: [clusterId, backupId] },
  pruneWal: { required: [clusterId, { type: 'string', pattern: '^[0-9A-F]{24}$' }] },
  destroy: { required: [instanceId] },
  purgeCluster: { required: [clusterId] },
};

/** The body schema of `POST /v1/ops/<operation>`: `{args: [...]}`, nothing else. */
export function operationBodySchema(operation: AgentOperation): object {
  const { required, optional = [] } = argumentLists[operation];
  const items = [...required, ...optional];
  return {
    type: 'object',
    required: ['args'],
    additionalProperties: false,
    properties: { args: { type: 'array', items, minItems: required.length, maxItems: items.length, additionalItems: false } },
  };
}
