import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { DesiredInstance } from '../dataplane/agent-protocol.js';
import type { HostUsage } from '../dataplane/dataplane.js';
import { assert } from '../lib/assert.js';
import { CellarError } from '../lib/errors.js';
import { type HostId, newId } from '../lib/ids.js';
import { type ClusterSpec, instanceMemoryMb } from '../lib/sizes.js';
import { recordHostUsage } from './local-host.js';
import { type MachineOrigin, insertMachine, newMachine, raiseSignal } from './machines-table.js';
import { type Pool, type Queryable, inTransaction, isUniqueViolation } from './pool.js';

/**
 * The hosts of the cell (docs/HOSTS.md): their rows, one-time join tokens, certificates and the
 * lease each agent holds. All SQL for hosts is here; schema in migrations/0011_hosts.sql.
 */

/** 32 random bytes: a join token's secret cannot be guessed within its hour. */
const joinSecretBytes = 32;
/** The names of the signals the store raises on a host's machine (the machine defines them; the store may not import it). */
export interface HostSignals {
  readonly joined: string;
  readonly remove: string;
}

export interface NewHost {
  readonly name: string;
  readonly address: string;
  readonly agentPort: number;
  readonly zone: string;
  readonly memoryMb: number;
  readonly diskGb: number;
  readonly slots: number;
}

export interface HostRecord extends NewHost {
  readonly id: HostId;
  readonly local: boolean;
  /** The host machine's label (joining, active, removed…). */
  readonly label: string;
  readonly createdAt: Date;
  readonly joinedAt: Date | null;
  readonly removedAt: Date | null;
  /** How long ago (on the store's clock) the lease was last renewed; null: never. */
  readonly leaseAgeMs: number | null;
  /** What its live instances use. */
  readonly used: { readonly instances: number; readonly memoryMb: number; readonly diskGb: number };
  /** The free space of the filesystems it writes to, as last measured, and when; null: not measured (yet). */
  readonly usage: HostUsage | null;
  readonly usageMeasuredAt: Date | null;
}

/** An instance living on a host, as `hosts show` lists it. */
export interface HostInstance {
  readonly id: string;
  readonly clusterId: string;
  readonly clusterName: string;
  readonly role: 'primary' | 'replica';
  readonly machineLabel: string;
  readonly fenced: boolean;
  /** Its cluster's spec: what it runs with (`effectiveSettings`) sizes the host's kernel settings. */
  readonly spec: ClusterSpec;
}

/** A join token's secret (shown once) and when it expires. */
export interface JoinSecret {
  readonly secret: string;
  readonly expiresAt: Date;
}

export type JoinRefusal = 'unknown' | 'used' | 'expired' | 'removed';

export type JoinOutcome<C> = { readonly host: HostRecord; readonly issued: C } | { readonly refused: JoinRefusal };

export interface IssuedCertificate {
  readonly serial: string;
  readonly notAfter: Date;
}

export interface CertificateStatus {
  readonly hostId: HostId;
  readonly revoked: boolean;
  readonly hostRemoved: boolean;
  readonly expired: boolean;
}

interface HostRow {
  id: string;
  name: string;
  address: string;
  agent_port: number;
  zone: string;
  memory_mb: number;
  disk_gb: number;
  slots: number;
  local: boolean;
  label: string | null;
  created_at: Date;
  joined_at: Date | null;
  removed_at: Date | null;
  lease_age_ms: number | null;
  usage: HostUsage | null;
  usage_measured_at: Date | null;
  used_instances: number;
  used_memory_mb: number;
  used_disk_gb: number;
}

