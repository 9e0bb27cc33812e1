import type { Command } from 'commander';
import type { DefaultsChangeView, DefaultsView, RolloutDetail, RolloutView, SettingDiff } from '../api/rollouts.js';
import type { ApiClient } from './client.js';
import { type Output, formatTable } from './output.js';

/**
 * `cellar defaults show|set|unset` and `cellar rollouts list|show|pause|resume|abort` (admin;
 * docs/CONFIG.md, "Fleet defaults and rollouts"), each with --json.
 */

type Connect = () => Promise<{ client: ApiClient; out: Output }>;

/** `name=value` → [name, value]; the API checks the name and the value against the catalogue. */
function assignment(text: string): [string, string] {
  const at = text.indexOf('=');
  if (at <= 0) throw new Error(`${JSON.stringify(text)}: expected name=value`);
  return [text.slice(0, at).trim(), text.slice(at + 1)];
}

function rate(text: string): number {
  if (!/^\d{1,4}$/.test(text.trim())) throw new Error(`--rate ${text}: must be a whole number of clusters per minute`);
  return Number(text);
}

function describeDiff(change: SettingDiff): string {
  return `${change.name}: ${change.from ?? '(unset)'} → ${change.to ?? '(unset)'}`;
}

function clusterRef(ref: { clusterId: string; cluster: string | null }): string {
  return ref.cluster === null ? ref.clusterId : `${ref.cluster} (${ref.clusterId})`;
}

/** One line a human reads: where the rollout is. */
export function whereItIs(rollout: RolloutView): string {
  const counts = `${rollout.clusters.changed} changed, ${rollout.clusters.skipped} already there, ${rollout.clusters.left} left`;
  if (rollout.state === 'halted' && rollout.halt !== null) {
    return `halted at cluster ${rollout.halt.cluster} (${rollout.halt.clusterId})${rollout.halt.revision === null ? '' : `, revision ${rollout.halt.revision}`}: ${rollout.halt.reason}; ${counts}`;
  }
  if (rollout.current !== null) return `${rollout.state}: cluster ${clusterRef(rollout.current)}${rollout.current.revision === null ? '' : ` at revision ${rollout.current.revision}`}; ${counts}`;
  return `${rollout.state}${rollout.error === null ? '' : ` (${rollout.error})`}; ${counts}`;
}

function row(rollout: RolloutView): string[] {
  return [rollout.id, rollout.state, rollout.changes.map(describeDiff).join(', '), String(rollout.ratePerMinute), `${rollout.clusters.changed}/${rollout.clusters.skipped}/${rollout.clusters.left}`, rollout.createdAt];
}

const headers = ['ID', 'STATE', 'CHANGES', 'RATE/MIN', 'CHANGED/SKIPPED/LEFT', 'CREATED'];

function printRollout(out: Output, rollout: RolloutView): void {
  out.line(`rollout ${rollout.id}: ${whereItIs(rollout)}`);
  for (const change of rollout.changes) out.line(`  ${describeDiff(change)}`);
  out.line(`  at most ${rollout.ratePerMinute} cluster(s) a minute; by ${rollout.createdBy} at ${rollout.createdAt}${rollout.reason === null ? '' : `: ${rollout.reason}`}`);
  if (rollout.cursor !== null) out.line(`  last cluster finished: ${clusterRef(rollout.cursor)}`);
  if (rollout.halt !== null && rollout.state !== 'halted') out.line(`  last halt (${rollout.halt.at}): cluster ${rollout.halt.cluster} (${rollout.halt.clusterId}): ${rollout.halt.reason}`);
  if (rollout.finishedAt !== null) out.line(`  finished ${rollout.finishedAt}`);
}

function action(rollouts: Command, connect: Connect, signal: 'pause' | 'resume' | 'abort', description: string, done: string): void {
  rollouts
    .command(`${signal} <id>`)
    .description(description)
    .option('--json', 'print JSON')
    .action(async (id: string) => {
      const { client, out } = await connect();
      const rollout = await client.request<RolloutView>('POST', `/v1/rollouts/${encodeURIComponent(id)}/${signal}`);
      if (out.json) return out.result(rollout);
      out.line(`rollout ${rollout.id}: ${done} (it acts within a tick; now ${whereItIs(rollout)})`);
    });
}

