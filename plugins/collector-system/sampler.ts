/**
 * Turns successive readings of the kernel's counters into host metrics: percentages for CPU,
 * gauges for memory, load and filesystems, per-second rates for network and disk.
 */
import { performance } from 'node:perf_hooks';
import { BoltError } from '../../plugin-sdk/src/errors.ts';
import {
  ProcFiles,
  readDiskstats,
  readFilesystemUsage,
  readLoadavg,
  readMeminfo,
  readNetDev,
  readProcStat,
  readWholeDisks,
  sectorsToBytes,
  selectDisks,
  selectInterfaces,
} from './procfs.ts';
import type { CpuTimes, DiskCounters, DiskFilter, FilesystemUsage, InterfaceFilter, LoadAvg, MemInfo, NetCounters, ProcStat } from './procfs.ts';

/** The metric groups a sampler can collect. */
export type SystemGroup = 'cpu' | 'memory' | 'load' | 'network' | 'disk' | 'filesystem';

export const SYSTEM_GROUPS: readonly SystemGroup[] = ['cpu', 'memory', 'load', 'network', 'disk', 'filesystem'];

/** One value of one metric; tags tell series of the same metric apart (core, iface, dev, mount). */
export interface MetricPoint {
  metric: string;
  value: number;
  tags?: Record<string, string>;
}

/** What one call of SystemSampler.sample() returns. */
export interface SystemSample {
  /** Wall-clock time (epoch ms) at which the reads were issued. */
  timestamp: number;
  /** Monotonic milliseconds since the previous reading; absent on the first sample. */
  intervalMs?: number;
  metrics: MetricPoint[];
  /** Sources that could not be read this time (BOLT_ERR_METRICS_SOURCE_UNREADABLE); their metrics are absent. */
  errors: BoltError[];
}

/** The parsed counters of one moment. A group is absent when it is not collected or its read failed. */
export interface SystemReading {
  /** performance.now() when the reads were issued. */
  monotonicMs: number;
  timestamp: number;
  cpu?: ProcStat;
  memory?: MemInfo;
  load?: LoadAvg;
  network?: Map<string, NetCounters>;
  disk?: DiskCounters[];
  filesystem?: FilesystemUsage[];
}

export interface SystemSamplerOptions {
  /** Groups to collect. Default: all of SYSTEM_GROUPS. */
  groups?: readonly SystemGroup[];
  /** Emit cpu.busy per core (tag `core`) besides the totals. Default true. */
  perCore?: boolean;
  /** Mount points for the filesystem group. Default ['/']. */
  mounts?: readonly string[];
  interfaces?: InterfaceFilter;
  disks?: DiskFilter;
  /** Where procfs is mounted. Default '/proc'. */
  procRoot?: string;
  /** Where sysfs is mounted (to tell whole disks from partitions). Default '/sys'. */
  sysRoot?: string;
}

const NET_RATES: ReadonlyArray<readonly [keyof NetCounters, string]> = [
  ['rxBytes', 'net.rx_bytes'],
  ['txBytes', 'net.tx_bytes'],
  ['rxPackets', 'net.rx_packets'],
  ['txPackets', 'net.tx_packets'],
  ['rxErrors', 'net.rx_errors'],
  ['txErrors', 'net.tx_errors'],
  ['rxDrops', 'net.rx_drops'],
  ['txDrops', 'net.tx_drops'],
];

const CPU_FIELDS: ReadonlyArray<keyof CpuTimes> = ['user', 'nice', 'system', 'idle', 'iowait', 'irq', 'softirq', 'steal'];

/** Per-field difference, or undefined when a counter went backwards (reset, hotplug) or no tick passed. */
function cpuDelta(before: CpuTimes, after: CpuTimes): { d: CpuTimes; total: number } | undefined {
  const d = { ...after };
  let total = 0;
  for (const field of CPU_FIELDS) {
    const diff = after[field] - before[field];
    if (diff < 0) return undefined;
    d[field] = diff;
    total += diff;
  }
  return total > 0 ? { d, total } : undefined;
}

/** Counter increase per second, or undefined when the counter went backwards (wrap or reset). */
function rate(before: number, after: number, seconds: number): number | undefined {
  const diff = after - before;
  return diff < 0 ? undefined : diff / seconds;
}

/**
 * Computes the metrics of `curr`, using `prev` for CPU percentages and rates. Without `prev`
 * (the first reading) only gauges come out: memory, load, filesystem. A rate whose counter went
 * backwards between the two readings is left out for that interval, never reported negative.
 * Rates divide by the monotonic time between the two readings.
 */
