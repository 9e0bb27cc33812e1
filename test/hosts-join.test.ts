import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFile, rm, stat } from 'node:fs/promises';
import https from 'node:https';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { type AgentIdentity, joinCell, loadAgentIdentity } from '../src/agent/join.js';
import type { HostView, HostWithJoinToken } from '../src/api/hosts.js';
import { type HeartbeatResponse, agentHeartbeatPath, controlCommonName, parseJoinToken } from '../src/dataplane/agent-protocol.js';
import { CellarError } from '../src/lib/errors.js';
import { ensureCellCa } from '../src/pki/ca.js';
import { makeKeyAndCsr, signHostCertificate } from '../src/pki/hosts.js';
import { TestCellar, eventually, makeTempDir } from './helpers/cellar.js';

/** Hosts join a cell with a one-time token pinned to its CA, and only a live host's own certificate gets a heartbeat answered. */

const execFileAsync = promisify(execFile);
const requestTimeoutMs = 5_000;

interface ErrorBody {
  error: { code: string; message: string; field?: string };
}

interface Beat {
  readonly status: number;
  readonly body: unknown;
}

describe('hosts: joining and trust', () => {
  let cellar: TestCellar;
  let scratch: string;
  let controlUrl: string;

  before(async () => {
    cellar = await TestCellar.create();
    await cellar.start();
    scratch = await makeTempDir('cellar-hosts-');
    controlUrl = `https://127.0.0.1:${cellar.env['CELLAR_AGENT_LISTEN_PORT']}`;
  });

  after(async () => {
    await cellar.destroy();
    await rm(scratch, { recursive: true, force: true });
  });

  async function addHost(name: string, address: string): Promise<HostWithJoinToken> {
    return cellar.cliJson<HostWithJoinToken>(['hosts', 'add', name, '--address', address]);
  }

  async function storeCount(sql: string, params: unknown[] = []): Promise<number> {
    const rows = await cellar.storeQuery<{ count: number }>(sql, params);
    return rows[0]?.count ?? -1;
  }

  /** A heartbeat over mutual TLS with Node's https; a TLS refusal is status 0. */
  function heartbeat(client: { key: string; cert: string }, body: unknown): Promise<Beat> {
    const payload = JSON.stringify(body);
    return new Promise((resolve) => {
      const request = https.request(
        `${controlUrl}${agentHeartbeatPath}`,
        {
          method: 'POST',
          key: client.key,
          cert: client.cert,
          ca: caPem,
          checkServerIdentity: (_host, certificate) => (certificate.subject?.CN === controlCommonName ? undefined : new Error('not the control plane')),
          headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
          timeout: requestTimeoutMs,
          agent: false,
        },
        (response) => {
          let text = '';
          response.on('data', (chunk: Buffer) => (text += chunk.toString()));
          response.on('end', () => resolve({ status: response.statusCode ?? 0, body: text === '' ? null : JSON.parse(text) }));
        },
      );
      request.on('timeout', () => request.destroy(new Error('timeout')));
      request.on('error', (error) => resolve({ status: 0, body: error.message }));
      request.end(payload);
    });
  }

  let caPem = '';

  async function joinRefusal(options: { token: string; dataDir: string }): Promise<CellarError> {
    const error = await joinCell({ ...options, controlUrl }).then(
      () => assert.fail('the join was accepted'),
      (error: unknown) => error,
    );
    assert.ok(error instanceof CellarError, `a CellarError, got ${String(error)}`);
    return error;
  }

  test('add, list, show and remove through the CLI with --json; add prints the token and the agent command', async () => {
    const added = await addHost('db1', '10.1.0.1');
    assert.deepEqual([added.host.name, added.host.address, added.host.zone, added.host.state], ['db1', '10.1.0.1', 'default', 'joining']);
    assert.deepEqual(added.host.capacity, { memoryMb: 8192, diskGb: 100, slots: 16 });
    assert.match(added.joinToken, /^cellar-join\.ho_[a-z0-9]+\.[A-Za-z0-9_-]+\.[0-9a-f]{64}$/);
    assert.equal(added.agentCommand, `cellar agent --join ${added.joinToken} --control ${controlUrl} --data /var/lib/cellar-agent`);
    const stored = await cellar.storeQuery<{ secret_hash: string }>('select secret_hash from host_join_tokens where host_id = $1', [added.host.id]);
    assert.match(stored[0]?.secret_hash ?? '', /^[0-9a-f]{64}$/, 'only the hash is stored');

    const human = await cellar.cli(['hosts', 'add', 'db2', '--address', 'fd00::2', '--zone', 'zone-b', '--memory-mb', '2048', '--disk-gb', '20', '--slots', '4']);
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, new RegExp(`cellar agent --join cellar-join\\.\\S+ --control ${controlUrl.replaceAll('.', '\\.')} --data `));

    const listed = await cellar.cliJson<HostView[]>(['hosts', 'list']);
    const db2 = listed.find((host) => host.name === 'db2');
    assert.deepEqual([db2?.zone, db2?.capacity, db2?.used, db2?.leaseAgeMs], ['zone-b', { memoryMb: 2048, diskGb: 20, slots: 4 }, { instances: 0, memoryMb: 0, diskGb: 0 }, null]);
    const table = await cellar.cli(['hosts', 'list']);
    assert.match(table.stdout, /^NAME\s+ADDRESS\s+ZONE\s+STATE\s+SLOTS\s+MEMORY MB\s+DISK GB\s+LEASE AGE/m);
    assert.match(table.stdout, /db2\s+fd00::2\s+zone-b\s+joining\s+0\/4\s+0\/2048\s+0\/20\s+never/);
    const shown = await cellar.cliJson<HostView>(['hosts', 'show', 'db1']);
    assert.equal(shown.id, added.host.id);

    const removed = await cellar.cliJson<HostView>(['hosts', 'remove', 'db1']);
    assert.ok(removed.removedAt !== null);
    const missing = await cellar.cli(['hosts', 'show', 'db1', '--json']);
    assert.equal((JSON.parse(missing.stdout) as ErrorBody).error.code, 'CELLAR_E_NOT_FOUND');
    await eventually('the removed host machine', async () => {
      const rows = await cellar.storeQuery<{ label: string }>("select label from machines where kind = 'host' and entity_id = $1", [added.host.id]);
      return rows[0]?.label === 'removed' ? true : undefined;
    });
    const again = await addHost('db1', '10.1.0.1');
    assert.notEqual(again.host.id, added.host.id, "a removed host's name and address may be used again");
  });

  test('bad input names the field and its limit and leaves nothing behind; a taken name or address is a 409', async () => {
    const before = await storeCount("select (select count(*) from hosts) + (select count(*) from host_join_tokens) + (select count(*) from machines where kind = 'host') as count");
    const cases: readonly [readonly string[], string, RegExp][] = [
      [['Bad_Name', '--address', '10.2.0.1'], 'name', /1-40 characters/],
      [['a'.repeat(41), '--address', '10.2.0.1'], 'name', /1-40 characters/],
      [['ok', '--address', '10.2.0.256'], 'address', /IPv4 or IPv6 literal/],
      [['ok', '--address', '0.0.0.0'], 'address', /not 0\.0\.0\.0 or ::/],
      [['ok', '--address', '::'], 'address', /not 0\.0\.0\.0 or ::/],
      [['ok', '--address', '10.2.0.1', '--zone', 'Zone A'], 'zone', /1-40 characters/],
      [['ok', '--address', '10.2.0.1', '--memory-mb', '255'], 'memoryMb', /from 256 to 4194304/],
      [['ok', '--address', '10.2.0.1', '--disk-gb', '0'], 'diskGb', /from 1 to 1048576/],
      [['ok', '--address', '10.2.0.1', '--slots', '1001'], 'slots', /from 1 to 1000/],
      [['db2', '--address', '10.2.0.1'], 'name', /already in the cell/],
      [['ok', '--address', 'FD00:0:0::2'], 'address', /already in the cell/],
    ];
    for (const [args, field, message] of cases) {
      const result = await cellar.cli(['hosts', 'add', ...args, '--json']);
      assert.equal(result.code, 1, `${args.join(' ')} is refused`);
      const { error } = JSON.parse(result.stdout) as ErrorBody;
      assert.equal(error.field, field, `${args.join(' ')}: ${error.message}`);
      assert.match(error.message, message);
      assert.equal(error.code, /already/.test(error.message) ? 'CELLAR_E_CONFLICT' : 'CELLAR_E_INVALID');
    }
    const afterCount = await storeCount("select (select count(*) from hosts) + (select count(*) from host_join_tokens) + (select count(*) from machines where kind = 'host') as count");
    assert.equal(afterCount, before, 'no host, token or machine was left behind');
  });

  let joined: AgentIdentity;
  let joinToken: string;
  const agent = () => ({ key: joined.key, cert: joined.certificate });

  test('an agent joins with its token: DIR/agent holds its key (0600) and certificate, the host is active, and heartbeats renew its lease over mutual TLS', async () => {
    const added = await addHost('j1', '10.3.0.1');
    joinToken = added.joinToken;
    const dataDir = join(scratch, 'j1');
    joined = await joinCell({ token: joinToken, controlUrl, dataDir });
    caPem = joined.ca;
    assert.equal((await stat(join(dataDir, 'agent'))).mode & 0o777, 0o700);
    assert.equal((await stat(join(dataDir, 'agent', 'key.pem'))).mode & 0o777, 0o600);
    const identity = JSON.parse(await readFile(join(dataDir, 'agent', 'host.json'), 'utf8')) as Record<string, unknown>;
    assert.deepEqual(identity, { hostId: added.host.id, name: 'j1', address: '10.3.0.1', agentPort: 8435, controlUrl });
    const loaded = await loadAgentIdentity(dataDir);
    assert.deepEqual(loaded, joined);
    const certificate = new X509Certificate(joined.certificate);
    assert.equal(certificate.subject, 'CN=j1');
    assert.equal(certificate.subjectAltName, 'IP Address:10.3.0.1, DNS:j1.hosts.cellar');
    assert.equal(await storeCount('select count(*)::int as count from host_certificates where host_id = $1 and serial = $2', [added.host.id, certificate.serialNumber]), 1);
    await eventually('host j1 active', async () => ((await cellar.read<HostView>('/v1/hosts/j1')).state === 'active' ? true : undefined));

    const first = await heartbeat(agent(), { hostId: joined.hostId, instances: [], leaseLeftMs: 0 });
    assert.equal(first.status, 200, JSON.stringify(first.body));
    const answer = first.body as HeartbeatResponse;
    assert.deepEqual([answer.leaseMs, answer.heartbeatMs, answer.instances], [1500, 250, []]);
    const renewedAt = async () => (await cellar.storeQuery<{ at: string }>("select to_char(lease_renewed_at, 'YYYY-MM-DD HH24:MI:SS.US') as at from hosts where id = $1", [joined.hostId]))[0]?.at ?? '';
    const firstAt = await renewedAt();
    assert.notEqual(firstAt, '');
    await eventually('the lease renewed again', async () => {
      const beat = await heartbeat(agent(), { hostId: joined.hostId, instances: [], leaseLeftMs: 1000 });
      assert.equal(beat.status, 200);
      return (await renewedAt()) > firstAt ? true : undefined;
    });
    const shown = await cellar.cliJson<HostView>(['hosts', 'show', 'j1']);
    assert.ok(shown.leaseAgeMs !== null && shown.joinedAt !== null);
    assert.equal(shown.filesystems, null, 'not measured before a heartbeat carries it');

    // A heartbeat carries the host's filesystems once per usage interval; the host's row keeps them.
    const filesystem = { path: '/var/lib/cellar-agent', purposes: ['data', 'backups'], totalBytes: 100 * 1024 ** 3, freeBytes: 60 * 1024 ** 3, availableBytes: 55 * 1024 ** 3 };
    assert.equal((await heartbeat(agent(), { hostId: joined.hostId, instances: [], leaseLeftMs: 1000, usage: { filesystems: [filesystem] } })).status, 200);
    const measured = await cellar.cliJson<HostView>(['hosts', 'show', 'j1']);
    assert.deepEqual(measured.filesystems, [filesystem]);
    assert.ok(measured.filesystemsMeasuredAt !== null);
    assert.match((await cellar.cli(['hosts', 'list'])).stdout, /^j1\s.*\s55 GB of 100 GB$/m);
    const tooMany = await heartbeat(agent(), { hostId: joined.hostId, instances: [], leaseLeftMs: 1000, usage: { filesystems: Array.from({ length: 9 }, () => filesystem) } });
    assert.equal(tooMany.status, 400, 'more filesystems than a host writes to is not a heartbeat');
    const negative = await heartbeat(agent(), { hostId: joined.hostId, instances: [], leaseLeftMs: 1000, usage: { filesystems: [{ ...filesystem, freeBytes: -1 }] } });
    assert.equal(negative.status, 400);
    assert.deepEqual((await cellar.cliJson<HostView>(['hosts', 'show', 'j1'])).filesystems, [filesystem], 'a refused heartbeat changes nothing');

    const otherHost = await heartbeat(agent(), { hostId: 'ho_someoneelse', instances: [], leaseLeftMs: 0 });
    assert.equal(otherHost.status, 401);
    assert.equal((otherHost.body as ErrorBody).error.code, 'CELLAR_E_AGENT_UNAUTHENTICATED');
  });

  test("a heartbeat's answer lists the host's live instances; a primary is fenced on lease loss only when its cluster has an instance elsewhere; removal needs force then", async () => {
    await cellar.storeQuery(
      `insert into clusters (id, org_id, name, spec, secrets) select 'cl_hostsjoin1', id, 'hosts-join-fake', '{"size":"small","storageGb":10,"replicas":1,"pgVersion":16}', '{}' from orgs where name = 'default'`,
    );
    await cellar.storeQuery("insert into instances (id, cluster_id, ordinal, role, host_id) values ('in_hostsjoin1', 'cl_hostsjoin1', 0, 'primary', $1)", [joined.hostId]);
    const alone = (await heartbeat(agent(), { hostId: joined.hostId, instances: [], leaseLeftMs: 0 })).body as HeartbeatResponse;
    assert.deepEqual(alone.instances, [{ instanceId: 'in_hostsjoin1', role: 'primary', fenceOnLeaseLoss: false, fenced: false }]);
    // A replica on another host (the control plane's own): the primary now has a peer to ask, and is fenced on loss.
    const [local] = await cellar.storeQuery<{ id: string; agent_port: number }>('select id, agent_port from hosts where local');
    assert.ok(local !== undefined);
    await cellar.storeQuery("insert into instances (id, cluster_id, ordinal, role, host_id) values ('in_hostsjoin2', 'cl_hostsjoin1', 1, 'replica', $1)", [local.id]);
    const spread = (await heartbeat(agent(), { hostId: joined.hostId, instances: [], leaseLeftMs: 0 })).body as HeartbeatResponse;
    assert.deepEqual(spread.instances, [{ instanceId: 'in_hostsjoin1', role: 'primary', fenceOnLeaseLoss: true, fenced: false, peers: [{ address: '127.0.0.1', agentPort: local.agent_port }] }]);
    const used = await cellar.cliJson<HostView>(['hosts', 'show', 'j1']);
    assert.deepEqual(used.used, { instances: 1, memoryMb: 1024, diskGb: 10 });
    const refused = await cellar.cli(['hosts', 'remove', 'j1', '--json']);
    assert.equal(refused.code, 1);
    assert.match((JSON.parse(refused.stdout) as ErrorBody).error.message, /1 live instance/);
    assert.equal((await cellar.cliJson<HostView>(['hosts', 'show', 'j1'])).removedAt, null, 'a refused remove changes nothing');
  });

  test('a malformed, unknown, reused or expired token is refused with CELLAR_E_JOIN_TOKEN and nothing is issued', async () => {
    const malformed = await joinRefusal({ token: 'cellar-join.nope', dataDir: join(scratch, 'malformed') });
    assert.equal(malformed.code, 'CELLAR_E_JOIN_TOKEN');
    await assert.rejects(stat(join(scratch, 'malformed')), 'nothing written for a malformed token');

    const reused = await joinRefusal({ token: joinToken, dataDir: join(scratch, 'reused') });
    assert.deepEqual([reused.code, /used already/.test(reused.message)], ['CELLAR_E_JOIN_TOKEN', true]);

    const added = await addHost('j2', '10.3.0.2');
    const parts = parseJoinToken(added.joinToken);
    assert.ok(!('problem' in parts));
    const wrongSecret = await joinRefusal({ token: `cellar-join.${parts.hostId}.${'x'.repeat(43)}.${parts.caSha256}`, dataDir: join(scratch, 'wrong') });
    assert.match(wrongSecret.message, /not known/);

    await cellar.storeQuery("update host_join_tokens set expires_at = clock_timestamp() - interval '1 second' where host_id = $1", [parts.hostId]);
    const expired = await joinRefusal({ token: added.joinToken, dataDir: join(scratch, 'expired') });
    assert.match(expired.message, /expired/);
    for (const dir of ['wrong', 'expired']) await assert.rejects(stat(join(scratch, dir, 'agent', 'host.json')));
    assert.equal(await storeCount('select count(*)::int as count from host_certificates where host_id = $1', [parts.hostId]), 0, 'no certificate issued');
    assert.equal(await storeCount('select count(*)::int as count from host_join_tokens where host_id = $1 and used_at is null', [parts.hostId]), 1, 'the token was not spent');

    const fresh = await cellar.cliJson<HostWithJoinToken>(['hosts', 'token', 'j2']);
    const rejoined = await joinCell({ token: fresh.joinToken, controlUrl, dataDir: join(scratch, 'j2') });
    assert.equal(rejoined.name, 'j2', 'a fresh token from `hosts token` joins');
    const tooLate = await cellar.cli(['hosts', 'token', 'j2', '--json']);
    assert.equal((JSON.parse(tooLate.stdout) as ErrorBody).error.code, 'CELLAR_E_CONFLICT', 'no token for a host that has joined');
  });

  test('an agent refuses a CA whose fingerprint is not the one its token names, writing nothing and spending nothing', async () => {
    const added = await addHost('j3', '10.3.0.3');
    const parts = parseJoinToken(added.joinToken);
    assert.ok(!('problem' in parts));
    const pinnedElsewhere = `cellar-join.${parts.hostId}.${parts.secret}.${'0'.repeat(64)}`;
    const dataDir = join(scratch, 'pinned-elsewhere');
    const refused = await joinRefusal({ token: pinnedElsewhere, dataDir });
    assert.match(refused.message, /not the one the join token names/);
    await assert.rejects(stat(dataDir), 'nothing written');
    assert.equal(await storeCount('select count(*)::int as count from host_join_tokens where host_id = $1 and used_at is null', [parts.hostId]), 1, 'the token is unspent');
  });

  test('a forged certificate gets a 401: self-signed with the host name, or signed by another CA', async () => {
    const forgery = join(scratch, 'forgery');
    await execFileAsync('mkdir', ['-p', forgery]);
    await execFileAsync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-noenc', '-keyout', join(forgery, 'self.key'), '-out', join(forgery, 'self.crt'), '-days', '1', '-subj', '/CN=j1']);
    const selfSigned = { key: await readFile(join(forgery, 'self.key'), 'utf8'), cert: await readFile(join(forgery, 'self.crt'), 'utf8') };
    const otherCa = await ensureCellCa(join(forgery, 'other-home'));
    const { keyPath, csr } = await makeKeyAndCsr(forgery);
    const signed = await signHostCertificate(otherCa, csr, { name: 'j1', address: '10.3.0.1', validityDays: 1 });
    const otherSigned = { key: await readFile(keyPath, 'utf8'), cert: signed.certificate };
    for (const [what, client] of [['self-signed', selfSigned], ['another CA', otherSigned]] as const) {
      const beat = await heartbeat(client, { hostId: joined.hostId, instances: [], leaseLeftMs: 0 });
      // The listener asks every peer for a certificate but refuses in HTTP, so the refusal is a 401, not a broken handshake.
      assert.deepEqual([beat.status, (beat.body as ErrorBody).error.code], [401, 'CELLAR_E_AGENT_UNAUTHENTICATED'], what);
    }
  });

  test("after `hosts remove --force` the host's own certificate gets 401", async () => {
    assert.equal((await heartbeat(agent(), { hostId: joined.hostId, instances: [], leaseLeftMs: 0 })).status, 200);
    const removed = await cellar.cliJson<HostView>(['hosts', 'remove', 'j1', '--force']);
    assert.ok(removed.removedAt !== null);
    assert.equal(await storeCount('select count(*)::int as count from host_certificates where host_id = $1 and revoked_at is null', [joined.hostId]), 0, 'its certificates are revoked');
    // The listener caches a certificate's status for at most a second.
    const beat = await eventually('a 401 for the revoked certificate', async () => {
      const answer = await heartbeat(agent(), { hostId: joined.hostId, instances: [], leaseLeftMs: 0 });
      return answer.status === 200 ? undefined : answer;
    }, 5_000);
    assert.deepEqual([beat.status, (beat.body as ErrorBody).error.code], [401, 'CELLAR_E_AGENT_UNAUTHENTICATED']);
  });
});
