-- The console's charts (issue 17, docs/CONSOLE.md): what each instance's probe saw, at most every
-- few seconds per instance (the insert skips while a newer sample exists), kept an hour (each
-- insert deletes its instance's older ones). Lag is taken at the sample from the primary's last
-- observed LSN; transactions is the server's counter (rates are taken between samples of one
-- instance).
create table instance_samples (
  instance_id text not null references instances (id) on delete cascade,
  cluster_id text not null,
  role text not null,
  at timestamptz not null default now(),
  lag_bytes bigint,
  connections integer,
  transactions bigint,
  primary key (instance_id, at)
);
create index instance_samples_cluster on instance_samples (cluster_id, at);
