import pg from 'pg';
import type { Logger } from 'pino';
import { InvariantError, assert } from '../lib/assert.js';
import { runWithAbortSignal } from '../lib/abort.js';
import type { Clock, Random } from '../lib/clock.js';
import type { EventCode } from '../lib/event-codes.js';
import { type FailureKind, TransientError, classifyFailure } from '../lib/failure.js';
import { inTransaction, isStoreUnavailable, type Pool } from '../store/pool.js';
import { backoffMs } from './backoff.js';
import {
  type Lane,
  type MachineData,
  type MachineDefinition,
  type Outcome,
  doneLabel,
  failedLabel,
  assertStepTimeouts,
  hop,
  isAllowedHop,
  lanes,
  nap,
} from './machine.js';
import {
  type Committed,
  type EventInput,
  type MachineRow,
  type Transition,
  claimDue,
  commitTransition,
  consumeSignals,
  nudgeChannel,
  recordEvent,
  releaseLease,
  releaseLeases,
  renewLease,
  wakeMachines,
} from '../store/machines-table.js';

/** A machine kind bound to the ports its steps use. */
export interface Registration {
  readonly definition: MachineDefinition<string, MachineData, unknown>;
  readonly ports: unknown;
}

export function register<L extends string, D extends MachineData, P>(
  definition: MachineDefinition<L, D, P>,
  ports: P,
): Registration {
  assertStepTimeouts(definition);
  return { definition: definition as unknown as MachineDefinition<string, MachineData, unknown>, ports };
}

export interface EngineOptions {
  readonly pool: Pool;
  /** Connection string for the LISTEN connection that wakes a lane early on a nudge. */
  readonly storeUrl: string;
  readonly owner: string;
  readonly registrations: readonly Registration[];
  readonly clock: Clock;
  readonly random: Random;
  readonly log: Logger;
  readonly tickMs: (lane: Lane) => number;
  readonly leaseMs: number;
  /** Machines one lane claims at a tick, read at each claim (the `engine.claims-per-tick` rod). */
  readonly claimBatchMax?: () => number;
  readonly inFlightMax?: number;
  readonly attemptsMax?: number;
}

/** Hops run back to back under one lease, bounded so one machine cannot starve the rest. */
const hopsPerClaimMax = 16;
const claimBatchMaxDefault = 8;
const inFlightMaxDefault = 6;
/** Failed attempts of one label before the machine lands in `failed`. */
const attemptsMaxDefault = 12;
const stopWaitMsMax = 30_000;
/** After a step's time is up and it is aborted: how long it may take to stop (a child's SIGTERM-to-SIGKILL grace fits). */
const abortSettleMsMax = 10_000;
/** The store's now() and ours differ a little; waking a nap this much late keeps it from being not yet due. */
const napWakeSlackMs = 5;
const listenRetryMs = 5_000;

/**
 * The engine: one ticker per lane claims due machines, runs their steps with a timeout while
 * renewing the lease, and commits each outcome only if the version and lease still match.
 */
export class Engine {
  private readonly kinds = new Map<string, Registration>();
  private readonly inFlight = new Set<Promise<void>>();
  /** The way to end a lane's current sleep early; absent while the lane is awake. */
  private readonly wakeups = new Map<Lane, () => void>();
  private readonly nudged = new Set<Lane>();
  /** The pending wake-up of each lane for a nap shorter than its tick. */
  private readonly napWakeups = new Map<Lane, { readonly atMs: number; readonly timer: NodeJS.Timeout }>();
  private readonly loops: Promise<void>[] = [];
  private listener: pg.Client | null = null;
  private listenRetryAtMs = 0;
  private stopping = false;
  /** False from the first claim that finds the store unreachable until one succeeds: the outage is logged once each way. */
  private storeReachable = true;
  /**
   * Leases this engine still holds on machines whose outcome it could not commit because the store
   * went away, by machine id, with the version they were claimed at. Released when the store is
   * back, so those machines run again at once rather than after the lease runs out. At most one
   * per claimed machine, so bounded by the claim batch and the in-flight limit.
   */
  private readonly strandedLeases = new Map<string, string>();
  /** Claims each lane has made since start (its ticks, nudges and wake-ups); exposed for status, tests and the rods bench. */
  readonly laneTicks = new Map<Lane, number>();
  /** Steps run to completion, per kind and label; exposed for status and tests. */
  readonly stepCounts = new Map<string, number>();

