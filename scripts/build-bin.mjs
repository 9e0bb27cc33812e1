// Bundles the three programs (src/bin: cellar, cellar-proxy, cellar-guard) with the packages they
// use into dist/bundle/bin, the files that run (package.json's bin; `cellar up` starts the proxy,
// `cellar agent` the guard, from beside itself). Run by `npm run build`, after tsc has
// type-checked and compiled the same sources (esbuild only strips types); tests still import the
// compiled modules under dist/src one by one.
//
// Why: a Node start resolves and reads every module it imports, one file at a time; the control
// plane loads ~700. One file per program, with the code `up` alone needs in a chunk of its own
// (the CLI's lazy imports become chunks, so `cellar clusters list` never reads Fastify), loads the
// control plane in 108 ms instead of 179 on a 17 ms Node start (BENCHMARKS.md, bench/startup).
//
// Paths a module finds beside itself (import.meta.url) must resolve the same from dist/src/<layer>/
// and from dist/bundle/bin/: both are two folders below dist/ (the web console, the migrations and
// the relay addon are found from there), and the proxy and guard entries sit in bin/ in both.
// dist/bundle/meta.json records which sources went into which file (test/proxy-entry.test.ts reads it).
import { build } from 'esbuild';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const root = join(import.meta.dirname, '..');
const out = join(root, 'dist/bundle');

await rm(out, { recursive: true, force: true });
const result = await build({
  entryPoints: ['cellar', 'cellar-proxy', 'cellar-guard'].map((name) => join(root, 'src/bin', `${name}.ts`)),
  outdir: join(out, 'bin'),
  bundle: true,
  splitting: true,
  chunkNames: 'chunk-[hash]',
  format: 'esm',
  platform: 'node',
  target: ['node20'],
  sourcemap: true,
  metafile: true,
  legalComments: 'none',
  logLevel: 'warning',
  // The packages are CommonJS: their require() of Node's own modules needs a real require in ESM.
  banner: { js: "import { createRequire as __cellarCreateRequire } from 'node:module'; const require = __cellarCreateRequire(import.meta.url);" },
  // pg's optional native binding: never installed, tried in a try/catch by pg itself.
  external: ['pg-native'],
});
await writeFile(join(out, 'meta.json'), JSON.stringify(result.metafile));
