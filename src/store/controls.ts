import type { Queryable } from './pool.js';

/**
 * What flags, cohorts, rods and the freeze share in the store (docs/CONTROLS.md): one audit table,
 * and one notification channel on which every process (the engine, the API, the proxy) re-reads
 * its snapshot at once instead of at its next poll.
 */

export const controlsChannel = 'cellar_controls';

export type ControlKind = 'flag' | 'cohort' | 'rod' | 'freeze';

export interface ControlChange {
  readonly kind: ControlKind;
  readonly name: string;
  /** 'global', 'cell:NAME', 'org:ID' or 'cluster:ID'. */
  readonly scope: string;
  readonly oldValue: unknown;
  readonly newValue: unknown;
  readonly actor: string;
  readonly reason: string;
}

export interface ControlChangeRecord extends ControlChange {
  readonly id: number;
  readonly at: Date;
}

/** Audits one change and tells every process, in the caller's transaction (delivered at commit). */
export async function recordControlChange(db: Queryable, change: ControlChange): Promise<void> {
  await db.query(
    `insert into control_changes (kind, name, scope, old_value, new_value, actor, reason) values ($1, $2, $3, $4, $5, $6, $7)`,
    [change.kind, change.name, change.scope, JSON.stringify(change.oldValue ?? null), JSON.stringify(change.newValue ?? null), change.actor, change.reason],
  );
  await db.query('select pg_notify($1, $2)', [controlsChannel, change.kind]);
}

/** Changes newest first, of one kind (and name) or all; at most `limit`. */
export async function controlChanges(db: Queryable, filter: { readonly kind?: ControlKind; readonly name?: string }, limit: number): Promise<ControlChangeRecord[]> {
  const result = await db.query<{ id: string; at: Date; kind: ControlKind; name: string; scope: string; old_value: unknown; new_value: unknown; actor: string; reason: string }>(
    `select id, at, kind, name, scope, old_value, new_value, actor, reason from control_changes
      where ($1::text is null or kind = $1) and ($2::text is null or name = $2)
      order by id desc limit $3`,
    [filter.kind ?? null, filter.name ?? null, limit],
  );
  return result.rows.map((row) => ({ id: Number(row.id), at: row.at, kind: row.kind, name: row.name, scope: row.scope, oldValue: row.old_value, newValue: row.new_value, actor: row.actor, reason: row.reason }));
}
