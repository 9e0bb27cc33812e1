import type { Random } from '../lib/clock.js';

export const backoffBaseMs = 250;
export const backoffCapMs = 30_000;

/**
 * Exponential backoff, capped, with "equal jitter": half the delay is fixed so retries never come
 * back instantly, half is random so engines retrying the same fault do not march in step.
 */
export function backoffMs(attempt: number, random: Random): number {
  const exponential = Math.min(backoffCapMs, backoffBaseMs * 2 ** Math.min(attempt, 20));
  return Math.round(exponential / 2 + (exponential / 2) * random.next());
}
