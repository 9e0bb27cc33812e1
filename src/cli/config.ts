import type { Command } from 'commander';
import type { ConfigView, ProposalView, RevisionView } from '../api/config.js';
import type { ClusterView } from '../api/view.js';
import { type ApiClient, ApiError, storeUnavailableCode } from './client.js';
import { type Output, formatTable } from './output.js';

/**
 * `cellar config show|set|history|rollback` and `cellar clusters resize|scale` (docs/CONFIG.md):
 * every change is planned first (`--dry-run` shows only the plan) and applied by a change the
 * CLI can wait for (`--wait`), printing each step.
 */

const waitPollMs = 200;
const waitTimeoutSecondsDefault = 1_800;
const settingArgumentsMax = 100;

function timeoutOption(value: string): number {
  const seconds = Number(value);
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > 86_400) throw new Error('--timeout must be an integer from 1 to 86400 seconds');
  return seconds;
}

/** `name=value` pairs; `name=` (nothing after =) removes the cluster's own value. */
export function parseAssignments(pairs: readonly string[]): Record<string, string | null> {
  if (pairs.length === 0) throw new Error('give at least one setting as name=value (name= removes it)');
  if (pairs.length > settingArgumentsMax) throw new Error(`at most ${settingArgumentsMax} settings in one change, not ${pairs.length}`);
  const settings: Record<string, string | null> = {};
  for (const pair of pairs) {
    const at = pair.indexOf('=');
    if (at <= 0) throw new Error(`"${pair}" is not name=value (e.g. work_mem=8MB; work_mem= removes it)`);
    const value = pair.slice(at + 1);
    settings[pair.slice(0, at)] = value === '' ? null : value;
  }
  return settings;
}

function printPlan(out: Output, proposal: ProposalView): void {
  const { plan } = proposal;
  out.line(proposal.dryRun ? `${proposal.cluster}: plan (dry run, nothing changed)` : `${proposal.cluster}: revision ${proposal.revision ?? '?'} (${proposal.changeId ?? '-'})`);
  if (plan.settings.length > 0) {
    out.line(formatTable(['PARAMETER', 'FROM', 'TO', 'TAKES EFFECT BY'], plan.settings.map((change) => [change.name, change.from ?? '(default)', change.to ?? '(default)', change.apply])).replace(/^/gm, '  '));
  }
  plan.steps.forEach((step, index) => out.line(`  ${index + 1}. ${step}`));
  out.line(`  expected write pause: ${plan.expectedWritePauseMs === 0 ? 'none' : `about ${(plan.expectedWritePauseMs / 1000).toFixed(2)} s (new connections wait, none fail)`}`);
  for (const warning of proposal.warnings) out.line(`  warning: ${warning}`);
}

/** Polls until the revision is applied (or failed), printing the cluster's events as they come. */
async function waitForRevision(client: ApiClient, out: Output, cluster: string, revision: number, timeoutSeconds: number): Promise<RevisionView> {
  const startedMs = Date.now();
  const deadlineMs = startedMs + timeoutSeconds * 1_000;
  const seen = new Set<string>();
  const path = `/v1/clusters/${encodeURIComponent(cluster)}`;
  for (;;) {
    try {
      const view = await client.request<ClusterView>('GET', path);
      for (const event of view.events) {
        const key = `${event.at}|${event.entity}|${event.to}|${event.reason}`;
        if (seen.has(key) || Date.parse(event.at) < startedMs - 2_000) continue;
        seen.add(key);
        out.progress(`${((Date.now() - startedMs) / 1000).toFixed(1).padStart(6)}s  ${event.entity}: ${event.from ?? '-'} -> ${event.to}${event.reason ? ` (${event.reason})` : ''}`);
      }
      const { revisions } = await client.request<{ revisions: RevisionView[] }>('GET', `${path}/config/revisions`);
      const found = revisions.find((candidate) => candidate.revision === revision);
      if (found === undefined) throw new Error(`revision ${revision} of ${cluster} is gone`);
      if (found.state === 'applied') return found;
      if (found.state === 'failed') throw new Error(`revision ${revision} failed: ${found.error ?? 'see the cluster\'s events'}; \`cellar config rollback ${cluster} ${revision - 1}\` restores the one before`);
    } catch (error) {
      if (!(error instanceof ApiError && error.code === storeUnavailableCode)) throw error;
    }
    if (Date.now() > deadlineMs) throw new Error(`gave up waiting after ${timeoutSeconds} s; revision ${revision} is still being applied (cellar config show ${cluster})`);
    await new Promise((resolve) => setTimeout(resolve, waitPollMs));
  }
}

