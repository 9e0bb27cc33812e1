#!/usr/bin/env node
import { resolve } from 'node:path';
import { runGuard } from '../agent/guard.js';
import { makeLogger } from '../lib/log.js';

/** The lease guard of one data directory (docs/HOSTS.md, "Fencing"): `cellar-guard DIR`, started detached by `cellar agent`. */
const dataDir = process.argv[2];
if (dataDir === undefined || dataDir === '') {
  process.stderr.write('usage: cellar-guard DIR\n');
  process.exit(2);
}
const stop = new AbortController();
process.once('SIGTERM', () => stop.abort());
process.once('SIGINT', () => stop.abort());
// Its own session: the agent's terminal closing (SIGHUP) must not end it.
process.on('SIGHUP', () => undefined);
await runGuard(resolve(dataDir), makeLogger('info'), stop.signal);
