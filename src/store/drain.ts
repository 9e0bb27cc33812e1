import { assert } from '../lib/assert.js';
import { CellarError } from '../lib/errors.js';
import type { ClusterId, HostId } from '../lib/ids.js';
import { type DiskReserve, defaultDiskReserve } from '../lib/placement.js';
import type { HostObservation, HostRecords } from '../machines/ports.js';
import { type MachineOrigin, raiseSignal, withdrawSignal } from './machines-table.js';
import { drainRefusal, lockPlacement } from './placement.js';
import { type Pool, type Queryable, inTransaction } from './pool.js';

/**
 * Draining a host and what the host machine reads of its host (docs/HOSTS.md, "Hosts as
 * machines"). The drain's check and its signal share one transaction under the placement lock,
 * so no create can take the room the drain counted on between the two.
 */

/** The names of the signals raised on a host's machine (the machine defines them; the store may not import it). */
export interface DrainSignals {
  readonly drain: string;
  readonly undrain: string;
}

export type DrainRequestOutcome = 'requested' | 'already';

interface HostMachineRow {
  name: string;
  machine_id: string | null;
  label: string | null;
}

export class HostDrains {
  constructor(
    private readonly db: Pool,
    private readonly hostMachine: MachineOrigin,
    private readonly signals: DrainSignals,
    private readonly reserve: DiskReserve = defaultDiskReserve,
  ) {}

  /**
   * Raises `drain` on an active host whose instances can all be placed elsewhere; refused (409
   * CELLAR_E_PLACEMENT) with what is missing otherwise, and (409 CELLAR_E_CONFLICT) for a host that
   * is joining or lost. A host draining or drained already: nothing to do.
   */
  async requestDrain(hostId: HostId): Promise<DrainRequestOutcome> {
    return inTransaction(this.db, async (client) => {
      await lockPlacement(client);
      const host = await this.lockHost(client, hostId);
      if (host.label === 'draining' || host.label === 'drained') return 'already';
      if (host.label !== 'active') throw new CellarError('CELLAR_E_CONFLICT', `host "${host.name}" is ${host.label ?? 'without a machine'}: only an active host can be drained`, 'name');
      const refusal = await drainRefusal(client, hostId, this.reserve);
      if (refusal !== null) throw new CellarError('CELLAR_E_PLACEMENT', `cannot drain host "${host.name}": its instances would have nowhere to go: ${refusal}`, 'name');
      assert(host.machine_id !== null, `active host ${hostId} has no machine`);
      await withdrawSignal(client, host.machine_id, this.signals.undrain);
      await raiseSignal(client, host.machine_id, this.signals.drain);
      return 'requested';
    });
  }

  /** Raises `undrain` on a draining or drained host (a drain not yet acted on is withdrawn); an active host: nothing to do. */
  async requestUndrain(hostId: HostId): Promise<DrainRequestOutcome> {
    return inTransaction(this.db, async (client) => {
      const host = await this.lockHost(client, hostId);
      if (host.machine_id === null) throw new CellarError('CELLAR_E_CONFLICT', `host "${host.name}" has no machine`, 'name');
      if (host.label === 'active') {
        await withdrawSignal(client, host.machine_id, this.signals.drain);
        return 'already';
      }
      if (host.label !== 'draining' && host.label !== 'drained') {
        throw new CellarError('CELLAR_E_CONFLICT', `host "${host.name}" is ${host.label ?? 'unknown'}: only a draining or drained host can be undrained`, 'name');
      }
      await raiseSignal(client, host.machine_id, this.signals.undrain);
      return 'requested';
    });
  }

  private async lockHost(client: Queryable, hostId: HostId): Promise<HostMachineRow> {
    const result = await client.query<HostMachineRow>(
      `select h.name, m.id as machine_id, m.label
         from hosts h left join machines m on m.kind = $2 and m.entity_id = h.id
        where h.id = $1 and h.removed_at is null
          for update of h`,
      [hostId, this.hostMachine.kind],
    );
    const row = result.rows[0];
    if (row === undefined) throw new CellarError('CELLAR_E_NOT_FOUND', `no host with id ${hostId}`, 'name');
    return row;
  }
}

/** The host machine's port: its lease and its instances, on the store's clock. */
export class PgHostRecords implements HostRecords {
  constructor(
    private readonly db: Pool,
    private readonly lease: { readonly leaseMs: number; readonly clockMarginMs: number },
  ) {}

  async observeHost(hostId: string): Promise<HostObservation | null> {
    // Never renewed: counted from the join, so an agent that joined and then went silent is lost in time too.
    const result = await this.db.query<{ local: boolean; expired_for_ms: number | null; live: number; cluster_ids: string[] }>(
      `select h.local,
              extract(epoch from clock_timestamp()
                - (coalesce(h.lease_renewed_at, h.joined_at) + make_interval(secs => ($2::double precision + $3::double precision) / 1000)))::double precision * 1000 as expired_for_ms,
              (select count(*)::int from instances i where i.host_id = h.id and i.deleted_at is null) as live,
              array(select distinct i.cluster_id from instances i where i.host_id = h.id and i.deleted_at is null order by i.cluster_id) as cluster_ids
         from hosts h
        where h.id = $1`,
      [hostId, this.lease.leaseMs, this.lease.clockMarginMs],
    );
    const row = result.rows[0];
    if (row === undefined) return null;
    return {
      leaseExpiredForMs: row.local || row.expired_for_ms === null ? null : row.expired_for_ms,
      liveInstances: row.live,
      clusterIds: row.cluster_ids as ClusterId[],
    };
  }
}
