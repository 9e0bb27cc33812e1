import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { briefFailure, failureTextMax } from '../src/api/failure.js';
import { type RestoreSourceFacts, chooseBackup, restoreWindow } from '../src/api/restore.js';
import { CellarError } from '../src/lib/errors.js';
import { bigIntToLsn, lsnToBigInt, walSegmentEnd } from '../src/lib/lsn.js';
import { parseTimestamp } from '../src/lib/timestamp.js';
import { postgresTimestamp } from '../src/dataplane/local/backup.js';
import type { BackupSnapshot } from '../src/store/backups.js';

/** Restore input, checked without a server: timestamps as Postgres prints them, and the restore window. */

describe('timestamps as users paste them', () => {
  const cases: [string, string][] = [
    ['2026-11-30 10:22:58.94+00', '2026-11-30T10:22:58.94Z'],
    ['2026-11-30 10:22:58+00:00', '2026-11-30T10:22:58Z'],
    ['2026-11-30T10:22:58Z', '2026-11-30T10:22:58Z'],
    ['2026-11-30 10:22:58.123456+05:30', '2026-11-30T04:52:58.123456Z'],
    ['2026-11-30 10:22:58-0800', '2026-11-30T18:22:58Z'],
    ['2026-11-30 10:22:58 UTC', '2026-11-30T10:22:58Z'],
    ['2026-11-30T10:22Z', '2026-11-30T10:22:00Z'],
    ['2026-12-31 23:30:00-01', '2027-01-01T00:30:00Z'],
  ];
  for (const [text, iso] of cases) {
    test(`${text} is the instant ${iso}, keeping its microseconds`, () => {
      const parsed = parseTimestamp(text);
      assert.ok(parsed.ok, `${text} parses`);
      assert.equal(parsed.iso, iso);
      assert.equal(parsed.ms, Date.parse(iso), 'milliseconds agree with the ISO form, fraction truncated');
    });
  }

  test('a time without a zone is refused as such, not as a bad format', () => {
    for (const text of ['2026-11-30 10:22:58', '2026-11-30T10:22:58.94', '2026-11-30 10:22']) assert.deepEqual(parseTimestamp(text), { ok: false, problem: 'zone' }, text);
  });

  test('malformed text, more than microseconds, and times that do not exist are refused', () => {
    for (const text of ['yesterday', '2026-11-30', '30/11/2026 10:22:58+00', '2026-11-30 10:22:58.1234567+00', '2026-11-30 10:22:58+0', '']) {
      assert.deepEqual(parseTimestamp(text), { ok: false, problem: 'format' }, text);
    }
    for (const text of ['2026-02-30 10:00:00+00', '2026-13-01 10:00:00+00', '2026-11-30 24:00:00+00', '2026-11-30 10:60:00+00', '2026-11-30 10:00:00+16']) {
      assert.deepEqual(parseTimestamp(text), { ok: false, problem: 'range' }, text);
    }
  });
});

test('recovery_target_time keeps every fractional digit of the parsed time (microseconds)', () => {
  const parsed = parseTimestamp('2026-11-30 15:52:58.123456+05:30');
  assert.ok(parsed.ok);
  assert.equal(postgresTimestamp(parsed.iso), '2026-11-30 10:22:58.123456+00');
  assert.equal(postgresTimestamp('2026-11-30T10:22:58Z'), '2026-11-30 10:22:58+00');
});

describe('LSN arithmetic', () => {
  test('an LSN prints back as it was read, and a segment ends where the next begins', () => {
    assert.equal(bigIntToLsn(lsnToBigInt('16/B374D848')), '16/B374D848');
    assert.equal(bigIntToLsn(walSegmentEnd('000000020000000100000003') as bigint), '1/4000000');
    assert.equal(walSegmentEnd('00000002.history'), null);
  });
});

const hourMs = 3_600_000;
const nowMs = Date.parse('2026-11-30T12:00:00Z');

