/**
 * The supervisor owns every plugin folder's record: it loads, reloads and unloads plugins, watches
 * their hosts with a heartbeat, restarts crashed ones with exponential backoff, and leaves a
 * plugin `failed` after K crashes within T seconds (Erlang's restart intensity). Every state
 * change is logged and published on the bus topic `core.plugin.state`.
 */
import { EventEmitter } from 'node:events';
import { access, mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Logger as PinoLogger } from 'pino';
import { BoltError, toErrorInfo, type ErrorInfo } from '../../plugin-sdk/src/errors.ts';
import type { ProcessOptions } from '../../plugin-sdk/src/index.ts';
import type { Isolation, PluginManifest } from '../../plugin-sdk/src/schemas/manifest.ts';
import { bundlePlugin } from '../build/bundle.ts';
import type { Broker } from '../bus/broker.ts';
import { pluginSettings, type BoltConfig } from '../config/index.ts';
import { createHost, isPoolHost, type HostExit, type PluginHost } from '../host/hosts.ts';
import type { HostInit, HostMessage } from '../host/protocol.ts';
import { readManifest } from '../manifest/index.ts';

export const PLUGIN_STATES = ['loading', 'running', 'stopping', 'stopped', 'crashed', 'failed', 'invalid'] as const;
export type PluginState = (typeof PLUGIN_STATES)[number];

/** One row of the plugin table (`bolt-core plugins`, `GET /api/plugins`). */
export interface PluginStatus {
  name: string;
  folder: string;
  version: string | null;
  kind: string | null;
  isolation: Isolation | null;
  state: PluginState;
  restarts: number;
  lastError: ErrorInfo | null;
  /** When the plugin entered its current state (ISO 8601). */
  since: string;
}

export interface SupervisorOptions {
  roles: string[];
  dataDir: string;
  cacheDir: string;
  config: BoltConfig;
  configFile: string;
  /** The `bolt-core start` options every plugin gets as `ctx.options`. */
  options: ProcessOptions;
  /** Plugins under this folder are shipped with Bolt (trusted). */
  builtinDir: string;
  broker: Broker;
  log: PinoLogger;
  runtimeUrl: string;
  poolEntryUrl: string;
}

interface PluginRecord {
  folder: string;
  name: string;
  manifest?: PluginManifest;
  isolation?: Isolation;
  init?: HostInit;
  state: PluginState;
  since: number;
  restarts: number;
  crashTimes: number[];
  lastError: ErrorInfo | null;
  host?: PluginHost;
  /** Why the current host is being ended by the core (start failure, watchdog); cleared per host. */
  hostError?: ErrorInfo;
  restartTimer?: NodeJS.Timeout;
  /** When the current host last answered a heartbeat. */
  lastPong: number;
  /** Sequence number of the next heartbeat ping to the current host. */
  pingSeq: number;
  /** Settles the current stop: resolved by 'stopped' or the host's exit. */
  stopWaiter?: () => void;
}

export class Supervisor extends EventEmitter {
  private readonly records = new Map<string, PluginRecord>();
  private readonly queues = new Map<string, Promise<void>>();
  private readonly opts: SupervisorOptions;
  private closing = false;
  /** The hosts under the heartbeat watchdog, and its one timer (running while any is watched). */
  private readonly watched = new Map<PluginRecord, PluginHost>();
  private watchdog: NodeJS.Timeout | undefined;

  constructor(opts: SupervisorOptions) {
    super();
    this.opts = opts;
  }

  /** Brings a folder's record in line with the disk: (re)load it, or unload it when its plugin.json is gone. */
  sync(folder: string): Promise<void> {
    return this.enqueue(folder, async () => {
      if (this.closing) return;
      const exists = await access(path.join(folder, 'plugin.json')).then(() => true, () => false);
      const record = this.records.get(folder);
      if (record) await this.stop(record);
      if (!exists) {
        if (record) {
          this.records.delete(folder);
          this.opts.log.info({ plugin: record.name, folder }, 'plugin unloaded');
          this.emit('change', record.name);
          await this.retryDuplicates(record.name);
        }
        return;
      }
      await this.load(folder);
    });
  }

