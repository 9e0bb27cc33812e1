import { pino, type Logger } from 'pino';

/**
 * Structured logs (JSON lines). Secrets never reach them: passwords travel in env or 0600 files,
 * and connection strings are redacted by key.
 */
export function makeLogger(level: string, destination: NodeJS.WritableStream = process.stdout): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid },
      redact: { paths: ['*.password', '*.token', '*.storeUrl', 'secrets', '*.secrets'], censor: '[redacted]' },
    },
    destination,
  );
}
