import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { CellarError } from '../lib/errors.js';

/**
 * Limits on what a request may be, and answers in the one error shape for every request that
 * breaks them, including those Fastify and Node refuse before any route runs (unknown routes,
 * malformed URLs, oversized headers).
 */

export const requestBodyBytesMax = 64 * 1024;
/** Path and query string; longer is 414. */
export const urlBytesMax = 4_096;
/** Node's limit on the request line plus headers; larger is 431. */
export const headerBytesMax = 16 * 1024;
/** Names are at most 40 characters and ids about 15: anything near this is not one. */
export const pathParameterLengthMax = 200;
/** How deep the control-character check walks a JSON body; the schemas refuse deeper bodies anyway. */
const bodyDepthMax = 8;
/** How much of a bad URL an error message repeats. */
const echoedUrlCharsMax = 200;

// Postgres refuses NUL in text (a 500 before), and no name, id or label has a use for the others.
const controlCharacter = /[\u0000-\u001f\u007f]/;

function send(reply: FastifyReply, error: CellarError): FastifyReply {
  return reply.status(error.status).send({ error: error.toJSON() });
}

function echo(url: string): string {
  return url.length > echoedUrlCharsMax ? `${url.slice(0, echoedUrlCharsMax)}…` : url;
}

/** Routing failures Fastify reports before any route or hook runs. */
function frameworkErrors(error: FastifyError, _request: FastifyRequest, reply: FastifyReply): FastifyReply {
  if (error.code === 'FST_ERR_MAX_PARAM_LENGTH') return send(reply, new CellarError('CELLAR_E_URI_TOO_LONG', `the URL is longer than the limit of ${urlBytesMax} bytes`, 'url'));
  return send(reply, new CellarError('CELLAR_E_INVALID', 'the URL is not valid (malformed percent-encoding?); encode each path segment with encodeURIComponent', 'url'));
}

/** Requests Node's HTTP parser refuses (headers too large, not HTTP at all): no request object exists. */
function clientErrorHandler(error: Error & { code?: string }, socket: Socket): void {
  if (error.code === 'ECONNRESET' || socket.destroyed) return;
  const cellarError =
    error.code === 'HPE_HEADER_OVERFLOW'
      ? new CellarError('CELLAR_E_HEADERS_TOO_LARGE', `the request line and headers are larger than the limit of ${headerBytesMax} bytes`, 'headers')
      : new CellarError('CELLAR_E_INVALID', 'the request is not valid HTTP/1.1', 'request');
  const body = JSON.stringify({ error: cellarError.toJSON() });
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${cellarError.status} ${STATUS_CODES[cellarError.status] ?? ''}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy();
}

/** Fastify options that carry the limits; merged into the server's options. */
export const guardedServerOptions = {
  bodyLimit: requestBodyBytesMax,
  http: { maxHeaderSize: headerBytesMax },
  // Long parameters reach the route so that the 400 names the field; the URL limit bounds them.
  routerOptions: { maxParamLength: urlBytesMax },
  frameworkErrors,
  clientErrorHandler,
};

/** The first field holding a control character: `prefix.key.key`, or null. */
function controlCharacterField(value: unknown, path: string, depth: number): string | null {
  if (typeof value === 'string') return controlCharacter.test(value) ? path : null;
  if (depth >= bodyDepthMax || value === null || typeof value !== 'object') return null;
  for (const [key, inner] of Object.entries(value)) {
    const found = controlCharacterField(inner, path === '' ? key : `${path}.${key}`, depth + 1);
    if (found !== null) return found;
  }
  return null;
}

function checkPathParameters(params: unknown): void {
  for (const [field, value] of Object.entries((params ?? {}) as Record<string, unknown>)) {
    if (typeof value !== 'string') continue;
    if (value.length > pathParameterLengthMax) throw new CellarError('CELLAR_E_INVALID', `${field} is longer than the limit of ${pathParameterLengthMax} characters`, field);
  }
}

/** Hooks: the URL limit before anything else (the token lookup included), control characters before validation. */
export function registerInputGuards(app: FastifyInstance): void {
  app.addHook('onRequest', async (request) => {
    if (Buffer.byteLength(request.url) > urlBytesMax) throw new CellarError('CELLAR_E_URI_TOO_LONG', `the URL is longer than the limit of ${urlBytesMax} bytes`, 'url');
  });
  app.addHook('preValidation', async (request) => {
    checkPathParameters(request.params);
    for (const value of [request.params, request.query, request.body]) {
      const field = controlCharacterField(value, '', 0);
      if (field !== null) throw new CellarError('CELLAR_E_INVALID', `${field || 'body'} must not contain control characters (U+0000-U+001F, U+007F)`, field || 'body');
    }
  });
  app.setNotFoundHandler((request, reply) =>
    send(reply, new CellarError('CELLAR_E_NOT_FOUND', `no route ${request.method} ${echo(request.url)}; the API's routes are listed at /openapi.json`, 'url')),
  );
}
