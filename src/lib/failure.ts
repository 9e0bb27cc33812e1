import { InvariantError } from './assert.js';

/**
 * The three kinds of failure (STYLE.md §4), for what the engine does with a step that threw:
 * - `transient`: the world may look different soon (a connection refused, a server shutting down,
 *   a serialization failure, a timeout): retried with capped, jittered backoff, a bounded number of times;
 * - `permanent`: retrying cannot help (bad data on disk, a privilege Cellar lacks, a file system
 *   that is read-only): the machine fails at once, with the reason;
 * - `invariant`: a bug in Cellar (`assert`, a hop outside the table): fails at once, says "bug".
 * What is not recognised counts as transient: the attempts bound still ends it visibly.
 */
export const failureKinds = ['transient', 'permanent', 'invariant'] as const;
export type FailureKind = (typeof failureKinds)[number];

/** Thrown by code that knows retrying is pointless; the message is the reason a user sees. */
export class PermanentError extends Error {
  override name = 'PermanentError';
}

/** Thrown by code that knows the condition is temporary (e.g. a status that has not caught up). */
export class TransientError extends Error {
  override name = 'TransientError';
}

/**
 * The instance's host has sent no heartbeat for longer than its lease: nothing can be done there
 * until it comes back. Machines act on it (a primary is failed away from once the lease has
 * certainly expired; a replica waits, then is replaced) rather than retrying blindly.
 */
export class HostUnreachableError extends TransientError {
  override name = 'HostUnreachableError';

  constructor(
    readonly hostId: string,
    readonly silentMs: number | null,
  ) {
    super(`host ${hostId} is unreachable: ${silentMs === null ? 'no heartbeat since the control plane started' : `no heartbeat for ${Math.round(silentMs)} ms`}`);
  }
}

/**
 * SQLSTATEs by what retrying can do (Postgres appendix A). Classes first, then exact codes that
 * differ from their class. Anything not listed is transient, bounded by the attempts.
 */
export const sqlStateFailures: Readonly<Record<string, FailureKind>> = {
  // Class 08: connection exception; class 53: insufficient resources; 57P01-57P03: shutdown, crash, starting up.
  '08': 'transient',
  '53': 'transient',
  '57P01': 'transient',
  '57P02': 'transient',
  '57P03': 'transient',
  // Serialization failure, deadlock, lock not available, object in use: another transaction's doing.
  '40001': 'transient',
  '40P01': 'transient',
  '55P03': 'transient',
  '55006': 'transient',
  // Class 22 data exception, 42 syntax or access rule, 0A feature not supported: the same statement
  // fails the same way again. (Class 23 is not here: a unique violation is how two engines racing
  // for the same port or row meet, and the retry finds the winner's row.)
  '22': 'permanent',
  '42': 'permanent',
  '0A': 'permanent',
  // Data corrupted, index corrupted.
  XX001: 'permanent',
  XX002: 'permanent',
  // Class 28 (authorization) is not here either: a restored primary refuses its cluster's password
  // until its start has set it, moments later.
};

/** System errors (errno codes) by what retrying can do. */
export const systemErrorFailures: Readonly<Record<string, FailureKind>> = {
  ECONNREFUSED: 'transient',
  ECONNRESET: 'transient',
  ETIMEDOUT: 'transient',
  EPIPE: 'transient',
  EHOSTUNREACH: 'transient',
  ENETUNREACH: 'transient',
  EAI_AGAIN: 'transient',
  EAGAIN: 'transient',
  EBUSY: 'transient',
  EMFILE: 'transient',
  ENFILE: 'transient',
  ENOSPC: 'transient',
  EACCES: 'permanent',
  EPERM: 'permanent',
  EROFS: 'permanent',
  ELOOP: 'permanent',
  ENAMETOOLONG: 'permanent',
};

/**
 * Constraints that state an invariant of Cellar (DESIGN.md §8): a violation is a bug to stop at,
 * not a race to retry like other unique violations.
 */
export const invariantConstraints: ReadonlySet<string> = new Set(['instances_one_routed_primary']);

interface CodedError {
  readonly code?: unknown;
  readonly constraint?: unknown;
  readonly cause?: unknown;
}

/** What kind of failure an error is: by its class, then its SQLSTATE or errno (its cause's too). */
export function classifyFailure(error: unknown, depth = 0): FailureKind {
  if (error instanceof InvariantError) return 'invariant';
  if (error instanceof PermanentError) return 'permanent';
  if (error instanceof TransientError) return 'transient';
  const code = (error as CodedError | undefined)?.code;
  const constraint = (error as CodedError | undefined)?.constraint;
  if (code === '23505' && typeof constraint === 'string' && invariantConstraints.has(constraint)) return 'invariant';
  if (typeof code === 'string') {
    // errno first: `EROFS` has a SQLSTATE's shape, but no SQLSTATE class starts with E.
    const known = systemErrorFailures[code] ?? (/^[0-9A-Z]{5}$/.test(code) ? (sqlStateFailures[code] ?? sqlStateFailures[code.slice(0, 2)]) : undefined);
    if (known !== undefined) return known;
  }
  const cause = (error as CodedError | undefined)?.cause;
  if (cause !== undefined && depth < 4) return classifyFailure(cause, depth + 1);
  return 'transient';
}
