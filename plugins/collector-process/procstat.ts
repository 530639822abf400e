/**
 * CPU and memory of selected processes, read from /proc/<pid>/stat the way top(1) does it, with
 * no spawned programs (except `getconf` once). Each sample lists /proc and reads the stat of the
 * matching processes and of new pids; every other process is read again only at a full scan.
 */
import { execFile } from 'node:child_process';
import { close as fsClose, open as fsOpen, read as fsRead } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { BoltError } from '../../plugin-sdk/src/errors.ts';

/**
 * Which processes one series covers. `{ name }` matches every process whose comm (the kernel's
 * 15-character process name) or the basename of whose argv[0] equals the name; `{ pid }` matches
 * that one process while it lives. `label` names the series (tag `process`); it defaults to the name,
 * or to the pid as text.
 */
export type ProcessMatch = { name: string; label?: string } | { pid: number; label?: string };

/** One value of one metric, tagged with the match's label as `process`. */
export interface MetricPoint {
  metric: string;
  value: number;
  tags?: Record<string, string>;
}

/** What one call of ProcessSampler.sample() returns. */
export interface ProcessSample {
  /** Wall-clock time (epoch ms) at which the reads were issued. */
  timestamp: number;
  /** Monotonic milliseconds since the previous sample; absent on the first. */
  intervalMs?: number;
  metrics: MetricPoint[];
  errors: BoltError[];
}

/** The fields of /proc/<pid>/stat that the sampler uses. */
export interface PidStat {
  pid: number;
  /** The kernel's name for the process (at most 15 characters), without the parentheses. */
  comm: string;
  /** One letter: R running, S sleeping, D disk wait, Z zombie, T stopped, ... */
  state: string;
  /** CPU time in user and kernel mode, in clock ticks (CLK_TCK per second). */
  utimeTicks: number;
  stimeTicks: number;
  /** Start time in clock ticks after boot: with the pid, it names one process across pid reuse. */
  startTimeTicks: number;
  /** Resident set size in pages. */
  rssPages: number;
}

export interface ProcessSamplerOptions {
  matches: readonly ProcessMatch[];
  /** Where procfs is mounted. Default '/proc'. */
  procRoot?: string;
  /** Clock ticks per second of utime/stime. Default: `getconf CLK_TCK`, read once (100 if that fails). */
  clockTicks?: number;
  /** Bytes per page for rss. Default: `getconf PAGESIZE`, read once (4096 if that fails). */
  pageSize?: number;
  /**
   * How often every process is read again, in ms. Between these full scans a process that matched
   * nothing when it was last read is not read again (only new pids and matching ones are), which
   * keeps a sample cheap on hosts with hundreds of processes. Default 10 000.
   */
  fullScanIntervalMs?: number;
}

/** The series label of a match. */
export function matchLabel(match: ProcessMatch): string {
  if (match.label !== undefined) return match.label;
  return 'name' in match ? match.name : String(match.pid);
}

/**
 * Parses /proc/<pid>/stat. The comm field may itself hold spaces and parentheses, so it runs from
 * the first '(' to the last ')'. Returns undefined for text that is not a stat line.
 */
export function parsePidStat(text: string): PidStat | undefined {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) return undefined;
  const pid = Number(text.slice(0, open).trim());
  // rest[0] is field 3 (state) of proc(5), so field n is rest[n - 3].
  const rest = text.slice(close + 1).trim().split(/\s+/);
  const utimeTicks = Number(rest[11]);
  const stimeTicks = Number(rest[12]);
  const startTimeTicks = Number(rest[19]);
  const rssPages = Number(rest[21]);
  if (!Number.isInteger(pid) || ![utimeTicks, stimeTicks, startTimeTicks, rssPages].every(Number.isFinite)) return undefined;
  return { pid, comm: text.slice(open + 1, close), state: rest[0] ?? '', utimeTicks, stimeTicks, startTimeTicks, rssPages };
}

/** The basename of argv[0] from /proc/<pid>/cmdline text (NUL-separated); '' for kernel threads. */
export function argv0Basename(cmdline: string): string {
  const nul = cmdline.indexOf('\0');
  const argv0 = nul < 0 ? cmdline : cmdline.slice(0, nul);
  return argv0 === '' ? '' : basename(argv0);
}

