/**
 * Domain errors: bad input, quota, not found. Each has a stable code, an HTTP status and a message
 * a user can act on. Transient faults and broken invariants are not CellarErrors (see STYLE.md §4).
 */
export const errorCatalogue = {
  CELLAR_E_INVALID: { status: 400, summary: 'A request field is missing, malformed or out of its limits.' },
  CELLAR_E_NAME_TAKEN: { status: 400, summary: 'A cluster with this name already exists in the organisation.' },
  CELLAR_E_UNAUTHENTICATED: { status: 401, summary: 'No bearer token, or one that is not known, revoked or expired (the message says which).' },
  CELLAR_E_JOIN_TOKEN: { status: 401, summary: 'The join token is malformed, unknown, expired, already used or not for this cell; nothing was issued.' },
  CELLAR_E_AGENT_UNAUTHENTICATED: { status: 401, summary: 'The agent listener needs a client certificate of the cell CA, recorded, not revoked, of a host not removed, matching the hostId sent.' },
  CELLAR_E_FORBIDDEN: { status: 403, summary: 'The token may not do this (an admin token is needed).' },
  CELLAR_E_NOT_FOUND: { status: 404, summary: 'No such resource in the organisation of the token.' },
  CELLAR_E_PLACEMENT: { status: 409, summary: 'No set of hosts can take the cluster\'s instances, or a host to drain\'s (distinct active hosts with a free slot, the memory and the disk, and on a measured host room above its disk reserve), or a storage resize\'s growth; the message says what is missing, naming each host with its numbers.' },
  CELLAR_E_CONFLICT: { status: 409, summary: 'The resource is not in a state that allows this now (e.g. a switchover while it is being created).' },
  CELLAR_E_CHANGE_IN_PROGRESS: { status: 409, summary: 'A configuration change of the cluster is still being applied; the message names its revision and step. Wait for it (`cellar config show`), then try again.' },
  CELLAR_E_CATALOGUE_MISSING: { status: 409, summary: 'The parameter catalogue of the cluster\'s Postgres version is not read yet (it is read from the first running cluster of that version); try again once the cluster runs.' },
  CELLAR_E_ROLLOUT_IN_PROGRESS: { status: 409, summary: 'A fleet rollout is running, paused or halted (the message names it and its state): resume it to the end or abort it before changing the defaults again.' },
  CELLAR_E_TOO_LARGE: { status: 413, summary: 'The request body is larger than the limit the message states.' },
  CELLAR_E_URI_TOO_LONG: { status: 414, summary: 'The URL is longer than the limit the message states.' },
  CELLAR_E_HEADERS_TOO_LARGE: { status: 431, summary: 'The request line and headers are larger than the limit the message states.' },
  CELLAR_E_TOO_MANY_STREAMS: { status: 429, summary: 'Too many live streams are open (per token, or in this control plane); the message states the limit. Close one (another tab of the console) and try again.' },
  CELLAR_E_INTERNAL: { status: 500, summary: 'An unexpected fault; the log has the details.' },
  CELLAR_E_OPERATION_FAILED: { status: 500, summary: 'A data-plane operation failed on a host\'s agent; `failure` says whether retrying can help (`transient`, `permanent`, `invariant`).' },
  CELLAR_E_STORE_UNAVAILABLE: { status: 503, summary: 'The cell store does not answer (restarting or unreachable); retry after the `Retry-After` seconds.' },
} as const;

export type ErrorCode = keyof typeof errorCatalogue;

export class CellarError extends Error {
  override name = 'CellarError';
  readonly code: ErrorCode;
  readonly field: string | undefined;

  constructor(code: ErrorCode, message: string, field?: string) {
    super(message);
    this.code = code;
    this.field = field;
  }

  get status(): number {
    return errorCatalogue[this.code].status;
  }

  toJSON(): { code: ErrorCode; message: string; field?: string } {
    return this.field === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, field: this.field };
  }
}

export function invalid(field: string, message: string): CellarError {
  return new CellarError('CELLAR_E_INVALID', message, field);
}
