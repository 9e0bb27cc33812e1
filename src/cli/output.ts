/**
 * Where CLI text goes. With --json, stdout carries exactly one JSON document (the result) and
 * progress goes to stderr, so scripts can pipe stdout and still see a long wait advance.
 */
export interface Output {
  readonly json: boolean;
  line(text: string): void;
  progress(text: string): void;
  result(value: unknown): void;
}

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
