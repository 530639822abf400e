/**
 * Test helpers: a real core on a temporary plugins directory and data directory, plugin folders
 * copied in as a user would, and waiting on plugin states with a deadline (never a fixed sleep).
 */
import { cp, mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { Core } from '../../core/runtime.ts';
import type { PluginState, PluginStatus } from '../../core/supervisor/index.ts';

export const REPO = fileURLToPath(new URL('../..', import.meta.url));
export const PLUGINS = path.join(REPO, 'plugins');

export interface TestCore {
  core: Core;
  pluginsDir: string;
  dataDir: string;
  dir: string;
  /** Copies a folder into the watched plugins directory under `name`. */
  copyIn(src: string, name?: string): Promise<string>;
  waitFor(name: string, state: PluginState | ((p: PluginStatus) => boolean), timeoutMs?: number): Promise<PluginStatus>;
  status(name: string): PluginStatus | undefined;
  close(): Promise<void>;
}

/** Supervisor settings that keep fault tests short: fast heartbeat, short backoff. */
export const FAST_SUPERVISOR = {
  heartbeatIntervalMs: 100,
  watchdogTimeoutMs: 1000,
  backoffInitialMs: 20,
  backoffMaxMs: 200,
  maxRestarts: 3,
  restartWindowS: 30,
  startTimeoutMs: 5000,
  stopTimeoutMs: 1000,
};

export async function startTestCore(opts: {
  roles?: string[];
  plugins?: string[];
  config?: Record<string, unknown>;
  settleMs?: number;
} = {}): Promise<TestCore> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bolt-test-'));
  const pluginsDir = path.join(dir, 'plugins');
  const dataDir = path.join(dir, 'data');
  await mkdir(pluginsDir);
  for (const p of opts.plugins ?? []) await cp(p, path.join(pluginsDir, path.basename(p)), { recursive: true });
  const configFile = path.join(dir, 'bolt.yaml');
  await writeFile(configFile, JSON.stringify({ watcher: { settleMs: opts.settleMs ?? 100 }, ...opts.config }));
  const core = await Core.start({
    roles: opts.roles ?? ['server', 'sink', 'client'],
    pluginDirs: [pluginsDir],
    dataDir,
    configFile,
    log: pino({ level: process.env.BOLT_TEST_LOG ?? 'silent' }),
  });
  const status = (name: string) => core.plugins().find((p) => p.name === name);
  return {
    core,
    pluginsDir,
    dataDir,
    dir,
    status,
    async copyIn(src, name) {
      const dest = path.join(pluginsDir, name ?? path.basename(src));
      await cp(src, dest, { recursive: true });
      return dest;
    },
    waitFor(name, state, timeoutMs = 10_000) {
      return core.supervisor.waitFor(name, typeof state === 'function' ? state : (p) => p.state === state, timeoutMs);
    },
    async close() {
      await core.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Writes a plugin folder from a manifest and an entry source; returns its path. */
export async function writePlugin(dir: string, manifest: Record<string, unknown>, source: string, entry = 'index.ts'): Promise<string> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'plugin.json'), JSON.stringify({ version: '1.0.0', apiVersion: 1, kind: 'service', roles: ['server', 'sink', 'client'], entry, ...manifest }, null, 2));
  await writeFile(path.join(dir, entry), source);
  return dir;
}
