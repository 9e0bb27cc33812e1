import { type MachineDefinition, type Outcome, type StepContext, done, hop, nap } from '../engine/machine.js';

/**
 * A database host of the cell (docs/HOSTS.md, "Hosts as machines"). The API moves it by signals:
 * the agent listener raises `joined` when the host's agent joins with its token, `hosts remove`
 * raises `remove`. Draining, drained and lost come with the drain and lease work.
 */
export const hostLabels = ['joining', 'active', 'removed'] as const;
export type HostLabel = (typeof hostLabels)[number];
export type HostData = Record<string, unknown>;

export { hostKind } from './ports.js';
import { hostKind } from './ports.js';
/** Raised by the agent listener when the host's agent joined. */
export const joinedSignal = 'joined';
/** Raised by `hosts remove` (the store has already revoked the certificates and marked the row removed). */
export const removeSignal = 'remove';
/** Signals nudge the machine at once; between them it only looks again this often. */
export const hostWatchNapMs = 60_000;
const hostStepTimeoutMs = 30_000;

/** Nothing of the world yet: the store does the work in the transactions that raise the signals. */
export type HostPorts = Record<string, never>;

type Context = StepContext<HostLabel, HostData, HostPorts>;
type Result = Outcome<HostLabel, HostData>;

async function joining(context: Context): Promise<Result> {
  if (context.signals.has(removeSignal)) return removed(context, 'removed before its agent joined');
  if (context.signals.has(joinedSignal)) {
    return hop('active', { consume: [joinedSignal], reason: 'the agent joined with its token and has its certificate', code: 'host_joined' });
  }
  return nap(hostWatchNapMs);
}

async function active(context: Context): Promise<Result> {
  if (context.signals.has(removeSignal)) return removed(context, 'removed: its certificates are revoked');
  // A join signal raised again (a second join is refused by the store) has nothing left to do.
  if (context.signals.has(joinedSignal)) return nap(hostWatchNapMs, { consume: [joinedSignal] });
  return nap(hostWatchNapMs);
}

function removed(context: Context, reason: string): Result {
  const consume = [...context.signals].filter((name) => name === removeSignal || name === joinedSignal);
  return hop('removed', { consume, reason, code: 'host_removed' });
}

async function finish(): Promise<Result> {
  return done();
}

export const hostMachine: MachineDefinition<HostLabel, HostData, HostPorts> = {
  kind: hostKind,
  initial: 'joining',
  transitions: {
    joining: ['active', 'removed'],
    active: ['removed'],
    removed: [],
  },
  steps: { joining, active, removed: finish },
  lane: () => 'normal',
  stepTimeoutMs: () => hostStepTimeoutMs,
};
