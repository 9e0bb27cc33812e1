import { randomBytes } from 'node:crypto';
import { readFile, readdir } from 'node:fs/promises';
import { type Server, type Socket, connect, createServer } from 'node:net';
import { connect as tlsConnect, createSecureContext } from 'node:tls';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { freePort } from '../src/lib/net.js';
import { ProxyMetrics } from '../src/proxy/metrics.js';
import { NativeRelay } from '../src/proxy/native-relay.js';
import { backendKeyData, buildStartupPacket } from '../src/proxy/protocol.js';
import type { ProxyRoutes, Resolution } from '../src/proxy/routes.js';
import { ProxyServer } from '../src/proxy/server.js';

/**
 * Churn through the native relay, for bench/asan-relay.sh: plain, SSLRequest and direct-TLS
 * connections, each either completing an echo of a payload far past a socket buffer (partial
 * writes both ways) or vanishing at a stage (before its startup packet, right after startup, in
 * the middle of the echo). The relay runs in this process, loaded from `--addon`, so a sanitizer
 * preloaded into this process sees every pair it makes and ends. Prints what it did; exits 1 if
 * a completed echo came back different or the proxy kept a connection or descriptor.
 *
 * The server behind the proxy is a stand-in that answers a startup at once and then echoes (the
 * relay only moves bytes; a Postgres server would add nothing the sanitizer looks at).
 */

const domain = 'cellar.localhost';
const cluster = 'churn';
const payloadBytes = 256 * 1024;
const sessionMsMax = 20_000;
const drainMsMax = 20_000;
const drainPollMs = 50;
const concurrency = 8;

type Mode = 'plain' | 'ssl' | 'direct';
type Ending = 'complete' | 'beforeStartup' | 'afterStartup' | 'midEcho';
const modes: readonly Mode[] = ['plain', 'ssl', 'direct'];
const endings: readonly Ending[] = ['complete', 'beforeStartup', 'afterStartup', 'midEcho'];

function message(type: string, body: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.write(type, 0, 'latin1');
  header.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([header, body]);
}

/** Answers the startup packet with AuthenticationOk, BackendKeyData and ReadyForQuery, then echoes. */
function echoBackend(): Promise<{ server: Server; port: number }> {
  const answer = Buffer.concat([message('R', Buffer.from([0, 0, 0, 0])), backendKeyData(4242, 2424), message('Z', Buffer.from('I'))]);
  const server = createServer((socket) => {
    socket.on('error', () => socket.destroy());
    let startup: Buffer | null = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      if (startup === null) return void socket.write(chunk);
      startup = Buffer.concat([startup, chunk]);
      if (startup.length < 4 || startup.length < startup.readInt32BE(0)) return;
      const rest = startup.subarray(startup.readInt32BE(0));
      startup = null;
      socket.write(answer);
      if (rest.length > 0) socket.write(rest);
    });
    socket.on('end', () => socket.end());
  });
  return new Promise((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, () => resolve({ server, port: (server.address() as { port: number }).port })));
}

/** Reads from `socket` until `done(buffer)` says so; rejects on close first or after the session limit. */
function readUntil(socket: Socket, done: (buffer: Buffer) => boolean): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let buffer = Buffer.alloc(0);
    const timer = setTimeout(() => finish(new Error(`no answer within ${sessionMsMax} ms`)), sessionMsMax);
    const onData = (chunk: Buffer): void => {
      buffer = Buffer.concat([buffer, chunk]);
      if (done(buffer)) finish(null);
    };
    const onClose = (): void => finish(new Error('closed early'));
    const finish = (error: Error | null): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
      if (error === null) resolve(buffer);
      else reject(error);
    };
    socket.on('data', onData);
    socket.once('close', onClose);
  });
}

/** The socket to speak the startup phase on: plain, after an SSLRequest, or direct TLS. */
async function open(port: number, mode: Mode): Promise<Socket> {
  if (mode === 'direct') {
    const socket = tlsConnect({ host: '127.0.0.1', port, servername: `${cluster}.${domain}`, ALPNProtocols: ['postgresql'], rejectUnauthorized: false });
    socket.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', resolve);
      socket.once('close', () => reject(new Error('closed during the handshake')));
    });
    return socket;
  }
  const raw = connect({ host: '127.0.0.1', port });
  raw.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    raw.once('connect', resolve);
    raw.once('close', () => reject(new Error('closed before connecting')));
  });
  if (mode === 'plain') return raw;
  const sslRequest = Buffer.alloc(8);
  sslRequest.writeInt32BE(8, 0);
  sslRequest.writeInt32BE(80877103, 4);
  raw.write(sslRequest);
  const answer = await readUntil(raw, (buffer) => buffer.length >= 1);
  if (answer.toString('latin1') !== 'S') throw new Error(`SSLRequest answered ${JSON.stringify(answer.toString('latin1'))}`);
  const secure = tlsConnect({ socket: raw, servername: `${cluster}.${domain}`, rejectUnauthorized: false });
  secure.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    secure.once('secureConnect', resolve);
    secure.once('close', () => reject(new Error('closed during the handshake')));
  });
  return secure;
}

