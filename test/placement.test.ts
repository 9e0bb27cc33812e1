import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { formatBytes } from '../src/lib/bytes.js';
import { type DiskReserve, type MeasuredDisk, type PlacementHost, type PlacementRequest, type PlacementResult, growthRefusals, placeInstances } from '../src/lib/placement.js';

/** Placement of a cluster's instances on hosts: properties over random fleets, checked against a brute-force search. */

const propertyRuns = 400;
const zoneNames = ['a', 'b', 'c', 'd'];

const anyHostArbitrary = fc.record({
  zone: fc.constantFrom('a', 'b', 'c'),
  label: fc.constantFrom('active', 'active', 'draining', 'joining', 'lost'),
  memoryMb: fc.constantFrom(1024, 2048, 4096),
  diskGb: fc.constantFrom(10, 20, 50),
  slots: fc.integer({ min: 1, max: 3 }),
  usedInstances: fc.integer({ min: 0, max: 4 }),
  usedMemoryShare: fc.constantFrom(0, 0.25, 0.5, 0.75, 1, 1.25),
  usedDiskShare: fc.constantFrom(0, 0.5, 0.8, 1),
});
/** Mostly hosts with room, so that placements and the choice between hosts are common. */
const roomyHostArbitrary = fc.record({
  zone: fc.constantFrom('a', 'b', 'c'),
  label: fc.constant('active'),
  memoryMb: fc.constantFrom(4096, 8192),
  diskGb: fc.constantFrom(50, 100),
  slots: fc.integer({ min: 2, max: 4 }),
  usedInstances: fc.integer({ min: 0, max: 1 }),
  usedMemoryShare: fc.constantFrom(0, 0.25),
  usedDiskShare: fc.constantFrom(0, 0.25),
});

/** A binary GB, and a tiny one (as a test's storage unit may be), with reserves from none to the most allowed. */
const reserveArbitrary = fc.record({ percent: fc.constantFrom(0, 10, 50), bytesPerStorageGb: fc.constantFrom(1024 ** 3, 1000) });

/** A data filesystem from nearly full to nearly empty, with instances that wrote nothing, some, all or more than their allocation. */
function measuredArbitrary(reserve: DiskReserve): fc.Arbitrary<MeasuredDisk | null> {
  const measured = fc
    .record({
      totalGb: fc.constantFrom(20, 50, 100),
      availableShare: fc.constantFrom(0.1, 0.3, 0.6, 0.9),
      instances: fc.array(fc.record({ storageGb: fc.constantFrom(1, 5, 10), usedShare: fc.constantFrom(0, 0.5, 1, 1.5) }), { maxLength: 3 }),
    })
    .map((raw): MeasuredDisk => {
      const totalBytes = raw.totalGb * reserve.bytesPerStorageGb;
      return {
        totalBytes,
        availableBytes: Math.round(totalBytes * raw.availableShare),
        instances: raw.instances.map((instance) => ({ storageGb: instance.storageGb, usedBytes: Math.round(instance.storageGb * reserve.bytesPerStorageGb * instance.usedShare) })),
      };
    });
  return fc.oneof({ arbitrary: fc.constant(null), weight: 1 }, { arbitrary: measured, weight: 2 });
}

function hostArbitrary(reserve: DiskReserve): fc.Arbitrary<Omit<PlacementHost, 'id' | 'name'>> {
  return fc.tuple(fc.oneof({ arbitrary: roomyHostArbitrary, weight: 2 }, { arbitrary: anyHostArbitrary, weight: 1 }), measuredArbitrary(reserve)).map(([raw, measured]) => ({
    zone: raw.zone,
    label: raw.label,
    memoryMb: raw.memoryMb,
    diskGb: raw.diskGb,
    slots: raw.slots,
    used: { instances: raw.usedInstances, memoryMb: Math.round(raw.memoryMb * raw.usedMemoryShare), diskGb: Math.round(raw.diskGb * raw.usedDiskShare) },
    measured,
  }));
}

