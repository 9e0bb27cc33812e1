import type { Logger } from 'pino';
import type { PoolClient } from 'pg';
import type { Pool } from './pool.js';

/**
 * What a process's live readers of the store share (flags, rods; docs/CONTROLS.md): `read` runs at
 * start, again at once on a notification on `channel` (with one of `payloads`, when given), and at least
 * every `pollMs` (the bound when LISTEN is down). One read at a time; a request during a read gets
 * one more read after it (that read may have begun before the change it is told of), shared by
 * every such request. When a read fails the reader keeps what it last read; the loss and the return
 * of the store are logged once each. The LISTEN holds one of the pool's connections.
 */
export interface LiveReadOptions {
  readonly pool: Pool;
  readonly channel: string;
  /** Only notifications with one of these payloads start a read; absent: any. */
  readonly payloads?: readonly string[];
  readonly pollMs: number;
  readonly log: Logger;
  /** What is read, for the log lines ("flags", "control rods"). */
  readonly what: string;
  readonly read: () => Promise<void>;
}

export class LiveRead {
  private timer: NodeJS.Timeout | null = null;
  private inFlight: Promise<void> | null = null;
  private again: Promise<void> | null = null;
  private listener: PoolClient | null = null;
  private listening: Promise<void> | null = null;
  private healthy = false;
  private lost = false;
  private readCount = 0;

  constructor(private readonly options: LiveReadOptions) {}

  /** Reads once (a failure leaves the reader as it was), then keeps it fresh. */
  async start(): Promise<void> {
    this.timer = setInterval(() => void this.refresh(), this.options.pollMs);
    this.timer.unref();
    await this.refresh();
  }

  async stop(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    await this.listening;
    await this.inFlight;
    this.dropListener();
  }

  get storeReachable(): boolean {
    return this.healthy;
  }

  /** Successful reads so far (tests wait on it). */
  get reads(): number {
    return this.readCount;
  }

  refresh(): Promise<void> {
    if (this.inFlight === null) {
      this.inFlight = this.readOnce().finally(() => (this.inFlight = null));
      return this.inFlight;
    }
    this.again ??= this.inFlight.then(() => {
      this.again = null;
      return this.refresh();
    });
    return this.again;
  }

  private async readOnce(): Promise<void> {
    this.ensureListening();
    const { log, what } = this.options;
    try {
      await this.options.read();
      this.readCount += 1;
      if (this.lost) log.info(`the store answers again; ${what} are read from it again`);
      this.healthy = true;
      this.lost = false;
    } catch (error) {
      if (this.healthy) log.warn({ err: error instanceof Error ? error.message : String(error) }, `cannot read ${what} from the store; the last ones read stand`);
      this.lost ||= this.healthy;
      this.healthy = false;
    }
  }

  /** One attempt per read while not listening: a store that is away costs nothing more than the poll. */
  private ensureListening(): void {
    if (this.listener !== null || this.listening !== null || this.timer === null) return;
    this.listening = this.listen().finally(() => (this.listening = null));
  }

  private async listen(): Promise<void> {
    let client: PoolClient | null = null;
    try {
      client = await this.options.pool.connect();
      const { payloads } = this.options;
      client.on('notification', (message) => {
        if (payloads === undefined || payloads.includes(message.payload ?? '')) void this.refresh();
      });
      client.on('error', () => this.dropListener());
      await client.query(`listen ${this.options.channel}`);
      if (this.timer === null) throw new Error('stopped');
      this.listener = client;
      // A change made while we were not listening is picked up by this read.
      void this.refresh();
    } catch {
      client?.release(true);
    }
  }

  private dropListener(): void {
    this.listener?.release(true);
    this.listener = null;
  }
}
