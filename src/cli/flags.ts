import type { Command } from 'commander';
import type { CohortDetail, CohortView, FlagDetail, FlagExplainView, FlagRuleChangeView, FlagRuleView, FlagView, StaleFlagView } from '../api/flags.js';
import type { ApiClient } from './client.js';
import { type Output, formatTable } from './output.js';

/**
 * `cellar flags list|show|set|unset|explain|stale` and `cellar cohorts list|show|create|delete|add|remove`
 * (admin; docs/CONTROLS.md, "Flags"), each with --json.
 */

type Connect = () => Promise<{ client: ApiClient; out: Output }>;

interface LevelOptions {
  org?: string;
  cluster?: string;
  cell?: string;
}

/** The rule's level and target from --org, --cluster or --cell (at most one); none: global. */
function levelOf(options: LevelOptions): { level: 'global' | 'cell' | 'org' | 'cluster'; target?: string } {
  const given = (['org', 'cluster', 'cell'] as const).filter((level) => options[level] !== undefined);
  if (given.length > 1) throw new Error(`give at most one of --org, --cluster, --cell (got ${given.map((level) => `--${level}`).join(', ')})`);
  const level = given[0];
  return level === undefined ? { level: 'global' } : { level, target: options[level] as string };
}

/** true and false are booleans (the boolean flags'); anything else is a variant of a string flag. */
function flagValue(text: string): boolean | string {
  if (text === 'true') return true;
  if (text === 'false') return false;
  return text;
}

function percent(text: string): number {
  if (!/^\d{1,3}(\.\d{1,2})?$/.test(text.trim())) throw new Error(`--percent ${text}: must be a number from 0 to 100 with at most two decimals`);
  return Number(text);
}

function assignment(text: string, previous: Record<string, boolean | string> = {}): Record<string, boolean | string> {
  const at = text.indexOf('=');
  if (at <= 0) throw new Error(`${JSON.stringify(text)}: expected flag=value`);
  return { ...previous, [text.slice(0, at).trim()]: flagValue(text.slice(at + 1)) };
}

function describeRule(rule: FlagRuleView): string {
  const where = rule.level === 'global' ? 'global' : `${rule.level} ${rule.target}`;
  return `${where}: ${String(rule.value)}${rule.percent === null ? '' : ` for ${rule.percent} %`}`;
}

