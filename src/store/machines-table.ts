import { newId } from '../lib/ids.js';
import { prepared, type Queryable } from './pool.js';

/** The machines table's SQL, one statement per purpose. The table is the engine's queue. */

export const lanes = ['high', 'normal'] as const;
export type Lane = (typeof lanes)[number];

export interface MachineRow {
  id: string;
  kind: string;
  entity_id: string;
  cluster_id: string | null;
  label: string;
  lane: Lane;
  attempt: number;
  version: string;
  data: Record<string, unknown>;
  last_error: string | null;
  /** Done or failed: claimed only because a signal was raised on it since. */
  finished: boolean;
}

export const nudgeChannel = 'cellar_nudge';

/**
 * Claims due machines of one lane. SKIP LOCKED spreads work across engines; the version bump is
 * the fencing token: a worker whose lease expired can no longer write an outcome.
 */
const claimSql = `
update machines m
   set lease_owner = $2,
       lease_expires_at = now() + make_interval(secs => $3::double precision / 1000),
       version = m.version + 1,
       woken = false
  from (select id from machines
         where id in (select id from machines where lane = $1 and next_tick_at <= now()
                      union all
                      -- A finished machine with a request on it: the engine decides whether its kind acts on it.
                      select machine_id from signals)
           and lane = $1 and (next_tick_at <= now() or next_tick_at is null) and kind = any($5::text[])
           and (lease_expires_at is null or lease_expires_at < now())
         order by next_tick_at nulls first
         limit $4
         for no key update skip locked) due
 where m.id = due.id
returning m.id, m.kind, m.entity_id, m.cluster_id, m.label, m.lane, m.attempt, m.version, m.data, m.last_error, m.next_tick_at is null as finished,
          array(select s.name from signals s where s.machine_id = m.id order by s.name) as signals`;
const claim = prepared('machines_claim', claimSql);

/** A claimed machine with the requests (signals) raised on it when it was claimed. */
export interface ClaimedRow extends MachineRow {
  readonly signals: string[];
}

/**
 * Only kinds this engine can run are claimed, so engines of different versions can share a store.
 * Each row comes with its signals: one round trip per claim (the idle cost of a fleet is mostly
 * running instances' liveness steps, five a second each).
 */
export async function claimDue(db: Queryable, lane: Lane, owner: string, leaseMs: number, limit: number, kinds: readonly string[]): Promise<ClaimedRow[]> {
  const result = await db.query<ClaimedRow>(claim([lane, owner, leaseMs, limit, kinds]));
  return result.rows;
}

const renew = prepared(
  'machines_renew',
  `update machines set lease_expires_at = now() + make_interval(secs => $4::double precision / 1000)
    where id = $1 and version = $2 and lease_owner = $3`,
);

export async function renewLease(db: Queryable, id: string, version: string, owner: string, leaseMs: number): Promise<boolean> {
  const result = await db.query(renew([id, version, owner, leaseMs]));
  return result.rowCount === 1;
}

export interface Transition {
  readonly label: string;
  readonly lane: Lane;
  /** null: never tick again (done or failed). */
  readonly nextTickInMs: number | null;
  readonly attempt: number;
  readonly data: Record<string, unknown>;
  readonly lastError: string | null;
  /** Keep the lease: the same worker runs the next step at once. */
  readonly keepLease: boolean;
  readonly leaseMs: number;
}

/** A committed outcome: the new version, and whether the machine is due at once (a nap of 0, or woken while its step ran). */
export interface Committed {
  readonly version: string;
  readonly dueNow: boolean;
}

const commit = prepared(
  'machines_commit',
  `update machines
        set label = $4, lane = $5,
            next_tick_at = case when $6::double precision is null then null
                                when woken then now()
                                when $12::text[] is not null
                                     and exists (select 1 from signals s where s.machine_id = $1 and not (s.name = any($12::text[]))) then now()
                                else now() + make_interval(secs => $6::double precision / 1000) end,
            woken = false,
            attempt = $7, data = $8, last_error = $9,
            lease_owner = case when $10 then lease_owner else null end,
            lease_expires_at = case when $10 then now() + make_interval(secs => $11::double precision / 1000) else null end,
            version = version + 1, updated_at = now()
      where id = $1 and version = $2 and lease_owner = $3
  returning version, coalesce(next_tick_at <= now(), false) as "dueNow"`,
);

/**
 * Writes a step's outcome only if the version and lease still match (the version is the fencing
 * token); returns what was committed, or null. With `seenSignals` (a nap that releases the lease),
 * a signal on the machine that the step did not see, raised while it ran, makes the machine due
 * now rather than after the nap the step chose without it; `dueNow` then tells the engine to wake
 * its lane. One statement, so a plain nap commits in one round trip.
 */