function hashSecret(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

function newSecret(): string {
  return randomBytes(joinSecretBytes).toString('base64url');
}

function toRecord(row: HostRow): HostRecord {
  return {
    id: row.id as HostId,
    name: row.name,
    address: row.address,
    agentPort: row.agent_port,
    zone: row.zone,
    memoryMb: row.memory_mb,
    diskGb: row.disk_gb,
    slots: row.slots,
    local: row.local,
    label: row.label ?? 'unknown',
    createdAt: row.created_at,
    joinedAt: row.joined_at,
    removedAt: row.removed_at,
    leaseAgeMs: row.lease_age_ms === null ? null : Math.max(0, Math.round(row.lease_age_ms)),
    used: { instances: row.used_instances, memoryMb: row.used_memory_mb, diskGb: row.used_disk_gb },
    usage: row.usage,
    usageMeasuredAt: row.usage_measured_at,
  };
}

/** $1: the host kind; $2: memory per size. The memory and disk an instance uses come from its cluster's spec. */
export const hostSelect = `
select h.id, h.name, h.address, h.agent_port, h.zone, h.memory_mb, h.disk_gb, h.slots, h.local,
       h.created_at, h.joined_at, h.removed_at, m.label, h.usage, h.usage_measured_at,
       extract(epoch from clock_timestamp() - h.lease_renewed_at)::double precision * 1000 as lease_age_ms,
       coalesce(u.instances, 0)::int as used_instances,
       coalesce(u.memory_mb, 0)::int as used_memory_mb,
       coalesce(u.disk_gb, 0)::int as used_disk_gb
  from hosts h
  left join machines m on m.kind = $1 and m.entity_id = h.id
  left join lateral (
    select count(*) as instances,
           sum(coalesce(($2::jsonb ->> (c.spec ->> 'size'))::int, 0)) as memory_mb,
           sum(coalesce((c.spec ->> 'storageGb')::int, 0)) as disk_gb
      from instances i join clusters c on c.id = i.cluster_id
     where i.host_id = h.id and i.deleted_at is null) u on true`;

export class HostStore {
  constructor(
    private readonly db: Pool,
    private readonly hostMachine: MachineOrigin,
    private readonly signals: HostSignals,
  ) {}

  /** The host row, its first join token and its machine, in one transaction; a taken name or address is a 409. */
  async createHost(host: NewHost, joinTokenTtlMs: number): Promise<{ host: HostRecord; token: JoinSecret }> {
    const id = newId('host');
    const secret = newSecret();
    let expiresAt: Date;
    try {
      expiresAt = await inTransaction(this.db, async (client) => {
        await client.query(
          `insert into hosts (id, name, address, agent_port, zone, memory_mb, disk_gb, slots)
           values ($1, $2, $3, $4, $5, $6, $7, $8)`,
          [id, host.name, host.address, host.agentPort, host.zone, host.memoryMb, host.diskGb, host.slots],
        );
        const expires = await insertToken(client, id, secret, joinTokenTtlMs);
        await insertMachine(client, newMachine(this.hostMachine, id, null));
        return expires;
      });
    } catch (error) {
      if (isUniqueViolation(error, 'hosts_name')) throw new CellarError('CELLAR_E_CONFLICT', `name: a host named "${host.name}" is already in the cell`, 'name');
      if (isUniqueViolation(error, 'hosts_address')) throw new CellarError('CELLAR_E_CONFLICT', `address: a host with address ${host.address} is already in the cell`, 'address');
      throw error;
    }
    const created = await this.hostById(id);
    assert(created !== null, `host ${id} is missing right after it was created`);
    return { host: created, token: { secret, expiresAt } };
  }

  /** Hosts not removed, by name. */
  async hosts(): Promise<HostRecord[]> {
    const result = await this.db.query<HostRow>(`${hostSelect} where h.removed_at is null order by h.name`, [this.hostMachine.kind, instanceMemoryMb]);
    return result.rows.map(toRecord);
  }

  /** The live host of that name (a removed one's name may be taken again). */
  async hostByName(name: string): Promise<HostRecord | null> {
    const result = await this.db.query<HostRow>(`${hostSelect} where h.name = $3 and h.removed_at is null`, [this.hostMachine.kind, instanceMemoryMb, name]);
    const row = result.rows[0];
    return row === undefined ? null : toRecord(row);
  }

  /** The host with that id, removed or not. */
  async hostById(id: string): Promise<HostRecord | null> {
    const result = await this.db.query<HostRow>(`${hostSelect} where h.id = $3`, [this.hostMachine.kind, instanceMemoryMb, id]);
    const row = result.rows[0];
    return row === undefined ? null : toRecord(row);
  }

  /**
   * A fresh join token for a host that has not joined yet; the earlier one stops working. Null
   * when the host has joined or is removed (the caller says which).
   */
  async replaceJoinToken(hostId: HostId, joinTokenTtlMs: number): Promise<JoinSecret | null> {
    const secret = newSecret();
    return inTransaction(this.db, async (client) => {
      const host = await client.query('select 1 from hosts where id = $1 and joined_at is null and removed_at is null for update', [hostId]);
      if (host.rowCount !== 1) return null;
      await client.query('delete from host_join_tokens where host_id = $1', [hostId]);
      return { secret, expiresAt: await insertToken(client, hostId, secret, joinTokenTtlMs) };
    });
  }

  /**
   * Checks the token (its secret's hash compared in constant time; unexpired, unused, host not
   * removed) and, in the same transaction, has `issue` sign the certificate, records it, marks the
   * token used and the host joined, and raises `joined` on its machine. A refusal or a failed
   * `issue` leaves everything as it was, the token unused.
   */
  async consumeJoinToken<C extends IssuedCertificate>(hostId: string, secret: string, issue: (host: HostRecord) => Promise<C>): Promise<JoinOutcome<C>> {
    return inTransaction(this.db, async (client) => {
      const token = await client.query<{ secret_hash: string; used: boolean; expired: boolean; removed: boolean }>(
        `select t.secret_hash, t.used_at is not null as used, t.expires_at <= clock_timestamp() as expired, h.removed_at is not null as removed
           from host_join_tokens t join hosts h on h.id = t.host_id
          where t.host_id = $1
            for update of t, h`,
        [hostId],
      );
      const row = token.rows[0];
      if (row === undefined || !sameHash(row.secret_hash, hashSecret(secret))) return { refused: 'unknown' as const };
      if (row.removed) return { refused: 'removed' as const };
      if (row.used) return { refused: 'used' as const };
      if (row.expired) return { refused: 'expired' as const };
      const hostRow = await client.query<HostRow>(`${hostSelect} where h.id = $3`, [this.hostMachine.kind, instanceMemoryMb, hostId]);
      assert(hostRow.rows[0] !== undefined, `host ${hostId} has a join token but no row`);
      const host = toRecord(hostRow.rows[0]);
      const issued = await issue(host);
      await client.query('update host_join_tokens set used_at = clock_timestamp() where host_id = $1', [hostId]);
      await recordCertificate(client, hostId, issued);
      await client.query('update hosts set joined_at = coalesce(joined_at, now()) where id = $1', [hostId]);
      await this.raise(client, hostId, this.signals.joined);
      return { host: { ...host, joinedAt: host.joinedAt ?? new Date() }, issued };
    });
  }

  /** Whether a certificate's serial is one of the cell's, and whether it still counts. */
  async certificateStatus(serial: string): Promise<CertificateStatus | null> {
    const result = await this.db.query<{ host_id: string; revoked: boolean; host_removed: boolean; expired: boolean }>(
      `select c.host_id, c.revoked_at is not null as revoked, h.removed_at is not null as host_removed, c.expires_at <= now() as expired
         from host_certificates c join hosts h on h.id = c.host_id
        where c.serial = $1`,
      [serial],
    );
    const row = result.rows[0];
    return row === undefined ? null : { hostId: row.host_id as HostId, revoked: row.revoked, hostRemoved: row.host_removed, expired: row.expired };
  }

  async revokeCertificates(hostId: HostId): Promise<void> {
    await revokeCertificates(this.db, hostId);
  }

  /**
   * Removes the host in one transaction: refused (409) while live instances are on it unless
   * `force`; revokes its certificates, marks it removed (its name and address are free again) and
   * raises `remove` on its machine.
   */
  async markHostRemoved(hostId: HostId, force: boolean): Promise<void> {
    await inTransaction(this.db, async (client) => {
      const host = await client.query<{ name: string; removed: boolean }>('select name, removed_at is not null as removed from hosts where id = $1 for update', [hostId]);
      const row = host.rows[0];
      if (row === undefined || row.removed) throw new CellarError('CELLAR_E_NOT_FOUND', `no host with id ${hostId}`, 'name');
      const live = await client.query<{ count: number }>('select count(*)::int as count from instances where host_id = $1 and deleted_at is null', [hostId]);
      const count = live.rows[0]?.count ?? 0;
      if (count > 0 && !force) {
        throw new CellarError('CELLAR_E_CONFLICT', `host "${row.name}" still has ${count} live instance(s): drain it first, or remove it with force for a host lost for good`, 'name');
      }
      await revokeCertificates(client, hostId);
      await client.query('update hosts set removed_at = now() where id = $1', [hostId]);
      await this.raise(client, hostId, this.signals.remove);
    });
  }

  /** The live instances on the host with their cluster and instance machine label, by cluster name then ordinal (at most `limit`). */
  async instancesOn(hostId: HostId, limit: number): Promise<HostInstance[]> {
    const result = await this.db.query<{ id: string; cluster_id: string; cluster_name: string; role: 'primary' | 'replica'; label: string | null; fenced: boolean; spec: ClusterSpec }>(
      `select i.id, i.cluster_id, c.name as cluster_name, i.role, m.label, i.fenced, c.spec
         from instances i join clusters c on c.id = i.cluster_id
         left join machines m on m.kind = 'instance' and m.entity_id = i.id
        where i.host_id = $1 and i.deleted_at is null
        order by c.name, i.ordinal
        limit $2`,
      [hostId, limit],
    );
    return result.rows.map((row) => ({ id: row.id, clusterId: row.cluster_id, clusterName: row.cluster_name, role: row.role, machineLabel: row.label ?? 'start', fenced: row.fenced, spec: row.spec }));
  }

  /** The host's filesystems as its agent just measured them (docs/STORAGE.md). */
  async recordUsage(hostId: HostId, usage: HostUsage): Promise<void> {
    await recordHostUsage(this.db, hostId, usage);
  }

  /** The agent's heartbeat was answered with a renewal: the store's clock now, after the agent's send time. */
  async renewLease(hostId: HostId): Promise<void> {
    await this.db.query('update hosts set lease_renewed_at = clock_timestamp() where id = $1 and removed_at is null', [hostId]);
  }

  /**
   * True once the agent's lease has certainly run out, on the store's clock: past the last renewal
   * plus the lease and the clock margin, or never renewed.
   */
  async hostLeaseExpired(hostId: HostId, leaseMs: number, marginMs: number): Promise<boolean> {
    const result = await this.db.query<{ expired: boolean }>(
      `select lease_renewed_at is null
              or clock_timestamp() > lease_renewed_at + make_interval(secs => ($2::double precision + $3::double precision) / 1000) as expired
         from hosts where id = $1`,
      [hostId, leaseMs, marginMs],
    );
    const row = result.rows[0];
    assert(row !== undefined, `host ${hostId} does not exist`);
    return row.expired;
  }

  /**
   * The live instances on the host with their roles. A primary is fenced when the lease runs out
   * only if its cluster has a live instance elsewhere (or not yet placed): only then can another
   * be promoted while it is cut off.
   */
  async desiredInstances(hostId: HostId): Promise<DesiredInstance[]> {
    const result = await this.db.query<{ id: string; role: 'primary' | 'replica'; fenced: boolean; peers: { address: string; agentPort: number }[] }>(
      `select i.id, i.role, i.fenced,
              coalesce((select json_agg(distinct jsonb_build_object('address', h.address, 'agentPort', h.agent_port))
                          from instances o join hosts h on h.id = o.host_id
                         where o.cluster_id = i.cluster_id and o.id <> i.id and o.deleted_at is null
                           and o.host_id is distinct from i.host_id and h.removed_at is null), '[]'::json) as peers
         from instances i
        where i.host_id = $1 and i.deleted_at is null
        order by i.id`,
      [hostId],
    );
    return result.rows.map((row) => {
      const fenceOnLeaseLoss = row.role === 'primary' && row.peers.length > 0;
      const desired: DesiredInstance = { instanceId: row.id, role: row.role, fenceOnLeaseLoss, fenced: row.fenced };
      return fenceOnLeaseLoss ? { ...desired, peers: row.peers } : desired;
    });
  }

  private async raise(client: Queryable, hostId: string, signal: string): Promise<void> {
    const machine = await client.query<{ id: string }>('select id from machines where kind = $1 and entity_id = $2', [this.hostMachine.kind, hostId]);
    const machineId = machine.rows[0]?.id;
    assert(machineId !== undefined, `host ${hostId} has no machine`);
    await raiseSignal(client, machineId, signal);
  }
}

/** Returns when the token expires, on the store's clock. */
async function insertToken(client: Queryable, hostId: string, secret: string, ttlMs: number): Promise<Date> {
  const result = await client.query<{ expires_at: Date }>(
    `insert into host_join_tokens (host_id, secret_hash, expires_at)
     values ($1, $2, clock_timestamp() + make_interval(secs => $3::double precision / 1000))
     returning expires_at`,
    [hostId, hashSecret(secret), ttlMs],
  );
  const row = result.rows[0];
  assert(row !== undefined, `the join token of host ${hostId} was not inserted`);
  return row.expires_at;
}

export async function recordCertificate(db: Queryable, hostId: string, certificate: IssuedCertificate): Promise<void> {
  await db.query('insert into host_certificates (serial, host_id, expires_at) values ($1, $2, $3)', [certificate.serial, hostId, certificate.notAfter]);
}

async function revokeCertificates(db: Queryable, hostId: string): Promise<void> {
  await db.query('update host_certificates set revoked_at = now() where host_id = $1 and revoked_at is null', [hostId]);
}

function sameHash(storedHex: string, givenHex: string): boolean {
  const stored = Buffer.from(storedHex, 'hex');
  const given = Buffer.from(givenHex, 'hex');
  return stored.length === given.length && timingSafeEqual(stored, given);
}
