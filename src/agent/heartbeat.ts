import { Agent as HttpsAgent, request } from 'node:https';
import { isIP } from 'node:net';
import type { PeerCertificate } from 'node:tls';
import type { Logger } from 'pino';
import type { HostSettings } from '../config.js';
import { hostLeaseMsMax, hostLeaseMsMin } from '../config.js';
import { type AgentAddress, type DesiredInstance, type HeartbeatInstance, type HeartbeatRequest, type HeartbeatResponse, agentHeartbeatPath, controlCommonName } from '../dataplane/agent-protocol.js';
import type { DataPlane, HostUsage, InstanceStatus } from '../dataplane/dataplane.js';
import { runWithAbortSignal } from '../lib/abort.js';
import { TransientError } from '../lib/failure.js';
import type { InstanceId } from '../lib/ids.js';
import { instancePaths } from '../postgres/paths.js';
import { serverPid } from '../postgres/server.js';
import { Failsafe } from './failsafe.js';
import type { AgentIdentity } from './identity.js';
import { type FencedPrimary, type Lease, currentBootId, failsafeSilenceMs, monotonicNowNs, writeLeaseFile } from './lease.js';
import { processStartTicks } from './proc.js';
import type { SpecBook } from './specs.js';

/**
 * The agent's one heartbeat (docs/HOSTS.md, "Heartbeats and the lease"): every instance's
 * liveness and last status to the control plane, whose answer renews the lease and says what it
 * wants of each instance. After each renewal the lease file tells the guard until when, and
 * which primaries to fence after that.
 */

/** A full status opens a connection to the server: at most this often per instance. */
export const statusRefreshMs = 1_000;
/** A status that hangs must not hold a slot for long; the next refresh tries again. */
export const statusMsMax = 2_000;
/** Status queries of one host running at once. */
export const statusConcurrencyMax = 4;
/** Liveness checks (a pid file and /proc) at once, every beat. */
export const aliveConcurrencyMax = 8;
/** The control plane's answer is small; a bigger one is not an answer. */
export const heartbeatResponseBytesMax = 1024 * 1024;
/** Desired instances in one answer: more than a host can run. */
export const desiredInstancesMax = 10_000;
/** Peers named for one primary: its cluster's other hosts. */
const peersMax = 64;
/** Even when a beat ran past its interval, the next waits this long: never a tight loop. */
export const beatGapMsMin = 10;
/** Lowest interval the control plane may ask for (the config's floor too). */
const heartbeatMsMin = 20;

interface InstanceView {
  alive: boolean | undefined;
  status: InstanceStatus | undefined;
  statusTakenAtMs: number;
  refreshing: boolean;
  /** Bumped by each operation on the instance: a status begun before it is thrown away. */
  generation: number;
}

export interface HeartbeatOptions {
  readonly dataDir: string;
  readonly identity: AgentIdentity;
  readonly driver: DataPlane;
  readonly specs: SpecBook;
  readonly lease: Lease;
  readonly settings: Pick<HostSettings, 'heartbeatMs' | 'leaseMs'>;
  readonly log: Logger;
}

export class Heartbeat {
  private readonly views = new Map<string, InstanceView>();
  private readonly agent: HttpsAgent;
  private readonly url: URL;
  private intervalMs: number;
  private leaseMs: number;
  private statusRunning = 0;
  private stopped = false;
  private loopDone: Promise<void> | null = null;
  private wake: (() => void) | null = null;
  private inFlight: AbortController | null = null;
  private failingSince: number | null = null;
  private failedBeats = 0;
  private leaseWasHeld = false;
  /** What the failsafe last decided (logged once per change); null while heartbeats are answered. */
  private failsafeServing: boolean | null = null;
  private readonly failsafe: Failsafe;
  /** Beats answered with a renewal (tests and logs). */
  renewals = 0;

  constructor(private readonly options: HeartbeatOptions) {
    this.intervalMs = options.settings.heartbeatMs;
    this.leaseMs = options.settings.leaseMs;
    this.url = new URL(agentHeartbeatPath, options.identity.controlUrl);
    this.failsafe = new Failsafe(options.identity);
    this.agent = new HttpsAgent({
      keepAlive: true,
      maxSockets: 1,
      key: options.identity.key,
      cert: options.identity.certificate,
      ca: options.identity.ca,
      minVersion: 'TLSv1.3',
      // The control plane is whoever holds the cell's `cellar-control` certificate, at whatever address the URL names.
      checkServerIdentity: (_host: string, certificate: PeerCertificate) =>
        certificate.subject?.CN === controlCommonName ? undefined : new Error(`the control plane's certificate is CN=${String(certificate.subject?.CN)}, not ${controlCommonName}`),
    });
  }