function fleetArbitrary(reserve: DiskReserve): fc.Arbitrary<PlacementHost[]> {
  return fc.array(hostArbitrary(reserve), { minLength: 0, maxLength: 6 }).map((hosts): PlacementHost[] => hosts.map((host, index) => ({ id: `id${index}`, name: `host${index}`, ...host })));
}

const caseArbitrary = reserveArbitrary.chain((reserve) =>
  fleetArbitrary(reserve).chain((hosts) =>
    fc
      .record({
        count: fc.integer({ min: 1, max: 4 }),
        memoryMb: fc.constantFrom(0, 512, 1024, 2048),
        diskGb: fc.constantFrom(0, 5, 10, 20),
        usedHostIds: fc.subarray(hosts.map((host) => host.id), { maxLength: Math.min(2, hosts.length) }),
        usedZones: fc.subarray(zoneNames),
        colocate: fc.boolean(),
      })
      .map((request): { hosts: PlacementHost[]; request: PlacementRequest } => ({ hosts, request: { ...request, reserve } })),
  ),
);

/**
 * The bytes a measured filesystem can still promise, from the rule as docs/STORAGE.md states it:
 * available − Σ max(0, allocation − use) − ⌈reserve % × total⌉. Written apart from the code's.
 */
function roomLeftBytes(disk: MeasuredDisk, reserve: DiskReserve): number {
  let outstanding = 0;
  for (const instance of disk.instances) outstanding += Math.max(0, instance.storageGb * reserve.bytesPerStorageGb - instance.usedBytes);
  return disk.availableBytes - outstanding - Math.ceil((disk.totalBytes * reserve.percent) / 100);
}

/** Whether the instances may go on these hosts (one host id per instance), judged from the rules alone. */
function isValid(hosts: readonly PlacementHost[], request: PlacementRequest, hostIds: readonly string[]): boolean {
  if (!request.colocate && (new Set(hostIds).size !== hostIds.length || hostIds.some((id) => request.usedHostIds.includes(id)))) return false;
  for (const host of hosts) {
    const taken = hostIds.filter((id) => id === host.id).length;
    if (taken === 0) continue;
    if (host.label !== 'active') return false;
    if (host.used.instances + taken > host.slots) return false;
    if (host.used.memoryMb + taken * request.memoryMb > host.memoryMb) return false;
    if (host.used.diskGb + taken * request.diskGb > host.diskGb) return false;
    if (host.measured !== null && taken * request.diskGb * request.reserve.bytesPerStorageGb > roomLeftBytes(host.measured, request.reserve)) return false;
  }
  return true;
}

/** Every valid placement (as host ids in order), by trying them all. */
function allValid(hosts: readonly PlacementHost[], request: PlacementRequest): string[][] {
  const found: string[][] = [];
  const extend = (prefix: string[]): void => {
    if (prefix.length === request.count) {
      if (isValid(hosts, request, prefix)) found.push(prefix);
      return;
    }
    for (const host of hosts) extend([...prefix, host.id]);
  };
  extend([]);
  return found;
}

function newZones(hosts: readonly PlacementHost[], request: PlacementRequest, hostIds: readonly string[]): number {
  const zones = new Set(hostIds.map((id) => hosts.find((host) => host.id === id)?.zone));
  return [...zones].filter((zone) => zone !== undefined && !request.usedZones.includes(zone)).length;
}

/** The hosts that cannot take even one instance, and the phrases that must say why. */
function expectedExclusions(hosts: readonly PlacementHost[], request: PlacementRequest): Map<string, string[]> {
  const excluded = new Map<string, string[]>();
  for (const host of hosts) {
    const phrases: string[] = [];
    if (host.label !== 'active') phrases.push(host.label);
    else {
      if (!request.colocate && request.usedHostIds.includes(host.id)) phrases.push('holds an instance of this cluster');
      if (host.used.instances >= host.slots) phrases.push(`no free slot (${host.used.instances} of ${host.slots} used)`);
      if (host.memoryMb - host.used.memoryMb < request.memoryMb) phrases.push(`${request.memoryMb} MB needed`);
      if (host.diskGb - host.used.diskGb < request.diskGb) phrases.push(`${request.diskGb} GB needed`);
      const neededBytes = request.diskGb * request.reserve.bytesPerStorageGb;
      if (host.measured !== null && roomLeftBytes(host.measured, request.reserve) < neededBytes) {
        phrases.push('data filesystem: ', `reserve (${request.reserve.percent} % of ${formatBytes(host.measured.totalBytes)})`, `(${formatBytes(neededBytes)} needed)`);
      }
    }
    if (phrases.length > 0) excluded.set(host.name, phrases);
  }
  return excluded;
}

