import { existsSync } from 'node:fs';
import type { Socket } from 'node:net';
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
  closeUnusedConnectionsOnClose(app);
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

/**
 * Browsers open spare connections that have not sent a request yet. Fastify closes idle
 * connections on close, but Node counts such a socket as neither idle nor done, so the close
 * waited for Node's headers timeout (60 s): `cellar up` took a minute to stop while a console tab
 * was open. They carry nothing, so they are dropped when the server closes.
 */
function closeUnusedConnectionsOnClose(app: FastifyInstance): void {
  const unused = new Set<Socket>();
  app.server.on('connection', (socket: Socket) => {
    unused.add(socket);
    socket.once('close', () => unused.delete(socket));
  });
  app.server.on('request', (request: { socket: Socket }) => unused.delete(request.socket));
  app.addHook('preClose', async () => {
    for (const socket of unused) socket.destroy();
  });
}
