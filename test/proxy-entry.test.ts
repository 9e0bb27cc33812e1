import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { testPort } from './helpers/ports.js';
import { eventually, makeTempDir } from './helpers/cellar.js';

const recorder = fileURLToPath(new URL('./fixtures/module-recorder.js', import.meta.url));
// The compiled modules one by one (tsc's dist/src), so that the recorder sees each module loaded;
// the bundles that run are built from the same sources, and their contents are checked below from
// the build's metafile.
const proxyBin = fileURLToPath(new URL('../src/bin/cellar-proxy.js', import.meta.url));
const cellarBin = fileURLToPath(new URL('../src/bin/cellar.js', import.meta.url));
const srcUrl = pathToFileURL(fileURLToPath(new URL('../src/', import.meta.url))).href;
/** Which sources went into which file of dist/bundle (scripts/build-bin.mjs). */
const bundleMeta = JSON.parse(await readFile(fileURLToPath(new URL('../bundle/meta.json', import.meta.url)), 'utf8')) as BundleMeta;
/** What the proxy must never load (DESIGN §6a): the API, the engine, the machines, the local driver, the control plane. */
const forbiddenFolders = ['api/', 'engine/', 'machines/', 'dataplane/local/', 'controlplane/'];
/** What `cellar down` must never load: it only stops processes. */
const downForbidden = ['api/', 'engine/', 'machines/', 'dataplane/local/driver.js', 'controlplane/controlplane.js', 'proxy/main.js', 'proxy/server.js'];
/** Making the cell CA and the proxy's certificate with the openssl CLI takes seconds on a busy machine. */
const proxyStartWaitMs = 60_000;
const proxyStopWaitMs = 30_000;

/**
 * Starts the proxy from `argv` with every loaded module recorded, waits until it serves (its pid
 * file), stops it, and returns the modules under src/ it loaded, relative to src/.
 */
async function modulesLoadedBy(argv: readonly string[]): Promise<string[]> {
  const home = await makeTempDir('cellar-proxy-entry-');
  try {
    const listFile = join(home, 'modules.txt');
    // No store answers there: a proxy starts and serves its cached routes without one.
    const env = {
      ...process.env,
      CELLAR_HOME: home,
      CELLAR_STORE_URL: `postgres://postgres@127.0.0.1:${await testPort()}/cellar`,
      CELLAR_PROXY_PORT: String(await testPort()),
      CELLAR_PROXY_RO_PORT: String(await testPort()),
      CELLAR_PROXY_ADMIN_PORT: String(await testPort()),
      CELLAR_TEST_MODULE_LIST: listFile,
    };
    const child = spawn(process.execPath, ['--import', pathToFileURL(recorder).href, ...argv], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      await eventually(
        'the proxy to write its pid file',
        async () => {
          if (child.exitCode !== null) throw new Error(`the proxy exited ${child.exitCode}: ${stderr}`);
          const pid = Number((await readFile(join(home, 'proxy.pid'), 'utf8').catch(() => '')).trim());
          return pid === child.pid ? pid : undefined;
        },
        proxyStartWaitMs,
      );
    } finally {
      if (child.exitCode === null) child.kill('SIGTERM');
    }
    const code = await Promise.race([exited, new Promise<'hung'>((resolve) => setTimeout(() => resolve('hung'), proxyStopWaitMs).unref())]);
    if (code === 'hung') child.kill('SIGKILL');
    assert.equal(code, 0, `the proxy did not stop cleanly on SIGTERM: ${stderr}`);
    const urls = (await readFile(listFile, 'utf8')).split('\n').filter((url) => url.startsWith(srcUrl));
    return urls.map((url) => url.slice(srcUrl.length));
  } finally {
    await rm(home, { recursive: true, force: true });
  }
}

function assertProxyOnly(modules: readonly string[]): void {
  // The recorder saw the proxy itself: an empty list would prove nothing.
  assert.ok(modules.includes('proxy/main.js'), `proxy/main.js not among the loaded modules: ${modules.join(', ')}`);
  const forbidden = modules.filter((module) => forbiddenFolders.some((folder) => module.startsWith(folder)));
  assert.deepEqual(forbidden, [], `the proxy loaded ${forbidden.join(', ')}`);
}

describe('the proxy entry', () => {
  test('bin/cellar-proxy.js, which `cellar up` starts, loads no API, engine, machine, local driver or control plane module', async () => {
    assertProxyOnly(await modulesLoadedBy([proxyBin]));
  });

  test('`cellar proxy` loads none of them either', async () => {
    assertProxyOnly(await modulesLoadedBy([cellarBin, 'proxy']));
  });
});