/** Whether `buffer` holds a ReadyForQuery after whole messages. */
function hasReadyForQuery(buffer: Buffer): boolean {
  let offset = 0;
  while (offset + 5 <= buffer.length) {
    if (buffer[offset] === 'Z'.charCodeAt(0)) return true;
    offset += 1 + buffer.readInt32BE(offset + 1);
  }
  return false;
}

/** One session; true when it completed an echo that came back whole. */
async function session(port: number, mode: Mode, ending: Ending): Promise<boolean> {
  const socket = await open(port, mode);
  try {
    if (ending === 'beforeStartup') return false;
    socket.write(buildStartupPacket(new Map([['user', `app.${cluster}`]])));
    const startup = await readUntil(socket, hasReadyForQuery);
    if (ending === 'afterStartup') return false;
    const payload = randomBytes(payloadBytes);
    const extra = startup.length;
    socket.write(payload);
    if (ending === 'midEcho') {
      await readUntil(socket, (buffer) => buffer.length > 1);
      return false;
    }
    const echoed = await readUntil(socket, (buffer) => buffer.length >= payloadBytes);
    if (!echoed.equals(payload)) throw new Error(`${mode}: the echo came back different (${echoed.length} bytes, startup ${extra})`);
    return true;
  } finally {
    socket.destroy();
  }
}

async function descriptorCount(): Promise<number> {
  return (await readdir('/proc/self/fd')).length;
}

async function waitFor(what: string, check: () => Promise<boolean> | boolean): Promise<void> {
  const deadline = performance.now() + drainMsMax;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`gave up waiting for ${what} after ${drainMsMax} ms`);
    await new Promise((resolve) => setTimeout(resolve, drainPollMs));
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { addon: { type: 'string' }, cert: { type: 'string' }, key: { type: 'string' }, sessions: { type: 'string', default: '600' } } });
  if (values.addon === undefined || values.cert === undefined || values.key === undefined) throw new Error('usage: relay-churn --addon RELAY.node --cert CERT.pem --key KEY.pem [--sessions N]');
  const sessions = Number(values.sessions);
  const [cert, key] = [await readFile(values.cert, 'utf8'), await readFile(values.key, 'utf8')];
  const log = pino({ level: 'warn' });
  const relay = NativeRelay.load(log, values.addon);
  if (relay === null) throw new Error(`cannot load ${values.addon}`);
  relay.configureTls(cert, key);
  relay.start();
  const backend = await echoBackend();
  const routes: ProxyRoutes = {
    resolve: (name): Resolution => (name === cluster ? { target: { host: '127.0.0.1', port: backend.port, clusterKey: cluster, storageFull: false } } : { unknown: true }),
    refreshNow: () => Promise.resolve(),
    has: (name) => name === cluster,
    storageFull: () => null,
    onChange: () => undefined,
    stillRouted: () => true,
  };
  const port = await freePort();
  const secureContext = createSecureContext({ cert, key });
  const metrics = new ProxyMetrics();
  const proxy = new ProxyServer({
    host: '127.0.0.1',
    readWritePort: port,
    readOnlyPort: await freePort(),
    routes,
    log,
    metrics,
    relay,
    tls: { domain, secureContext: () => secureContext },
    limits: { clusterConnectionsMax: 1_000, clusterConnectsPerSecond: 100_000, clusterBytesPerSecond: 0, waitMsMax: 1_000, startupMsMax: 10_000 },
  });
  await proxy.start();
  const descriptorsBefore = await descriptorCount();
  const startedMs = performance.now();
  let next = 0;
  let completed = 0;
  let failed = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < sessions) {
        const index = next++;
        const mode = modes[index % modes.length] as Mode;
        const ending = endings[Math.floor(index / modes.length) % endings.length] as Ending;
        try {
          if (await session(port, mode, ending)) completed += 1;
        } catch (error) {
          failed += 1;
          console.error(`session ${index} (${mode}, ${ending}): ${error instanceof Error ? error.message : String(error)}`);
        }
      }
    }),
  );
  const churnMs = performance.now() - startedMs;
  await waitFor('every connection to end in the proxy', () => proxy.cancelKeyCount === 0);
  await waitFor('the descriptors to return to their count before', async () => (await descriptorCount()) <= descriptorsBefore);
  proxy.flushMetrics();
  const relayed = (await metrics.registry.getSingleMetricAsString('cellar_proxy_native_relay_total')).match(/ (\d+)$/m)?.[1] ?? '0';
  relay.stop();
  await proxy.stop();
  await new Promise((resolve) => backend.server.close(resolve));
  console.log(`relay churn: ${sessions} sessions (${modes.join('/')} × ${endings.join('/')}) in ${(churnMs / 1000).toFixed(1)} s; ${completed} echoes of ${payloadBytes} bytes came back whole; ${relayed} pairs went to the native relay; ${failed} sessions failed`);
  if (failed > 0) process.exitCode = 1;
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.stack : String(error));
  process.exitCode = 1;
});
