import { CellarError, invalid } from '../lib/errors.js';
import { bigIntToLsn, lsnToBigInt, walSegmentEnd } from '../lib/lsn.js';
import type { RestoreSpec } from '../lib/sizes.js';
import { parseTimestamp } from '../lib/timestamp.js';
import type { BackupSnapshot, ObservedWal } from '../store/backups.js';

/**
 * What a restore may reach, and the choice of backup and target for one request. Pure: the
 * routes read the store and pass in what they found, so every refusal is decided before anything
 * is made, and the unit tests need no server.
 */

export interface RestoreWindow {
  /** The earliest time (ISO) a restore can reach: the end of the oldest usable backup; null without one. */
  earliest: string | null;
  /** The latest time: now for a live cluster; for a deleted one, the last WAL its archive is known to hold. */
  latest: string;
  /** The same window as WAL positions; latestLsn null: not known, so no LSN target is accepted. */
  earliestLsn: string | null;
  latestLsn: string | null;
}

/** The cluster whose backups a restore reads, as far as the window needs it. */
export interface RestoreSourceFacts {
  readonly name: string;
  /** Null for a live cluster. */
  readonly deletedAt: Date | null;
  readonly wal: ObservedWal;
}

export interface RestoreRequest {
  to: string;
  time?: string;
  lsn?: string;
}

export const lsnFormat = 'two hexadecimal numbers of 1 to 8 digits separated by a slash, e.g. 0/3000148';
export const timeFormat = 'a timestamp with a zone, as Postgres prints it (2026-11-30 10:22:58.94+00) or ISO 8601 (2026-11-30T10:22:58Z)';
const lsnPattern = /^[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8}$/;

/** A backup a restore may start from: taken, and not proven broken. */
export function usable(backup: BackupSnapshot): boolean {
  return backup.finishedAt !== null && (backup.status === 'completed' || backup.status === 'verifying') && backup.verified !== false;
}

/**
 * How far the source's WAL reaches. Live: now, and the primary's LSN at its last probe (a restore
 * first has the live primary switch and archive its current WAL). Deleted: only what reached the
 * archive before the delete, as the last probe saw it; a target past it would make recovery end
 * before the target, which Postgres treats as fatal.
 */
function latestOf(source: RestoreSourceFacts, nowMs: number): { latestMs: number; latestLsn: bigint | null } {
  const observedLsn = source.wal.lsn !== null && lsnPattern.test(source.wal.lsn) ? lsnToBigInt(source.wal.lsn) : null;
  if (source.deletedAt === null) return { latestMs: nowMs, latestLsn: observedLsn };
  const archivedEnd = source.wal.lastArchivedWal === null ? null : walSegmentEnd(source.wal.lastArchivedWal);
  // The archived segment's end is exclusive: the next record starts in a segment that may be lost.
  const archivedLast = archivedEnd === null ? null : archivedEnd - 1n;
  const latestLsn = archivedLast === null ? null : observedLsn === null || observedLsn > archivedLast ? archivedLast : observedLsn;
  const archivedAtMs = source.wal.lastArchivedAt?.getTime() ?? null;
  const deletedMs = source.deletedAt.getTime();
  return { latestMs: archivedAtMs === null ? deletedMs : Math.min(archivedAtMs, deletedMs), latestLsn };
}

/** The window over `backups` (those of the cluster, or the one backup a restore by id names). */
export function restoreWindow(source: RestoreSourceFacts, backups: readonly BackupSnapshot[], nowMs: number): RestoreWindow {
  const candidates = backups.filter(usable);
  const ends = candidates.map((backup) => (backup.finishedAt as Date).getTime());
  const endLsns = candidates.flatMap((backup) => (backup.endLsn !== null && lsnPattern.test(backup.endLsn) ? [lsnToBigInt(backup.endLsn)] : []));
  const { latestMs, latestLsn } = latestOf(source, nowMs);
  return {
    earliest: ends.length === 0 ? null : new Date(Math.min(...ends)).toISOString(),
    latest: new Date(latestMs).toISOString(),
    earliestLsn: endLsns.length === 0 ? null : bigIntToLsn(endLsns.reduce((low, next) => (next < low ? next : low))),
    latestLsn: latestLsn === null ? null : bigIntToLsn(latestLsn),
  };
}