function backup(id: string, finishedAtMs: number, endLsn: string, overrides: Partial<BackupSnapshot> = {}): BackupSnapshot {
  return {
    id,
    clusterId: 'cl_source',
    reason: 'manual',
    status: 'completed',
    label: null,
    sourceInstanceId: null,
    startLsn: endLsn,
    endLsn,
    timeline: 1,
    bytes: 1,
    takeMs: 1,
    startedAt: new Date(finishedAtMs - 1_000),
    finishedAt: new Date(finishedAtMs),
    verified: true,
    verifiedAt: null,
    verifyDetail: null,
    error: null,
    ...overrides,
  };
}

/** Newest first, as the store lists them. */
const backups = [backup('bk_new', nowMs - hourMs, '0/5000100'), backup('bk_old', nowMs - 2 * hourMs, '0/3000100')];
const live: RestoreSourceFacts = { name: 'app', deletedAt: null, wal: { lsn: '0/6000200', lastArchivedWal: '000000010000000000000005', lastArchivedAt: new Date(nowMs - 5_000) } };
const deleted: RestoreSourceFacts = { name: 'gone', deletedAt: new Date(nowMs - 10 * 60_000), wal: { lsn: '0/6000200', lastArchivedWal: '000000010000000000000005', lastArchivedAt: new Date(nowMs - 11 * 60_000) } };

function refusal(run: () => unknown): CellarError {
  try {
    run();
  } catch (error) {
    assert.ok(error instanceof CellarError, String(error));
    return error;
  }
  assert.fail('expected a refusal');
}

