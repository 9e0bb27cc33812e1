-- Flags, rods and the freeze (issue 16, docs/CONTROLS.md): every change an operator makes to them,
-- who, when, what it was and became, and why. One table for all three, so one audit answers
-- "what changed how the fleet behaves".
create table control_changes (
  id bigserial primary key,
  at timestamptz not null default now(),
  -- 'flag', 'cohort', 'rod' or 'freeze'
  kind text not null,
  -- the flag key, cohort name or rod name ('freeze' for the freeze)
  name text not null,
  -- where it applies: 'global', 'cell:NAME', 'org:ID', 'cluster:ID'
  scope text not null default 'global',
  old_value jsonb,
  new_value jsonb,
  actor text not null,
  reason text not null
);
create index control_changes_name on control_changes (kind, name, id);
