import { type Socket, connect } from 'node:net';
import type { Logger } from 'pino';
import type { Admission, Admitted } from './admission.js';
import { routeWaitPollMs } from './admission.js';
import { errorText, guarded, sleep } from './connection.js';
import { sqlStates } from './protocol.js';
import type { EndpointKind, ProxyRoutes, Target } from './routes.js';

/**
 * Backend connect: a TCP connection to the routed instance, the rewritten startup packet first.
 * A refused connect before the deadline (a primary that just died, before the failover has
 * re-routed) is retried against the freshest route instead of failing the client: during a
 * failover new connections wait, as they do during a switchover. Changes when connecting does.
 */

export const backendConnectTimeoutMs = 5_000;

export interface BackendConnectOptions {
  readonly log: Logger;
  readonly routes: ProxyRoutes;
  readonly admission: Admission;
  readonly waitMsMax: number;
  /** A socket the proxy made, to be destroyed when the proxy stops. */
  readonly track: (socket: Socket) => void;
}

/** Nothing listens there (yet): worth waiting for a new route rather than failing the client. */
function isRefused(error: Error): boolean {
  return (error as NodeJS.ErrnoException).code === 'ECONNREFUSED';
}

export class BackendConnector {
  constructor(private readonly options: BackendConnectOptions) {}

  /** Connects, sends the startup packet and what the client sent after it, then hands over to `onConnected`. */
  connect(client: Socket, kind: EndpointKind, admitted: Admitted, onConnected: (backend: Socket, target: Target) => void): void {
    this.attempt(client, kind, admitted, admitted.target, onConnected);
  }

  private attempt(client: Socket, kind: EndpointKind, admitted: Admitted, target: Target, onConnected: (backend: Socket, target: Target) => void): void {
    const { log, track, admission } = this.options;
    const backend = connect({ host: target.host, port: target.port, noDelay: true });
    track(backend);
    const connectTimer = setTimeout(() => backend.destroy(new Error('connect timeout')), backendConnectTimeoutMs);
    let started = false;
    const dropBackend = () => backend.destroy();
    backend.once(
      'connect',
      guarded(log, 'connecting to the server', [client, backend], () => {
        clearTimeout(connectTimer);
        started = true;
        backend.once('close', () => client.destroy());
        backend.write(admitted.startupPacket);
        if (admitted.early.length > 0) backend.write(admitted.early);
        onConnected(backend, target);
      }),
    );
    backend.on(
      'error',
      guarded(log, 'a server connection error', [client, backend], (error: Error) => {
        clearTimeout(connectTimer);
        if (started) return void client.destroy();
        client.off('close', dropBackend);
        if (isRefused(error) && performance.now() < admitted.deadlineMs && !client.destroyed) {
          this.retry(client, kind, admitted, target.clusterKey, onConnected).catch((failure: unknown) => {
            log.warn({ err: errorText(failure) }, 'proxy: reconnecting to the server failed; the connection ends');
            client.destroy();
          });
          return;
        }
        admission.refuse(client, target.clusterKey, 'unreachable', sqlStates.connectionFailure, `cannot reach the server of cluster "${target.clusterKey}": ${error.message}`);
      }),
    );
    client.once('close', dropBackend);
  }

  /** Waits for a route with a target (bounded by the admission deadline), then connects to it. */
  private async retry(client: Socket, kind: EndpointKind, admitted: Admitted, cluster: string, onConnected: (backend: Socket, target: Target) => void): Promise<void> {
    const { routes, admission, waitMsMax } = this.options;
    await sleep(routeWaitPollMs);
    let resolution = routes.resolve(cluster, kind);
    while (!('target' in resolution) && performance.now() < admitted.deadlineMs && !client.destroyed) {
      await sleep(routeWaitPollMs);
      resolution = routes.resolve(cluster, kind);
    }
    if (client.destroyed) return;
    if (!('target' in resolution)) {
      admission.refuse(client, cluster, 'unavailable', sqlStates.cannotConnectNow, `cluster "${cluster}" has no instance accepting connections; gave up after ${waitMsMax} ms`);
      return;
    }
    this.attempt(client, kind, admitted, resolution.target, onConnected);
  }
}
