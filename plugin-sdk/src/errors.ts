/**
 * Every error code Bolt reports, in one table. Codes are stable: a code that is
 * retired stays here with `retired: true` and is never reused. The README's
 * "Error codes" section lists the same codes; a test keeps the two equal.
 *
 * Each entry says what failed and a hint for the person who reads it.
 */
export const ERROR_CODES = {
  // --- core: plugins, manifests, hosts, supervision
  BOLT_ERR_MANIFEST_INVALID: 'plugin.json does not match the manifest schema; the message names the file and the field.',
  BOLT_ERR_MANIFEST_UNREADABLE: 'plugin.json could not be read or is not valid JSON.',
  BOLT_ERR_MANIFEST_DUPLICATE_NAME: 'Two plugin folders declare the same name; the second one is refused.',
  BOLT_ERR_MANIFEST_API_VERSION: 'The manifest asks for a plugin API version this core does not provide.',
  BOLT_ERR_PLUGIN_ENTRY_MISSING: 'The file named by the manifest\'s "entry" does not exist (yet).',
  BOLT_ERR_PLUGIN_BUILD: 'The plugin\'s code could not be compiled (syntax error or unresolved import).',
  BOLT_ERR_PLUGIN_CONFIG_INVALID: 'The plugin\'s settings in bolt.yaml do not match the config schema in its manifest.',
  BOLT_ERR_PLUGIN_NO_START: 'The plugin\'s default export has no start(ctx) function (or, for a pool plugin, is not a function).',
  BOLT_ERR_PLUGIN_START_FAILED: 'start(ctx) threw or rejected.',
  BOLT_ERR_PLUGIN_START_TIMEOUT: 'start(ctx) did not finish within the start deadline.',
  BOLT_ERR_PLUGIN_STOP_TIMEOUT: 'stop(ctx) did not finish within the stop deadline; the host was terminated.',
  BOLT_ERR_PLUGIN_CRASHED: 'The plugin\'s host ended unexpectedly (uncaught error, rejection, exit, signal).',
  BOLT_ERR_PLUGIN_OUT_OF_MEMORY: 'The plugin reached its memory limit (resourceLimits) and was terminated.',
  BOLT_ERR_PLUGIN_UNRESPONSIVE: 'The plugin\'s event loop stopped answering heartbeats; the watchdog terminated it.',
  BOLT_ERR_PLUGIN_FAILED: 'The plugin crashed too often (restart intensity exceeded) and is left down until its files change or an operator restarts it.',
  BOLT_ERR_PLUGIN_DENIED: 'The plugin called an operation its host forbids (process.kill of its own process, process.abort, process.chdir, process.env writes).',
  BOLT_ERR_PLUGIN_NOT_FOUND: 'No loaded plugin has that name.',
  // --- core: bus
  BOLT_ERR_BUS_NO_PROVIDER: 'No running plugin provides the requested service.',
  BOLT_ERR_BUS_TIMEOUT: 'The provider did not answer the request within its timeout.',
  BOLT_ERR_BUS_PROVIDER_CRASHED: 'The provider ended while the request was in flight.',
  BOLT_ERR_BUS_DUPLICATE_PROVIDER: 'Another plugin already provides that service.',
  BOLT_ERR_BUS_HANDLER_FAILED: 'The provider\'s handler threw or rejected; the cause is attached.',
  BOLT_ERR_BUS_BAD_MESSAGE: 'A bus message from a plugin host was malformed and was dropped.',
  // --- core: config, CLI, admin API
  BOLT_ERR_CONFIG_INVALID: 'bolt.yaml is not valid YAML or does not match its schema; the message names the file and the field.',
  BOLT_ERR_CLI_USAGE: 'Unknown command or flag, or a missing or malformed argument.',
  BOLT_ERR_CLI_NOT_RUNNING: 'No running core was found for the data directory (core.json missing or stale).',
  BOLT_ERR_ADMIN_UNAUTHORIZED: 'The admin API request had no or a wrong bearer token.',
  // --- jobs (parser, scheduler)
  BOLT_ERR_ACTION_SPEC: 'A task\'s with: does not fit its action; the message names the field. Hint: shell takes exactly one of run (a string) or argv (a non-empty list of strings); sleep takes duration.',
  BOLT_ERR_ACTION_SPAWN: 'The command could not be started: its program (argv[0]) or its cwd does not exist, or is not executable or accessible; the message names which.',
  BOLT_ERR_ACTION_FAILED: 'The command exited with a non-zero code or was killed by a signal it did not get from Bolt; see stderrTail. Exit code 127 from run: means the shell did not find a command.',
  BOLT_ERR_ACTION_TIMEOUT: 'The action ran longer than its task\'s timeout; its whole process group got SIGTERM, then SIGKILL after the grace period. Hint: raise timeout: or make the command finish sooner.',
  BOLT_ERR_ACTION_CANCELLED: 'The action was cancelled (job cancelled or plugin unloaded) before it finished; a running command\'s whole process group got SIGTERM, then SIGKILL after the grace period.',
  BOLT_ERR_JOB_EMPTY: 'The job file is empty or holds only comments. Hint: a job needs at least name: and tasks:.',
  BOLT_ERR_JOB_SYNTAX: 'The job file is not valid YAML (or not valid JSON, for a .json file); the message gives the line and column. Hint: indent with spaces, close every quote and bracket.',
  BOLT_ERR_JOB_SCHEMA: 'A value in the job file has the wrong type or form, or a required key is missing; the message names the key and what was expected.',
  BOLT_ERR_JOB_UNKNOWN_KEY: 'The job file has a key the job format does not define (often a typo); the message lists the keys allowed there.',
  BOLT_ERR_JOB_DUPLICATE_TASK: 'Two tasks have the same id. Hint: task ids must be unique within a job.',
  BOLT_ERR_JOB_UNKNOWN_TASK: 'A task\'s needs names a task id the job does not define.',
  BOLT_ERR_JOB_UNKNOWN_GROUP: 'A task\'s hosts names a group the job\'s groups: do not define.',
  BOLT_ERR_JOB_UNKNOWN_ACTION: 'A task\'s action is not provided by any loaded action plugin; the message lists the known actions.',
  BOLT_ERR_JOB_CYCLE: 'The tasks\' needs form a cycle, so none of those tasks could ever start; the message names the cycle.',
  BOLT_ERR_JOB_BAD_DURATION: 'A duration is malformed or out of range. Hint: 500ms, 30s, 5m, 1h, 1m30s or a whole number of milliseconds, above zero and at most 2147483647 ms (24.8 days).',
  BOLT_ERR_JOB_BAD_PERCENT: 'A share of hosts is malformed or out of range. Hint: N% with N from 0 to 100 (require.healthy also takes a fraction from 0 to 1).',
  BOLT_ERR_JOB_BAD_CRON: 'schedule is not a cron expression node-cron accepts. Hint: 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, e.g. "0 2 * * *".',
  BOLT_ERR_JOB_TEMPLATE: 'A {{ ... }} template cannot be resolved: an undefined var, an unknown group or host index, a host template outside a task\'s with:, or an unsupported expression.',
  BOLT_ERR_JOB_BAD_VAR: 'A --var NAME=VALUE given on the command line is malformed or does not fit the type the job file gives that var.',
  BOLT_ERR_RUN_NOT_FOUND: 'No run has this id on this server; `bolt-core runs` lists them.',
  BOLT_ERR_JOB_INVALID: 'The job file has problems, so no run was started; details.issues lists each with its file, line, column and code. Hint: `bolt-core validate JOB` prints them.',
  BOLT_ERR_RUN_NO_HOSTS: 'A group of the job matched fewer connected, accepted client hosts than it needs (none, or fewer than its count); the message names the group and its labels. Hint: `bolt-core hosts` lists the hosts and their labels.',
  BOLT_ERR_RUN_UNHEALTHY: 'The health gate (require.healthy) refused to start the run: too few of the targeted hosts are healthy; the message names the others and their states. Hint: `bolt-core hosts` shows why, or lower require.healthy.',
  BOLT_ERR_RUN_DISPATCH_FAILED: 'The scheduler could not hand a task to the transport, or the transport reached none of its target hosts; the task failed without running. Check that the server\'s transport plugin is running and the hosts are connected.',
  BOLT_ERR_RUN_SCHEDULE_NOT_FOUND: 'No job schedule has this id (or job name) on this server; `scheduler.schedules.list` lists them.',
  BOLT_ERR_RUN_STORE_FAILED: 'The scheduler could not open or write its run database (scheduler.sqlite in its data directory): unwritable directory, disk full, or a file that is not its database. The message names the file.',
  // --- wire (transport, identity, trust)
  BOLT_ERR_WIRE_KEY_UNKNOWN: 'No key in the trust list has that fingerprint (or prefix) and role; list the keys with `bolt-core keys list` and copy the fingerprint.',
  BOLT_ERR_WIRE_KEY_AMBIGUOUS: 'The fingerprint prefix is shorter than 8 characters or matches more than one key (or one key in both roles); give more characters of the fingerprint, or the role.',
  BOLT_ERR_WIRE_TRUST_CORRUPT: 'trust.json in the server\'s data directory is not valid JSON or not a list of trust entries; it was left untouched. Fix or remove it (removing it forgets every accepted key).',
  BOLT_ERR_WIRE_TRUST_IO: 'trust.json could not be written (disk full, permissions); the decision or the newly seen keys are held in memory only until a later write succeeds. Check the data directory.',
  BOLT_ERR_WIRE_API_UNAUTHORIZED: 'The HTTP API request had no or a wrong bearer token; send `Authorization: Bearer <token>` with the token from the api-token file in the server\'s data directory.',
  BOLT_ERR_WIRE_API_NOT_FOUND: 'No HTTP API route has that method and path; the message names both.',
  BOLT_ERR_WIRE_API_TOO_LARGE: 'The HTTP request body exceeds 1 MiB or the request has too many headers; it was refused unread.',
  BOLT_ERR_WIRE_API_BUSY: 'The listener holds as many open event streams (live dashboard pages) as it allows; close a dashboard tab or try again later.',
  BOLT_ERR_WIRE_TOO_LARGE: 'A wire message exceeds the size limit and was refused before parsing; send smaller batches or raise the limit on both sides.',
  BOLT_ERR_WIRE_MALFORMED: 'A wire message is not JSON, lacks the { v, type, id } envelope or does not match the schema of its type; the message names the field.',
  BOLT_ERR_WIRE_UNKNOWN_TYPE: 'The message type is not one this endpoint accepts from this kind of peer; the message was dropped.',
  BOLT_ERR_WIRE_VERSION: 'The peer speaks another wire protocol version; upgrade the older side.',
  BOLT_ERR_WIRE_BAD_KEY: 'A public key is not the base64 form of exactly 32 bytes.',
  BOLT_ERR_WIRE_IDENTITY_UNREADABLE: 'The host key file in the data directory could not be read or is not an Ed25519 private key; restore it or remove it to create a new identity (peers that pinned the old key will refuse the new one).',
  BOLT_ERR_WIRE_IDENTITY_INSECURE: 'The host private key file or its directory can be read by other users; run chmod 600 on the file and chmod 700 on its directory.',
  BOLT_ERR_WIRE_HANDSHAKE_FAILED: 'The handshake broke off: a message came out of order or a transcript signature did not verify (the peer does not hold the key it presents).',
  BOLT_ERR_WIRE_ROLE_REFUSED: 'The peer claims a role this endpoint does not accept (a client key is never accepted as a server or sink); check the URL and the peer\'s --role.',
  BOLT_ERR_WIRE_PEER_NOT_ACCEPTED: 'The peer proved it holds its key, but the key is not accepted for its role; accept it with `bolt-core keys accept FINGERPRINT`.',
  BOLT_ERR_WIRE_SERVER_KEY_CHANGED: 'The server presented a public key other than the pinned one: it was reinstalled or something impersonates it. If the change is expected, remove the pinned key and reconnect.',
  BOLT_ERR_WIRE_BAD_MAC: 'A frame\'s MAC did not verify: it was altered or sealed with another key; the session is dropped.',
  BOLT_ERR_WIRE_WRONG_SESSION: 'A frame names another session than the one this connection agreed on; the session is dropped.',
  BOLT_ERR_WIRE_OUT_OF_SEQUENCE: 'A frame\'s sequence number is not the next expected one (replayed, dropped or reordered frame); the session is dropped.',
  BOLT_ERR_WIRE_SESSION_BROKEN: 'An earlier frame of this session failed verification, so the session refuses everything after it; reconnect.',
  BOLT_ERR_WIRE_UNSIGNED: 'A command arrived without a signature; nothing is run that the pinned server did not sign.',
  BOLT_ERR_WIRE_BAD_SIGNATURE: 'A command\'s signature does not verify with the pinned server key: it was altered or signed by another key.',
  BOLT_ERR_WIRE_EXPIRED: 'A command arrived after its expiresAt (on the server clock); check clock offset and dispatch latency.',
  BOLT_ERR_WIRE_EXPIRY_TOO_FAR: 'A command\'s expiresAt lies further ahead than the longest lifetime a client remembers commands for; the server should sign shorter-lived commands.',
  BOLT_ERR_WIRE_REPLAYED: 'A command with this id was already accepted (also before a restart); it is not run twice.',
  BOLT_ERR_WIRE_REPLAY_GUARD_FULL: 'The replay guard holds its maximum number of unexpired command ids; new commands are refused until some expire.',
  BOLT_ERR_WIRE_REPLAY_GUARD_IO: 'The replay guard could not read or durably write its file in the data directory; commands are refused because they could not be recorded.',
  BOLT_ERR_WIRE_PINS_CORRUPT: 'pins.json in the client\'s data directory is not valid JSON or not a map of origin to { server, sink } keys; it was left untouched and nothing is trusted. Fix or remove it (removing it trusts the next key the server presents).',
  BOLT_ERR_WIRE_PINS_IO: 'pins.json could not be read or durably written (disk full, permissions); the key is not trusted until it is pinned. Check the data directory.',
  BOLT_ERR_WIRE_OUTBOX_FULL: 'The client\'s outbox holds its maximum of messages the sink has not taken (the sink is down or unreachable for long); new task events and metrics are refused until it drains. Bring the sink back or check the client\'s route to it.',
  BOLT_ERR_WIRE_OUTBOX_IO: 'The client\'s outbox could not write or read its files under the data directory (disk full, permissions); messages are held in memory only and would not survive a restart. Check the data directory.',
  // --- metrics (collectors, sink)
  BOLT_ERR_METRICS_BAD_QUERY: 'A metrics query (sink.metrics, GET /api/runs/:id/metrics) names an unknown aggregation or combines parameters that do not go together (agg=fleet or a statistic with host=), or asks for more raw samples than one answer holds (500,000) or would read more than 10 million stored ones; the message says which. Narrow a raw query with host, from and to, or export the run with bolt-core show RUN --metrics --csv.',
  BOLT_ERR_METRICS_SAMPLES_DROPPED: 'A collector dropped its oldest metric samples: its in-memory buffer was full because the client transport\'s client.send refused batches (outbox full while the sink is unreachable, or the transport restarting). The count also reaches the sink as bolt.dropped_samples. Bring the sink back, or raise bufferSamples in the collector\'s bolt.yaml section.',
  BOLT_ERR_STORE_OPEN_FAILED: 'The sink store could not open its SQLite file (unwritable directory, a file that is not a SQLite database or not a Bolt sink store); the message names the file. Check the sink data directory, its permissions and the --data path.',
  BOLT_ERR_STORE_SCHEMA_TOO_NEW: 'The sink store file was written by a newer Bolt (its schema version is higher than this sink knows); upgrade the sink or point it at another data directory.',
  BOLT_ERR_STORE_BAD_RECORD: 'A record handed to the sink store lacks a required field or has one of the wrong type; the message names the field. Nothing from that call was stored (its transaction was rolled back).',
  BOLT_ERR_STORE_STATUS_CONFLICT: 'A different final status (state or host counts) was already committed for this task; the first committed status stands because the server may already have acted on it.',
  BOLT_ERR_STORE_WRITE_FAILED: 'SQLite refused a write (disk full, I/O error, or another writer held the file longer than the busy timeout); nothing from that call was stored. The cause carries SQLite\'s code; free disk space or stop the other writer, then resend.',
  BOLT_ERR_STORE_CLOSED: 'The sink store was used after close(); open a new SinkStore on the file.',
  BOLT_ERR_METRICS_SOURCE_UNREADABLE: 'A host metrics source (a /proc or /sys file, or statfs of a mount point) could not be read or parsed; that group or mount is left out of the sample. Check that the path exists on this host (Linux procfs and sysfs mounted) and that the configured mount points exist.',
} as const satisfies Record<string, string>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** An error with a stable code. `cause` keeps the lower-level error. */
export class BoltError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'BoltError';
    this.code = code;
    this.details = options?.details;
  }
}

