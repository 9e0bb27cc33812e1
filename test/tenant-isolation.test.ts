import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { lstat, mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import type { ClusterView } from '../src/api/view.js';
import { Binaries } from '../src/postgres/binaries.js';
import { clusterUserName, lookupUser, type RunAs } from '../src/postgres/osuser.js';
import { eventually, postmasterPid, queryUri, TestCellar } from './helpers/cellar.js';

/**
 * Every tenant is hostile (DESIGN §3a): a tenant's login through the proxy cannot reach the host,
 * a shell inside one cluster's server reaches no other cluster's files and no secret of the cell,
 * and a link planted by that shell never turns root's writes elsewhere.
 */

interface Escalation {
  readonly what: string;
  readonly sql: string;
  /** The SQLSTATEs that count as refused (the first is what Postgres 15 answers). */
  readonly refusedWith: readonly string[];
}

const insufficientPrivilege = '42501';

/** Everything DESIGN §3a says a tenant may not do, each tried as `app` through the proxy. */
const escalations: readonly Escalation[] = [
  { what: 'become superuser', sql: 'alter role app superuser', refusedWith: [insufficientPrivilege] },
  { what: 'gain CREATEROLE', sql: 'alter role app createrole', refusedWith: [insufficientPrivilege] },
  { what: 'grant itself pg_execute_server_program', sql: 'grant pg_execute_server_program to app', refusedWith: [insufficientPrivilege] },
  { what: 'grant itself pg_read_server_files', sql: 'grant pg_read_server_files to app', refusedWith: [insufficientPrivilege] },
  { what: 'grant itself pg_write_server_files', sql: 'grant pg_write_server_files to app', refusedWith: [insufficientPrivilege] },
  { what: 'create a superuser role', sql: "create role evil superuser login password 'evil-password-1'", refusedWith: [insufficientPrivilege] },
  { what: 'create any role directly', sql: "create role evil login password 'evil-password-1'", refusedWith: [insufficientPrivilege] },
  { what: 'COPY … TO PROGRAM', sql: "copy (select 1) to program 'id > /tmp/cellar-escape'", refusedWith: [insufficientPrivilege] },
  { what: 'COPY … FROM PROGRAM', sql: "create temp table escape_out (line text); copy escape_out from program 'id'", refusedWith: [insufficientPrivilege] },
  { what: 'COPY from a server file', sql: "create temp table passwd (line text); copy passwd from '/etc/passwd'", refusedWith: [insufficientPrivilege] },
  { what: 'COPY to a server file', sql: "copy (select 1) to '/tmp/cellar-escape'", refusedWith: [insufficientPrivilege] },
  { what: 'lo_import a server file', sql: "select lo_import('/etc/passwd')", refusedWith: [insufficientPrivilege] },
  { what: 'lo_export to a server file', sql: "select lo_export(lo_create(0), '/tmp/cellar-escape')", refusedWith: [insufficientPrivilege] },
  { what: 'read a server file', sql: "select pg_read_file('/etc/passwd')", refusedWith: [insufficientPrivilege] },
  { what: 'list a server directory', sql: "select pg_ls_dir('/')", refusedWith: [insufficientPrivilege] },
  { what: 'a C function from a system library', sql: "create function cellar_escape() returns int language c as '/lib/x86_64-linux-gnu/libc.so.6', 'getpid'", refusedWith: [insufficientPrivilege] },
  { what: 'an untrusted language (internal)', sql: "create function cellar_escape_internal() returns text language internal as 'pgsql_version'", refusedWith: [insufficientPrivilege] },
  { what: 'LOAD a library', sql: "load 'auto_explain'", refusedWith: [insufficientPrivilege] },
  { what: 'set session_preload_libraries', sql: "set session_preload_libraries = 'auto_explain'", refusedWith: [insufficientPrivilege] },
  { what: 'set it for its role', sql: "alter role app set session_preload_libraries = 'auto_explain'", refusedWith: [insufficientPrivilege] },
  { what: 'set shared_preload_libraries for its database', sql: "alter database app set shared_preload_libraries = 'auto_explain'", refusedWith: [insufficientPrivilege, '55P02'] },
  { what: 'ALTER SYSTEM', sql: "alter system set archive_command = 'id'", refusedWith: [insufficientPrivilege] },
  { what: 'change archive_command at run time', sql: "select set_config('archive_command', 'id', false)", refusedWith: [insufficientPrivilege, '55P02'] },
  { what: 'dblink (reaches the local socket)', sql: 'create extension dblink', refusedWith: [insufficientPrivilege] },
  { what: 'postgres_fdw', sql: 'create extension postgres_fdw', refusedWith: [insufficientPrivilege] },
  { what: 'file_fdw', sql: 'create extension file_fdw', refusedWith: [insufficientPrivilege] },
  { what: 'adminpack', sql: 'create extension adminpack', refusedWith: [insufficientPrivilege] },
  { what: 'SET ROLE postgres', sql: 'set role postgres', refusedWith: [insufficientPrivilege] },
  { what: 'SET SESSION AUTHORIZATION postgres', sql: 'set session authorization postgres', refusedWith: [insufficientPrivilege] },
  { what: 'an event trigger', sql: "create function cellar_trigger() returns event_trigger language plpgsql as 'begin end'; create event trigger cellar_escape on ddl_command_start execute function cellar_trigger()", refusedWith: [insufficientPrivilege] },
  { what: 'replace a role function', sql: "create or replace function cellar.create_role(role_name text, password text) returns void language sql as 'select'", refusedWith: [insufficientPrivilege] },
  { what: 'write the role list', sql: "insert into cellar.tenant_roles (name) values ('postgres')", refusedWith: [insufficientPrivilege] },
  { what: 'a role function making a reserved role', sql: "select cellar.create_role('pg_execute_server_program', 'long-enough-password')", refusedWith: ['42939'] },
  { what: 'a role function making a cellar role', sql: "select cellar.create_role('cellar_replication', 'long-enough-password')", refusedWith: ['42939'] },
  { what: 'a role function with SQL in the name', sql: "select cellar.create_role('x superuser --', 'long-enough-password')", refusedWith: ['22023'] },
  { what: 'a role function changing postgres', sql: "select cellar.set_role_password('postgres', 'long-enough-password')", refusedWith: ['42704'] },
  { what: 'a role function dropping replication', sql: "select cellar.drop_role('cellar_replication')", refusedWith: ['42704'] },
];

async function sqlStateOf(uri: string, sql: string): Promise<string | null> {
  try {
    await queryUri(uri, sql);
    return null;
  } catch (error) {
    if (error instanceof pg.DatabaseError) return error.code ?? 'unknown';
    throw error;
  }
}

/** Runs a program as another OS user (as a shell inside that cluster's server would). */
function runAs(user: RunAs, program: string, args: readonly string[]): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(program, args, { uid: user.uid, gid: user.gid, cwd: '/', env: { LC_ALL: 'C', PATH: '/usr/bin:/bin' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, output }));
  });
}

