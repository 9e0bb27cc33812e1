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
} as const;

export type SqlState = (typeof sqlStates)[keyof typeof sqlStates];

/** Parses a protocol 3.0 startup packet body (after length and version). Returns an error text if malformed. */
export function parseStartupParameters(body: Buffer): Map<string, string> | string {
  const parameters = new Map<string, string>();
  let offset = 0;
  for (let fields = 0; fields < 256; fields += 1) {
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
