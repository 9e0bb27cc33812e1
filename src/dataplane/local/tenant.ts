import { platformRoles } from '../../lib/roles.js';
import { clusterRoles } from '../dataplane.js';

/**
 * What a tenant may do beyond owning its database (DESIGN §3a). On Postgres 15 CREATEROLE can
 * grant pg_execute_server_program, pg_read_server_files and pg_write_server_files, so `app` does
 * not have it. It makes further login roles for its applications through these functions in
 * database `app`, which run as `cellar_role_admin` (NOLOGIN, CREATEROLE, never superuser) and can
 * only make plain login roles: no superuser, no CREATEDB, no CREATEROLE, no replication, no
 * BYPASSRLS, no membership of any predefined role. `app` administers the roles it made (it may
 * grant them and SET ROLE to them); it may change their passwords and drop them only through
 * these functions, and only for roles they made.
 *
 * Run once, as the superuser, in database `app` of every new cluster (the template).
 */

export const roleAdmin = platformRoles.roleAdmin;
/** Names a tenant may not take: Postgres' own, Cellar's, and the cluster roles. */
export const reservedRolePattern = '^(pg_|cellar|postgres$|app$|public$|none$|current_user$|session_user$|current_role$)';
export const rolePasswordLengthMin = 12;

export const tenantRoleSql = `
create role ${roleAdmin} nologin createrole;
create schema cellar authorization postgres;
revoke all on schema cellar from public;
grant usage on schema cellar to ${clusterRoles.app};

create table cellar.tenant_roles (
  name name primary key,
  created_at timestamptz not null default now()
);
alter table cellar.tenant_roles owner to ${roleAdmin};
revoke all on cellar.tenant_roles from public;
grant select on cellar.tenant_roles to ${clusterRoles.app};

create function cellar.check_role_name(role_name text) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  if role_name is null or role_name !~ '^[a-z_][a-z0-9_]{0,62}$' then
    raise exception using errcode = '22023',
      message = format('role name %s must be 1-63 characters of a-z, 0-9 and _, starting with a letter or _', quote_nullable(role_name));
  end if;
  if role_name ~ '${reservedRolePattern}' then
    raise exception using errcode = '42939',
      message = format('role name %s is reserved (pg_*, cellar*, postgres, app and SQL keywords)', quote_literal(role_name));
  end if;
end $$;

create function cellar.check_role_password(password text) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  if password is null or (length(password) < ${rolePasswordLengthMin} and password !~ '^SCRAM-SHA-256[$]') then
    raise exception using errcode = '22023',
      message = 'password must be at least ${rolePasswordLengthMin} characters (or a SCRAM-SHA-256 verifier)';
  end if;
end $$;

create function cellar.create_role(role_name text, password text) returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
  perform cellar.check_role_name(role_name);
  perform cellar.check_role_password(password);
  execute format('create role %I login nosuperuser nocreatedb nocreaterole noreplication nobypassrls inherit password %L', role_name, password);
  execute format('grant %I to ${clusterRoles.app} with admin option', role_name);
  insert into cellar.tenant_roles (name) values (role_name);
end $$;

create function cellar.set_role_password(role_name text, password text) returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
  perform cellar.check_role_password(password);
  if not exists (select 1 from cellar.tenant_roles where name = role_name) then
    raise exception using errcode = '42704', message = format('role %s was not made with cellar.create_role', quote_nullable(role_name));
  end if;
  execute format('alter role %I password %L', role_name, password);
end $$;

create function cellar.drop_role(role_name text) returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
  if not exists (select 1 from cellar.tenant_roles where name = role_name) then
    raise exception using errcode = '42704', message = format('role %s was not made with cellar.create_role', quote_nullable(role_name));
  end if;
  execute format('drop role %I', role_name);
  delete from cellar.tenant_roles where name = role_name;
end $$;

alter function cellar.create_role(text, text) owner to ${roleAdmin};
alter function cellar.set_role_password(text, text) owner to ${roleAdmin};
alter function cellar.drop_role(text) owner to ${roleAdmin};
alter function cellar.check_role_name(text) owner to ${roleAdmin};
alter function cellar.check_role_password(text) owner to ${roleAdmin};
revoke all on all functions in schema cellar from public;
grant execute on function cellar.create_role(text, text), cellar.set_role_password(text, text), cellar.drop_role(text) to ${clusterRoles.app};
grant usage on schema cellar to ${roleAdmin};
`;
