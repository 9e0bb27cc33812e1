import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { ClusterView } from '../src/api/view.js';
import type { MachineTableView, SamplesView, WhoAmIView } from '../src/api/console-api.js';
import { sampleSeries, streamsPerTokenMax } from '../src/api/console-api.js';
import { clusterMachine } from '../src/machines/cluster.js';
import { instanceMachine } from '../src/machines/instance.js';
import { ChangeFeed, type FeedChange } from '../src/api/change-feed.js';
import { makeLogger } from '../src/lib/log.js';
import { TestCellar, eventually, queryUri } from './helpers/cellar.js';
import { startTestStore } from './helpers/store.js';

/**
 * The API the web console needs beyond the CLI's (docs/CONSOLE.md): who a token is, the machines'
 * tables, a cluster's samples, and the live stream: a change within its poll, only to the org
 * that owns the cluster, and the end of the stream when the token is revoked.
 */

interface ErrorBody {
  error: { code: string; message: string; field?: string };
}

interface StreamEvent {
  event: string;
  data: unknown;
}

/** Reads a server-sent event stream as the console does (fetch, since EventSource sends no header). */
class Stream {
  readonly events: StreamEvent[] = [];
  ended = false;
  private readonly abort = new AbortController();

  static async open(url: string, token: string): Promise<Stream> {
    const stream = new Stream();
    const response = await fetch(url, { headers: { authorization: `Bearer ${token}` }, signal: stream.abort.signal });
    assert.equal(response.status, 200, `the stream opened: ${response.status}`);
    assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);
    void stream.read(response);
    return stream;
  }

  private async read(response: Response): Promise<void> {
    const decoder = new TextDecoder();
    let buffered = '';
    try {
      for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
        buffered += decoder.decode(chunk, { stream: true });
        let end = buffered.indexOf('\n\n');
        while (end >= 0) {
          const block = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
          const event = /^event: (.*)$/m.exec(block)?.[1] ?? 'message';
          const data = /^data: (.*)$/m.exec(block)?.[1];
          this.events.push({ event, data: data === undefined ? null : JSON.parse(data) });
          end = buffered.indexOf('\n\n');
        }
      }
    } catch {
      // Aborted by close().
    }
    this.ended = true;
  }

  named(event: string): unknown[] {
    return this.events.filter((entry) => entry.event === event).map((entry) => entry.data);
  }

  close(): void {
    this.abort.abort();
  }
}

