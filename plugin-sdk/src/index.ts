/**
 * bolt-plugin-sdk: the one typed contract between Bolt's core and its plugins.
 *
 * A plugin is a folder with a `plugin.json` (see {@link PluginManifest}) and an entry module whose
 * default export is a {@link Plugin} (or, for `isolation: "pool"`, a function). The entry needs no
 * runtime import: `definePlugin` and the kind helpers only add types.
 */
export * from './schemas/index.ts';
export * from './errors.ts';
export * from './action.ts';
export { ownThread } from './thread.ts';

/** Undoes what a `subscribe` or `provide` call did. Calling it twice is harmless. */
export type Disposer = () => void;

/** Who sent a bus message: a plugin name, or `core` for the runtime itself. */
export interface BusMeta {
  from: string;
  topic?: string;
}

export interface RequestOptions {
  /** Milliseconds before the request fails with BOLT_ERR_BUS_TIMEOUT (default 5000). */
  timeoutMs?: number;
}

/**
 * The only way plugins talk to each other. Messages are structured-cloned: send plain data.
 *
 * Topics are publish/subscribe, fire and forget, delivered in publish order to every subscriber
 * (a subscription to `metrics.*` matches every topic that starts with `metrics.`).
 * Services are request/response with one provider each; a request fails with a coded error when
 * there is no provider (BOLT_ERR_BUS_NO_PROVIDER), it times out (BOLT_ERR_BUS_TIMEOUT), the provider
 * ends mid-request (BOLT_ERR_BUS_PROVIDER_CRASHED) or its handler throws (BOLT_ERR_BUS_HANDLER_FAILED).
 * When a plugin requests another worker plugin's service, the core gives the pair a direct
 * MessageChannel, so later requests go worker to worker.
 */
export interface Bus {
  publish(topic: string, data?: unknown): void;
  /**
   * Calls `handler` for every message on `topic`. An error thrown by the handler is an uncaught
   * error of the plugin (it crashes and is restarted): catch what you can handle.
   */
  subscribe(topic: string, handler: (data: unknown, meta: BusMeta) => void): Disposer;
  /** Serves `service`. What the handler returns (or resolves to) is the response; what it throws is sent back as an error. */
  provide(service: string, handler: (data: unknown, meta: BusMeta) => unknown): Disposer;
  request<T = unknown>(service: string, data?: unknown, options?: RequestOptions): Promise<T>;
}

/** A pino-style logger, pre-tagged with the plugin's name. */
export interface Logger {
  debug(msg: string): void;
  debug(obj: Record<string, unknown>, msg?: string): void;
  info(msg: string): void;
  info(obj: Record<string, unknown>, msg?: string): void;
  warn(msg: string): void;
  warn(obj: Record<string, unknown>, msg?: string): void;
  error(msg: string): void;
  error(obj: Record<string, unknown>, msg?: string): void;
}

/**
 * What the operator said when starting the process (`bolt-core start` flags), the same for every
 * plugin. The core passes it through without reading it; the plugins of a role take what concerns
 * them (the transport its ports and server URL, for example).
 */
export interface ProcessOptions {
  /** Server HTTP API and agent WebSocket port (`--port`, default 7700). */
  port?: number;
  /** Sink ingest and dashboard port (`--sink-port`, default 7701). */
  sinkPort?: number;
  /** Address the listeners bind to (`--listen`, default all interfaces). */
  listen?: string;
  /** The server to connect to, for clients and a separate sink (`--server ws://HOST:7700`). */
  server?: string;
  /** This host's name in listings (`--name`, default the OS host name). */
  name?: string;
  /** This host's labels (`--label k=v`, repeatable). */
  labels?: Record<string, string>;
  /** Accept every new client and sink key without `bolt-core keys accept` (`--auto-accept`). */
  autoAccept?: boolean;
  /** The server's public key (base64) or fingerprint, pinned before first contact (`--server-key`). */
  serverKey?: string;
  /** TLS certificate and key files (PEM) for the listeners (`--tls-cert`, `--tls-key`). */
  tlsCert?: string;
  tlsKey?: string;
  /** Extra CA certificate (PEM) a client trusts for `wss://` (`--tls-ca`). */
  tlsCa?: string;
  /** Testing only: this host's clock runs this many milliseconds off the real one (`--clock-skew-ms`). */
  clockSkewMs?: number;
}

