import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { ErrorRewriter, errorMessageBytesMax, rewriteError } from '../src/proxy/storage-full.js';
import { autogrowTarget, lockAction, storageAction } from '../src/machines/storage-guard.js';
import { lockGrowthBytes, storageUse } from '../src/lib/sizes.js';
import { growthBytesPerSecond, usageIntervalFor, usageIntervalMsNearFull } from '../src/machines/instance.js';
import type { ClusterRecord, InstanceRecord } from '../src/machines/ports.js';
import type { StorageSettings } from '../src/config.js';

const notice = { cluster: 'app', percent: 96.2, storageGb: 10, locked: false };

function message(type: string, body: Buffer): Buffer {
  const out = Buffer.alloc(5 + body.length);
  out.write(type, 0, 'latin1');
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

function errorMessage(code: string, text: string): Buffer {
  return message('E', Buffer.from(`SERROR\0VERROR\0C${code}\0M${text}\0Fpostgres.c\0\0`, 'utf8'));
}

function fieldsOf(error: Buffer): Map<string, string> {
  const fields = new Map<string, string>();
  for (const field of error.toString('utf8', 5, error.length - 1).split('\0').filter((part) => part.length > 0)) fields.set(field[0] as string, field.slice(1));
  return fields;
}

const readOnlyError = errorMessage('25006', 'cannot execute INSERT in a read-only transaction');

describe('storage full: what the proxy tells a client that writes', () => {
  test('a read-only-transaction error says the storage is full and how to resize, keeps its SQLSTATE, severity and the server\'s words', () => {
    const fields = fieldsOf(rewriteError(readOnlyError, notice));
    assert.equal(fields.get('C'), '25006');
    assert.equal(fields.get('S'), 'ERROR');
    assert.equal(fields.get('F'), 'postgres.c');
    assert.equal(fields.get('M'), 'cluster "app" is read-only: its storage is full (96.2 % of 10 GB used)');
    assert.equal(fields.get('D'), 'cannot execute INSERT in a read-only transaction');
    assert.match(fields.get('H') ?? '', /cellar clusters resize app --storage-gb 20/);
    assert.match(fields.get('H') ?? '', /BEGIN READ WRITE .*SET default_transaction_read_only = off/);
  });

  test('other errors pass unchanged', () => {
    const other = errorMessage('23505', 'duplicate key value violates unique constraint "t_pkey"');
    assert.equal(rewriteError(other, notice), other);
  });

  test('whatever the chunking, the stream out is the stream in with exactly the read-only errors rewritten (property)', () => {
    const parts = [
      message('T', Buffer.from('\0\0\0')),
      message('D', Buffer.alloc(70_000, 7)), // longer than an error is ever gathered
      readOnlyError,
      message('Z', Buffer.from('I')),
      errorMessage('42P01', 'relation "nope" does not exist'),
      message('E', Buffer.alloc(errorMessageBytesMax + 10, 65)), // an error too large to gather passes as bytes
      readOnlyError,
      message('Z', Buffer.from('E')),
    ];
    const input = Buffer.concat(parts);
    const expected = Buffer.concat(parts.map((part) => (part === readOnlyError ? rewriteError(part, notice) : part)));
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: input.length - 1 }), { maxLength: 40 }), (cuts) => {
        const points = [...new Set(cuts)].sort((a, b) => a - b);
        const rewriter = new ErrorRewriter(() => notice);
        const out: Buffer[] = [];
        let from = 0;
        for (const point of [...points, input.length]) {
          out.push(rewriter.push(input.subarray(from, point)));
          from = point;
        }
        assert.deepEqual(Buffer.concat(out), expected);
      }),
      { numRuns: 200 },
    );
  });

  test('once the cluster is writable again, errors pass as the server sent them', () => {
    let full: typeof notice | null = notice;
    const rewriter = new ErrorRewriter(() => full);
    assert.notDeepEqual(rewriter.push(readOnlyError), readOnlyError);
    full = null;
    assert.deepEqual(rewriter.push(readOnlyError), readOnlyError);
  });
});

