import type { FastifyInstance, FastifyRequest } from 'fastify';
import { CellarError, invalid } from '../lib/errors.js';
import { clusterMachine } from '../machines/cluster.js';
import { instanceMachine } from '../machines/instance.js';
import { findCluster } from '../store/clusters.js';
import type { Pool } from '../store/pool.js';
import { type SampleRow, clusterSamples, sampleIntervalSeconds, sampleRetentionMinutes } from '../store/samples.js';
import { type TokenOwner, authenticate } from '../store/tenancy.js';
import type { ChangeFeed, FeedChange } from './change-feed.js';

/**
 * What the web console needs beyond the CLI's routes (docs/CONSOLE.md "API the console uses"):
 * who a token is, the machines' transition tables, a cluster's samples for its charts, and a live
 * stream of changes.
 */

export const sampleMinutesDefault = 15;
/** Between pings on an open stream; each ping also checks the token again, whole. */
export const streamPingMs = 10_000;
export const streamsPerTokenMax = 8;
export const streamsMax = 256;

export interface WhoAmIView {
  org: string;
  admin: boolean;
  tokenId: string;
}

export interface MachineTableView {
  kind: string;
  initial: string;
  transitions: Record<string, string[]>;
}

export interface SamplePoint {
  at: string;
  /** The most any replica was behind the primary; null without a replica sample. */
  lagBytes: number | null;
  /** Client connections on the primary. */
  connections: number | null;
  /** Committed and rolled-back transactions per second on the primary since its sample before. */
  transactionsPerSecond: number | null;
}

export interface SamplesView {
  intervalSeconds: number;
  samples: SamplePoint[];
}

/**
 * The samples of a cluster, one point per interval: the most lag of its replicas, the primary's
 * connections, and the primary's rate of transactions between two samples of the same server (a
 * counter that went backwards, a restart or another primary, gives no rate).
 */
export function sampleSeries(rows: readonly SampleRow[], intervalSeconds: number): SamplePoint[] {
  const intervalMs = intervalSeconds * 1000;
  const points = new Map<number, SamplePoint>();
  const lastPrimary = new Map<string, SampleRow>();
  for (const row of rows) {
    const bucket = Math.floor(row.at.getTime() / intervalMs) * intervalMs;
    const point = points.get(bucket) ?? { at: new Date(bucket).toISOString(), lagBytes: null, connections: null, transactionsPerSecond: null };
    points.set(bucket, point);
    if (row.role === 'replica') {
      if (row.lagBytes !== null) point.lagBytes = Math.max(point.lagBytes ?? 0, row.lagBytes);
      continue;
    }
    if (row.connections !== null) point.connections = row.connections;
    const before = lastPrimary.get(row.instanceId);
    lastPrimary.set(row.instanceId, row);
    if (before === undefined || before.transactions === null || row.transactions === null) continue;
    const seconds = (row.at.getTime() - before.at.getTime()) / 1000;
    if (seconds > 0 && row.transactions >= before.transactions) point.transactionsPerSecond = Math.round(((row.transactions - before.transactions) / seconds) * 10) / 10;
  }
  return [...points.entries()].sort(([a], [b]) => a - b).map(([, point]) => point);
}

function tableOf(definition: { kind: string; initial: string; transitions: Readonly<Record<string, readonly string[] | undefined>> }): MachineTableView {
  return { kind: definition.kind, initial: definition.initial, transitions: Object.fromEntries(Object.entries(definition.transitions).map(([from, to]) => [from, [...(to ?? [])]])) };
}

export interface ConsoleApiOptions {
  readonly pool: Pool;
  readonly feed: ChangeFeed;
  readonly ownerOf: (request: FastifyRequest) => TokenOwner;
}

