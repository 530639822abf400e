/**
 * A real Bolt server for benchmarks: `bolt-core start` (server + embedded sink, transport-ws
 * serving /agent, `--auto-accept`, listening on 127.0.0.1) in its own process group with a
 * temporary data directory, reached through its admin endpoint and measured from /proc.
 *
 * Every server and scratch directory made here is also stopped / removed when the benchmark
 * process exits or gets SIGINT/SIGTERM, so a failed run leaves nothing behind.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { report } from './isolate.ts';

import { freePort } from '../../core/cli/demo.ts';

/** After the last host connected: its 8 clock pings (50 ms apart) are over, buffers have settled. */
export const FLEET_SETTLE_MS = 2000;
/** Pausing or resuming heartbeats: wait one interval and a bit before a window starts. */
export const HEARTBEAT_SWITCH_MS = 1500;
/**
 * The health monitor would turn every host `missing` 3 s into a window without heartbeats, and back
 * to `healthy` after it: state changes that are not what a fleet benchmark measures. Its timeouts
 * move past the benchmark; heartbeats are processed exactly as with the defaults.
 */
export const QUIET_HEALTH_MONITOR = { missingAfterMs: 600_000, lostAfterMs: 1_200_000 };

export { freePort };

const REPO = path.resolve(import.meta.dirname, '..', '..');
const BIN = path.join(REPO, 'bin', 'bolt-core');

/** The plugins a benchmark server runs by default: the transport and the health monitor it feeds. */
export const SERVER_PLUGINS = ['transport-ws', 'health-monitor'] as const;

/** Clock ticks per second of /proc/<pid>/stat utime and stime. */
const CLK_TCK = (() => {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  const n = Number(r.stdout?.trim());
  return Number.isInteger(n) && n > 0 ? n : 100;
})();

/** Epoch milliseconds with sub-millisecond resolution: the clock of `sentAt` and of the fleet's arrival stamps. */
export const epoch = (): number => performance.timeOrigin + performance.now();

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The 1, 5 and 15 minute load averages. */
export function loadavg(): number[] {
  return fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number);
}

/** VmRSS of a process (all its threads), in bytes. */
export function rssBytes(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (match === null) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(match[1]) * 1024;
}

/** CPU time of a process, all threads (utime + stime of /proc/<pid>/stat), in seconds; resolution 1/CLK_TCK. */
export function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may hold spaces: state is field 3.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** User and system CPU seconds of one thread (utime, stime of /proc/<pid>/task/<tid>/stat); resolution 1/CLK_TCK. */
export function threadUserSystem(pid: number, tid: number): { user: number; system: number } {
  const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: Number(fields[11]) / CLK_TCK, system: Number(fields[12]) / CLK_TCK };
}

/** CPU time of each live thread of a process, in nanoseconds (first field of /proc/<pid>/task/<tid>/schedstat). */
export function threadCpuNs(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      out.set(Number(tid), Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]));
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return out;
}

/**
 * The thread of `pid`, other than its main thread, that used the most CPU between two
 * `threadCpuNs` snapshots. During a fleet's handshakes that is the transport-ws worker (all
 * signing, verifying and key agreement run there), which is how the benchmarks find it: Node
 * names every thread `node`.
 */
export function busiestWorkerThread(pid: number, before: Map<number, number>, after: Map<number, number>): number {
  let best = -1;
  let bestNs = -1;
  for (const [tid, ns] of after) {
    if (tid === pid) continue;
    const used = ns - (before.get(tid) ?? 0);
    if (used > bestNs) {
      best = tid;
      bestNs = used;
    }
  }
  if (best < 0) throw new Error(`process ${pid} has no thread besides its main thread`);
  return best;
}

/**
 * The code a benchmark measured: the commit, and the files under `paths` (tests left out) that
 * differ from it (a benchmark may run on a working tree that others are editing).
 */
export function codeVersion(paths: readonly string[] = ['core', 'plugin-sdk/src', 'bench', ...SERVER_PLUGINS.map((p) => `plugins/${p}`)]): { commit: string; uncommitted: string[] } {
  const git = (args: string[]) => spawnSync('git', args, { cwd: REPO, encoding: 'utf8' }).stdout ?? '';
  // Porcelain lines are 'XY path': two status columns, a space, the path.
  const uncommitted = git(['status', '--porcelain', '--', ...paths]).split('\n').filter((l) => l.length > 3).map((l) => l.slice(3)).filter((f) => !f.includes('/test/'));
  return { commit: git(['rev-parse', '--short', 'HEAD']).trim() || 'unknown', uncommitted };
}


