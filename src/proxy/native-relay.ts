import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { assert } from '../lib/assert.js';

/**
 * The native relay (native/relay.c, built by `npm ci`): once a plain connection is past its
 * startup phase, its client and backend sockets are handed to one thread that moves bytes with
 * epoll, read and write, outside Node's event loop, where each read costs a libuv callback, a
 * Buffer and a JavaScript call (BENCHMARKS.md, bench/proxy). TLS connections and clusters with a
 * bandwidth limit stay on the JavaScript relay.
 *
 * The handover: both sockets must be idle in Node (nothing buffered to read, nothing queued to
 * write); Node stops reading them (`readStop` on the handle, leaving its `reading` flag set so
 * Node never starts again) and the thread gets duplicates of their descriptors. The Node sockets
 * stay open, untouched, as the connection's handle for the proxy's bookkeeping; when the thread
 * ends the pair (both ends closed, or a socket error) it says so and they are destroyed.
 */

interface RelayBinding {
  start(onClosed: (id: number, bytesIn: number, bytesOut: number) => void): void;
  adopt(clientFd: number, backendFd: number): number;
  /** [id, bytesIn, bytesOut, ...] for the pairs that moved bytes since the last call. */
  takeBytes(): number[];
  stop(): void;
}

/** Node's TCP handle, as much of it as the handover needs (not a public API; checked at run time). */
interface TcpHandle {
  readonly fd: number;
  readonly reading: boolean;
  readStop(): number;
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
  private running = false;

  private constructor(private readonly binding: RelayBinding) {}

  /** The built relay, or null (logged) when it is missing: the proxy then relays in JavaScript. */
  static load(log: Logger): NativeRelay | null {
    try {
      const binding = createRequire(import.meta.url)(bindingPath) as RelayBinding;
      return new NativeRelay(binding);
    } catch (error) {
      log.warn({ err: error instanceof Error ? error.message : String(error) }, 'native relay not built (npm ci builds it): relaying in JavaScript');
      return null;
    }
  }

  /** One per process: the binding's thread is process-wide. */
  start(): void {
    assert(!this.running, 'the native relay is already running');
    this.binding.start((id, bytesIn, bytesOut) => this.onClosed(id, bytesIn, bytesOut));
    this.running = true;
  }

  /** Ends every pair (their sockets are destroyed) and the thread. */
  stop(): void {
    if (!this.running) return;
    this.binding.stop();
    this.running = false;
  }

  get size(): number {
    return this.pairs.size;
  }

  /**
   * Hands both sockets to the relay thread if they are plain TCP sockets and idle in Node; false
   * leaves them untouched, for the JavaScript relay.
   */
  adopt(pair: RelayedPair): boolean {
    if (!this.running) return false;
    const client = idleHandle(pair.client);
    const backend = idleHandle(pair.backend);
    if (client === null || backend === null) return false;
    for (const [socket, handle] of [[pair.client, client], [pair.backend, backend]] as const) {
      socket.pause();
      const error = handle.readStop();
      assert(error === 0, `readStop failed (${error})`);
    }
    const id = this.binding.adopt(client.fd, backend.fd);
    assert(!this.pairs.has(id), `relay pair ${id} is already live`);
    this.pairs.set(id, pair);
    return true;
  }

  /** Hands the bytes relayed since the last call to each pair's counter (before a metrics scrape). */
  flushBytes(): void {
    const counts = this.binding.takeBytes();
    for (let i = 0; i + 2 < counts.length; i += 3) {
      this.pairs.get(counts[i] as number)?.count(counts[i + 1] as number, counts[i + 2] as number);
    }
  }

  private onClosed(id: number, bytesIn: number, bytesOut: number): void {
    const pair = this.pairs.get(id);
    if (pair === undefined) return;
    this.pairs.delete(id);
    pair.count(bytesIn, bytesOut);
    pair.client.destroy();
    pair.backend.destroy();
  }
}

/** The socket's TCP handle when the socket is plain TCP, open, reading, and has nothing buffered either way. */
function idleHandle(socket: Socket): TcpHandle | null {
  if (socket instanceof TLSSocket || socket.destroyed || socket.readableLength > 0 || socket.writableLength > 0) return null;
  const handle = (socket as unknown as { _handle?: Partial<TcpHandle> | null })._handle;
  if (handle === null || handle === undefined) return null;
  if (typeof handle.fd !== 'number' || handle.fd < 0 || handle.reading !== true || typeof handle.readStop !== 'function') return null;
  return handle as TcpHandle;
}