interface BundleMeta {
  readonly outputs: Record<string, { readonly entryPoint?: string; readonly inputs: Record<string, unknown>; readonly imports: readonly { readonly path: string; readonly kind: string; readonly external?: boolean }[] }>;
}

/**
 * The sources a process holds once it has loaded the bundle output whose entry is `entry`
 * (a program in src/bin, or the target of a lazy import): that output's and those of every
 * chunk it imports statically, relative to src/ as the recorder's lists are.
 */
function bundledSources(meta: BundleMeta, entry: string): string[] {
  const outputs = Object.entries(meta.outputs);
  const start = outputs.find(([, output]) => output.entryPoint === entry);
  assert.ok(start !== undefined, `no bundle output has the entry ${entry}`);
  const seen = new Set<string>();
  const pending = [start[0]];
  for (let step = 0; pending.length > 0; step += 1) {
    assert.ok(step < outputs.length, 'the bundle imports more outputs than it has');
    const path = pending.pop();
    if (path === undefined || seen.has(path)) continue;
    seen.add(path);
    for (const imported of meta.outputs[path]?.imports ?? []) if (imported.kind === 'import-statement' && !imported.external) pending.push(imported.path);
  }
  return [...seen].flatMap((path) => Object.keys(meta.outputs[path]?.inputs ?? {})).filter((input) => input.startsWith('src/')).map((input) => input.slice('src/'.length).replace(/\.ts$/, '.js'));
}

describe('the bundles that run (dist/bundle)', () => {
  test('the proxy program, and what `cellar proxy` loads lazily, hold no API, engine, machine, local driver or control plane module', () => {
    assertProxyOnly(bundledSources(bundleMeta, 'src/bin/cellar-proxy.ts'));
    assertProxyOnly(bundledSources(bundleMeta, 'src/proxy/main.ts'));
  });

  test('`cellar` alone holds neither the control plane nor the proxy: `up`, `down` and `proxy` load theirs when run', () => {
    const cli = bundledSources(bundleMeta, 'src/bin/cellar.ts');
    assert.ok(cli.includes('cli/main.js'), `cli/main.js not in the cellar bundle: ${cli.join(', ')}`);
    const forbidden = cli.filter((module) => [...forbiddenFolders, 'proxy/'].some((folder) => module.startsWith(folder)));
    assert.deepEqual(forbidden, [], `the cellar bundle holds ${forbidden.join(', ')}`);
    const down = bundledSources(bundleMeta, 'src/controlplane/host.ts');
    assert.ok(down.includes('controlplane/host.js'));
    assert.deepEqual(down.filter((module) => downForbidden.some((prefix) => module.startsWith(prefix))), []);
  });
});

describe('the down command', () => {
  test('`cellar down` loads no API, engine, machine, proxy server or control plane wiring module, nor the logger', async () => {
    const home = await makeTempDir('cellar-down-entry-');
    try {
      const listFile = join(home, 'modules.txt');
      const env = { ...process.env, CELLAR_HOME: home, CELLAR_DATA: join(home, 'data'), CELLAR_TEST_MODULE_LIST: listFile };
      const child = spawn(process.execPath, ['--import', pathToFileURL(recorder).href, cellarBin, 'down', '--json'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const code = await new Promise<number | null>((resolve) => child.once('exit', (exitCode) => resolve(exitCode)));
      assert.equal(code, 0, `cellar down failed: ${stderr}`);
      assert.deepEqual(JSON.parse(stdout), { controlPlanePid: null, proxyPid: null, instancesStopped: 0, storeStopped: false });
      const urls = (await readFile(listFile, 'utf8')).split('\n');
      const modules = urls.filter((url) => url.startsWith(srcUrl)).map((url) => url.slice(srcUrl.length));
      // It did load its own module: an empty list would prove nothing.
      assert.ok(modules.includes('controlplane/host.js'), `controlplane/host.js not among the loaded modules: ${modules.join(', ')}`);
      const forbidden = modules.filter((module) => downForbidden.some((prefix) => module.startsWith(prefix)));
      assert.deepEqual(forbidden, [], `cellar down loaded ${forbidden.join(', ')}`);
      assert.deepEqual(urls.filter((url) => url.includes('/node_modules/pino/')), [], 'cellar down loaded pino');
    } finally {
      await rm(home, { recursive: true, force: true });
    }
  });
});
