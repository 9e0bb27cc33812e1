-- Fleet defaults and rollouts (docs/CONFIG.md, "Fleet defaults and rollouts"): the settings every
-- cluster gets beneath its own, and the rollouts that move the live clusters onto new ones.

-- The current defaults, one row per parameter. A new cluster takes them at creation.
create table fleet_defaults (
  name text primary key,
  value text not null,
  set_by text not null,
  set_at timestamptz not null default now()
);

create table rollouts (
  id text primary key,
  -- The whole set of defaults before and after the change: name -> value.
  defaults_before jsonb not null,
  defaults_after jsonb not null,
  -- At most this many clusters are started in any minute.
  rate_per_minute integer not null check (rate_per_minute between 1 and 60),
  reason text,
  created_by text not null,
  created_at timestamptz not null default now(),
  -- Clusters are taken in id order; this is the last one finished (moved, or skipped as already there).
  cursor_cluster_id text,
  clusters_changed integer not null default 0,
  clusters_skipped integer not null default 0,
  -- The cluster being moved now and the revision that moves it.
  current_cluster_id text,
  current_revision integer,
  -- Where it last stopped by itself, and why (kept after a resume, as history).
  halted_reason text,
  halted_cluster_id text,
  halted_cluster_name text,
  halted_revision integer,
  halted_at timestamptz,
  -- Set when it completed or was aborted; a halted rollout is not finished (resume or abort it).
  finished_at timestamptz
);

-- One rollout at a time in the cell: a second one would race the first for the same clusters.
create unique index rollouts_one_unfinished on rollouts ((true)) where finished_at is null;
create index rollouts_created on rollouts (created_at desc);
