import type { Logger } from 'pino';
import type { Pool } from '../store/pool.js';

/**
 * What the console's streams hear (docs/CONSOLE.md "Live"): one poll of the store per API process
 * every `feedPollMs` while a stream is open, none otherwise. A poll reads the newest event and
 * control-change ids and which of the streams' tokens were revoked or expired since; only when
 * an id moved does it read which clusters the new events belong to. Each stream hears the
 * clusters of its own org, and the controls when its token is an admin's.
 */

export const feedPollMs = 250;
/** Clusters named in one change at most: a burst past it is still one change (the page refetches). */
export const feedClustersMax = 500;

export interface FeedChange {
  clusters: string[];
  controls: boolean;
}

export interface FeedSubscriber {
  readonly orgId: string;
  readonly tokenId: string;
  readonly admin: boolean;
  readonly change: (change: FeedChange) => void;
  readonly denied: (why: string) => void;
  /** The API is closing: end the stream. */
  readonly close: () => void;
}

export class ChangeFeed {
  private readonly subscribed = new Set<FeedSubscriber>();
  private timer: NodeJS.Timeout | null = null;
  private polling = false;
  /**
   * The newest ids seen; null until the first stream. Kept while no stream is open: a stream opened
   * between another's `ready` and its subscribe then never starts from its first poll, and the
   * first poll after a quiet spell names what changed in it (a refetch more, nothing missed).
   */
  private seen: { events: bigint; controls: bigint } | null = null;

  constructor(
    private readonly pool: Pool,
    private readonly log: Logger,
  ) {}

  /**
   * Takes the newest ids as the feed's starting point when it has none (before the first stream),
   * so that a change made right after a stream's `hello` is announced; before, the first poll set
   * it and a change in that first interval went unheard. Called before a stream subscribes.
   */
  async ready(): Promise<void> {
    if (this.seen !== null) return;
    const result = await this.pool.query<{ events: string; controls: string }>(
      `select (select coalesce(max(id), 0) from events)::text as events, (select coalesce(max(id), 0) from control_changes)::text as controls`,
    );
    const row = result.rows[0];
    if (row !== undefined && this.seen === null) this.seen = { events: BigInt(row.events), controls: BigInt(row.controls) };
  }

  subscribers(): number {
    return this.subscribed.size;
  }

  subscribe(subscriber: FeedSubscriber): () => void {
    this.subscribed.add(subscriber);
    if (this.timer === null) {
      this.timer = setInterval(() => void this.poll(), feedPollMs);
      this.timer.unref();
    }
    return () => {
      this.subscribed.delete(subscriber);
      if (this.subscribed.size === 0) this.stop();
    };
  }

  /** Ends every stream (the API is closing) and the polling. */
  closeAll(): void {
    for (const subscriber of [...this.subscribed]) subscriber.close();
    this.subscribed.clear();
    this.stop();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** One poll; a poll still running when the next is due is not doubled. */
  async poll(): Promise<void> {
    if (this.polling || this.subscribed.size === 0) return;
    this.polling = true;
    try {
      const tokenIds = [...new Set([...this.subscribed].map((subscriber) => subscriber.tokenId))];
      const result = await this.pool.query<{ events: string; controls: string; refused: string[] }>(
        `select (select coalesce(max(id), 0) from events)::text as events,
                (select coalesce(max(id), 0) from control_changes)::text as controls,
                array(select id from tokens where id = any($1) and (revoked_at is not null or coalesce(expires_at <= now(), false))) as refused`,
        [tokenIds],
      );
      const row = result.rows[0];
      if (row === undefined) return;
      const refused = new Set(row.refused);
      for (const subscriber of [...this.subscribed]) {
        if (refused.has(subscriber.tokenId)) subscriber.denied(`this token (${subscriber.tokenId}) was revoked or has expired`);
      }
      const now = { events: BigInt(row.events), controls: BigInt(row.controls) };
      const before = this.seen;
      this.seen = now;
      if (before === null || (now.events <= before.events && now.controls <= before.controls)) return;
      const clusters =
        now.events > before.events
          ? (
              await this.pool.query<{ org_id: string; name: string }>(
                `select c.org_id, c.name from clusters c
                  where c.id in (select distinct cluster_id from events where id > $1 and id <= $2 and cluster_id is not null)
                  limit $3`,
                [before.events.toString(), now.events.toString(), feedClustersMax],
              )
            ).rows
          : [];
      const controls = now.controls > before.controls;
      for (const subscriber of [...this.subscribed]) {
        const names = clusters.filter((cluster) => cluster.org_id === subscriber.orgId).map((cluster) => cluster.name);
        const sawControls = controls && subscriber.admin;
        if (names.length > 0 || sawControls) subscriber.change({ clusters: names, controls: sawControls });
      }
    } catch (error) {
      // The store away: the streams stay open and hear nothing until it answers (their pings say so).
      this.log.debug({ err: (error as Error).message }, 'change feed poll failed');
    } finally {
      this.polling = false;
    }
  }
}
