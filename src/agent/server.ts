import type { TLSSocket } from 'node:tls';
import { fastify, type FastifyError, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { type AgentError, type AgentOperation, type LeaseAnswer, type OperationRequest, agentLeasePath, agentOperationPathPrefix, controlCommonName } from '../dataplane/agent-protocol.js';
import { dataPlaneLimitsMs } from '../dataplane/dataplane.js';
import { runWithAbortSignal } from '../lib/abort.js';
import { CellarError, type ErrorCode } from '../lib/errors.js';
import { type FailureKind, TransientError, classifyFailure } from '../lib/failure.js';
import type { AgentIdentity } from './identity.js';
import type { Lease } from './lease.js';
import type { AgentOperations } from './operations.js';
import { operationBodySchema } from './schemas.js';

/**
 * The agent's listener (docs/HOSTS.md, "Operations"): HTTPS on the host's address, TLS 1.3,
 * mutual: a client without a certificate of the cell CA fails the handshake. Operations are
 * served to the control plane's certificate alone; a peer host may ask about the lease.
 */

/** `{args}` of the largest operation (two specs) is a few kilobytes. */
export const operationBodyBytesMax = 64 * 1024;
export const operations = Object.keys(dataPlaneLimitsMs) as AgentOperation[];

export interface AgentServerOptions {
  readonly identity: AgentIdentity;
  readonly operations: AgentOperations;
  readonly lease: Lease;
  readonly log: Logger;
}

export type AgentServer = ReturnType<typeof buildAgentServer>;

export async function startAgentServer(options: AgentServerOptions): Promise<AgentServer> {
  const server = buildAgentServer(options);
  try {
    await server.listen({ host: options.identity.address, port: options.identity.agentPort });
  } catch (error) {
    await server.close();
    if ((error as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      throw new Error(`the agent port ${options.identity.address}:${options.identity.agentPort} is in use; is another agent running on this host?`);
    }
    throw error;
  }
  return server;
}

export function buildAgentServer(options: AgentServerOptions) {
  const { identity, log } = options;
  const server = fastify({
    https: { key: identity.key, cert: identity.certificate, ca: identity.ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' },
    bodyLimit: operationBodyBytesMax,
    // Checked as sent: a string where a port goes is the caller's bug, not something to coerce.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, strictTuples: false } },
    logger: false,
  });

  server.setErrorHandler((error: FastifyError, request, reply) => {
    if (error.validation) return sendError(reply, 'CELLAR_E_INVALID', `args of ${operationOf(request)}: ${error.message}`, 'invariant');
    if (error.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return sendError(reply, 'CELLAR_E_TOO_LARGE', `the request body is larger than the limit of ${operationBodyBytesMax} bytes`, 'invariant');
    if (error.statusCode !== undefined && error.statusCode < 500) return sendError(reply, 'CELLAR_E_INVALID', error.message, 'invariant');
    log.error({ err: error, url: request.url }, 'agent request failed');
    return sendError(reply, 'CELLAR_E_INTERNAL', 'internal error; see the agent log', 'transient');
  });
  server.setNotFoundHandler((request, reply) => {
    if (request.url.startsWith(agentOperationPathPrefix)) {
      return sendError(reply, 'CELLAR_E_INVALID', `unknown operation ${request.url.slice(agentOperationPathPrefix.length, 100)}; known: ${operations.join(', ')}`, 'invariant');
    }
    return sendError(reply, 'CELLAR_E_NOT_FOUND', `no route ${request.method} ${request.url.slice(0, 200)}`, 'permanent');
  });

  server.get(agentLeasePath, async (): Promise<LeaseAnswer> => ({ hostId: identity.hostId, leased: options.lease.granted(), leftMs: options.lease.leftMs(), silentMs: options.lease.silentMs() }));

  for (const operation of operations) {
    server.post(`${agentOperationPathPrefix}${operation}`, {
      schema: { body: operationBodySchema(operation) },
      // Before the body is read: a host's certificate learns nothing of what an operation would have done.
      onRequest: async (request, reply) => {
        const commonName = peerCommonName(request);
        if (commonName !== controlCommonName) {
          return sendError(reply, 'CELLAR_E_FORBIDDEN', `operations are served to the control plane's certificate (CN=${controlCommonName}) only; this one is CN=${commonName ?? '(none)'}`, 'permanent');
        }
        return undefined;
      },
      handler: (request, reply) => runOperation(options, operation, request, reply),
    });
  }
  return server;
}

async function runOperation(options: AgentServerOptions, operation: AgentOperation, request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
  const { args } = request.body as OperationRequest;
  const limitMs = dataPlaneLimitsMs[operation];
  const controller = new AbortController();
  // The control plane gave up (its bound passed, or it died): the operation's waits and children stop too.
  const socket = request.raw.socket;
  const onClose = (): void => controller.abort(new TransientError(`the control plane closed the connection; ${operation} abandoned`));
  socket.once('close', onClose);
  const timer = setTimeout(() => controller.abort(new TransientError(`${operation} exceeded its bound of ${limitMs} ms`)), limitMs);
  const startedMs = performance.now();
  try {
    const result = await runWithAbortSignal(controller.signal, () => options.operations.run(operation, args));
    options.log.debug({ operation, durationMs: Math.round(performance.now() - startedMs) }, 'operation done');
    return reply.send({ result: result ?? null });
  } catch (error) {
    const failure = classifyFailure(error);
    const message = error instanceof Error ? error.message : String(error);
    options.log.warn({ operation, failure, err: message, durationMs: Math.round(performance.now() - startedMs) }, 'operation failed');
    return sendError(reply, 'CELLAR_E_OPERATION_FAILED', message, failure);
  } finally {
    clearTimeout(timer);
    socket.off('close', onClose);
  }
}

function sendError(reply: FastifyReply, code: ErrorCode, message: string, failure: FailureKind): FastifyReply {
  const body: AgentError = { ...new CellarError(code, message).toJSON(), failure };
  return reply.status(new CellarError(code, message).status).send({ error: body });
}

function peerCommonName(request: FastifyRequest): string | undefined {
  const socket = request.raw.socket as TLSSocket;
  if (!socket.authorized) return undefined;
  const commonName = socket.getPeerCertificate().subject?.CN;
  return typeof commonName === 'string' ? commonName : undefined;
}

function operationOf(request: FastifyRequest): string {
  return request.url.startsWith(agentOperationPathPrefix) ? request.url.slice(agentOperationPathPrefix.length, 100) : request.url.slice(0, 100);
}