export function computeSystemMetrics(prev: SystemReading | undefined, curr: SystemReading, perCore = true): MetricPoint[] {
  const out: MetricPoint[] = [];
  const seconds = prev ? (curr.monotonicMs - prev.monotonicMs) / 1000 : 0;
  const hasInterval = prev !== undefined && seconds > 0;

  if (hasInterval && prev.cpu && curr.cpu) {
    const total = cpuDelta(prev.cpu.total, curr.cpu.total);
    if (total) {
      const { d } = total;
      const pct = (ticks: number): number => (ticks / total.total) * 100;
      out.push(
        { metric: 'cpu.user', value: pct(d.user + d.nice) },
        { metric: 'cpu.system', value: pct(d.system + d.irq + d.softirq) },
        { metric: 'cpu.iowait', value: pct(d.iowait) },
        { metric: 'cpu.steal', value: pct(d.steal) },
        { metric: 'cpu.idle', value: pct(d.idle) },
        { metric: 'cpu.busy', value: pct(total.total - d.idle - d.iowait) },
      );
    }
    if (perCore) {
      for (const [core, times] of curr.cpu.cores) {
        const before = prev.cpu.cores.get(core);
        const delta = before && cpuDelta(before, times);
        if (delta) out.push({ metric: 'cpu.busy', value: ((delta.total - delta.d.idle - delta.d.iowait) / delta.total) * 100, tags: { core: String(core) } });
      }
    }
  }

  if (curr.memory) {
    const m = curr.memory;
    out.push(
      { metric: 'mem.total', value: m.total },
      { metric: 'mem.used', value: m.total - m.available },
      { metric: 'mem.available', value: m.available },
      { metric: 'mem.cached', value: m.cached },
      { metric: 'mem.swap_used', value: m.swapTotal - m.swapFree },
    );
  }

  if (curr.load) {
    out.push({ metric: 'load.1', value: curr.load.load1 }, { metric: 'load.5', value: curr.load.load5 }, { metric: 'load.15', value: curr.load.load15 });
  }

  if (hasInterval && prev.network && curr.network) {
    for (const [iface, after] of curr.network) {
      const before = prev.network.get(iface);
      if (!before) continue;
      for (const [field, metric] of NET_RATES) {
        const value = rate(before[field], after[field], seconds);
        if (value !== undefined) out.push({ metric, value, tags: { iface } });
      }
    }
  }

  if (hasInterval && prev.disk && curr.disk) {
    const previous = new Map(prev.disk.map((d) => [d.name, d]));
    for (const after of curr.disk) {
      const before = previous.get(after.name);
      if (!before) continue;
      const tags = { dev: after.name };
      const readBytes = rate(sectorsToBytes(before.sectorsRead), sectorsToBytes(after.sectorsRead), seconds);
      const writeBytes = rate(sectorsToBytes(before.sectorsWritten), sectorsToBytes(after.sectorsWritten), seconds);
      const readIops = rate(before.readsCompleted, after.readsCompleted, seconds);
      const writeIops = rate(before.writesCompleted, after.writesCompleted, seconds);
      if (readBytes !== undefined) out.push({ metric: 'disk.read_bytes', value: readBytes, tags });
      if (writeBytes !== undefined) out.push({ metric: 'disk.write_bytes', value: writeBytes, tags });
      if (readIops !== undefined) out.push({ metric: 'disk.read_iops', value: readIops, tags });
      if (writeIops !== undefined) out.push({ metric: 'disk.write_iops', value: writeIops, tags });
      if (before.ioTicksMs !== undefined && after.ioTicksMs !== undefined) {
        const busyMsPerSecond = rate(before.ioTicksMs, after.ioTicksMs, seconds);
        // io ticks advance in whole jiffies, so an interval can show slightly more than its length.
        if (busyMsPerSecond !== undefined) out.push({ metric: 'disk.util', value: Math.min(100, busyMsPerSecond / 10), tags });
      }
    }
  }

  for (const fs of curr.filesystem ?? []) {
    const tags = { mount: fs.mount };
    out.push({ metric: 'fs.used_percent', value: fs.usedPercent, tags }, { metric: 'fs.free_bytes', value: fs.freeBytes, tags });
  }

  return out;
}

function asSourceError(err: unknown, group: SystemGroup): BoltError {
  if (err instanceof BoltError) return err;
  return new BoltError('BOLT_ERR_METRICS_SOURCE_UNREADABLE', `${group}: ${(err as Error).message}`, { cause: err, details: { group } });
}

/**
 * Samples host metrics from procfs, sysfs and statfs, keeping the previous reading so that each
 * sample carries rates over the real time since the last one. Spawns no process. Calls are
 * serialized: a sample() issued while another runs waits for it.
 */
