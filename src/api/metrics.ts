import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Gauge, Registry } from 'prom-client';
import { CellarError } from '../lib/errors.js';
import { bytesPerStorageGb, storageAllocatedBytes, storageUse } from '../lib/sizes.js';
import { type StorageFigures, readStorageFigures } from '../store/storage-figures.js';
import type { Pool } from '../store/pool.js';
import type { TokenOwner } from '../store/tenancy.js';
import { storeRetryAfterSeconds } from './errors.js';

/**
 * `GET /metrics` (docs/STORAGE.md, "Metrics"): the cell's measured storage in Prometheus' text
 * format, for admins (the series name every org's clusters and the shared hosts). Gauges are
 * filled from the store at each scrape and cleared first, so a deleted cluster's series are gone
 * from the next one and the series set is bounded by what exists.
 */

export const metricsPath = '/metrics';
/** A scrape answers within this, or 503: a slow store must not pile up scrapes. */
export const metricsScrapeMsMax = 5_000;
/** Each query of a scrape; under the scrape's bound so the store gives the connection back by itself. */
const metricsStatementMsMax = 4_000;
/** SQLSTATE query_canceled: the statement timeout fired. */
const queryCanceledSqlState = '57014';

export interface MetricsOptions {
  /** Bytes in one GB of a cluster's allocation; default binary (src/lib/sizes.ts). */
  readonly bytesPerGb?: number;
}

const instanceLabels = ['org', 'cluster', 'instance', 'role', 'host'] as const;
const clusterLabels = ['org', 'cluster'] as const;
const filesystemLabels = ['host', 'path', 'purposes'] as const;

export class ControlPlaneMetrics {
  readonly registry = new Registry();
  private readonly instanceData = this.gauge('cellar_instance_data_bytes', "An instance's data directory without pg_wal, on disk, as last measured", instanceLabels);
  private readonly instanceWal = this.gauge('cellar_instance_wal_bytes', "An instance's pg_wal on disk, as last measured", instanceLabels);
  private readonly instanceAge = this.gauge('cellar_instance_usage_age_seconds', "Since the instance's use was last measured (store clock)", instanceLabels);
  private readonly clusterAllocated = this.gauge('cellar_cluster_storage_allocated_bytes', "The cluster's allocation (storageGb in bytes)", clusterLabels);
  private readonly clusterUsed = this.gauge('cellar_cluster_storage_used_bytes', "The cluster's use against its allocation: its primary's data and WAL, as last measured", clusterLabels);
  private readonly clusterReadOnly = this.gauge('cellar_cluster_storage_read_only', '1 while the cluster\'s primary is read-only because its storage is full (docs/STORAGE.md "Limits"), else 0', clusterLabels);
  private readonly filesystemTotal = this.gauge('cellar_host_filesystem_total_bytes', 'Size of a filesystem a host writes to', filesystemLabels);
  private readonly filesystemFree = this.gauge('cellar_host_filesystem_free_bytes', 'Free bytes of a filesystem a host writes to', filesystemLabels);
  private readonly filesystemAvailable = this.gauge('cellar_host_filesystem_available_bytes', 'Bytes Postgres (not root) may still write on a filesystem a host writes to', filesystemLabels);
  private readonly hostAge = this.gauge('cellar_host_usage_age_seconds', "Since the host's filesystems were last measured (store clock)", ['host']);

  constructor(private readonly bytesPerGb: number = bytesPerStorageGb) {}

  private gauge<Label extends string>(name: string, help: string, labelNames: readonly Label[]): Gauge<Label> {
    return new Gauge({ name, help, labelNames, registers: [this.registry] });
  }

