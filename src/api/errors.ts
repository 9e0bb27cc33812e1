import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { CellarError } from '../lib/errors.js';
import { isStoreUnavailable } from '../store/pool.js';

/**
 * What a client is told to wait while the store does not answer: about what the embedded store's
 * restart takes (crash recovery included), so one retry usually lands.
 */
export const storeRetryAfterSeconds = 2;

/** The sentence a user reads (the CLI prints it as is): what is wrong, what Cellar does, when to retry. */
export function storeUnavailableMessage(embeddedStore: boolean): string {
  const doing = embeddedStore ? 'Cellar is restarting it' : 'check the server at CELLAR_STORE_URL';
  return `the cell store is unavailable (${doing}); try again in ${storeRetryAfterSeconds} s`;
}

/** Per-field messages a route gives for schema failures, so a 400 names the field and its limit. */
export type FieldMessages = Readonly<Record<string, string>>;

declare module 'fastify' {
  interface FastifyContextConfig {
    fieldMessages?: FieldMessages;
  }
}

interface AjvError {
  instancePath: string;
  keyword: string;
  params: Record<string, unknown>;
  message?: string;
}

function fieldOf(error: AjvError): string {
  if (error.keyword === 'required') return String(error.params['missingProperty']);
  if (error.keyword === 'additionalProperties') return String(error.params['additionalProperty']);
  return error.instancePath.replace(/^\//, '').replaceAll('/', '.') || 'body';
}

function validationError(errors: readonly AjvError[], messages: FieldMessages): CellarError {
  const first = errors[0];
  if (first === undefined) return new CellarError('CELLAR_E_INVALID', 'the request is not valid');
  const field = fieldOf(first);
  if (first.keyword === 'additionalProperties') {
    return new CellarError('CELLAR_E_INVALID', `${field}: unknown field; allowed: ${Object.keys(messages).join(', ')}`, field);
  }
  if (first.keyword === 'required') return new CellarError('CELLAR_E_INVALID', `${field} is required`, field);
  return new CellarError('CELLAR_E_INVALID', messages[field] ?? `${field} ${first.message ?? 'is not valid'}`, field);
}

export function errorHandler(log: Logger, embeddedStore: boolean) {
  return (error: FastifyError, request: FastifyRequest, reply: FastifyReply): FastifyReply => {
    let cellarError: CellarError;
    if (error instanceof CellarError) {
      cellarError = error;
    } else if (isStoreUnavailable(error)) {
      // Not logged per request: the store supervisor and the engine log the outage once.
      cellarError = new CellarError('CELLAR_E_STORE_UNAVAILABLE', storeUnavailableMessage(embeddedStore));
      reply.header('retry-after', String(storeRetryAfterSeconds));
    } else if (error.validation) {
      cellarError = validationError(error.validation as AjvError[], request.routeOptions.config.fieldMessages ?? {});
    } else if (error.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      cellarError = new CellarError('CELLAR_E_TOO_LARGE', `the request body is larger than the limit of ${request.routeOptions.bodyLimit} bytes`, 'body');
    } else if (error.statusCode !== undefined && error.statusCode < 500) {
      // Fastify's own client errors: malformed JSON, wrong content type, body too large.
      cellarError = new CellarError('CELLAR_E_INVALID', error.message, 'body');
      return reply.status(error.statusCode).send({ error: cellarError.toJSON() });
    } else {
      log.error({ err: error, url: request.url }, 'request failed');
      cellarError = new CellarError('CELLAR_E_INTERNAL', 'internal error; see the control-plane log');
    }
    return reply.status(cellarError.status).send({ error: cellarError.toJSON() });
  };
}