export class SystemSampler {
  readonly #groups: ReadonlySet<SystemGroup>;
  readonly #perCore: boolean;
  readonly #mounts: readonly string[];
  readonly #interfaces: InterfaceFilter;
  readonly #disks: DiskFilter;
  readonly #procRoot: string;
  readonly #sysRoot: string;
  #previous: SystemReading | undefined;
  #wholeDisks: Set<string> | undefined;
  #diskNamesSeen = '';
  #queue: Promise<unknown> = Promise.resolve();
  readonly #files = new ProcFiles();

  /** @throws Error when a group name is unknown or a filter pattern is not a valid regular expression. */
  constructor(options: SystemSamplerOptions = {}) {
    const groups = options.groups ?? SYSTEM_GROUPS;
    for (const g of groups) {
      if (!SYSTEM_GROUPS.includes(g)) throw new RangeError(`unknown metric group "${g}"; known groups: ${SYSTEM_GROUPS.join(', ')}`);
    }
    // Try the filter patterns now, so that a bad one fails at configuration rather than in every sample.
    for (const pattern of [...(options.interfaces?.exclude ?? []), ...(options.disks?.exclude ?? [])]) new RegExp(pattern);
    this.#groups = new Set(groups);
    this.#perCore = options.perCore ?? true;
    this.#mounts = options.mounts ?? ['/'];
    this.#interfaces = options.interfaces ?? {};
    this.#disks = options.disks ?? {};
    this.#procRoot = options.procRoot ?? '/proc';
    this.#sysRoot = options.sysRoot ?? '/sys';
  }

  /** Reads the configured groups once, in parallel, without touching the kept previous reading. */
  async read(): Promise<{ reading: SystemReading; errors: BoltError[] }> {
    const reading: SystemReading = { monotonicMs: performance.now(), timestamp: Date.now() };
    const errors: BoltError[] = [];
    const has = (g: SystemGroup): boolean => this.#groups.has(g);
    const collect = async <T>(group: SystemGroup, read: () => Promise<T>, keep: (value: T) => void): Promise<void> => {
      try {
        keep(await read());
      } catch (err) {
        errors.push(asSourceError(err, group));
      }
    };
    const tasks: Array<Promise<void>> = [];
    if (has('cpu')) tasks.push(collect('cpu', () => readProcStat(this.#procRoot, this.#files), (v) => { reading.cpu = v; }));
    if (has('memory')) tasks.push(collect('memory', () => readMeminfo(this.#procRoot, this.#files), (v) => { reading.memory = v; }));
    if (has('load')) tasks.push(collect('load', () => readLoadavg(this.#procRoot, this.#files), (v) => { reading.load = v; }));
    if (has('network')) {
      tasks.push(collect('network', () => readNetDev(this.#procRoot, this.#files), (v) => { reading.network = selectInterfaces(v, this.#interfaces); }));
    }
    if (has('disk')) tasks.push(collect('disk', () => this.#readDisks(), (v) => { reading.disk = v; }));
    // One slot per mount, so that the order of fs.* follows the configuration, not the syscalls.
    const usage: Array<FilesystemUsage | undefined> = [];
    if (has('filesystem')) {
      this.#mounts.forEach((mount, i) => tasks.push(collect('filesystem', () => readFilesystemUsage(mount), (v) => { usage[i] = v; })));
    }
    await Promise.all(tasks);
    if (has('filesystem')) reading.filesystem = usage.filter((u): u is FilesystemUsage => u !== undefined);
    return { reading, errors };
  }

  /**
   * Takes one reading and returns its metrics. The first sample (and the first after reset())
   * carries no CPU percentages and no rates: those need two readings.
   */
  sample(): Promise<SystemSample> {
    const next = this.#queue.then(() => this.#takeSample());
    this.#queue = next.catch(() => undefined);
    return next;
  }

  /** Forgets the previous reading, so the next sample starts a new series of intervals. */
  reset(): void {
    this.#previous = undefined;
  }

  /** Closes the files held open between samples; a later sample opens them again. */
  close(): void {
    this.#files.close();
  }

  async #takeSample(): Promise<SystemSample> {
    const { reading, errors } = await this.read();
    const prev = this.#previous;
    const metrics = computeSystemMetrics(prev, reading, this.#perCore);
    this.#previous = reading;
    const sample: SystemSample = { timestamp: reading.timestamp, metrics, errors };
    if (prev) sample.intervalMs = reading.monotonicMs - prev.monotonicMs;
    return sample;
  }

  async #readDisks(): Promise<DiskCounters[]> {
    const all = await readDiskstats(this.#procRoot, this.#files);
    // /sys/block is listed again only when the set of devices changes (hotplug), not every second.
    const names = all.map((d) => d.name).join(' ');
    if (names !== this.#diskNamesSeen) {
      this.#wholeDisks = await readWholeDisks(this.#sysRoot);
      this.#diskNamesSeen = names;
    }
    return selectDisks(all, this.#disks, this.#wholeDisks);
  }
}
