import { assert } from '../lib/assert.js';

/**
 * The few pieces of the Postgres wire protocol the proxy needs: the startup-phase requests, the
 * startup packet, ErrorResponse, BackendKeyData. After startup the proxy only pipes bytes.
 */

export const sslRequestCode = 80877103;
export const gssEncRequestCode = 80877104;
export const cancelRequestCode = 80877102;
export const protocolVersion3 = 196608;

/** Postgres itself refuses startup packets over 10000 bytes (MAX_STARTUP_PACKET_LENGTH). */
export const startupPacketBytesMax = 10_000;
/** Length and request code: the shortest startup-phase packet, and all of an SSLRequest or GSSENCRequest. */
export const startupPacketBytesMin = 8;
/** Length, code, process id, secret key. */
export const cancelRequestBytes = 16;
/** Type byte, length (always 12), process id, secret key. */
export const backendKeyDataBytes = 13;
/** A startup packet carries at most this many name/value pairs (Postgres has no limit; 10000 bytes bound it anyway). */
export const startupParametersMax = 256;
/** A server message during the startup phase (auth, parameters, key data) is small. */
export const startupMessageBytesMax = 64 * 1024;

export const sqlStates = {
  protocolViolation: '08P01',
  /** What Postgres says for an unknown database: the closest thing to an unknown cluster. */
  invalidCatalogName: '3D000',
  cannotConnectNow: '57P03',
  tooManyConnections: '53300',
  connectionFailure: '08006',
  invalidAuthorizationSpecification: '28000',
  /** A write in a read-only transaction: what a full cluster's primary answers (storage-full.ts). */
  readOnlyTransaction: '25006',
  /** A cluster locked for writing past its whole allocation (storage-full.ts). */
  diskFull: '53100',
} as const;

export type SqlState = (typeof sqlStates)[keyof typeof sqlStates];

/** Parses a protocol 3.0 startup packet body (after length and version). Returns an error text if malformed. */
export function parseStartupParameters(body: Buffer): Map<string, string> | string {
  const parameters = new Map<string, string>();
  let offset = 0;
  for (let fields = 0; fields < startupParametersMax; fields += 1) {
    const nameEnd = body.indexOf(0, offset);
    if (nameEnd < 0) return 'startup packet is not terminated';
    if (nameEnd === offset) return offset === body.length - 1 ? parameters : 'startup packet has bytes after its terminator';
    const valueEnd = body.indexOf(0, nameEnd + 1);
    if (valueEnd < 0) return 'startup packet parameter has no value';
    parameters.set(body.toString('utf8', offset, nameEnd), body.toString('utf8', nameEnd + 1, valueEnd));
    offset = valueEnd + 1;
  }
  return 'startup packet has too many parameters';
}

/**
 * The first length-prefixed startup-phase packet (no type byte) in `buffer`: the packet and what
 * follows it, null if more bytes are needed, or an error text when the length is out of bounds
 * (checked as soon as the length is there, so a lying length never makes the proxy wait or buffer).
 */
export function splitStartupPacket(buffer: Buffer): { readonly packet: Buffer; readonly rest: Buffer } | null | string {
  if (buffer.length < 4) return null;
  const length = buffer.readInt32BE(0);
  if (length < startupPacketBytesMin || length > startupPacketBytesMax) return `invalid startup packet length ${length}`;
  if (buffer.length < length) return null;
  return { packet: buffer.subarray(0, length), rest: buffer.subarray(length) };
}

/** What a client asks for with one startup-phase packet. */
export type StartupRequest =
  | { readonly kind: 'ssl' }
  | { readonly kind: 'gssenc' }
  | { readonly kind: 'cancel'; readonly processId: number; readonly secretKey: number }
  | { readonly kind: 'startup'; readonly body: Buffer };