/** True when a process with this comm and argv[0] basename answers to `name`. */
export function nameMatches(name: string, comm: string, argv0: string): boolean {
  return comm === name || argv0 === name;
}

/** /proc/<pid>/stat is at most about 1 KiB; argv[0] is cut at 4 KiB (PATH_MAX). */
const STAT_READ_BYTES = 2048;
const CMDLINE_READ_BYTES = 4096;

/**
 * One open, one read, one close. Uses the callback API: on a host with hundreds of processes it
 * costs less than half the CPU of fs.promises FileHandle reads, which matters at one read per
 * process per full scan. Resolves undefined when the process ended between listing and reading
 * (ENOENT, ESRCH) or is hidden from us (hidepid).
 */
function readHead(path: string, bytes: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    fsOpen(path, 'r', (openErr, fd) => {
      if (openErr) return resolve(undefined);
      const buf = Buffer.allocUnsafe(bytes);
      fsRead(fd, buf, 0, bytes, 0, (readErr, bytesRead) => {
        fsClose(fd, () => resolve(readErr ? undefined : buf.toString('latin1', 0, bytesRead)));
      });
    });
  });
}

/** A positive integer from `getconf VARIABLE` (CLK_TCK, PAGESIZE), or `fallback` when that fails. */
export function getconf(variable: string, fallback: number): Promise<number> {
  return new Promise((resolve) => {
    execFile('getconf', [variable], { timeout: 5000 }, (err, stdout) => {
      const value = Number(stdout.trim());
      resolve(!err && Number.isInteger(value) && value > 0 ? value : fallback);
    });
  });
}

function processMatches(match: ProcessMatch, stat: PidStat, argv0: string): boolean {
  return 'pid' in match ? stat.pid === match.pid : nameMatches(match.name, stat.comm, argv0);
}

interface Seen {
  stat: PidStat;
  argv0: string;
}

/**
 * Samples `proc.count`, `proc.rss_bytes` and `proc.cpu_percent` (percent of one core, so a process
 * using two cores fully shows 200) per match. CPU is the growth of utime+stime between two samples
 * of the same process (same pid and start time) over the monotonic time between the samples:
 * processes that start between two samples count from their first sample on, processes that end
 * drop out with their last interval uncounted. Zombies are not counted. The first sample carries
 * no proc.cpu_percent. A process that starts matching under a pid already read as not matching
 * (after an exec, a rewritten argv[0], or a recycled pid) is found at the next full scan. Calls are serialized.
 */
export class ProcessSampler {
  readonly #matches: readonly ProcessMatch[];
  readonly #procRoot: string;
  #clockTicks: number | undefined;
  #pageSize: number | undefined;
  /** argv[0] basename by pid, valid while the pid's start time and comm (an exec changes it) stay. */
  #argv0Cache = new Map<number, { identity: string; argv0: string }>();
  #previousTicks = new Map<string, number>();
  #previousMonotonicMs: number | undefined;
  readonly #fullScanIntervalMs: number;
  #lastFullScanMs: number | undefined;
  /** Pids that matched nothing when last read; skipped until the next full scan. */
  #ignored = new Set<number>();
  #queue: Promise<unknown> = Promise.resolve();

  /** @throws RangeError when there is no match or two matches share a label. */
  constructor(options: ProcessSamplerOptions) {
    if (options.matches.length === 0) throw new RangeError('at least one process match is needed');
    const labels = options.matches.map(matchLabel);
    const duplicate = labels.find((l, i) => labels.indexOf(l) !== i);
    if (duplicate !== undefined) throw new RangeError(`two process matches share the label "${duplicate}"`);
    this.#matches = options.matches;
    this.#procRoot = options.procRoot ?? '/proc';
    this.#clockTicks = options.clockTicks;
    this.#pageSize = options.pageSize;
    this.#fullScanIntervalMs = options.fullScanIntervalMs ?? 10_000;
  }

  /** Reads the matched processes once and returns their metrics. */
  sample(): Promise<ProcessSample> {
    const next = this.#queue.then(() => this.#takeSample());
    this.#queue = next.catch(() => undefined);
    return next;
  }

