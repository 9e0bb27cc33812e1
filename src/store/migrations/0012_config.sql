-- Changing a running cluster (docs/CONFIG.md): the parameter catalogue of each Postgres version,
-- every cluster's configuration revisions, and replicas leaving the routes while they restart.

create table setting_catalogues (
  pg_version integer primary key,
  -- CatalogueEntry[] (src/lib/settings.ts), read from that version's own pg_settings.
  entries jsonb not null,
  read_at timestamptz not null default now()
);

create table config_revisions (
  cluster_id text not null references clusters (id),
  revision integer not null check (revision >= 1),
  size text not null,
  replicas integer not null check (replicas between 0 and 5),
  -- The cluster's own settings after this revision: name -> value as given.
  settings jsonb not null default '{}',
  -- The fleet's defaults this cluster runs with (beneath its own settings), as of this revision.
  defaults jsonb not null default '{}',
  -- [{name, from, to}]: what this revision changed (size and replicas included).
  diff jsonb not null default '[]',
  plan jsonb,
  reason text,
  actor text not null,
  rollback_of integer,
  -- The change machine applying it (entity of kind 'change'); null for revision 1.
  change_id text unique,
  created_at timestamptz not null default now(),
  primary key (cluster_id, revision)
);

-- Every live cluster starts at revision 1: what it was created with.
insert into config_revisions (cluster_id, revision, size, replicas, settings, defaults, actor, reason)
select id, 1, spec ->> 'size', (spec ->> 'replicas')::int, coalesce(spec -> 'settings', '{}'), coalesce(spec -> 'defaults', '{}'), 'cellar', 'created'
  from clusters;

-- A replica restarting for a change (or being removed) leaves the routes first.
alter table instances add column in_route boolean not null default true;
