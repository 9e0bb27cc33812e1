import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { CatalogueEntry } from '../src/lib/settings.js';
import { catalogueFromRows, checkSettings, isPlatformOwned } from '../src/lib/settings.js';
import { type TestStore, startTestStore } from './helpers/store.js';

/** The parameter catalogue read from a real server's pg_settings, and every kind of bad value refused by name. */

describe('settings: catalogue and validation', () => {
  let store: TestStore;
  let catalogue: Map<string, CatalogueEntry>;

  before(async () => {
    store = await startTestStore();
    // The rows the data plane's settings() reads, from a real server: the catalogue Cellar stores.
    const rows = await store.pool.query('select name, vartype, unit, min_val as "minVal", max_val as "maxVal", enumvals as "enumVals", context from pg_settings');
    catalogue = new Map(catalogueFromRows(rows.rows).map((entry) => [entry.name, entry]));
  });

  after(async () => {
    await store.close();
  });

  test('the catalogue comes from pg_settings: units, ranges, enums, and reload or restart', () => {
    const sharedBuffers = catalogue.get('shared_buffers');
    assert.deepEqual([sharedBuffers?.type, sharedBuffers?.unit, sharedBuffers?.apply], ['integer', '8kB', 'restart']);
    assert.equal(catalogue.get('work_mem')?.apply, 'reload');
    assert.ok(catalogue.get('log_min_messages')?.enumValues?.includes('warning'));
    assert.equal(catalogue.get('max_connections')?.noLowerOnReplicas, true);
    assert.equal(catalogue.get('block_size')?.apply, 'fixed');
  });

  test('good values pass, in their units; a restart parameter says so', () => {
    const checked = checkSettings(catalogue, { work_mem: '64MB', statement_timeout: '5min', log_min_messages: 'WARNING', jit: 'off', max_connections: '150' }, 1024);
    assert.equal(checked.restart, true, 'max_connections needs a restart');
    assert.equal(checkSettings(catalogue, { work_mem: '8MB' }, 1024).restart, false);
  });

  const refused: readonly [string, Record<string, string>, RegExp][] = [
    ['a platform-owned parameter', { listen_addresses: '*' }, /managed by Cellar/],
    ['a path', { log_directory: '/tmp' }, /managed by Cellar/],
    ['a library', { shared_preload_libraries: 'x' }, /managed by Cellar/],
    ['ssl', { ssl: 'on' }, /managed by Cellar/],
    ['durability the platform promises', { synchronous_commit: 'off' }, /managed by Cellar/],
    ['an unknown parameter', { no_such_setting: '1' }, /not a parameter of this Postgres version/],
    ['a fixed parameter', { block_size: '16384' }, /cannot be changed/],
    ['a bad name', { 'Work-Mem': '1' }, /not a parameter name/],
    ['a bad boolean', { jit: 'maybe' }, /not a boolean/],
    ['a bad enum', { log_min_messages: 'loud' }, /not one of .*warning/],
    ['not a number', { work_mem: 'lots' }, /not a number/],
    ['a unit of the wrong kind', { work_mem: '5min' }, /unit "min" is not one of/],
    ['a unit on a unitless parameter', { max_connections: '10MB' }, /takes none/],
    ['below the minimum', { work_mem: '1kB' }, /below the minimum 64 × kB/],
    ['above the maximum', { max_connections: '1000000' }, /above the maximum/],
    ['not whole', { max_connections: '10.5' }, /not a whole number/],
    ['shared_buffers past the size', { shared_buffers: '2GB' }, /more than the instance's memory of 1024 MB/],
  ];
  for (const [what, change, message] of refused) {
    test(`refused, naming the parameter and the limit: ${what}`, () => {
      const name = Object.keys(change)[0] ?? '';
      assert.throws(() => checkSettings(catalogue, change, 1024), (error: Error & { code?: string; field?: string }) => {
        assert.equal(error.code, 'CELLAR_E_INVALID');
        assert.equal(error.field, `settings.${name}`);
        assert.match(error.message, message);
        return true;
      });
    });
  }

  test('connections × work_mem past the memory is a warning, not an error', () => {
    const checked = checkSettings(catalogue, { work_mem: '64MB' }, 1024, { max_connections: '100' });
    assert.match(checked.warnings[0] ?? '', /100 × 64 MB can exceed the instance's memory of 1024 MB/);
  });

  test('every parameter the issue names as the platform\'s is refused', () => {
    for (const name of ['listen_addresses', 'port', 'data_directory', 'hba_file', 'ident_file', 'archive_command', 'archive_mode', 'restore_command', 'primary_conninfo', 'primary_slot_name', 'synchronous_standby_names', 'wal_level', 'hot_standby', 'cluster_name', 'ssl_cert_file', 'unix_socket_directories', 'shared_preload_libraries', 'session_preload_libraries', 'local_preload_libraries', 'log_filename', 'logging_collector', 'log_directory', 'external_pid_file', 'max_wal_senders', 'max_replication_slots']) {
      assert.ok(isPlatformOwned(name), name);
    }
    assert.equal(isPlatformOwned('work_mem'), false);
  });
});