interface ChangeOptions {
  readonly reason?: string;
  readonly dryRun?: boolean;
  readonly wait?: boolean;
  readonly timeout: number;
}

/** Sends a change (or rollback), prints its plan, and waits for it when asked. */
async function submit(client: ApiClient, out: Output, cluster: string, path: string, body: Record<string, unknown>, options: ChangeOptions): Promise<void> {
  const proposal = await client.request<ProposalView>('POST', `/v1/clusters/${encodeURIComponent(cluster)}/config${path}`, {
    ...body,
    ...(options.reason === undefined ? {} : { reason: options.reason }),
    dryRun: options.dryRun === true,
  });
  if (proposal.dryRun || proposal.revision === null || !options.wait) {
    if (out.json) return out.result(proposal);
    printPlan(out, proposal);
    if (!proposal.dryRun) out.line(`  applying; watch it with \`cellar config show ${cluster}\``);
    return;
  }
  if (!out.json) printPlan(out, proposal);
  const applied = await waitForRevision(client, out, cluster, proposal.revision, options.timeout);
  if (out.json) return out.result({ ...proposal, state: applied.state });
  out.line(`${cluster}: revision ${applied.revision} applied`);
}

function changeCommand(command: Command): Command {
  return command
    .option('--reason <text>', 'why (kept in the history)')
    .option('--dry-run', 'show the plan only; change nothing')
    .option('--wait', 'wait until every instance runs with it, showing each step')
    .option('--timeout <seconds>', 'give up waiting after this long', timeoutOption, waitTimeoutSecondsDefault)
    .option('--json', 'print JSON');
}

/** Leaves non-numbers as text so the API, not the CLI, names the field and its limit. */
function numberOrText(value: string): number | string {
  return /^-?\d+$/.test(value) ? Number(value) : value;
}

