-- Tokens: a label, an optional expiry, revocation, rotation with a grace period, and when each was
-- last used. A revoked or expired token stays listed (who had access, until when); it no longer
-- authenticates.

alter table tokens
  add column name text,
  add column expires_at timestamptz,
  add column revoked_at timestamptz,
  -- updated at most once a minute per token, so authentication is not a write per request.
  add column last_used_at timestamptz,
  add column rotated_at timestamptz,
  -- the secret the last rotation replaced: it still authenticates until previous_expires_at.
  add column previous_secret_hash text unique,
  add column previous_expires_at timestamptz;

create index tokens_org on tokens (org_id, created_at);
