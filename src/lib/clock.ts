import { randomInt } from 'node:crypto';

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

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