export async function commitTransition(
  db: Queryable,
  id: string,
  version: string,
  owner: string,
  transition: Transition,
  seenSignals: readonly string[] | null = null,
): Promise<Committed | null> {
  const result = await db.query<Committed>(
    commit([
      id,
      version,
      owner,
      transition.label,
      transition.lane,
      transition.nextTickInMs,
      transition.attempt,
      transition.data,
      transition.lastError,
      transition.keepLease,
      transition.leaseMs,
      seenSignals,
    ]),
  );
  return result.rows[0] ?? null;
}

export async function consumeSignals(db: Queryable, machineId: string, names: readonly string[]): Promise<void> {
  if (names.length === 0) return;
  await db.query('delete from signals where machine_id = $1 and name = any($2)', [machineId, names]);
}

export interface EventInput {
  readonly machineId: string;
  readonly kind: string;
  readonly entityId: string;
  readonly clusterId: string | null;
  readonly from: string | null;
  readonly to: string;
  readonly reason: string;
  /** An `EventCode`, or null for a plain move whose labels say it all. */
  readonly code: string | null;
}

export async function recordEvent(db: Queryable, event: EventInput): Promise<void> {
  await db.query(
    `insert into events (machine_id, kind, entity_id, cluster_id, from_label, to_label, reason, code)
     values ($1, $2, $3, $4, $5, $6, $7, $8)`,
    [event.machineId, event.kind, event.entityId, event.clusterId, event.from, event.to, event.reason, event.code],
  );
}

/** Gives up one lease, only if nobody has claimed the machine since (the version is the fencing token). */
export async function releaseLease(db: Queryable, id: string, version: string, owner: string): Promise<void> {
  await db.query('update machines set lease_owner = null, lease_expires_at = null where id = $1 and version = $2 and lease_owner = $3', [id, version, owner]);
}

/** Gives back leases this engine holds, so another engine need not wait for them to expire. */
export async function releaseLeases(db: Queryable, owner: string): Promise<void> {
  await db.query('update machines set lease_owner = null, lease_expires_at = null where lease_owner = $1', [owner]);
}

/** Makes a machine due now and wakes the engines listening on its lane (a finished one stays finished). */
export async function nudge(db: Queryable, machineId: string): Promise<void> {
  await db.query(
    `with touched as (
       update machines set next_tick_at = now(), woken = true where id = $1 and next_tick_at is not null returning id)
     select pg_notify($2, lane) from machines where id = $1`,
    [machineId, nudgeChannel],
  );
}

/** Makes machines due now; the notify is delivered when the surrounding transaction commits. */
export async function wakeMachines(db: Queryable, refs: readonly { kind: string; entityId: string }[]): Promise<void> {
  if (refs.length === 0) return;
  await db.query(
    `with touched as (
       update machines set next_tick_at = now(), woken = true
        where (kind, entity_id) in (select * from unnest($1::text[], $2::text[])) and next_tick_at is not null
       returning lane)
     select pg_notify($3, lane) from (select distinct lane from touched) lanes`,
    [refs.map((ref) => ref.kind), refs.map((ref) => ref.entityId), nudgeChannel],
  );
}

/** Raises a signal (idempotent) and nudges the machine so it acts on its next tick; a finished one is claimed for it too. */
export async function raiseSignal(db: Queryable, machineId: string, name: string): Promise<void> {
  await db.query('insert into signals (machine_id, name) values ($1, $2) on conflict do nothing', [machineId, name]);
  await nudge(db, machineId);
}

/** Takes back a signal not yet acted on (a drain undone before its host's machine saw it). */
export async function withdrawSignal(db: Queryable, machineId: string, name: string): Promise<void> {
  await db.query('delete from signals where machine_id = $1 and name = $2', [machineId, name]);
}

export interface NewMachine {
  readonly id: string;
  readonly kind: string;
  readonly entityId: string;
  readonly clusterId: string | null;
  readonly label: string;
  readonly lane: Lane;
  readonly data: Record<string, unknown>;
}

/** What making a machine needs from its definition (a `MachineDefinition` is one). */
export interface MachineOrigin {
  readonly kind: string;
  readonly initial: string;
  lane(label: string): Lane;
}

/** The one way to make a machine: kind, initial label and lane come from its definition, never restated. */
export function newMachine(definition: MachineOrigin, entityId: string, clusterId: string | null): NewMachine {
  return { id: newId('machine'), kind: definition.kind, entityId, clusterId, label: definition.initial, lane: definition.lane(definition.initial), data: {} };
}

/** Creates a machine due now; a second call for the same (kind, entity) is a no-op. */
export async function insertMachine(db: Queryable, machine: NewMachine): Promise<void> {
  await db.query(
    `insert into machines (id, kind, entity_id, cluster_id, label, lane, next_tick_at, data)
     values ($1, $2, $3, $4, $5, $6, now(), $7)
     on conflict (kind, entity_id) do nothing`,
    [machine.id, machine.kind, machine.entityId, machine.clusterId, machine.label, machine.lane, machine.data],
  );
  await db.query('select pg_notify($1, $2)', [nudgeChannel, machine.lane]);
}
