-- Storage is part of a cluster's configuration (issue 15): each revision records the allocation,
-- so that a resize is recorded, planned and cooled down like any other change.
alter table config_revisions add column storage_gb integer;
update config_revisions r set storage_gb = (c.spec ->> 'storageGb')::int from clusters c where c.id = r.cluster_id;
