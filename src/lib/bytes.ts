const byteUnits = ['B', 'kB', 'MB', 'GB', 'TB'] as const;

/** `1.2 GB`, `48 MB`: binary multiples, one decimal below 10 of a unit, as the allocation is counted. */
export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < byteUnits.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const shown = unit === 0 || value >= 10 ? Math.round(value).toString() : value.toFixed(1);
  return `${shown} ${byteUnits[unit]}`;
}
