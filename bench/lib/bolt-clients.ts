/**
 * Real client agents for benchmarks: N `bolt-core start --role client` processes on this machine,
 * each with its own data directory, name and labels, all running one snapshot of the client
 * plugins (so an edit to the working tree cannot hot-reload them mid-run), started a few at a
 * time until the server lists each one as connected.
 *
 * Every process runs in its own process group (the core's plugin children and its esbuild
 * service go with it); `stop` ends the groups and removes the directory, and so does the exit of
 * the benchmark process, whatever the reason.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { report } from './isolate.ts';
import { removeScratchDir, rssBytes, scratchDir, sleep, snapshotPlugins, type BoltServer } from './bolt-server.ts';

const REPO = path.resolve(import.meta.dirname, '..', '..');
const BIN = path.join(REPO, 'bin', 'bolt-core');

/** Plugins a benchmark client runs by default: the transport and the two actions benchmarks use. */
export const CLIENT_PLUGINS = ['transport-ws', 'action-shell', 'action-mark'] as const;


export interface BoltClientsOptions {
  /** The server the clients connect to (it must auto-accept them). */
  server: BoltServer;
  /** One client per name; the name is also its `--name`. */
  names: readonly string[];
  /** `--label` pairs of client i. */
  labels?: (i: number) => Record<string, string>;
  /** `--clock-skew-ms` of client i (its clock runs that far off). Default none. */
  clockSkewMs?: (i: number) => number;
  /** Plugin folders copied into the snapshot. Default CLIENT_PLUGINS. */
  plugins?: readonly string[];
  /** bolt.yaml contents (written as JSON) shared by every client. Default: none (Bolt's defaults). */
  config?: Record<string, unknown>;
  /** Clients started but not yet listed by the server, at most. Default 6. */
  concurrency?: number;
  /** Refuse to start another client while MemAvailable is below this. Default 2 GiB. */
  minAvailableBytes?: number;
  /** Until every client is listed. Default 60 s + 3 s per client. */
  timeoutMs?: number;
  /** --log-level of every client. Default 'info'. */
  logLevel?: string;
  /** Node flags before the script, e.g. V8 heap limits. Default none. */
  nodeFlags?: readonly string[];
  progress?: (msg: string) => void;
}

interface HostRecord {
  id: string;
  name: string;
  role: string;
}

const liveGroups = new Set<number>();
let exitHooked = false;

function hookExit(): void {
  if (exitHooked) return;
  exitHooked = true;
  process.on('exit', () => {
    for (const pgid of liveGroups) signalGroup(pgid, 'SIGKILL');
  });
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // The group is gone already.
  }
}

/** MemAvailable from /proc/meminfo, in bytes. */
export function memAvailableBytes(): number {
  const match = /^MemAvailable:\s+(\d+) kB$/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return match === null ? Number.POSITIVE_INFINITY : Number(match[1]) * 1024;
}

/**
 * N running client agents. Guarantees: `start` resolves only once the server's
 * `transport.sessions` lists a client session under every name; if it fails, every process it
 * started is gone and its directory removed before it rejects; `stop` ends every process group
 * (SIGTERM, SIGKILL after a grace period) and removes the directory.
 */
export class BoltClients {
  readonly names: readonly string[];
  /** Holds the plugin snapshot and one data directory and log per client. */
  readonly dir: string;
  /** Host id (key fingerprint) by name, as the server lists it. */
  readonly ids: ReadonlyMap<string, string>;
  readonly #children: ChildProcess[];

  private constructor(names: readonly string[], dir: string, children: ChildProcess[], ids: Map<string, string>) {
    this.names = names;
    this.dir = dir;
    this.#children = children;
    this.ids = ids;
  }

