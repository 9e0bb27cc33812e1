-- High availability. A fenced instance is never routed (the old primary during a failover, until
-- it has rejoined as a replica). A requested switchover keeps its target here until it runs.

alter table instances add column fenced boolean not null default false;
alter table clusters add column switchover_to text;
