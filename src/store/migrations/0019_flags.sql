-- Feature flags (issue 16, docs/CONTROLS.md "Flags"): a value for a flag at one level, optionally
-- for a percentage of ids; and cohorts, named sets of orgs and clusters that all get a set of flag
-- values. Flags themselves are declared in code (src/lib/flag-catalogue.ts), so a key here is
-- checked against the catalogue when it is set, not by a foreign key.
create table flag_rules (
  flag_key text not null,
  -- 'global', 'cell', 'org', 'cluster'
  level text not null check (level in ('global', 'cell', 'org', 'cluster')),
  -- '' for global; the cell's name; the org's or the cluster's id
  target text not null,
  value jsonb not null,
  -- null: every id at the level; else ids whose bucket is below it
  percent numeric(5, 2) check (percent between 0 and 100),
  reason text not null,
  set_by text not null,
  set_at timestamptz not null default now(),
  primary key (flag_key, level, target),
  check ((level = 'global') = (target = ''))
);

create table cohorts (
  name text primary key,
  description text not null default '',
  -- flag key -> the value every member gets
  flag_values jsonb not null default '{}',
  created_by text not null,
  created_at timestamptz not null default now()
);

create table cohort_members (
  cohort_name text not null references cohorts (name) on delete cascade,
  -- 'org' or 'cluster'
  member_kind text not null check (member_kind in ('org', 'cluster')),
  member_id text not null,
  added_by text not null,
  added_at timestamptz not null default now(),
  primary key (cohort_name, member_id)
);