  constructor(private readonly options: EngineOptions) {
    for (const registration of options.registrations) {
      assert(!this.kinds.has(registration.definition.kind), `machine kind ${registration.definition.kind} registered twice`);
      this.kinds.set(registration.definition.kind, registration);
    }
  }

  start(): void {
    for (const lane of lanes) this.loops.push(this.laneLoop(lane));
  }

  async stop(): Promise<void> {
    this.stopping = true;
    for (const pending of this.napWakeups.values()) clearTimeout(pending.timer);
    this.napWakeups.clear();
    for (const finish of [...this.wakeups.values()]) finish();
    await Promise.all(this.loops);
    await Promise.race([Promise.allSettled([...this.inFlight]), delay(stopWaitMsMax)]);
    await releaseLeases(this.options.pool, this.options.owner).catch(() => undefined);
    await this.listener?.end().catch(() => undefined);
    this.listener = null;
  }

  /**
   * Ends every lane's sleep, so the next one lasts the tick `tickMs` gives now: a tick rod lowered
   * from minutes to a second takes effect at once, not after the sleep begun at the old value.
   */
  retick(): void {
    for (const lane of lanes) this.wake(lane);
  }

  /** Claims and starts what is due in one lane; resolves when the claimed steps have finished. */
  async tickOnce(lane: Lane): Promise<number> {
    const started = await this.claimAndStart(lane);
    await Promise.allSettled(started);
    return started.length;
  }

  private async laneLoop(lane: Lane): Promise<void> {
    while (!this.stopping) {
      await this.ensureListening();
      let claimed = 0;
      this.laneTicks.set(lane, (this.laneTicks.get(lane) ?? 0) + 1);
      try {
        await this.releaseStrandedLeases();
        claimed = (await this.claimAndStart(lane)).length;
        this.noteStoreReachable(true, null);
      } catch (error) {
        if (isStoreUnavailable(error)) this.noteStoreReachable(false, error);
        else this.options.log.warn({ lane, err: errorMessage(error) }, 'claim failed; retrying next tick');
      }
      const full = claimed > 0 && claimed >= this.claimLimit();
      if (!full) await this.sleepUntilTickOrNudge(lane);
    }
  }

  /** Logs only changes: an outage is one line when it starts and one when it ends, however many ticks it lasts. */
  private noteStoreReachable(reachable: boolean, error: unknown): void {
    if (reachable === this.storeReachable) return;
    this.storeReachable = reachable;
    if (reachable) this.options.log.info('the cell store answers again; the engine resumes');
    else this.options.log.warn({ err: errorMessage(error) }, 'the cell store is unreachable; the engine waits for it (machines resume where they were)');
  }

  private async releaseStrandedLeases(): Promise<void> {
    for (const [id, version] of [...this.strandedLeases]) {
      await releaseLease(this.options.pool, id, version, this.options.owner);
      this.strandedLeases.delete(id);
    }
  }

  private claimLimit(): number {
    const inFlightMax = this.options.inFlightMax ?? inFlightMaxDefault;
    return Math.max(0, Math.min(this.options.claimBatchMax?.() ?? claimBatchMaxDefault, inFlightMax - this.inFlight.size));
  }

  private async claimAndStart(lane: Lane): Promise<Promise<void>[]> {
    const limit = this.claimLimit();
    if (limit === 0) return [];
    const rows = await claimDue(this.options.pool, lane, this.options.owner, this.options.leaseMs, limit, [...this.kinds.keys()]);
    return rows.map(({ signals, ...row }) => {
      const run = this.runClaimed(row, new Set(signals)).catch((error: unknown) => {
        // A store outage is logged once by the lane loop; the machine's lease is released when it is back.
        if (!isStoreUnavailable(error)) this.options.log.error({ machine: row.id, err: errorMessage(error) }, 'engine fault while running a machine');
      });
      const tracked = run.finally(() => this.inFlight.delete(tracked));
      this.inFlight.add(tracked);
      return tracked;
    });
  }

