import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { type SqlState, errorResponse } from './protocol.js';
import type { EndpointKind } from './routes.js';

/** What every part of the proxy's data path shares about one client connection. */

/** What the proxy carries for one client through its startup phase. */
export interface ClientStartup {
  readonly kind: EndpointKind;
  /** Ends the client if startup takes too long; cleared at the first ReadyForQuery. */
  readonly timer: NodeJS.Timeout;
}

/** Ends the client with a FATAL ErrorResponse, never a silent close. */
export function refuse(client: Socket, sqlState: SqlState, message: string): void {
  client.end(errorResponse(sqlState, message));
}

export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * `handler`, made safe to run from a socket event: a throw (a bug, or a dependency that failed)
 * ends this one connection (`sockets`) with a log line; left to escape, it would be an uncaught
 * exception and take every other connection of the proxy with it.
 */
export function guarded<Arguments extends unknown[]>(log: Logger, what: string, sockets: readonly Socket[], handler: (...args: Arguments) => void): (...args: Arguments) => void {
  return (...args) => {
    try {
      handler(...args);
    } catch (error) {
      log.warn({ err: errorText(error) }, `proxy: ${what} failed; the connection ends`);
      for (const socket of sockets) socket.destroy();
    }
  };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
