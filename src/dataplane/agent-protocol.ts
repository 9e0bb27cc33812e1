import type { BoundedOperation, InstanceStatus } from './dataplane.js';

/**
 * What the control plane and `cellar agent` say to each other (docs/HOSTS.md). Both sides import
 * this file and nothing else of each other. Every message is JSON over mutual TLS.
 */

/** The control plane's agent listener. */
export const agentCaPath = '/v1/agent/ca';
export const agentJoinPath = '/v1/agent/join';
export const agentHeartbeatPath = '/v1/agent/heartbeat';

/** The agent's own listener. */
export const agentOperationPathPrefix = '/v1/ops/';
export const agentLeasePath = '/v1/lease';

/** The common name of the control plane's certificate; agents serve operations to it alone. */
export const controlCommonName = 'cellar-control';

/** `cellar-join.<hostId>.<secret>.<caSha256 hex>`. */
export const joinTokenPrefix = 'cellar-join';

export interface JoinRequest {
  readonly token: string;
  /** PEM certificate signing request made by the agent; its key never leaves the host. */
  readonly csr: string;
}

export interface JoinResponse {
  readonly hostId: string;
  readonly name: string;
  readonly address: string;
  readonly agentPort: number;
  /** PEM: the host's certificate, and the cell CA's. */
  readonly certificate: string;
  readonly ca: string;
}

export interface HeartbeatInstance {
  readonly instanceId: string;
  /** The postmaster process exists (checked at every beat). */
  readonly alive: boolean;
  /** The last full status and how old it is; absent until one was taken. */
  readonly status?: InstanceStatus;
  readonly statusAgeMs?: number;
}

export interface HeartbeatRequest {
  readonly hostId: string;
  /** Every instance with a data directory on the host. */
  readonly instances: readonly HeartbeatInstance[];
  /** The agent's view of its lease when it sent this: ms left, 0 if expired (for metrics and events). */
  readonly leaseLeftMs: number;
}

export interface DesiredInstance {
  readonly instanceId: string;
  readonly role: 'primary' | 'replica';
  /** A primary with cluster members on other hosts: fenced when the lease runs out. */
  readonly fenceOnLeaseLoss: boolean;
}

export interface HeartbeatResponse {
  /** The lease runs this long from when the agent sent the heartbeat. */
  readonly leaseMs: number;
  readonly heartbeatMs: number;
  readonly instances: readonly DesiredInstance[];
}

/** The agent's answer to a peer asking about its lease (failsafe). */
export interface LeaseAnswer {
  readonly hostId: string;
  readonly leased: boolean;
  readonly leftMs: number;
}

export interface OperationRequest {
  readonly args: readonly unknown[];
}

export type OperationResponse = { readonly result: unknown } | { readonly error: AgentError };

export interface AgentError {
  readonly code: string;
  readonly message: string;
  readonly failure: 'transient' | 'permanent' | 'invariant';
}

/** Every DataPlane method an agent serves (all but `versions`, which comes with the heartbeat later). */
export type AgentOperation = BoundedOperation;
