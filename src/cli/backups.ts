import type { Command } from 'commander';
import type { BackupListView, BackupView, DeletedClusterListView } from '../api/backups.js';
import type { ClusterView } from '../api/view.js';
import type { ApiClient } from './client.js';
import { type Output, formatTable } from './output.js';

/**
 * `cellar backups …`: list (a live cluster's, or `--deleted` clusters' kept until purged), create,
 * verify and restore (from a cluster, or `--backup ID`), each with --json, and --wait on long work.
 */

const waitPollMs = 250;
const waitTimeoutSecondsDefault = 3_600;

function timeoutOption(value: string): number {
  const seconds = Number(value);
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > 86_400) throw new Error('--timeout must be an integer from 1 to 86400 seconds');
  return seconds;
}

function megabytes(bytes: number | null): string {
  return bytes === null ? '-' : `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function printBackup(out: Output, backup: BackupView): void {
  if (out.json) return out.result(backup);
  out.line(`${backup.id} of ${backup.cluster}  ${backup.status}${backup.verified === true ? ' (verified)' : ''}`);
  out.line(`  ${backup.reason}, started ${backup.startedAt}${backup.finishedAt ? `, finished ${backup.finishedAt}` : ''}, ${megabytes(backup.bytes)}`);
  if (backup.startLsn) out.line(`  WAL ${backup.startLsn} to ${backup.endLsn ?? '?'} on timeline ${backup.timeline ?? '?'}, from ${backup.sourceInstance ?? '?'}`);
  if (backup.verifyDetail) out.line(`  verification: ${backup.verifyDetail}`);
  if (backup.error) out.line(`  error: ${backup.error}`);
}

/** Polls a backup until it is verified or failed, printing each status change with the elapsed time. */
async function waitForBackup(client: ApiClient, out: Output, id: string, timeoutSeconds: number): Promise<BackupView> {
  const startedMs = Date.now();
  let last = '';
  for (;;) {
    const backup = await client.request<BackupView>('GET', `/v1/backups/${encodeURIComponent(id)}`);
    const line = `${backup.status}${backup.verifyDetail ? `: ${backup.verifyDetail}` : ''}`;
    if (line !== last) out.progress(`${((Date.now() - startedMs) / 1000).toFixed(1).padStart(6)}s  ${line}`);
    last = line;
    if (backup.status === 'failed' || backup.verified !== null) return backup;
    if (Date.now() - startedMs > timeoutSeconds * 1000) throw new Error(`gave up waiting after ${timeoutSeconds} s; the backup is ${backup.status}`);
    await new Promise((resolve) => setTimeout(resolve, waitPollMs));
  }
}

export function registerBackupCommands(program: Command, connect: () => Promise<{ client: ApiClient; out: Output }>): void {
  const backups = program.command('backups').description('list, take, verify and restore backups');

  backups
    .command('list [cluster]')
    .description("a cluster's backups, whether each was proven to restore, and its restore window; --deleted: deleted clusters' backups, kept until purged")
    .option('--deleted', "list deleted clusters' backups (only CLUSTER's, if given), restorable with `backups restore --backup ID`")
    .option('--json', 'print JSON')
    .action(async (cluster: string | undefined, options: { deleted?: boolean }) => {
      const { client, out } = await connect();
      if (options.deleted) return listDeleted(client, out, cluster);
      if (cluster === undefined) throw new Error('give a cluster, or --deleted for deleted clusters');
      const list = await client.request<BackupListView>('GET', `/v1/clusters/${encodeURIComponent(cluster)}/backups`);
      if (out.json) return out.result(list);
      out.line(list.window.earliest === null ? `${list.cluster}: no completed backup yet` : `${list.cluster}: restore window ${list.window.earliest} to now`);
      if (list.backups.length === 0) return out.line('no backups; take one with `cellar backups create CLUSTER --wait`');
      printBackupTable(out, list.backups);
    });

  backups
    .command('create <cluster>')
    .description('take a backup now (from a healthy replica when there is one), then prove it restores')
    .option('--wait', 'wait until it is taken and verified, showing each step')
    .option('--timeout <seconds>', 'give up waiting after this long', timeoutOption, waitTimeoutSecondsDefault)
    .option('--json', 'print JSON')
    .action(async (cluster: string, options: { wait?: boolean; timeout: number }) => {
      const { client, out } = await connect();
      const backup = await client.request<BackupView>('POST', `/v1/clusters/${encodeURIComponent(cluster)}/backups`, {});
      if (!options.wait) return printBackup(out, backup);
      out.progress(`backing up ${cluster} as ${backup.id}`);
      const finished = await waitForBackup(client, out, backup.id, options.timeout);
      printBackup(out, finished);
      if (finished.status === 'failed' || finished.verified === false) process.exitCode = 1;
    });

  backups
    .command('verify <backup>')
    .description('prove a backup restores, again: pg_verifybackup and a restore into a scratch server')
    .option('--wait', 'wait for the verdict')
    .option('--timeout <seconds>', 'give up waiting after this long', timeoutOption, waitTimeoutSecondsDefault)
    .option('--json', 'print JSON')
    .action(async (id: string, options: { wait?: boolean; timeout: number }) => {
      const { client, out } = await connect();
      const backup = await client.request<BackupView>('POST', `/v1/backups/${encodeURIComponent(id)}/verify`, {});
      if (!options.wait) return printBackup(out, backup);
      const finished = await waitForBackup(client, out, id, options.timeout);
      printBackup(out, finished);
      if (finished.verified === false) process.exitCode = 1;
    });

  backups
    .command('restore [cluster]')
    .description('restore a backup into a NEW cluster, to a time or LSN (default: latest): the newest fitting backup of CLUSTER, or --backup ID (of a live or a deleted cluster)')
    .requiredOption('--to <name>', 'the new cluster')
    .option('--backup <id>', 'restore from this backup (see `backups list --deleted` for deleted clusters)')
    .option('--time <timestamp>', 'recover up to this time, with a zone: 2026-11-30 10:22:58.94+00 (as Postgres prints it) or 2026-11-30T10:22:58Z')
    .option('--lsn <lsn>', 'recover up to this WAL position, e.g. 0/3000148')
    .option('--wait', 'wait until the new cluster is running, showing each step')
    .option('--timeout <seconds>', 'give up waiting after this long', timeoutOption, waitTimeoutSecondsDefault)
    .option('--json', 'print JSON')
    .action(async (cluster: string | undefined, options: { to: string; backup?: string; time?: string; lsn?: string; wait?: boolean; timeout: number }) => {
      if ((cluster === undefined) === (options.backup === undefined)) throw new Error('give either a cluster or --backup ID, not both');
      const { client, out } = await connect();
      const body = { to: options.to, ...(options.time === undefined ? {} : { time: options.time }), ...(options.lsn === undefined ? {} : { lsn: options.lsn }) };
      const path = options.backup === undefined ? `/v1/clusters/${encodeURIComponent(cluster as string)}/restore` : `/v1/backups/${encodeURIComponent(options.backup)}/restore`;
      const from = options.backup === undefined ? (cluster as string) : `backup ${options.backup}`;
      const created = await client.request<ClusterView>('POST', path, body);
      if (!options.wait) return out.json ? out.result(created) : out.line(`${created.name} (${created.id}): ${created.state}; restoring from ${from}`);
      out.progress(`restoring ${from} into ${created.name} (${created.id})`);
      const startedMs = Date.now();
      for (;;) {
        const now = await client.request<ClusterView>('GET', `/v1/clusters/${encodeURIComponent(created.id)}`);
        if (now.state === 'running') return out.json ? out.result(now) : out.line(`${now.name}: running after ${((Date.now() - startedMs) / 1000).toFixed(1)} s; uri ${now.uri ?? '-'}`);
        if (now.state === 'failed') throw new Error(`restore into ${now.name} failed: ${now.error ?? 'see its events'}`);
        if (Date.now() - startedMs > options.timeout * 1000) throw new Error(`gave up waiting after ${options.timeout} s; ${now.name} is ${now.state}`);
        await new Promise((resolve) => setTimeout(resolve, waitPollMs));
      }
    });
}

function printBackupTable(out: Output, backups: readonly BackupView[]): void {
  out.line(
    formatTable(
      ['BACKUP', 'STATUS', 'VERIFIED', 'STARTED', 'FINISHED', 'SIZE', 'REASON'],
      backups.map((backup) => [backup.id, backup.status, backup.verified === null ? '-' : backup.verified ? 'yes' : 'NO', backup.startedAt, backup.finishedAt ?? '-', megabytes(backup.bytes), backup.reason]),
    ),
  );
  for (const backup of backups.filter((item) => item.verified === false || item.error)) out.line(`  ${backup.id}: ${backup.error ?? backup.verifyDetail ?? ''}`);
}

async function listDeleted(client: ApiClient, out: Output, name: string | undefined): Promise<void> {
  const list = await client.request<DeletedClusterListView>('GET', '/v1/deleted-clusters');
  const clusters = list.clusters.filter((cluster) => name === undefined || cluster.name === name || cluster.id === name);
  if (out.json) return out.result({ clusters });
  if (clusters.length === 0) return out.line(name === undefined ? 'no deleted cluster has backups kept' : `no deleted cluster named "${name}" has backups kept`);
  for (const cluster of clusters) {
    const window = cluster.window.earliest === null ? 'nothing restorable' : `restore window ${cluster.window.earliest} to ${cluster.window.latest}`;
    out.line(`${cluster.name} (${cluster.id}): deleted ${cluster.deletedAt}, purged at ${cluster.purgeAt}; ${window}`);
    printBackupTable(out, cluster.backups);
  }
  out.line('restore one with `cellar backups restore --backup ID --to NEW`');
}