function placed(result: PlacementResult): string[] {
  assert.ok(result.ok, result.ok ? '' : result.missing);
  return result.placements.map((placement) => placement.hostId);
}

test('a placement is refused exactly when no valid placement exists (brute force over small fleets), and one made is valid', () => {
  fc.assert(
    fc.property(caseArbitrary, ({ hosts, request }) => {
      const result = placeInstances(hosts, request);
      const valid = allValid(hosts, request);
      assert.equal(result.ok, valid.length > 0, result.ok ? 'placed where nothing is valid' : `refused though ${JSON.stringify(valid[0])} is valid: ${result.missing}`);
      if (!result.ok) return;
      assert.equal(result.placements.length, request.count);
      assert.ok(isValid(hosts, request, placed(result)), `placement ${JSON.stringify(result.placements)} breaks a rule`);
      for (const placement of result.placements) assert.equal(placement.zone, hosts.find((host) => host.id === placement.hostId)?.zone);
    }),
    { numRuns: propertyRuns },
  );
});

test('instances take zones the cluster does not use while any such zone has a host with room, so no valid placement spans more new zones', () => {
  fc.assert(
    fc.property(caseArbitrary, ({ hosts, request }) => {
      const result = placeInstances(hosts, request);
      if (!result.ok) return;
      const hostIds = placed(result);
      const zones = new Set(request.usedZones);
      for (let index = 0; index < hostIds.length; index++) {
        const earlier = hostIds.slice(0, index);
        const hasRoomNow = (host: PlacementHost): boolean => isValid(hosts, { ...request, count: index + 1 }, [...earlier, host.id]);
        const unusedZoneWithRoom = hosts.some((host) => !zones.has(host.zone) && hasRoomNow(host));
        const zone = result.placements[index]?.zone as string;
        if (unusedZoneWithRoom) assert.ok(!zones.has(zone), `instance ${index + 1} went to used zone ${zone} though an unused zone had room`);
        zones.add(zone);
      }
      const best = Math.max(...allValid(hosts, request).map((valid) => newZones(hosts, request, valid)));
      assert.equal(newZones(hosts, request, hostIds), best);
    }),
    { numRuns: propertyRuns },
  );
});

test('a refusal names every host that cannot take an instance, with each reason, and no host that can', () => {
  fc.assert(
    fc.property(caseArbitrary, ({ hosts, request }) => {
      const result = placeInstances(hosts, request);
      if (result.ok) return;
      const expected = expectedExclusions(hosts, request);
      assert.deepEqual(new Set(result.excluded.map((exclusion) => exclusion.name)), new Set(expected.keys()));
      const segments = new Map(result.missing.split('; ').filter((segment) => /^host\d+: /.test(segment)).map((segment) => [segment.split(': ')[0] as string, segment]));
      assert.deepEqual(new Set(segments.keys()), new Set(expected.keys()), result.missing);
      for (const [name, phrases] of expected) {
        for (const phrase of phrases) assert.ok(segments.get(name)?.includes(phrase), `${name} is excluded for "${phrase}": ${result.missing}`);
      }
      assert.ok(result.missing.startsWith(`${request.count} instance`), result.missing);
    }),
    { numRuns: propertyRuns },
  );
});

function host(name: string, overrides: Partial<PlacementHost> = {}): PlacementHost {
  return { id: `id-${name}`, name, zone: 'z1', label: 'active', memoryMb: 8192, diskGb: 100, slots: 16, used: { instances: 0, memoryMb: 0, diskGb: 0 }, measured: null, ...overrides };
}

const binaryGb = 1024 ** 3;
const tenPercent: DiskReserve = { percent: 10, bytesPerStorageGb: binaryGb };
const threeOfSmall: PlacementRequest = { count: 3, memoryMb: 1024, diskGb: 10, usedHostIds: [], usedZones: [], colocate: false, reserve: tenPercent };

