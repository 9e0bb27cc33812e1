// Lint for what the compiler cannot see: floating promises, import cycles, imports against the
// dependency order (lint/layers.mjs), and nondeterminism in machine code (steps reach time,
// randomness and timers only through ports).
import importX from 'eslint-plugin-import-x';
import { createTypeScriptImportResolver } from 'eslint-import-resolver-typescript';
import tseslint from 'typescript-eslint';
import { filesWithoutLayer, restrictedPathZones, typeOnlyRestrictions } from './lint/layers.mjs';

// The zones cover every folder of src/, bottom first: src/lib, src/config.ts, the ports
// (src/dataplane/dataplane.ts, backup-store.ts, agent-protocol.ts, src/machines/ports.ts),
// src/pki (may import lib and config only), src/postgres, src/store, src/engine, src/machines,
// src/dataplane/local, src/dataplane/remote (lib, config, ports, pki), src/agent (lib, config,
// ports, pki, postgres and the local driver: never the store, engine, machines or API), src/proxy,
// src/api, src/controlplane, src/cli, src/bin, and src/web (the browser's console: nothing else
// of src/). Their rows, and what each may import, are in lint/layers.mjs (docs/LAYERS.md).
// A file under src/ that no layer holds would escape every zone: a new folder gets its layer first.
const unplaced = filesWithoutLayer(import.meta.dirname);
if (unplaced.length > 0) throw new Error(`no layer in lint/layers.mjs holds ${unplaced.join(', ')}: add one (and its row in the docs)`);

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'eslint.config.mjs'] },
  {
    files: ['**/*.ts', '**/*.tsx'],
    extends: [tseslint.configs.base],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    plugins: { 'import-x': importX },
    settings: {
      'import-x/resolver-next': [createTypeScriptImportResolver()],
      'import-x/parsers': { '@typescript-eslint/parser': ['.ts', '.tsx'] },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: false }],
      '@typescript-eslint/no-explicit-any': 'error',
      // Unused imports and locals; `const { a: _a, ...rest } = x` is how a field is left out.
      '@typescript-eslint/no-unused-vars': ['error', { ignoreRestSiblings: true, varsIgnorePattern: '^_', argsIgnorePattern: '^_' }],
      'import-x/no-cycle': 'error',
    },
  },
  {
    files: ['src/**/*.ts', 'src/**/*.tsx'],
    rules: { 'import-x/no-restricted-paths': ['error', { basePath: import.meta.dirname, zones: restrictedPathZones() }] },
  },
  ...typeOnlyRestrictions().map(({ files, patterns }) => ({ files, rules: { '@typescript-eslint/no-restricted-imports': ['error', { patterns }] } })),
  {
    // node:test's describe() and test() return promises the runner itself awaits.
    files: ['test/**/*.test.ts'],
    rules: { '@typescript-eslint/no-floating-promises': 'off' },
  },
  {
    files: ['src/machines/**/*.ts'],
    rules: {
      'no-restricted-properties': [
        'error',
        { object: 'Date', property: 'now', message: 'use ports.clock' },
        { object: 'Math', property: 'random', message: 'use ports.random' },
      ],
      'no-restricted-globals': [
        'error',
        { name: 'setTimeout', message: 'return nap(ms) instead' },
        { name: 'setInterval', message: 'return nap(ms) instead' },
        { name: 'fetch', message: 'reach the world through ports' },
      ],
      'no-restricted-syntax': ['error', { selector: "NewExpression[callee.name='Date']", message: 'use ports.clock' }],
      // The layer zones keep machines off the store and the local driver; this keeps them off the host.
      'no-restricted-imports': ['error', { patterns: [{ group: ['node:*'], message: 'machines reach the host only through ports' }] }],
    },
  },
);
