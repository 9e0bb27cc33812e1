import type { TLSSocket } from 'node:tls';
import Fastify, { type FastifyBaseLogger, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import {
  type HeartbeatRequest,
  type HeartbeatResponse,
  type JoinRequest,
  type JoinResponse,
  agentCaPath,
  agentHeartbeatPath,
  agentJoinPath,
  joinTokenLengthMax,
  parseJoinToken,
} from '../dataplane/agent-protocol.js';
import { CellarError } from '../lib/errors.js';
import type { HostId } from '../lib/ids.js';
import { type CertificateAuthorityPaths, type KeyPair, hostValidityDays } from '../pki/ca.js';
import { checkCertificateRequest, csrBytesMax, signHostCertificate } from '../pki/hosts.js';
import type { CertificateStatus, HostStore, JoinRefusal } from '../store/hosts.js';
import { errorHandler } from './errors.js';
import { headerBytesMax } from './guards.js';

/**
 * The control plane's listener for agents (docs/HOSTS.md): HTTPS with TLS 1.3 only, the control
 * certificate, and client certificates of the cell CA asked of every peer. `GET /v1/agent/ca` and
 * `POST /v1/agent/join` are open (a joining host has no certificate yet: its one-time token is
 * the credential); every other request needs a recorded, unrevoked certificate of a host that is
 * not removed, or it is answered 401 and nothing else.
 */

/** What the control plane does with each heartbeat's instance statuses (the router's cache, later). */
export interface HeartbeatSink {
  record(hostId: string, beat: HeartbeatRequest, receivedAtMs: number): void;
}

export interface AgentListenerOptions {
  readonly host: string;
  readonly port: number;
  readonly ca: CertificateAuthorityPaths;
  readonly caPem: string;
  readonly caSha256: string;
  /** The control plane's own certificate (CN=cellar-control). */
  readonly certificate: KeyPair;
  readonly store: HostStore;
  readonly sink: HeartbeatSink;
  readonly leaseMs: number;
  readonly heartbeatMs: number;
  readonly clockMarginMs: number;
  readonly log: Logger;
  /** Whether Cellar runs the store itself, for what a 503 tells the agent. */
  readonly embeddedStore: boolean;
}

export interface AgentListener {
  /** `https://host:port` as bound. */
  readonly url: string;
  close(): Promise<void>;
}

/** A join carries a token and a CSR. */
export const joinBodyBytesMax = csrBytesMax + 4 * 1024;
/** A heartbeat lists every instance of a full host with its status (about 1 KiB each). */
export const heartbeatBodyBytesMax = 2 * 1024 * 1024;
export const heartbeatInstancesMax = 1_000;
/** A host writes to its data directory, its backups and its home: a few filesystems at most. */
export const hostFilesystemsMax = 8;
/** A certificate's status is looked up at most this often: a beat every 250 ms should not cost a query each for it. */
export const certificateStatusCacheMs = 1_000;
/** Bounds the cache whatever peers present: past this many serials it starts afresh. */
export const certificateStatusCacheEntriesMax = 10_000;

const joinRefusals: Readonly<Record<JoinRefusal, string>> = {
  unknown: 'the join token is not known (mistyped, or replaced by a newer one)',
  used: 'the join token was used already: a join token works once; ask for a new one with `cellar hosts token NAME`',
  expired: 'the join token has expired; ask for a new one with `cellar hosts token NAME`',
  removed: 'the host of this join token was removed',
};

const joinBody = {
  type: 'object',
  required: ['token', 'csr'],
  additionalProperties: false,
  properties: {
    token: { type: 'string', minLength: 1, maxLength: joinTokenLengthMax },
    csr: { type: 'string', minLength: 1, maxLength: csrBytesMax },
  },
} as const;

const heartbeatBody = {
  type: 'object',
  required: ['hostId', 'instances', 'leaseLeftMs'],
  properties: {
    hostId: { type: 'string', minLength: 1, maxLength: 64 },
    leaseLeftMs: { type: 'integer', minimum: 0 },
    instances: {
      type: 'array',
      maxItems: heartbeatInstancesMax,
      items: {
        type: 'object',
        required: ['instanceId', 'alive'],
        properties: {
          instanceId: { type: 'string', minLength: 1, maxLength: 64 },
          alive: { type: 'boolean' },
          status: { type: 'object' },
          statusAgeMs: { type: 'integer', minimum: 0 },
        },
      },
    },
    usage: {
      type: 'object',
      required: ['filesystems'],
      additionalProperties: false,
      properties: {
        filesystems: {
          type: 'array',
          maxItems: hostFilesystemsMax,
          items: {
            type: 'object',
            required: ['path', 'purposes', 'totalBytes', 'freeBytes', 'availableBytes'],
            additionalProperties: false,
            properties: {
              path: { type: 'string', minLength: 1, maxLength: 4096 },
              purposes: { type: 'array', maxItems: hostFilesystemsMax, items: { type: 'string', minLength: 1, maxLength: 32 } },
              totalBytes: { type: 'integer', minimum: 0 },
              freeBytes: { type: 'integer', minimum: 0 },
              availableBytes: { type: 'integer', minimum: 0 },
            },
          },
        },
      },
    },
  },
} as const;

declare module 'fastify' {
  interface FastifyRequest {
    agentHostId: string | null;
  }
}

function unauthenticated(message: string): CellarError {
  return new CellarError('CELLAR_E_AGENT_UNAUTHENTICATED', message);
}

export async function startAgentListener(options: AgentListenerOptions): Promise<AgentListener> {
  const { store } = options;
  const app = Fastify({
    loggerInstance: options.log.child({ component: 'agent-listener' }, { level: 'warn' }) as FastifyBaseLogger,
    https: {
      key: options.certificate.key,
      cert: options.certificate.cert,
      ca: options.caPem,
      requestCert: true,
      // A joining agent has no certificate yet: the hook below refuses the others itself.
      rejectUnauthorized: false,
      minVersion: 'TLSv1.3',
      maxHeaderSize: headerBytesMax,
    },
    bodyLimit: joinBodyBytesMax,
  });
  app.setErrorHandler(errorHandler(options.log, options.embeddedStore));
  app.setNotFoundHandler((request, reply) => reply.status(404).send({ error: new CellarError('CELLAR_E_NOT_FOUND', `no route ${request.method} ${request.url.slice(0, 200)}`, 'url').toJSON() }));
  app.decorateRequest('agentHostId', null);

  const statuses = new Map<string, { readonly status: CertificateStatus | null; readonly atMs: number }>();
  async function certificateStatus(serial: string): Promise<CertificateStatus | null> {
    const nowMs = Date.now();
    const cached = statuses.get(serial);
    if (cached !== undefined && nowMs - cached.atMs < certificateStatusCacheMs) return cached.status;
    const status = await store.certificateStatus(serial);
    if (statuses.size >= certificateStatusCacheEntriesMax) statuses.clear();
    statuses.set(serial, { status, atMs: nowMs });
    return status;
  }

  /** The host of the peer's certificate, or a 401. */
  async function authenticate(request: FastifyRequest): Promise<string> {
    const socket = request.raw.socket as TLSSocket;
    if (!socket.authorized) throw unauthenticated(`a client certificate of the cell CA is required (${String(socket.authorizationError ?? 'none presented')})`);
    const serial = socket.getPeerCertificate().serialNumber?.toUpperCase();
    if (serial === undefined || serial === '') throw unauthenticated('the client certificate has no serial');
    const status = await certificateStatus(serial);
    if (status === null) throw unauthenticated('the client certificate is not one the cell issued to a host');
    if (status.revoked) throw unauthenticated('the client certificate is revoked');
    if (status.hostRemoved) throw unauthenticated('the host of this certificate was removed');
    if (status.expired) throw unauthenticated('the client certificate has expired');
    return status.hostId;
  }

  app.addHook('onRequest', async (request) => {
    const path = request.url.split('?')[0];
    if (path === agentCaPath || path === agentJoinPath) return;
    request.agentHostId = await authenticate(request);
  });

  app.get(agentCaPath, async (_request, reply) => reply.type('application/x-pem-file').send(options.caPem));

  app.post<{ Body: JoinRequest }>(agentJoinPath, { schema: { body: joinBody } }, async (request): Promise<JoinResponse> => {
    const parsed = parseJoinToken(request.body.token);
    if ('problem' in parsed) throw new CellarError('CELLAR_E_JOIN_TOKEN', parsed.problem, 'token');
    if (parsed.caSha256 !== options.caSha256) throw new CellarError('CELLAR_E_JOIN_TOKEN', "the join token is for another cell: its CA fingerprint is not this cell's", 'token');
    // A bad CSR is refused before the token is spent.
    await checkCertificateRequest(options.ca, request.body.csr);
    const outcome = await store.consumeJoinToken(parsed.hostId, parsed.secret, (host) =>
      signHostCertificate(options.ca, request.body.csr, { name: host.name, address: host.address, validityDays: hostValidityDays }),
    );
    if ('refused' in outcome) throw new CellarError('CELLAR_E_JOIN_TOKEN', joinRefusals[outcome.refused], 'token');
    const { host, issued } = outcome;
    options.log.info({ host: host.name, hostId: host.id, serial: issued.serial }, 'host joined');
    return { hostId: host.id, name: host.name, address: host.address, agentPort: host.agentPort, certificate: issued.certificate, ca: options.caPem };
  });

  app.post<{ Body: HeartbeatRequest }>(agentHeartbeatPath, { bodyLimit: heartbeatBodyBytesMax, schema: { body: heartbeatBody } }, async (request): Promise<HeartbeatResponse> => {
    const hostId = request.agentHostId;
    if (hostId === null || request.body.hostId !== hostId) throw unauthenticated(`the heartbeat's hostId ${JSON.stringify(request.body.hostId)} is not the host of the client certificate`);
    await store.renewLease(hostId as HostId);
    if (request.body.usage !== undefined) await store.recordUsage(hostId as HostId, request.body.usage);
    options.sink.record(hostId, request.body, Date.now());
    return { leaseMs: options.leaseMs, heartbeatMs: options.heartbeatMs, clockMarginMs: options.clockMarginMs, instances: await store.desiredInstances(hostId as HostId) };
  });

  try {
    await app.listen({ host: options.host, port: options.port });
  } catch (error) {
    await app.close();
    if ((error as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      throw new Error(`the agent listener's port ${options.host}:${options.port} is in use; set CELLAR_AGENT_LISTEN_PORT to another port`);
    }
    throw error;
  }
  const address = app.server.address();
  const port = typeof address === 'object' && address !== null ? address.port : options.port;
  const shownHost = options.host.includes(':') ? `[${options.host}]` : options.host;
  return { url: `https://${shownHost}:${port}`, close: () => app.close() };
}
