import type { Socket } from 'node:net';
import { assert } from '../lib/assert.js';

/**
 * Token buckets for the proxy's throttles. Time comes in as an argument so the arithmetic is
 * testable without clocks; the proxy passes performance.now().
 */
export class TokenBucket {
  private tokens: number;
  private lastMs: number;

  /** `ratePerSecond` tokens are added each second, up to `burst`. */
  constructor(
    private ratePerSecond: number,
    private burst: number,
    nowMs: number,
  ) {
    assert(ratePerSecond > 0 && burst > 0, `a token bucket needs a positive rate and burst (${ratePerSecond}, ${burst})`);
    this.tokens = burst;
    this.lastMs = nowMs;
  }

  get rate(): number {
    return this.ratePerSecond;
  }

  /**
   * A new rate (a control rod changed): what accrued until now counts at the old rate, what comes
   * after at the new one; a debt stays owed, so a lowered rate cannot be escaped by a burst.
   */
  setRate(ratePerSecond: number, burst: number, nowMs: number): void {
    assert(ratePerSecond > 0 && burst > 0, `a token bucket needs a positive rate and burst (${ratePerSecond}, ${burst})`);
    this.refill(nowMs);
    this.ratePerSecond = ratePerSecond;
    this.burst = burst;
    this.tokens = Math.min(this.tokens, burst);
  }

  private refill(nowMs: number): void {
    this.tokens = Math.min(this.burst, this.tokens + ((nowMs - this.lastMs) / 1000) * this.ratePerSecond);
    this.lastMs = nowMs;
  }

  /** Takes one token if there is one. */
  tryTake(nowMs: number): boolean {
    this.refill(nowMs);
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** Milliseconds until a token is there (0 if now). */
  waitMs(nowMs: number): number {
    this.refill(nowMs);
    return this.tokens >= 1 ? 0 : ((1 - this.tokens) / this.ratePerSecond) * 1000;
  }

  /**
   * Takes `amount` tokens even if that goes into debt, and returns how long the caller must wait
   * before sending more: bytes already read are forwarded, the source is paused to pay the debt.
   */
  reserve(amount: number, nowMs: number): number {
    this.refill(nowMs);
    this.tokens -= amount;
    return this.tokens >= 0 ? 0 : (-this.tokens / this.ratePerSecond) * 1000;
  }
}

export interface RelayOptions {
  /** Read at each chunk, so a changed limit paces a running transfer; null: no bandwidth limit. */
  readonly bucket: () => TokenBucket | null;
  /** Called with each chunk's size, for the byte metrics. */
  readonly count: (bytes: number) => void;
  readonly onThrottle: () => void;
  /** Rewrites what passes (a full cluster's errors); absent: bytes pass as they are. */
  readonly transform?: (chunk: Buffer) => Buffer;
  /** Wraps the data and drain handlers so that a throw ends this pair, not the process. */
  readonly guard: <Arguments extends unknown[]>(handler: (...args: Arguments) => void) => (...args: Arguments) => void;
}

/**
 * Relays `from` into `to` with one data handler (lighter than pipe plus a counting listener):
 * backpressure from `to`, and, with a bucket, pacing: when the bucket is in debt the source is
 * paused until it is paid, so the average rate is the bucket's rate.
 */
export function relayBytes(from: Socket, to: Socket, options: RelayOptions): void {
  const { bucket, count, onThrottle, guard, transform } = options;
  const resume = guard((): void => void from.resume());
  const onData = guard((chunk: Buffer): void => {
    count(chunk.length);
    const out = transform === undefined ? chunk : transform(chunk);
    const writable = out.length === 0 ? !to.writableNeedDrain : to.write(out);
    const paced = bucket();
    const waitMs = paced === null ? 0 : paced.reserve(chunk.length, performance.now());
    if (waitMs > 0) {
      onThrottle();
      from.pause();
      setTimeout(() => (to.writableNeedDrain ? to.once('drain', resume) : resume()), waitMs);
    } else if (!writable) {
      from.pause();
      to.once('drain', resume);
    }
  });
  from.on('data', onData);
  from.once('end', () => to.end());
  // The source may have been paused while the proxy connected the other side.
  from.resume();
}