  start(): void {
    this.loopDone ??= this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.inFlight?.abort(new TransientError('the agent is stopping'));
    this.wake?.();
    await this.loopDone;
    this.agent.destroy();
    this.failsafe.close();
  }

  /** An operation changed the instance: its last status is dropped until a new one is taken. */
  forgetStatus(instanceId: string): void {
    const view = this.views.get(instanceId);
    if (view === undefined) return;
    view.status = undefined;
    view.statusTakenAtMs = -Infinity;
    view.generation += 1;
  }


  private async loop(): Promise<void> {
    while (!this.stopped) {
      const sentAtNs = monotonicNowNs();
      await this.beat(sentAtNs);
      const elapsedMs = Number((monotonicNowNs() - sentAtNs) / 1_000_000n);
      await this.pause(Math.max(this.intervalMs - elapsedMs, beatGapMsMin));
    }
  }

  private pause(ms: number): Promise<void> {
    if (this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
  }

  /** The host's filesystems as just measured: sent with the next beat, and again until a beat is answered. */
  offerUsage(usage: HostUsage): Promise<void> {
    this.pendingUsage = usage;
    return Promise.resolve();
  }

  private pendingUsage: HostUsage | null = null;

  private async beat(sentAtNs: bigint): Promise<void> {
    const usage = this.pendingUsage;
    const body: HeartbeatRequest = { hostId: this.options.identity.hostId, instances: await this.observe(), leaseLeftMs: this.options.lease.leftMs(), ...(usage === null ? {} : { usage }) };
    let response: HeartbeatResponse;
    try {
      response = parseResponse(await this.send(body));
    } catch (error) {
      this.noteFailure(error);
      await this.tryFailsafe(sentAtNs);
      this.noteLease();
      return;
    }
    if (this.pendingUsage === usage) this.pendingUsage = null;
    this.options.lease.renew(sentAtNs, response.leaseMs, response.instances, response.clockMarginMs ?? 0, response.heartbeatMs);
    this.leaseMs = response.leaseMs;
    this.intervalMs = response.heartbeatMs;
    this.renewals += 1;
    this.noteRecovery();
    this.noteLease();
    this.failsafeServing = null;
    await this.writeLease(response.instances);
  }

  private async writeLease(desired: readonly DesiredInstance[]): Promise<void> {
    try {
      await writeLeaseFile(this.options.dataDir, {
        bootId: await currentBootId(),
        expiresAtMonotonicNs: String(this.options.lease.expiresAtMonotonicNs), primaries: await this.primariesToFence(desired) });
    } catch (error) {
      // The guard keeps the previous expiry: it fences early rather than late.
      this.options.log.error({ err: error instanceof Error ? error.message : String(error) }, 'could not write the lease file');
    }
  }

  /**
   * No answer from the control plane: while the lease still holds, ask the peers of this host's
   * fenced-on-loss primaries; if none holds a lease either, extend by the failsafe (docs/HOSTS.md).
   * Never after the lease ran out: a primary the guard may have fenced is not brought back here.
   */
  private async tryFailsafe(sentAtNs: bigint): Promise<void> {
    const lease = this.options.lease;
    if (this.stopped || !lease.held()) return;
    const desired = lease.desiredInstances();
    const peers = new Map<string, AgentAddress>();
    for (const instance of desired) {
      if (instance.role !== 'primary' || !instance.fenceOnLeaseLoss) continue;
      for (const peer of instance.peers ?? []) peers.set(`${peer.address}:${peer.agentPort}`, peer);
    }
    if (peers.size === 0) return;
    const verdict = await this.failsafe.verdict([...peers.values()], failsafeSilenceMs(this.intervalMs), Math.max(heartbeatMsMin, Math.min(this.intervalMs * 2, Math.floor(this.leaseMs / 3))));
    if (!verdict.serve) {
      if (this.failsafeServing !== false) this.options.log.warn({ why: verdict.why }, 'failsafe: primaries are fenced when the lease runs out');
      this.failsafeServing = false;
      return;
    }
    lease.extendByFailsafe(sentAtNs, this.leaseMs);
    if (this.failsafeServing !== true) this.options.log.warn({ peers: peers.size }, 'failsafe: no peer holds a lease either (the control plane is gone for all): primaries keep serving');
    this.failsafeServing = true;
    await this.writeLease(desired);
  }

  /** Every instance with a spec: alive now, and the last status (refreshed in the background). */
  private async observe(): Promise<HeartbeatInstance[]> {
    const records = this.options.specs.all();
    const known = new Set(records.map((record) => record.spec.instanceId as string));
    for (const instanceId of this.views.keys()) if (!known.has(instanceId)) this.views.delete(instanceId);
    const nowMs = performance.now();
    return mapBounded(records, aliveConcurrencyMax, async ({ spec }) => {
      const view = this.viewOf(spec.instanceId);
      const alive = await this.options.driver.alive(spec.instanceId).catch(() => false);
      const changed = view.alive !== alive;
      view.alive = alive;
      if (changed || nowMs - view.statusTakenAtMs >= statusRefreshMs) this.refreshStatus(spec.instanceId, view);
      const beat: HeartbeatInstance = view.status === undefined ? { instanceId: spec.instanceId, alive } : { instanceId: spec.instanceId, alive, status: view.status, statusAgeMs: Math.round(nowMs - view.statusTakenAtMs) };
      return beat;
    });
  }

  private viewOf(instanceId: string): InstanceView {
    let view = this.views.get(instanceId);
    if (view === undefined) {
      view = { alive: undefined, status: undefined, statusTakenAtMs: -Infinity, refreshing: false, generation: 0 };
      this.views.set(instanceId, view);
    }
    return view;
  }

  /** In the background, so a slow server never delays the beat; a full queue waits for the next beat. */
  private refreshStatus(instanceId: string, view: InstanceView): void {
    if (view.refreshing || this.statusRunning >= statusConcurrencyMax) return;
    const record = this.options.specs.get(instanceId);
    if (record === undefined) return;
    view.refreshing = true;
    this.statusRunning += 1;
    const startedMs = performance.now();
    const generation = view.generation;
    void runWithAbortSignal(AbortSignal.timeout(statusMsMax), () => this.options.driver.status(record.spec))
      .then(
        (status) => {
          // A status begun before an operation changed the instance says what it was, not what it is.
          if (view.generation !== generation) return;
          view.status = status;
          view.statusTakenAtMs = startedMs;
        },
        (error: unknown) => {
          this.options.log.debug({ instanceId, err: error instanceof Error ? error.message : String(error) }, 'status failed; the beat keeps the last one');
        },
      )
      .finally(() => {
        view.refreshing = false;
        this.statusRunning -= 1;
      });
  }

  /** The running primaries the control plane marked `fenceOnLeaseLoss`, with their postmasters' pids and start times. */
  private async primariesToFence(desired: readonly DesiredInstance[]): Promise<FencedPrimary[]> {
    const fenced: FencedPrimary[] = [];
    for (const instance of desired) {
      if (instance.role !== 'primary' || !instance.fenceOnLeaseLoss) continue;
      const pid = await serverPid(instancePaths(this.options.dataDir, instance.instanceId as InstanceId).pgdata).catch(() => undefined);
      if (pid === undefined) continue;
      const startTicks = await processStartTicks(pid);
      if (startTicks !== undefined) fenced.push({ instanceId: instance.instanceId, pid, startTicks });
    }
    return fenced;
  }

  private send(body: HeartbeatRequest): Promise<unknown> {
    const payload = JSON.stringify(body);
    const controller = new AbortController();
    this.inFlight = controller;
    // Well under the lease: a beat that cannot be answered in a third of it is retried instead.
    const requestMsMax = Math.max(Math.floor(this.leaseMs / 3), heartbeatMsMin);
    const timer = setTimeout(() => controller.abort(new TransientError(`the control plane did not answer the heartbeat within ${requestMsMax} ms`)), requestMsMax);
    return new Promise<unknown>((resolve, reject) => {
      const outgoing = request(
        this.url,
        { method: 'POST', agent: this.agent, signal: controller.signal, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } },
        (incoming) => {
          const chunks: Buffer[] = [];
          let bytes = 0;
          incoming.on('data', (chunk: Buffer) => {
            bytes += chunk.length;
            if (bytes > heartbeatResponseBytesMax) incoming.destroy(new Error(`the heartbeat answer is larger than ${heartbeatResponseBytesMax} bytes`));
            else chunks.push(chunk);
          });
          incoming.on('error', reject);
          incoming.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            const status = incoming.statusCode ?? 0;
            if (status < 200 || status > 299) return reject(new Error(`the control plane answered the heartbeat with ${status}: ${text.slice(0, 300)}`));
            try {
              resolve(JSON.parse(text));
            } catch {
              reject(new Error(`the control plane's heartbeat answer is not JSON: ${text.slice(0, 300)}`));
            }
          });
        },
      );
      outgoing.on('error', (error) => reject(controller.signal.aborted ? controller.signal.reason : error));
      outgoing.end(payload);
    }).finally(() => {
      clearTimeout(timer);
      this.inFlight = null;
    });
  }

  private noteFailure(error: unknown): void {
    this.failedBeats += 1;
    if (this.failingSince !== null || this.stopped) return;
    this.failingSince = Date.now();
    this.options.log.warn({ err: error instanceof Error ? error.message : String(error), controlUrl: this.options.identity.controlUrl }, 'heartbeat failed; retrying at every interval');
  }

  private noteRecovery(): void {
    if (this.failingSince === null) return;
    this.options.log.info({ failedBeats: this.failedBeats, downMs: Date.now() - this.failingSince }, 'heartbeats answered again');
    this.failingSince = null;
    this.failedBeats = 0;
  }

  private noteLease(): void {
    const held = this.options.lease.held();
    if (held === this.leaseWasHeld) return;
    this.leaseWasHeld = held;
    if (held) this.options.log.info({ leaseMs: this.leaseMs }, 'lease held');
    else this.options.log.warn({}, 'lease expired: the guard fences this host\'s primaries; nothing is started until it is renewed');
  }
}

