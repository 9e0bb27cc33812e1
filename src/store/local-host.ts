import type { HostDirectory, HostTarget, HostUsage } from '../dataplane/dataplane.js';
import type { InstanceId } from '../lib/ids.js';
import { newId } from '../lib/ids.js';
import { type MachineOrigin, insertMachine, newMachine, raiseSignal } from './machines-table.js';
import { hostJoinedSignal } from '../machines/ports.js';
import { type Pool, type Queryable, inTransaction, prepared } from './pool.js';


/**
 * The control plane's own machine as a host (docs/HOSTS.md): one machine stays the default, so
 * `cellar up` registers it without any set-up and instances from before hosts move onto it.
 */

export const localHostName = 'local';
export const localHostAddress = '127.0.0.1';

export interface LocalHostCapacity {
  readonly memoryMb: number;
  readonly diskGb: number;
  readonly slots: number;
  readonly agentPort: number;
}

/** The local host's id, registering it (and adopting instances without a host) the first time. */
export async function ensureLocalHost(db: Pool, capacity: LocalHostCapacity, hostMachine: MachineOrigin): Promise<string> {
  return inTransaction(db, async (client) => {
    // Two control planes starting at once: the unique index on `local` lets one insert win.
    await client.query(
      `insert into hosts (id, name, address, agent_port, zone, memory_mb, disk_gb, slots, local, joined_at)
       values ($1, $2, $3, $4, 'default', $5, $6, $7, true, now())
       on conflict do nothing`,
      [newId('host'), localHostName, localHostAddress, capacity.agentPort, capacity.memoryMb, capacity.diskGb, capacity.slots],
    );
    const found = await client.query<{ id: string }>('select id from hosts where local and removed_at is null');
    const id = found.rows[0]?.id;
    if (id === undefined) throw new Error('the local host is neither registered nor insertable (another host holds its name or address)');
    await client.query('update instances set host_id = $1 where host_id is null', [id]);
    // Its own machine, joined from the start: nothing has to join the control plane's own machine.
    await insertMachine(client, newMachine(hostMachine, id, null));
    const joined = await client.query<{ id: string; label: string }>('select id, label from machines where kind = $1 and entity_id = $2', [hostMachine.kind, id]);
    const row = joined.rows[0];
    if (row !== undefined && row.label === hostMachine.initial) await raiseSignal(client, row.id, hostJoinedSignal);
    return id;
  });
}

/** The free space of a host's filesystems as just measured (here or by its agent), stamped with the store's clock. */
export async function recordHostUsage(db: Queryable, hostId: string, usage: HostUsage): Promise<void> {
  await db.query('update hosts set usage = $2, usage_measured_at = now() where id = $1 and removed_at is null', [hostId, usage]);
}

/** How long the host of an address or an instance is remembered: hosts and instances rarely move. */
const directoryCacheMs = 1_000;
const directoryCacheEntriesMax = 10_000;

interface HostRow {
  id: string;
  address: string;
  agent_port: number;
  local: boolean;
}

function toTarget(row: HostRow): HostTarget {
  return { hostId: row.id, address: row.address, agentPort: row.agent_port, local: row.local };
}

const hostAt = prepared('hosts_by_address', 'select id, address, agent_port, local from hosts where address = $1 and removed_at is null');
const hostOf = prepared('hosts_of_instance', 'select h.id, h.address, h.agent_port, h.local from instances i join hosts h on h.id = i.host_id where i.id = $1');

/** The router's view of where things are, read from the store and cached for a second. */
export class StoreHostDirectory implements HostDirectory {
  private readonly cache = new Map<string, { readonly atMs: number; readonly host: HostTarget | null }>();

  constructor(private readonly db: Queryable) {}

  async hostByAddress(address: string): Promise<HostTarget | null> {
    return this.cached(`address:${address}`, async () => {
      const result = await this.db.query<HostRow>(hostAt([address]));
      return result.rows[0] === undefined ? null : toTarget(result.rows[0]);
    });
  }

  async hostOfInstance(instanceId: InstanceId): Promise<HostTarget | null> {
    return this.cached(`instance:${instanceId}`, async () => {
      const result = await this.db.query<HostRow>(hostOf([instanceId]));
      return result.rows[0] === undefined ? null : toTarget(result.rows[0]);
    });
  }

  private async cached(key: string, load: () => Promise<HostTarget | null>): Promise<HostTarget | null> {
    const nowMs = performance.now();
    const hit = this.cache.get(key);
    if (hit !== undefined && nowMs - hit.atMs < directoryCacheMs) return hit.host;
    const host = await load();
    if (this.cache.size >= directoryCacheEntriesMax) this.cache.clear();
    this.cache.set(key, { atMs: nowMs, host });
    return host;
  }
}

/**
 * How long ago each host's lease was renewed, by the store's clock, read in the background. A
 * control-plane process that receives no heartbeats itself (an engine-only `cellar up --no-api`)
 * judges reachability from this; one that does takes the fresher of the two.
 */
export class StoreLeaseAges {
  private ages = new Map<string, number>();
  private polledAtMs = performance.now();
  private timer: NodeJS.Timeout | null = null;
  private polling: Promise<void> | null = null;

  constructor(
    private readonly db: Queryable,
    private readonly pollMs: number,
  ) {}

  start(): void {
    this.timer ??= setInterval(() => void this.poll(), this.pollMs);
    this.timer.unref();
    void this.poll();
  }

  async stop(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    await this.polling;
  }

  /** Since the host's last renewal (as of the last poll, plus the time since); undefined if never renewed or not read yet. */
  silentMs(hostId: string): number | undefined {
    const age = this.ages.get(hostId);
    return age === undefined ? undefined : age + (performance.now() - this.polledAtMs);
  }

  private poll(): Promise<void> {
    // One read at a time; a failed one leaves the ages growing, as the hosts' silence would.
    this.polling ??= this.read()
      .catch(() => undefined)
      .finally(() => (this.polling = null));
    return this.polling;
  }

  private async read(): Promise<void> {
    const startedMs = performance.now();
    const result = await this.db.query<{ id: string; age_ms: number }>(
      `select id, extract(epoch from clock_timestamp() - lease_renewed_at)::double precision * 1000 as age_ms
         from hosts where removed_at is null and lease_renewed_at is not null limit $1`,
      [leaseAgesHostsMax],
    );
    this.ages = new Map(result.rows.map((row) => [row.id, Math.max(0, row.age_ms)]));
    this.polledAtMs = startedMs;
  }
}

/** Hosts whose lease ages one poll reads. */
const leaseAgesHostsMax = 100_000;
