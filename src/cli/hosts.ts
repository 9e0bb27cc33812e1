import type { Command } from 'commander';
import type { HostDetail, HostInstanceView, HostView, HostWithJoinToken } from '../api/hosts.js';
import type { ApiClient } from './client.js';
import { type Output, formatBytes, formatTable } from './output.js';

/** `cellar hosts …`: add a database host (and its join token), list, show, drain, undrain, remove, a fresh token; each with --json. */

/** A drain's --wait asks for the host this often. */
const drainPollMs = 250;
const drainTimeoutSecondsDefault = 1_800;
const drainTimeoutSecondsMax = 86_400;

function timeoutSeconds(text: string): number {
  const seconds = Number(text);
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > drainTimeoutSecondsMax) throw new Error(`--timeout must be an integer from 1 to ${drainTimeoutSecondsMax} seconds`);
  return seconds;
}

function describeInstance(instance: HostInstanceView): string {
  return `${instance.id} (${instance.cluster} ${instance.role}, ${instance.state}${instance.fenced ? ', fenced' : ''})`;
}

function progressLine(host: HostDetail): string {
  if (host.instances.length === 0) return `${host.name} ${host.state}: no instance left`;
  return `${host.name} ${host.state}: ${host.instances.length} instance(s) left: ${host.instances.map(describeInstance).join(', ')}`;
}

/** Polls the host and prints a line whenever its state or instances change, until it is drained; bounded by the timeout. */
async function waitDrained(client: ApiClient, out: Output, name: string, timeoutSecondsMax: number): Promise<HostDetail> {
  const startedMs = Date.now();
  const deadlineMs = startedMs + timeoutSecondsMax * 1000;
  let last = '';
  for (;;) {
    const host = await client.request<HostDetail>('GET', `/v1/hosts/${encodeURIComponent(name)}`);
    const line = progressLine(host);
    if (line !== last) out.progress(`${((Date.now() - startedMs) / 1000).toFixed(1).padStart(6)} s  ${line}`);
    last = line;
    if (host.state === 'drained') return host;
    if (host.state !== 'active' && host.state !== 'draining') throw new Error(`host ${name} is ${host.state}: the drain cannot finish`);
    if (Date.now() > deadlineMs) throw new Error(`gave up waiting after ${timeoutSecondsMax} s; ${line}`);
    await new Promise((resolve) => setTimeout(resolve, drainPollMs));
  }
}

/** A whole number for an option; the API checks the range and names the limit. */
function wholeNumber(option: string): (text: string) => number {
  return (text) => {
    if (!/^\d{1,10}$/.test(text.trim())) throw new Error(`${option} ${text}: must be a whole number`);
    return Number(text);
  };
}

function leaseAge(host: HostView): string {
  return host.leaseAgeMs === null ? 'never' : `${(host.leaseAgeMs / 1000).toFixed(1)} s`;
}

function row(host: HostView): string[] {
  return [
    host.name,
    host.address,
    host.zone,
    host.state,
    `${host.used.instances}/${host.capacity.slots}`,
    `${host.used.memoryMb}/${host.capacity.memoryMb}`,
    `${host.used.diskGb}/${host.capacity.diskGb}`,
    leaseAge(host),
    dataFree(host),
  ];
}

/** What Postgres may still write on the filesystem of the host's data directory; `-` before it is measured (a remote host, for now). */
function dataFree(host: HostView): string {
  const data = host.filesystems?.find((filesystem) => filesystem.purposes.includes('data'));
  return data === undefined ? '-' : `${formatBytes(data.availableBytes)} of ${formatBytes(data.totalBytes)}`;
}

const headers = ['NAME', 'ADDRESS', 'ZONE', 'STATE', 'SLOTS', 'MEMORY MB', 'DISK GB', 'LEASE AGE', 'DATA FREE'];

function printToken(out: Output, answer: HostWithJoinToken, verb: string): void {
  if (out.json) return out.result(answer);
  out.line(`${verb} host ${answer.host.name} (${answer.host.id}) at ${answer.host.address}, zone ${answer.host.zone}`);
  out.line(`  join token  ${answer.joinToken}`);
  out.line(`  expires     ${answer.joinTokenExpiresAt}; it works once and is not shown again`);
  out.line('On the host, as root, run:');
  out.line(`  ${answer.agentCommand}`);
  out.line(`(${answer.controlUrl} is the agent listener as this control plane sees itself; use an address the host can reach.)`);
}