describe('storage guard: the pure rules', () => {
  const settings = { warnPercent: 80, readOnlyPercent: 95 };
  const use = (percent: number, projectedPercent = percent) => ({ usedBytes: percent, allocatedBytes: 100, percent, growthBytesPerSecond: 0, projectedPercent });
  const marked = (percent: number) => ({ usedBytes: percent, allocatedBytes: 100, percent });

  test('read-only at the threshold and writable below it, the warning once per climb and always before read-only', () => {
    assert.equal(storageAction(use(94.9), null, true, settings), null);
    assert.equal(storageAction(use(95), null, true, settings), 'readOnly');
    assert.equal(storageAction(use(95), marked(95), true, settings), null);
    assert.equal(storageAction(use(94.9), marked(95), true, settings), 'writable');
    assert.equal(storageAction(use(80), null, false, settings), 'warn');
    assert.equal(storageAction(use(99), null, false, settings), 'warn', 'the warning first, even past both');
    assert.equal(storageAction(use(79.9), null, true, settings), 'unwarn');
    assert.equal(storageAction(use(50), null, false, settings), null);
  });

  test('judged a lead ahead: read-only when the growth would carry it past the threshold; not undone until below where it stopped', () => {
    assert.equal(storageAction(use(94.5, 95.2), null, true, settings), 'readOnly', 'about to cross at the growth measured');
    assert.equal(storageAction(use(94.5, 94.9), null, true, settings), null, 'not within the lead');
    assert.equal(storageAction(use(94.5, 95.2), marked(94.7), true, settings), null, 'the crossing figure again, still growing');
    assert.equal(storageAction(use(94.7), marked(94.7), true, settings), null, 'stopped short of the threshold: stays read-only');
    assert.equal(storageAction(use(94.6), marked(94.7), true, settings), 'writable', 'below where it stopped (data dropped)');
    assert.equal(storageAction(use(47.4), { usedBytes: 94.7, allocatedBytes: 100, percent: 94.7 }, true, settings), 'writable', 'resized');
    assert.equal(storageAction(use(94.9), marked(96), true, settings), 'writable', 'a mark past the threshold: below the threshold is enough');
  });

  test('the lead is the growth over the lead time, at most a hundredth of the allocation; shrinking is no growth', () => {
    const gb = 1024 ** 3;
    const at = (usedPercent: number, growthBytesPerSecond: number, leadMs: number) => storageUse(10, gb, { dataBytes: (usedPercent / 100) * 10 * gb, walBytes: 0, growthBytesPerSecond }, leadMs);
    assert.equal(at(90, 100 * 1024 ** 2, 0)?.projectedPercent, 90, 'no lead');
    const fast = at(90, 100 * 1024 ** 2, 300);
    assert.ok(fast !== null && Math.abs(fast.projectedPercent - (90 + (30 * 1024 ** 2 * 100) / (10 * gb))) < 1e-9, `${fast?.projectedPercent}`);
    assert.ok(Math.abs((at(90, 10 * gb, 300)?.projectedPercent ?? 0) - 91) < 1e-9, 'capped at 1 % of the allocation');
    assert.equal(at(90, -gb, 300)?.projectedPercent, 90, 'shrinking');
    fc.assert(
      fc.property(fc.double({ min: 0, max: 200, noNaN: true }), fc.double({ min: -1e10, max: 1e12, noNaN: true }), fc.integer({ min: 0, max: 5_000 }), (percent, growth, leadMs) => {
        const projected = at(percent, growth, leadMs);
        assert.ok(projected !== null && projected.projectedPercent >= projected.percent && projected.projectedPercent <= projected.percent + 1 + 1e-9);
      }),
    );
  });

  test('growth comes from the measurement before, within a minute of it', () => {
    const before = { dataBytes: 1000, walBytes: 0, filesystem: { path: '/', totalBytes: 0, freeBytes: 0, availableBytes: 0 } };
    const after = { ...before, dataBytes: 3000, walBytes: 1000 };
    assert.equal(growthBytesPerSecond(before, 10_000, after, 10_500), 6000);
    assert.equal(growthBytesPerSecond(null, 10_000, after, 10_500), undefined, 'never measured');
    assert.equal(growthBytesPerSecond(before, undefined, after, 10_500), undefined);
    assert.equal(growthBytesPerSecond(before, 10_000, after, 10_000), undefined, 'no time passed');
    assert.equal(growthBytesPerSecond(before, 10_000, after, 80_000), undefined, 'too long ago to mean anything now');
    assert.equal(growthBytesPerSecond(after, 10_000, before, 11_000), -3000, 'shrinking is told as it is');
  });

  test('the hard stop: a full cluster is locked only once it grew past the mark by the growth bound and past its whole allocation', () => {
    const allocatedBytes = 10 * 1024 ** 3;
    const full = { usedBytes: 0.96 * allocatedBytes, allocatedBytes, percent: 96 };
    const at = (usedBytes: number) => ({ usedBytes, allocatedBytes, percent: (usedBytes / allocatedBytes) * 100, growthBytesPerSecond: 0, projectedPercent: (usedBytes / allocatedBytes) * 100 });
    assert.equal(lockGrowthBytes(allocatedBytes), 0.1 * allocatedBytes);
    assert.equal(lockGrowthBytes(128 * 1024 ** 2), 64 * 1024 ** 2, 'never less than 64 MiB');
    assert.equal(lockAction(at(0.99 * allocatedBytes), full), null, 'below the allocation');
    assert.equal(lockAction(at(full.usedBytes + lockGrowthBytes(allocatedBytes) - 1), full), null, 'grown less than the bound');
    const locked = lockAction(at(full.usedBytes + lockGrowthBytes(allocatedBytes)), full);
    assert.equal(locked?.full.locked, true);
    assert.match(locked?.reason ?? '', /read-only off/);
    assert.equal(lockAction(at(2 * allocatedBytes), { ...full, locked: true }), null, 'locked once');
    assert.equal(lockAction(at(2 * allocatedBytes), null), null, 'never without the mark');
  });

  test('autogrow grows by its step, at least the resize step, and never past its ceiling (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 20_000 }), fc.integer({ min: 2, max: 20_000 }), fc.integer({ min: 5, max: 100 }), fc.integer({ min: 1, max: 1_024 }), (storageGb, maxGb, stepPercent, stepGbMin) => {
        const target = autogrowTarget(storageGb, { maxGb, thresholdPercent: 90, stepPercent }, stepGbMin);
        const ceiling = Math.min(maxGb, 16_384);
        if (storageGb >= ceiling) return assert.equal(target, null);
        assert.ok(target !== null && target > storageGb && target <= ceiling);
        if (target < ceiling) assert.ok(target - storageGb >= stepGbMin && target - storageGb >= (storageGb * stepPercent) / 100);
      }),
    );
  });

  test('a primary is measured sooner the nearer it is to the read-only threshold, at most every 50 ms; a replica once per interval', () => {
    const storage: StorageSettings = { usageIntervalMs: 30_000, resizeCooldownMs: 0, resizeStepGbMin: 1, gbBytes: 1024 ** 3, warnPercent: 80, readOnlyPercent: 95, writeRateMbPerSecond: 512, readOnlyLeadMs: 300, hostDiskReservePercent: 10 };
    const cluster = { spec: { storageGb: 100 } } as ClusterRecord;
    const at = (role: 'primary' | 'replica', percent: number) => ({ role, usage: { dataBytes: (percent / 100) * 100 * 1024 ** 3, walBytes: 0 } }) as InstanceRecord;
    assert.equal(usageIntervalFor(storage, cluster, at('primary', 10)), 30_000, 'far from full: the interval');
    assert.equal(usageIntervalFor(storage, cluster, at('replica', 94.99)), 30_000);
    assert.equal(usageIntervalFor(storage, cluster, at('primary', 94.99)), usageIntervalMsNearFull);
    // 1 % of 100 GB is 1 GB: two seconds at 512 MB/s.
    assert.equal(Math.round(usageIntervalFor(storage, cluster, at('primary', 94))), 2_000);
    assert.equal(Math.round(usageIntervalFor(storage, cluster, at('primary', 96))), 2_000, 'a full one too, to see it fall below');
  });
});
