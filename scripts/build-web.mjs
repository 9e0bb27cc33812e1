// Builds the web console (src/web) into dist/web: index.html, app.js and app.css, each also
// gzip- and brotli-compressed for @fastify/static's preCompressed (docs/CONSOLE.md "Served").
// Run by `npm run build`, after `tsc -p src/web` has type-checked it (esbuild only strips types).
import { build } from 'esbuild';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';

const root = join(import.meta.dirname, '..');
const source = join(root, 'src/web');
const out = join(root, 'dist/web');

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await build({
  entryPoints: { app: join(source, 'main.tsx') },
  outdir: out,
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['es2022'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  legalComments: 'none',
  logLevel: 'warning',
});
await writeFile(join(out, 'index.html'), await readFile(join(source, 'index.html')));

const assets = ['index.html', 'app.js', 'app.css'];
let compressedBytes = 0;
for (const name of assets) {
  const content = await readFile(join(out, name));
  const brotli = brotliCompressSync(content, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } });
  await writeFile(join(out, `${name}.br`), brotli);
  await writeFile(join(out, `${name}.gz`), gzipSync(content, { level: 9 }));
  compressedBytes += brotli.length;
}
console.log(`web console: ${assets.join(', ')} in dist/web, ${Math.round(compressedBytes / 1024)} kB brotli on first load`);
