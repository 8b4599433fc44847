/**
 * One registry of error codes. Every error a client can see is a KindlingError with a stable `code`, an HTTP status
 * and a `retryable` hint; the gateway maps them in exactly one place (src/api/errors.ts). User code failing is not an
 * error: it is a result with a non-zero exit code.
 */
export interface ErrorDefinition {
  readonly statusCode: number;
  readonly retryable: boolean;
}

export const ERROR_CODES = {
  INVALID_JSON: { statusCode: 400, retryable: false },
  VALIDATION_FAILED: { statusCode: 400, retryable: false },
  UNKNOWN_RUNTIME: { statusCode: 400, retryable: false },
  UNKNOWN_IMAGE: { statusCode: 400, retryable: false },
  UNKNOWN_EXECUTOR: { statusCode: 400, retryable: false },
  CONFLICTING_FIELDS: { statusCode: 400, retryable: false },
  LIMIT_OUT_OF_RANGE: { statusCode: 400, retryable: false },
  UNSUPPORTED_NETWORK: { statusCode: 400, retryable: false },
  /** A handler-style function on an executor of this server that keeps no warm sandboxes: a configuration to change, not to retry. */
  HANDLERS_UNSUPPORTED: { statusCode: 400, retryable: false },
  /** Persistent sandboxes on an executor that cannot host them (the message names the executor and what it lacks). */
  SANDBOXES_UNSUPPORTED: { statusCode: 400, retryable: false },
  /** A file path of a sandbox that is not a clean path inside it (`..`, NUL, too long), or one it cannot write there. */
  SANDBOX_PATH_INVALID: { statusCode: 400, retryable: false },
  /** An uploaded tar archive has an entry that would leave the target directory (absolute, `..`, a link out), a device or fifo, or is corrupt. */
  SANDBOX_TAR_INVALID: { statusCode: 400, retryable: false },
  /** A function bundle with an entry that would leave the bundle (absolute, `..`, a link out), a device or fifo, or a corrupt archive; `details.entry` names it. */
  BUNDLE_INVALID: { statusCode: 400, retryable: false },
  /** A bundle deployed to a server that keeps no bundles or dependency layers (every executor binds them). */
  BUNDLES_UNSUPPORTED: { statusCode: 400, retryable: false },
  /** A bundle's dependency build (npm ci, pip install) failed: the message carries the end of its log and the build id, details.log and details.buildId. */
  BUILD_FAILED: { statusCode: 422, retryable: false },
  /** A build id the function does not have (or another tenant's build). */
  BUILD_NOT_FOUND: { statusCode: 404, retryable: false },
  /** A deploy of a function while an earlier deploy of it still builds (details.buildId names that build): wait for it, then deploy again. */
  BUILD_IN_PROGRESS: { statusCode: 409, retryable: false },
  UNAUTHORIZED: { statusCode: 401, retryable: false },
  /** A tenant key asked for an admin-only route (tenants, keys, another tenant's scope). */
  FORBIDDEN: { statusCode: 403, retryable: false },
  /**
   * A browser request from a page of another origin that would change state (POST, PUT, PATCH, DELETE) or open a
   * WebSocket; see docs/security.md (4).
   */
  FORBIDDEN_ORIGIN: { statusCode: 403, retryable: false },
  /** The Host header names neither an address of this server, nor localhost, nor a name of --allowed-hosts (DNS rebinding). */
  HOST_NOT_ALLOWED: { statusCode: 421, retryable: false },
  TENANT_NOT_FOUND: { statusCode: 404, retryable: false },
  /** A tenant of that name exists or existed (names of deleted tenants are not reused). */
  TENANT_EXISTS: { statusCode: 409, retryable: false },
  LAST_ADMIN_KEY: { statusCode: 409, retryable: false },
  /** A per-request limit above the tenant's cap (the message names the cap). */
  TENANT_LIMIT_EXCEEDED: { statusCode: 400, retryable: false },
  /** The tenant's request rate (token bucket) is used up; Retry-After says when a request passes again. */
  TENANT_RATE_LIMITED: { statusCode: 429, retryable: true },
  /** The tenant runs as many executions as its quota allows. */
  TENANT_CONCURRENCY_LIMIT: { statusCode: 429, retryable: true },
  /** The tenant has as many dependency builds running as its quota maxConcurrentBuilds allows; nothing was stored. */
  TENANT_BUILD_LIMIT: { statusCode: 429, retryable: true },
  /**
   * A deploy or an async enqueue would take the tenant past a storage quota (maxFunctionVersions, maxCodeBytes,
   * maxQueuedPayloadBytes); nothing was stored. 409: it conflicts with what the tenant keeps, and sending it again
   * does not help until space is freed (the message says how).
   */
  TENANT_STORAGE_LIMIT: { statusCode: 409, retryable: false },
  NOT_FOUND: { statusCode: 404, retryable: false },
  /** No custom image of that name for the caller's tenant (nor a shared one). */
  IMAGE_NOT_FOUND: { statusCode: 404, retryable: false },
  /** A custom image being built is changed or deleted, or one not built (building, failed) is used: wait for `ready`. */
  IMAGE_NOT_READY: { statusCode: 409, retryable: false },
  /** The tenant keeps as many custom images as the server allows (--max-custom-images-per-tenant); delete one first. */
  IMAGE_LIMIT: { statusCode: 409, retryable: false },
  IMAGE_IN_USE: { statusCode: 409, retryable: false },
  /** The uploaded files of a custom image: an entry that would leave its directory, a device or fifo, or a corrupt tar. */
  IMAGE_FILES_INVALID: { statusCode: 400, retryable: false },
  /** No persistent sandbox of that id in the caller's tenant (another tenant's id answers the same). */
  SANDBOX_NOT_FOUND: { statusCode: 404, retryable: false },
  /** No file or directory at that path inside the sandbox. */
  SANDBOX_FILE_NOT_FOUND: { statusCode: 404, retryable: false },
  /** No background command of that id in the sandbox (finished ones are kept for a while, then forgotten). */
  SANDBOX_COMMAND_NOT_FOUND: { statusCode: 404, retryable: false },
  /** The sandbox runs as many background commands as it may at once; wait for one to end or kill one. */
  SANDBOX_COMMAND_LIMIT: { statusCode: 429, retryable: true },
  /** The sandbox is paused and the request asked for no auto-resume (`autoResume: false`): resume it first. */
  SANDBOX_PAUSED: { statusCode: 409, retryable: false },
  /**
   * The sandbox has stopped (max lifetime, died, server restart) and its executor keeps no files for it, so nothing can
   * run there again. (On the sandbox executor a stopped sandbox's files are kept and the next command restarts it.)
   */
  SANDBOX_NOT_RUNNING: { statusCode: 409, retryable: false },
  /**
   * A hibernated sandbox's saved processes could not be brought back (the image is gone or the executor refused it):
   * its files are kept and the next command starts a new process tree on them (the sandbox is `stopped`).
   */
  SANDBOX_STATE_LOST: { statusCode: 409, retryable: false },
  /**
   * Hibernate or a memory snapshot asked of a sandbox whose executor cannot save a process that streams its output to
   * the server (gvisor: commands and terminals started through the API): wait for them or kill them first.
   */
  SANDBOX_COMMANDS_RUNNING: { statusCode: 409, retryable: false },
  /** The sandbox's image cannot host a terminal (GET /v1/sandboxes/ID/pty needs python3 in the image). */
  SANDBOX_PTY_UNSUPPORTED: { statusCode: 409, retryable: false },
  /** An upload did not fit in the sandbox's writable space (diskMb); the partial file was removed. */
  SANDBOX_DISK_FULL: { statusCode: 413, retryable: false },
  /** The sandbox has as many proxied port connections open as its cap allows (default 64); close one or retry. */
  SANDBOX_PORT_LIMIT: { statusCode: 429, retryable: true },
  /** The tenant has as many live (running or paused) sandboxes as its cap allows; delete one first. */
  TENANT_SANDBOX_LIMIT: { statusCode: 429, retryable: true },
  /** No snapshot of that id in the caller's tenant (another tenant's id answers the same). */
  SNAPSHOT_NOT_FOUND: { statusCode: 404, retryable: false },
  /** A snapshot that sandboxes were made from (their read-only lower layer) cannot be deleted before them. */
  SNAPSHOT_IN_USE: { statusCode: 409, retryable: false },
  /** The tenant keeps as many snapshots as its cap allows (--max-snapshots-per-tenant); delete one first. */
  TENANT_SNAPSHOT_LIMIT: { statusCode: 429, retryable: false },
  /** Snapshots (and fromSnapshot, fork) asked of an executor that keeps no sandbox files on disk. */
  SNAPSHOTS_UNSUPPORTED: { statusCode: 400, retryable: false },
  FUNCTION_NOT_FOUND: { statusCode: 404, retryable: false },
  ROUTE_NOT_FOUND: { statusCode: 404, retryable: false },
  METHOD_NOT_ALLOWED: { statusCode: 405, retryable: false },
  /** The HTTP request itself is malformed (bad URL encoding, unparsable request line or headers). */
  MALFORMED_REQUEST: { statusCode: 400, retryable: false },
  HEADERS_TOO_LARGE: { statusCode: 431, retryable: false },
  NOT_ACCEPTABLE: { statusCode: 406, retryable: false },
  /** An async invocation's output was asked for before it finished. */
  INVOCATION_NOT_FINISHED: { statusCode: 409, retryable: true },
  PAYLOAD_TOO_LARGE: { statusCode: 413, retryable: false },
  UNSUPPORTED_MEDIA_TYPE: { statusCode: 415, retryable: false },
  TOO_MANY_REQUESTS: { statusCode: 429, retryable: true },
  /** The client went away before the answer (nginx's 499): logged, never sent, not a server error. */
  CLIENT_DISCONNECTED: { statusCode: 499, retryable: false },
  EXECUTOR_UNAVAILABLE: { statusCode: 503, retryable: true },
  /** A sandbox did not finish starting (its agent handshake) in time; it was killed and removed. */
  SANDBOX_START_TIMEOUT: { statusCode: 503, retryable: true },
  /** The file system of the data dir (store, run dirs) is full; nothing was accepted. Retry once space is freed. */
  STORAGE_FULL: { statusCode: 507, retryable: true },
  EXECUTOR_FAILED: { statusCode: 502, retryable: true },
  /** Nothing listens on that port inside the sandbox (or it did not accept in time): start the server first. */
  SANDBOX_PORT_UNREACHABLE: { statusCode: 502, retryable: true },
  SHUTTING_DOWN: { statusCode: 503, retryable: true },
  /** Cluster mode: no worker is registered with a free slot for this invocation (a gateway runs no functions itself). */
  NO_WORKERS: { statusCode: 503, retryable: true },
  /**
   * Cluster mode: a change to tenants, keys or functions could not be written to the cluster's shared state (NATS
   * JetStream unreachable or without a quorum), or was not seen back in time: retry shortly.
   */
  CLUSTER_UNAVAILABLE: { statusCode: 503, retryable: true },
  /**
   * Cluster mode: the worker running a sync invocation stopped answering (it died or lost NATS) before the result came;
   * the invocation may have run: retry it only if it is safe to run twice.
   */
  WORKER_LOST: { statusCode: 502, retryable: true },
  /**
   * A route or mode of the FaaS blueprint's gateway (/api/v1/...) that Kindling does not translate; the message names
   * the Kindling route that does the job (docs/operator.md, "Migrating from the FaaS blueprint").
   */
  COMPAT_UNSUPPORTED: { statusCode: 501, retryable: false },
  INTERNAL: { statusCode: 500, retryable: false },
  /** No large result of that service and call id is kept here (never one, or removed past its age or the size bound). */
  OPERATOR_RESULT_NOT_FOUND: { statusCode: 404, retryable: false },
  /** Operator mode: the operator's account cannot pay for its transactions (the message names the address and balance). */
  OPERATOR_OUT_OF_FUNDS: { statusCode: 503, retryable: true },
  /** Operator mode: a transaction would need more gas than --max-gas allows. */
  OPERATOR_GAS_CAP: { statusCode: 503, retryable: false },
} as const satisfies Record<string, ErrorDefinition>;

