-- A paused route makes the proxy hold new connections (bounded) instead of sending them on:
-- switchover uses it so clients wait rather than fail.

alter table clusters add column route_paused boolean not null default false;