async function clusterUser(cluster: ClusterView): Promise<RunAs> {
  const user = await lookupUser(clusterUserName(cluster.id));
  assert.ok(user !== undefined, `cluster ${cluster.name} has its own OS user`);
  return user;
}

async function findFiles(root: string, name: string, depth = 0): Promise<string[]> {
  if (depth > 6) return [];
  const found: string[] = [];
  for (const entry of await readdir(root, { withFileTypes: true })) {
    const path = join(root, entry.name);
    if (entry.isFile() && entry.name === name) found.push(path);
    // Not into base/ (Postgres' own tables): the files sit at the top of each data directory.
    else if (entry.isDirectory() && entry.name !== 'base' && !entry.name.startsWith('pg_')) found.push(...(await findFiles(path, name, depth + 1)));
  }
  return found;
}

describe('tenant isolation', () => {
  let cellar: TestCellar;
  let alpha: ClusterView;
  let beta: ClusterView;

  before(async () => {
    assert.equal(process.getuid?.(), 0, 'these tests prove the root mode: run them as root (CI does)');
    // Embedded, as `cellar up` runs by default: the store's files and port are among what a tenant attacks.
    cellar = await TestCellar.create({}, { store: 'embedded' });
    await cellar.start();
    alpha = await cellar.cliJson<ClusterView>(['clusters', 'create', 'alpha', '--replicas', '0', '--wait']);
    beta = await cellar.cliJson<ClusterView>(['clusters', 'create', 'beta', '--replicas', '0', '--wait']);
  });

  after(async () => {
    await cellar.destroy();
  });

  test('every escalation a tenant tries through the proxy is refused with its SQLSTATE', async (t) => {
    assert.ok(alpha.uri);
    const outcomes = [];
    for (const escalation of escalations) outcomes.push({ ...escalation, state: await sqlStateOf(alpha.uri, escalation.sql) });
    const allowed = outcomes.filter((outcome) => outcome.state === null || !outcome.refusedWith.includes(outcome.state));
    t.diagnostic(`escalations refused: ${outcomes.length - allowed.length} of ${outcomes.length}`);
    assert.deepEqual(allowed.map((outcome) => `${outcome.what}: ${outcome.state ?? 'succeeded'}`), []);
    const [row] = await queryUri<{ superuser: boolean; createrole: boolean }>(alpha.uri, "select rolsuper as superuser, rolcreaterole as createrole from pg_roles where rolname = 'app'");
    assert.deepEqual(row, { superuser: false, createrole: false });
  });

  test("the platform's roles cannot connect through the proxy, whatever the password", async () => {
    const base: string = alpha.uri ?? '';
    for (const role of ['postgres', 'cellar_replication', 'cellar_role_admin']) {
      const target: URL = new URL(base);
      target.username = `${role}.${alpha.routeKey ?? alpha.name}`;
      const error: unknown = await queryUri(target.toString(), 'select 1').then(() => undefined, (caught: unknown) => caught);
      assert.ok(error instanceof pg.DatabaseError, `${role} got in`);
      assert.equal(error.code, '28000', `${role}: ${error.message}`);
      assert.match(error.message, /reserved for the platform/);
    }
  });

  test('what a tenant may do works: tables, schemas, databases, trusted extensions, and login roles it makes', async () => {
    assert.ok(alpha.uri);
    await queryUri(alpha.uri, 'create schema reports');
    await queryUri(alpha.uri, 'create table reports.daily (day date primary key, total bigint)');
    await queryUri(alpha.uri, 'create extension pgcrypto');
    const [digest] = await queryUri<{ hex: string }>(alpha.uri, "select encode(digest('x', 'sha256'), 'hex') as hex");
    assert.equal(digest?.hex.length, 64);
    await queryUri(alpha.uri, 'create database analytics');
    await queryUri(alpha.uri, "select cellar.create_role('reporting', 'reporting-password-1')");
    await queryUri(alpha.uri, 'grant usage on schema reports to reporting; grant select on reports.daily to reporting');
    const reportingUri = new URL(alpha.uri);
    reportingUri.username = `reporting.${alpha.routeKey ?? alpha.name}`;
    reportingUri.password = 'reporting-password-1';
    const [seen] = await queryUri<{ who: string; rows: string }>(reportingUri.toString(), 'select current_user as who, count(*)::text as rows from reports.daily');
    assert.deepEqual(seen, { who: 'reporting', rows: '0' });
    assert.equal(await sqlStateOf(reportingUri.toString(), 'grant pg_execute_server_program to reporting'), insufficientPrivilege, 'a role the tenant made is as powerless');
    await queryUri(alpha.uri, "select cellar.set_role_password('reporting', 'reporting-password-2')");
    reportingUri.password = 'reporting-password-2';
    await queryUri(reportingUri.toString(), 'select 1');
    await queryUri(alpha.uri, 'revoke all on schema reports from reporting; revoke all on reports.daily from reporting');
    await queryUri(alpha.uri, "select cellar.drop_role('reporting')");
    assert.equal(await sqlStateOf(reportingUri.toString(), 'select 1'), '28P01', 'the dropped role cannot log in');
  });

  test("one cluster's OS user reads no other cluster's data or backups, no store data and no secret of the cell", async () => {
    const alphaUser = await clusterUser(alpha);
    const betaUser = await clusterUser(beta);
    assert.notEqual(alphaUser.uid, betaUser.uid);
    const alphaPrimary = alpha.instances[0]?.id;
    const betaPrimary = beta.instances[0]?.id;
    assert.ok(alphaPrimary && betaPrimary);
    const data = cellar.dataDir;
    const home = cellar.env.CELLAR_HOME ?? '';
    // The control: alpha's user reads its own files, so a refusal below is about permissions.
    assert.equal((await runAs(alphaUser, '/bin/cat', [join(data, 'instances', alphaPrimary, 'pgdata', 'PG_VERSION')])).code, 0);
    const backupRoot = (await readdir(data)).includes('backups') ? join(data, 'backups') : join(home, 'backups');
    const forbidden = [
      ['ls', join(data, 'instances', betaPrimary, 'pgdata')],
      ['cat', join(data, 'instances', betaPrimary, 'pgdata', 'PG_VERSION')],
      ['cat', join(data, 'instances', betaPrimary, 'pgdata', 'cellar.conf')],
      ['ls', join(backupRoot, beta.id, 'wal')],
      ['ls', join(backupRoot, beta.id, 'base')],
      ['ls', join(data, 'store', 'pgdata')],
      ['cat', join(data, 'store', 'pgdata', 'PG_VERSION')],
      ['ls', join(data, 'instances')],
      ['cat', join(home, 'credentials')],
      ['cat', join(home, 'store.json')],
      ['cat', join(home, 'tls', 'ca.key')],
    ] as const;
    const readable = [];
    for (const [program, path] of forbidden) {
      const result = await runAs(alphaUser, `/bin/${program}`, [path]);
      if (result.code === 0) readable.push(path);
      else assert.match(result.output, /Permission denied/, `${program} ${path}: ${result.output}`);
    }
    assert.deepEqual(readable, [], 'paths a tenant shell could read');
    // The files it was denied do exist, so the refusals are not "no such file".
    for (const path of [join(home, 'credentials'), join(home, 'store.json'), join(data, 'store', 'pgdata', 'PG_VERSION')]) await stat(path);
  });

  test("no pg_hba.conf trusts anyone: the socket admits only Cellar's OS user, TCP asks every role for its password", async () => {
    const hbaFiles = await findFiles(cellar.dataDir, 'pg_hba.conf');
    assert.ok(hbaFiles.length >= 3, `the store, a template and the instances have one (found ${hbaFiles.join(', ')})`);
    for (const file of hbaFiles) {
      const lines = (await readFile(file, 'utf8')).split('\n').filter((line) => !line.startsWith('#') && line.trim() !== '');
      assert.deepEqual(lines.filter((line) => /\btrust\b/.test(line)), [], `${file} trusts`);
    }
    const user = await clusterUser(alpha);
    const instanceId = alpha.instances[0]?.id;
    const port = alpha.instances[0]?.port;
    assert.ok(instanceId && port);
    const psql = join((await Binaries.discover({ pgBin: null })).binFor(15), 'psql');
    const socket = await runAs(user, psql, ['-X', '-w', '-h', join(cellar.dataDir, 'instances', instanceId, 'run'), '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-c', 'select 1']);
    assert.notEqual(socket.code, 0);
    assert.match(socket.output, /Peer authentication failed/, 'the cluster user is not mapped to postgres');
    const storePort = (JSON.parse(await readFile(join(cellar.env.CELLAR_HOME ?? '', 'store.json'), 'utf8')) as { port: number }).port;
    const store = await runAs(user, psql, ['-X', '-w', '-h', '127.0.0.1', '-p', String(storePort), '-U', 'postgres', '-d', 'cellar', '-c', 'select 1']);
    assert.notEqual(store.code, 0);
    assert.match(store.output, /password/, 'the store asks for the password the tenant does not have');
  });

  test("links planted by a cluster's OS user in its data directory never turn root's writes elsewhere", async () => {
    const user = await clusterUser(alpha);
    const instanceId = alpha.instances[0]?.id;
    assert.ok(instanceId && alpha.uri);
    const instanceRoot = join(cellar.dataDir, 'instances', instanceId);
    const pgdata = join(instanceRoot, 'pgdata');
    const targets = join(cellar.root, 'targets');
    await mkdir(targets, { mode: 0o700 });
    // Root's own files that a planted link points at; none may change.
    const planted = ['cellar.conf.new', 'pg_hba.conf.new', 'pg_ident.conf.new', 'cellar.sync.conf.new', 'standby.signal.new', 'pg_ident.conf'];
    const before = new Map<string, string>();
    for (const name of planted) {
      const target = join(targets, name);
      await writeFile(target, `root's file ${name}\n`, { mode: 0o600 });
      before.set(target, `root's file ${name}\n`);
      const linked = await runAs(user, '/bin/ln', ['-sfn', target, join(pgdata, name)]);
      assert.equal(linked.code, 0, `planting ${name}: ${linked.output}`);
    }
    // The old attack's place, the server log, sits in Cellar's own directory: nothing can be planted there.
    const log = await runAs(user, '/bin/ln', ['-sfn', join(targets, 'cellar.conf.new'), join(instanceRoot, 'postgres.log')]);
    assert.notEqual(log.code, 0);
    assert.match(log.output, /Permission denied/);

    // A crash makes Cellar start the server again, which rewrites cellar.conf, pg_hba.conf and pg_ident.conf as root.
    const oldPid = await postmasterPid(cellar.dataDir, instanceId);
    process.kill(oldPid, 'SIGKILL');
    await eventually('the primary to be restarted', async () => {
      const pid = await postmasterPid(cellar.dataDir, instanceId).catch(() => undefined);
      if (pid === undefined || pid === oldPid) return undefined;
      return (await queryUri(alpha.uri as string, 'select 1').catch(() => undefined)) === undefined ? undefined : pid;
    }, 90_000);
    for (const [target, content] of before) {
      const info = await stat(target);
      assert.equal(await readFile(target, 'utf8'), content, `${target} was written through a link`);
      assert.equal(info.uid, 0, `${target} was given away`);
      assert.equal(info.mode & 0o777, 0o600, `${target} changed mode`);
    }
    const ident = await lstat(join(pgdata, 'pg_ident.conf'));
    assert.ok(ident.isFile(), 'the planted pg_ident.conf link was replaced by a file');
    assert.equal(ident.uid, user.uid);
  });
});
