import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { access, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { applyTuning, describeFailure, readCurrent, readCurrentValues, readHostMemory } from '../src/agent/kernel-tunables.js';
import type { TuneResult } from '../src/cli/host-tune.js';
import { effectiveSettings } from '../src/lib/sizes.js';
import { type Recommendation, hugePageSizeMb, hugePagesFor, recommend, sharedMemoryMbOf, tuningInstanceOf } from '../src/lib/tuning.js';
import { type RunResult, TestCellar, cellarBin, makeTempDir } from './helpers/cellar.js';

/**
 * `cellar host tune` (issue 15, item 5): recommendations as a function of the host and its
 * instances, the current values read from this machine's kernel, the command against a real Cellar,
 * and `--apply` refused where it cannot write. Nothing here writes a kernel setting or /etc.
 */

const host = { memoryMb: 16_384, swapMb: 0 };
const byName = (recommendations: ReturnType<typeof recommend>, name: string) => {
  const found = recommendations.find((recommendation) => recommendation.name === name);
  assert.ok(found !== undefined, `${name} is recommended`);
  return found;
};

describe('recommend()', () => {
  test('with no instance, no memory is reserved as huge pages and every required setting has a reason', () => {
    const recommendations = recommend(host, []);
    assert.equal(byName(recommendations, 'vm.nr_hugepages').recommended, '0');
    for (const name of ['vm.overcommit_memory', 'vm.overcommit_ratio', 'vm.swappiness', 'vm.dirty_background_bytes', 'vm.dirty_bytes', 'transparent_hugepage', 'fs.file-max', 'net.core.somaxconn', 'net.ipv4.tcp_keepalive_time']) {
      const recommendation = byName(recommendations, name);
      assert.match(recommendation.reason, /^[A-Z].*\.$/, `${name} has a one-sentence reason`);
    }
    assert.equal(byName(recommendations, 'vm.overcommit_memory').recommended, '2');
    assert.equal(byName(recommendations, 'transparent_hugepage').recommended, 'never');
  });

  test('huge pages hold the shared memory of every instance: two small and one medium', () => {
    const small = tuningInstanceOf(effectiveSettings({ size: 'small' }));
    const medium = tuningInstanceOf(effectiveSettings({ size: 'medium' }));
    assert.deepEqual(small, { sharedBuffersMb: 128, maxConnections: 100 });
    assert.deepEqual(medium, { sharedBuffersMb: 512, maxConnections: 200 });
    const instances = [small, small, medium];
    const pages = Number(byName(recommend(host, instances), 'vm.nr_hugepages').recommended);
    // At least what Postgres 15 reports as shared_memory_size (143 MB, 143 MB, 555 MB), in 2 MB pages.
    assert.ok(pages * hugePageSizeMb >= 143 + 143 + 555, `${pages} pages`);
    assert.equal(pages, Math.ceil((2 * sharedMemoryMbOf(small) + sharedMemoryMbOf(medium)) / hugePageSizeMb));
    assert.ok(pages * hugePageSizeMb < 1.1 * (128 * 2 + 512) + 3 * 40, `no more than a margin over the buffers: ${pages} pages`);
    // An instance's own setting goes over its size's default.
    const tuned = tuningInstanceOf(effectiveSettings({ size: 'small', settings: { shared_buffers: '1GB' } }));
    assert.equal(tuned.sharedBuffersMb, 1024);
    assert.ok(Number(byName(recommend(host, [tuned]), 'vm.nr_hugepages').recommended) > pages);
  });

  test('huge pages are capped at half the memory, and the overcommit ratio leaves room after them', () => {
    const large = tuningInstanceOf(effectiveSettings({ size: 'large' }));
    const huge = hugePagesFor(host, [large, large, large, large, large]);
    assert.equal(huge.capped, true);
    assert.equal(huge.pages, host.memoryMb / 2 / hugePageSizeMb);
    const ratio = Number(byName(recommend(host, []), 'vm.overcommit_ratio').recommended);
    assert.ok(ratio >= 50 && ratio <= 100, `ratio ${ratio}`);
    const withSwap = Number(byName(recommend({ memoryMb: 16_384, swapMb: 4_096 }, []), 'vm.overcommit_ratio').recommended);
    assert.ok(withSwap < ratio, 'swap counts towards the commit limit, so the ratio is lower with it');
  });

  test('file-max grows with the connections of the instances', () => {
    const many = Array.from({ length: 10 }, () => tuningInstanceOf(effectiveSettings({ size: 'large' })));
    assert.ok(Number(byName(recommend(host, many), 'fs.file-max').recommended) > Number(byName(recommend(host, []), 'fs.file-max').recommended));
  });
});

describe('the kernel reader on this machine', () => {
  test('reads a number for each sysctl key this kernel has, and THP as its bracketed choice', async () => {
    const values = await readCurrentValues(recommend(await readHostMemory(), []));
    for (const value of values) {
      if (value.name === 'transparent_hugepage') {
        if (value.value !== null) assert.match(value.value, /^(always|madvise|never)$/);
        continue;
      }
      if (value.value === null) assert.match(value.why ?? '', /does not exist|permission denied|read-only/, `${value.name}: ${value.why}`);
      else assert.match(value.value, /^\d+$/, `${value.name} = ${value.value}`);
    }
    // These exist on every Linux kernel Cellar runs on.
    for (const name of ['vm.overcommit_memory', 'vm.swappiness', 'fs.file-max']) assert.match(values.find((value) => value.name === name)?.value ?? '', /^\d+$/);
  });

  test('a key the kernel lacks is unknown, with why', async () => {
    const value = await readCurrent({ name: 'vm.cellar_no_such_key', target: 'sysctl' });
    assert.equal(value.value, null);
    assert.match(value.why ?? '', /\/proc\/sys\/vm\/cellar_no_such_key does not exist/);
  });
});

describe('applyTuning()', () => {
  test('writes the sysctl file whole, then reports a key this kernel lacks as not set, with why (no real setting is touched)', async () => {
    const scratch = await makeTempDir('cellar-tune-apply-');
    try {
      const file = join(scratch, '90-cellar.conf');
      const absent: Recommendation = { name: 'vm.cellar_no_such_key', target: 'sysctl', recommended: '1', comparison: 'equal', reason: 'A key no kernel has.' };
      const report = await applyTuning([absent], [], file, ['a header line']);
      assert.equal(report.fileWritten, true);
      assert.equal(await readFile(file, 'utf8'), '# a header line\n# A key no kernel has.\nvm.cellar_no_such_key = 1\n');
      assert.equal((await stat(file)).mode & 0o777, 0o644);
      assert.deepEqual(await readdir(scratch), ['90-cellar.conf'], 'no staging file left');
      assert.equal(report.keys.length, 1);
      assert.equal(report.keys[0]?.set, false);
      assert.match(report.keys[0]?.why ?? '', /\/proc\/sys\/vm\/cellar_no_such_key does not exist/);
      await assert.rejects(access('/proc/sys/vm/cellar_no_such_key'), 'no kernel file was created');
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  });

  test('a read-only /proc/sys is named as such, as in a container', () => {
    const readOnly = Object.assign(new Error('EROFS: read-only file system'), { code: 'EROFS' });
    assert.match(describeFailure('/proc/sys/vm/swappiness', readOnly, 'write', 'kernel'), /\/proc\/sys\/vm is read-only here \(a container/);
    const denied = Object.assign(new Error('EACCES'), { code: 'EACCES' });
    assert.match(describeFailure('/proc/sys/vm/swappiness', denied, 'write', 'kernel'), /permission denied writing \/proc\/sys\/vm\/swappiness: run as root/);
  });
});

function runCli(args: readonly string[], env: NodeJS.ProcessEnv): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [cellarBin, ...args], { env, timeout: 60_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stdout, stderr });
    });
  });
}

