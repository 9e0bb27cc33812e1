import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ESLint } from 'eslint';

/** The repository root: tests run from dist/test/. */
const root = fileURLToPath(new URL('../..', import.meta.url));

interface LayersModule {
  readonly layers: readonly { readonly name: string; readonly paths: readonly string[] }[];
  renderLayerTable(): string;
  filesWithoutLayer(root: string): string[];
}

// lint/layers.mjs is not compiled: it is read from the repository by path, as eslint.config.mjs reads it.
const layersModule = (await import(new URL('lint/layers.mjs', `file://${root}`).href)) as LayersModule;

const eslintBin = join(root, 'node_modules', 'eslint', 'bin', 'eslint.js');
/** Loading the config and its plugins takes seconds on a busy 2-core machine; a hang must still end. */
const lintMsMax = 120_000;

const tableBegin = '<!-- layers:begin -->';
const tableEnd = '<!-- layers:end -->';
/** Where the order may be written; it must be in exactly one of them. */
const orderDocuments = ['docs/ARCHITECTURE.md', 'docs/LAYERS.md'];

async function writtenTables(): Promise<{ document: string; table: string }[]> {
  const found: { document: string; table: string }[] = [];
  for (const document of orderDocuments) {
    const text = await readFile(join(root, document), 'utf8').catch(() => '');
    const begin = text.indexOf(tableBegin);
    if (begin < 0) continue;
    const end = text.indexOf(tableEnd, begin);
    assert.ok(end > begin, `${document}: ${tableBegin} without ${tableEnd}`);
    found.push({ document, table: text.slice(begin + tableBegin.length, end).trim() });
  }
  return found;
}

interface LintError {
  readonly ruleId: string | null;
  readonly message: string;
}

/** The errors ESLint reports for `text` as if it were the file at `filePath`. */
async function lintErrors(eslint: ESLint, filePath: string, text: string): Promise<LintError[]> {
  const [result] = await eslint.lintText(text, { filePath: join(root, filePath) });
  assert.ok(result !== undefined);
  return result.messages.filter((message) => message.severity === 2).map(({ ruleId, message }) => ({ ruleId, message }));
}

/** The one error of `ruleId` among `errors` (others, like an import cycle the probe closes, may be there too). */
function onlyErrorOf(errors: readonly LintError[], ruleId: string): string {
  const matching = errors.filter((error) => error.ruleId === ruleId);
  assert.equal(matching.length, 1, JSON.stringify(errors));
  return matching[0]?.message ?? '';
}

describe('the dependency order', () => {
  test('the written order is the table the lint zones are made from', async () => {
    const tables = await writtenTables();
    assert.equal(tables.length, 1, `the layer table must be written in exactly one of ${orderDocuments.join(', ')}`);
    assert.equal(tables[0]?.table, layersModule.renderLayerTable());
  });

  test('every .ts file under src/ is in a layer, and a new folder without one is found', async () => {
    assert.deepEqual(layersModule.filesWithoutLayer(root), []);
    const scratch = await mkdtemp(join(tmpdir(), 'cellar-layers-'));
    try {
      await mkdir(join(scratch, 'src', 'lib'), { recursive: true });
      await mkdir(join(scratch, 'src', 'console'), { recursive: true });
      await writeFile(join(scratch, 'src', 'lib', 'placed.ts'), 'export {};\n');
      await writeFile(join(scratch, 'src', 'console', 'page.ts'), 'export {};\n');
      assert.deepEqual(layersModule.filesWithoutLayer(scratch), ['src/console/page.ts']);
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  });

  test('the lint refuses to run while a folder under src/ has no layer', async () => {
    const probe = join(root, 'src', `layerless-probe-${process.pid}`);
    await mkdir(probe);
    try {
      await writeFile(join(probe, 'probe.ts'), 'export {};\n');
      // In a child: ESLint caches its config module per process, so this one must load it afresh.
      const lint = spawnSync(process.execPath, [eslintBin, 'src/lib/assert.ts'], { cwd: root, encoding: 'utf8', timeout: lintMsMax });
      assert.notEqual(lint.status, 0);
      assert.match(lint.stderr, /no layer in lint\/layers\.mjs holds src\/layerless-probe-\d+\/probe\.ts/);
    } finally {
      await rm(probe, { recursive: true, force: true });
    }
  });

  describe('ESLint on a small file', () => {
    // The project's config, without the rules that need the whole program (type-aware ones and
    // import-x/no-cycle): what is checked here are the layer zones and the type-only imports, and
    // building the program for each probe cost ~14 s of CPU (the full lint, `npm run lint`, runs them).
    const eslint = new ESLint({
      cwd: root,
      overrideConfig: {
        files: ['**/*.ts'],
        languageOptions: { parserOptions: { projectService: false } },
        rules: { '@typescript-eslint/no-floating-promises': 'off', '@typescript-eslint/no-misused-promises': 'off', 'import-x/no-cycle': 'off' },
      },
    });

    test('an import against the order is an error: the store importing the engine', async () => {
      const errors = await lintErrors(eslint, 'src/store/pool.ts', "import { Engine } from '../engine/engine.js';\nexport const probe = Engine;\n");
      assert.match(onlyErrorOf(errors, 'import-x/no-restricted-paths'), /store may import only lib, config, ports, postgres; src\/engine is engine/);
    });

    test('an import against the order is an error: the proxy importing the control plane', async () => {
      const errors = await lintErrors(eslint, 'src/proxy/throttle.ts', "import { startControlPlane } from '../controlplane/controlplane.js';\nexport const probe = startControlPlane;\n");
      assert.match(onlyErrorOf(errors, 'import-x/no-restricted-paths'), /proxy may import only .*; src\/controlplane is controlplane/);
    });

    test('the CLI may take the shapes of the API as types, not its code', async () => {
      const asValue = await lintErrors(eslint, 'src/cli/clusters.ts', "import { clusterView } from '../api/view.js';\nexport const probe = clusterView;\n");
      assert.match(onlyErrorOf(asValue, '@typescript-eslint/no-restricted-imports'), /cli may import src\/api only with `import type`/);
      assert.deepEqual(await lintErrors(eslint, 'src/cli/clusters.ts', "import type { ClusterView } from '../api/view.js';\nexport type Probe = ClusterView;\n"), []);
    });

    test('an import along the order passes: the engine importing the store, the store a port', async () => {
      assert.deepEqual(await lintErrors(eslint, 'src/engine/backoff.ts', "import { openPool } from '../store/pool.js';\nexport const probe = openPool;\n"), []);
      assert.deepEqual(await lintErrors(eslint, 'src/store/pool.ts', "import type { MachineStore } from '../machines/ports.js';\nexport type Probe = MachineStore;\n"), []);
    });
  });
});
