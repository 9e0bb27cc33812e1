// The dependency order of src/, as one table: eslint.config.mjs makes its import zones from it and
// test/layers.test.ts checks that the docs show the same table (DESIGN §6a). A layer may import
// itself and the layers and files in its `imports`; nothing else under src/.
import { readdirSync } from 'node:fs';
import { join, relative, sep } from 'node:path';

/**
 * Bottom first. `paths` are folders or files under src/; a path inside another layer's folder
 * (the port files) belongs to the more specific layer, which may import less than the folder's.
 * `typesOnly`: of what it may import, these only with `import type` (the CLI takes the API's
 * response shapes, never its code).
 */
export const layers = [
  { name: 'lib', paths: ['src/lib'], imports: [], holds: 'what every layer shares: errors, ids, clocks, logs' },
  { name: 'config', paths: ['src/config.ts'], imports: ['lib'], holds: 'the only reader of process.env' },
  {
    name: 'ports',
    paths: ['src/dataplane/dataplane.ts', 'src/dataplane/backup-store.ts', 'src/dataplane/agent-protocol.ts', 'src/machines/ports.ts'],
    imports: ['lib', 'config'],
    holds: 'what the machines may ask of the data plane and the store; the store and the local driver implement them',
  },
  { name: 'pki', paths: ['src/pki'], imports: ['lib', 'config'], holds: 'the cell CA: certificates for the proxy, the control plane and the hosts (openssl)' },
  { name: 'postgres', paths: ['src/postgres'], imports: ['lib', 'config'], holds: 'Postgres servers on this host: OS users, files, binaries, start and stop, short connections' },
  { name: 'store', paths: ['src/store'], imports: ['lib', 'config', 'ports', 'postgres'], holds: 'all SQL, the machines table included; the embedded store' },
  { name: 'engine', paths: ['src/engine'], imports: ['lib', 'config', 'store'], holds: 'lanes, claims, leases, commits; what a machine is' },
  { name: 'machines', paths: ['src/machines'], imports: ['lib', 'config', 'ports', 'engine'], holds: 'transition tables and steps; the world only through ports' },
  { name: 'local driver', paths: ['src/dataplane/local'], imports: ['lib', 'config', 'ports', 'postgres'], holds: 'the DataPlane and BackupStore ports on this host' },
  { name: 'remote driver', paths: ['src/dataplane/remote'], imports: ['lib', 'config', 'ports', 'pki'], holds: 'the DataPlane port over mutual TLS to the agents; the router that picks an instance\'s host' },
  { name: 'agent', paths: ['src/agent'], imports: ['lib', 'config', 'ports', 'pki', 'postgres', 'local driver'], holds: 'the `cellar agent` process: operations over mutual TLS, heartbeats, the lease and its guard, supervision' },
  {
    name: 'proxy',
    paths: ['src/proxy'],
    imports: ['lib', 'config', 'pki', 'postgres', 'src/store/pool.ts', 'src/store/routes.ts', 'src/store/embedded.ts', 'src/store/flag-snapshot.ts', 'src/store/rods.ts'],
    holds: 'the `cellar proxy` process: the routes, flags and control rods it reads, nothing of the control plane',
  },
  { name: 'api', paths: ['src/api'], imports: ['lib', 'config', 'ports', 'pki', 'store', 'engine', 'machines'], holds: 'HTTP routes over the store; phases from the machines' },
  {
    name: 'controlplane',
    paths: ['src/controlplane'],
    imports: ['lib', 'config', 'ports', 'pki', 'postgres', 'store', 'engine', 'machines', 'local driver', 'remote driver', 'agent', 'proxy', 'api'],
    holds: 'wiring: store, engine, machines, driver and API in one process; `up` and `down`',
  },
  { name: 'cli', paths: ['src/cli'], imports: ['lib', 'config', 'api', 'controlplane', 'proxy', 'agent'], typesOnly: ['api'], holds: 'talks to the API over HTTP; `up`, `down` and `proxy` lazily' },
  { name: 'web', paths: ['src/web'], imports: [], holds: 'the web console in the browser: Preact pages over the API\'s HTTP, bundled by esbuild into dist/web; the API\'s shapes written down, not imported' },
  { name: 'bin', paths: ['src/bin'], imports: ['lib', 'config', 'cli', 'proxy', 'agent'], holds: 'entry points: `cellar`, and the proxy\'s own' },
];

