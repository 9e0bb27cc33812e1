import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { routingKey } from '../src/proxy/admission.js';
import { CancelKeys } from '../src/proxy/cancel-keys.js';
import {
  MessageReader,
  backendKeyData,
  buildStartupPacket,
  cancelRequestPacket,
  errorResponse,
  parseBackendKeyData,
  parseStartupParameters,
  parseStartupRequest,
  splitStartupPacket,
  sqlStates,
  startupMessageBytesMax,
  startupPacketBytesMax,
} from '../src/proxy/protocol.js';

/** The proxy's wire-protocol parsers against bad lengths: each ends in an error text, never a throw or a read past the message. No server. */

function packet(length: number, code: number, extra: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(8);
  header.writeInt32BE(length, 0);
  header.writeInt32BE(code, 4);
  return Buffer.concat([header, extra]);
}

function message(type: string, length: number, body: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.write(type, 0, 'latin1');
  header.writeInt32BE(length, 1);
  return Buffer.concat([header, body]);
}

describe('proxy protocol parsers', () => {
  test('splitStartupPacket: a length below 8, above the limit, or negative is an error as soon as the length is there; a short buffer waits', () => {
    for (const length of [-1, 0, 3, 7, startupPacketBytesMax + 1, 2 ** 31 - 1]) {
      const buffer = Buffer.alloc(4);
      buffer.writeInt32BE(length, 0);
      assert.equal(splitStartupPacket(buffer), `invalid startup packet length ${length}`);
    }
    assert.equal(splitStartupPacket(Buffer.from([0, 0])), null, 'no length yet');
    assert.equal(splitStartupPacket(packet(16, 1234).subarray(0, 12)), null, 'a packet not all there yet');
    const whole = Buffer.concat([cancelRequestPacket(7, 8), Buffer.from('next')]);
    const split = splitStartupPacket(whole);
    assert.ok(split !== null && typeof split !== 'string');
    assert.equal(split.packet.length, 16);
    assert.equal(split.rest.toString(), 'next');
  });

  test('parseStartupRequest: SSLRequest and GSSENCRequest must be 8 bytes, CancelRequest 16, a length field must match the packet; other protocols are refused', () => {
    assert.deepEqual(parseStartupRequest(packet(8, 80877103)), { kind: 'ssl' });
    assert.deepEqual(parseStartupRequest(packet(8, 80877104)), { kind: 'gssenc' });
    assert.match(parseStartupRequest(packet(12, 80877103, Buffer.alloc(4))) as string, /SSLRequest length 12/);
    assert.match(parseStartupRequest(packet(12, 80877104, Buffer.alloc(4))) as string, /GSSENCRequest length 12/);
    assert.deepEqual(parseStartupRequest(cancelRequestPacket(42, -7)), { kind: 'cancel', processId: 42, secretKey: -7 });
    assert.match(parseStartupRequest(packet(12, 80877102, Buffer.alloc(4))) as string, /CancelRequest length 12/);
    assert.match(parseStartupRequest(packet(20, 80877102, Buffer.alloc(12))) as string, /CancelRequest length 20/);
    assert.match(parseStartupRequest(packet(8, 80877102)) as string, /CancelRequest length 8/);
    assert.match(parseStartupRequest(packet(99, 196608, Buffer.from('user\0x\0\0'))) as string, /invalid startup packet length 99/);
    assert.match(parseStartupRequest(Buffer.from([0, 0, 0, 4])) as string, /invalid startup packet length/);
    assert.match(parseStartupRequest(packet(8, 0x00020000)) as string, /unsupported frontend protocol 2\.0/);
    const startup = buildStartupPacket(new Map([['user', 'app']]));
    const parsed = parseStartupRequest(startup);
    assert.ok(typeof parsed !== 'string' && parsed.kind === 'startup');
    assert.deepEqual(parseStartupParameters(parsed.body), new Map([['user', 'app']]));
  });

  test('parseStartupParameters: an empty body, a missing terminator, a name without a value, bytes after the terminator are errors', () => {
    assert.equal(parseStartupParameters(Buffer.alloc(0)), 'startup packet is not terminated');
    assert.equal(parseStartupParameters(Buffer.from('user\0app')), 'startup packet parameter has no value');
    assert.equal(parseStartupParameters(Buffer.from('user')), 'startup packet is not terminated');
    assert.equal(parseStartupParameters(Buffer.from('user\0app\0\0extra')), 'startup packet has bytes after its terminator');
    assert.equal(parseStartupParameters(Buffer.from('a\0b\0'.repeat(300) + '\0')), 'startup packet has too many parameters');
    assert.deepEqual(parseStartupParameters(Buffer.from('\0')), new Map());
  });

  test('parseBackendKeyData: only a 13-byte K with length 12 passes; shorter, longer or mislabelled messages are errors, not reads past the end', () => {
    assert.deepEqual(parseBackendKeyData(backendKeyData(11, -22)), { processId: 11, secretKey: -22 });
    assert.match(parseBackendKeyData(message('K', 4, Buffer.alloc(0))) as string, /BackendKeyData of 5 bytes/);
    assert.match(parseBackendKeyData(message('K', 8, Buffer.alloc(4))) as string, /BackendKeyData of 9 bytes/);
    assert.match(parseBackendKeyData(message('K', 16, Buffer.alloc(12))) as string, /BackendKeyData of 17 bytes/);
    assert.match(parseBackendKeyData(message('K', 99, Buffer.alloc(8))) as string, /BackendKeyData of 13 bytes/, 'a length field that disagrees with the message');
    assert.match(parseBackendKeyData(message('Z', 12, Buffer.alloc(8))) as string, /BackendKeyData/);
  });

  test('MessageReader: a length below 4 or above the startup limit is an error; a partial message waits; bytes after the message stay for the next', () => {
    for (const length of [-5, 0, 3, startupMessageBytesMax + 1]) {
      const reader = new MessageReader();
      reader.push(message('R', length, Buffer.alloc(0)));
      assert.equal(reader.next(), `server message of ${length} bytes during startup`);
    }
    const reader = new MessageReader();
    const error = errorResponse(sqlStates.protocolViolation, 'bad');
    reader.push(error.subarray(0, 3));
    assert.equal(reader.next(), null, 'no length yet');
    reader.push(error.subarray(3, error.length - 1));
    assert.equal(reader.next(), null, 'one byte short');
    reader.push(Buffer.concat([error.subarray(error.length - 1), Buffer.from('Z')]));
    const next = reader.next();
    assert.ok(next !== null && typeof next !== 'string');
    assert.equal(next.type, 'E');
    assert.deepEqual(next.message, error);
    assert.equal(reader.rest().toString(), 'Z');
  });

  test('routingKey: -c cluster= wins over SNI and role.cluster; SNI forwards role from role.cluster; a user without a dot names none', () => {
    assert.deepEqual(routingKey(new Map([['user', 'app.one'], ['options', '-c cluster=two -c x=y']]), 'three'), { cluster: 'two', parameters: new Map([['user', 'app.one'], ['options', '-c x=y']]) });
    assert.deepEqual(routingKey(new Map([['user', 'app.three']]), 'three'), { cluster: 'three', parameters: new Map([['user', 'app']]) });
    assert.deepEqual(routingKey(new Map([['user', 'app.one']])), { cluster: 'one', parameters: new Map([['user', 'app']]) });
    assert.equal(routingKey(new Map([['user', 'app']])), null);
    assert.equal(routingKey(new Map([['user', 'app.']])), null);
  });

  test('CancelKeys: issued keys are unique, found until released, and gone after', () => {
    const keys = new CancelKeys();
    const issued = Array.from({ length: 1000 }, (_, index) => keys.issue({ host: '127.0.0.1', port: 5432, processId: index, secretKey: -index }));
    assert.equal(new Set(issued.map((key) => `${key.processId}:${key.secretKey}`)).size, issued.length);
    const first = issued[0] as (typeof issued)[number];
    assert.deepEqual(keys.find(first.processId, first.secretKey), { host: '127.0.0.1', port: 5432, processId: 0, secretKey: -0 });
    for (const key of issued) keys.release(key);
    assert.equal(keys.size, 0);
    assert.equal(keys.find(first.processId, first.secretKey), undefined);
  });
});