test('the refusal says exactly what is missing: how many hosts are needed, which have room, and why each other one does not', () => {
  const result = placeInstances([host('h4', { label: 'draining' }), host('h2'), host('h3', { used: { instances: 16, memoryMb: 0, diskGb: 0 } }), host('h1')], threeOfSmall);
  assert.deepEqual(result.ok ? result.placements : result.missing, '3 instances need 3 distinct active hosts with a free slot, 1024 MB and 10 GB each; 2 have room (h1, h2); h3: no free slot (16 of 16 used); h4: draining');
  const tight = placeInstances([host('h1', { used: { instances: 1, memoryMb: 7680, diskGb: 95 } })], { ...threeOfSmall, count: 1 });
  assert.deepEqual(tight.ok ? tight.placements : tight.missing, '1 instance needs 1 distinct active host with a free slot, 1024 MB and 10 GB each; 0 have room; h1: only 512 MB of 8192 MB memory free (1024 MB needed), only 5 GB of 100 GB disk free (10 GB needed)');
  const empty = placeInstances([], threeOfSmall);
  assert.deepEqual(empty.ok ? empty.placements : empty.missing, '3 instances need 3 distinct active hosts with a free slot, 1024 MB and 10 GB each; 0 have room; the cell has no hosts');
});

test('an unused zone wins over more free slots; then most free slots, then most free memory, then name', () => {
  const hosts = [
    host('busy-new-zone', { zone: 'z2', used: { instances: 15, memoryMb: 0, diskGb: 0 } }),
    host('idle-old-zone', { zone: 'z1' }),
    host('b-tied', { zone: 'z3', used: { instances: 2, memoryMb: 1024, diskGb: 0 } }),
    host('a-tied', { zone: 'z3', used: { instances: 2, memoryMb: 1024, diskGb: 0 } }),
    host('more-memory', { zone: 'z3', used: { instances: 2, memoryMb: 0, diskGb: 0 } }),
  ];
  const result = placeInstances(hosts, { ...threeOfSmall, usedZones: ['z1'], count: 2 });
  assert.deepEqual(placed(result), ['id-more-memory', 'id-busy-new-zone'], 'z3 and z2 are new to the cluster; in z3 the host with most free memory wins the tie on slots');
  const byName = placeInstances(hosts.filter((candidate) => candidate.zone === 'z3' && candidate.name !== 'more-memory'), { ...threeOfSmall, count: 1 });
  assert.deepEqual(placed(byName), ['id-a-tied']);
  assert.match(result.ok ? (result.placements[0]?.why ?? '') : '', /zone z3 not yet used by the cluster/);
});

test('a host already holding one of the cluster\'s instances takes no other, unless the cell co-locates on its one host', () => {
  const only = [host('local')];
  const spread = placeInstances(only, { ...threeOfSmall, count: 1, usedHostIds: ['id-local'] });
  assert.equal(spread.ok ? 'placed' : spread.missing, '1 instance needs 1 distinct active host with a free slot, 1024 MB and 10 GB each; 0 have room; local: holds an instance of this cluster already');
  const colocated = placeInstances(only, { ...threeOfSmall, usedHostIds: ['id-local'], usedZones: ['z1'], colocate: true });
  assert.deepEqual(placed(colocated), ['id-local', 'id-local', 'id-local']);
  const full = placeInstances([host('local', { slots: 2 })], { ...threeOfSmall, colocate: true });
  assert.equal(full.ok ? 'placed' : full.missing, '3 instances need room on active hosts with a free slot, 1024 MB and 10 GB each; there is room for 2 (local: 2)');
});