const byName = new Map(layers.map((layer) => [layer.name, layer]));

/** The paths an entry of `imports` stands for: a layer's paths, or the file itself. */
function pathsOf(entry) {
  return byName.get(entry)?.paths ?? [entry];
}

function isInside(path, folder) {
  return path === folder || path.startsWith(`${folder}/`);
}

/** The layer a file under src/ belongs to: the one with the most specific path that holds it. */
export function layerOf(file) {
  let best = null;
  let bestLength = -1;
  for (const layer of layers) {
    for (const path of layer.paths) {
      if (isInside(file, path) && path.length > bestLength) {
        best = layer;
        bestLength = path.length;
      }
    }
  }
  return best;
}

/** Every .ts or .tsx file under `root`/src (as `src/…` paths) that no layer holds. */
export function filesWithoutLayer(root) {
  const found = [];
  const walk = (dir) => {
    for (const entry of readdirSync(join(root, dir), { withFileTypes: true })) {
      const path = `${dir}/${entry.name}`;
      if (entry.isDirectory()) walk(path);
      else if (/\.tsx?$/.test(entry.name) && layerOf(path) === null) found.push(path);
    }
  };
  walk('src');
  return found;
}

/**
 * `import-x/no-restricted-paths` zones: for each layer, one zone per path of every layer it may
 * not import, with the allowed paths nested in it (a port file in a forbidden folder) excepted.
 */
export function restrictedPathZones() {
  const zones = [];
  for (const target of layers) {
    const allowed = [...target.paths, ...target.imports.flatMap(pathsOf)];
    for (const other of layers) {
      if (other === target || target.imports.includes(other.name)) continue;
      for (const from of other.paths) {
        if (allowed.includes(from)) continue;
        const except = allowed.filter((path) => path !== from && isInside(path, from)).map((path) => `./${relative(from, path).split(sep).join('/')}`);
        zones.push({
          target: target.paths,
          from,
          ...(except.length > 0 ? { except } : {}),
          message: `${target.name} may import only ${describeImports(target)}; ${from} is ${other.name} (lint/layers.mjs, docs/LAYERS.md)`,
        });
      }
    }
  }
  return zones;
}

/** `@typescript-eslint/no-restricted-imports` options per layer that may import some things as types only. */
export function typeOnlyRestrictions() {
  return layers
    .filter((layer) => (layer.typesOnly ?? []).length > 0)
    .map((layer) => ({
      files: layer.paths.map((path) => (path.endsWith('.ts') ? path : `${path}/**/*.ts`)),
      patterns: layer.typesOnly.flatMap(pathsOf).map((path) => ({
        group: [path.endsWith('.ts') ? `**/${path.slice('src/'.length, -'.ts'.length)}.js` : `**/${path.slice('src/'.length)}/*`],
        allowTypeImports: true,
        message: `${layer.name} may import ${path} only with \`import type\` (lint/layers.mjs, docs/LAYERS.md)`,
      })),
    }));
}

function describeImports(layer) {
  if (layer.imports.length === 0) return 'nothing';
  const typesOnly = layer.typesOnly ?? [];
  return `${layer.imports.join(', ')}${typesOnly.length === 0 ? '' : `; ${typesOnly.join(', ')} as types only`}`;
}

/** The table as the docs show it, between `<!-- layers:begin -->` and `<!-- layers:end -->`. */
export function renderLayerTable() {
  const code = (path) => `\`${path.endsWith('.ts') ? path : `${path}/`}\``;
  const rows = layers.map((layer) => {
    const imports = describeImports(layer).replace(/src\/[^\s,()]+/g, (path) => code(path));
    return `| ${layer.name} | ${layer.paths.map(code).join(', ')} | ${imports} | ${layer.holds} |`;
  });
  return ['| layer | paths | may import | holds |', '| --- | --- | --- | --- |', ...rows].join('\n');
}
