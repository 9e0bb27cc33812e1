import type { Command } from 'commander';
import { loadConfig } from '../config.js';
import { CellarError } from '../lib/errors.js';
import { untilSignal } from '../lib/signals.js';
import type { Output } from './output.js';

/**
 * `cellar agent`: runs this host's agent in the foreground (docs/HOSTS.md). Imported lazily, like
 * `up`: no other command loads the local driver or Fastify for it.
 */
export function registerAgentCommand(program: Command, output: (json: boolean) => Output): void {
  program
    .command('agent')
    .description("run this host's agent in the foreground: the data-plane operations over mutual TLS, heartbeats and the lease, supervision")
    .requiredOption('--data <dir>', "the host's data directory: its identity in <dir>/agent, its instances in <dir>/instances")
    .option('--backup-dir <dir>', 'the backup store (default <dir>/backups)')
    .option('--join <token>', 'join the cell with a token from `cellar hosts add` first')
    .option('--control <url>', "the control plane's agent listener, https://HOST:8433 (with --join)")
    .action(async (options: { data: string; backupDir?: string; join?: string; control?: string }) => {
      const out = output(false);
      if ((options.join === undefined) !== (options.control === undefined)) {
        throw new CellarError('CELLAR_E_INVALID', '--join and --control go together: the token from `cellar hosts add` and the URL of the control plane\'s agent listener', options.join === undefined ? 'join' : 'control');
      }
      const config = loadConfig();
      if (options.join !== undefined && options.control !== undefined) {
        // Joining writes the identity the agent then runs with; a second join of a data dir is refused.
        const { joinCell } = await import('../agent/join.js');
        const identity = await joinCell({ token: options.join, controlUrl: options.control, dataDir: options.data });
        out.line(`joined the cell as host ${identity.name} (${identity.address}); identity in ${options.data}/agent`);
      }
      // pino costs every other command ~40 ms to load: only the agent's process loads it.
      const { makeLogger } = await import('../lib/log.js');
      const log = makeLogger(config.logLevel, process.stderr);
      const { runAgent } = await import('../agent/agent.js');
      const signalled = untilSignal();
      const agent = await runAgent({ dataDir: options.data, backupDir: options.backupDir ?? null, config, log });
      out.line(`agent of host ${agent.identity.name} serving on https://${agent.identity.address}:${agent.identity.agentPort}, heartbeats to ${agent.identity.controlUrl}; Ctrl-C stops it (servers and the lease guard keep running)`);
      await signalled;
      await agent.stop();
    });
}