  /** Operator restart: starts a `failed`, `crashed` or `stopped` plugin again with a fresh restart budget. */
  async restart(name: string): Promise<PluginStatus> {
    const record = [...this.records.values()].find((r) => r.name === name);
    if (!record) throw new BoltError('BOLT_ERR_PLUGIN_NOT_FOUND', `no plugin named '${name}' (see bolt-core plugins)`);
    await this.enqueue(record.folder, async () => {
      await this.stop(record);
      record.crashTimes = [];
      await this.load(record.folder);
    });
    const settled = (p: PluginStatus) => p.folder === record.folder && p.state !== 'loading' && p.state !== 'stopping';
    return this.waitFor(name, settled, this.opts.config.supervisor.startTimeoutMs + 1000)
      .catch(() => this.status(this.records.get(record.folder) ?? record));
  }

  /** Resolves with the first plugin named `name` whose status matches; rejects after `timeoutMs`. */
  waitFor(name: string, match: (p: PluginStatus) => boolean, timeoutMs: number): Promise<PluginStatus> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.list().find((p) => p.name === name && match(p));
        if (!found) return;
        cleanup();
        resolve(found);
      };
      const timer = setTimeout(() => {
        cleanup();
        const now = this.list().filter((p) => p.name === name);
        reject(new BoltError('BOLT_ERR_PLUGIN_NOT_FOUND', `plugin '${name}' did not reach the expected state within ${timeoutMs} ms; now: ${JSON.stringify(now)}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.off('change', check);
      };
      this.on('change', check);
      check();
    });
  }

  list(): PluginStatus[] {
    return [...this.records.values()].map((r) => this.status(r)).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** Stops every plugin: the last started stops first, each within its stop deadline. */
  async close(): Promise<void> {
    this.closing = true;
    await Promise.all([...this.queues.values()]);
    const running = [...this.records.values()].sort((a, b) => b.since - a.since);
    for (const record of running) await this.stop(record);
  }

  private enqueue(folder: string, work: () => Promise<void>): Promise<void> {
    const prev = this.queues.get(folder) ?? Promise.resolve();
    const next = prev.then(work).catch((err: unknown) => {
      this.opts.log.error({ folder, err: toErrorInfo(err) }, 'plugin operation failed');
    });
    this.queues.set(folder, next);
    void next.then(() => {
      if (this.queues.get(folder) === next) this.queues.delete(folder);
    });
    return next;
  }

  private status(r: PluginRecord): PluginStatus {
    return {
      name: r.name,
      folder: r.folder,
      version: r.manifest?.version ?? null,
      kind: r.manifest?.kind ?? null,
      isolation: r.isolation ?? null,
      state: r.state,
      restarts: r.restarts,
      lastError: r.lastError,
      since: new Date(r.since).toISOString(),
    };
  }

  private setState(r: PluginRecord, state: PluginState, error?: ErrorInfo): void {
    const from = r.state;
    if (from === state && !error && state === 'loading') return;
    r.state = state;
    r.since = Date.now();
    if (error) r.lastError = error;
    const level = state === 'failed' || state === 'invalid' || state === 'crashed' ? 'warn' : 'info';
    this.opts.log[level]({ plugin: r.name, state, from, ...(error ? { error: { code: error.code, message: error.message } } : {}) }, `plugin ${r.name}: ${state}`);
    this.opts.broker.local.publish('core.plugin.state', this.status(r));
    this.emit('change', r.name);
  }

  private async load(folder: string): Promise<void> {
    const previous = this.records.get(folder);
    const record: PluginRecord = {
      folder,
      name: previous?.name ?? path.basename(folder),
      state: 'loading',
      since: Date.now(),
      restarts: 0,
      crashTimes: previous?.crashTimes ?? [],
      lastError: null,
      lastPong: 0,
      pingSeq: 0,
    };
    try {
      const manifest = await readManifest(folder);
      record.name = manifest.name;
      if (!manifest.roles.some((role) => this.opts.roles.includes(role))) {
        this.records.delete(folder);
        this.opts.log.debug({ plugin: manifest.name, roles: manifest.roles }, 'plugin is not for this role; not loaded');
        return;
      }
      record.manifest = manifest;
      this.records.set(folder, record);
      const owner = [...this.records.values()].find((r) => r !== record && r.name === manifest.name && r.state !== 'invalid');
      if (owner) {
        throw new BoltError('BOLT_ERR_MANIFEST_DUPLICATE_NAME', `${path.join(folder, 'plugin.json')}: field "name": '${manifest.name}' is already loaded from ${owner.folder}; rename one of them`);
      }
      const config = pluginSettings(manifest, this.opts.config, this.opts.configFile);
      const entry = path.join(folder, manifest.entry);
      if (!(await access(entry).then(() => true, () => false))) {
        throw new BoltError('BOLT_ERR_PLUGIN_ENTRY_MISSING', `${path.join(folder, 'plugin.json')}: field "entry": ${entry} does not exist`);
      }
      const bundleUrl = await bundlePlugin(entry, this.opts.cacheDir, manifest.name);
      const dataDir = path.join(this.opts.dataDir, 'plugins', manifest.name);
      await mkdir(dataDir, { recursive: true });
      record.isolation = this.isolationOf(manifest, folder);
      record.init = {
        name: manifest.name,
        version: manifest.version,
        bundleUrl,
        pluginDir: folder,
        dataDir,
        roles: this.opts.roles,
        config,
        options: this.opts.options,
        startTimeoutMs: this.opts.config.supervisor.startTimeoutMs,
        harden: record.isolation !== 'process',
      };
    } catch (err) {
      this.records.set(folder, record);
      this.setState(record, 'invalid', toErrorInfo(err));
      return;
    }
    this.startHost(record);
  }

  private isolationOf(manifest: PluginManifest, folder: string): Isolation {
    const declared = manifest.isolation ?? 'worker';
    const builtin = !path.relative(this.opts.builtinDir, folder).startsWith('..');
    return declared === 'worker' && !builtin && this.opts.config.untrustedIsolation === 'process' ? 'process' : declared;
  }

  private startHost(record: PluginRecord): void {
    const { manifest, init, isolation } = record;
    if (!manifest || !init || !isolation) return;
    this.setState(record, 'loading');
    record.hostError = undefined;
    const host = createHost(isolation, { init, manifest, runtimeUrl: this.opts.runtimeUrl, poolEntryUrl: this.opts.poolEntryUrl, pluginLimits: this.opts.config.pluginLimits });
    record.host = host;
    const broker = this.opts.broker;
    broker.attach(record.name, {
      send: (msg, transfer) => host.send(msg, transfer),
      supportsChannels: host.supportsChannels,
      ...(isPoolHost(host) ? { abortCall: (id: number) => host.abortCall(id) } : {}),
    });
    host.on('message', (msg: HostMessage) => this.onHostMessage(record, host, msg));
    host.on('exit', (exit: HostExit) => this.onHostExit(record, host, exit));
    this.startHeartbeat(record, host);
  }

  private onHostMessage(record: PluginRecord, host: PluginHost, msg: HostMessage): void {
    if (record.host !== host) return;
    switch (msg.t) {
      case 'started':
        this.setState(record, 'running');
        return;
      case 'start-failed':
        record.hostError = msg.error;
        void host.terminate();
        return;
      case 'stopped':
        if (msg.error) record.lastError = msg.error;
        record.stopWaiter?.();
        return;
      case 'pong':
        record.lastPong = Date.now();
        return;
      case 'log': {
        const level = ['debug', 'info', 'warn', 'error'].includes(msg.level) ? msg.level : 'info';
        this.opts.log[level]({ plugin: record.name, ...(msg.obj && typeof msg.obj === 'object' ? msg.obj : {}) }, String(msg.msg));
        return;
      }
      default:
        this.opts.broker.handle(record.name, msg);
    }
  }

  private onHostExit(record: PluginRecord, host: PluginHost, exit: HostExit): void {
    if (record.host !== host) return;
    this.stopHeartbeat(record);
    record.host = undefined;
    // When the core ended the host itself (start failure, watchdog), that is the reason; the
    // SIGKILL a child process then dies of is only the means.
    const error = record.hostError ?? exit.error;
    this.opts.broker.detach(record.name, error);
    if (record.state === 'stopping' || this.closing) {
      record.stopWaiter?.();
      return;
    }
    const cause = error ?? { code: 'BOLT_ERR_PLUGIN_CRASHED', message: `'${record.name}' ended unexpectedly (exit code ${exit.code})` };
    this.crashed(record, cause);
  }

  private crashed(record: PluginRecord, error: ErrorInfo): void {
    const { maxRestarts, restartWindowS, backoffInitialMs, backoffMaxMs } = this.opts.config.supervisor;
    const now = Date.now();
    record.crashTimes = record.crashTimes.filter((t) => now - t < restartWindowS * 1000);
    record.crashTimes.push(now);
    if (record.crashTimes.length >= maxRestarts) {
      this.setState(record, 'failed', error);
      this.opts.log.error({ plugin: record.name, code: 'BOLT_ERR_PLUGIN_FAILED', crashes: record.crashTimes.length, windowS: restartWindowS }, `plugin ${record.name} crashed ${record.crashTimes.length} times in ${restartWindowS} s; left down until its files change or an operator restarts it`);
      return;
    }
    this.setState(record, 'crashed', error);
    const delay = Math.min(backoffMaxMs, backoffInitialMs * 2 ** (record.crashTimes.length - 1));
    record.restartTimer = setTimeout(() => {
      record.restartTimer = undefined;
      void this.enqueue(record.folder, async () => {
        if (record.state !== 'crashed' || this.records.get(record.folder) !== record || this.closing) return;
        record.restarts++;
        this.startHost(record);
      });
    }, delay);
  }

  private startHeartbeat(record: PluginRecord, host: PluginHost): void {
    record.lastPong = Date.now();
    record.pingSeq = 0;
    this.watched.set(record, host);
    if (this.watchdog) return;
    this.watchdog = setInterval(() => this.checkHeartbeats(), this.opts.config.supervisor.heartbeatIntervalMs);
    this.watchdog.unref();
  }

  /** One tick for every watched host, so the main thread wakes once per interval, not once per plugin. */
  private checkHeartbeats(): void {
    const { watchdogTimeoutMs, startTimeoutMs } = this.opts.config.supervisor;
    const now = Date.now();
    for (const [record, host] of this.watched) {
      // Loading a plugin (its imports, its start) may hold its event loop longer than a running
      // plugin ever should, most of all when many processes start at once: it gets the start deadline.
      const limit = record.state === 'loading' ? Math.max(startTimeoutMs, watchdogTimeoutMs) : watchdogTimeoutMs;
      if (now - record.lastPong > limit) {
        this.stopHeartbeat(record);
        record.hostError = { code: 'BOLT_ERR_PLUGIN_UNRESPONSIVE', message: `'${record.name}' did not answer heartbeats for ${limit} ms (endless loop?); terminated` };
        void host.terminate();
        continue;
      }
      host.send({ t: 'ping', seq: record.pingSeq++ });
    }
  }

  private stopHeartbeat(record: PluginRecord): void {
    this.watched.delete(record);
    if (this.watched.size > 0 || !this.watchdog) return;
    clearInterval(this.watchdog);
    this.watchdog = undefined;
  }

  /** Stops a record's host (if any) within the stop deadline; leaves the record `stopped`. */
  private async stop(record: PluginRecord): Promise<void> {
    if (record.restartTimer) clearTimeout(record.restartTimer);
    record.restartTimer = undefined;
    const host = record.host;
    if (!host) return;
    this.setState(record, 'stopping');
    const { stopTimeoutMs } = this.opts.config.supervisor;
    const done = new Promise<'done'>((resolve) => {
      record.stopWaiter = () => resolve('done');
    });
    host.send({ t: 'stop' });
    let timer: NodeJS.Timeout | undefined;
    const outcome = await Promise.race([done, new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), stopTimeoutMs)))]);
    clearTimeout(timer);
    if (outcome === 'timeout') {
      record.lastError = { code: 'BOLT_ERR_PLUGIN_STOP_TIMEOUT', message: `stop(ctx) of '${record.name}' did not finish within ${stopTimeoutMs} ms; terminated` };
    }
    record.stopWaiter = undefined;
    this.stopHeartbeat(record);
    await host.terminate();
    if (record.host === host) {
      record.host = undefined;
      this.opts.broker.detach(record.name);
    }
    this.setState(record, 'stopped');
  }

  /** After a plugin is unloaded, a folder refused as its duplicate may load now. */
  private async retryDuplicates(name: string): Promise<void> {
    for (const r of this.records.values()) {
      if (r.name === name && r.state === 'invalid' && r.lastError?.code === 'BOLT_ERR_MANIFEST_DUPLICATE_NAME') void this.sync(r.folder);
    }
  }
}
