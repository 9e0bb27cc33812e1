/** Resolves at the first SIGINT or SIGTERM: how a foreground process (`cellar up`, the proxy) learns to stop. */
export function untilSignal(): Promise<void> {
  return new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}
