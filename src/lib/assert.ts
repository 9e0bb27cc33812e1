/** A broken invariant is a bug: crash loudly with the reason instead of limping on. */
export class InvariantError extends Error {
  override name = 'InvariantError';
}

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new InvariantError(message);
}

export function unreachable(value: never, what: string): never {
  throw new InvariantError(`unreachable ${what}: ${String(value)}`);
}
