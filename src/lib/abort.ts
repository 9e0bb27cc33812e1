import { AsyncLocalStorage } from 'node:async_hooks';

/**
 * The abort signal of the step being run, carried from the engine to everything the step calls
 * (the data plane's waits, connections and child processes) without threading it through every
 * port method. When a step's time is up the engine aborts it: a wait ends, a connection is
 * closed, a child process group is terminated, and the step settles before its retry can start.
 */
const stepScope = new AsyncLocalStorage<AbortSignal>();

export function runWithAbortSignal<T>(signal: AbortSignal, work: () => Promise<T>): Promise<T> {
  return stepScope.run(signal, work);
}

/** The current step's signal; undefined outside a step (the proxy, the API, tests). */
export function currentAbortSignal(): AbortSignal | undefined {
  return stepScope.getStore();
}

/** Throws the abort reason when the current step has been aborted. */
export function throwIfAborted(): void {
  currentAbortSignal()?.throwIfAborted();
}
