import { isIP } from 'node:net';
import { clusterRoles, type InstanceSpec, type UpstreamRef } from '../dataplane.js';
import { assert } from '../../lib/assert.js';
import { localHbaLine, renderConf } from '../../postgres/server.js';

/**
 * The files Cellar owns inside a data directory. postgresql.conf only gains an include of
 * cellar.conf; cellar.conf is rewritten from the spec on every start; a replica's upstream lives
 * in cellar.upstream.conf, written when the replica is cloned (and later when it follows another
 * primary), because start() is given the spec but not the upstream.
 */

export const upstreamConfFile = 'cellar.upstream.conf';
export const standbySignalFile = 'standby.signal';
/** synchronous_standby_names of a primary; rewritten by the cluster as its replicas come and go. */
export const syncConfFile = 'cellar.sync.conf';

/** Defaults for every instance; the cluster's size settings may override these. */
const baseSettings: Readonly<Record<string, string>> = {
  wal_level: 'replica',
  max_wal_senders: '10',
  max_replication_slots: '10',
  hot_standby: 'on',
  // pg_rewind and a lagging replica without its slot need recent WAL to still be there.
  wal_keep_size: '256MB',
  // A standby retries a lost primary this often (default 5 s). A promote that arrives just as its
  // WAL receiver fails can also sleep out this interval (seen 1 in ~17 failovers, and in raw PG 15).
  wal_retrieve_retry_interval: '200ms',
  password_encryption: 'scram-sha-256',
};

/** Identity of this instance; nothing may override these. */
function identitySettings(spec: InstanceSpec, runDir: string): Record<string, string> {
  return {
    port: String(spec.port),
    listen_addresses: listenAddresses(spec.host),
    unix_socket_directories: runDir,
    // TLS is terminated by the proxy; instances are reached on their hosts' network only.
    ssl: 'off',
  };
}

/** The host's address, and loopback for the host's own tools (status, pg_rewind's source). */
function listenAddresses(host: string): string {
  assertAddress(host);
  return host === loopback ? loopback : `${host},${loopback}`;
}

const loopback = '127.0.0.1';

/** Addresses reach postgresql.conf and pg_hba.conf: only IP literals pass. */
function assertAddress(address: string): void {
  assert(isIP(address) !== 0, `bad instance address ${JSON.stringify(address)}: an IPv4 or IPv6 literal is required`);
}

/** Continuous archiving to the cluster's area of the backup store; every instance has it, only a primary archives. */
export interface ArchiveSettings {
  readonly command: string;
  readonly timeoutMs: number;
}

export function renderInstanceConf(spec: InstanceSpec, runDir: string, archive: ArchiveSettings): string {
  const identity = {
    ...identitySettings(spec, runDir),
    archive_mode: 'on',
    archive_command: archive.command,
    // Bounds the recovery point when writes are slow to fill a segment.
    archive_timeout: `${archive.timeoutMs}ms`,
  };
  for (const name of Object.keys(spec.settings)) {
    assert(!(name in identity), `setting ${name} is owned by the data plane`);
  }
  // The upstream file comes last so nothing here can undo a replica's conninfo.
  // The recovery file (a restore's or a scratch check's) comes after everything it must override.
  const includes = [syncConfFile, upstreamConfFile, 'cellar.recovery.conf'].map((file) => `include_if_exists = '${file}'\n`).join('');
  return `${renderConf({ ...baseSettings, ...spec.settings, ...identity })}${includes}`;
}

/** A conninfo value: single-quoted, with backslash escapes for `\` and `'`. */
function quoteConninfoValue(value: string): string {
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

export function renderUpstreamConf(spec: InstanceSpec, upstream: UpstreamRef): string {
  assertSlotName(upstream.slotName);
  const conninfo = [
    `host=${quoteConninfoValue(upstream.host)}`,
    `port=${upstream.port}`,
    `user=${clusterRoles.replication}`,
    `password=${quoteConninfoValue(spec.secrets.replicationPassword)}`,
    `application_name=${spec.instanceId}`,
    'sslmode=disable',
    'gssencmode=disable',
  ].join(' ');
  return renderConf({ primary_conninfo: conninfo, primary_slot_name: upstream.slotName });
}

/** `ANY 1 ("in_a", "in_b")`: a commit waits for whichever replica flushes it first. Empty: async. */
export function renderSyncConf(standbys: readonly string[]): string {
  for (const name of standbys) assertSlotName(name);
  const value = standbys.length === 0 ? '' : `ANY 1 (${standbys.map((name) => `"${name}"`).join(', ')})`;
  return renderConf({ synchronous_standby_names: value });
}

export function assertSlotName(slotName: string): void {
  // Postgres allows [a-z0-9_]{1,63} for slot names.
  assert(/^[a-z0-9_]{1,63}$/.test(slotName), `bad replication slot name ${JSON.stringify(slotName)}`);
}

/**
 * No trust anywhere: on the local socket only Cellar's own OS user, mapped to `postgres` (peer);
 * over TCP every role with its SCRAM password: `postgres` (the control plane's, for pg_rewind),
 * `cellar_replication` for replication only, the tenant's `app` and the login roles it made.
 */
export function renderHba(peers: readonly string[] = []): string {
  const networks = [...new Set([`${loopback}/32`, ...peers.map(hostNetwork)])];
  return [
    '# Written by Cellar; rewritten on every start. Do not edit.',
    '# TYPE  DATABASE     USER                 ADDRESS       METHOD',
    localHbaLine,
    ...networks.flatMap((network) => [
      `host    replication  ${clusterRoles.replication}   ${network}  scram-sha-256`,
      `host    all          all                  ${network}  scram-sha-256`,
    ]),
    '',
  ].join('\n');
}

/** One address as a network of one host. */
function hostNetwork(address: string): string {
  assertAddress(address);
  return isIP(address) === 6 ? `${address}/128` : `${address}/32`;
}
