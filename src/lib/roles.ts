/**
 * The database roles that belong to the platform in every cluster. Tenants never hold them, and the
 * proxy refuses them before any password is exchanged: the control plane reaches its instances
 * directly, never through the proxy.
 */
export const platformRoles = {
  superuser: 'postgres',
  replication: 'cellar_replication',
  /** Owns the tenant's role functions (NOLOGIN). */
  roleAdmin: 'cellar_role_admin',
} as const;

const platformRoleNames: ReadonlySet<string> = new Set(Object.values(platformRoles));

export function isPlatformRole(name: string): boolean {
  return platformRoleNames.has(name);
}
