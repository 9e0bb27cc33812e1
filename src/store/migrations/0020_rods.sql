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
