import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { FastifyInstance } from 'fastify';

/**
 * The web console (docs/CONSOLE.md "Served"): the files `npm run build` wrote into dist/web, at
 * `/`, with their brotli and gzip twins served to browsers that accept them. Found beside this
 * compiled file (dist/src/api/console.js → dist/web), so it does not matter where `cellar up` runs.
 */

export const consoleRoot = fileURLToPath(new URL('../../web/', import.meta.url));

/** No inline script or style, no frames, nothing from another origin. */
export const consoleHeaders = {
  'content-security-policy': "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
} as const;

export async function registerConsole(app: FastifyInstance): Promise<void> {
  // A build without the console (tsc alone) still serves the API; `/` then answers 404.
  if (!existsSync(consoleRoot)) return;
  await app.register(fastifyStatic, {
    root: consoleRoot,
    prefix: '/',
    // One route per built file, so every other path keeps the API's own 404 shape.
    wildcard: false,
    globIgnore: ['**/*.br', '**/*.gz'],
    preCompressed: true,
    index: ['index.html'],
    schemaHide: true,
    setHeaders: (reply) => {
      for (const [name, value] of Object.entries(consoleHeaders)) reply.header(name, value);
    },
  });
}
