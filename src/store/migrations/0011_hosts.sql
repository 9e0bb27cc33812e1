-- Many hosts (docs/HOSTS.md): the hosts of the cell, their one-time join tokens and certificates,
-- the lease each agent holds, and which host each instance lives on.

create table hosts (
  id text primary key,
  name text not null,
  -- The address instances listen on and the agent serves on; an IPv4 or IPv6 literal.
  address text not null,
  agent_port integer not null check (agent_port between 1 and 65535),
  zone text not null,
  memory_mb integer not null check (memory_mb > 0),
  disk_gb integer not null check (disk_gb > 0),
  slots integer not null check (slots > 0),
  -- The control plane's own machine: operations run in process, no TLS, no lease.
  local boolean not null default false,
  created_at timestamptz not null default now(),
  joined_at timestamptz,
  removed_at timestamptz,
  -- The store's clock when the last heartbeat was answered with a renewal: the agent's lease has
  -- certainly expired once the store's clock passes this plus the lease and the clock margin.
  lease_renewed_at timestamptz
);

-- A removed host's name and address may be used again.
create unique index hosts_name on hosts (name) where removed_at is null;
create unique index hosts_address on hosts (address) where removed_at is null;
create unique index hosts_one_local on hosts (local) where local and removed_at is null;

create table host_join_tokens (
  host_id text primary key references hosts (id),
  -- sha256 of the token's secret; the token is shown once and never stored.
  secret_hash text not null unique,
  expires_at timestamptz not null,
  used_at timestamptz
);

create table host_certificates (
  -- hex, as openssl prints it
  serial text primary key,
  host_id text not null references hosts (id),
  issued_at timestamptz not null default now(),
  expires_at timestamptz not null,
  revoked_at timestamptz
);

create index host_certificates_host on host_certificates (host_id);

alter table instances add column host_id text references hosts (id);
create index instances_host on instances (host_id) where deleted_at is null;