function printFlag(out: Output, flag: FlagView): void {
  out.line(`${flag.key} (${flag.type}${flag.variants === null ? '' : `: ${flag.variants.join(', ')}`}), default ${String(flag.default)}${flag.environmentVariable === null ? '' : ` (${flag.environmentVariable} sets this process's)`}`);
  out.line(`  ${flag.description}`);
  out.line(`  ${flag.kind}, owned by ${flag.owner}, expires ${flag.expires}`);
  for (const rule of flag.rules) out.line(`  rule ${describeRule(rule)}  (${rule.setBy} at ${rule.setAt}: ${rule.reason})`);
  for (const cohort of flag.cohorts) out.line(`  cohort ${cohort.name}: ${String(cohort.value)} (${cohort.members} members)`);
}

function printChanges(out: Output, changes: FlagDetail['changes']): void {
  for (const change of changes) out.line(`  ${change.at}  ${change.scope}  ${JSON.stringify(change.oldValue)} → ${JSON.stringify(change.newValue)}  by ${change.actor}: ${change.reason}`);
}

function printCohort(out: Output, cohort: CohortView): void {
  out.line(`cohort ${cohort.name}${cohort.description === '' ? '' : `: ${cohort.description}`}`);
  out.line(`  sets ${Object.entries(cohort.values).map(([key, value]) => `${key}=${String(value)}`).join(', ') || 'nothing'}`);
  out.line(`  members: ${cohort.members.map((member) => `${member.kind} ${member.id}`).join(', ') || 'none'}`);
}

export function registerFlagCommands(program: Command, connect: Connect): void {
  const flags = program.command('flags').description('feature flags: values per level (global, cell, org, cluster), percentages and cohorts (admin)');

  flags
    .command('list')
    .description('every flag in the catalogue with its rules')
    .option('--json', 'print JSON')
    .action(async () => {
      const { client, out } = await connect();
      const { flags: list } = await client.request<{ flags: FlagView[] }>('GET', '/v1/flags');
      if (out.json) return out.result(list);
      out.line(formatTable(['KEY', 'TYPE', 'DEFAULT', 'KIND', 'OWNER', 'EXPIRES', 'RULES'], list.map((flag) => [flag.key, flag.type, String(flag.default), flag.kind, flag.owner, flag.expires, [...flag.rules.map(describeRule), ...flag.cohorts.map((cohort) => `cohort ${cohort.name}: ${String(cohort.value)}`)].join('; ') || '-'])));
    });

  flags
    .command('show <key>')
    .description('one flag: declaration, rules, cohorts and its recent changes')
    .option('--json', 'print JSON')
    .action(async (key: string) => {
      const { client, out } = await connect();
      const flag = await client.request<FlagDetail>('GET', `/v1/flags/${encodeURIComponent(key)}`);
      if (out.json) return out.result(flag);
      printFlag(out, flag);
      if (flag.changes.length > 0) out.line('changes:');
      printChanges(out, flag.changes);
    });

  flags
    .command('set <key> <value>')
    .description('set the flag at one level (global without --org/--cluster/--cell), optionally for a percentage of ids')
    .option('--org <org>', "an org's name or id")
    .option('--cluster <id>', "a cluster's id")
    .option('--cell <name>', "a cell's name (today: local)")
    .option('--percent <p>', 'only ids whose bucket is below this (0-100, two decimals)', percent)
    .requiredOption('--reason <text>', 'why, kept in the audit')
    .option('--json', 'print JSON')
    .action(async (key: string, value: string, options: LevelOptions & { percent?: number; reason: string }) => {
      const { client, out } = await connect();
      const body = { ...levelOf(options), value: flagValue(value), ...(options.percent === undefined ? {} : { percent: options.percent }), reason: options.reason };
      const changed = await client.request<FlagRuleChangeView>('PUT', `/v1/flags/${encodeURIComponent(key)}`, body);
      if (out.json) return out.result(changed);
      out.line(`${key}: ${changed.before === null ? '(no rule)' : describeRule(changed.before)} → ${changed.after === null ? '(no rule)' : describeRule(changed.after)}`);
    });

  flags
    .command('unset <key>')
    .description('remove the flag\'s rule at one level; the next level decides')
    .option('--org <org>', "an org's name or id")
    .option('--cluster <id>', "a cluster's id")
    .option('--cell <name>', "a cell's name")
    .requiredOption('--reason <text>', 'why, kept in the audit')
    .option('--json', 'print JSON')
    .action(async (key: string, options: LevelOptions & { reason: string }) => {
      const { client, out } = await connect();
      const changed = await client.request<FlagRuleChangeView>('DELETE', `/v1/flags/${encodeURIComponent(key)}/rules`, { ...levelOf(options), reason: options.reason });
      if (out.json) return out.result(changed);
      out.line(`${key}: removed rule ${changed.before === null ? '' : describeRule(changed.before)}`);
    });

  flags
    .command('explain <key>')
    .description('the flag\'s value for an org and/or cluster, which rule decided and why')
    .option('--org <org>', "an org's name or id")
    .option('--cluster <id>', "a cluster's id (its org is taken from it)")
    .option('--cell <name>', "a cell's name (default: local)")
    .option('--json', 'print JSON')
    .action(async (key: string, options: LevelOptions) => {
      const { client, out } = await connect();
      const query = new URLSearchParams(Object.entries(options).filter((entry): entry is [string, string] => typeof entry[1] === 'string' && ['org', 'cluster', 'cell'].includes(entry[0])));
      const answer = await client.request<FlagExplainView>('GET', `/v1/flags/${encodeURIComponent(key)}/explain${query.size === 0 ? '' : `?${query.toString()}`}`);
      if (out.json) return out.result(answer);
      out.line(`${answer.key} = ${String(answer.value)}`);
      out.line(`  decided by ${answer.why}`);
    });

  flags
    .command('stale')
    .description('flags past their expiry or fully rolled out: remove them and the code behind them')
    .option('--json', 'print JSON')
    .action(async () => {
      const { client, out } = await connect();
      const { stale } = await client.request<{ stale: StaleFlagView[] }>('GET', '/v1/flags-stale');
      if (out.json) return out.result(stale);
      if (stale.length === 0) return out.line('no stale flags');
      for (const entry of stale) out.line(`${entry.key}: ${entry.reasons.join('; ')}`);
    });

  const cohorts = program.command('cohorts').description('named sets of orgs and clusters that all get a set of flag values (admin)');

  cohorts
    .command('list')
    .description('cohorts with their flag values and members')
    .option('--json', 'print JSON')
    .action(async () => {
      const { client, out } = await connect();
      const { cohorts: list } = await client.request<{ cohorts: CohortView[] }>('GET', '/v1/cohorts');
      if (out.json) return out.result(list);
      out.line(formatTable(['NAME', 'SETS', 'MEMBERS', 'DESCRIPTION'], list.map((cohort) => [cohort.name, Object.entries(cohort.values).map(([key, value]) => `${key}=${String(value)}`).join(', '), String(cohort.members.length), cohort.description])));
    });

  cohorts
    .command('show <name>')
    .description('one cohort with its members and recent changes')
    .option('--json', 'print JSON')
    .action(async (name: string) => {
      const { client, out } = await connect();
      const cohort = await client.request<CohortDetail>('GET', `/v1/cohorts/${encodeURIComponent(name)}`);
      if (out.json) return out.result(cohort);
      printCohort(out, cohort);
      printChanges(out, cohort.changes);
    });

  cohorts
    .command('create <name>')
    .description('create a cohort that sets flags for its members: --set flag=value, repeated')
    .option('--set <flag=value>', 'a flag value every member gets (repeatable)', assignment)
    .option('--description <text>', 'what the cohort is for (a customer, early access)')
    .requiredOption('--reason <text>', 'why, kept in the audit')
    .option('--json', 'print JSON')
    .action(async (name: string, options: { set?: Record<string, boolean | string>; description?: string; reason: string }) => {
      const { client, out } = await connect();
      const body = { name, values: options.set ?? {}, reason: options.reason, ...(options.description === undefined ? {} : { description: options.description }) };
      const cohort = await client.request<CohortView>('POST', '/v1/cohorts', body);
      if (out.json) return out.result(cohort);
      printCohort(out, cohort);
    });

  cohorts
    .command('delete <name>')
    .description('delete a cohort; its members fall back to their other rules')
    .requiredOption('--reason <text>', 'why, kept in the audit')
    .option('--json', 'print JSON')
    .action(async (name: string, options: { reason: string }) => {
      const { client, out } = await connect();
      const cohort = await client.request<CohortView>('DELETE', `/v1/cohorts/${encodeURIComponent(name)}`, { reason: options.reason });
      if (out.json) return out.result(cohort);
      out.line(`cohort ${cohort.name} deleted (${cohort.members.length} members)`);
    });

  for (const action of ['add', 'remove'] as const) {
    cohorts
      .command(`${action} <name>`)
      .description(action === 'add' ? 'add an org (--org) or a cluster (--cluster) to a cohort' : 'remove an org or a cluster from a cohort')
      .option('--org <org>', "an org's name or id")
      .option('--cluster <id>', "a cluster's id")
      .requiredOption('--reason <text>', 'why, kept in the audit')
      .option('--json', 'print JSON')
      .action(async (name: string, options: { org?: string; cluster?: string; reason: string }) => {
        if ((options.org === undefined) === (options.cluster === undefined)) throw new Error('give one of --org or --cluster');
        const member = options.org !== undefined ? { kind: 'org', member: options.org } : { kind: 'cluster', member: options.cluster as string };
        const { client, out } = await connect();
        const cohort = await client.request<CohortView>('POST', `/v1/cohorts/${encodeURIComponent(name)}/members/${action}`, { ...member, reason: options.reason });
        if (out.json) return out.result(cohort);
        printCohort(out, cohort);
      });
  }
}
