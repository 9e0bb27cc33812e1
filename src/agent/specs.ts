import { readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { InstanceSpec } from '../dataplane/dataplane.js';
import type { InstanceId } from '../lib/ids.js';
import { ensureDirectory, readSmallFile, replaceFile } from '../postgres/files.js';
import { selfRunAs } from '../postgres/osuser.js';
import { agentDirectory } from './identity.js';

/**
 * The last spec each instance was created or started with, and whether it was last told to run,
 * in `DIR/agent/specs/<instanceId>.json` (0600: a spec holds the cluster's secrets). With it the
 * agent takes status and restarts replicas after its own restart, without asking anyone.
 */

export const specsDirName = 'specs';
/** A spec is a few hundred bytes of settings and secrets. */
export const specFileBytesMax = 64 * 1024;
/** One directory listing at start; far more instances than one host can run. */
export const specFilesMax = 10_000;
const instanceIdPattern = /^in_[a-z0-9]+$/;

/** `running`: the last instruction was start; `stopped`: created, stopped or rejoined, not started since. */
export type WantedState = 'running' | 'stopped';

export interface SpecRecord {
  readonly spec: InstanceSpec;
  readonly wanted: WantedState;
}

export class SpecBook {
  private readonly records = new Map<string, SpecRecord>();
  /** Writes of one instance happen in order; a write and a removal never interleave. */
  private readonly queues = new Map<string, Promise<unknown>>();

  private constructor(private readonly dir: string) {}

  /** Makes `DIR/agent/specs` (root's, 0700) and reads every record in it. */
  static async open(dataDir: string): Promise<SpecBook> {
    const dir = join(agentDirectory(dataDir), specsDirName);
    await ensureDirectory(dir, 0o700, selfRunAs());
    const book = new SpecBook(dir);
    const entries = await readdir(dir);
    if (entries.length > specFilesMax) throw new Error(`${dir} holds ${entries.length} entries, more than the ${specFilesMax} an agent reads`);
    for (const entry of entries) {
      const instanceId = entry.endsWith('.json') ? entry.slice(0, -'.json'.length) : '';
      if (!instanceIdPattern.test(instanceId)) continue; // A staging file of a crashed write.
      const text = await readSmallFile(join(dir, entry), specFileBytesMax);
      if (text === undefined) continue;
      book.records.set(instanceId, parseRecord(text, join(dir, entry)));
    }
    return book;
  }

  get(instanceId: string): SpecRecord | undefined {
    return this.records.get(instanceId);
  }

  all(): SpecRecord[] {
    return [...this.records.values()];
  }

  /** Records the spec an operation was given; `wanted` undefined keeps what was wanted before (`stopped` for a new one). */
  async record(spec: InstanceSpec, wanted?: WantedState): Promise<void> {
    const id = checkedId(spec.instanceId);
    await this.serialised(id, async () => {
      const record: SpecRecord = { spec, wanted: wanted ?? this.records.get(id)?.wanted ?? 'stopped' };
      await replaceFile(this.pathOf(id), `${JSON.stringify(record)}\n`, 0o600, selfRunAs());
      this.records.set(id, record);
    });
  }

  /** A stop: the spec stays (status still needs it), but the agent no longer restarts it. */
  async markStopped(instanceId: InstanceId): Promise<void> {
    const id = checkedId(instanceId);
    const current = this.records.get(id);
    if (current === undefined || current.wanted === 'stopped') return;
    await this.record(current.spec, 'stopped');
  }

  async remove(instanceId: InstanceId): Promise<void> {
    const id = checkedId(instanceId);
    await this.serialised(id, async () => {
      await unlink(this.pathOf(id)).catch((error: unknown) => {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      });
      this.records.delete(id);
    });
  }

  private pathOf(instanceId: string): string {
    return join(this.dir, `${instanceId}.json`);
  }

  private serialised(instanceId: string, work: () => Promise<void>): Promise<void> {
    const next = (this.queues.get(instanceId) ?? Promise.resolve()).then(work, work);
    const settled = next.catch(() => undefined);
    this.queues.set(instanceId, settled);
    void settled.then(() => {
      if (this.queues.get(instanceId) === settled) this.queues.delete(instanceId);
    });
    return next;
  }
}

function checkedId(instanceId: string): string {
  // It names a file: an id from the wire must not climb out of the directory.
  if (!instanceIdPattern.test(instanceId)) throw new Error(`instance id ${JSON.stringify(instanceId)} is not of the form in_<letters and digits>`);
  return instanceId;
}

function parseRecord(text: string, path: string): SpecRecord {
  const parsed = JSON.parse(text) as Partial<SpecRecord> | null;
  if (parsed === null || typeof parsed !== 'object' || typeof parsed.spec?.instanceId !== 'string' || (parsed.wanted !== 'running' && parsed.wanted !== 'stopped')) {
    throw new Error(`${path} is not a spec record {spec, wanted}`);
  }
  return { spec: parsed.spec, wanted: parsed.wanted };
}
