-- Storage that protects the database (issue 15, docs/STORAGE.md "Limits"): while a cluster's
-- primary is read-only because its storage is full, what it was measured at (the proxy reads it
-- to tell clients why, and how to resize); and the cluster's autogrow policy (null: off).
alter table clusters add column storage_read_only jsonb;
alter table clusters add column storage_autogrow jsonb;
