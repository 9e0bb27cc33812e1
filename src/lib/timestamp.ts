/**
 * Timestamps as users paste them: what Postgres prints (`2026-11-30 10:22:58.94+00`,
 * `…+05:30`) and ISO 8601 (`2026-11-30T10:22:58Z`). A zone is required: without one the same
 * text is a different instant on each machine, and a restore would silently miss or include rows.
 */

export type ParsedTimestamp =
  | {
      readonly ok: true;
      /** Milliseconds since the epoch (the fraction truncated to milliseconds), for comparisons. */
      readonly ms: number;
      /** The instant in UTC as ISO 8601, keeping every fractional digit given (up to microseconds). */
      readonly iso: string;
    }
  | { readonly ok: false; readonly problem: 'format' | 'zone' | 'range' };

/** Postgres keeps microseconds; more digits would be cut silently, so they are refused. */
export const timestampFractionDigitsMax = 6;
/** Postgres accepts zone offsets up to 15:59 either side of UTC. */
const zoneOffsetHoursMax = 15;

const timestampPattern = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(?: ?(Z|UTC|[+-]\d{2}(?::?\d{2}(?::?\d{2})?)?))?$/;
const offsetPattern = /^([+-])(\d{2}):?(\d{2})?:?(\d{2})?$/;

/** Seconds east of UTC for `Z`, `UTC`, `+05`, `+0530`, `-05:30`, `+00:53:28`; null when out of range. */
function zoneOffsetSeconds(zone: string): number | null {
  if (zone === 'Z' || zone === 'UTC') return 0;
  const match = offsetPattern.exec(zone);
  if (match === null) return null;
  const [hours, minutes, seconds] = [Number(match[2]), Number(match[3] ?? 0), Number(match[4] ?? 0)];
  if (hours > zoneOffsetHoursMax || minutes > 59 || seconds > 59) return null;
  return (match[1] === '-' ? -1 : 1) * (hours * 3_600 + minutes * 60 + seconds);
}

export function parseTimestamp(text: string): ParsedTimestamp {
  const match = timestampPattern.exec(text.trim());
  if (match === null) return { ok: false, problem: 'format' };
  const [year, month, day, hour, minute, second] = [1, 2, 3, 4, 5, 6].map((index) => Number(match[index] ?? 0)) as [number, number, number, number, number, number];
  const fraction = match[7] ?? '';
  const zone = match[8];
  if (fraction.length > timestampFractionDigitsMax) return { ok: false, problem: 'format' };
  if (zone === undefined) return { ok: false, problem: 'zone' };
  const offsetSeconds = zoneOffsetSeconds(zone);
  const localMs = Date.UTC(year, month - 1, day, hour, minute, second);
  const local = new Date(localMs);
  // Date.UTC rolls 2026-02-30 over into March: a date that does not round-trip does not exist.
  const exists = local.getUTCFullYear() === year && local.getUTCMonth() === month - 1 && local.getUTCDate() === day;
  if (offsetSeconds === null || !exists || hour > 23 || minute > 59 || second > 59) return { ok: false, problem: 'range' };
  const wholeMs = localMs - offsetSeconds * 1_000;
  const ms = wholeMs + Number(fraction.padEnd(3, '0').slice(0, 3));
  const iso = `${new Date(wholeMs).toISOString().slice(0, 19)}${fraction === '' ? '' : `.${fraction}`}Z`;
  return { ok: true, ms, iso };
}