const liveServers = new Set<BoltServer>();
const scratchDirs = new Set<string>();
let exitHooked = false;

function cleanUpNow(): void {
  for (const server of liveServers) server.killNow();
  for (const dir of scratchDirs) fs.rmSync(dir, { recursive: true, force: true });
}

function hookExit(): void {
  if (exitHooked) return;
  exitHooked = true;
  process.on('exit', cleanUpNow);
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    process.once(signal, () => {
      process.stderr.write(`[bench] ${signal}: stopping servers and removing scratch directories\n`);
      cleanUpNow();
      process.exit(code);
    });
  }
}

/**
 * A fresh directory named `<prefix>XXXXXX` under `/dev/shm` when `inMemory` is set and exists
 * (fsync there costs next to nothing), else under the OS temp dir. Removed by `removeScratchDir`
 * or at the latest when the process exits.
 */
export function scratchDir(prefix: string, inMemory = false): string {
  hookExit();
  const base = inMemory && fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const dir = fs.mkdtempSync(path.join(base, prefix));
  scratchDirs.add(dir);
  report({ type: 'dir', path: dir });
  return dir;
}

export function removeScratchDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
  scratchDirs.delete(dir);
}

export interface BoltServerOptions {
  /** Plugins (folder names under plugins/) copied into the server's own plugins directory. Default SERVER_PLUGINS. */
  plugins?: readonly string[];
  /** bolt.yaml contents (written as JSON, which YAML reads). */
  config?: Record<string, unknown>;
  /** --log-level. Default 'info', what an operator runs. */
  logLevel?: string;
  /** From spawn until transport.sessions answers. Default 60 s. */
  readyTimeoutMs?: number;
}

interface AdminInfo {
  pid: number;
  admin: { url: string; token: string };
}

/**
 * Copies the plugins into `<dir>/tree/plugins` (without their tests), next to links to the
 * repository's plugin-sdk and node_modules so that their imports resolve as in the repository.
 * The server watches this copy, not the working tree: an edit under plugins/ while a benchmark
 * runs would otherwise hot-reload the transport and drop every session.
 */
export function snapshotPlugins(dir: string, names: readonly string[]): string {
  const tree = path.join(dir, 'tree');
  const plugins = path.join(tree, 'plugins');
  fs.mkdirSync(plugins, { recursive: true });
  fs.symlinkSync(path.join(REPO, 'plugin-sdk'), path.join(tree, 'plugin-sdk'));
  fs.symlinkSync(path.join(REPO, 'node_modules'), path.join(tree, 'node_modules'));
  for (const name of names) {
    const source = path.join(REPO, 'plugins', name);
    if (!fs.existsSync(path.join(source, 'plugin.json'))) throw new Error(`no plugin ${name} in ${path.join(REPO, 'plugins')}`);
    fs.cpSync(source, path.join(plugins, name), { recursive: true, filter: (file) => path.relative(source, file).split(path.sep)[0] !== 'test' });
  }
  return plugins;
}

/**
 * One `bolt-core start` process running a snapshot of the given plugins. Guarantees: `start`
 * resolves only once the transport answers `transport.sessions`; `stop` ends the whole process
 * group (SIGTERM, SIGKILL after a grace period) and removes the data directory and the snapshot.
 */
export class BoltServer {
  readonly pid: number;
  readonly port: number;
  /** ws://127.0.0.1:PORT/agent */
  readonly agentUrl: string;
  readonly dir: string;
  readonly logFile: string;
  readonly #child: ChildProcess;
  readonly #exited: Promise<void>;
  #admin: AdminInfo | undefined;

  private constructor(child: ChildProcess, port: number, dir: string, logFile: string) {
    this.#child = child;
    this.pid = child.pid!;
    this.port = port;
    this.agentUrl = `ws://127.0.0.1:${port}/agent`;
    this.dir = dir;
    this.logFile = logFile;
    this.#exited = new Promise((resolve) => child.once('exit', () => resolve()));
  }

