/**
 * Test helper: a real core with the sink role and writer-sqlite + aggregator-results loaded from
 * plugins/ (symlinked, so their imports resolve as in the repository), on a temporary data
 * directory that survives a restart of the core.
 */
import { mkdtemp, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { Core } from '../../../core/runtime.ts';

const PLUGINS = fileURLToPath(new URL('../..', import.meta.url));

export interface SinkCore {
  core: Core;
  /** The writer's SQLite file. */
  storeFile: string;
  /** Stops the core and starts a new one on the same data directory and settings. */
  restart(): Promise<void>;
  /** Restarts one plugin (its stop runs, then it loads again) and waits until it runs. */
  restartPlugin(name: string): Promise<void>;
  close(): Promise<void>;
}

export async function startSinkCore(config: Record<string, Record<string, unknown>> = {}, plugins = ['writer-sqlite', 'aggregator-results']): Promise<SinkCore> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bolt-sink-'));
  const pluginsDir = path.join(dir, 'plugins');
  await mkdir(pluginsDir);
  for (const name of plugins) await symlink(path.join(PLUGINS, name), path.join(pluginsDir, name), 'dir');
  const configFile = path.join(dir, 'bolt.yaml');
  await writeFile(configFile, JSON.stringify({ watcher: { settleMs: 100 }, plugins: config }));
  const dataDir = path.join(dir, 'data');
  const start = async () => {
    const core = await Core.start({ roles: ['sink'], pluginDirs: [pluginsDir], dataDir, configFile, log: pino({ level: process.env.BOLT_TEST_LOG ?? 'silent' }) });
    for (const name of plugins) {
      const status = core.plugins().find((p) => p.name === name);
      if (status?.state !== 'running') {
        await core.stop();
        throw new Error(`${name} is ${status?.state ?? 'not loaded'}: ${JSON.stringify(status?.lastError ?? status)}`);
      }
    }
    return core;
  };
  const sink: SinkCore = {
    core: await start(),
    storeFile: path.join(dataDir, 'plugins', 'writer-sqlite', 'sink.sqlite'),
    async restart() {
      await sink.core.stop();
      sink.core = await start();
    },
    async restartPlugin(name) {
      const status = await sink.core.supervisor.restart(name);
      if (status.state !== 'running') throw new Error(`${name} is ${status.state} after a restart`);
    },
    async close() {
      await sink.core.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return sink;
}

/** Polls `probe` until it returns something other than undefined; fails after `timeoutMs`. */
export async function eventually<T>(probe: () => T | undefined | Promise<T | undefined>, what: string, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