export type ErrorCode = keyof typeof ERROR_CODES;

export class KindlingError extends Error {
  readonly code: ErrorCode;
  readonly statusCode: number;
  readonly retryable: boolean;
  /** Extra, client-safe facts (e.g. which field, the allowed range). */
  readonly details: Record<string, unknown> | undefined;
  /** Seconds a client should wait before retrying (429/503). */
  readonly retryAfterSeconds: number | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options: { cause?: unknown; details?: Record<string, unknown>; retryAfterSeconds?: number } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'KindlingError';
    this.code = code;
    this.statusCode = ERROR_CODES[code].statusCode;
    this.retryable = ERROR_CODES[code].retryable;
    this.details = options.details;
    this.retryAfterSeconds = options.retryAfterSeconds;
  }
}

export function isKindlingError(value: unknown): value is KindlingError {
  return value instanceof KindlingError;
}

/** Error codes that mean "the disk is full": errno (writes of files) and SQLite's (the store). */
const STORAGE_FULL_CODES = new Set(['ENOSPC', 'EDQUOT', 'SQLITE_FULL']);

/**
 * Whether an error (or one of its causes) is a full file system. SQLite reports a failed write of its WAL or journal
 * on a full disk as an I/O error too, so those count when the message says so.
 */
export function isStorageFull(error: unknown): boolean {
  for (let at = error, depth = 0; at !== null && at !== undefined && depth < 8; at = (at as { cause?: unknown }).cause, depth++) {
    const code = (at as { code?: unknown }).code;
    if (typeof code === 'string' && (STORAGE_FULL_CODES.has(code) || (code.startsWith('SQLITE_IOERR') && /full|space/i.test(String((at as Error).message))))) return true;
  }
  return false;
}

/** The STORAGE_FULL error for `error` when it is a full disk, else null. */
export function storageFullError(error: unknown): KindlingError | null {
  if (error instanceof KindlingError && error.code === 'STORAGE_FULL') return error;
  if (!isStorageFull(error)) return null;
  return new KindlingError('STORAGE_FULL', "the server's data dir has no space left; nothing was stored. Retry once the operator has freed space", { cause: error, retryAfterSeconds: 30 });
}
