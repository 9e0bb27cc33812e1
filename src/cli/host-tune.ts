import { isAbsolute } from 'node:path';
import type { HostDetail, HostInstanceView, HostView } from '../api/hosts.js';
import { type ApplyReport, type CurrentValue, applyTuning, readCurrentValues, readHostMemory } from '../agent/kernel-tunables.js';
import { loadConfig } from '../config.js';
import { type Recommendation, isSatisfied, recommend } from '../lib/tuning.js';
import { ApiClient, ApiError, resolveCredentials } from './client.js';
import { type Output, formatTable } from './output.js';

/**
 * `cellar host tune [--apply]`: the kernel settings this machine should have for the instances
 * placed on it, beside what it has (docs/STORAGE.md, "Kernel tunables"). The instances come from
 * the API at each run, so a run after instances were added or removed recomputes everything.
 */

const sysctlFileLengthMax = 4_096;

export interface TuneOptions {
  readonly apply: boolean;
  readonly sysctlFile: string;
  /** The cell's name for this machine; absent: the control plane's own (local) host. */
  readonly host?: string;
}

interface CountedInstances {
  readonly host: string | null;
  readonly instances: readonly HostInstanceView[];
  /** Why no instance was counted, when the API could not say. */
  readonly note?: string;
}

export interface TuneSetting {
  name: string;
  target: string;
  current: string | null;
  currentWhy?: string;
  recommended: string;
  comparison: string;
  /** null: the current value is unknown. */
  satisfied: boolean | null;
  reason: string;
}

export interface TuneResult {
  host: string | null;
  memoryMb: number;
  swapMb: number;
  instances: HostInstanceView[];
  instancesNote?: string;
  settings: TuneSetting[];
  apply?: ApplyReport;
}

export function checkSysctlFile(path: string): string {
  if (!isAbsolute(path) || path.length > sysctlFileLengthMax || /[\0\n\r]/.test(path) || path.endsWith('/')) {
    throw new Error(`--sysctl-file must be an absolute file path of at most ${sysctlFileLengthMax} characters without line breaks`);
  }
  return path;
}

/** The instances the cell has placed on this machine; none, with the reason, when no API answers and no host was named. */
async function countInstances(hostName: string | undefined): Promise<CountedInstances> {
  let client: ApiClient;
  try {
    client = new ApiClient(await resolveCredentials(loadConfig()));
  } catch (error) {
    if (hostName !== undefined) throw error;
    return { host: null, instances: [], note: `no instance counted: ${error instanceof Error ? error.message : String(error)}` };
  }
  try {
    const name = hostName ?? (await client.request<{ hosts: HostView[] }>('GET', '/v1/hosts')).hosts.find((host) => host.local)?.name;
    if (name === undefined) return { host: null, instances: [], note: 'no instance counted: the cell has no local host (name this one with --host)' };
    const detail = await client.request<HostDetail>('GET', `/v1/hosts/${encodeURIComponent(name)}`);
    return { host: detail.name, instances: detail.instances };
  } catch (error) {
    if (hostName !== undefined || !(error instanceof ApiError) || error.code !== 'CELLAR_E_UNREACHABLE') throw error;
    return { host: null, instances: [], note: `no instance counted: ${error.message}` };
  }
}

function setting(recommendation: Recommendation, current: CurrentValue | undefined): TuneSetting {
  const value = current?.value ?? null;
  return {
    name: recommendation.name,
    target: recommendation.target,
    current: value,
    ...(current?.why === undefined ? {} : { currentWhy: current.why }),
    recommended: recommendation.recommended,
    comparison: recommendation.comparison,
    satisfied: value === null ? null : isSatisfied(recommendation, value),
    reason: recommendation.reason,
  };
}

const comparisonSigns: Readonly<Record<string, string>> = { equal: '', atLeast: '≥ ', atMost: '≤ ' };

function describeInstance(instance: HostInstanceView): string {
  return `${instance.id} (${instance.cluster} ${instance.role}, ${instance.size}, shared_buffers ${instance.sharedBuffersMb} MB, max_connections ${instance.maxConnections})`;
}

