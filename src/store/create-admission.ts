import type { ClusterId } from '../lib/ids.js';
import type { CreateAdmission } from '../machines/ports.js';
import { type Pool, inTransaction } from './pool.js';

/** Admissions are kept this long (far past any tick) so the table stays small. */
const admissionsKeptMs = 24 * 3_600_000;

/**
 * Provisioning admission in the store (docs/CONTROLS.md "Rods"): one budget for the cell, counted
 * over the last tick under an advisory lock, so two engines admitting at once cannot both take
 * the last place.
 */
export class PgCreateAdmission implements CreateAdmission {
  constructor(
    private readonly pool: Pool,
    /** The `provisioning.creates-per-tick` rod. */
    private readonly createsPerTick: () => number,
    /** The `engine.high-tick-ms` rod: the window the budget is counted over. */
    private readonly tickMs: () => number,
  ) {}

  admit(clusterId: ClusterId): Promise<boolean> {
    const limit = this.createsPerTick();
    const windowMs = this.tickMs();
    return inTransaction(this.pool, async (client) => {
      await client.query(`select pg_advisory_xact_lock(hashtext('cellar_create_admission'))`);
      const already = await client.query('select 1 from create_admissions where cluster_id = $1', [clusterId]);
      if (already.rowCount === 1) return true;
      const recent = await client.query<{ count: string }>(
        `select count(*) from create_admissions where at > now() - make_interval(secs => $1::double precision / 1000)`,
        [windowMs],
      );
      if (Number(recent.rows[0]?.count ?? 0) >= limit) return false;
      await client.query('insert into create_admissions (cluster_id) values ($1)', [clusterId]);
      await client.query(`delete from create_admissions where at < now() - make_interval(secs => $1::double precision / 1000)`, [admissionsKeptMs]);
      return true;
    });
  }

  retryMs(): number {
    return this.tickMs();
  }

  perTick(): number {
    return this.createsPerTick();
  }
}