  /** Starts the clients, at most `concurrency` not yet connected at a time. */
  static async start(options: BoltClientsOptions): Promise<BoltClients> {
    hookExit();
    const { server, names } = options;
    const progress = options.progress ?? (() => {});
    const dir = scratchDir('bolt-bench-clients-');
    const children: ChildProcess[] = [];
    const clients = new BoltClients(names, dir, children, new Map());
    try {
      const pluginsDir = snapshotPlugins(dir, options.plugins ?? CLIENT_PLUGINS);
      const configFile = path.join(dir, 'bolt.yaml');
      fs.writeFileSync(configFile, `${JSON.stringify(options.config ?? {}, null, 2)}\n`);
      const concurrency = Math.max(1, options.concurrency ?? 6);
      const minAvailable = options.minAvailableBytes ?? 2 * 1024 ** 3;
      const deadline = performance.now() + (options.timeoutMs ?? 60_000 + 3_000 * names.length);
      const ids = clients.ids as Map<string, string>;
      const serverUrl = `ws://127.0.0.1:${server.port}`;
      const listed = async (): Promise<void> => {
        const sessions = await server.request<HostRecord[]>('transport.sessions');
        for (const s of sessions) if (s.role === 'client' && names.includes(s.name)) ids.set(s.name, s.id);
      };
      let next = 0;
      let lastShown = -1;
      while (ids.size < names.length) {
        if (performance.now() > deadline) {
          const missing = names.slice(0, next).filter((name) => !ids.has(name));
          throw new Error(`only ${ids.size} of ${names.length} clients connected in time; not connected: ${missing.join(', ')}\n${missing.slice(0, 3).map((name) => `--- ${name}.log ---\n${tail(path.join(dir, `${name}.log`))}`).join('\n')}`);
        }
        const dead = children.find((c) => c.exitCode !== null || c.signalCode !== null);
        if (dead !== undefined) throw new Error(`client ${names[children.indexOf(dead)]} exited (${dead.exitCode ?? dead.signalCode}); log: ${path.join(dir, `${names[children.indexOf(dead)]}.log`)}\n${tail(path.join(dir, `${names[children.indexOf(dead)]}.log`))}`);
        while (next < names.length && next - ids.size < concurrency) {
          const available = memAvailableBytes();
          if (available < minAvailable) throw new Error(`MemAvailable ${(available / 1024 ** 3).toFixed(1)} GiB is under the ${(minAvailable / 1024 ** 3).toFixed(1)} GiB floor after ${next} clients; not starting more`);
          children.push(clients.#spawn(next, serverUrl, pluginsDir, configFile, options));
          next++;
        }
        await sleep(250);
        await listed();
        if (ids.size !== lastShown && (ids.size % 10 === 0 || ids.size === names.length)) progress(`${ids.size}/${names.length} clients connected`);
        lastShown = ids.size;
      }
      return clients;
    } catch (err) {
      await clients.stop();
      throw err;
    }
  }

  #spawn(i: number, serverUrl: string, pluginsDir: string, configFile: string, options: BoltClientsOptions): ChildProcess {
    const name = this.names[i]!;
    const labels = options.labels?.(i) ?? {};
    const skew = options.clockSkewMs?.(i);
    const logFd = fs.openSync(path.join(this.dir, `${name}.log`), 'a');
    const child = spawn(process.execPath, [
      ...(options.nodeFlags ?? []), BIN, 'start', '--role', 'client', '--server', serverUrl, '--data', path.join(this.dir, 'data', name), '--plugins', pluginsDir,
      '--config', configFile, '--name', name, '--log-level', options.logLevel ?? 'info',
      ...Object.entries(labels).flatMap(([k, v]) => ['--label', `${k}=${v}`]),
      ...(skew !== undefined ? [`--clock-skew-ms=${skew}`] : []),
    ], { cwd: this.dir, detached: true, stdio: ['ignore', logFd, logFd] });
    fs.closeSync(logFd);
    if (child.pid === undefined) throw new Error(`client ${name} did not start`);
    liveGroups.add(child.pid);
    report({ type: 'group', pid: child.pid, marker: this.dir });
    return child;
  }

  /** Process ids of the clients' core processes. */
  get pids(): number[] {
    return this.#children.flatMap((c) => (c.pid === undefined ? [] : [c.pid]));
  }

  /** VmRSS of every client's core process (its plugin worker threads included, its child processes not). */
  rssBytes(): number[] {
    return this.pids.flatMap((pid) => {
      try {
        return [rssBytes(pid)];
      } catch {
        return [];
      }
    });
  }

  /** SIGTERM to every group, SIGKILL after `graceMs`; then removes the directory. */
  async stop(graceMs = 10_000): Promise<void> {
    const running = this.#children.filter((c) => c.exitCode === null && c.signalCode === null);
    const exits = running.map((c) => new Promise<void>((resolve) => c.once('exit', () => resolve())));
    for (const c of running) signalGroup(c.pid!, 'SIGTERM');
    const timer = setTimeout(() => {
      for (const c of running) signalGroup(c.pid!, 'SIGKILL');
    }, graceMs);
    await Promise.all(exits);
    clearTimeout(timer);
    for (const c of this.#children) {
      // Whatever a core left in its group (an action's process) goes too.
      signalGroup(c.pid!, 'SIGKILL');
      liveGroups.delete(c.pid!);
    }
    removeScratchDir(this.dir);
  }
}

function tail(file: string, lines = 15): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}
