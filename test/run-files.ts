import { run } from 'node:test';
import { spec, tap } from 'node:test/reporters';

/**
 * Runs the test files named on the command line, `concurrency` (the first argument) at a time,
 * in the order given: `node --test` sorts its files by name, and test/run.ts starts the longest
 * first. Reports as `node --test` does (spec on a terminal, TAP otherwise) and exits 1 when any
 * test failed. test/run.ts starts this as its child, with the run's environment.
 */

const [concurrencyArgument, ...files] = process.argv.slice(2);
const concurrency = Number(concurrencyArgument);
if (!Number.isInteger(concurrency) || concurrency < 1 || files.length === 0) {
  process.stderr.write('usage: run-files CONCURRENCY FILE...\n');
  process.exit(2);
}

const stream = run({ files, concurrency });
stream.on('test:fail', () => {
  process.exitCode = 1;
});
(process.stdout.isTTY ? stream.compose(new spec()) : stream.compose(tap)).pipe(process.stdout);