  /**
   * A nap shorter than the lane's tick is resumed when it ends, not at the next tick: the lane is
   * woken then. One timer per lane, the earliest wanted, so the timers are bounded by the lanes.
   */
  private wakeLaneAfter(lane: Lane, ms: number): void {
    if (ms >= this.options.tickMs(lane) || this.stopping) return;
    const atMs = this.options.clock.nowMs() + ms;
    const pending = this.napWakeups.get(lane);
    if (pending !== undefined && pending.atMs <= atMs) return;
    if (pending !== undefined) clearTimeout(pending.timer);
    // A little after the nap's end, so the machine is due when the lane claims.
    const timer = setTimeout(() => {
      this.napWakeups.delete(lane);
      this.wake(lane);
    }, ms + napWakeSlackMs);
    timer.unref();
    this.napWakeups.set(lane, { atMs, timer });
  }

  /** A nudge that arrives while the lane is claiming is kept, so the next sleep ends at once. */
  private wake(lane: Lane): void {
    const sleeping = this.wakeups.get(lane);
    if (sleeping === undefined) this.nudged.add(lane);
    else sleeping();
  }

  private sleepUntilTickOrNudge(lane: Lane): Promise<void> {
    if (this.nudged.delete(lane) || this.stopping) return Promise.resolve();
    return new Promise((resolve) => {
      const finish = (): void => {
        clearTimeout(timer);
        this.wakeups.delete(lane);
        resolve();
      };
      const timer = setTimeout(finish, this.options.tickMs(lane));
      this.wakeups.set(lane, finish);
    });
  }

  /** LISTEN lets a nudge wake a lane at once; without it the engine still works, on tick time. */
  private async ensureListening(): Promise<void> {
    if (this.listener !== null || this.stopping || this.options.clock.nowMs() < this.listenRetryAtMs) return;
    this.listenRetryAtMs = this.options.clock.nowMs() + listenRetryMs;
    const client = new pg.Client({ connectionString: this.options.storeUrl, connectionTimeoutMillis: 2_000 });
    try {
      await client.connect();
      client.on('notification', (message) => {
        if (lanes.includes(message.payload as Lane)) this.wake(message.payload as Lane);
      });
      client.on('error', () => {
        this.listener = null;
        client.end().catch(() => undefined);
      });
      await client.query(`listen ${nudgeChannel}`);
      this.listener = client;
    } catch {
      await client.end().catch(() => undefined);
    }
  }

  /** Runs steps for one claimed machine until it naps, finishes, fails or loses its lease. */
  private async runClaimed(claimed: MachineRow, signals: Set<string>): Promise<void> {
    const registration = this.kinds.get(claimed.kind);
    assert(registration !== undefined, `no machine kind ${claimed.kind} registered (machine ${claimed.id})`);
    let row: MachineRow | null = claimed.finished ? await this.resume(registration, claimed, signals) : claimed;
    for (let hops = 0; row !== null && hops < hopsPerClaimMax; hops += 1) {
      const outcome = await this.runStep(registration, row, signals);
      const transition = this.transitionFor(registration, row, outcome, hops + 1 < hopsPerClaimMax);
      row = await this.commitAndContinue(row, outcome, transition, signals);
    }
  }

  /**
   * A finished machine is claimed only for a signal raised on it. It resumes where its kind's
   * `resumeOn` and transition table allow; otherwise the signals are dropped and it stays finished.
   */
  private async resume(registration: Registration, row: MachineRow, signals: Set<string>): Promise<MachineRow | null> {
    const outcome = resumeOutcome(registration.definition, row, signals);
    if (outcome !== null) return this.commitAndContinue(row, outcome, this.transitionFor(registration, row, outcome, true), signals);
    this.options.log.info({ machine: row.id, label: row.label, signals: [...signals] }, 'a finished machine does not act on these requests; dropped');
    const settle: Transition = { label: row.label, lane: row.lane, nextTickInMs: null, attempt: row.attempt, data: row.data, lastError: row.last_error, keepLease: false, leaseMs: this.options.leaseMs };
    await this.commitAndContinue(row, nap(0, { consume: [...signals] }), settle, signals);
    return null;
  }

  /** Commits one outcome; returns the row to run next under the same lease, or null when this claim ends. */
  private async commitAndContinue(row: MachineRow, outcome: Outcome<string, MachineData> | Error, transition: Transition, signals: Set<string>): Promise<MachineRow | null> {
    let committed: Committed | null;
    try {
      committed = await this.commit(row, outcome, transition, signals);
    } catch (error) {
      // The step's work is not recorded; steps are idempotent, so the machine simply runs it again.
      if (isStoreUnavailable(error)) this.strandedLeases.set(row.id, row.version);
      throw error;
    }
    if (committed === null) {
      this.options.log.warn({ machine: row.id, label: row.label }, 'lost the lease; outcome discarded');
      return null;
    }
    if (!transition.keepLease) {
      // Woken while its step ran: the wake's notification came while this engine still held the
      // lease, so the lane could not claim it then; it is due now, and the lane is woken for it.
      if (transition.nextTickInMs !== null) this.wakeLaneAfter(transition.lane, committed.dueNow ? 0 : transition.nextTickInMs);
      return null;
    }
    return { ...row, label: transition.label, lane: transition.lane, attempt: 0, version: committed.version, data: transition.data, last_error: null, finished: false };
  }

