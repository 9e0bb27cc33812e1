import type { Command } from 'commander';
import { loadConfig } from '../config.js';
import { makeLogger } from '../lib/log.js';
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
      if (options.join !== undefined || options.control !== undefined) {
        throw new Error('joining a cell (--join, --control) is not built in this branch yet; run `cellar agent --data DIR` on a host whose DIR/agent holds its identity');
      }
      const config = loadConfig();
      const log = makeLogger(config.logLevel, process.stderr);
      const { runAgent } = await import('../agent/agent.js');
      const agent = await runAgent({ dataDir: options.data, backupDir: options.backupDir ?? null, config, log });
      out.line(`agent of host ${agent.identity.name} serving on https://${agent.identity.address}:${agent.identity.agentPort}, heartbeats to ${agent.identity.controlUrl}; Ctrl-C stops it (servers and the lease guard keep running)`);
      await untilSignal();
      await agent.stop();
    });
}