  /** Spawns the server and waits until its transport is serving. */
  static async start(options: BoltServerOptions = {}): Promise<BoltServer> {
    const dir = scratchDir('bolt-bench-server-');
    const port = await freePort();
    const sinkPort = await freePort();
    const pluginsDir = snapshotPlugins(dir, options.plugins ?? SERVER_PLUGINS);
    const configFile = path.join(dir, 'bolt.yaml');
    fs.writeFileSync(configFile, JSON.stringify(options.config ?? {}, null, 2));
    const logFile = path.join(dir, 'server.log');
    const logFd = fs.openSync(logFile, 'a');
    // Through bin/bolt-core, as shipped (its launcher's node and malloc settings).
    const child = spawn(BIN, [
      'start', '--data', path.join(dir, 'data'), '--plugins', pluginsDir, '--config', configFile, '--port', String(port), '--sink-port', String(sinkPort),
      '--auto-accept', '--listen', '127.0.0.1', '--log-level', options.logLevel ?? 'info',
    ], { cwd: dir, detached: true, stdio: ['ignore', logFd, logFd] });
    fs.closeSync(logFd);
    if (child.pid === undefined) throw new Error('bolt-core did not start');
    const server = new BoltServer(child, port, dir, logFile);
    liveServers.add(server);
    report({ type: 'group', pid: child.pid, marker: dir });
    try {
      await server.#waitReady(options.readyTimeoutMs ?? 60_000);
    } catch (err) {
      const tail = server.logTail();
      await server.stop();
      throw new Error(`${(err as Error).message}\n--- server log (last lines) ---\n${tail}`);
    }
    return server;
  }

  get running(): boolean {
    return this.#child.exitCode === null && this.#child.signalCode === null;
  }

  /** Calls a bus service through the admin endpoint (`POST /api/request/<service>`) and returns its result. */
  async request<T>(service: string, body: unknown = {}): Promise<T> {
    const admin = this.#admin ?? (this.#admin = JSON.parse(fs.readFileSync(path.join(this.dir, 'data', 'core.json'), 'utf8')) as AdminInfo);
    const res = await fetch(`${admin.admin.url}/api/request/${service}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${admin.admin.token}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(30_000),
    });
    const answer = (await res.json()) as { result?: T; error?: { code: string; message: string } };
    if (!res.ok) throw new Error(`${service} answered ${res.status}: ${answer.error?.code} ${answer.error?.message}`);
    return answer.result as T;
  }

  /** VmRSS of the server process. */
  rssBytes(): number {
    return rssBytes(this.pid);
  }

  /** CPU seconds of the server process, all threads. */
  cpuSeconds(): number {
    return cpuSeconds(this.pid);
  }

  /** CPU nanoseconds of each live thread of the server process. */
  threadCpuNs(): Map<number, number> {
    return threadCpuNs(this.pid);
  }

  /** The last lines of the server's log. */
  logTail(lines = 30): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  /** SIGTERM to the process group, SIGKILL after `graceMs`; then removes the data directory. */
  async stop(graceMs = 15_000): Promise<void> {
    if (this.running) {
      this.#signal('SIGTERM');
      const timer = setTimeout(() => this.#signal('SIGKILL'), graceMs);
      await this.#exited;
      clearTimeout(timer);
    }
    // Anything the core left in its group goes too.
    this.#signal('SIGKILL');
    liveServers.delete(this);
    removeScratchDir(this.dir);
  }

  /** SIGKILL to the process group, synchronously (exit handler). */
  killNow(): void {
    this.#signal('SIGKILL');
  }

  #signal(signal: NodeJS.Signals): void {
    try {
      process.kill(-this.pid, signal);
    } catch {
      // The group is gone already.
    }
  }

  async #waitReady(timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    let last: unknown;
    while (performance.now() < deadline) {
      if (!this.running) throw new Error(`bolt-core exited (${this.#child.exitCode ?? this.#child.signalCode}) before its transport served`);
      try {
        this.#admin = undefined;
        const sessions = await this.request<unknown>('transport.sessions');
        if (Array.isArray(sessions)) return;
      } catch (err) {
        last = err;
      }
      await sleep(200);
    }
    throw new Error(`bolt-core's transport did not answer within ${timeoutMs} ms: ${(last as Error | undefined)?.message ?? 'no answer'}`);
  }
}
