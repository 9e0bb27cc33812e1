import type { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { type SecureContext, TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { assert } from '../lib/assert.js';
import { type ClientStartup, guarded, refuse } from './connection.js';
import type { NativeRelay } from './native-relay.js';
import { parseStartupRequest, splitStartupPacket, sqlStates, startupPacketBytesMax } from './protocol.js';

/**
 * The startup phase up to the startup packet: SSLRequest (TLS termination, in the native relay's
 * thread when it can), GSSENCRequest (`N`), direct TLS (Postgres 17: the first byte is a TLS
 * handshake), CancelRequest. Changes when the protocol's negotiation does.
 */

export interface ProxyTls {
  /** Clusters are `<routeKey>.<domain>` for SNI routing. */
  readonly domain: string;
  /**
   * The one certificate (`*.<domain>`), whatever server name the client sends: a name never makes
   * key material. A function because renewal replaces it.
   */
  secureContext(): SecureContext;
}

/** A startup packet, with what negotiation learnt on the way. */
export interface StartupPacket {
  /** The packet after its length and protocol version: the parameters. */
  readonly body: Buffer;
  /** Bytes the client sent after the startup packet (its first messages): forwarded after it. */
  readonly early: Buffer;
  /** The cluster the TLS server name names, or null (no TLS, no SNI, or another name). */
  readonly sniCluster: string | null;
}

export interface NegotiationOptions {
  readonly log: Logger;
  /** Null: answer SSLRequest with N (plain only). */
  readonly tls: ProxyTls | null;
  readonly relay: NativeRelay | null;
  /** A socket the proxy made (a TLS or plaintext side), to be destroyed when the proxy stops. */
  readonly track: (socket: Socket) => void;
  /** The client (or its plaintext side after TLS) sent its startup packet. */
  readonly onStartup: (client: Socket, connection: ClientStartup, startup: StartupPacket) => Promise<void>;
  readonly onCancel: (client: Socket, processId: number, secretKey: number) => void;
}

/** The first byte of a TLS handshake record: a Postgres 17 client doing direct TLS. */
const tlsHandshakeByte = 0x16;
const alpnPostgres = 'postgresql';
/** SSLRequest and GSSENCRequest may each come once before the startup packet. */
const negotiationsMax = 2;

export class Negotiation {
  constructor(private readonly options: NegotiationOptions) {}

  /**
   * Reads packets until the startup packet, answering SSL/GSS requests and cancels on the way.
   * After a TLS upgrade it starts again on the encrypted socket (once: `secured` is then set).
   */
  async negotiate(client: Socket, connection: ClientStartup, secured: { sniCluster: string | null } | null = null): Promise<void> {
    const { tls } = this.options;
    const reader = new PacketReader(client, this.options.log);
    if (secured === null && tls !== null && (await reader.firstByte()) === tlsHandshakeByte) {
      return this.secure(client, connection, tls, reader.takeBuffered(), true);
    }
    for (let round = 0; round <= negotiationsMax; round += 1) {
      const packet = await reader.packet();
      if (typeof packet === 'string') return refuse(client, sqlStates.protocolViolation, packet);
      const request = parseStartupRequest(packet);
      if (typeof request === 'string') return refuse(client, sqlStates.protocolViolation, request);
      if (request.kind === 'ssl' || request.kind === 'gssenc') {
        // Bytes already sent after the request could be injected into the encrypted session.
        if (reader.buffered() > 0) return void client.destroy();
        if (request.kind === 'ssl' && secured === null && tls !== null) {
          client.write('S');
          return this.secure(client, connection, tls, reader.takeBuffered(), false);
        }
        client.write('N');
        continue;
      }
      if (request.kind === 'cancel') return this.options.onCancel(client, request.processId, request.secretKey);
      return await this.options.onStartup(client, connection, { body: request.body, early: reader.takeBuffered(), sniCluster: secured?.sniCluster ?? null });
    }
    refuse(client, sqlStates.protocolViolation, 'too many negotiation requests before the startup packet');
  }

  /** TLS termination with the cell's certificates; `direct` is Postgres 17's TLS-first connection, which must ask for ALPN `postgresql`. */
  private async secure(client: Socket, connection: ClientStartup, tls: ProxyTls, early: Buffer, direct: boolean): Promise<void> {
    const { relay, track, log } = this.options;
    // The relay thread terminates TLS when it can (for direct TLS it also requires ALPN postgresql).
    assert(direct === early.length > 0, 'direct TLS has read the start of its ClientHello; an SSLRequest leaves nothing unread');
    const terminating = relay?.acceptTls(client, early) ?? null;
    if (terminating !== null) {
      const terminated = await terminating;
      if (terminated === null) return;
      const plain = terminated.socket;
      track(plain);
      plain.on('error', () => plain.destroy());
      plain.once('close', () => client.destroy());
      return this.negotiate(plain, connection, { sniCluster: sniCluster(terminated.serverName ?? '', tls.domain) });
    }
    // A net.Socket is handed to TLS natively, which would not see bytes already read; direct TLS
    // has read the first bytes of the ClientHello, so it goes through a stream that replays them.
    const transport = early.length > 0 ? replaying(client, early, log) : client;
    const secure = new TLSSocket(transport as Socket, {
      isServer: true,
      secureContext: tls.secureContext(),
      ALPNProtocols: [alpnPostgres],
    });
    track(secure);
    secure.on('error', () => client.destroy());
    client.resume();
    await new Promise<void>((resolve, reject) => {
      secure.once('secure', resolve);
      secure.once('close', () => reject(new Error('closed during the TLS handshake')));
    });
    if (direct && secure.alpnProtocol !== alpnPostgres) return void secure.destroy();
    return this.negotiate(secure, connection, { sniCluster: sniCluster(typeof secure.servername === 'string' ? secure.servername : '', tls.domain) });
  }
}

/** A duplex over `socket` that first yields `early`: lets TLS read bytes the proxy already took. */
function replaying(socket: Socket, early: Buffer, log: Logger): Duplex {
  const duplex = new Duplex({
    read: () => void socket.resume(),
    write: (chunk: Buffer, _encoding, callback) => void socket.write(chunk, callback),
    final: (callback) => {
      socket.end();
      callback();
    },
    destroy: (error, callback) => {
      socket.destroy(error ?? undefined);
      callback(error);
    },
  });
  duplex.push(early);
  socket.on(
    'data',
    guarded(log, 'replaying a direct-TLS ClientHello', [socket], (chunk: Buffer) => {
      if (!duplex.push(chunk)) socket.pause();
    }),
  );
  socket.once('end', () => duplex.push(null));
  socket.once('close', () => duplex.destroy());
  return duplex;
}

function isWithin(name: string, domain: string): boolean {
  return name === domain || name.endsWith(`.${domain}`);
}

/** The cluster an SNI name `CLUSTER.<domain>` names, or null. */
export function sniCluster(serverName: string, domain: string): string | null {
  if (!isWithin(serverName, domain) || serverName === domain) return null;
  const cluster = serverName.slice(0, -(domain.length + 1));
  return cluster.includes('.') ? null : cluster;
}

/** Reads length-prefixed startup-phase packets (no type byte) from a socket, bounded in size. */
class PacketReader {
  private buffer: Buffer = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  private closed = false;
  private readonly onData: (chunk: Buffer) => void;

  constructor(
    private readonly socket: Socket,
    log: Logger,
  ) {
    this.onData = guarded(log, 'reading the startup phase', [socket], (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      if (this.buffer.length > startupPacketBytesMax) this.socket.pause();
      this.waiter?.();
    });
    socket.on('data', this.onData);
    socket.once('close', () => {
      this.closed = true;
      this.waiter?.();
    });
  }

  /** The first byte the client sent, or null if it closed first. */
  async firstByte(): Promise<number | null> {
    while (this.buffer.length === 0 && !this.closed) await this.more();
    return this.buffer[0] ?? null;
  }

  /** The next whole packet, or an error text (a length out of bounds, or the client gone). */
  async packet(): Promise<Buffer | string> {
    for (;;) {
      const split = splitStartupPacket(this.buffer);
      if (typeof split === 'string') return split;
      if (split !== null) {
        this.buffer = split.rest;
        return split.packet;
      }
      if (this.closed) return 'connection closed during startup';
      await this.more();
    }
  }

  private async more(): Promise<void> {
    await new Promise<void>((resolve) => (this.waiter = resolve));
    this.waiter = null;
  }

  buffered(): number {
    return this.buffer.length;
  }

  /** Stops reading for the handshake and hands over what arrived early. */
  takeBuffered(): Buffer {
    this.socket.off('data', this.onData);
    // Paused until the backend is connected and piping resumes it, so no byte is dropped.
    this.socket.pause();
    const rest = this.buffer;
    this.buffer = Buffer.alloc(0);
    return rest;
  }
}
