import { CellarError } from '../lib/errors.js';
import type { EventCode } from '../lib/event-codes.js';
import type { ClusterId } from '../lib/ids.js';
import { type FreezeGate, freezeHeldLabels } from '../machines/ports.js';
import { type ControlChangeRecord, controlChanges, recordControlChange } from './controls.js';
import { nudgeChannel } from './machines-table.js';
import { type Pool, type Queryable, inTransaction } from './pool.js';

/**
 * The freeze (docs/CONTROLS.md "Freeze"): one row for the cell. Freezing and thawing are each one
 * transaction with their audit (control_changes), their event, and the notification on the
 * controls channel; the machines read the row at each step that the freeze holds back.
 */

export interface FreezeState {
  readonly frozen: boolean;
  /** When the current freeze began (or the last thaw, while thawed); null before the first freeze. */
  readonly since: Date | null;
  readonly actor: string | null;
  readonly reason: string | null;
}

/** Machines a thaw makes due at once; more than this wait out their nap (freezeNapMs). */
export const thawWakeMachinesMax = 1_000;
/** Freeze and thaw changes `GET /v1/freeze` shows, newest first. */
export const freezeHistoryMax = 20;

export async function readFreeze(db: Queryable): Promise<FreezeState> {
  const result = await db.query<{ frozen: boolean; since: Date | null; actor: string | null; reason: string | null }>(`select frozen, since, actor, reason from cell_freeze where cell = 'local'`);
  const row = result.rows[0];
  // The migration inserts the row; without it nothing is frozen.
  if (row === undefined) return { frozen: false, since: null, actor: null, reason: null };
  return { frozen: row.frozen, since: row.since, actor: row.actor, reason: row.reason };
}

export function freezeHistory(db: Queryable): Promise<ControlChangeRecord[]> {
  return controlChanges(db, { kind: 'freeze' }, freezeHistoryMax);
}

function describe(state: FreezeState): string {
  return `since ${state.since?.toISOString() ?? 'an unknown time'} by ${state.actor ?? 'an unknown actor'}: ${state.reason ?? 'no reason given'}`;
}

/** Freezes (true) or thaws (false) the cell; a CONFLICT when it already is so. Returns the new state. */
export async function setFrozen(pool: Pool, frozen: boolean, actor: string, reason: string): Promise<FreezeState> {
  return inTransaction(pool, async (client) => {
    // The row lock orders two operators freezing at once: the second sees the first's freeze.
    const before = await client.query<{ frozen: boolean; since: Date | null; actor: string | null; reason: string | null }>(`select frozen, since, actor, reason from cell_freeze where cell = 'local' for update`);
    const old: FreezeState = before.rows[0] ?? { frozen: false, since: null, actor: null, reason: null };
    if (old.frozen === frozen) {
      throw new CellarError('CELLAR_E_CONFLICT', frozen ? `the cell is already frozen ${describe(old)}` : 'the cell is not frozen', 'reason');
    }
    const updated = await client.query<{ since: Date }>(
      `insert into cell_freeze (cell, frozen, since, actor, reason) values ('local', $1, now(), $2, $3)
       on conflict (cell) do update set frozen = excluded.frozen, since = excluded.since, actor = excluded.actor, reason = excluded.reason
       returning since`,
      [frozen, actor, reason],
    );
    const state: FreezeState = { frozen, since: updated.rows[0]?.since ?? null, actor, reason };
    await recordControlChange(client, {
      kind: 'freeze',
      name: 'freeze',
      scope: 'global',
      oldValue: { frozen: old.frozen, since: old.since, actor: old.actor, reason: old.reason },
      newValue: { frozen, since: state.since, actor, reason },
      actor,
      reason,
    });
    const code: EventCode = frozen ? 'cell_frozen' : 'cell_thawed';
    await client.query(
      `insert into events (machine_id, kind, entity_id, cluster_id, from_label, to_label, reason, code)
       values ('freeze', 'freeze', 'local', null, $1, $2, $3, $4)`,
      [old.frozen ? 'frozen' : 'thawed', frozen ? 'frozen' : 'thawed', `${frozen ? 'frozen' : 'thawed'} by ${actor}: ${reason}`, code],
    );
    if (!frozen) await wakeHeldByFreeze(client);
    return state;
  });
}

/**
 * After a thaw, the machines at a label where the freeze holds them (freezeHeldLabels) are made
 * due now, at most `thawWakeMachinesMax` of them; the notify reaches the engines at commit.
 */
async function wakeHeldByFreeze(db: Queryable): Promise<void> {
  const pairs = freezeHeldLabels.flatMap((held) => held.labels.map((label) => [held.kind, label] as const));
  await db.query(
    `with touched as (
       update machines set next_tick_at = now(), woken = true
        where id in (select id from machines
                      where (kind, label) in (select * from unnest($1::text[], $2::text[])) and next_tick_at is not null
                      order by next_tick_at limit $3)
        returning lane)
     select pg_notify($4, lane) from (select distinct lane from touched) lanes`,
    [pairs.map(([kind]) => kind), pairs.map(([, label]) => label), thawWakeMachinesMax, nudgeChannel],
  );
}

/**
 * A nudge (docs/CONTROLS.md "Nudge"): every unfinished machine working for the cluster (its own,
 * its instances', its changes' and backups': machines.cluster_id, the cluster's own included) is
 * due now, and the engines are woken. Returns how many were made due.
 */
export async function nudgeCluster(db: Queryable, clusterId: ClusterId): Promise<number> {
  const touched = await db.query<{ lane: string }>(`update machines set next_tick_at = now(), woken = true where cluster_id = $1 and next_tick_at is not null returning lane`, [clusterId]);
  for (const lane of new Set(touched.rows.map((row) => row.lane))) await db.query('select pg_notify($1, $2)', [nudgeChannel, lane]);
  return touched.rows.length;
}

/** The machines' view of the freeze: one row read per gated step. */
export class PgFreezeGate implements FreezeGate {
  constructor(private readonly pool: Pool) {}

  async frozen(): Promise<boolean> {
    return (await readFreeze(this.pool)).frozen;
  }
}