/** Reads one whole startup-phase packet (as `splitStartupPacket` cut it); an error text if its length does not fit its code. */
export function parseStartupRequest(packet: Buffer): StartupRequest | string {
  if (packet.length < startupPacketBytesMin || packet.readInt32BE(0) !== packet.length) return `invalid startup packet length ${packet.length < 4 ? packet.length : packet.readInt32BE(0)}`;
  const code = packet.readInt32BE(4);
  if (code === sslRequestCode || code === gssEncRequestCode) {
    if (packet.length !== startupPacketBytesMin) return `invalid ${code === sslRequestCode ? 'SSLRequest' : 'GSSENCRequest'} length ${packet.length}: it is ${startupPacketBytesMin} bytes`;
    return { kind: code === sslRequestCode ? 'ssl' : 'gssenc' };
  }
  if (code === cancelRequestCode) {
    if (packet.length !== cancelRequestBytes) return `invalid CancelRequest length ${packet.length}: it is ${cancelRequestBytes} bytes`;
    return { kind: 'cancel', processId: packet.readInt32BE(8), secretKey: packet.readInt32BE(12) };
  }
  if (code !== protocolVersion3) return `unsupported frontend protocol ${code >> 16}.${code & 0xffff}: the proxy speaks 3.0`;
  return { kind: 'startup', body: packet.subarray(8) };
}

export function buildStartupPacket(parameters: ReadonlyMap<string, string>): Buffer {
  const parts: Buffer[] = [];
  for (const [name, value] of parameters) parts.push(Buffer.from(`${name}\0${value}\0`, 'utf8'));
  const body = Buffer.concat([...parts, Buffer.from([0])]);
  const packet = Buffer.alloc(8 + body.length);
  packet.writeInt32BE(packet.length, 0);
  packet.writeInt32BE(protocolVersion3, 4);
  body.copy(packet, 8);
  assert(packet.length <= startupPacketBytesMax, `rebuilt startup packet of ${packet.length} bytes exceeds the limit`);
  return packet;
}

export function cancelRequestPacket(processId: number, secretKey: number): Buffer {
  const packet = Buffer.alloc(16);
  packet.writeInt32BE(16, 0);
  packet.writeInt32BE(cancelRequestCode, 4);
  packet.writeInt32BE(processId, 8);
  packet.writeInt32BE(secretKey, 12);
  return packet;
}

/** A FATAL ErrorResponse: what a client shows as "FATAL: message" with the SQLSTATE. */
export function errorResponse(sqlState: SqlState, message: string, detail?: string): Buffer {
  const fields = [`SFATAL`, `VFATAL`, `C${sqlState}`, `M${message}`, ...(detail === undefined ? [] : [`D${detail}`])];
  const body = Buffer.from(`${fields.join('\0')}\0\0`, 'utf8');
  const packet = Buffer.alloc(5 + body.length);
  packet.write('E', 0, 'latin1');
  packet.writeInt32BE(4 + body.length, 1);
  body.copy(packet, 5);
  return packet;
}

export function backendKeyData(processId: number, secretKey: number): Buffer {
  const packet = Buffer.alloc(13);
  packet.write('K', 0, 'latin1');
  packet.writeInt32BE(12, 1);
  packet.writeInt32BE(processId, 5);
  packet.writeInt32BE(secretKey, 9);
  return packet;
}

/** A whole BackendKeyData message (type byte included, as `MessageReader` gives it); an error text if its length is not the one it has. */
export function parseBackendKeyData(message: Buffer): { readonly processId: number; readonly secretKey: number } | string {
  if (message.length !== backendKeyDataBytes || message[0] !== 'K'.charCodeAt(0) || message.readInt32BE(1) !== backendKeyDataBytes - 1) {
    return `the server sent a BackendKeyData of ${message.length} bytes; it is ${backendKeyDataBytes}`;
  }
  return { processId: message.readInt32BE(5), secretKey: message.readInt32BE(9) };
}

/** Splits a byte stream into typed messages (1-byte type, int32 length); keeps a partial tail. */
export class MessageReader {
  private pending: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): void {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
  }

  /** The next whole message, null if more bytes are needed, or an error text if it is too large. */
  next(): { type: string; message: Buffer } | null | string {
    if (this.pending.length < 5) return null;
    const length = this.pending.readInt32BE(1);
    if (length < 4 || length > startupMessageBytesMax) return `server message of ${length} bytes during startup`;
    if (this.pending.length < length + 1) return null;
    const message = this.pending.subarray(0, length + 1);
    this.pending = this.pending.subarray(length + 1);
    return { type: String.fromCharCode(message[0] ?? 0), message };
  }

  /** Whatever arrived after the last whole message (handed on unparsed when piping starts). */
  rest(): Buffer {
    return this.pending;
  }
}
