import { assert } from '../lib/assert.js';
import { sqlStates } from './protocol.js';

/**
 * A cluster whose storage is full has a read-only primary (docs/STORAGE.md "Limits"): its server
 * answers a write with "cannot execute INSERT in a read-only transaction" (SQLSTATE 25006), which
 * does not say why. The proxy relays its read-write connections through this rewriter, which turns
 * each such ErrorResponse into one that says the storage is full and how to resize, keeping the
 * SQLSTATE (drivers act on it) and the server's own words as the detail. Every other message
 * passes through as bytes, without being buffered whole.
 */

export interface StorageFullNotice {
  /** The cluster's name, as `cellar clusters resize` takes it. */
  readonly cluster: string;
  readonly percent: number;
  readonly storageGb: number;
  /** It wrote on past its whole allocation with read-only turned off: no connection at all until resized. */
  readonly locked: boolean;
}

/** What a client connecting to a locked cluster is told. */
export function lockedMessage(notice: StorageFullNotice): string {
  return `cluster "${notice.cluster}" is locked: it went on writing with read-only turned off until its storage was full (${notice.percent} % of ${notice.storageGb} GB used); grow it to connect again: cellar clusters resize ${notice.cluster} --storage-gb ${Math.min(16_384, notice.storageGb * 2)}`;
}

/** An ErrorResponse larger than this is passed on unread (a real one is a few hundred bytes). */
export const errorMessageBytesMax = 64 * 1024;
const headerBytes = 5;
const errorType = 'E'.charCodeAt(0);

export function storageFullFields(notice: StorageFullNotice, original: string): { message: string; detail: string; hint: string } {
  const grow = Math.min(16_384, notice.storageGb * 2);
  return {
    message: `cluster "${notice.cluster}" is read-only: its storage is full (${notice.percent} % of ${notice.storageGb} GB used)`,
    detail: original,
    hint:
      `Grow the storage: cellar clusters resize ${notice.cluster} --storage-gb ${grow} (writes resume within seconds), or free space: ` +
      'in a transaction begun with BEGIN READ WRITE (or after SET default_transaction_read_only = off), DROP or TRUNCATE what you can spare (DELETE frees space only after VACUUM FULL)',
  };
}

/** The message rewritten when it is a read-only-transaction error; otherwise itself. */
export function rewriteError(message: Buffer, notice: StorageFullNotice): Buffer {
  assert(message[0] === errorType && message.readInt32BE(1) === message.length - 1, 'rewriteError takes one whole ErrorResponse');
  const fields: [string, string][] = [];
  let offset = headerBytes;
  while (offset < message.length && message[offset] !== 0) {
    const end = message.indexOf(0, offset + 1);
    // A field without its terminator breaks the protocol: pass it on as it came, for the client to judge.
    if (end < 0) return message;
    fields.push([String.fromCharCode(message[offset] as number), message.toString('utf8', offset + 1, end)]);
    offset = end + 1;
  }
  const code = fields.find(([type]) => type === 'C')?.[1];
  if (code !== sqlStates.readOnlyTransaction) return message;
  const original = fields.find(([type]) => type === 'M')?.[1] ?? '';
  const { message: text, detail, hint } = storageFullFields(notice, original);
  const kept = fields.filter(([type]) => type !== 'M' && type !== 'D' && type !== 'H');
  const body = Buffer.from(`${[...kept, ['M', text], ['D', detail], ['H', hint]].map(([type, value]) => `${type}${value}`).join('\0')}\0\0`, 'utf8');
  const rewritten = Buffer.alloc(headerBytes + body.length);
  rewritten.writeUInt8(errorType, 0);
  rewritten.writeInt32BE(4 + body.length, 1);
  body.copy(rewritten, headerBytes);
  return rewritten;
}

/**
 * Server → client bytes in, the same bytes out but for the ErrorResponses, which are gathered
 * whole (up to `errorMessageBytesMax`) and rewritten while `notice()` says the cluster is full.
 * Holds at most one message header or one error message between chunks.
 */
export class ErrorRewriter {
  /** Bytes of the current message still to pass through untouched. */
  private passing = 0;
  /** A header or an error message being gathered. */
  private gathering: Buffer = Buffer.alloc(0);

  constructor(private readonly notice: () => StorageFullNotice | null) {}

  push(chunk: Buffer): Buffer {
    const out: Buffer[] = [];
    let offset = 0;
    while (offset < chunk.length) {
      if (this.passing > 0) {
        const take = Math.min(this.passing, chunk.length - offset);
        out.push(chunk.subarray(offset, offset + take));
        this.passing -= take;
        offset += take;
        continue;
      }
      if (this.gathering.length < headerBytes) {
        const take = Math.min(headerBytes - this.gathering.length, chunk.length - offset);
        this.gathering = Buffer.concat([this.gathering, chunk.subarray(offset, offset + take)]);
        offset += take;
        if (this.gathering.length < headerBytes) continue;
        const length = this.gathering.readInt32BE(1);
        // An error message with a body, small enough, is gathered whole; anything else streams on.
        if (this.gathering[0] === errorType && length > 4 && length + 1 <= errorMessageBytesMax) continue;
        out.push(this.gathering);
        this.passing = Math.max(0, length - 4);
        this.gathering = Buffer.alloc(0);
        continue;
      }
      const wanted = this.gathering.readInt32BE(1) + 1;
      const take = Math.min(wanted - this.gathering.length, chunk.length - offset);
      this.gathering = Buffer.concat([this.gathering, chunk.subarray(offset, offset + take)]);
      offset += take;
      if (this.gathering.length < wanted) continue;
      const notice = this.notice();
      out.push(notice === null ? this.gathering : rewriteError(this.gathering, notice));
      this.gathering = Buffer.alloc(0);
    }
    return out.length === 1 ? (out[0] as Buffer) : Buffer.concat(out);
  }
}
