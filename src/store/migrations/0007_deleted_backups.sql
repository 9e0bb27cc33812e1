-- A deleted cluster's backups stay restorable for a retention period; then the backup schedule
-- removes its whole backup area (base backups and archived WAL) and records it here, so the
-- cluster is never looked at again.

alter table clusters add column backups_purged_at timestamptz;
create index clusters_backups_to_purge on clusters (deleted_at, id) where deleted_at is not null and backups_purged_at is null;
