import { connect, Socket } from 'node:net';
import pg from 'pg';
import { currentAbortSignal } from '../../lib/abort.js';
import type { InstanceId } from '../../lib/ids.js';
import { clientConfig, localSuperuser } from '../../postgres/sql.js';
import { socketPath } from '../../postgres/paths.js';

/**
 * The status probe's connections to this host's servers. Every running instance is probed each
 * second; a new connection each time made its server start a whole backend (~7 ms of its CPU on
 * the 2-core machine, measured, most of what an idle instance costs). So the probe keeps one
 * session per instance for its query (~0.1 ms), and proves that the postmaster still accepts
 * connections, which a kept session cannot (a hung or SIGSTOPped postmaster leaves it answering),
 * by `postmasterAnswers`: the postmaster accepts and forks, the child answers an SSLRequest and
 * exits quietly when the socket closes (~3 ms, no backend start, nothing in the server log).
 */

/** Sessions kept at once at most; past it a probe opens and closes its own connection, as before. */
const sessionsMax = 1_000;
/** PostgreSQL's SSLRequest code (protocol 1234.5679): answered `N` (or `S`) before any authentication. */
const sslRequestCode = 80877103;

interface Session {
  /** The postmaster and port it was opened to (`serves`). */
  readonly pid: number;
  readonly port: number;
  readonly client: pg.Client;
  readonly socket: Socket;
  readonly connected: Promise<unknown>;
  ended: boolean;
  /** Its connection closed or failed (the server ended the backend, or stopped), as opposed to being dropped here. */
  lost: boolean;
  /** Probes using it now: while one is, its socket holds the process open (a probe awaits it). */
  inUse: number;
}

/**
 * Whether the postmaster listening on `runDir`'s socket for `port` accepts a connection and its
 * child answers within `timeoutMs`: false for no socket, refused, closed, timed out or aborted.
 */
export function postmasterAnswers(runDir: string, port: number, timeoutMs: number): Promise<boolean> {
  const signal = currentAbortSignal();
  return new Promise((resolve) => {
    if (signal?.aborted === true) return resolve(false);
    const socket = connect(socketPath(runDir, port));
    const finish = (answered: boolean): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      resolve(answered);
    };
    const onAbort = (): void => finish(false);
    const timer = setTimeout(() => finish(false), timeoutMs);
    signal?.addEventListener('abort', onAbort, { once: true });
    socket.on('connect', () => {
      const request = Buffer.alloc(8);
      request.writeInt32BE(8, 0);
      request.writeInt32BE(sslRequestCode, 4);
      socket.write(request);
    });
    // The one byte of the answer: N (no TLS, always on a unix socket) or S. Anything else is not Postgres.
    socket.once('data', (data: Buffer) => finish(data[0] === 0x4e || data[0] === 0x53));
    socket.on('error', () => finish(false));
    socket.on('close', () => finish(false));
  });
}

/**
 * One kept superuser session per running instance of this host, over its unix socket. A session
 * is used only for the postmaster (pid) and port it was opened to, dropped on any error (the next
 * probe opens another), when its server stops, and when the instance is stopped or destroyed here.
 * Between probes its socket is unreferenced: a kept session never holds a process open.
 */
export class StatusSessions {
  private readonly sessions = new Map<InstanceId, Session>();

  /**
   * Runs `use` on the instance's kept session, opened now if there is none for this postmaster. A
   * kept session that fails (its backend ended since the last probe) is replaced and `use` run
   * once more on the new one: an ended session is no failed probe.
   */
  async query<T>(instanceId: InstanceId, runDir: string, port: number, pid: number, connectTimeoutMs: number, use: (client: pg.Client) => Promise<T>): Promise<T> {
    const reused = serves(this.sessions.get(instanceId), pid, port);
    const session = this.session(instanceId, runDir, port, pid, connectTimeoutMs);
    try {
      return await this.use(instanceId, session, use);
    } catch (error) {
      // Only a connection lost under a reused session is tried again; a query that failed or timed out is the probe's answer.
      if (!reused || !session.lost || currentAbortSignal()?.aborted === true) throw error;
      return this.use(instanceId, this.session(instanceId, runDir, port, pid, connectTimeoutMs), use);
    }
  }

  /** Ends the instance's session, if any: its server stopped or is about to. */
  close(instanceId: InstanceId): void {
    const session = this.sessions.get(instanceId);
    if (session !== undefined) this.drop(instanceId, session);
  }

  private async use<T>(instanceId: InstanceId, session: Session, use: (client: pg.Client) => Promise<T>): Promise<T> {
    const signal = currentAbortSignal();
    signal?.throwIfAborted();
    // The step ran out of time: end the session, and with it the query.
    const onAbort = (): void => this.drop(instanceId, session);
    signal?.addEventListener('abort', onAbort, { once: true });
    if (session.inUse++ === 0) session.socket.ref();
    try {
      await session.connected;
      return await use(session.client);
    } catch (error) {
      this.drop(instanceId, session);
      throw error;
    } finally {
      signal?.removeEventListener('abort', onAbort);
      if (--session.inUse === 0) session.socket.unref();
      // Not kept (past the bound, or replaced meanwhile): it served this probe only.
      if (this.sessions.get(instanceId) !== session && session.inUse === 0) this.drop(instanceId, session);
    }
  }

  private session(instanceId: InstanceId, runDir: string, port: number, pid: number, connectTimeoutMs: number): Session {
    const kept = this.sessions.get(instanceId);
    if (serves(kept, pid, port)) return kept;
    if (kept !== undefined) this.drop(instanceId, kept);
    if (this.sessions.size >= sessionsMax) this.pruneEnded();
    const session = open(runDir, port, pid, connectTimeoutMs);
    // Past the bound the session serves this one probe and is not kept.
    if (this.sessions.size < sessionsMax) this.sessions.set(instanceId, session);
    return session;
  }

  private drop(instanceId: InstanceId, session: Session): void {
    session.ended = true;
    if (this.sessions.get(instanceId) === session) this.sessions.delete(instanceId);
    void session.client.end().catch(() => {});
  }

  private pruneEnded(): void {
    for (const [instanceId, session] of this.sessions) if (session.ended) this.sessions.delete(instanceId);
  }
}

/** Whether `session` is open to the postmaster `pid` on `port`: another of either is another server. */
function serves(session: Session | undefined, pid: number, port: number): session is Session {
  return session !== undefined && !session.ended && session.pid === pid && session.port === port;
}

function open(runDir: string, port: number, pid: number, connectTimeoutMs: number): Session {
  // Referenced while connecting (the probe that opened it awaits it); unreferenced after each use.
  const socket = new Socket();
  const client = new pg.Client({
    ...clientConfig(localSuperuser(runDir, port, connectTimeoutMs)),
    // A tenant's idle_session_timeout would end the session between probes; it is the probe's own.
    options: '-c idle_session_timeout=0',
    stream: () => socket,
  });
  const connected = client.connect();
  // Awaited by the probe that opened it; a failure is that probe's error, never an unhandled one.
  connected.catch(() => {});
  const session: Session = { pid, port, client, socket, connected, ended: false, lost: false, inUse: 0 };
  // A server stopping under the idle session emits 'error' then 'end'; the next probe opens another.
  const lose = (): void => {
    // After a drop here the end is this side's own.
    if (!session.ended) session.lost = true;
    session.ended = true;
  };
  client.on('error', lose);
  client.on('end', lose);
  return session;
}