  /** Replaces every series by the figures given: what is not in them is not reported. */
  update(figures: StorageFigures): void {
    this.registry.resetMetrics();
    const clusters = new Map(figures.clusters.map((cluster) => [cluster.id, cluster]));
    for (const cluster of figures.clusters) {
      this.clusterAllocated.labels(cluster.org, cluster.name).set(storageAllocatedBytes(cluster.storageGb, this.bytesPerGb));
      this.clusterReadOnly.labels(cluster.org, cluster.name).set(cluster.readOnly ? 1 : 0);
    }
    for (const instance of figures.instances) {
      const cluster = clusters.get(instance.clusterId);
      if (cluster === undefined) continue;
      if (instance.role === 'primary') {
        const use = instance.usageMeasuredAt === null ? null : storageUse(cluster.storageGb, this.bytesPerGb, instance.usage);
        if (use !== null) this.clusterUsed.labels(cluster.org, cluster.name).set(use.usedBytes);
      }
      if (instance.usage === null) continue;
      const labels = [cluster.org, cluster.name, instance.id, instance.role, instance.host] as const;
      this.instanceData.labels(...labels).set(instance.usage.dataBytes);
      this.instanceWal.labels(...labels).set(instance.usage.walBytes);
      if (instance.usageAgeSeconds !== null) this.instanceAge.labels(...labels).set(instance.usageAgeSeconds);
    }
    for (const host of figures.hosts) {
      if (host.usage === null) continue;
      if (host.usageAgeSeconds !== null) this.hostAge.labels(host.name).set(host.usageAgeSeconds);
      for (const filesystem of host.usage.filesystems) {
        const labels = [host.name, filesystem.path, [...filesystem.purposes].sort().join(',')] as const;
        this.filesystemTotal.labels(...labels).set(filesystem.totalBytes);
        this.filesystemFree.labels(...labels).set(filesystem.freeBytes);
        this.filesystemAvailable.labels(...labels).set(filesystem.availableBytes);
      }
    }
  }
}

/** The figures, or a 503 when the store does not give them within the scrape's bound. */
async function figuresWithin(pool: Pool): Promise<StorageFigures> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(storeTooSlow()), metricsScrapeMsMax);
  });
  try {
    return await Promise.race([readStorageFigures(pool, metricsStatementMsMax), deadline]);
  } catch (error) {
    if ((error as { code?: unknown }).code === queryCanceledSqlState) throw storeTooSlow();
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

function storeTooSlow(): CellarError {
  return new CellarError('CELLAR_E_STORE_UNAVAILABLE', `the cell store did not give the metrics within ${metricsScrapeMsMax} ms (metricsScrapeMsMax); try again in ${storeRetryAfterSeconds} s`);
}

const errorRef = { $ref: 'cellarError#' } as const;

export function registerMetricsRoute(app: FastifyInstance, pool: Pool, ownerOf: (request: FastifyRequest) => TokenOwner, options: MetricsOptions = {}): void {
  const metrics = new ControlPlaneMetrics(options.bytesPerGb);
  // One scrape at a time: concurrent scrapes would reset each other's gauges mid-render.
  let scraping: Promise<string> | null = null;
  const scrape = async (): Promise<string> => {
    metrics.update(await figuresWithin(pool));
    return metrics.registry.metrics();
  };
  app.get(
    metricsPath,
    {
      schema: {
        summary: "The cell's measured storage in Prometheus' text format (admin)",
        description: 'Gauges read from the store at each scrape: per instance data and WAL bytes, per cluster allocated and used bytes, per host filesystem total, free and available bytes (docs/STORAGE.md, "Metrics").',
        response: {
          200: { description: 'Prometheus text exposition format 0.0.4', content: { 'text/plain': { schema: { type: 'string' } } } },
          401: errorRef,
          403: errorRef,
          503: errorRef,
        },
      },
    },
    async (request, reply) => {
      if (!ownerOf(request).admin) throw new CellarError('CELLAR_E_FORBIDDEN', "the metrics name every org's clusters and the cell's hosts: this needs an admin token");
      scraping ??= scrape().finally(() => (scraping = null));
      const text = await scraping.catch((error: unknown) => {
        if (error instanceof CellarError && error.code === 'CELLAR_E_STORE_UNAVAILABLE') reply.header('retry-after', String(storeRetryAfterSeconds));
        throw error;
      });
      return reply.type(metrics.registry.contentType).send(text);
    },
  );
}
