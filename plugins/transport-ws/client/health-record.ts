/**
 * The health record a client puts in every heartbeat: load, CPU use, available memory, free disk
 * on the data directory, event loop lag and clock offset. Each value comes from the cheapest
 * source there is: the head of /proc/stat and /proc/meminfo read with pread on descriptors kept
 * open (os.cpus() and a whole-file read cost several times more), one statfs, and counters Node
 * already keeps. Where procfs is missing it falls back to os.cpus() and os.freemem().
 */

import fs from 'node:fs';
import os from 'node:os';
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import type { HeartbeatMessage } from '../../../plugin-sdk/src/schemas/wire.ts';

/** The host's side of a heartbeat: what HealthSampler measures, without the clock offset. */
export type HostHealth = Pick<HeartbeatMessage, 'load1' | 'cpuPercent' | 'memAvailableBytes' | 'diskFreeBytes' | 'eventLoopLagMs' | 'plugins'>;

/** Everything a heartbeat carries besides the envelope and `at`. */
export type HealthRecord = HostHealth & Pick<HeartbeatMessage, 'clockOffsetMs'>;

export interface HealthSamplerOptions {
  /** The directory whose file system's free space is reported (the client's data dir). */
  dataDir: string;
  /** The current clock offset estimate (server − client, ms); 0 when absent. */
  clockOffsetMs?: () => number;
  /** Sampling interval of the event loop delay monitor, ms. Default 50. */
  loopResolutionMs?: number;
  /** Where MemAvailable is read from; os.freemem() when it cannot be read. Default /proc/meminfo. */
  meminfoPath?: string;
  /** Where the aggregate CPU times are read from; os.cpus() when it cannot be read. Default /proc/stat. */
  statPath?: string;
}

interface CpuTimes {
  busy: number;
  total: number;
}

/**
 * Measures the health record. Each `sample()` reports CPU use and event loop lag over the time
 * since the previous call (since construction for the first), so call it once per heartbeat.
 * Guarantees: every value is finite and within the heartbeat schema's ranges (a source that
 * fails reports 0 rather than throwing). Call `close()` to stop the event loop monitor.
 */
export class HealthSampler {
  readonly #dataDir: string;
  readonly #clockOffsetMs: () => number;
  readonly #meminfo: ProcHead;
  readonly #stat: ProcHead;
  readonly #loop: IntervalHistogram;
  readonly #resolutionNs: number;
  #cpu: CpuTimes;

  constructor(options: HealthSamplerOptions) {
    this.#dataDir = options.dataDir;
    this.#clockOffsetMs = options.clockOffsetMs ?? (() => 0);
    this.#meminfo = new ProcHead(options.meminfoPath ?? '/proc/meminfo', 512);
    this.#stat = new ProcHead(options.statPath ?? '/proc/stat', 256);
    const resolution = options.loopResolutionMs ?? 50;
    this.#resolutionNs = resolution * 1e6;
    this.#loop = monitorEventLoopDelay({ resolution });
    this.#loop.enable();
    this.#cpu = this.#cpuTimes();
  }

  /** Takes one record. */
  sample(): HealthRecord {
    return {
      load1: clamp(os.loadavg()[0] ?? 0, 0, 1e6),
      cpuPercent: this.#cpuPercent(),
      memAvailableBytes: this.#memAvailable(),
      diskFreeBytes: this.#diskFree(),
      eventLoopLagMs: this.#eventLoopLag(),
      clockOffsetMs: finiteOr(this.#clockOffsetMs(), 0),
    };
  }

  /** Stops the event loop monitor and closes the procfs descriptors. */
  close(): void {
    this.#loop.disable();
    this.#meminfo.close();
    this.#stat.close();
  }

  #cpuPercent(): number {
    const now = this.#cpuTimes();
    const busy = now.busy - this.#cpu.busy;
    const total = now.total - this.#cpu.total;
    this.#cpu = now;
    return total > 0 ? clamp((100 * busy) / total, 0, 100) : 0;
  }

  #memAvailable(): number {
    const match = /^MemAvailable:\s+(\d+) kB$/m.exec(this.#meminfo.read() ?? '');
    return match ? Number(match[1]) * 1024 : os.freemem();
  }

  /** Aggregate CPU times: the `cpu` line of /proc/stat (iowait counts as idle), else os.cpus(). */
  #cpuTimes(): CpuTimes {
    const line = /^cpu\s+([\d ]+)$/m.exec(this.#stat.read() ?? '');
    if (line) {
      // user nice system idle iowait irq softirq steal (guest time is already in user and nice).
      const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = line[1]!.trim().split(/\s+/).map(Number);
      const busy = user + nice + system + irq + softirq + steal;
      return { busy, total: busy + idle + iowait };
    }
    return cpuTimesFromOs();
  }

  #diskFree(): number {
    try {
      const stats = fs.statfsSync(this.#dataDir);
      return clamp(stats.bavail * stats.bsize, 0, Number.MAX_SAFE_INTEGER);
    } catch {
      return 0;
    }
  }

  #eventLoopLag(): number {
    // The monitor records the time between its timer's ticks, which includes the resolution itself.
    const lag = this.#loop.count > 0 ? (this.#loop.percentile(99) - this.#resolutionNs) / 1e6 : 0;
    this.#loop.reset();
    return clamp(finiteOr(lag, 0), 0, 3_600_000);
  }
}

function cpuTimesFromOs(): CpuTimes {
  let busy = 0;
  let total = 0;
  for (const cpu of os.cpus()) {
    const { user, nice, sys, idle, irq } = cpu.times;
    busy += user + nice + sys + irq;
    total += user + nice + sys + irq + idle;
  }
  return { busy, total };
}

/** The first bytes of a procfs file, re-read with pread on a descriptor kept open. */
class ProcHead {
  readonly #path: string;
  readonly #buffer: Buffer;
  #fd: number | null | undefined;

  constructor(file: string, bytes: number) {
    this.#path = file;
    this.#buffer = Buffer.alloc(bytes);
  }

  /** The head of the file, or null when it cannot be read (then never tried again). */
  read(): string | null {
    if (this.#fd === undefined) {
      try {
        this.#fd = fs.openSync(this.#path, 'r');
      } catch {
        this.#fd = null;
      }
    }
    if (this.#fd === null) return null;
    try {
      const n = fs.readSync(this.#fd, this.#buffer, 0, this.#buffer.length, 0);
      return this.#buffer.toString('latin1', 0, n);
    } catch {
      this.close();
      this.#fd = null;
      return null;
    }
  }

  close(): void {
    if (typeof this.#fd === 'number') fs.closeSync(this.#fd);
    this.#fd = null;
  }
}

function clamp(value: number, min: number, max: number): number {
  return Math.min(max, Math.max(min, value));
}

function finiteOr(value: number, fallback: number): number {
  return Number.isFinite(value) ? value : fallback;
}
