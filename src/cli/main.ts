import { Command, CommanderError } from 'commander';
import type { FreezeView } from '../api/freeze.js';
import { loadConfig } from '../config.js';
import { registerAgentCommand } from './agent.js';
import { ApiClient, ApiError, resolveCredentials } from './client.js';
import { registerBackupCommands } from './backups.js';
import { registerClusterCommands } from './clusters.js';
import { registerConfigCommands } from './config.js';
import { describeFreeze, registerFreezeCommands } from './freeze.js';
import { registerHostCommands } from './host.js';
import { registerHostsCommands } from './hosts.js';
import { registerRolloutCommands } from './rollouts.js';
import { registerRodCommands } from './rods.js';
import { registerFlagCommands } from './flags.js';
import { registerTokenCommands } from './tokens.js';
import { type Output, formatTable, makeOutput } from './output.js';

/** The `cellar` command line. Every command takes --json; errors exit 1 with a one-line reason. */
export async function main(argv: readonly string[]): Promise<number> {
  const program = new Command('cellar')
    .description('Cellar: self-hosted Postgres clusters with replicas, one endpoint, backups and safe change')
    .showHelpAfterError()
    .exitOverride();
  let json = false;
  const output = (wantJson: boolean): Output => {
    json = wantJson;
    return makeOutput(wantJson);
  };
  const connect = async () => {
    const out = output(program.args.includes('--json') || argv.includes('--json'));
    return { client: new ApiClient(await resolveCredentials(loadConfig())), out };
  };

  registerHostCommands(program, output);
  registerAgentCommand(program, output);
  program
    .command('status')
    .description('show whether the control plane answers, and what the cell holds')
    .option('--json', 'print JSON')
    .action(async () => {
      const { client, out } = await connect();
      const status = await client.request<{ versions: number[]; cell: Record<string, number>; org?: string; freeze?: Partial<FreezeView> }>('GET', '/v1/status');
      if (out.json) return out.result(status);
      out.line(`Cellar is up; Postgres versions ${status.versions.join(', ')}${status.org === undefined ? '' : `; counts for org ${status.org}`}`);
      out.line(formatTable(['CLUSTERS', 'INSTANCES', 'MACHINES DUE', 'MACHINES FAILED'], [[String(status.cell['clusters']), String(status.cell['instances']), String(status.cell['machinesDue']), String(status.cell['machinesFailed'])]]));
      if (status.freeze !== undefined) out.line(`Cell: ${describeFreeze(status.freeze)}`);
    });
  registerClusterCommands(program, connect);
  registerConfigCommands(program, connect);
  registerBackupCommands(program, connect);
  registerTokenCommands(program, connect);
  registerHostsCommands(program, connect);
  registerRolloutCommands(program, connect);
  registerRodCommands(program, connect);
  registerFlagCommands(program, connect);
  registerFreezeCommands(program, connect);

  try {
    await program.parseAsync(argv, { from: 'user' });
    // A command that printed its result but must still fail (a backup that failed verification) sets exitCode.
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode;
    reportError(error, json);
    return 1;
  }
}

function reportError(error: unknown, json: boolean): void {
  if (json) {
    const payload =
      error instanceof ApiError
        ? { code: error.code, message: error.message, ...(error.field ? { field: error.field } : {}) }
        : { code: 'CELLAR_E_CLI', message: error instanceof Error ? error.message : String(error) };
    process.stdout.write(`${JSON.stringify({ error: payload }, null, 2)}\n`);
    return;
  }
  const message = error instanceof Error ? error.message : String(error);
  const code = error instanceof ApiError ? ` [${error.code}]` : '';
  process.stderr.write(`cellar: ${message}${code}\n`);
}
