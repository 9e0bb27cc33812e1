#!/usr/bin/env node
// The proxy's own entry, which `cellar up` starts detached: it loads the proxy, the store's routes
// and the Postgres-server module, never the API, the engine, the machines or the local driver
// (docs/LAYERS.md; test/proxy-entry.test.ts lists the modules it loads).
import { makeOutput } from '../cli/output.js';
import { loadConfig } from '../config.js';
import { serveProxy } from '../proxy/main.js';

try {
  await serveProxy(loadConfig(), makeOutput(false));
} catch (error) {
  process.stderr.write(`cellar proxy: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
}