describe('cellar host tune against a real Cellar', () => {
  let cellar: TestCellar;
  let before0: TuneResult;

  before(async () => {
    cellar = await TestCellar.create();
    await cellar.start();
    before0 = await cellar.cliJson<TuneResult>(['host', 'tune']);
    await cellar.cliJson(['clusters', 'create', 'app', '--size', 'micro', '--replicas', '1', '--wait']);
  });

  after(async () => {
    await cellar?.destroy();
  });

  test('it lists every key with current and recommended values, and counts the cluster\'s instances on the local host', async () => {
    assert.equal(before0.host, 'local');
    assert.equal(before0.instances.length, 0);
    assert.equal(before0.settings.find((entry) => entry.name === 'vm.nr_hugepages')?.recommended, '0');

    const result = await cellar.cliJson<TuneResult>(['host', 'tune']);
    assert.equal(result.host, 'local');
    assert.equal(result.instancesNote, undefined);
    assert.equal(result.instances.length, 2, 'the primary and its replica');
    for (const instance of result.instances) {
      assert.equal(instance.cluster, 'app');
      assert.equal(instance.sharedBuffersMb, 32);
      assert.equal(instance.maxConnections, 50);
    }
    const hugePages = result.settings.find((entry) => entry.name === 'vm.nr_hugepages');
    const expected = hugePagesFor({ memoryMb: result.memoryMb, swapMb: result.swapMb }, result.instances).pages;
    assert.ok(expected > 0);
    assert.equal(hugePages?.recommended, String(expected), 'recomputed from the instances now on the host');
    for (const entry of result.settings) {
      assert.ok(entry.current !== null || entry.currentWhy !== undefined, `${entry.name}: a value or why not`);
      assert.ok(entry.recommended !== '' && entry.reason !== '');
      if (entry.current !== null && entry.satisfied !== null) assert.equal(typeof entry.satisfied, 'boolean');
    }

    const text = await cellar.cli(['host', 'tune']);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /NAME +CURRENT +RECOMMENDED +REASON/);
    assert.match(text.stdout, /Counted 2 instance\(s\):/);
    assert.match(text.stdout, /vm\.nr_hugepages +\d+ +\d+ +Holds the shared memory of the 2 instance\(s\)/);
  });

  test('--apply where the file cannot be written refuses every key with the reason, loads nothing, leaves no file', async () => {
    const scratch = await makeTempDir('cellar-tune-');
    try {
      // A path whose parent is a regular file: no one, root included, can create it.
      await writeFile(join(scratch, 'not-a-directory'), '');
      const target = join(scratch, 'not-a-directory', '90-cellar.conf');
      const kernelBefore = await readCurrentValues(recommend(await readHostMemory(), []));

      const result = await cellar.cli(['host', 'tune', '--apply', '--sysctl-file', target, '--json']);
      assert.equal(result.code, 1, result.stderr);
      const parsed = JSON.parse(result.stdout) as TuneResult;
      assert.ok(parsed.apply !== undefined);
      assert.equal(parsed.apply.fileWritten, false);
      assert.match(parsed.apply.fileError ?? '', /is not a directory/);
      assert.equal(parsed.apply.keys.length, parsed.settings.length);
      for (const key of parsed.apply.keys) {
        assert.equal(key.set, false, key.name);
        assert.match(key.why ?? '', /not loaded: the sysctl file could not be written/);
      }

      const text = await cellar.cli(['host', 'tune', '--apply', '--sysctl-file', target]);
      assert.equal(text.code, 1);
      assert.match(text.stdout, /Could not write .*90-cellar\.conf: a part of .* is not a directory\. Nothing was loaded\./);
      assert.match(text.stdout, /NOT SET +vm\.overcommit_memory = 2: not loaded/);
      assert.match(text.stdout, /10 of 10 could not be set\./);

      assert.deepEqual(await readdir(scratch), ['not-a-directory'], 'no file and no staging file');
      assert.deepEqual(await readCurrentValues(recommend(await readHostMemory(), [])), kernelBefore, 'no kernel value changed');
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  });

  test('with no API to ask it still recommends, for 0 instances, and says why', async () => {
    const home = await makeTempDir('cellar-tune-home-');
    try {
      const env = { PATH: process.env['PATH'] ?? '', CELLAR_HOME: home, CELLAR_TOKEN: '', CELLAR_API: '' };
      const result = await runCli(['host', 'tune', '--json'], env);
      assert.equal(result.code, 0, result.stderr);
      const parsed = JSON.parse(result.stdout) as TuneResult;
      assert.equal(parsed.instances.length, 0);
      assert.match(parsed.instancesNote ?? '', /no instance counted: no API token/);
      assert.equal(parsed.settings.find((entry) => entry.name === 'vm.nr_hugepages')?.recommended, '0');
      await assert.rejects(access(join(home, 'credentials')));
    } finally {
      await rm(home, { recursive: true, force: true });
    }
  });
});
