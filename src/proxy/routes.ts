import { readFile, rename, writeFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import { lagBytes } from '../lib/lsn.js';
import type { PoolClient } from 'pg';
import type { Pool } from '../store/pool.js';
import { type RouteRow, loadRoutes, routesChannel } from '../store/routes.js';
import { type StorageFullNotice, lockedMessage } from './storage-full.js';

/**
 * The proxy's cached routes. Polled from the store, and re-read at once when the store notifies a
 * change (failover, fencing, pause); when the store cannot be read the last good table is kept
 * (static stability), and it is also kept on disk so a restarted proxy can serve before the store
 * is back.
 */

/** One high-lane tick: a new primary reaches the proxy within it. */
export const routesPollMs = 250;

/** A flood of connections to unknown clusters costs the store at most one poll per this interval. */
const refreshNowIntervalMsMin = 50;

export type EndpointKind = 'readWrite' | 'readOnly';

export interface Target {
  readonly host: string;
  readonly port: number;
  readonly clusterKey: string;
  /** A read-write connection made while the cluster's storage was full: relayed through the ErrorRewriter. */
  readonly storageFull: boolean;
}

export type Resolution = { readonly target: Target } | { readonly unknown: true } | { readonly unavailable: string } | { readonly paused: true } | { readonly locked: string };

/** What the proxy's data path reads of the routes. */
export interface ProxyRoutes {
  resolve(key: string, kind: EndpointKind): Resolution;
  /** Reads the store now (a cluster created a moment ago); bounded in rate. */
  refreshNow(): Promise<void>;
  /** Whether the table has a route for `key`, whatever its state. */
  has(key: string): boolean;
  /** Called after each change of the table (the proxy drops state kept for clusters that have gone). */
  onChange(listener: () => void): void;
  /**
   * Whether a connection made to `target` for `kind` may go on: its instance is still in the
   * cluster's route (not fenced, not deleted) and, for writes, still its primary.
   */
  stillRouted(target: Target, kind: EndpointKind): boolean;
  /** Set while the cluster's storage is full (its primary is read-only); null otherwise. */
  storageFull(key: string): StorageFullNotice | null;
}

export class RouteTable implements ProxyRoutes {
  private routes = new Map<string, RouteRow>();
  private timer: NodeJS.Timeout | null = null;
  private lastJson = '';
  private storeHealthy = false;
  /** Set when a store that answered stops answering, so its return is logged once too. */
  private storeLost = false;
  private inFlight: Promise<void> | null = null;
  private lastPollMs = 0;
  /** A pooled connection held for LISTEN; null until connected, and again after it breaks. */
  private listener: PoolClient | null = null;
  private listening: Promise<void> | null = null;
  private readonly changeListeners: (() => void)[] = [];

  constructor(
    private readonly pool: Pool,
    private readonly snapshotFile: string,
    private readonly log: Logger,
  ) {}

  /** Loads the snapshot from disk, then the store once, then keeps polling. */
  async start(): Promise<void> {
    await this.loadSnapshot();
    await this.refresh();
    this.timer = setInterval(() => void this.refresh(), routesPollMs);
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.dropListener();
  }

  /** One attempt per poll while not listening: a down store costs nothing more than the poll. */
  private ensureListening(): void {
    if (this.listener !== null || this.listening !== null || this.timer === null) return;
    this.listening = this.listen().finally(() => (this.listening = null));
  }

  private async listen(): Promise<void> {
    let client: PoolClient | null = null;
    try {
      client = await this.pool.connect();
      client.on('notification', () => void this.refresh());
      client.on('error', () => this.dropListener());
      await client.query(`listen ${routesChannel}`);
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

  get size(): number {
    return this.routes.size;
  }

  get storeReachable(): boolean {
    return this.storeHealthy;
  }

  has(key: string): boolean {
    return this.routes.has(key);
  }

  onChange(listener: () => void): void {
    this.changeListeners.push(listener);
  }

  stillRouted(target: Target, kind: EndpointKind): boolean {
    const route = this.routes.get(target.clusterKey);
    // A table the store never filled (the proxy started while it was down) says nothing: keep the connection.
    if (route === undefined) return !this.storeHealthy;
    const instance = route.instances.find((candidate) => candidate.host === target.host && candidate.port === target.port);
    if (instance === undefined) return false;
    if (route.storageFull?.locked === true) return false;
    if (kind === 'readOnly') return true;
    // Writes to a cluster that just filled up: its clients reconnect, through the rewriter that tells them why they fail.
    return instance.role === 'primary' && (route.storageFull === null || target.storageFull);
  }

  storageFull(key: string): StorageFullNotice | null {
    return this.routes.get(key)?.storageFull ?? null;
  }

  resolve(key: string, kind: EndpointKind): Resolution {
    const route = this.routes.get(key);
    if (route === undefined) return { unknown: true };
    if (route.storageFull?.locked === true) return { locked: lockedMessage(route.storageFull) };
    if (route.paused === true) return { paused: true };
    const primary = route.instances.find((instance) => instance.role === 'primary' && instance.healthy);
    if (kind === 'readOnly') {
      const replica = route.instances
        .filter((instance) => instance.role === 'replica' && instance.healthy)
        .sort((a, b) => (lagBytes(primary?.lsn ?? undefined, a.lsn ?? undefined) ?? 0) - (lagBytes(primary?.lsn ?? undefined, b.lsn ?? undefined) ?? 0))[0];
      const target = replica ?? primary;
      if (target === undefined) return { unavailable: `cluster "${key}" has no instance accepting connections` };
      return { target: { host: target.host, port: target.port, clusterKey: key, storageFull: false } };
    }
    if (primary === undefined) return { unavailable: `cluster "${key}" has no primary accepting connections` };
    return { target: { host: primary.host, port: primary.port, clusterKey: key, storageFull: route.storageFull !== null } };
  }

  /**
   * Reads the store now (sharing a poll already under way): a cluster created a moment ago is
   * routable before the next tick.
   */
  refreshNow(): Promise<void> {
    if (this.inFlight === null && performance.now() - this.lastPollMs < refreshNowIntervalMsMin) return Promise.resolve();
    return this.refresh();
  }

  /** One poll at a time: a slow store must not pile up queries; callers share the poll under way. */
  private refresh(): Promise<void> {
    this.inFlight ??= this.poll().finally(() => (this.inFlight = null));
    return this.inFlight;
  }

  private async poll(): Promise<void> {
    this.lastPollMs = performance.now();
    this.ensureListening();
    try {
      this.apply(await loadRoutes(this.pool));
      if (this.storeLost) this.log.info('the store answers again; routes are read from it again');
      this.storeHealthy = true;
      this.storeLost = false;
    } catch (error) {
      if (this.storeHealthy) this.log.warn({ err: error instanceof Error ? error.message : String(error) }, 'cannot read routes from the store; serving the cached routes');
      this.storeLost ||= this.storeHealthy;
      this.storeHealthy = false;
    }
  }

  private apply(rows: readonly RouteRow[]): void {
    const json = JSON.stringify(rows);
    if (json === this.lastJson) return;
    this.lastJson = json;
    this.routes = new Map(rows.map((row) => [row.key, row]));
    void this.saveSnapshot(json);
    for (const listener of this.changeListeners) listener();
  }

  private async loadSnapshot(): Promise<void> {
    try {
      const rows = JSON.parse(await readFile(this.snapshotFile, 'utf8')) as RouteRow[];
      if (Array.isArray(rows)) this.apply(rows);
    } catch {
      // No snapshot yet: the first poll of the store fills the table.
    }
  }

  private async saveSnapshot(json: string): Promise<void> {
    const temporary = `${this.snapshotFile}.tmp`;
    try {
      await writeFile(temporary, json, { mode: 0o600 });
      await rename(temporary, this.snapshotFile);
    } catch (error) {
      this.log.warn({ err: error instanceof Error ? error.message : String(error) }, 'cannot save the routes snapshot');
    }
  }
}
