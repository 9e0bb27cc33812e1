/**
 * Every feature flag, declared once (docs/CONTROLS.md, "Flags"). A flag not here cannot be set. A
 * `release` flag past its `expires` fails a test (test/flags.test.ts): it has done its work, so it
 * and the code behind it are removed. An `operational` flag is a lasting switch an operator keeps;
 * its expiry is the date its owner looks again at whether it still earns its place.
 */

export type FlagKind = 'release' | 'operational' | 'experiment';
export type FlagValue = boolean | string;

interface FlagCommon {
  /** kebab-case, as the CLI and the API name it. */
  readonly key: string;
  readonly owner: string;
  readonly kind: FlagKind;
  /** A date, YYYY-MM-DD (UTC). */
  readonly expires: string;
  readonly description: string;
  /** The environment variable that sets this process's default, where one existed before the flag. */
  readonly environmentVariable?: string;
}

export interface BooleanFlag extends FlagCommon {
  readonly type: 'boolean';
  readonly default: boolean;
}

export interface StringFlag extends FlagCommon {
  readonly type: 'string';
  readonly variants: readonly string[];
  readonly default: string;
}

export type FlagDeclaration = BooleanFlag | StringFlag;

export const flagKeyPattern = /^[a-z][a-z0-9]*(-[a-z0-9]+)*$/;
export const flagKeyLengthMax = 63;

export const flagCatalogue: readonly FlagDeclaration[] = [
  {
    key: 'durability-default',
    type: 'string',
    variants: ['sync', 'sync-strict', 'async'],
    default: 'sync',
    owner: 'control plane',
    kind: 'operational',
    expires: '2027-12-31',
    description: 'The durability of a create that names none and has a replica (a create without replicas is async whatever this says).',
  },
  {
    key: 'provision-from-template',
    type: 'boolean',
    default: true,
    owner: 'data plane',
    kind: 'operational',
    expires: '2027-12-31',
    description: "Create a primary's data directory by copying the prepared template instead of running initdb.",
    environmentVariable: 'CELLAR_TEMPLATE',
  },
  {
    key: 'backup-verification',
    type: 'boolean',
    default: true,
    owner: 'backups',
    kind: 'operational',
    expires: '2027-12-31',
    description: 'Verify each new base backup by a restore into a scratch server (pg_verifybackup first); off: a taken backup is completed unverified.',
  },
  {
    key: 'proxy-native-relay',
    type: 'boolean',
    default: true,
    owner: 'proxy',
    kind: 'operational',
    expires: '2027-12-31',
    description: "Relay a connection's bytes in the native relay (splice) once it is established, when the cluster has no bandwidth limit.",
    environmentVariable: 'CELLAR_PROXY_NATIVE_RELAY',
  },
];

const byKey = new Map(flagCatalogue.map((flag) => [flag.key, flag]));

export function findFlag(key: string): FlagDeclaration | undefined {
  return byKey.get(key);
}

/** Whether `value` is one the flag can take. */
export function isFlagValue(flag: FlagDeclaration, value: unknown): value is FlagValue {
  if (flag.type === 'boolean') return typeof value === 'boolean';
  return typeof value === 'string' && flag.variants.includes(value);
}

/** The values a flag can take, for a message. */
export function allowedValues(flag: FlagDeclaration): readonly string[] {
  return flag.type === 'boolean' ? ['true', 'false'] : flag.variants;
}

/** The catalogue with each flag's default replaced by this process's (its environment variable's), where given. */
export function withProcessDefaults(catalogue: readonly FlagDeclaration[], defaults: Readonly<Record<string, FlagValue>>): FlagDeclaration[] {
  return catalogue.map((flag) => {
    const value = defaults[flag.key];
    if (value === undefined || !isFlagValue(flag, value)) return flag;
    return { ...flag, default: value } as FlagDeclaration;
  });
}

/** `release` flags whose expiry is before `today` (UTC date): each must be removed with its code. */
export function expiredReleaseFlags(catalogue: readonly FlagDeclaration[], today: Date): FlagDeclaration[] {
  return catalogue.filter((flag) => flag.kind === 'release' && isExpired(flag, today));
}

export function isExpired(flag: FlagDeclaration, today: Date): boolean {
  return flag.expires < today.toISOString().slice(0, 10);
}