async function change(connect: Connect, settings: Record<string, string | null>, options: { rate?: number; reason?: string }): Promise<void> {
  const { client, out } = await connect();
  const body = { settings, ...(options.rate === undefined ? {} : { ratePerMinute: options.rate }), ...(options.reason === undefined ? {} : { reason: options.reason }) };
  const answer = await client.request<DefaultsChangeView>('PUT', '/v1/defaults', body);
  if (out.json) return out.result(answer);
  if (answer.changes.length === 0) out.line('the defaults are unchanged');
  for (const diff of answer.changes) out.line(describeDiff(diff));
  for (const warning of answer.warnings) out.line(`warning: ${warning}`);
  if (answer.rollout === null) return out.line('every live cluster runs these defaults already: no rollout');
  out.line(`rollout ${answer.rollout.id} started: at most ${answer.rollout.ratePerMinute} cluster(s) a minute; \`cellar rollouts show ${answer.rollout.id}\` follows it`);
}

export function registerRolloutCommands(program: Command, connect: Connect): void {
  const defaults = program.command('defaults').description("the fleet's default settings, beneath each cluster's own; changing them starts a rollout (admin)");

  defaults
    .command('show')
    .description('the defaults, and the rollout in progress if any')
    .option('--json', 'print JSON')
    .action(async () => {
      const { client, out } = await connect();
      const view = await client.request<DefaultsView>('GET', '/v1/defaults');
      if (out.json) return out.result(view);
      if (view.defaults.length === 0) out.line('no fleet defaults: clusters run their size\'s settings and their own');
      else out.line(formatTable(['NAME', 'VALUE', 'SET BY', 'SET AT'], view.defaults.map((entry) => [entry.name, entry.value, entry.setBy, entry.setAt])));
      if (view.rollout !== null) out.line(`rollout ${view.rollout.id}: ${whereItIs(view.rollout)}`);
    });

  defaults
    .command('set <assignments...>')
    .description('set defaults (name=value …) and roll them out over the live clusters, one at a time; new clusters take them at once')
    .option('--rate <n>', 'clusters started per minute at most (1-60; default 6)', rate)
    .option('--reason <text>', 'why, recorded with the rollout and each revision')
    .option('--json', 'print JSON')
    .action(async (assignments: string[], options: { rate?: number; reason?: string }) => {
      await change(connect, Object.fromEntries(assignments.map(assignment)), options);
    });

  defaults
    .command('unset <names...>')
    .description('remove defaults and roll that out (clusters go back to their size\'s value)')
    .option('--rate <n>', 'clusters started per minute at most (1-60; default 6)', rate)
    .option('--reason <text>', 'why, recorded with the rollout and each revision')
    .option('--json', 'print JSON')
    .action(async (names: string[], options: { rate?: number; reason?: string }) => {
      await change(connect, Object.fromEntries(names.map((name) => [name, null])), options);
    });

  const rollouts = program.command('rollouts').description('fleet rollouts of new defaults: list, show, pause, resume, abort (admin)');

  rollouts
    .command('list')
    .description('rollouts, newest first')
    .option('--json', 'print JSON')
    .action(async () => {
      const { client, out } = await connect();
      const { rollouts: list } = await client.request<{ rollouts: RolloutView[] }>('GET', '/v1/rollouts');
      if (out.json) return out.result(list);
      out.line(formatTable(headers, list.map(row)));
    });

  rollouts
    .command('show <id>')
    .description('one rollout: where it is, or where it halted and why, with its events')
    .option('--json', 'print JSON')
    .action(async (id: string) => {
      const { client, out } = await connect();
      const rollout = await client.request<RolloutDetail>('GET', `/v1/rollouts/${encodeURIComponent(id)}`);
      if (out.json) return out.result(rollout);
      printRollout(out, rollout);
      for (const event of rollout.events) out.line(`  ${event.at}  ${event.from ?? '-'} → ${event.to}${event.reason === '' ? '' : `  ${event.reason}`}`);
    });

  action(rollouts, connect, 'pause', 'pause between clusters (the cluster being changed is finished first)', 'pause requested');
  action(rollouts, connect, 'resume', 'go on after a pause, or after a halt (the cluster it stopped at is looked at again)', 'resume requested');
  action(rollouts, connect, 'abort', "stop for good: clusters not reached keep their defaults; a change under way finishes as the cluster's own", 'abort requested');
}
