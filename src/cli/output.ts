import type { Output } from '../lib/output.js';

export type { Output };

export function makeOutput(json: boolean): Output {
  return {
    json,
    line: (text) => process.stdout.write(`${text}\n`),
    progress: (text) => (json ? process.stderr : process.stdout).write(`${text}\n`),
    result: (value) => process.stdout.write(`${JSON.stringify(value, null, 2)}\n`),
  };
}

export function formatTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((header, column) => Math.max(header.length, ...rows.map((row) => (row[column] ?? '').length)));
  const render = (cells: readonly string[]) =>
    cells
      .map((cell, column) => cell.padEnd(widths[column] ?? 0))
      .join('  ')
      .trimEnd();
  return [render(headers), ...rows.map(render)].join('\n');
}

// Shared with the placement's refusals, which count the same bytes.
export { formatBytes } from '../lib/bytes.js';
