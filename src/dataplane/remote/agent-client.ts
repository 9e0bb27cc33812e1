import { Agent as HttpsAgent, request } from 'node:https';
import type { TLSSocket } from 'node:tls';
import { currentAbortSignal } from '../../lib/abort.js';
import { InvariantError } from '../../lib/assert.js';
import { PermanentError, TransientError } from '../../lib/failure.js';
import type { InstanceId } from '../../lib/ids.js';
import { type AgentError, type AgentOperation, agentOperationPathPrefix } from '../agent-protocol.js';
import {
  type BackupCheck,
  type BaseBackupInfo,
  type ClusterSecrets,
  type DataPlane,
  type InstanceSpec,
  type InstanceUsage,
  type ServerSetting,
  type InstanceStatus,
  type RejoinMethod,
  type RestoreSource,
  type UpstreamRef,
  dataPlaneLimitsMs,
} from '../dataplane.js';

/**
 * The DataPlane of one host other than the control plane's own: each operation is a request to
 * that host's agent (docs/HOSTS.md, "Operations") over mutual TLS with the control plane's
 * certificate, the agent's checked against the cell CA and its address (SAN IP). Bounded by the
 * operation's limit and ended with the step; failures come back as the kinds they were.
 */

/** Connections kept to one agent: operations at once beyond this wait for one (within their bound). */
export const agentConnectionsMax = 32;
/** A host that does not complete the TLS handshake within this is unreachable, whatever the operation. */
export const agentConnectMsMax = 5_000;
/** The largest answer (a status, a backup's info) is a few kilobytes. */
export const agentResponseBytesMax = 1024 * 1024;

export interface AgentHost {
  readonly address: string;
  readonly agentPort: number;
}

export interface ControlTls {
  /** PEM: the control plane's key and certificate (CN=cellar-control), and the cell CA's. */
  readonly key: string;
  readonly certificate: string;
  readonly ca: string;
}

export interface AgentClientOptions {
  readonly host: AgentHost;
  readonly tls: ControlTls;
  /** Postgres majors the host has; they come with its heartbeat later. */
  readonly versions?: readonly number[];
}

export class AgentClient implements DataPlane {
  private readonly agent: HttpsAgent;
  private readonly where: string;

  constructor(private readonly options: AgentClientOptions) {
    this.where = `host ${options.host.address}:${options.host.agentPort}`;
    this.agent = new HttpsAgent({
      keepAlive: true,
      maxSockets: agentConnectionsMax,
      key: options.tls.key,
      cert: options.tls.certificate,
      ca: options.tls.ca,
      minVersion: 'TLSv1.3',
    });
  }

  /** Closes kept connections (a host removed, the control plane stopping). */
  close(): void {
    this.agent.destroy();
  }

  versions(): readonly number[] {
    return this.options.versions ?? [];
  }

  async createPrimary(spec: InstanceSpec): Promise<void> {
    await this.call('createPrimary', [spec]);
  }

  async createReplica(spec: InstanceSpec, upstream: UpstreamRef): Promise<void> {
    await this.call('createReplica', [spec, upstream]);
  }

  async start(spec: InstanceSpec): Promise<void> {
    await this.call('start', [spec]);
  }

  async stop(instanceId: InstanceId, mode?: 'fast' | 'immediate'): Promise<void> {
    await this.call('stop', mode === undefined ? [instanceId] : [instanceId, mode]);
  }

  async status(spec: InstanceSpec): Promise<InstanceStatus> {
    const result = (await this.call('status', [spec])) as Partial<InstanceStatus> | null;
    if (typeof result?.running !== 'boolean') throw new TransientError(`${this.where}: status answered without {running}`);
    // JSON drops undefined fields; the port's type has every key.
    return {
      running: result.running,
      pid: result.pid,
      accepting: result.accepting === true,
      inRecovery: result.inRecovery,
      timeline: result.timeline,
      lsn: result.lsn,
      streaming: result.streaming,
      receiveLsn: result.receiveLsn,
      archive: result.archive,
      ...(Array.isArray(result.slots) ? { slots: result.slots } : {}),
      ...(typeof result.connections === 'number' ? { connections: result.connections } : {}),
      ...(typeof result.transactions === 'number' ? { transactions: result.transactions } : {}),
    };
  }

  /** A request like status; the router answers observations from heartbeats before it asks. */
  observe(spec: InstanceSpec): Promise<InstanceStatus> {
    return this.status(spec);
  }

  /** A request: the router answers from heartbeats first, and asks only when a beat says the server is gone. */
  async alive(instanceId: InstanceId): Promise<boolean> {
    return (await this.call('alive', [instanceId])) === true;
  }

  /** Nothing is asked: the host's heartbeats say which servers run there (the router answers alive from them). */
  async watchExit(_instanceId: InstanceId): Promise<boolean> {
    return false;
  }

  async dropSlot(upstream: UpstreamRef, secrets: ClusterSecrets): Promise<void> {
    await this.call('dropSlot', [upstream, secrets]);
  }

  async promote(spec: InstanceSpec): Promise<void> {
    await this.call('promote', [spec]);
  }

  async follow(spec: InstanceSpec, upstream: UpstreamRef): Promise<void> {
    await this.call('follow', [spec, upstream]);
  }

  async rejoin(spec: InstanceSpec, upstream: UpstreamRef): Promise<RejoinMethod> {
    const method = await this.call('rejoin', [spec, upstream]);
    if (method !== 'rewound' && method !== 'cloned') throw new TransientError(`${this.where}: rejoin answered ${JSON.stringify(method)}, not rewound or cloned`);
    return method;
  }

