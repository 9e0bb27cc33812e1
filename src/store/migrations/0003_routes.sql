-- The proxy's routing key: unique among live clusters of the cell, even when two orgs use the
-- same cluster name. Warm clusters get theirs when adopted.

alter table clusters add column route_key text;
update clusters set route_key = id where route_key is null and not pooled;
create unique index clusters_route_key on clusters (route_key) where deleted_at is null;
