import { createRequire } from 'node:module';
import { closeSync } from 'node:fs';
import { Socket as NetSocket, type Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { assert } from '../lib/assert.js';

/**
 * The native relay (native/relay.c, built by `npm ci`): one thread outside Node's event loop,
 * where each read costs a libuv callback, a Buffer and a JavaScript call (BENCHMARKS.md,
 * bench/proxy). It does two things for the proxy:
 * - relays a connection past its startup phase (`adopt`): both sockets must be idle in Node
 *   (nothing buffered to read, nothing queued to write); Node stops reading them (`readStop` on
 *   the handle, leaving its `reading` flag set so Node never starts again) and the thread gets
 *   duplicates of their descriptors.
 * - terminates TLS, after an SSLRequest or direct (`acceptTls`): the thread runs the handshake
 *   with the proxy's one certificate (`configureTls`) and gives back a plaintext socket
 *   (one end of a socketpair) for the startup phase; when that socket is later adopted with its
 *   backend, the thread's TLS pair takes the backend in its place.
 * The Node sockets stay open, untouched, as the connection's handles for the proxy's bookkeeping;
 * when the thread ends a pair it says so and they are destroyed, and when the proxy closes one
 * of them itself (a startup deadline) the thread's pair is aborted.
 */

interface RelayBinding {
  start(onEvent: (kind: number, id: number, bytesIn: number, bytesOut: number, fd: number, name: string) => void): void;
  configureTls(certificatePem: string, keyPem: string): void;
  adopt(clientFd: number, backendFd: number): number;
  acceptTls(clientFd: number, early: Buffer): number;
  adoptTls(id: number, plainFd: number, backendFd: number): void;
  abort(id: number): void;
  /** [id, bytesIn, bytesOut, ...] for the pairs that moved bytes since the last call. */
  takeBytes(): number[];
  stop(): void;
}

/** The binding's event kinds (native/relay.c). */
const eventClosed = 0;
const eventTlsReady = 1;

/** Node's stream handle (TCP, or a pipe for a socketpair end), as much of it as the handover needs (not a public API; checked at run time). */
interface StreamHandle {
  readonly fd: number;
  readonly reading: boolean;
  readStop(): number;
}

/** A TLS connection whose handshake the relay thread ran: `socket` carries its plaintext. */
export interface TerminatedTls {
  readonly socket: Socket;
  /** The SNI name the client sent, if any. */
  readonly serverName: string | null;
}

interface TlsHandshake {
  readonly client: Socket;
  readonly done: (terminated: TerminatedTls | null) => void;
}

export interface RelayedPair {
  readonly client: Socket;
  readonly backend: Socket;
  /** Bytes relayed, in = client to server; called while the pair lives and once more at its end. */
  readonly count: (bytesIn: number, bytesOut: number) => void;
}

const bindingPath = '../../../build/Release/relay.node';

export class NativeRelay {
  private readonly pairs = new Map<number, RelayedPair>();
  private readonly handshakes = new Map<number, TlsHandshake>();
  /** TLS pairs past their handshake: the client socket, destroyed when the pair ends. */
  private readonly tlsClients = new Map<number, Socket>();
  /** The plaintext socket JavaScript got for a TLS pair → the pair's id. */
  private readonly plainSockets = new WeakMap<Socket, number>();
  private running = false;
  private tls = false;

  private constructor(
    private readonly binding: RelayBinding,
    private readonly log: Logger,
  ) {}

  /**
   * The built relay, or null (logged) when it is missing: the proxy then relays in JavaScript.
   * `path` is another build of the addon (bench/asan-relay.sh loads one built with AddressSanitizer).
   */
  static load(log: Logger, path = bindingPath): NativeRelay | null {
    try {
      const binding = createRequire(import.meta.url)(path) as RelayBinding;
      return new NativeRelay(binding, log);
    } catch (error) {
      log.warn({ err: error instanceof Error ? error.message : String(error) }, 'native relay not built (npm ci builds it): relaying in JavaScript');
      return null;
    }
  }

  /** One per process: the binding's thread is process-wide. */
  start(): void {
    assert(!this.running, 'the native relay is already running');
    this.binding.start((kind, id, bytesIn, bytesOut, fd, name) => {
      // A throw here would reach the process as an uncaught exception: it ends this pair instead.
      try {
        if (kind === eventClosed) this.onClosed(id, bytesIn, bytesOut);
        else if (kind === eventTlsReady) this.onTlsReady(id, fd, name);
        else assert(false, `unknown relay event ${kind}`);
      } catch (error) {
        this.log.warn({ err: error instanceof Error ? error.message : String(error), pair: id }, 'native relay: handling an event failed; the pair ends');
        this.binding.abort(id);
      }
    });
    this.running = true;
  }

  /**
   * TLS termination in the relay thread with this certificate, for every server name; called
   * again with a renewed one, it serves handshakes that start afterwards.
   */
  configureTls(certificatePem: string, keyPem: string): void {
    this.binding.configureTls(certificatePem, keyPem);
    this.tls = true;
  }

  /** Ends every pair (their sockets are destroyed) and the thread. */
  stop(): void {
    if (!this.running) return;
    this.binding.stop();
    this.running = false;
  }

  /**
   * Hands both sockets to the relay thread if they are idle in Node (not Node's TLS); false leaves
   * them untouched, for the JavaScript relay.
   */
  adopt(pair: RelayedPair): boolean {
    if (!this.running) return false;
    const client = idleHandle(pair.client);
    const backend = idleHandle(pair.backend);
    if (client === null || backend === null) return false;
    // The plaintext side of a TLS pair: the thread's TLS pair takes the backend in its place.
    const tlsId = this.plainSockets.get(pair.client);
    if (tlsId !== undefined && !this.tlsClients.has(tlsId)) return false;
    stopReading(pair.client, client);
    stopReading(pair.backend, backend);
    if (tlsId !== undefined) {
      this.binding.adoptTls(tlsId, client.fd, backend.fd);
      this.pairs.set(tlsId, pair);
      this.abortOnClose(tlsId, pair.backend);
      return true;
    }
    const id = this.binding.adopt(client.fd, backend.fd);
    assert(!this.pairs.has(id), `relay pair ${id} is already live`);
    this.pairs.set(id, pair);
    this.abortOnClose(id, pair.client);
    this.abortOnClose(id, pair.backend);
    return true;
  }

  /** A socket the proxy closes itself (a startup deadline, shutdown) takes the thread's pair with it. */
  private abortOnClose(id: number, socket: Socket): void {
    socket.once('close', () => {
      if (!(this.pairs.has(id) || this.handshakes.has(id) || this.tlsClients.has(id))) return;
      try {
        this.binding.abort(id);
      } catch (error) {
        // Out of memory in the binding: the pair ends when its sockets do; a throw here would end the process.
        this.log.warn({ err: error instanceof Error ? error.message : String(error), pair: id }, 'native relay: could not abort a pair');
      }
    });
  }

  /**
   * Hands a client that was just answered `S` to the relay thread for its TLS handshake, or a
   * direct-TLS client with the bytes of its ClientHello already read (`early`; it must then
   * negotiate ALPN `postgresql`); null if the relay cannot take it (then the caller terminates
   * TLS itself). The promise gives the plaintext socket, or null when the handshake failed (the
   * client is then destroyed).
   */
  acceptTls(client: Socket, early: Buffer): Promise<TerminatedTls | null> | null {
    if (!this.running || !this.tls) return null;
    const handle = idleHandle(client);
    if (handle === null) return null;
    stopReading(client, handle);
    const id = this.binding.acceptTls(handle.fd, early);
    this.abortOnClose(id, client);
    return new Promise((resolve) => this.handshakes.set(id, { client, done: resolve }));
  }

  /** Hands the bytes relayed since the last call to each pair's counter (before a metrics scrape). */
  flushBytes(): void {
    const counts = this.binding.takeBytes();
    for (let i = 0; i + 2 < counts.length; i += 3) {
      this.pairs.get(counts[i] as number)?.count(counts[i + 1] as number, counts[i + 2] as number);
    }
  }

  private onTlsReady(id: number, fd: number, serverName: string): void {
    const handshake = this.handshakes.get(id);
    if (handshake === undefined) return void closeSync(fd);
    this.handshakes.delete(id);
    let socket: NetSocket;
    try {
      socket = new NetSocket({ fd, readable: true, writable: true });
    } catch (error) {
      closeSync(fd);
      handshake.client.destroy();
      handshake.done(null);
      throw error;
    }
    this.tlsClients.set(id, handshake.client);
    this.plainSockets.set(socket, id);
    handshake.done({ socket, serverName: serverName === '' ? null : serverName });
  }

  private onClosed(id: number, bytesIn: number, bytesOut: number): void {
    const handshake = this.handshakes.get(id);
    if (handshake !== undefined) {
      this.handshakes.delete(id);
      handshake.client.destroy();
      return handshake.done(null);
    }
    // A TLS pair past its switch is in both maps: its plaintext socket and backend, and its client.
    const pair = this.pairs.get(id);
    if (pair !== undefined) {
      this.pairs.delete(id);
      pair.count(bytesIn, bytesOut);
      pair.client.destroy();
      pair.backend.destroy();
    }
    const tlsClient = this.tlsClients.get(id);
    if (tlsClient !== undefined) {
      this.tlsClients.delete(id);
      tlsClient.destroy();
    }
  }
}

/** Node stops reading the socket for good: its handle's `reading` flag stays set, so Node never starts again. */
function stopReading(socket: Socket, handle: StreamHandle): void {
  socket.pause();
  const error = handle.readStop();
  assert(error === 0, `readStop failed (${error})`);
}

/** The socket's handle when the socket is not Node's TLS, open, reading, and has nothing buffered either way. */
function idleHandle(socket: Socket): StreamHandle | null {
  if (socket instanceof TLSSocket || socket.destroyed || socket.readableLength > 0 || socket.writableLength > 0) return null;
  const handle = (socket as unknown as { _handle?: Partial<StreamHandle> | null })._handle;
  if (handle === null || handle === undefined) return null;
  if (typeof handle.fd !== 'number' || handle.fd < 0 || handle.reading !== true || typeof handle.readStop !== 'function') return null;
  return handle as StreamHandle;
}