  async allowPeers(spec: InstanceSpec): Promise<void> {
    await this.call('allowPeers', [spec]);
  }

  async configure(spec: InstanceSpec): Promise<readonly ServerSetting[]> {
    return (await this.call('configure', [spec])) as ServerSetting[];
  }

  async checkpoint(spec: InstanceSpec): Promise<void> {
    await this.call('checkpoint', [spec]);
  }

  async settings(spec: InstanceSpec): Promise<readonly ServerSetting[]> {
    return (await this.call('settings', [spec])) as ServerSetting[];
  }

  async usage(spec: InstanceSpec): Promise<InstanceUsage> {
    return (await this.call('usage', [spec])) as InstanceUsage;
  }

  async setSynchronousStandbys(spec: InstanceSpec, standbys: readonly string[]): Promise<void> {
    await this.call('setSynchronousStandbys', [spec, standbys]);
  }

  async takeBaseBackup(source: InstanceSpec, primary: InstanceSpec, backupId: string, maxRateBytesPerSecond: number): Promise<BaseBackupInfo> {
    return (await this.call('takeBaseBackup', [source, primary, backupId, maxRateBytesPerSecond])) as BaseBackupInfo;
  }

  async checkBackup(clusterId: string, backupId: string, pgVersion: number): Promise<BackupCheck> {
    return (await this.call('checkBackup', [clusterId, backupId, pgVersion])) as BackupCheck;
  }

  async deleteBackup(clusterId: string, backupId: string): Promise<void> {
    await this.call('deleteBackup', [clusterId, backupId]);
  }

  async pruneWal(clusterId: string, oldestNeededWalFile: string): Promise<number> {
    const removed = await this.call('pruneWal', [clusterId, oldestNeededWalFile]);
    if (typeof removed !== 'number') throw new TransientError(`${this.where}: pruneWal answered ${JSON.stringify(removed)}, not a count`);
    return removed;
  }

  async restorePrimary(spec: InstanceSpec, source: RestoreSource): Promise<void> {
    await this.call('restorePrimary', [spec, source]);
  }

  async destroy(instanceId: InstanceId): Promise<void> {
    await this.call('destroy', [instanceId]);
  }

  async purgeCluster(clusterId: string): Promise<void> {
    await this.call('purgeCluster', [clusterId]);
  }

  /** One operation: its `result`, or its error as the kind it was on the host. */
  private async call(operation: AgentOperation, args: readonly unknown[]): Promise<unknown> {
    const step = currentAbortSignal();
    step?.throwIfAborted();
    const limitMs = dataPlaneLimitsMs[operation];
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(new TransientError(`${operation} on ${this.where} exceeded its bound of ${limitMs} ms`)), limitMs);
    // The step's time is up: the request is dropped, and the agent aborts the operation when its socket closes.
    const onStepAbort = (): void => controller.abort(step?.reason);
    step?.addEventListener('abort', onStepAbort, { once: true });
    try {
      const { status, text } = await this.post(operation, JSON.stringify({ args }), controller);
      return this.answer(operation, status, text);
    } finally {
      clearTimeout(timer);
      step?.removeEventListener('abort', onStepAbort);
    }
  }

  private post(operation: AgentOperation, payload: string, controller: AbortController): Promise<{ status: number; text: string }> {
    const { address, agentPort } = this.options.host;
    return new Promise((resolve, reject) => {
      let connectTimer: NodeJS.Timeout | undefined;
      const fail = (error: unknown): void => {
        clearTimeout(connectTimer);
        if (controller.signal.aborted) return reject(controller.signal.reason);
        reject(new TransientError(`${this.where} unreachable for ${operation}: ${error instanceof Error ? error.message : String(error)}`, { cause: error }));
      };
      const outgoing = request(
        {
          host: address,
          port: agentPort,
          method: 'POST',
          path: `${agentOperationPathPrefix}${operation}`,
          agent: this.agent,
          signal: controller.signal,
          headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
        },
        (incoming) => {
          const chunks: Buffer[] = [];
          let bytes = 0;
          incoming.on('data', (chunk: Buffer) => {
            bytes += chunk.length;
            if (bytes > agentResponseBytesMax) incoming.destroy(new Error(`the answer is larger than ${agentResponseBytesMax} bytes`));
            else chunks.push(chunk);
          });
          incoming.on('error', fail);
          incoming.on('end', () => resolve({ status: incoming.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
        },
      );
      outgoing.on('socket', (socket) => {
        if (!socket.connecting) return;
        connectTimer = setTimeout(() => outgoing.destroy(new Error(`no TLS connection within ${agentConnectMsMax} ms`)), agentConnectMsMax);
        (socket as TLSSocket).once('secureConnect', () => clearTimeout(connectTimer));
      });
      outgoing.on('error', fail);
      outgoing.end(payload);
    });
  }

  private answer(operation: AgentOperation, status: number, text: string): unknown {
    let body: { result?: unknown; error?: Partial<AgentError> } | undefined;
    try {
      body = JSON.parse(text) as typeof body;
    } catch {
      throw new TransientError(`${this.where} answered ${operation} with ${status} and no JSON: ${text.slice(0, 200)}`);
    }
    if (status >= 200 && status <= 299 && body !== undefined && 'result' in body) return body.result ?? undefined;
    const error = body?.error;
    const message = `${operation} on ${this.where}: ${error?.message ?? `answered ${status}`}${error?.code === undefined ? '' : ` [${error.code}]`}`;
    if (error?.failure === 'permanent') throw new PermanentError(message);
    if (error?.failure === 'invariant') throw new InvariantError(message);
    throw new TransientError(message);
  }
}
