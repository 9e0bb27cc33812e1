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
