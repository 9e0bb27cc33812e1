import { hostname } from 'node:os';
import type { Logger } from 'pino';
import { type AgentListener, startAgentListener } from '../api/agent-listener.js';
import type { HostsApiOptions } from '../api/hosts.js';
import type { Config } from '../config.js';
import { controlCommonName } from '../dataplane/agent-protocol.js';
import type { DataPlane, HostTarget } from '../dataplane/dataplane.js';
import { AgentClient } from '../dataplane/remote/agent-client.js';
import { HeartbeatBook } from '../dataplane/remote/heartbeat-view.js';
import type { HostReachability } from '../dataplane/remote/router.js';
import { systemClock } from '../lib/clock.js';
import { drainSignal, hostMachine, joinedSignal, removeSignal, undrainSignal } from '../machines/host.js';
import { HostDrains } from '../store/drain.js';
import { diskReserveOf } from '../store/config.js';
import { caCertificatePem, certificateSha256, ensureCellCa } from '../pki/ca.js';
import { ensureControlCertificate } from '../pki/control.js';
import { HostStore } from '../store/hosts.js';
import { StoreLeaseAges } from '../store/local-host.js';
import type { Pool } from '../store/pool.js';

/**
 * The control plane's side of many hosts (docs/HOSTS.md): the cell CA and the control
 * certificate, the hosts routes of the API, and the agent listener.
 */

export interface AgentSide {
  readonly hostsApi: HostsApiOptions;
  /** Every host's latest heartbeat: liveness of other hosts' instances and how long each has been silent. */
  readonly heartbeats: HeartbeatBook;
  /** The router's view of which hosts are heard from; past the lease a host is unreachable. */
  readonly reachability: HostReachability;
  /** The client of one other host, kept (with its connections) while its address and port stay. */
  clientFor(host: HostTarget): DataPlane;
  /** Starts the agent listener (after the API, so a busy API port fails first with nothing else running). */
  listen(): Promise<AgentListener>;
  /** Closes the clients' kept connections and stops reading lease ages. */
  close(): Promise<void>;
}

/** Clients kept at once; a cell with more hosts than this rebuilds the least recent one's client when needed. */
const agentClientsMax = 1_000;

/** The address agents are told to reach the listener at: the listen host, or this machine's name when it listens on every address. */
function advertisedHost(listenHost: string): string {
  if (listenHost === '' || listenHost === '0.0.0.0' || listenHost === '::') return hostname();
  return listenHost.includes(':') ? `[${listenHost}]` : listenHost;
}

/**
 * `receivesHeartbeats`: this process serves the agent listener. One that does not (engine only)
 * reads the hosts' renewals from the store instead, at the heartbeat interval.
 */
export async function prepareAgentSide(config: Config, log: Logger, pool: Pool, receivesHeartbeats: boolean): Promise<AgentSide> {
  const ca = await ensureCellCa(config.home);
  const caPem = await caCertificatePem(ca);
  const caSha256 = certificateSha256(caPem);
  const certificate = await ensureControlCertificate(ca, controlCommonName);
  const store = new HostStore(pool, hostMachine, { joined: joinedSignal, remove: removeSignal });
  const { hosts } = config;
  // The listener records beats with Date.now(), the system clock's reading; the book judges silence on it.
  const heartbeats = new HeartbeatBook(systemClock);
  const tls = { key: certificate.key, certificate: certificate.cert, ca: caPem };
  const clients = new Map<string, { readonly where: string; readonly client: AgentClient }>();
  const leaseAges = receivesHeartbeats ? null : new StoreLeaseAges(pool, hosts.heartbeatMs);
  leaseAges?.start();
  return {
    reachability: {
      silentMs: (hostId) => Math.min(heartbeats.silentMs(hostId), leaseAges?.silentMs(hostId) ?? Number.POSITIVE_INFINITY),
      lastAlive: (hostId, instanceId) => heartbeats.lastAliveOn(hostId, instanceId),
      lastStatus: (hostId, instanceId) => heartbeats.lastStatusOn(hostId, instanceId),
      unreachableAfterMs: hosts.leaseMs,
    },
    clientFor(host) {
      const where = `${host.address}:${host.agentPort}`;
      const kept = clients.get(host.hostId);
      if (kept !== undefined && kept.where === where) return kept.client;
      kept?.client.close();
      if (clients.size >= agentClientsMax) {
        const [oldest] = clients.keys();
        if (oldest !== undefined) {
          clients.get(oldest)?.client.close();
          clients.delete(oldest);
        }
      }
      const client = new AgentClient({ host: { address: host.address, agentPort: host.agentPort }, tls });
      clients.set(host.hostId, { where, client });
      return client;
    },
    async close() {
      await leaseAges?.stop();
      for (const { client } of clients.values()) client.close();
      clients.clear();
    },
    hostsApi: {
      store,
      drains: new HostDrains(pool, hostMachine, { drain: drainSignal, undrain: undrainSignal }, diskReserveOf(config.storage)),
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
        clockMarginMs: hosts.clockMarginMs,
        log,
        embeddedStore: config.storeUrl === null,
      }),
  };
}
