/**
 * `createTestHost`: runs one plugin in a real host (worker thread, child process or pool, as its
 * manifest says) on a real bus, so a plugin author can test it without the rest of Bolt.
 *
 * ```ts
 * const host = await createTestHost(new URL('..', import.meta.url), { config: { prefix: '> ' } });
 * expect(await host.bus.request('example.echo', 'hi')).to.equal('> hi');
 * await host.close();
 * ```
 *
 * It needs Bolt's core next to the SDK (as in the Bolt repository, or with `bolt-core` installed).
 */
import { mkdtemp, rm, symlink, writeFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { Core } from '../../core/runtime.ts';
import type { PluginState, PluginStatus } from '../../core/supervisor/index.ts';
import type { Bus, ProcessOptions } from './index.ts';
import { readManifest } from '../../core/manifest/index.ts';

export interface TestHostOptions {
  /** The plugin's settings, as they would appear under `plugins.<name>` in bolt.yaml. */
  config?: Record<string, unknown>;
  /** The roles the host process plays (default: the plugin's own roles). */
  roles?: string[];
  /** Supervisor settings (see bolt.yaml `supervisor`), e.g. a short backoff for crash tests. */
  supervisor?: Record<string, number>;
  /** The process options the plugin sees as `ctx.options` (what `bolt-core start` flags would give). */
  options?: ProcessOptions;
}

/** A log line the plugin wrote through `ctx.log`, or the core wrote about it. */
export interface LogRecord {
  level: number;
  msg: string;
  plugin?: string;
  [key: string]: unknown;
}

export interface TestHost {
  /** The bus as the core sees it: request the plugin's services, subscribe to what it publishes. */
  readonly bus: Bus;
  /** Everything logged so far (level 10 trace … 60 fatal). */
  readonly logs: LogRecord[];
  /** The plugin's row of the plugin table. */
  status(): PluginStatus;
  /** Resolves when the plugin reaches `state` (rejects after `timeoutMs`). */
  waitFor(state: PluginState, timeoutMs?: number): Promise<PluginStatus>;
  /** Stops the plugin (its `stop(ctx)` runs) and removes the temporary directories. */
  close(): Promise<void>;
}

/** Starts the plugin in `pluginDir` (a path or file URL of the folder holding plugin.json); resolves once it has settled. */
export async function createTestHost(pluginDir: string | URL, options: TestHostOptions = {}): Promise<TestHost> {
  const folder = path.resolve(typeof pluginDir === 'string' ? pluginDir : fileURLToPath(pluginDir));
  const manifest = await readManifest(folder);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bolt-testhost-'));
  const pluginsDir = path.join(dir, 'plugins');
  await mkdir(pluginsDir);
  await symlink(folder, path.join(pluginsDir, manifest.name), 'dir');
  const configFile = path.join(dir, 'bolt.yaml');
  await writeFile(configFile, JSON.stringify({
    plugins: { [manifest.name]: options.config ?? {} },
    ...(options.supervisor ? { supervisor: options.supervisor } : {}),
  }));
  const logs: LogRecord[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line) as LogRecord);
      done();
    },
  });
  const core = await Core.start({
    roles: options.roles ?? manifest.roles,
    pluginDirs: [pluginsDir],
    dataDir: path.join(dir, 'data'),
    configFile,
    log: pino({ level: 'debug' }, sink),
    ...(options.options ? { options: options.options } : {}),
  });
  const status = () => core.plugins().find((p) => p.name === manifest.name)!;
  return {
    bus: core.bus,
    logs,
    status,
    waitFor(state, timeoutMs = 10_000) {
      return core.supervisor.waitFor(manifest.name, (p) => p.state === state, timeoutMs);
    },
    async close() {
      await core.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