export function registerHostsCommands(program: Command, connect: () => Promise<{ client: ApiClient; out: Output }>): void {
  const hosts = program.command('hosts').description('database hosts of the cell: add (with a join token), list, show, drain, undrain, remove (admin)');

  hosts
    .command('add <name>')
    .description('add a host; prints its one-time join token and the `cellar agent` command to run on it')
    .requiredOption('--address <ip>', 'the IPv4 or IPv6 address the agent and instances listen on')
    .option('--zone <zone>', 'failure zone (instances of a cluster spread across zones)')
    .option('--memory-mb <mb>', 'memory for instances, MB', wholeNumber('--memory-mb'))
    .option('--disk-gb <gb>', 'disk for instances, GB', wholeNumber('--disk-gb'))
    .option('--slots <n>', 'instances the host may run', wholeNumber('--slots'))
    .option('--json', 'print JSON')
    .action(async (name: string, options: { address: string; zone?: string; memoryMb?: number; diskGb?: number; slots?: number }) => {
      const { client, out } = await connect();
      const body = {
        name,
        address: options.address,
        ...(options.zone === undefined ? {} : { zone: options.zone }),
        ...(options.memoryMb === undefined ? {} : { memoryMb: options.memoryMb }),
        ...(options.diskGb === undefined ? {} : { diskGb: options.diskGb }),
        ...(options.slots === undefined ? {} : { slots: options.slots }),
      };
      printToken(out, await client.request<HostWithJoinToken>('POST', '/v1/hosts', body), 'added');
    });

  hosts
    .command('list')
    .description('the hosts with what their instances use and how old their lease is')
    .option('--json', 'print JSON')
    .action(async () => {
      const { client, out } = await connect();
      const { hosts: list } = await client.request<{ hosts: HostView[] }>('GET', '/v1/hosts');
      if (out.json) return out.result(list);
      out.line(formatTable(headers, list.map(row)));
    });

  hosts
    .command('show <name>')
    .description('one host')
    .option('--json', 'print JSON')
    .action(async (name: string) => {
      const { client, out } = await connect();
      const host = await client.request<HostDetail>('GET', `/v1/hosts/${encodeURIComponent(name)}`);
      if (out.json) return out.result(host);
      out.line(formatTable(headers, [row(host)]));
      out.line(`id ${host.id}, agent port ${host.agentPort}${host.local ? ', the local host' : ''}`);
      out.line(`created ${host.createdAt}, joined ${host.joinedAt ?? 'not yet'}`);
      for (const filesystem of host.filesystems ?? []) {
        out.line(`  ${filesystem.purposes.join(', ')} on ${filesystem.path}: ${formatBytes(filesystem.availableBytes)} free of ${formatBytes(filesystem.totalBytes)}`);
      }
      for (const instance of host.instances) out.line(`  ${describeInstance(instance)}`);
    });

  hosts
    .command('drain <name>')
    .description('move every instance off the host (replicas first, then primaries by switchover) and take no new ones; refused when they would have nowhere to go')
    .option('--wait', 'wait until the host is drained, showing the instances as they leave')
    .option('--timeout <seconds>', 'give up waiting after this long', timeoutSeconds, drainTimeoutSecondsDefault)
    .option('--json', 'print JSON')
    .action(async (name: string, options: { wait?: boolean; timeout: number }) => {
      const { client, out } = await connect();
      const requested = await client.request<HostDetail>('POST', `/v1/hosts/${encodeURIComponent(name)}/drain`);
      const host = options.wait === true ? await waitDrained(client, out, name, options.timeout) : requested;
      if (out.json) return out.result(host);
      if (host.state === 'drained') return out.line(`host ${host.name} is drained: no instance is left on it; patch it, then \`cellar hosts undrain ${host.name}\` or remove it`);
      out.line(`host ${host.name} is draining: ${host.instances.length} instance(s) to move; \`cellar hosts show ${host.name}\` shows them`);
    });

  hosts
    .command('undrain <name>')
    .description('a draining or drained host takes instances again (back from maintenance, or a drain called off)')
    .option('--json', 'print JSON')
    .action(async (name: string) => {
      const { client, out } = await connect();
      const host = await client.request<HostDetail>('POST', `/v1/hosts/${encodeURIComponent(name)}/undrain`);
      if (out.json) return out.result(host);
      out.line(`host ${host.name} takes instances again (it was ${host.state}; its machine acts within a tick)`);
    });

  hosts
    .command('remove <name>')
    .description("remove a host and revoke its certificates; refused while instances live there (drain it first)")
    .option('--force', 'remove it even with instances on it: a host lost for good, whose instances are replaced')
    .option('--json', 'print JSON')
    .action(async (name: string, options: { force?: boolean }) => {
      const { client, out } = await connect();
      const host = await client.request<HostView>('DELETE', `/v1/hosts/${encodeURIComponent(name)}${options.force === true ? '?force=true' : ''}`);
      if (out.json) return out.result(host);
      out.line(`removed host ${host.name} (${host.id}); its certificates are revoked`);
    });

  hosts
    .command('token <name>')
    .description('a fresh join token for a host that has not joined yet (the earlier one stops working)')
    .option('--json', 'print JSON')
    .action(async (name: string) => {
      const { client, out } = await connect();
      printToken(out, await client.request<HostWithJoinToken>('POST', `/v1/hosts/${encodeURIComponent(name)}/token`), 'new token for');
    });
}