function describeWindow(source: RestoreSourceFacts, window: RestoreWindow, byId: string | null): string {
  const whose = byId === null ? `cluster "${source.name}"` : `backup ${byId} of ${source.deletedAt === null ? '' : 'deleted '}cluster "${source.name}"`;
  if (window.earliest === null) return `${whose}: it has no completed backup yet`;
  const to = source.deletedAt === null ? `now (${window.latest})` : `${window.latest} (the last WAL archived before its delete at ${source.deletedAt.toISOString()})`;
  const lsns = window.earliestLsn === null ? '' : `, WAL positions ${window.earliestLsn} to ${window.latestLsn ?? 'an end not known yet'}`;
  return `${whose} its restore window is ${window.earliest} to ${to}${lsns}`;
}

export interface RestoreChoice {
  readonly backup: BackupSnapshot;
  readonly target: Pick<RestoreSpec, 'targetTime' | 'targetLsn'>;
}

/**
 * The backup to start from and the target, or a 400/409 that names the field and the window.
 * `backupId`: restore from that backup only (a restore by id), so the window starts at its end.
 */
export function chooseBackup(source: RestoreSourceFacts, backups: readonly BackupSnapshot[], request: RestoreRequest, nowMs: number, backupId: string | null = null): RestoreChoice {
  if (request.time !== undefined && request.lsn !== undefined) throw invalid('time', 'give time or lsn, not both');
  const named = backupId === null ? null : backups.find((backup) => backup.id === backupId);
  if (named !== null && named !== undefined && !usable(named)) {
    const why = named.verified === false ? `failed verification (${named.verifyDetail ?? 'no detail'}) and is never restored` : `is ${named.status}; only a completed backup can be restored`;
    throw new CellarError('CELLAR_E_CONFLICT', `backup ${named.id} ${why}`, 'id');
  }
  const scope = named === null || named === undefined ? backups : [named];
  const candidates = scope.filter(usable);
  const window = restoreWindow(source, scope, nowMs);
  const windowText = describeWindow(source, window, backupId);
  const damaged = backups.find((backup) => backup.verified === false);
  const refuse = (field: string, why: string): CellarError => {
    const note = damaged === undefined || backupId !== null ? '' : `; backup ${damaged.id} failed verification (${damaged.verifyDetail ?? 'no detail'}) and is never restored`;
    return new CellarError(candidates.length === 0 && damaged !== undefined ? 'CELLAR_E_CONFLICT' : 'CELLAR_E_INVALID', `${why}: ${windowText}${note}`, field);
  };
  if (request.time !== undefined) return chooseByTime(request.time, candidates, window, refuse);
  if (request.lsn !== undefined) return chooseByLsn(request.lsn, candidates, window, refuse);
  const newest = candidates[0];
  if (newest === undefined) throw refuse(backupId === null ? 'name' : 'id', 'nothing to restore');
  return { backup: newest, target: {} };
}

type Refuse = (field: string, why: string) => CellarError;

function chooseByTime(text: string, candidates: readonly BackupSnapshot[], window: RestoreWindow, refuse: Refuse): RestoreChoice {
  const parsed = parseTimestamp(text);
  if (!parsed.ok && parsed.problem === 'zone') throw invalid('time', `time ${text} has no zone: a zone is required, e.g. ${text.trim()}+00 or ${text.trim().replace(' ', 'T')}Z`);
  if (!parsed.ok && parsed.problem === 'range') throw invalid('time', `time ${text} is not a real time (month, day, hour, minute, second or zone offset out of range)`);
  if (!parsed.ok) throw invalid('time', `time must be ${timeFormat}`);
  const backup = candidates.find((candidate) => (candidate.finishedAt as Date).getTime() <= parsed.ms);
  if (backup === undefined || parsed.ms > Date.parse(window.latest)) throw refuse('time', `time ${text} is outside the restore window`);
  return { backup, target: { targetTime: parsed.iso } };
}

function chooseByLsn(text: string, candidates: readonly BackupSnapshot[], window: RestoreWindow, refuse: Refuse): RestoreChoice {
  if (!lsnPattern.test(text)) throw invalid('lsn', `lsn must be a WAL position: ${lsnFormat}`);
  const target = lsnToBigInt(text);
  const backup = candidates.find((candidate) => candidate.endLsn !== null && lsnPattern.test(candidate.endLsn) && lsnToBigInt(candidate.endLsn) <= target);
  if (backup === undefined) throw refuse('lsn', `lsn ${text} is outside the restore window (before the end of every usable backup)`);
  if (window.latestLsn === null) throw refuse('lsn', `lsn ${text} cannot be checked: how far the WAL reaches is not known yet; restore to a time or to the latest`);
  if (target > lsnToBigInt(window.latestLsn)) throw refuse('lsn', `lsn ${text} is outside the restore window (past the last WAL position ${window.latestLsn})`);
  return { backup, target: { targetLsn: bigIntToLsn(target) } };
}