function printResult(out: Output, result: TuneResult): void {
  out.line(`${result.host === null ? 'This machine' : `Host ${result.host}`}: ${result.memoryMb.toLocaleString('en-US')} MB memory, ${result.swapMb.toLocaleString('en-US')} MB swap`);
  if (result.instancesNote !== undefined) out.line(`${result.instancesNote}; recommending for 0 instances`);
  else out.line(`Counted ${result.instances.length} instance(s)${result.instances.length === 0 ? '' : ':'}`);
  for (const instance of result.instances) out.line(`  ${describeInstance(instance)}`);
  out.line('');
  const rows = result.settings.map((entry) => [`${entry.satisfied === true ? ' ' : '*'} ${entry.name}`, entry.current ?? 'unknown', `${comparisonSigns[entry.comparison] ?? ''}${entry.recommended}`, entry.reason]);
  out.line(formatTable(['  NAME', 'CURRENT', 'RECOMMENDED', 'REASON'], rows));
  const differing = result.settings.filter((entry) => entry.satisfied !== true).length;
  out.line('');
  out.line(`* differs from the recommendation or is unknown: ${differing} of ${result.settings.length}${result.apply === undefined && differing > 0 ? '; `cellar host tune --apply` sets them' : ''}`);
  for (const entry of result.settings) if (entry.currentWhy !== undefined) out.line(`  ${entry.name} unknown: ${entry.currentWhy}`);
  out.line('Instances added or removed change these: run `cellar host tune` again after either.');
  if (result.apply !== undefined) printApply(out, result.apply);
}

function printApply(out: Output, report: ApplyReport): void {
  out.line('');
  out.line(report.fileWritten ? `Wrote ${report.file}; loaded:` : `Could not write ${report.file}: ${report.fileError ?? 'unknown'}. Nothing was loaded.`);
  for (const key of report.keys) out.line(`  ${key.set ? 'set    ' : 'NOT SET'}  ${key.name} = ${key.wanted}${key.set ? '' : `: ${key.why ?? 'unknown'}`}`);
  const failed = report.keys.filter((key) => !key.set).length;
  out.line(failed === 0 ? `All ${report.keys.length} set.` : `${failed} of ${report.keys.length} could not be set.`);
}

function fileHeader(counted: CountedInstances): string[] {
  const instances = counted.instances.map((instance) => instance.id).join(', ');
  return [
    `Written by \`cellar host tune --apply\` at ${new Date().toISOString()}; replaced whole at the next run.`,
    `For ${counted.host === null ? 'this machine' : `host ${counted.host}`} with ${counted.instances.length} instance(s)${instances === '' ? '' : `: ${instances}`}.`,
    'Run it again after instances are added or removed: huge pages and limits follow them.',
    'transparent_hugepage is not a sysctl: keep it at boot with transparent_hugepage=never on the kernel command line.',
  ];
}

export async function tune(options: TuneOptions, out: Output): Promise<void> {
  const sysctlFile = checkSysctlFile(options.sysctlFile);
  const [memory, counted] = await Promise.all([readHostMemory(), countInstances(options.host)]);
  const recommendations = recommend(memory, counted.instances);
  const current = await readCurrentValues(recommendations);
  const currentByName = new Map(current.map((value) => [value.name, value]));
  const result: TuneResult = {
    host: counted.host,
    memoryMb: memory.memoryMb,
    swapMb: memory.swapMb,
    instances: [...counted.instances],
    ...(counted.note === undefined ? {} : { instancesNote: counted.note }),
    settings: recommendations.map((recommendation) => setting(recommendation, currentByName.get(recommendation.name))),
  };
  if (options.apply) {
    result.apply = await applyTuning(recommendations, current, sysctlFile, fileHeader(counted));
    // The table was printed and the file may be written; the exit code still says not everything took.
    if (result.apply.keys.some((key) => !key.set)) process.exitCode = 1;
  }
  if (out.json) return out.result(result);
  printResult(out, result);
}
