import type { AgentOperation } from '../dataplane/agent-protocol.js';
import type { ClusterSecrets, DataPlane, InstanceSpec, RestoreSource, UpstreamRef } from '../dataplane/dataplane.js';
import { TransientError } from '../lib/failure.js';
import type { InstanceId } from '../lib/ids.js';
import type { Lease } from './lease.js';
import type { SpecBook } from './specs.js';

/**
 * The data-plane operations as the agent runs them: the local driver's, with the spec book kept
 * in step (docs/HOSTS.md, "Operations"), the lease respected, and an instance's start, stop,
 * rejoin and destroy never overlapping the agent's own restart of it (supervision).
 */

/** One instance's lifecycle changes run one at a time, in arrival order. */
export class InstanceLocks {
  private readonly tails = new Map<string, Promise<unknown>>();

  run<T>(instanceId: string, work: () => Promise<T>): Promise<T> {
    const next = (this.tails.get(instanceId) ?? Promise.resolve()).then(work, work);
    const settled = next.catch(() => undefined);
    this.tails.set(instanceId, settled);
    void settled.then(() => {
      if (this.tails.get(instanceId) === settled) this.tails.delete(instanceId);
    });
    return next;
  }
}

type Handler = (args: readonly unknown[]) => Promise<unknown>;

export class AgentOperations {
  private readonly handlers: Record<AgentOperation, Handler>;

  constructor(
    private readonly driver: DataPlane,
    private readonly specs: SpecBook,
    private readonly lease: Lease,
    private readonly locks: InstanceLocks,
  ) {
    const spec = (args: readonly unknown[], index = 0) => args[index] as InstanceSpec;
    const upstream = (args: readonly unknown[]) => args[1] as UpstreamRef;
    const id = (args: readonly unknown[]) => args[0] as InstanceId;
    const text = (args: readonly unknown[], index: number) => args[index] as string;
    this.handlers = {
      status: (args) => driver.status(spec(args)),
      alive: (args) => driver.alive(id(args)),
      stop: (args) => this.stop(id(args), args[1] as 'fast' | 'immediate' | undefined),
      setSynchronousStandbys: (args) => driver.setSynchronousStandbys(spec(args), args[1] as string[]),
      allowPeers: async (args) => {
        await specs.record(spec(args));
        await driver.allowPeers(spec(args));
      },
      configure: async (args) => {
        await specs.record(spec(args));
        return driver.configure(spec(args));
      },
      settings: (args) => driver.settings(spec(args)),
      checkpoint: (args) => driver.checkpoint(spec(args)),
      usage: (args) => driver.usage(spec(args)),
      follow: async (args) => {
        await specs.record(spec(args));
        await driver.follow(spec(args), upstream(args));
      },
      promote: async (args) => {
        this.requireLease('promote');
        const refusal = this.lease.promoteRefusal();
        if (refusal !== null) throw new TransientError(`promote refused: ${refusal}`);
        await driver.promote(spec(args));
      },
      dropSlot: (args) => driver.dropSlot(args[0] as UpstreamRef, args[1] as ClusterSecrets),
      start: (args) => this.start(spec(args)),
      createPrimary: async (args) => {
        await specs.record(spec(args));
        await driver.createPrimary(spec(args));
      },
      createReplica: async (args) => {
        await specs.record(spec(args));
        await driver.createReplica(spec(args), upstream(args));
      },
      restorePrimary: async (args) => {
        await specs.record(spec(args));
        await driver.restorePrimary(spec(args), args[1] as RestoreSource);
      },
      rejoin: (args) =>
        locks.run(spec(args).instanceId, async () => {
          // Rejoin leaves the server stopped: nothing restarts it until the control plane says start.
          await specs.record(spec(args), 'stopped');
          return driver.rejoin(spec(args), upstream(args));
        }),
      takeBaseBackup: (args) => driver.takeBaseBackup(spec(args, 0), spec(args, 1), text(args, 2), args[3] as number),
      checkBackup: (args) => driver.checkBackup(text(args, 0), text(args, 1), args[2] as number),
      deleteBackup: (args) => driver.deleteBackup(text(args, 0), text(args, 1)),
      pruneWal: (args) => driver.pruneWal(text(args, 0), text(args, 1)),
      destroy: (args) => this.destroy(id(args)),
      purgeCluster: (args) => driver.purgeCluster(text(args, 0)),
    };
  }

  /** Runs one operation whose arguments the server has checked against its schema. */
  /** Told of each instance an operation may have changed: a status taken before it is stale now. */
  onChanged: (instanceId: string) => void = () => undefined;

  async run(operation: AgentOperation, args: readonly unknown[]): Promise<unknown> {
    try {
      return await this.handlers[operation](args);
    } finally {
      if (operation !== 'status' && operation !== 'alive') {
        const first = args[0] as { instanceId?: unknown } | string | undefined;
        const instanceId = typeof first === 'string' ? first : first?.instanceId;
        if (typeof instanceId === 'string') this.onChanged(instanceId);
      }
    }
  }

  private async start(spec: InstanceSpec): Promise<void> {
    // The spec is recorded first: a start that fails half way is still one the agent knows to report.
    await this.locks.run(spec.instanceId, async () => {
      this.requireLease('start');
      await this.specs.record(spec, 'running');
      await this.driver.start(spec);
    });
  }

  private async stop(instanceId: InstanceId, mode: 'fast' | 'immediate' | undefined): Promise<void> {
    await this.locks.run(instanceId, async () => {
      await this.specs.markStopped(instanceId);
      await this.driver.stop(instanceId, mode);
    });
  }

  private async destroy(instanceId: InstanceId): Promise<void> {
    await this.locks.run(instanceId, async () => {
      await this.specs.markStopped(instanceId);
      await this.driver.destroy(instanceId);
      await this.specs.remove(instanceId);
    });
  }

  /**
   * A server that may take writes is not started or promoted by a host that cannot show a lease:
   * the control plane may already count this host as lost and promote elsewhere.
   */
  private requireLease(operation: string): void {
    if (!this.lease.held()) throw new TransientError(`${operation} refused: this host holds no lease (its heartbeats are not being answered); retry once they are`);
  }
}
