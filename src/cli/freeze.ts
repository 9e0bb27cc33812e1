import type { Command } from 'commander';
import type { FreezeView, NudgeView } from '../api/freeze.js';
import type { ApiClient } from './client.js';
import type { Output } from './output.js';

/**
 * `cellar rods freeze|thaw --reason R` (admin) and `cellar clusters nudge NAME` (docs/CONTROLS.md
 * "Freeze", "Nudge"), each with --json. The `rods` and `clusters` groups are found, or made here,
 * so that these sit beside the other commands of the group wherever those are registered.
 */

type Connect = () => Promise<{ client: ApiClient; out: Output }>;

function group(program: Command, name: string, description: string): Command {
  return program.commands.find((command) => command.name() === name) ?? program.command(name).description(description);
}

/** One line a human reads: whether the cell is frozen, since when, by whom, why. */
export function describeFreeze(freeze: Partial<FreezeView>): string {
  if (freeze.frozen !== true) return 'not frozen';
  const who = freeze.actor === undefined || freeze.actor === null ? '' : ` by ${freeze.actor}`;
  const why = freeze.reason === undefined || freeze.reason === null ? '' : `: ${freeze.reason}`;
  return `FROZEN since ${freeze.since ?? 'an unknown time'}${who}${why} (rollouts, new clusters, configuration changes and scheduled backups wait)`;
}

export function registerFreezeCommands(program: Command, connect: Connect): void {
  const rods = group(program, 'rods', 'control rods: the rates the fleet changes at, and the freeze (admin)');
  for (const frozen of [true, false]) {
    rods
      .command(frozen ? 'freeze' : 'thaw')
      .description(
        frozen
          ? 'freeze the cell: rollouts halt, new clusters and configuration changes wait (accepted, queued), scheduled backups pause; failover, switchover and replica replacement go on'
          : 'thaw the cell: what waited for the freeze goes on at once',
      )
      .requiredOption('--reason <text>', 'why (audited)')
      .option('--json', 'print JSON')
      .action(async (options: { reason: string }) => {
        const { client, out } = await connect();
        const state = await client.request<FreezeView>(frozen ? 'POST' : 'DELETE', '/v1/freeze', { reason: options.reason });
        if (out.json) return out.result(state);
        out.line(frozen ? `cell ${describeFreeze(state)}` : `cell thawed by ${state.actor ?? 'you'}: ${state.reason ?? ''}`);
      });
  }

  group(program, 'clusters', 'create, list, show and manage clusters')
    .command('nudge <name>')
    .description("make the cluster's machine and its instances' due now (the tick rate is a minimum, not a promise to wait)")
    .option('--json', 'print JSON')
    .action(async (name: string) => {
      const { client, out } = await connect();
      const nudged = await client.request<NudgeView>('POST', `/v1/clusters/${encodeURIComponent(name)}/nudge`);
      if (out.json) return out.result(nudged);
      out.line(`nudged ${nudged.cluster}: ${nudged.machines} machine(s) due now`);
    });
}
