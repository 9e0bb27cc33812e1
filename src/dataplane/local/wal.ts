import type { WalFile } from '../backup-store.js';

/** WAL file names: `TTTTTTTTXXXXXXXXYYYYYYYY` is timeline, then the segment number in two halves. */

const segmentPattern = /^([0-9A-F]{8})([0-9A-F]{16})/;

/** The segment number part of a WAL file name (timeline stripped), for ordering across timelines. */
function segmentNumber(name: string): string | null {
  return segmentPattern.exec(name)?.[2] ?? null;
}

/**
 * Archived files older than the oldest segment a kept backup needs: segments (and their
 * `.partial` and `.backup` files) with a lower segment number on any timeline. Timeline history
 * files are tiny and needed to follow timelines: they are always kept.
 */
export function walFilesBefore(files: readonly WalFile[], oldestNeeded: string): string[] {
  const floor = segmentNumber(oldestNeeded);
  if (floor === null) return [];
  return files
    .filter((file) => !file.name.endsWith('.history'))
    .filter((file) => {
      const number = segmentNumber(file.name);
      return number !== null && number < floor;
    })
    .map((file) => file.name);
}

/** Bytes of WAL per segment (the Postgres default, which Cellar does not change). */
export const walSegmentBytes = 16 * 1024 * 1024;

/** The LSN just past the end of a segment, as a byte position. */
export function segmentEndPosition(name: string): bigint | null {
  const match = segmentPattern.exec(name);
  if (match?.[2] === undefined) return null;
  const high = BigInt(`0x${match[2].slice(0, 8)}`);
  const low = BigInt(`0x${match[2].slice(8)}`);
  return (high << 32n) + (low + 1n) * BigInt(walSegmentBytes);
}