export function registerConsoleApi(app: FastifyInstance, options: ConsoleApiOptions): void {
  const { pool, feed, ownerOf } = options;
  const machineTables = { machines: [tableOf(clusterMachine), tableOf(instanceMachine)] };
  const openStreams = new Map<string, number>();
  // Open streams would hold the server's close until their clients leave.
  app.addHook('preClose', async () => feed.closeAll());

  app.get('/v1/whoami', { schema: { summary: 'Who the bearer token is: its org and whether it is an admin (operator) token' } }, async (request): Promise<WhoAmIView> => {
    const owner = ownerOf(request);
    return { org: owner.orgName, admin: owner.admin, tokenId: owner.tokenId };
  });

  app.get('/v1/machines', { schema: { summary: "The cluster and instance machines' transition tables (the console draws them)" } }, async (request) => {
    ownerOf(request);
    return machineTables;
  });

  app.get<{ Params: { name: string }; Querystring: { minutes?: string } }>(
    '/v1/clusters/:name/samples',
    { schema: { summary: `Replication lag, connections and transactions per second of the cluster, one point per ${sampleIntervalSeconds} s, for its charts` } },
    async (request): Promise<SamplesView> => {
      const owner = ownerOf(request);
      const raw = request.query.minutes;
      const minutes = raw === undefined ? sampleMinutesDefault : Number(raw);
      if (!Number.isInteger(minutes) || minutes < 1 || minutes > sampleRetentionMinutes) {
        throw invalid('minutes', `minutes must be an integer from 1 to ${sampleRetentionMinutes} (samples are kept ${sampleRetentionMinutes} minutes)`);
      }
      const cluster = await findCluster(pool, owner.orgId, request.params.name);
      if (cluster === null) throw new CellarError('CELLAR_E_NOT_FOUND', `no cluster named "${request.params.name}"`, 'name');
      return { intervalSeconds: sampleIntervalSeconds, samples: sampleSeries(await clusterSamples(pool, cluster.id, minutes), sampleIntervalSeconds) };
    },
  );

  app.get('/v1/stream', { schema: { summary: 'Server-sent events: `change` names the clusters (and controls) that changed; `ping` every 10 s; `denied`, then the end, once the token is revoked or expires' } }, async (request, reply) => {
    const owner = ownerOf(request);
    const token = /^Bearer\s+(\S+)$/i.exec(request.headers.authorization ?? '')?.[1] ?? '';
    const mine = openStreams.get(owner.tokenId) ?? 0;
    if (mine >= streamsPerTokenMax) throw new CellarError('CELLAR_E_TOO_MANY_STREAMS', `this token has ${mine} streams open, the limit is ${streamsPerTokenMax}; close one (another console tab)`);
    if (feed.subscribers() >= streamsMax) throw new CellarError('CELLAR_E_TOO_MANY_STREAMS', `this control plane serves ${streamsMax} streams, its limit; try again later`);
    await feed.ready();
    openStreams.set(owner.tokenId, mine + 1);
    reply.hijack();
    const response = reply.raw;
    response.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    const send = (event: string, data: unknown): void => {
      if (!response.writableEnded) response.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    };
    let ended = false;
    const end = (): void => {
      if (ended) return;
      ended = true;
      clearInterval(ping);
      unsubscribe();
      const left = (openStreams.get(owner.tokenId) ?? 1) - 1;
      if (left <= 0) openStreams.delete(owner.tokenId);
      else openStreams.set(owner.tokenId, left);
      if (!response.writableEnded) response.end();
    };
    const deny = (message: string): void => {
      send('denied', { error: { code: 'CELLAR_E_UNAUTHENTICATED', message } });
      end();
    };
    const unsubscribe = feed.subscribe({
      orgId: owner.orgId,
      tokenId: owner.tokenId,
      admin: owner.admin,
      change: (change: FeedChange) => send('change', change),
      denied: (why: string) => deny(why),
      close: end,
    });
    const ping = setInterval(() => {
      authenticate(pool, token).then(
        (authentication) => (authentication.refused === undefined ? send('ping', { at: new Date().toISOString() }) : deny(authentication.refused)),
        // The store away: the stream stays; the next ping asks again.
        () => send('ping', { at: new Date().toISOString(), store: 'unreachable' }),
      );
    }, streamPingMs);
    request.raw.on('close', end);
    send('hello', { org: owner.orgName, admin: owner.admin });
  });
}