describe('the console API', () => {
  let cellar: TestCellar;
  let cluster: ClusterView;
  let tenant: string;
  const streams: Stream[] = [];
  const open = async (token: string): Promise<Stream> => {
    const stream = await Stream.open(`${cellar.apiUrl}/v1/stream`, token);
    streams.push(stream);
    return stream;
  };

  before(async () => {
    cellar = await TestCellar.create();
    await cellar.start();
    cluster = await cellar.cliJson<ClusterView>(['clusters', 'create', 'seen', '--replicas', '1', '--wait']);
    tenant = (await cellar.api<{ token: string }>('POST', '/v1/orgs', { name: 'tenant' })).body.token;
  });

  after(async () => {
    for (const stream of streams) stream.close();
    await cellar.destroy();
  });

  test('whoami names the org and whether the token is an operator', async () => {
    const admin = await cellar.api<WhoAmIView>('GET', '/v1/whoami');
    assert.equal(admin.body.admin, true);
    const org = await cellar.api<WhoAmIView>('GET', '/v1/whoami', undefined, tenant);
    assert.deepEqual([org.body.org, org.body.admin], ['tenant', false]);
    const none = await cellar.api<ErrorBody>('GET', '/v1/whoami', undefined, 'not-a-token');
    assert.equal(none.status, 401);
  });

  test("the machines are the code's own transition tables, and the view says where each machine is", async () => {
    const { body } = await cellar.api<{ machines: MachineTableView[] }>('GET', '/v1/machines');
    const table = (kind: string) => body.machines.find((machine) => machine.kind === kind);
    assert.deepEqual(table('cluster')?.transitions, JSON.parse(JSON.stringify(clusterMachine.transitions)));
    assert.equal(table('instance')?.initial, instanceMachine.initial);
    const shown = await cellar.cliJson<ClusterView>(['clusters', 'show', 'seen']);
    assert.equal(shown.machineLabel, 'running');
    assert.ok(shown.instances.every((instance) => instance.machineLabel === 'running' && instance.host === 'local'), JSON.stringify(shown.instances));
  });

  test('samples: connections and transactions per second on the primary, the replica lag, one point per interval', async () => {
    const bad = await cellar.api<ErrorBody>('GET', '/v1/clusters/seen/samples?minutes=61');
    assert.deepEqual([bad.status, bad.body.error.field], [400, 'minutes']);
    assert.equal((await cellar.api<ErrorBody>('GET', '/v1/clusters/seen/samples', undefined, tenant)).status, 404, "another org's cluster is not found");
    await queryUri(cluster.uri as string, 'create table ticks (n int)');
    const samples = await eventually('samples with a rate and a lag', async () => {
      await queryUri(cluster.uri as string, 'insert into ticks select generate_series(1, 100)');
      const { body } = await cellar.api<SamplesView>('GET', '/v1/clusters/seen/samples?minutes=5');
      const rated = body.samples.some((sample) => sample.transactionsPerSecond !== null) && body.samples.some((sample) => sample.lagBytes !== null);
      return rated ? body : undefined;
    }, 60_000, 500);
    assert.equal(samples.intervalSeconds, 5);
    assert.ok(samples.samples.every((sample) => sample.connections === null || sample.connections >= 0));
    const times = samples.samples.map((sample) => Date.parse(sample.at));
    assert.deepEqual(times, [...times].sort((a, b) => a - b), 'oldest first');
    assert.equal(new Set(times).size, times.length, 'one point per interval');
  });

  test('the series: a restarted or replaced primary gives no rate across the gap; lag is the most of the replicas', () => {
    const at = (seconds: number) => new Date(Date.UTC(2026, 10, 30, 12, 0, seconds));
    const points = sampleSeries(
      [
        { instanceId: 'a', role: 'primary', at: at(0), lagBytes: null, connections: 3, transactions: 100 },
        { instanceId: 'r1', role: 'replica', at: at(1), lagBytes: 10, connections: 0, transactions: 0 },
        { instanceId: 'r2', role: 'replica', at: at(2), lagBytes: 30, connections: 0, transactions: 0 },
        { instanceId: 'a', role: 'primary', at: at(5), lagBytes: null, connections: 4, transactions: 150 },
        { instanceId: 'a', role: 'primary', at: at(10), lagBytes: null, connections: 4, transactions: 20 },
        { instanceId: 'b', role: 'primary', at: at(15), lagBytes: null, connections: 1, transactions: 500 },
      ],
      5,
    );
    assert.deepEqual(
      points.map((point) => [point.lagBytes, point.connections, point.transactionsPerSecond]),
      [
        [30, 3, null],
        [null, 4, 10],
        [null, 4, null],
        [null, 1, null],
      ],
    );
  });

  test('the stream: hello, a change naming the cluster to its org only, and the end once the token is revoked', async () => {
    const token = (await cellar.api<{ secret: string; id: string }>('POST', '/v1/tokens', { name: 'console' })).body;
    const own = await open(token.secret);
    const other = await open(tenant);
    await eventually('hello on both', async () => (own.named('hello').length > 0 && other.named('hello').length > 0 ? true : undefined));
    assert.deepEqual(other.named('hello')[0], { org: 'tenant', admin: false });
    await cellar.api('POST', '/v1/clusters/seen/switchover', {});
    await eventually('a change naming the cluster', async () => (own.named('change').some((change) => (change as { clusters: string[] }).clusters.includes('seen')) ? true : undefined), 30_000, 50);
    assert.deepEqual(other.named('change'), [], "another org hears nothing of this org's cluster");
    await eventually('the switchover to end', async () => ((await cellar.cluster('seen')).state === 'running' ? true : undefined), 60_000, 200);

    const revoked = await cellar.api('DELETE', `/v1/tokens/${token.id}`);
    assert.equal(revoked.status, 200);
    await eventually('denied, then the end of the stream', async () => (own.ended ? true : undefined), 10_000, 50);
    const denied = own.named('denied')[0] as ErrorBody | undefined;
    assert.equal(denied?.error.code, 'CELLAR_E_UNAUTHENTICATED');
    assert.equal(other.ended, false, "another token's stream stays");
  });

  test('streams are bounded per token, in the one error shape', async () => {
    const token = (await cellar.api<{ secret: string }>('POST', '/v1/tokens', { name: 'tabs' })).body.secret;
    const opened: Stream[] = [];
    for (let index = 0; index < streamsPerTokenMax; index += 1) opened.push(await open(token));
    const refused = await cellar.api<ErrorBody>('GET', '/v1/stream', undefined, token);
    assert.equal(refused.status, 429);
    assert.equal(refused.body.error.code, 'CELLAR_E_TOO_MANY_STREAMS');
    assert.match(refused.body.error.message, new RegExp(`the limit is ${streamsPerTokenMax}`));
    opened[0]?.close();
    const again = await eventually('a closed stream to free its place', async () => {
      const stream = await Stream.open(`${cellar.apiUrl}/v1/stream`, token).catch(() => undefined);
      if (stream !== undefined) streams.push(stream);
      return stream;
    }, 10_000, 100);
    assert.ok(again instanceof Stream);
  });
});

describe('the change feed', () => {
  test('a change made at once after the first stream subscribes is heard: the feed starts from before it, not from its first poll', async () => {
    const store = await startTestStore();
    const feed = new ChangeFeed(store.pool, makeLogger('silent'));
    try {
      const heard: FeedChange[] = [];
      await feed.ready();
      const unsubscribe = feed.subscribe({ orgId: 'org_none', tokenId: 'tk_none', admin: true, change: (change) => heard.push(change), denied: () => undefined, close: () => undefined });
      await store.pool.query("insert into control_changes (kind, name, actor, reason) values ('rod', 'engine.normal-tick-ms', 'test', 'right after subscribing')");
      await feed.poll();
      await eventually('the change', async () => (heard.length > 0 ? true : undefined), 10_000, 20);
      assert.deepEqual(heard[0], { clusters: [], controls: true });
      unsubscribe();
    } finally {
      feed.stop();
      await store.close();
    }
  });
});
