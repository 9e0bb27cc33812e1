import type { Command } from 'commander';
import type { RodDetail, RodSetView, RodView } from '../api/rods.js';
import type { ApiClient } from './client.js';
import { type Output, formatTable } from './output.js';

/**
 * `cellar rods list|show NAME|set NAME VALUE --reason R` (admin; docs/CONTROLS.md "Rods"), each
 * with --json. The `rods` command is returned so the freeze's `rods freeze|thaw` join it.
 */

type Connect = () => Promise<{ client: ApiClient; out: Output }>;

/** Digits only (the API checks the bounds, and says them). */
function wholeNumber(text: string): number {
  const trimmed = text.trim();
  if (!/^\d{1,16}$/.test(trimmed)) throw new Error(`${JSON.stringify(text)}: a rod's value is a whole number of its unit (\`cellar rods show NAME\` gives the unit and bounds)`);
  return Number(trimmed);
}

function source(rod: RodView): string {
  return rod.source === 'default' ? `default${rod.envVar === null ? '' : ` (${rod.envVar})`}` : `${rod.source} by ${rod.updatedBy ?? '?'}`;
}

function printRod(out: Output, rod: RodDetail): void {
  out.line(`${rod.name} = ${rod.value} ${rod.unit} (${source(rod)})`);
  out.line(`  ${rod.description}`);
  out.line(`  bounds ${rod.min} to ${rod.max}; default ${rod.default}${rod.envVar === null ? '' : ` (${rod.envVar})`}`);
  for (const stored of rod.stored) out.line(`  stored ${stored.scope}: ${stored.value} by ${stored.updatedBy} at ${stored.updatedAt}`);
  if (rod.changes.length === 0) return out.line('  no changes recorded');
  out.line(
    formatTable(
      ['AT', 'SCOPE', 'BY', 'OLD', 'NEW', 'REASON'],
      rod.changes.map((change) => [change.at, change.scope, change.actor, change.oldValue === null ? '(default)' : String(change.oldValue), change.newValue === null ? '(default)' : String(change.newValue), change.reason]),
    ),
  );
}

export function registerRodCommands(program: Command, connect: Connect): Command {
  const rods = program.command('rods').description('control rods: the rates of change of the fleet, steered live without a restart (admin)');

  rods
    .command('list')
    .description('every rod with its value now, unit and bounds')
    .option('--json', 'print JSON')
    .action(async () => {
      const { client, out } = await connect();
      const { rods: list } = await client.request<{ rods: RodView[] }>('GET', '/v1/rods');
      if (out.json) return out.result(list);
      out.line(formatTable(['NAME', 'VALUE', 'UNIT', 'MIN', 'MAX', 'SOURCE'], list.map((rod) => [rod.name, String(rod.value), rod.unit, String(rod.min), String(rod.max), source(rod)])));
    });

  rods
    .command('show <name>')
    .description('one rod: its value, default, bounds and recent changes (who, when, old, new, why)')
    .option('--json', 'print JSON')
    .action(async (name: string) => {
      const { client, out } = await connect();
      const rod = await client.request<RodDetail>('GET', `/v1/rods/${encodeURIComponent(name)}`);
      if (out.json) return out.result(rod);
      printRod(out, rod);
    });

  rods
    .command('set <name> <value>')
    .description('set a rod within its bounds; every process that reads it takes it within one tick')
    .requiredOption('--reason <text>', 'why: kept in the audit and the event')
    .option('--cell <name>', 'for one cell only (wins over the global value there)')
    .option('--json', 'print JSON')
    .action(async (name: string, value: string, options: { reason: string; cell?: string }) => {
      const { client, out } = await connect();
      const body = { value: wholeNumber(value), reason: options.reason, ...(options.cell === undefined ? {} : { cell: options.cell }) };
      const rod = await client.request<RodSetView>('PUT', `/v1/rods/${encodeURIComponent(name)}`, body);
      if (out.json) return out.result(rod);
      out.line(`${rod.name}: ${rod.before ?? `${rod.default} (default)`} → ${body.value} ${rod.unit} (${options.cell === undefined ? 'global' : `cell ${options.cell}`}); every process that reads it takes it within one tick`);
    });

  return rods;
}
