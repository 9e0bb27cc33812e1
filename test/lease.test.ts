import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Lease, failsafeSilenceMs } from '../src/agent/lease.js';

/** The host lease's arithmetic (docs/HOSTS.md): grants, the failsafe's extension, and when a promote is safe. */

const ms = (value: number): bigint => BigInt(value) * 1_000_000n;
const leaseMs = 1_500;
const heartbeatMs = 250;
const marginMs = 250;

function grantEvery(lease: Lease, fromMs: number, toMs: number): void {
  for (let at = fromMs; at <= toMs; at += heartbeatMs) lease.renew(ms(at), leaseMs, [], marginMs, heartbeatMs);
}

test('a promote needs grants unbroken for lease + margin; a gap of the failsafe silence starts the count again', () => {
  const lease = new Lease();
  grantEvery(lease, 0, 1_000);
  assert.match(lease.promoteRefusal(ms(1_100)) ?? '', /held for 1100 ms/, 'too fresh: a peer may still serve by the failsafe');
  grantEvery(lease, 1_250, 2_000);
  assert.equal(lease.promoteRefusal(ms(2_100)), null, `${leaseMs + marginMs} ms unbroken`);
  // Silent for the failsafe's silence (a peer may have kept serving on that): the run starts again.
  const resumeMs = 2_000 + failsafeSilenceMs(heartbeatMs);
  lease.renew(ms(resumeMs), leaseMs, [], marginMs, heartbeatMs);
  assert.notEqual(lease.promoteRefusal(ms(resumeMs + 100)), null);
  assert.equal(lease.grantedForMs(ms(resumeMs + 100)), 100);
});

test("the failsafe's extension keeps primaries serving but is never told to peers as a grant", () => {
  const lease = new Lease();
  lease.renew(ms(0), leaseMs, [], marginMs, heartbeatMs);
  lease.extendByFailsafe(ms(1_000), leaseMs);
  assert.equal(lease.held(ms(2_000)), true, 'serving past the grant');
  assert.equal(lease.granted(ms(2_000)), false, 'but not granted');
  assert.equal(lease.silentMs(ms(2_000)), 2_000);
  assert.notEqual(lease.promoteRefusal(ms(2_000)), null, 'and no promote without a grant');
  assert.equal(lease.held(ms(2_600)), false, 'the extension ends a lease after it was asked for');
});

test('a new agent has heard nothing: peers count it as silent, and it may not promote', () => {
  const lease = new Lease();
  assert.equal(lease.silentMs(ms(5_000)), null);
  assert.equal(lease.granted(ms(0)), false);
  assert.notEqual(lease.promoteRefusal(ms(0)), null);
});
