import type { Command } from 'commander';
import { loadConfig } from '../config.js';
import type { Output } from './output.js';

/** Where `host tune --apply` writes, unless told otherwise (kept here: the help must not load the tuning module). */
const defaultSysctlFile = '/etc/sysctl.d/90-cellar.conf';

/**
 * `cellar up` and `cellar down`: they manage local processes, so they call the control plane
 * directly. Imported lazily: every other command would otherwise load Fastify and the engine.
 */
const host = () => import('../controlplane/host.js');
export function registerHostCommands(program: Command, output: (json: boolean) => Output): void {
  program
    .command('up')
    .description('start the cell store (embedded unless CELLAR_STORE_URL is set), the engine and the API, in the foreground')
    .option('--no-api', 'run only the engine (another process serves the API)')
    .option('--json', 'print the start-up summary as JSON')
    .action(async (options: { api: boolean; json?: boolean }) => (await host()).up(loadConfig(), output(options.json === true), { api: options.api }));

  program
    .command('proxy')
    .description('run the proxy in the foreground (`cellar up` starts one in the background if none runs)')
    // Lazily, like `up`: the proxy loads no API, engine, machine or local driver module.
    .action(async () => (await import('../proxy/main.js')).serveProxy(loadConfig(), output(false)));

  program
    .command('down')
    .description('stop the control plane, the proxy, every database server and the embedded store (data is kept)')
    .option('--json', 'print JSON')
    .action(async (options: { json?: boolean }) => (await host()).down(loadConfig(), output(options.json === true)));

  program
    .command('host')
    .description('this machine as a database host')
    .command('tune')
    .description("the kernel settings recommended for this machine and the instances on it, beside the current ones, with the reason for each")
    .option('--apply', 'write them to the sysctl file and load them; says which could not be set and why (exit 1)')
    .option('--sysctl-file <path>', 'where --apply writes the sysctl keys', defaultSysctlFile)
    .option('--host <name>', "the cell's name for this machine (default: the control plane's own host)")
    .option('--json', 'print JSON')
    .action(async (options: { apply?: boolean; sysctlFile: string; host?: string; json?: boolean }) =>
      (await import('./host-tune.js')).tune({ apply: options.apply === true, sysctlFile: options.sysctlFile, ...(options.host === undefined ? {} : { host: options.host }) }, output(options.json === true)),
    );
}