/** A plain, cloneable description of an error, as it crosses threads, processes and HTTP. */
export interface ErrorInfo {
  code: string;
  message: string;
  stack?: string;
  cause?: ErrorInfo;
  /** A BoltError's details (for example the issues of an invalid job), when they are plain JSON. */
  details?: Record<string, unknown>;
}

/** Turns anything thrown into an ErrorInfo that survives structured clone and JSON. */
export function toErrorInfo(err: unknown, depth = 0): ErrorInfo {
  if (err !== null && typeof err === 'object' && typeof (err as { message?: unknown }).message === 'string') {
    const e = err as { code?: unknown; message: string; stack?: unknown; cause?: unknown; details?: unknown };
    const info: ErrorInfo = { code: typeof e.code === 'string' ? e.code : 'ERR_UNKNOWN', message: e.message };
    if (typeof e.stack === 'string') info.stack = e.stack;
    const details = plainDetails(e.details);
    if (details) info.details = details;
    if (e.cause !== undefined && depth < 3) info.cause = toErrorInfo(e.cause, depth + 1);
    return info;
  }
  return { code: 'ERR_UNKNOWN', message: typeof err === 'string' ? err : (JSON.stringify(err) ?? String(err)) };
}

/** Details survive only as plain JSON (a copy), so nothing odd crosses a thread or the network. */
function plainDetails(details: unknown): Record<string, unknown> | undefined {
  if (details === null || typeof details !== 'object' || Array.isArray(details)) return undefined;
  try {
    return JSON.parse(JSON.stringify(details)) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

/** Rebuilds a throwable error from an ErrorInfo, keeping the code (and details). */
export function fromErrorInfo(info: ErrorInfo): Error & { code: string; details?: Record<string, unknown> } {
  const err = new Error(info.message, info.cause ? { cause: fromErrorInfo(info.cause) } : undefined) as Error & { code: string; details?: Record<string, unknown> };
  err.code = info.code;
  if (info.details) err.details = info.details;
  if (info.stack) err.stack = info.stack;
  return err;
}