/** Checked field by field: a renewal from a confused peer must not grant an unbounded lease. */
export function parseResponse(value: unknown): HeartbeatResponse {
  const response = value as Partial<HeartbeatResponse> | null;
  const leaseMs = response?.leaseMs;
  const heartbeatMs = response?.heartbeatMs;
  if (typeof leaseMs !== 'number' || !Number.isInteger(leaseMs) || leaseMs < hostLeaseMsMin || leaseMs > hostLeaseMsMax) {
    throw new Error(`the heartbeat answer's leaseMs ${String(leaseMs)} is not an integer from ${hostLeaseMsMin} to ${hostLeaseMsMax}`);
  }
  if (typeof heartbeatMs !== 'number' || !Number.isInteger(heartbeatMs) || heartbeatMs < heartbeatMsMin || heartbeatMs * 3 > leaseMs) {
    throw new Error(`the heartbeat answer's heartbeatMs ${String(heartbeatMs)} is not an integer from ${heartbeatMsMin} to a third of the lease`);
  }
  const instances = response?.instances;
  if (!Array.isArray(instances) || instances.length > desiredInstancesMax) throw new Error(`the heartbeat answer's instances must be a list of at most ${desiredInstancesMax}`);
  for (const instance of instances as unknown[]) {
    const entry = instance as Partial<DesiredInstance> | null;
    if (typeof entry?.instanceId !== 'string' || (entry.role !== 'primary' && entry.role !== 'replica') || typeof entry.fenceOnLeaseLoss !== 'boolean' || typeof entry.fenced !== 'boolean') {
      throw new Error(`the heartbeat answer lists an instance that is not {instanceId, role, fenceOnLeaseLoss, fenced}: ${JSON.stringify(instance).slice(0, 200)}`);
    }
    const peers = entry.peers;
    if (peers !== undefined && (!Array.isArray(peers) || peers.length > peersMax || !peers.every((peer) => typeof peer?.address === 'string' && isIP(peer.address) !== 0 && Number.isInteger(peer.agentPort)))) {
      throw new Error(`the heartbeat answer lists peers that are not at most ${peersMax} {address, agentPort}: ${JSON.stringify(peers).slice(0, 200)}`);
    }
  }
  const clockMarginMs = response?.clockMarginMs;
  if (clockMarginMs !== undefined && (typeof clockMarginMs !== 'number' || !Number.isInteger(clockMarginMs) || clockMarginMs < 0 || clockMarginMs > hostLeaseMsMax)) {
    throw new Error(`the heartbeat answer's clockMarginMs ${String(clockMarginMs)} is not an integer from 0 to ${hostLeaseMsMax}`);
  }
  return { leaseMs, heartbeatMs, instances: instances as DesiredInstance[], ...(clockMarginMs === undefined ? {} : { clockMarginMs }) };
}

/** Runs `work` over `items`, at most `limit` at once, keeping the order of the results. */
export async function mapBounded<T, R>(items: readonly T[], limit: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const index = next++;
      results[index] = await work(items[index] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}
