/**
 * A running Bolt core: the watcher, supervisor, bus and admin endpoint for one process. The core
 * knows nothing about tasks, hosts or metrics; the plugins loaded for its roles do all of that.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AdminServer, type CoreInfo } from './admin/index.ts';
import { bundlePlugin } from './build/bundle.ts';
import { Broker } from './bus/broker.ts';
import { loadConfig } from './config/index.ts';
import { createLogger, type Logger } from './log.ts';
import { Supervisor, type PluginStatus } from './supervisor/index.ts';
import { PluginWatcher } from './watcher/index.ts';
import type { Bus, ProcessOptions } from '../plugin-sdk/src/index.ts';

/** The plugins shipped with Bolt. */
export const BUILTIN_PLUGINS_DIR = fileURLToPath(new URL('../plugins', import.meta.url));

export interface CoreOptions {
  roles: string[];
  /** Watched plugin directories (default: Bolt's own `plugins/`). */
  pluginDirs?: string[];
  /** State directory (default `./.bolt`). */
  dataDir?: string;
  /** bolt.yaml (default `./bolt.yaml` when it exists). */
  configFile?: string;
  log?: Logger;
  /** The `bolt-core start` options, passed to every plugin as `ctx.options`. */
  options?: ProcessOptions;
}

export class Core {
  readonly bus: Bus;
  readonly broker: Broker;
  readonly supervisor: Supervisor;
  readonly info: CoreInfo;
  readonly log: Logger;
  private readonly watcher: PluginWatcher;
  private readonly admin: AdminServer;

  private constructor(parts: { broker: Broker; supervisor: Supervisor; info: CoreInfo; log: Logger; watcher: PluginWatcher; admin: AdminServer }) {
    this.broker = parts.broker;
    this.bus = parts.broker.local;
    this.supervisor = parts.supervisor;
    this.info = parts.info;
    this.log = parts.log;
    this.watcher = parts.watcher;
    this.admin = parts.admin;
  }

  /** Starts the core and loads every plugin present; resolves once each has settled (running, invalid, crashed...). */
  static async start(opts: CoreOptions): Promise<Core> {
    const log = opts.log ?? createLogger();
    const dataDir = path.resolve(opts.dataDir ?? '.bolt');
    const cacheDir = path.join(dataDir, 'cache');
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    const configFile = path.resolve(opts.configFile ?? 'bolt.yaml');
    const config = await loadConfig(configFile, opts.roles);
    const [runtimeUrl, poolEntryUrl] = await Promise.all([
      bundlePlugin(fileURLToPath(new URL('./host/runtime.ts', import.meta.url)), cacheDir, 'bolt-runtime'),
      bundlePlugin(fileURLToPath(new URL('./host/pool-entry.ts', import.meta.url)), cacheDir, 'bolt-pool-entry'),
    ]);
    const broker = new Broker({ onBadMessage: (from, reason) => log.warn({ plugin: from }, reason) });
    const supervisor = new Supervisor({
      roles: opts.roles, dataDir, cacheDir, config, configFile, options: opts.options ?? {}, builtinDir: BUILTIN_PLUGINS_DIR,
      broker, log, runtimeUrl, poolEntryUrl,
    });
    broker.local.provide('core.plugins', () => supervisor.list());
    const watcher = new PluginWatcher({
      dirs: (opts.pluginDirs ?? [BUILTIN_PLUGINS_DIR]).map((d) => path.resolve(d)),
      settleMs: config.watcher.settleMs,
      onSettled: (folder) => void supervisor.sync(folder),
    });
    const admin = new AdminServer({ dataDir, supervisor, roles: opts.roles, bus: broker.local });
    const info = await admin.start();
    const folders = await watcher.start();
    await Promise.all(folders.map((f) => supervisor.sync(f)));
    const core = new Core({ broker, supervisor, info, log, watcher, admin });
    await core.settled();
    return core;
  }

  plugins(): PluginStatus[] {
    return this.supervisor.list();
  }

  /** Resolves when no plugin is `loading` or `stopping` (or after `timeoutMs`). */
  async settled(timeoutMs = 15_000): Promise<PluginStatus[]> {
    const busy = () => this.supervisor.list().some((p) => p.state === 'loading' || p.state === 'stopping');
    const deadline = Date.now() + timeoutMs;
    while (busy() && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.supervisor.off('change', done);
          resolve();
        };
        const timer = setTimeout(done, 50);
        this.supervisor.on('change', done);
      });
    }
    return this.supervisor.list();
  }

  /** Stops watching, stops every plugin within its deadline, removes core.json. */
  async stop(): Promise<void> {
    await this.watcher.close();
    await this.supervisor.close();
    await this.admin.close();
  }
}
