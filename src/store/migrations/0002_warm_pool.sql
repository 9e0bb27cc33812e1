-- The warm pool: running clusters made ahead of demand in a reserved org, handed to the first
-- create whose spec matches. `_pool` cannot collide with a user org (names are DNS labels).

alter table clusters add column pooled boolean not null default false;

insert into orgs (id, name) values ('org_warmpoolaaaa', '_pool') on conflict do nothing;
