import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { errorCatalogue } from '../src/lib/errors.js';

const errorsDoc = fileURLToPath(new URL('../../docs/ERRORS.md', import.meta.url));

test('the error catalogue and docs/ERRORS.md list the same codes with the same HTTP status and summary', async () => {
  const rows = new Map<string, { status: number; summary: string }>();
  for (const match of (await readFile(errorsDoc, 'utf8')).matchAll(/^\| `(CELLAR_E_[A-Z_]+)` \| (\d{3}) \| (.+) \|$/gm)) {
    rows.set(match[1] as string, { status: Number(match[2]), summary: match[3] as string });
  }
  assert.deepEqual(Object.fromEntries(rows), errorCatalogue);
});