  private async runStep(registration: Registration, row: MachineRow, signals: Set<string>): Promise<Outcome<string, MachineData> | Error> {
    const { definition, ports } = registration;
    const step = definition.steps[row.label];
    if (step === undefined) return new InvariantError(`machine ${row.id} of kind ${row.kind} is in unknown label ${row.label}`);
    const timeoutMs = definition.stepTimeoutMs(row.label);
    const heartbeat = setInterval(() => {
      renewLease(this.options.pool, row.id, row.version, this.options.owner, this.options.leaseMs).catch(() => undefined);
    }, Math.max(100, Math.floor(this.options.leaseMs / 3)));
    try {
      const context = {
        machine: {
          id: row.id,
          kind: row.kind,
          entityId: row.entity_id,
          clusterId: row.cluster_id,
          label: row.label,
          attempt: row.attempt,
          data: row.data,
        },
        signals,
        ports,
      };
      const outcome = await runBounded((abort) => step({ ...context, abort }), timeoutMs, `step ${row.kind}.${row.label} exceeded ${timeoutMs} ms`);
      this.stepCounts.set(`${row.kind}.${row.label}`, (this.stepCounts.get(`${row.kind}.${row.label}`) ?? 0) + 1);
      return outcome;
    } catch (error) {
      return error instanceof Error ? error : new Error(String(error));
    } finally {
      // Only now: the lease is held (and renewed) until the step has really stopped.
      clearInterval(heartbeat);
    }
  }

  private transitionFor(
    registration: Registration,
    row: MachineRow,
    outcome: Outcome<string, MachineData> | Error,
    mayKeepLease: boolean,
  ): Transition {
    const { definition } = registration;
    const base = { lane: row.lane, attempt: 0, data: row.data, lastError: null, keepLease: false, leaseMs: this.options.leaseMs };
    if (outcome instanceof Error) return this.transitionForError(row, outcome);
    switch (outcome.type) {
      case 'hop': {
        if (!isAllowedHop(definition, row.label, outcome.label)) {
          return this.transitionForError(row, new InvariantError(`hop ${row.kind}: ${row.label} -> ${outcome.label} is not in the transition table`));
        }
        const data = outcome.data ?? row.data;
        return { ...base, label: outcome.label, lane: definition.lane(outcome.label), nextTickInMs: 0, data, keepLease: mayKeepLease };
      }
      case 'nap':
        return { ...base, label: row.label, nextTickInMs: outcome.ms, data: outcome.data ?? row.data };
      case 'done':
        return { ...base, label: row.label, nextTickInMs: null, data: outcome.data ?? row.data };
      case 'fail':
        return { ...base, label: failedLabel, nextTickInMs: null, lastError: outcome.reason };
    }
  }

  /**
   * By the kind of failure (lib/failure.ts): a bug and a permanent failure fail at once, with the
   * reason; a transient one is retried with capped, jittered backoff, a bounded number of times.
   */
  private transitionForError(row: MachineRow, error: Error): Transition {
    const attempt = row.attempt + 1;
    const attemptsMax = this.options.attemptsMax ?? attemptsMaxDefault;
    const base = { lane: row.lane, data: row.data, keepLease: false, leaseMs: this.options.leaseMs, lastError: error.message };
    const kind = classifyFailure(error);
    if (kind !== 'transient' || attempt >= attemptsMax) {
      const reason = kind === 'invariant' ? `bug: ${error.message}` : kind === 'permanent' ? error.message : `gave up after ${attempt} attempts: ${error.message}`;
      this.options.log.error({ machine: row.id, label: row.label, err: error.message }, 'machine failed');
      return { ...base, label: failedLabel, nextTickInMs: null, attempt, lastError: reason };
    }
    // A store outage is logged once by the lane loop, not once per machine it interrupts.
    if (!isStoreUnavailable(error)) this.options.log.warn({ machine: row.id, label: row.label, attempt, err: error.message }, 'step failed; backing off');
    return { ...base, label: row.label, nextTickInMs: backoffMs(attempt, this.options.random), attempt };
  }

