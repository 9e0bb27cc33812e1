import { hostname } from 'node:os';
import type { Logger } from 'pino';
import { type AgentListener, type HeartbeatSink, startAgentListener } from '../api/agent-listener.js';
import type { HostsApiOptions } from '../api/hosts.js';
import type { Config } from '../config.js';
import { type HeartbeatRequest, controlCommonName } from '../dataplane/agent-protocol.js';
import { hostMachine, joinedSignal, removeSignal } from '../machines/host.js';
import { caCertificatePem, certificateSha256, ensureCellCa } from '../pki/ca.js';
import { ensureControlCertificate } from '../pki/control.js';
import { HostStore } from '../store/hosts.js';
import type { Pool } from '../store/pool.js';

/**
 * The control plane's side of many hosts (docs/HOSTS.md): the cell CA and the control
 * certificate, the hosts routes of the API, and the agent listener.
 */

/** The latest heartbeat of each host, until the router reads them (one entry per host of the cell). */
export class LatestHeartbeats implements HeartbeatSink {
  readonly #beats = new Map<string, { readonly beat: HeartbeatRequest; readonly receivedAtMs: number }>();

  record(hostId: string, beat: HeartbeatRequest, receivedAtMs: number): void {
    this.#beats.set(hostId, { beat, receivedAtMs });
  }

  latest(hostId: string): { readonly beat: HeartbeatRequest; readonly receivedAtMs: number } | undefined {
    return this.#beats.get(hostId);
  }
}

export interface AgentSide {
  readonly hostsApi: HostsApiOptions;
  readonly heartbeats: LatestHeartbeats;
  /** Starts the agent listener (after the API, so a busy API port fails first with nothing else running). */
  listen(): Promise<AgentListener>;
}

/** The address agents are told to reach the listener at: the listen host, or this machine's name when it listens on every address. */
function advertisedHost(listenHost: string): string {
  if (listenHost === '' || listenHost === '0.0.0.0' || listenHost === '::') return hostname();
  return listenHost.includes(':') ? `[${listenHost}]` : listenHost;
}

export async function prepareAgentSide(config: Config, log: Logger, pool: Pool): Promise<AgentSide> {
  const ca = await ensureCellCa(config.home);
  const caPem = await caCertificatePem(ca);
  const caSha256 = certificateSha256(caPem);
  const certificate = await ensureControlCertificate(ca, controlCommonName);
  const store = new HostStore(pool, hostMachine, { joined: joinedSignal, remove: removeSignal });
  const heartbeats = new LatestHeartbeats();
  const { hosts } = config;
  return {
    hostsApi: {
      store,
      joinTokenTtlMs: hosts.joinTokenTtlMs,
      agentPort: hosts.agentPort,
      caSha256,
      controlUrl: `https://${advertisedHost(hosts.controlListenHost)}:${hosts.controlListenPort}`,
    },
    heartbeats,
    listen: () =>
      startAgentListener({
        host: hosts.controlListenHost,
        port: hosts.controlListenPort,
        ca,
        caPem,
        caSha256,
        certificate,
        store,
        sink: heartbeats,
        leaseMs: hosts.leaseMs,
        heartbeatMs: hosts.heartbeatMs,
        log,
        embeddedStore: config.storeUrl === null,
      }),
  };
}