export function registerConfigCommands(program: Command, connect: () => Promise<{ client: ApiClient; out: Output }>): void {
  const config = program.command('config').description("show and change a cluster's Postgres settings, with a plan, a history and rollback");

  config
    .command('show <cluster>')
    .description('the settings a cluster runs with, and the change being applied')
    .option('--json', 'print JSON')
    .action(async (cluster: string) => {
      const { client, out } = await connect();
      const view = await client.request<ConfigView>('GET', `/v1/clusters/${encodeURIComponent(cluster)}/config`);
      if (out.json) return out.result(view);
      out.line(`${view.cluster}: revision ${view.revision}, size ${view.size}, ${view.replicas} replica(s)`);
      if (view.applying !== null) out.line(`  applying revision ${view.applying.revision}: step ${view.applying.step ?? '?'}`);
      const origin = (name: string): string => (name in view.settings ? 'cluster' : name in view.defaults ? 'fleet default' : 'size');
      out.line(formatTable(['PARAMETER', 'VALUE', 'FROM'], Object.entries(view.effective).sort(([a], [b]) => a.localeCompare(b)).map(([name, value]) => [name, value, origin(name)])).replace(/^/gm, '  '));
    });

  changeCommand(config.command('set <cluster> <settings...>').description('change settings: name=value … (name= removes the cluster\'s own value)')).action(
    async (cluster: string, pairs: string[], options: ChangeOptions) => {
      const { client, out } = await connect();
      await submit(client, out, cluster, '', { settings: parseAssignments(pairs) }, options);
    },
  );

  config
    .command('history <cluster>')
    .description("a cluster's revisions, newest first: who, when, why and what changed")
    .option('--json', 'print JSON')
    .action(async (cluster: string) => {
      const { client, out } = await connect();
      const { revisions } = await client.request<{ revisions: RevisionView[] }>('GET', `/v1/clusters/${encodeURIComponent(cluster)}/config/revisions`);
      if (out.json) return out.result(revisions);
      const diff = (revision: RevisionView): string => revision.diff.map((entry) => `${entry.name} ${entry.from ?? '-'} → ${entry.to ?? '-'}`).join(', ') || '(created)';
      out.line(formatTable(['REV', 'STATE', 'WHEN', 'WHO', 'CHANGE', 'REASON'], revisions.map((revision) => [String(revision.revision), revision.step === null ? revision.state : `${revision.state} (${revision.step})`, revision.createdAt, revision.actor, diff(revision), revision.reason ?? ''])));
    });

  changeCommand(config.command('rollback <cluster> <revision>').description('apply an earlier revision again, as a new revision')).action(
    async (cluster: string, revision: string, options: ChangeOptions) => {
      const { client, out } = await connect();
      await submit(client, out, cluster, '/rollback', { revision: numberOrText(revision) }, options);
    },
  );

  const clusters = program.commands.find((command) => command.name() === 'clusters');
  if (clusters === undefined) throw new Error('the clusters command must be registered before the config commands');
  changeCommand(
    clusters
      .command('resize <cluster>')
      .description("change a cluster's size (its tuned memory, connection, WAL and checkpoint defaults: a rolling restart) or grow its storage (no restart)")
      .option('--size <size>', 'micro, small, medium or large')
      .option('--storage-gb <gb>', 'a larger storage allocation in GB (storage only grows, by a minimum step, once per cooldown)'),
  ).action(async (cluster: string, options: ChangeOptions & { size?: string; storageGb?: string }) => {
    if (options.size === undefined && options.storageGb === undefined) throw new Error('give --size, --storage-gb or both');
    const { client, out } = await connect();
    const body = { ...(options.size === undefined ? {} : { size: options.size }), ...(options.storageGb === undefined ? {} : { storageGb: numberOrText(options.storageGb) }) };
    await submit(client, out, cluster, '', body, options);
  });
  clusters
    .command('autogrow <cluster>')
    .description('grow the storage by itself: past --threshold % of the allocation, by --step-percent, up to --max-gb (off by default; each growth is a revision and an event)')
    .option('--max-gb <gb>', 'the ceiling it grows to, above the allocation')
    .option('--threshold <percent>', 'grow once use passes this share of the allocation (below the read-only threshold)', '90')
    .option('--step-percent <percent>', 'grow by this share of the allocation (at least the resize step)', '25')
    .option('--off', 'turn autogrow off')
    .option('--json', 'print JSON')
    .action(async (cluster: string, options: { maxGb?: string; threshold: string; stepPercent: string; off?: boolean }) => {
      if ((options.off === true) === (options.maxGb !== undefined)) throw new Error('give --max-gb (to turn autogrow on) or --off');
      const { client, out } = await connect();
      const body = options.off === true ? { enabled: false } : { enabled: true, maxGb: numberOrText(options.maxGb as string), thresholdPercent: numberOrText(options.threshold), stepPercent: numberOrText(options.stepPercent) };
      const result = await client.request<{ cluster: string; autogrow: { maxGb: number; thresholdPercent: number; stepPercent: number } | null }>('PUT', `/v1/clusters/${encodeURIComponent(cluster)}/autogrow`, body);
      if (out.json) return out.result(result);
      const policy = result.autogrow;
      out.line(policy === null ? `${result.cluster}: autogrow is off` : `${result.cluster}: autogrow on: past ${policy.thresholdPercent} % of the allocation, grow by ${policy.stepPercent} % up to ${policy.maxGb} GB`);
    });
  changeCommand(clusters.command('scale <cluster>').description('change the number of replicas (0-5): a new one is routed once it streams, a removed one leaves the routes first').requiredOption('--replicas <n>', 'number of replicas')).action(
    async (cluster: string, options: ChangeOptions & { replicas: string }) => {
      const { client, out } = await connect();
      await submit(client, out, cluster, '', { replicas: numberOrText(options.replicas) }, options);
    },
  );
}
