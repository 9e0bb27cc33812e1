-- Backups: base backups of a cluster, each driven by a `backup` machine, with what it covers and
-- whether a restore of it was proven. The WAL archive itself lives in the backup store, not here.

create table backups (
  id text primary key,
  cluster_id text not null references clusters (id),
  -- 'scheduled' or 'manual'.
  reason text not null check (reason in ('scheduled', 'manual')),
  status text not null default 'running' check (status in ('running', 'completed', 'failed', 'deleted')),
  source_instance_id text,
  start_lsn text,
  end_lsn text,
  timeline integer,
  start_wal_file text,
  bytes bigint,
  -- how long pg_basebackup ran: bytes / take_ms is the backup's throughput.
  take_ms integer,
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  -- null until checked; then whether a restore of it started and answered, and why not.
  verified boolean,
  -- set while a restore check runs: bounds how many run at once across the cell.
  verifying_at timestamptz,
  verified_at timestamptz,
  verify_detail text,
  error text,
  deleted_at timestamptz
);
create index backups_cluster on backups (cluster_id, started_at);
