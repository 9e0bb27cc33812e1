import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { appDatabase, clusterRoles } from '../dataplane.js';
import { renderHba } from './conf.js';
import { buildThenRename, exists, removeStaleBuilds } from '../../postgres/build.js';
import { copyTreeBetween, ensureDirectory } from '../../postgres/files.js';
import { run, selfRunAs, type RunAs } from '../../postgres/osuser.js';
import { dataDirMode, socketPath, templatePaths } from '../../postgres/paths.js';
import { cellarConfFile, initdb, startDetached, stopServer, writeAuthFiles, writeConf } from '../../postgres/server.js';
import { tenantRoleSql } from './tenant.js';
import { escapeIdentifier, localSuperuser, withClient } from '../../postgres/sql.js';

/**
 * A bootstrapped data directory: initdb plus the cluster roles and database, no passwords (those
 * are per cluster and set on each start). Built once per major as a template and copied for each
 * new primary, or built directly per primary when templates are off.
 */

/** The bootstrap server listens on no TCP port; this only names its socket file. */
const bootstrapPort = 5432;
/** Syncing a fresh 40 MB copy takes a fraction of a second. */
const syncMsMax = 120_000;
/** A template build older than this left behind by a crashed Cellar is abandoned. */
const templateBuildMsMax = 10 * 60_000;

export interface BootstrapOptions {
  readonly binDir: string;
  /** Must not exist. */
  readonly pgdata: string;
  /** A 0700 directory of the run-as user for the bootstrap server's socket. */
  readonly runDir: string;
  readonly logFile: string;
  readonly runAs: RunAs;
}

export async function bootstrapDataDir(options: BootstrapOptions): Promise<void> {
  await initdb({ binDir: options.binDir, pgdata: options.pgdata, runAs: options.runAs });
  await writeAuthFiles(options.pgdata, renderHba(), options.runAs);
  socketPath(options.runDir, bootstrapPort);
  await writeConf(options.pgdata, cellarConfFile, {
    port: String(bootstrapPort),
    listen_addresses: '',
    unix_socket_directories: options.runDir,
  }, options.runAs);
  await startDetached(options.binDir, options.pgdata, options.logFile, options.runAs);
  try {
    await createClusterObjects(options.runDir);
  } finally {
    await stopServer(options.pgdata);
  }
  // start() writes the real cellar.conf; postmaster.opts would describe the bootstrap run.
  await rm(join(options.pgdata, cellarConfFile), { force: true });
  await rm(join(options.pgdata, 'postmaster.opts'), { force: true });
}

async function createClusterObjects(runDir: string): Promise<void> {
  await withClient(localSuperuser(runDir, bootstrapPort), async (client) => {
    const replication = escapeIdentifier(clusterRoles.replication);
    const app = escapeIdentifier(clusterRoles.app);
    await client.query(`create role ${replication} with replication login`);
    // No CREATEROLE: on Postgres 15 it can grant pg_execute_server_program (DESIGN §3a). The
    // tenant makes further login roles through the cellar schema's functions instead.
    await client.query(`create role ${app} with login createdb`);
    // CREATE DATABASE cannot run inside the implicit transaction of a multi-statement query.
    await client.query(`create database ${escapeIdentifier(appDatabase)} owner ${app}`);
  });
  await withClient({ ...localSuperuser(runDir, bootstrapPort), database: appDatabase }, async (client) => {
    await client.query(tenantRoleSql);
  });
}

/** Copies a stopped data directory (as its owner) into `target` (as the target's owner), then makes it durable. */
export async function copyDataDir(binDir: string, source: string, sourceOwner: RunAs, target: string, targetOwner: RunAs): Promise<void> {
  await copyTreeBetween(source, sourceOwner, target, targetOwner);
  // tar does not fsync; without this an OS crash after the rename could leave a torn data dir
  // that Postgres, seeing a clean shutdown in pg_control, would not repair.
  await run(join(binDir, 'initdb'), ['--sync-only', '-D', target], { runAs: targetOwner, timeoutMs: syncMsMax });
}

/**
 * The template data directory for a major version, built on first use. Concurrent builders in
 * one process share one build; across processes the rename decides and the loser discards.
 */
export class TemplateCache {
  private readonly builds = new Map<number, Promise<string>>();

  constructor(private readonly dataDir: string, private readonly runAs: RunAs) {}

  ensure(pgVersion: number, binDir: string): Promise<string> {
    const existing = this.builds.get(pgVersion);
    if (existing !== undefined) return existing;
    const build = this.build(pgVersion, binDir);
    this.builds.set(pgVersion, build);
    // A failed build is retried by the next caller rather than cached.
    build.catch(() => this.builds.delete(pgVersion));
    return build;
  }

  private async build(pgVersion: number, binDir: string): Promise<string> {
    const paths = templatePaths(this.dataDir, pgVersion);
    if (await exists(paths.pgdata)) return paths.pgdata;
    await ensureDirectory(paths.root, dataDirMode, selfRunAs());
    await ensureDirectory(paths.run, 0o700, this.runAs);
    await removeStaleBuilds(paths.pgdata, templateBuildMsMax);
    await buildThenRename(paths.pgdata, this.runAs, (tmp) =>
      bootstrapDataDir({ binDir, pgdata: tmp, runDir: paths.run, logFile: paths.log, runAs: this.runAs }),
    );
    return paths.pgdata;
  }
}
