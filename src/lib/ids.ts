import { randomBytes } from 'node:crypto';

/** Prefixed, branded ids: a cluster id can never be passed where an instance id is expected. */
export const idPrefixes = {
  org: 'org',
  token: 'tok',
  cluster: 'cl',
  instance: 'in',
  machine: 'ma',
  backup: 'bk',
  host: 'ho',
  change: 'ch',
} as const;

export type IdKind = keyof typeof idPrefixes;
export type Id<K extends IdKind> = string & { readonly __brand: K };
export type OrgId = Id<'org'>;
export type ClusterId = Id<'cluster'>;
export type InstanceId = Id<'instance'>;
export type MachineId = Id<'machine'>;
export type BackupId = Id<'backup'>;
export type HostId = Id<'host'>;
export type ChangeId = Id<'change'>;

const alphabet = 'abcdefghijklmnopqrstuvwxyz234567';
const idRandomChars = 12;

/** Lower-case base32 so ids are safe in file names, DNS labels and Postgres identifiers. */
export function randomToken(length: number): string {
  const bytes = randomBytes(length);
  let out = '';
  for (const byte of bytes) out += alphabet[byte % alphabet.length];
  return out;
}

export function newId<K extends IdKind>(kind: K): Id<K> {
  return `${idPrefixes[kind]}_${randomToken(idRandomChars)}` as Id<K>;
}

