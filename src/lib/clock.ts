import { randomInt } from 'node:crypto';
import { currentAbortSignal } from './abort.js';

/** Time and randomness as ports, so machine code stays deterministic under a simulator. */
export interface Clock {
  nowMs(): number;
}

export interface Random {
  /** A float in [0, 1). */
  next(): number;
}

export const systemClock: Clock = { nowMs: () => Date.now() };

const randomResolution = 2 ** 31;
export const systemRandom: Random = { next: () => randomInt(randomResolution) / randomResolution };

/** Waits `ms`; inside a step, ends early with the abort reason when the step's time is up. */
export function sleep(ms: number): Promise<void> {
  const signal = currentAbortSignal();
  if (signal === undefined) return new Promise((resolve) => setTimeout(resolve, ms));
  signal.throwIfAborted();
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason)));
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