  async #takeSample(): Promise<ProcessSample> {
    this.#clockTicks ??= await getconf('CLK_TCK', 100);
    this.#pageSize ??= await getconf('PAGESIZE', 4096);
    const monotonicMs = performance.now();
    const timestamp = Date.now();
    const errors: BoltError[] = [];

    const pids = new Set<number>();
    if (this.#matches.some((m) => 'name' in m)) {
      const fullScan = this.#lastFullScanMs === undefined || monotonicMs - this.#lastFullScanMs >= this.#fullScanIntervalMs;
      if (fullScan) {
        this.#ignored.clear();
        this.#lastFullScanMs = monotonicMs;
      }
      try {
        const listed = new Set<number>();
        for (const entry of await readdir(this.#procRoot)) if (/^\d+$/.test(entry)) listed.add(Number(entry));
        for (const pid of this.#ignored) if (!listed.has(pid)) this.#ignored.delete(pid);
        for (const pid of this.#argv0Cache.keys()) if (!listed.has(pid)) this.#argv0Cache.delete(pid);
        for (const pid of listed) if (!this.#ignored.has(pid)) pids.add(pid);
      } catch (cause) {
        errors.push(new BoltError('BOLT_ERR_METRICS_SOURCE_UNREADABLE', `${this.#procRoot} could not be listed: ${(cause as Error).message}`, { cause, details: { source: this.#procRoot } }));
      }
    }
    for (const m of this.#matches) if ('pid' in m) pids.add(m.pid);

    const seen = (await Promise.all([...pids].map((pid) => this.#readProcess(pid)))).filter((s): s is Seen => s !== undefined);

    const seconds = this.#previousMonotonicMs === undefined ? 0 : (monotonicMs - this.#previousMonotonicMs) / 1000;
    const ticks = new Map<string, number>();
    const metrics: MetricPoint[] = [];
    for (const match of this.#matches) {
      const tags = { process: matchLabel(match) };
      let count = 0;
      let rssPages = 0;
      let cpuTicks = 0;
      for (const { stat, argv0 } of seen) {
        if (!processMatches(match, stat, argv0)) continue;
        count += 1;
        rssPages += stat.rssPages;
        const identity = `${stat.pid}:${stat.startTimeTicks}`;
        const total = stat.utimeTicks + stat.stimeTicks;
        ticks.set(identity, total);
        const before = this.#previousTicks.get(identity);
        if (before !== undefined && total >= before) cpuTicks += total - before;
      }
      metrics.push({ metric: 'proc.count', value: count, tags }, { metric: 'proc.rss_bytes', value: rssPages * this.#pageSize, tags });
      if (seconds > 0) metrics.push({ metric: 'proc.cpu_percent', value: (cpuTicks / this.#clockTicks / seconds) * 100, tags });
    }

    for (const { stat, argv0 } of seen) {
      if (!this.#matches.some((m) => processMatches(m, stat, argv0))) this.#ignored.add(stat.pid);
    }

    const sample: ProcessSample = { timestamp, metrics, errors };
    if (this.#previousMonotonicMs !== undefined) sample.intervalMs = monotonicMs - this.#previousMonotonicMs;
    this.#previousTicks = ticks;
    this.#previousMonotonicMs = monotonicMs;
    return sample;
  }

  async #readProcess(pid: number): Promise<Seen | undefined> {
    const text = await readHead(join(this.#procRoot, String(pid), 'stat'), STAT_READ_BYTES);
    const stat = text === undefined ? undefined : parsePidStat(text);
    if (!stat || stat.state === 'Z' || stat.state === 'X') return undefined;
    const needsArgv0 = this.#matches.some((m) => 'name' in m && m.name !== stat.comm);
    if (!needsArgv0) return { stat, argv0: '' };
    const identity = `${stat.startTimeTicks}:${stat.comm}`;
    const cached = this.#argv0Cache.get(pid);
    if (cached?.identity === identity) return { stat, argv0: cached.argv0 };
    const argv0 = argv0Basename((await readHead(join(this.#procRoot, String(pid), 'cmdline'), CMDLINE_READ_BYTES)) ?? '');
    this.#argv0Cache.set(pid, { identity, argv0 });
    return { stat, argv0 };
  }
}
