-- Control rods (docs/CONTROLS.md "Rods"): the values operators set, live, over the process
-- defaults. A rod not stored here runs at its process default (its environment variable, else the
-- catalogue's). The catalogue in code (src/lib/rod-catalogue.ts) checks names and bounds; every
-- change is audited in control_changes in the same transaction.
create table rods (
  name text not null,
  value bigint not null,
  -- 'global', or 'cell:NAME' for one cell (which wins over global there)
  scope text not null default 'global',
  updated_at timestamptz not null default now(),
  updated_by text not null,
  primary key (name, scope)
);

-- Provisioning admission (the provisioning.creates-per-tick rod): when each new cluster was let
-- start provisioning. Counted over the last high-lane tick, under an advisory lock, so every
-- engine of the cell shares one budget. Rows older than a day are pruned as admissions are made.
create table create_admissions (
  cluster_id text primary key,
  at timestamptz not null default now()
);
create index create_admissions_at on create_admissions (at);
