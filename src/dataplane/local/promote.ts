import { join } from 'node:path';
import type pg from 'pg';
import { sleep } from '../../lib/clock.js';
import { clusterRoles, type ClusterSecrets, type UpstreamRef } from '../dataplane.js';
import { run, type RunAs } from '../../postgres/osuser.js';
import { localSuperuser, sqlState, withClient, type ConnectTarget } from '../../postgres/sql.js';

/**
 * The failover half of the Postgres domain: promote a standby, checkpoint a new primary, bring a
 * crashed primary to a clean shutdown and rewind it onto the new timeline (DESIGN.md §3 facts).
 */

/** Promote to writable takes 0.04 s here; pg_ctl -w would poll every 100 ms, so poll ourselves. */
export const promotePollMs = 5;
/**
 * A standby whose WAL receiver has just failed can miss a promote request and sleep out
 * wal_retrieve_retry_interval first (seen in raw Postgres 15): ask again this often.
 */
export const promoteRepeatMs = 100;
export const promoteWaitMsMax = 60_000;
/** Crash recovery of the old primary replays WAL since its last checkpoint. */
export const crashRecoveryMsMax = 10 * 60_000;
export const rewindMsMax = 60 * 60_000;
const controlDataMsMax = 10_000;

async function inRecovery(client: pg.Client): Promise<boolean> {
  const result = await client.query<{ in_recovery: boolean }>('select pg_is_in_recovery() as in_recovery');
  return result.rows[0]?.in_recovery === true;
}

/** SQLSTATE object_not_in_prerequisite_state: pg_promote's "recovery is not in progress". */
const sqlStateNotInRecovery = '55000';

/**
 * Asks the server to promote (wait => false: pg_promote's own wait polls every 100 ms, most of a
 * promote's cost here). A server that left recovery since it was last looked at answers "recovery
 * is not in progress": that is the promotion done, not a failure.
 */
export async function requestPromote(client: pg.Client): Promise<void> {
  try {
    await client.query('select pg_promote(false)');
  } catch (error) {
    if (sqlState(error) !== sqlStateNotInRecovery) throw error;
  }
}

/** Triggers promotion and waits until the server leaves recovery; no-op on a primary. */
export async function promoteLocal(runDir: string, port: number): Promise<void> {
  await withClient(localSuperuser(runDir, port), async (client) => {
    if (!(await inRecovery(client))) return;
    await requestPromote(client);
    const startedMs = Date.now();
    let askedMs = startedMs;
    while (Date.now() < startedMs + promoteWaitMsMax) {
      if (!(await inRecovery(client))) return;
      await sleep(promotePollMs);
      if (Date.now() - askedMs < promoteRepeatMs) continue;
      askedMs = Date.now();
      // Repeating is harmless: a promote already under way ignores it, and one that finished
      // between the look and the request is not an error (requestPromote).
      await requestPromote(client);
    }
    throw new Error(`still in recovery ${promoteWaitMsMax} ms after pg_promote`);
  });
}

export async function reloadLocal(runDir: string, port: number): Promise<void> {
  await withClient(localSuperuser(runDir, port), (client) => client.query('select pg_reload_conf()'));
}

export function superuserOverTcp(upstream: Pick<UpstreamRef, 'host' | 'port'>, secrets: ClusterSecrets): ConnectTarget {
  return { host: upstream.host, port: upstream.port, user: clusterRoles.superuser, database: 'postgres', password: secrets.superuserPassword };
}

/**
 * pg_rewind right after a promote finds no divergence (the new timeline is not in pg_control
 * until a checkpoint) and the old primary then cannot follow: checkpoint first.
 */
export async function checkpoint(upstream: UpstreamRef, secrets: ClusterSecrets): Promise<void> {
  await withClient(superuserOverTcp(upstream, secrets), (client) => client.query('checkpoint'));
}

/** pg_controldata's "Database cluster state", e.g. `shut down`, `in production`. */
export async function clusterState(binDir: string, pgdata: string, runAs: RunAs): Promise<string> {
  const { stdout } = await run(join(binDir, 'pg_controldata'), ['-D', pgdata], { runAs, timeoutMs: controlDataMsMax });
  const match = /^Database cluster state:\s*(.+)$/m.exec(stdout);
  if (match?.[1] === undefined) throw new Error(`pg_controldata -D ${pgdata} printed no cluster state`);
  return match[1].trim();
}

/**
 * pg_rewind needs a target that was shut down cleanly. A primary that crashed is brought there by
 * crash recovery in single-user mode (no listener, stdin at EOF so it exits at once), as Patroni
 * does. Fails while the dead postmaster's children still hold its shared memory; the caller retries.
 */
export async function ensureCleanShutdown(binDir: string, pgdata: string, runAs: RunAs): Promise<void> {
  const state = await clusterState(binDir, pgdata, runAs);
  if (state === 'shut down' || state === 'shut down in recovery') return;
  await run(join(binDir, 'postgres'), ['--single', '-D', pgdata, '-c', 'archive_mode=off', 'template1'], { runAs, timeoutMs: crashRecoveryMsMax });
  const after = await clusterState(binDir, pgdata, runAs);
  if (after !== 'shut down') throw new Error(`crash recovery of ${pgdata} left it "${after}", not shut down`);
}

/** Rewinds pgdata onto the upstream's timeline; the upstream's config files come along (re-apply ours). */
export async function rewind(binDir: string, pgdata: string, upstream: UpstreamRef, secrets: ClusterSecrets, runAs: RunAs): Promise<void> {
  const source = `host=${upstream.host} port=${upstream.port} user=${clusterRoles.superuser} dbname=postgres sslmode=disable gssencmode=disable connect_timeout=10`;
  await run(join(binDir, 'pg_rewind'), ['--target-pgdata', pgdata, '--source-server', source], {
    runAs,
    timeoutMs: rewindMsMax,
    env: { PGPASSWORD: secrets.superuserPassword },
  });
}