test('a measured host is refused when the new allocation would eat into its reserve, and the refusal gives available, outstanding, reserve and needed', () => {
  // 14 GB available, one instance of 1 GB that wrote 256 MB (768 MB outstanding), one of 2 GB that wrote 3 GB (over its allocation: 0, never below).
  const measured: MeasuredDisk = { totalBytes: 100 * binaryGb, availableBytes: 14 * binaryGb, instances: [{ storageGb: 1, usedBytes: 256 * 1024 ** 2 }, { storageGb: 2, usedBytes: 3 * binaryGb }] };
  const full = placeInstances([host('h1', { measured })], { ...threeOfSmall, count: 1, diskGb: 4 });
  assert.equal(
    full.ok ? 'placed' : full.missing,
    '1 instance needs 1 distinct active host with a free slot, 1024 MB and 4 GB each; 0 have room; h1: data filesystem: 14 GB available, less 768 MB allocated to its instances and not yet written, less a 10 GB reserve (10 % of 100 GB), leaves 3.3 GB (4.0 GB needed)',
  );
  assert.deepEqual(placed(placeInstances([host('h1', { measured })], { ...threeOfSmall, count: 1, diskGb: 3 })), ['id-h1'], '3 GB fits in the 3.25 GB left above the reserve');
  assert.deepEqual(placed(placeInstances([host('h1', { measured })], { ...threeOfSmall, count: 1, diskGb: 4, reserve: { ...tenPercent, percent: 0 } })), ['id-h1'], 'no reserve: 13.25 GB left');
  const unmeasured = placeInstances([host('h1', { measured: null, diskGb: 20 })], { ...threeOfSmall, count: 1, diskGb: 20 });
  assert.deepEqual(placed(unmeasured), ['id-h1'], 'a host not measured yet is judged by its declared disk only');
  const colocated = placeInstances([host('h1', { measured })], { ...threeOfSmall, diskGb: 1, colocate: true });
  assert.deepEqual(placed(colocated), ['id-h1', 'id-h1', 'id-h1'], 'three 1 GB instances fit in 3.25 GB');
  const fourColocated = placeInstances([host('h1', { measured })], { ...threeOfSmall, count: 4, diskGb: 1, colocate: true });
  assert.equal(fourColocated.ok ? 'placed' : fourColocated.missing, '4 instances need room on active hosts with a free slot, 1024 MB and 1 GB each; there is room for 3 (h1: 3)', 'each instance placed counts against the room for the next');
});

/** A host of the fleet's arbitrary, with the cluster's instances on it and how much each grows. */
const growthCaseArbitrary = reserveArbitrary.chain((reserve) =>
  fc.record({ host: hostArbitrary(reserve), count: fc.integer({ min: 1, max: 3 }), growthGb: fc.constantFrom(1, 5, 10, 40) }).map((raw) => ({ ...raw, host: { id: 'id-h', name: 'h', ...raw.host }, reserve })),
);

test("a storage resize is refused on a host exactly when the host could not take new instances of the growth's size, one per instance growing; the refusal gives the numbers", () => {
  fc.assert(
    fc.property(growthCaseArbitrary, ({ host: grown, count, growthGb, reserve }) => {
      const reasons = growthRefusals(grown, count, growthGb, reserve);
      // Growth needs disk only: the same host with every other room made ample takes the growth as instances exactly when it can grow.
      const ample = { ...grown, label: 'active', slots: grown.used.instances + count, memoryMb: Number.MAX_SAFE_INTEGER };
      const asInstances = placeInstances([ample], { count, memoryMb: 0, diskGb: growthGb, usedHostIds: [], usedZones: [], colocate: true, reserve });
      assert.equal(reasons.length === 0, asInstances.ok, `${JSON.stringify(reasons)} vs ${asInstances.ok ? 'placed' : asInstances.missing}`);
      const neededBytes = count * growthGb * reserve.bytesPerStorageGb;
      const measuredShort = grown.measured !== null && roomLeftBytes(grown.measured, reserve) < neededBytes;
      assert.equal(reasons.some((reason) => reason.startsWith('data filesystem: ') && reason.endsWith(`(${formatBytes(neededBytes)} needed)`)), measuredShort, reasons.join(', '));
      assert.equal(reasons.some((reason) => reason.startsWith('only ') && reason.endsWith(` GB disk free (${count * growthGb} GB needed)`)), grown.diskGb - grown.used.diskGb < count * growthGb, reasons.join(', '));
    }),
    { numRuns: propertyRuns },
  );
});
