-- The freeze (issue 16, docs/CONTROLS.md "Freeze"; `freeze` is a keyword in Postgres, hence cell_freeze): while frozen, non-emergency change waits
-- (rollouts, new provisioning, configuration changes, scheduled backups); failover, switchover and
-- replica replacement go on. One row for the cell, so reading it is one indexed lookup per gated
-- step; its history is in control_changes (kind 'freeze').
create table cell_freeze (
  -- the one row: a second cannot be inserted
  cell text primary key default 'local' check (cell = 'local'),
  frozen boolean not null default false,
  -- when the current freeze (or the last thaw) began, who did it and why; null before the first
  since timestamptz,
  actor text,
  reason text
);
insert into cell_freeze (cell) values ('local');
