import { assert } from '../lib/assert.js';
import { type Lane, lanes } from '../store/machines-table.js';
import type { EventCode } from '../lib/event-codes.js';

/**
 * A machine kind is a typed transition table plus one step function per label (DESIGN.md §2).
 * Steps return values instead of throwing for control flow; the engine turns them into durable
 * transitions. Steps reach time, randomness, the store and the data plane only through `ports`.
 */

// The lanes are the machines table's (its check constraint), so the store defines them.
export { type Lane, lanes };

/** The label every kind may land in after a bug or too many failed attempts. */
export const failedLabel = 'failed';
/** Recorded as the `to` of the last event when a machine finishes. */
export const doneLabel = 'done';

export type MachineData = Readonly<Record<string, unknown>>;

interface OutcomeEffects<D> {
  /** Replaces the machine's data (steps keep small facts there: when a wait began, a target). */
  readonly data?: D;
  /** Signals this step has acted on; removed in the same transaction as the outcome. */
  readonly consume?: readonly string[];
  /** Machines to make due now, in the same transaction as this outcome, so they see its effect. */
  readonly wake?: readonly MachineRef[];
}

/**
 * An event's reason (why, for people; never a secret) comes with its code (what happened, stable
 * for programs to decide by): one is never given without the other.
 */
export type Explained = { readonly reason?: undefined; readonly code?: undefined } | { readonly reason: string; readonly code: EventCode };

type OutcomeOptions<D> = OutcomeEffects<D> & Explained;

export interface MachineRef {
  readonly kind: string;
  readonly entityId: string;
}

export type Outcome<L extends string, D> =
  | ({ readonly type: 'hop'; readonly label: L } & OutcomeOptions<D>)
  | ({ readonly type: 'nap'; readonly ms: number } & OutcomeOptions<D>)
  | ({ readonly type: 'done' } & OutcomeOptions<D>)
  | { readonly type: 'fail'; readonly reason: string; readonly code: EventCode };

export function hop<L extends string, D>(label: L, options: OutcomeOptions<D> = {}): Outcome<L, D> {
  return { type: 'hop', label, ...options };
}

export function nap<L extends string, D>(ms: number, options: OutcomeOptions<D> = {}): Outcome<L, D> {
  assert(Number.isFinite(ms) && ms >= 0, `nap needs a finite, non-negative duration, got ${ms}`);
  return { type: 'nap', ms, ...options };
}

export function done<L extends string, D>(options: OutcomeOptions<D> = {}): Outcome<L, D> {
  return { type: 'done', ...options };
}

export function fail<L extends string, D>(reason: string, code: EventCode): Outcome<L, D> {
  return { type: 'fail', reason, code };
}

export interface MachineView<L extends string, D> {
  readonly id: string;
  readonly kind: string;
  readonly entityId: string;
  readonly clusterId: string | null;
  readonly label: L;
  readonly attempt: number;
  readonly data: D;
}

export interface StepContext<L extends string, D, P> {
  readonly machine: MachineView<L, D>;
  /** Names of the signals raised on this machine and not yet consumed. */
  readonly signals: ReadonlySet<string>;
  readonly ports: P;
  /**
   * Aborted when the step's time is up. The engine also carries it (lib/abort.ts) to the data
   * plane's waits, connections and child processes, so a step that ran out of time stops.
   */
  readonly abort: AbortSignal;
}

export type Step<L extends string, D, P> = (context: StepContext<L, D, P>) => Promise<Outcome<L, D>>;

export interface MachineDefinition<L extends string, D extends MachineData, P> {
  readonly kind: string;
  readonly initial: L;
  /**
   * Every hop a step may return, per label. A hop outside the table is a bug. The optional
   * `failed` row lists where a signal may bring a failed machine back to (see `resumeOn`).
   */
  readonly transitions: { readonly [From in L]: readonly L[] } & { readonly [failedLabel]?: readonly L[] };
  /**
   * Requests a finished machine (done, or failed) acts on: signal name to the label it resumes
   * at. The engine makes that hop only where the table allows it from the label the machine
   * finished at; any other signal raised on a finished machine is dropped.
   */
  readonly resumeOn?: { readonly [signal: string]: L };
  readonly steps: { readonly [From in L]: Step<L, D, P> };
  readonly lane: (label: L) => Lane;
  /** Bound on one step; long data-plane work (a base backup) gets its own, larger bound. */
  readonly stepTimeoutMs: (label: L) => number;
  /**
   * The longest wait the step of a label may make inside it (the data-plane bounds it relies on,
   * e.g. a promote's or a stop's). Checked at registration: a step timeout shorter than a limit
   * inside it would cut that wait short and retry it while it still runs.
   */
  readonly innerLimitMs?: (label: L) => number;
}

/** Headroom a step timeout keeps above the longest wait inside it (the step's own queries and bookkeeping). */
export const stepTimeoutMarginMs = 10_000;

/** Every label's step timeout covers the limits inside it with the margin; a definition that does not is a bug. */
export function assertStepTimeouts<L extends string, D extends MachineData, P>(definition: MachineDefinition<L, D, P>): void {
  for (const label of Object.keys(definition.transitions) as L[]) {
    const timeoutMs = definition.stepTimeoutMs(label);
    const innerMs = definition.innerLimitMs?.(label) ?? 0;
    assert(Number.isFinite(timeoutMs) && timeoutMs > 0, `${definition.kind}.${label}: step timeout ${timeoutMs} ms`);
    assert(
      innerMs === 0 || timeoutMs >= innerMs + stepTimeoutMarginMs,
      `${definition.kind}.${label}: step timeout ${timeoutMs} ms does not cover the ${innerMs} ms wait inside it plus ${stepTimeoutMarginMs} ms`,
    );
  }
}

export function isAllowedHop<L extends string, D extends MachineData, P>(
  definition: MachineDefinition<L, D, P>,
  from: L | typeof failedLabel,
  to: L,
): boolean {
  const rows: { readonly [from: string]: readonly L[] | undefined } = definition.transitions;
  return rows[from]?.includes(to) ?? false;
}

/** Renders the transition table as a Mermaid state diagram (docs and the console use it). */
export function toMermaid<L extends string, D extends MachineData, P>(definition: MachineDefinition<L, D, P>): string {
  const lines = ['stateDiagram-v2', `  [*] --> ${definition.initial}`];
  const rows: { readonly [from: string]: readonly L[] | undefined } = definition.transitions;
  for (const [from, targets] of Object.entries(rows)) {
    for (const to of targets ?? []) lines.push(`  ${from} --> ${to}`);
  }
  return lines.join('\n');
}
