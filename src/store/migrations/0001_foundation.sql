-- Cellar cell store, foundation: orgs and tokens, clusters and instances, machines (the queue),
-- signals, events, and allocated ports.

create table orgs (
  id text primary key,
  name text not null unique,
  created_at timestamptz not null default now()
);

create table tokens (
  id text primary key,
  org_id text not null references orgs (id),
  -- sha256 of the bearer token; the token itself is shown once and never stored.
  secret_hash text not null unique,
  admin boolean not null default false,
  created_at timestamptz not null default now()
);

create table clusters (
  id text primary key,
  org_id text not null references orgs (id),
  name text not null,
  -- desired spec: size, storage, version, replicas.
  spec jsonb not null,
  -- generated passwords; readable only by the control plane and the token's org through the API.
  secrets jsonb not null,
  created_at timestamptz not null default now(),
  deleted_at timestamptz
);
create unique index clusters_live_name on clusters (org_id, name) where deleted_at is null;

create table instances (
  id text primary key,
  cluster_id text not null references clusters (id),
  ordinal integer not null,
  role text not null check (role in ('primary', 'replica')),
  port integer,
  -- last observed status, written by the instance machine's probes.
  observed jsonb not null default '{}',
  observed_at timestamptz,
  created_at timestamptz not null default now(),
  deleted_at timestamptz,
  unique (cluster_id, ordinal)
);

-- Ports handed to instances; the unique key makes allocation safe across engine processes.
create table ports (
  port integer primary key,
  instance_id text not null unique,
  allocated_at timestamptz not null default now()
);

create table machines (
  id text primary key,
  kind text not null,
  entity_id text not null,
  -- the cluster this machine works for, copied to its events for the cluster's timeline.
  cluster_id text,
  label text not null,
  lane text not null check (lane in ('high', 'normal')),
  -- null once the machine is done or failed: it is never claimed again.
  next_tick_at timestamptz,
  lease_owner text,
  lease_expires_at timestamptz,
  attempt integer not null default 0,
  version bigint not null default 0,
  data jsonb not null default '{}',
  last_error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (kind, entity_id)
);
create index machines_due on machines (lane, next_tick_at) where next_tick_at is not null;

create table signals (
  id bigserial primary key,
  machine_id text not null references machines (id) on delete cascade,
  name text not null,
  created_at timestamptz not null default now(),
  unique (machine_id, name)
);

create table events (
  id bigserial primary key,
  at timestamptz not null default now(),
  machine_id text not null,
  kind text not null,
  entity_id text not null,
  -- the cluster an event belongs to, for a cluster's timeline.
  cluster_id text,
  from_label text,
  to_label text not null,
  reason text not null default ''
);
create index events_cluster on events (cluster_id, id);
