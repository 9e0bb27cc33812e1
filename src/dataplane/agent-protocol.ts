import type { BoundedOperation, HostUsage, InstanceStatus } from './dataplane.js';

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
/** Far above a real token (about 130 characters); a longer string is not one. */
export const joinTokenLengthMax = 256;

export interface JoinTokenParts {
  readonly hostId: string;
  readonly secret: string;
  /** SHA-256 of the cell CA certificate's DER, lower-case hex: the agent trusts only that CA. */
  readonly caSha256: string;
}

export function formatJoinToken(parts: JoinTokenParts): string {
  return [joinTokenPrefix, parts.hostId, parts.secret, parts.caSha256].join('.');
}

/** The token's parts, or what is wrong with it (a sentence naming the part). */
export function parseJoinToken(token: string): JoinTokenParts | { readonly problem: string } {
  if (token.length > joinTokenLengthMax) return { problem: `the join token is ${token.length} characters long, more than ${joinTokenLengthMax}` };
  const parts = token.trim().split('.');
  const shape = `${joinTokenPrefix}.<hostId>.<secret>.<CA sha256>`;
  if (parts.length !== 4 || parts[0] !== joinTokenPrefix) return { problem: `the join token must look like ${shape} (as \`cellar hosts add\` printed it)` };
  const [, hostId = '', secret = '', caSha256 = ''] = parts;
  if (!/^[a-z]{1,8}_[a-z0-9]{1,40}$/.test(hostId)) return { problem: `the join token's host id "${hostId}" is not a host id` };
  if (!/^[A-Za-z0-9_-]{16,128}$/.test(secret)) return { problem: "the join token's secret is not 16-128 base64url characters" };
  if (!/^[0-9a-f]{64}$/.test(caSha256)) return { problem: "the join token's CA fingerprint is not 64 lower-case hex digits" };
  return { hostId, secret, caSha256 };
}

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
  /** The host's filesystems, measured since the last answered beat (once per usage interval, not every beat). */
  readonly usage?: HostUsage;
}

export interface DesiredInstance {
  readonly instanceId: string;
  readonly role: 'primary' | 'replica';
  /** A primary with cluster members on other hosts: fenced when the lease runs out. */
  readonly fenceOnLeaseLoss: boolean;
  /**
   * Out of the routes: an old primary failed away from, until its rejoin. The agent never starts
   * it on its own (its data directory may still be a primary's); only the control plane's rejoin does.
   */
  readonly fenced: boolean;
  /**
   * A primary fenced on lease loss: the agents of its cluster's other hosts. When the lease runs
   * out the agent asks them (failsafe) before it lets the guard fence.
   */
  readonly peers?: readonly AgentAddress[];
}

export interface AgentAddress {
  readonly address: string;
  readonly agentPort: number;
}

export interface HeartbeatResponse {
  /** The lease runs this long from when the agent sent the heartbeat. */
  readonly leaseMs: number;
  /** The control plane's clock margin: a promote needs the lease held without a break for lease + margin. */
  readonly clockMarginMs?: number;
  readonly heartbeatMs: number;
  readonly instances: readonly DesiredInstance[];
}

/** The agent's answer to a peer asking about its lease (failsafe). */
export interface LeaseAnswer {
  readonly hostId: string;
  /** Holds a lease the control plane granted (never one the failsafe extended). */
  readonly leased: boolean;
  /** Since the heartbeat that brought its last grant was sent; null: never granted since the agent started. */
  readonly silentMs: number | null;
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
