/**
 * Where CLI text goes. With --json, stdout carries exactly one JSON document (the result) and
 * progress goes to stderr, so scripts can pipe stdout and still see a long wait advance. Here in
 * lib, not in cli/, because the host commands (controlplane/host.ts) write through it too.
 */
export interface Output {
  readonly json: boolean;
  line(text: string): void;
  progress(text: string): void;
  result(value: unknown): void;
}
