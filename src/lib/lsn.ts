/** Postgres LSNs (`16/B374D848`) as byte positions, so lag can be computed by subtraction. */
export function lsnToBigInt(lsn: string): bigint {
  const match = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(lsn);
  if (!match) throw new Error(`not an LSN: ${lsn}`);
  return (BigInt(`0x${match[1]}`) << 32n) + BigInt(`0x${match[2]}`);
}

export function lagBytes(aheadLsn: string | undefined, behindLsn: string | undefined): number | null {
  if (aheadLsn === undefined || behindLsn === undefined) return null;
  const lag = lsnToBigInt(aheadLsn) - lsnToBigInt(behindLsn);
  return lag > 0n ? Number(lag) : 0;
}

/** A byte position as Postgres prints an LSN (`16/B374D848`). */
export function bigIntToLsn(position: bigint): string {
  return `${(position >> 32n).toString(16).toUpperCase()}/${(position & 0xffffffffn).toString(16).toUpperCase()}`;
}

/** Bytes of WAL per segment (the Postgres default, which Cellar does not change). */
const walSegmentBytes = 16n * 1024n * 1024n;
const walSegmentPattern = /^[0-9A-F]{8}([0-9A-F]{8})([0-9A-F]{8})$/;

/** The position just past the end of a WAL segment named as Postgres names it; null for another name. */
export function walSegmentEnd(name: string): bigint | null {
  const match = walSegmentPattern.exec(name);
  if (match === null) return null;
  return (BigInt(`0x${match[1]}`) << 32n) + (BigInt(`0x${match[2]}`) + 1n) * walSegmentBytes;
}
