// The API's response shapes the console reads (src/api/*.ts, docs/CONSOLE.md), written down here
// rather than imported: the API's modules carry the server's imports (node, fastify, pg), which
// have no place in the browser's type-check. Only the fields the console shows are listed.

export interface ApiErrorBody {
  error: { code: string; message: string; field?: string };
}

export interface Whoami {
  org: string | null;
  admin: boolean;
  tokenId: string;
}

export interface InstanceView {
  id: string;
  role: string;
  state: string;
  host?: string | null;
  machineLabel?: string;
  lsn: string | null;
  lagBytes: number | null;
  streaming: boolean | null;
  fenced: boolean;
}

export interface ClusterEvent {
  at: string;
  entity: string;
  from: string | null;
  to: string;
  reason: string;
  code: string | null;
}

export interface ClusterView {
  id: string;
  name: string;
  state: string;
  machineLabel?: string;
  size: string;
  replicas: number;
  storageGb: number;
  storage: { allocatedGb: number; usedBytes: number | null; percent: number | null; readOnly: boolean };
  version: number;
  durability: string;
  uri: string | null;
  readOnlyUri: string | null;
  error: string | null;
  warnings: string[];
  createdAt: string;
  instances: InstanceView[];
  events: ClusterEvent[];
}

export interface MachineTable {
  kind: string;
  initial: string;
  transitions: Record<string, string[]>;
}

export interface Sample {
  at: string;
  lagBytes: number | null;
  connections: number | null;
  transactionsPerSecond: number | null;
}

export interface Samples {
  intervalSeconds: number;
  samples: Sample[];
}

export interface BackupView {
  id: string;
  reason: string;
  status: string;
  verified: boolean | null;
  bytes: number | null;
  startedAt: string;
  finishedAt: string | null;
  error: string | null;
}

export interface ConfigPlan {
  settings: { name: string; from: string | null; to: string | null; apply: string }[];
  restart: boolean;
  order: string;
  switchover: boolean;
  expectedWritePauseMs: number;
  steps: string[];
}

export interface ConfigView {
  cluster: string;
  revision: number;
  size: string;
  replicas: number;
  storageGb: number;
  settings: Record<string, string>;
  defaults: Record<string, string>;
  effective: Record<string, string>;
  applying: RevisionView | null;
}

export interface RevisionView {
  revision: number;
  size: string;
  replicas: number;
  settings: Record<string, string>;
  diff: { name: string; from: string | number | null; to: string | number | null }[];
  reason: string | null;
  actor: string;
  rollbackOf: number | null;
  createdAt: string;
  state: string;
  step: string | null;
  error: string | null;
}

export interface ProposalView {
  cluster: string;
  dryRun: boolean;
  revision: number | null;
  plan: ConfigPlan;
  warnings?: string[];
}

export interface HostView {
  name: string;
  address: string;
  zone: string;
  state: string;
  local: boolean;
  capacity: { memoryMb: number; diskGb: number; slots: number };
  used: { instances: number; memoryMb: number; diskGb: number };
  leaseAgeMs: number | null;
}

export interface FlagView {
  key: string;
  type: string;
  variants: string[] | null;
  default: boolean | string;
  kind: string;
  expires: string;
  description: string;
  rules: FlagRuleView[];
}

export interface FlagRuleView {
  level: string;
  target: string;
  value: boolean | string;
  percent: number | null;
  reason: string;
  setBy: string;
  setAt: string;
}

export interface FlagDetail extends FlagView {
  /** The audit, newest first: old and new values are the rules as they were (null: none). */
  changes: { at: string; scope: string; actor: string; oldValue: unknown; newValue: unknown; reason: string }[];
}

export interface RodView {
  name: string;
  unit: string;
  min: number;
  max: number;
  default: number;
  description: string;
  value: number;
  source: string;
  updatedAt: string | null;
  updatedBy: string | null;
}

export interface RodDetail extends RodView {
  changes: { at: string; scope: string; actor: string; oldValue: number | null; newValue: number | null; reason: string }[];
}

export interface FreezeDetail {
  frozen: boolean;
  since: string | null;
  actor: string | null;
  reason: string | null;
  history: { at: string; frozen: boolean; actor: string; reason: string }[];
}