/** What a plugin gets in `start(ctx)` and `stop(ctx)`. */
export interface PluginContext<Config = Record<string, unknown>> {
  /** The plugin's name from its manifest. */
  readonly name: string;
  readonly version: string;
  /** The roles of the process hosting the plugin (for example `['server', 'sink']`). */
  readonly roles: readonly string[];
  /** The plugin's settings from bolt.yaml, already validated against the manifest's config schema. */
  readonly config: Config;
  /** The process's start options (see ProcessOptions). */
  readonly options: Readonly<ProcessOptions>;
  readonly log: Logger;
  /** Aborted when the plugin is being unloaded (stop, reload, removal, shutdown). */
  readonly signal: AbortSignal;
  readonly bus: Bus;
  /** A directory the plugin may write to; it survives restarts (`<data>/plugins/<name>`). */
  readonly dataDir: string;
  /** The plugin's own folder. */
  readonly pluginDir: string;
}

/**
 * A plugin's default export.
 *
 * - `start` runs once per load, inside the plugin's host; the plugin is `running` when it resolves.
 *   It must finish within the start deadline (default 10 s).
 * - `stop` runs once, when the plugin is unloaded, after `ctx.signal` is aborted; the host is
 *   terminated after the stop deadline (default 5 s) whether or not it finished. It is not called
 *   after a crash.
 */
export interface Plugin<Config = Record<string, unknown>> {
  start(ctx: PluginContext<Config>): void | Promise<void>;
  stop?(ctx: PluginContext<Config>): void | Promise<void>;
}

/** Identity helper that types a plugin's default export. */
export function definePlugin<Config = Record<string, unknown>>(plugin: Plugin<Config>): Plugin<Config> {
  return plugin;
}

/**
 * An action runs one task on a client host (kind `action`). Its `start(ctx)` usually calls
 * `serveAction(ctx, name, run)`, which takes the verified dispatches for that action name, waits
 * for the start instant and reports `task.event`s to the sink.
 */
export function defineAction<Config = Record<string, unknown>>(plugin: Plugin<Config>): Plugin<Config> {
  return plugin;
}

/**
 * The samples of a `sink.metrics.batch` bus message. The sink's transport publishes a batch as
 * `{ hostId, id, host, runId?, sampleCount, json }`, the wire message's JSON text (one string to
 * copy between threads instead of thousands of small objects); other publishers may give
 * `samples` as objects. Returns undefined for anything else (malformed text included).
 */
export function metricsBatchSamples(batch: { samples?: unknown; json?: unknown }): unknown[] | undefined {
  if (Array.isArray(batch.samples)) return batch.samples;
  if (typeof batch.json !== 'string') return undefined;
  try {
    const parsed = JSON.parse(batch.json) as { samples?: unknown } | null;
    return Array.isArray(parsed?.samples) ? parsed.samples : undefined;
  } catch {
    return undefined;
  }
}

/** A collector samples host metrics while tasks run (kind `collector`). */
export function defineCollector<Config = Record<string, unknown>>(plugin: Plugin<Config>): Plugin<Config> {
  return plugin;
}

/** A writer stores what the sink receives (kind `writer`). */
export function defineWriter<Config = Record<string, unknown>>(plugin: Plugin<Config>): Plugin<Config> {
  return plugin;
}

/** A transport carries the wire protocol between roles (kind `transport`). */
export function defineTransport<Config = Record<string, unknown>>(plugin: Plugin<Config>): Plugin<Config> {
  return plugin;
}

/**
 * A parser is a stateless function run in a pool (`isolation: "pool"`, kind `parser`): the core
 * provides the bus service named by the plugin and calls the function with each request's data.
 */
export function defineParser<In, Out>(parse: (input: In) => Out | Promise<Out>): (input: In) => Out | Promise<Out> {
  return parse;
}