  private async commit(
    row: MachineRow,
    outcome: Outcome<string, MachineData> | Error,
    transition: Transition,
    signals: Set<string>,
  ): Promise<Committed | null> {
    const consumed = outcome instanceof Error || outcome.type === 'fail' ? [] : (outcome.consume ?? []);
    const wake = outcome instanceof Error || outcome.type === 'fail' ? [] : (outcome.wake ?? []);
    const event = eventFor(row, outcome, transition);
    // A nap that lets the lease go must not sleep through a signal raised while its step ran.
    const seen = !transition.keepLease && transition.nextTickInMs !== null ? [...signals] : null;
    // Most commits are a running machine's nap: the one statement is its own transaction.
    if (consumed.length === 0 && wake.length === 0 && event === null) return commitTransition(this.options.pool, row.id, row.version, this.options.owner, transition, seen);
    return inTransaction(this.options.pool, async (client) => {
      const committed = await commitTransition(client, row.id, row.version, this.options.owner, transition, seen);
      if (committed === null) return null;
      await consumeSignals(client, row.id, consumed);
      for (const name of consumed) signals.delete(name);
      await wakeMachines(client, wake);
      if (event !== null) await recordEvent(client, event);
      return committed;
    });
  }
}

/** The first pending request the kind acts on from the label the machine finished at, as a hop. */
function resumeOutcome(definition: MachineDefinition<string, MachineData, unknown>, row: MachineRow, signals: ReadonlySet<string>): Outcome<string, MachineData> | null {
  for (const name of [...signals].sort()) {
    const target = definition.resumeOn?.[name];
    if (target === undefined || !isAllowedHop(definition, row.label, target)) continue;
    return hop(target, { consume: [name], reason: `${name} requested while ${row.label}`, code: 'resumed_by_signal' });
  }
  return null;
}

const failureEventCodes: Readonly<Record<FailureKind, EventCode>> = { transient: 'gave_up', permanent: 'failed_permanently', invariant: 'bug' };

function eventFor(row: MachineRow, outcome: Outcome<string, MachineData> | Error, transition: Transition): EventInput | null {
  const common = { machineId: row.id, kind: row.kind, entityId: row.entity_id, clusterId: row.cluster_id, from: row.label };
  if (outcome instanceof Error) {
    // Retries are visible on the machine (attempt, last_error); only giving up is an event.
    if (transition.label !== failedLabel) return null;
    return { ...common, to: failedLabel, reason: transition.lastError ?? '', code: failureEventCodes[classifyFailure(outcome)] };
  }
  switch (outcome.type) {
    case 'hop':
      return { ...common, to: outcome.label, reason: outcome.reason ?? '', code: outcome.code ?? null };
    case 'done':
      return { ...common, to: doneLabel, reason: outcome.reason ?? '', code: outcome.code ?? null };
    case 'fail':
      return { ...common, to: failedLabel, reason: outcome.reason, code: outcome.code };
    case 'nap':
      // A nap with a reason is a change worth a line in the timeline (e.g. durability dropped to async).
      return outcome.reason === undefined ? null : { ...common, to: row.label, reason: outcome.reason, code: outcome.code };
  }
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * Runs a step with its abort signal in scope (lib/abort.ts). When its time is up the signal is
 * aborted, which ends its waits, connections and child processes; the step is then awaited (up to
 * abortSettleMsMax more) so that its retry never starts while it still runs. A step that ignores
 * its signal past that is reported, and its lease then expires with nobody renewing it.
 */
async function runBounded<T>(step: (abort: AbortSignal) => Promise<T>, timeoutMs: number, message: string): Promise<T> {
  const controller = new AbortController();
  const work = runWithAbortSignal(controller.signal, () => step(controller.signal));
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs);
  });
  try {
    const first = await Promise.race([work, timeout]);
    if (first !== 'timeout') return first;
  } finally {
    clearTimeout(timer);
  }
  const timedOut = new TransientError(message);
  controller.abort(timedOut);
  const settled = await Promise.race([work.then(() => true, () => true), delay(abortSettleMsMax).then(() => false)]);
  if (!settled) throw new Error(`${message}, and it did not stop within ${abortSettleMsMax} ms of being aborted`);
  throw timedOut;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
