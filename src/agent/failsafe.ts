import { Agent as HttpsAgent, request } from 'node:https';
import { type AgentAddress, type LeaseAnswer, agentLeasePath } from '../dataplane/agent-protocol.js';
import type { AgentIdentity } from './identity.js';

/**
 * The failsafe (docs/HOSTS.md): when its heartbeats go unanswered, an agent asks the agents of
 * its primaries' peers whether they hold a lease from the control plane. Only if every one
 * answers "no" is the control plane gone for all of them — and then no one can promote, so the
 * primaries may keep serving. A peer that holds a lease, or that cannot be asked, means this host
 * alone is cut off: the guard fences as usual.
 */

/** The largest answer a peer may send (a LeaseAnswer is a few dozen bytes). */
const answerBytesMax = 4_096;
/** Peers asked at once. */
const peersAtOnceMax = 16;

export type FailsafeVerdict = { readonly serve: true } | { readonly serve: false; readonly why: string };

export class Failsafe {
  private readonly agent: HttpsAgent;

  constructor(identity: AgentIdentity) {
    // Peers present their host certificates (SAN IP: their address), checked against the cell CA.
    this.agent = new HttpsAgent({ keepAlive: true, maxSockets: peersAtOnceMax, key: identity.key, cert: identity.certificate, ca: identity.ca, minVersion: 'TLSv1.3' });
  }

  close(): void {
    this.agent.destroy();
  }

  /** Whether every peer answers, within `timeoutMs`, that it has had no grant for at least `silenceMs`. */
  async verdict(peers: readonly AgentAddress[], silenceMs: number, timeoutMs: number): Promise<FailsafeVerdict> {
    if (peers.length === 0) return { serve: false, why: 'no peers to ask' };
    const asked = peers.slice(0, peersAtOnceMax);
    if (asked.length < peers.length) return { serve: false, why: `more than ${peersAtOnceMax} peers to ask` };
    const answers = await Promise.all(asked.map((peer) => this.ask(peer, timeoutMs).then((answer) => ({ peer, answer }), (error: unknown) => ({ peer, error }))));
    for (const result of answers) {
      const where = `${result.peer.address}:${result.peer.agentPort}`;
      if ('error' in result) return { serve: false, why: `peer ${where} could not be asked: ${result.error instanceof Error ? result.error.message : String(result.error)}` };
      const silentMs = result.answer.silentMs;
      if (silentMs !== null && silentMs < silenceMs) return { serve: false, why: `peer ${where} (host ${result.answer.hostId}) had a grant ${silentMs} ms ago: the control plane is up and this host is cut off from it` };
    }
    return { serve: true };
  }

  private ask(peer: AgentAddress, timeoutMs: number): Promise<LeaseAnswer> {
    return new Promise((resolve, reject) => {
      const outgoing = request(
        { host: peer.address, port: peer.agentPort, path: agentLeasePath, method: 'GET', agent: this.agent, signal: AbortSignal.timeout(timeoutMs) },
        (incoming) => {
          const chunks: Buffer[] = [];
          let bytes = 0;
          incoming.on('data', (chunk: Buffer) => {
            bytes += chunk.length;
            if (bytes > answerBytesMax) incoming.destroy(new Error(`the answer is larger than ${answerBytesMax} bytes`));
            else chunks.push(chunk);
          });
          incoming.on('error', reject);
          incoming.on('end', () => {
            if (incoming.statusCode !== 200) return reject(new Error(`answered ${String(incoming.statusCode)}`));
            try {
              const answer = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Partial<LeaseAnswer>;
              if (typeof answer.leased !== 'boolean' || typeof answer.hostId !== 'string' || !(answer.silentMs === null || (typeof answer.silentMs === 'number' && answer.silentMs >= 0))) return reject(new Error('the answer is not a LeaseAnswer'));
              resolve(answer as LeaseAnswer);
            } catch {
              reject(new Error('the answer is not JSON'));
            }
          });
        },
      );
      outgoing.on('error', reject);
      outgoing.end();
    });
  }
}