describe('restore window and choice', () => {
  test("a live cluster's window runs from its oldest backup's end to now and to its primary's LSN", () => {
    assert.deepEqual(restoreWindow(live, backups, nowMs), {
      earliest: new Date(nowMs - 2 * hourMs).toISOString(),
      latest: new Date(nowMs).toISOString(),
      earliestLsn: '0/3000100',
      latestLsn: '0/6000200',
    });
  });

  test("a deleted cluster's window ends at the last WAL archived before the delete, not at its primary's unarchived LSN", () => {
    const window = restoreWindow(deleted, backups, nowMs);
    assert.equal(window.latest, new Date(nowMs - 11 * 60_000).toISOString());
    assert.equal(window.latestLsn, '0/5FFFFFF');
  });

  test('a time picks the newest backup finished by then and keeps microseconds; an lsn likewise', () => {
    const byTime = chooseBackup(live, backups, { to: 'x', time: new Date(nowMs - 90 * 60_000).toISOString().replace('T', ' ').replace('Z', '123+00') }, nowMs);
    assert.equal(byTime.backup.id, 'bk_old');
    assert.match(byTime.target.targetTime ?? '', /^2026-11-30T10:30:00\.000123Z$/);
    const byLsn = chooseBackup(live, backups, { to: 'x', lsn: '0/5000200' }, nowMs);
    assert.deepEqual([byLsn.backup.id, byLsn.target.targetLsn], ['bk_new', '0/5000200']);
  });

  test('each target outside the window is a 400 naming the field and stating the window', () => {
    const cases: [RestoreSourceFacts, { time?: string; lsn?: string }, string, RegExp][] = [
      [live, { lsn: 'FFFFFFFF/FFFFFFFF' }, 'lsn', /past the last WAL position 0\/6000200.*WAL positions 0\/3000100 to 0\/6000200/],
      [live, { lsn: '0/1000000' }, 'lsn', /before the end of every usable backup/],
      [deleted, { lsn: '0/6000000' }, 'lsn', /past the last WAL position 0\/5FFFFFF/],
      [live, { time: '2001-01-01 00:00:00+00' }, 'time', /outside the restore window: cluster "app" its restore window is 2026-11-30T10:00:00.000Z to now/],
      [live, { time: new Date(nowMs + 60_000).toISOString() }, 'time', /outside the restore window/],
      [deleted, { time: new Date(nowMs - 10.5 * 60_000).toISOString() }, 'time', /to 2026-11-30T11:49:00.000Z \(the last WAL archived before its delete/],
    ];
    for (const [source, target, field, message] of cases) {
      const error = refusal(() => chooseBackup(source, backups, { to: 'x', ...target }, nowMs));
      assert.deepEqual([error.code, error.field], ['CELLAR_E_INVALID', field], JSON.stringify(target));
      assert.match(error.message, message);
    }
  });

  test('malformed input names the format, a zoneless time says a zone is required, both targets at once are refused', () => {
    const cases: [{ time?: string; lsn?: string }, string, RegExp][] = [
      [{ lsn: '0/XYZ' }, 'lsn', /two hexadecimal numbers of 1 to 8 digits separated by a slash/],
      [{ lsn: '123456789/0' }, 'lsn', /two hexadecimal numbers/],
      [{ time: '2026-11-30 10:22:58' }, 'time', /has no zone: a zone is required, e.g. 2026-11-30 10:22:58\+00/],
      [{ time: 'yesterday' }, 'time', /Postgres prints it .* ISO 8601/],
      [{ time: '2026-02-30 10:00:00+00' }, 'time', /not a real time/],
      [{ time: new Date(nowMs).toISOString(), lsn: '0/5000200' }, 'time', /not both/],
    ];
    for (const [target, field, message] of cases) {
      const error = refusal(() => chooseBackup(live, backups, { to: 'x', ...target }, nowMs));
      assert.deepEqual([error.code, error.field], ['CELLAR_E_INVALID', field], JSON.stringify(target));
      assert.match(error.message, message);
    }
  });

  test('a restore by id starts at that backup: its window begins at its end, and a broken backup is a 409', () => {
    const error = refusal(() => chooseBackup(deleted, [backups[0] as BackupSnapshot], { to: 'x', lsn: '0/4000000' }, nowMs, 'bk_new'));
    assert.match(error.message, /backup bk_new of deleted cluster "gone" its restore window is .* WAL positions 0\/5000100 to 0\/5FFFFFF/);
    const broken = backup('bk_broken', nowMs - hourMs, '0/5000100', { verified: false, verifyDetail: 'checksum mismatch' });
    const conflict = refusal(() => chooseBackup(deleted, [broken], { to: 'x' }, nowMs, 'bk_broken'));
    assert.deepEqual([conflict.code, conflict.field], ['CELLAR_E_CONFLICT', 'id']);
  });

  test('without a known end of WAL, an lsn target is refused rather than risked', () => {
    const unknown: RestoreSourceFacts = { ...deleted, wal: { lsn: null, lastArchivedWal: null, lastArchivedAt: null } };
    const error = refusal(() => chooseBackup(unknown, backups, { to: 'x', lsn: '0/5000200' }, nowMs));
    assert.match(error.message, /how far the WAL reaches is not known/);
  });
});

describe('failure text', () => {
  test("a server's log dump becomes one line: what failed, Postgres's FATAL, and what to do", () => {
    const dump = [
      'instance in_abc (primary) failed: gave up after 12 attempts: postgres -D /var/lib/cellar/instances/in_abc/pgdata exited during start',
      ...Array.from({ length: 40 }, (_, index) => `  2026-11-30 10:00:${String(index).padStart(2, '0')} UTC [123] LOG:  restored log file "0000000100000000000000${index}" from archive`),
      '  2026-11-30 10:01:00 UTC [123] FATAL:  recovery ended before configured recovery target was reached',
      '  2026-11-30 10:01:00 UTC [120] LOG:  startup process (PID 123) exited with exit code 1',
    ].join('\n');
    const brief = briefFailure(dump) ?? '';
    assert.ok(brief.length <= failureTextMax, `${brief.length} characters`);
    assert.match(brief, /^instance in_abc \(primary\) failed: gave up after 12 attempts: the server exited during start: recovery ended before configured recovery target was reached: the archive ends before the restore target/);
    assert.doesNotMatch(brief, /\/var\/lib/);
    assert.equal(briefFailure('no running instance to back up from'), 'no running instance to back up from');
  });
});
