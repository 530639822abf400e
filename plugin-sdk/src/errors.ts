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
  // --- wire (transport, identity, trust)
  // --- metrics (collectors, sink)
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
}

/** Turns anything thrown into an ErrorInfo that survives structured clone and JSON. */
export function toErrorInfo(err: unknown, depth = 0): ErrorInfo {
  if (err instanceof Error) {
    const code = typeof (err as { code?: unknown }).code === 'string' ? (err as { code: string }).code : 'ERR_UNKNOWN';
    const info: ErrorInfo = { code, message: err.message };
    if (err.stack) info.stack = err.stack;
    if (err.cause !== undefined && depth < 3) info.cause = toErrorInfo(err.cause, depth + 1);
    return info;
  }
  return { code: 'ERR_UNKNOWN', message: typeof err === 'string' ? err : JSON.stringify(err) ?? String(err) };
}

/** Rebuilds a throwable error from an ErrorInfo, keeping the code. */
export function fromErrorInfo(info: ErrorInfo): Error & { code: string } {
  const err = new Error(info.message, info.cause ? { cause: fromErrorInfo(info.cause) } : undefined) as Error & { code: string };
  err.code = info.code;
  if (info.stack) err.stack = info.stack;
  return err;
}
