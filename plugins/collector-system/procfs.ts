/**
 * Readers and parsers for the Linux kernel's own counters: /proc/stat, /proc/meminfo,
 * /proc/net/dev, /proc/diskstats, /proc/loadavg, and statfs(2) for mount points.
 *
 * Every parser is a pure function of the file's text, so it can be tested on saved fixtures.
 * Every reader is asynchronous (fs.promises) and spawns nothing: a full set of reads costs a few
 * hundred microseconds of CPU, where the systeminformation calls that cover the same ground
 * start shells (see MEASURED.md section 5). A ProcFiles keeps the files read every tick open, so
 * that each reading is a single pread.
 */
import { open, readdir, statfs, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { BoltError } from '../../plugin-sdk/src/errors.ts';

/** Cumulative CPU time of one CPU (or all of them), in clock ticks (USER_HZ, 100 per second on Linux). */
export interface CpuTimes {
  user: number;
  nice: number;
  system: number;
  idle: number;
  iowait: number;
  irq: number;
  softirq: number;
  steal: number;
}

/** The CPU lines of /proc/stat: the aggregate `cpu` line and one entry per `cpuN` line. */
export interface ProcStat {
  total: CpuTimes;
  /** Keyed by core number N of the `cpuN` line; offline cores are absent. */
  cores: Map<number, CpuTimes>;
}

/** /proc/meminfo, in bytes. */
export interface MemInfo {
  total: number;
  free: number;
  /** MemAvailable; on kernels before 3.14 (no such line) it is free + buffers + cached. */
  available: number;
  cached: number;
  buffers: number;
  swapTotal: number;
  swapFree: number;
}

/** One interface's cumulative counters from /proc/net/dev. */
export interface NetCounters {
  rxBytes: number;
  rxPackets: number;
  rxErrors: number;
  rxDrops: number;
  txBytes: number;
  txPackets: number;
  txErrors: number;
  txDrops: number;
}

/** One block device's cumulative counters from /proc/diskstats. */
export interface DiskCounters {
  major: number;
  minor: number;
  name: string;
  readsCompleted: number;
  /** Sectors are always 512 bytes in diskstats, whatever the device's real sector size. */
  sectorsRead: number;
  writesCompleted: number;
  sectorsWritten: number;
  /** Milliseconds the device had I/O in flight; absent in the 4-field partition lines of 2.6 kernels. */
  ioTicksMs?: number;
}

/** /proc/loadavg. */
export interface LoadAvg {
  load1: number;
  load5: number;
  load15: number;
  running: number;
  total: number;
}

/** Space on one mounted filesystem, as df(1) computes it. */
export interface FilesystemUsage {
  mount: string;
  totalBytes: number;
  /** Blocks in use: total minus free (including blocks reserved for root). */
  usedBytes: number;
  /** Available to unprivileged users (f_bavail), df's "Avail". */
  freeBytes: number;
  /** used / (used + free) × 100, df's "Use%" before rounding; 0 for an empty filesystem. */
  usedPercent: number;
}

/** Which block devices to keep from /proc/diskstats. */
export interface DiskFilter {
  /** Exact device names to keep; when given, only these are kept and the other rules do not apply. */
  include?: readonly string[];
  /** Regular expressions (JavaScript syntax) of names to drop. Default: loop and ram devices. */
  exclude?: readonly string[];
  /** Keep partitions too. Default false: only whole devices (those listed in /sys/block). */
  partitions?: boolean;
}

/** Which network interfaces to keep from /proc/net/dev. */
export interface InterfaceFilter {
  /** Exact interface names to keep; when given, only these are kept. */
  include?: readonly string[];
  /** Regular expressions (JavaScript syntax) of names to drop. Default: none. */
  exclude?: readonly string[];
}

export const DEFAULT_DISK_EXCLUDE: readonly string[] = ['^loop\\d+$', '^ram\\d+$'];

const SECTOR_BYTES = 512;
const READ_CHUNK_BYTES = 64 * 1024;

function malformed(source: string, why: string): BoltError {
  return new BoltError('BOLT_ERR_METRICS_SOURCE_UNREADABLE', `${source}: ${why}`, { details: { source } });
}

function toNumber(field: string | undefined): number {
  if (field === undefined) return 0;
  const n = Number(field);
  return Number.isFinite(n) ? n : 0;
}

/**
 * Parses the `cpu` and `cpuN` lines of /proc/stat. Columns a kernel does not print (steal before
 * 2.6.11, iowait/irq/softirq before 2.6) read as 0. Guest time is already part of user and nice,
 * so guest columns are not read.
 * @throws BoltError BOLT_ERR_METRICS_SOURCE_UNREADABLE when there is no aggregate `cpu` line.
 */
export function parseProcStat(text: string): ProcStat {
  let total: CpuTimes | undefined;
  const cores = new Map<number, CpuTimes>();
  for (const line of text.split('\n')) {
    if (!line.startsWith('cpu')) continue;
    const fields = line.trim().split(/\s+/);
    const label = fields[0] ?? '';
    const times: CpuTimes = {
      user: toNumber(fields[1]),
      nice: toNumber(fields[2]),
      system: toNumber(fields[3]),
      idle: toNumber(fields[4]),
      iowait: toNumber(fields[5]),
      irq: toNumber(fields[6]),
      softirq: toNumber(fields[7]),
      steal: toNumber(fields[8]),
    };
    if (label === 'cpu') total = times;
    else if (/^cpu\d+$/.test(label)) cores.set(Number(label.slice(3)), times);
  }
  if (!total) throw malformed('/proc/stat', 'no aggregate "cpu" line');
  return { total, cores };
}

/**
 * Parses /proc/meminfo into bytes (the file counts in kB = 1024 bytes).
 * @throws BoltError BOLT_ERR_METRICS_SOURCE_UNREADABLE when MemTotal is missing.
 */
export function parseMeminfo(text: string): MemInfo {
  const kb = new Map<string, number>();
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const value = Number(line.slice(colon + 1).trim().split(/\s+/)[0]);
    if (Number.isFinite(value)) kb.set(line.slice(0, colon), value);
  }
  const bytes = (key: string): number | undefined => {
    const v = kb.get(key);
    return v === undefined ? undefined : v * 1024;
  };
  const total = bytes('MemTotal');
  if (total === undefined) throw malformed('/proc/meminfo', 'no MemTotal line');
  const free = bytes('MemFree') ?? 0;
  const cached = bytes('Cached') ?? 0;
  const buffers = bytes('Buffers') ?? 0;
  return {
    total,
    free,
    available: bytes('MemAvailable') ?? free + buffers + cached,
    cached,
    buffers,
    swapTotal: bytes('SwapTotal') ?? 0,
    swapFree: bytes('SwapFree') ?? 0,
  };
}

/**
 * Parses /proc/net/dev. The name ends at the line's last colon, so a long name glued to its first
 * number (`enp0s31f6:1234`, as older kernels print) and a name that itself holds a colon both parse.
 * Lines with fewer than 16 counters (headers, pre-2.2 formats) are skipped.
 */
export function parseNetDev(text: string): Map<string, NetCounters> {
  const out = new Map<string, NetCounters>();
  for (const line of text.split('\n')) {
    if (line.includes('|')) continue;
    const colon = line.lastIndexOf(':');
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim();
    const f = line.slice(colon + 1).trim().split(/\s+/);
    if (name === '' || f.length < 16) continue;
    out.set(name, {
      rxBytes: toNumber(f[0]),
      rxPackets: toNumber(f[1]),
      rxErrors: toNumber(f[2]),
      rxDrops: toNumber(f[3]),
      txBytes: toNumber(f[8]),
      txPackets: toNumber(f[9]),
      txErrors: toNumber(f[10]),
      txDrops: toNumber(f[11]),
    });
  }
  return out;
}

/**
 * Parses /proc/diskstats: 11 counters per device (more on newer kernels: discards since 4.18,
 * flushes since 5.5, which are ignored), or 4 counters in the partition lines of 2.6 kernels
 * (reads, sectors read, writes, sectors written; no io ticks).
 */
export function parseDiskstats(text: string): DiskCounters[] {
  const out: DiskCounters[] = [];
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    const name = f[2];
    if (name === undefined || (f.length !== 7 && f.length < 14)) continue;
    const base = { major: toNumber(f[0]), minor: toNumber(f[1]), name };
    if (f.length === 7) {
      out.push({ ...base, readsCompleted: toNumber(f[3]), sectorsRead: toNumber(f[4]), writesCompleted: toNumber(f[5]), sectorsWritten: toNumber(f[6]) });
    } else {
      out.push({
        ...base,
        readsCompleted: toNumber(f[3]),
        sectorsRead: toNumber(f[5]),
        writesCompleted: toNumber(f[7]),
        sectorsWritten: toNumber(f[9]),
        ioTicksMs: toNumber(f[12]),
      });
    }
  }
  return out;
}

/** Bytes transferred for a count of diskstats sectors. */
export function sectorsToBytes(sectors: number): number {
  return sectors * SECTOR_BYTES;
}

/**
 * Parses /proc/loadavg (`0.52 0.58 0.59 2/345 12345`).
 * @throws BoltError BOLT_ERR_METRICS_SOURCE_UNREADABLE when the three averages are not numbers.
 */
export function parseLoadavg(text: string): LoadAvg {
  const f = text.trim().split(/\s+/);
  const [load1, load5, load15] = [Number(f[0]), Number(f[1]), Number(f[2])];
  if (![load1, load5, load15].every(Number.isFinite)) throw malformed('/proc/loadavg', `unexpected content "${text.trim().slice(0, 80)}"`);
  const [running, total] = (f[3] ?? '').split('/');
  return { load1, load5, load15, running: toNumber(running), total: toNumber(total) };
}

/** Space on a filesystem from the fields of statfs(2), computed the way df(1) does. */
export function filesystemUsageFromStatfs(mount: string, s: { bsize: number; blocks: number; bfree: number; bavail: number }): FilesystemUsage {
  const usedBytes = (s.blocks - s.bfree) * s.bsize;
  const freeBytes = s.bavail * s.bsize;
  const denominator = usedBytes + freeBytes;
  return {
    mount,
    totalBytes: s.blocks * s.bsize,
    usedBytes,
    freeBytes,
    usedPercent: denominator > 0 ? (usedBytes / denominator) * 100 : 0,
  };
}

function compilePatterns(patterns: readonly string[]): RegExp[] {
  return patterns.map((p) => new RegExp(p));
}

/**
 * Keeps the block devices a disk filter asks for. `wholeDisks` is the set of names in /sys/block;
 * without it (no sysfs) partitions cannot be told apart and every device passes that rule.
 */
export function selectDisks(disks: readonly DiskCounters[], filter: DiskFilter = {}, wholeDisks?: ReadonlySet<string>): DiskCounters[] {
  if (filter.include) {
    const names = new Set(filter.include);
    return disks.filter((d) => names.has(d.name));
  }
  const exclude = compilePatterns(filter.exclude ?? DEFAULT_DISK_EXCLUDE);
  return disks.filter((d) => {
    if (!filter.partitions && wholeDisks && !wholeDisks.has(d.name)) return false;
    return !exclude.some((re) => re.test(d.name));
  });
}

/** Keeps the network interfaces an interface filter asks for. */
export function selectInterfaces(ifaces: ReadonlyMap<string, NetCounters>, filter: InterfaceFilter = {}): Map<string, NetCounters> {
  const out = new Map<string, NetCounters>();
  const include = filter.include ? new Set(filter.include) : undefined;
  const exclude = compilePatterns(filter.exclude ?? []);
  for (const [name, counters] of ifaces) {
    if (include ? include.has(name) : !exclude.some((re) => re.test(name))) out.set(name, counters);
  }
  return out;
}

/**
 * Reads a whole procfs or sysfs file as text with one open and as few reads as it takes.
 * procfs reports size 0, so the file is read until end of file rather than by its size.
 */
export async function readProcText(path: string): Promise<string> {
  const handle = await open(path, 'r');
  try {
    const chunks: Buffer[] = [];
    for (;;) {
      const chunk = Buffer.allocUnsafe(READ_CHUNK_BYTES);
      const { bytesRead } = await handle.read(chunk, 0, READ_CHUNK_BYTES, null);
      if (bytesRead === 0) break;
      chunks.push(chunk.subarray(0, bytesRead));
    }
    return Buffer.concat(chunks).toString('latin1');
  } finally {
    await handle.close();
  }
}

/** statfs(2) f_type of procfs. */
const PROC_SUPER_MAGIC = 0x9fa0;

interface HeldFile {
  handle: FileHandle;
  buffer: Buffer;
}

/**
 * The procfs files a sampler reads on every tick, kept open: each reading is one pread from offset
 * 0, where the kernel writes the text afresh, instead of open, read, read and close (four trips
 * through libuv's thread pool, each waking the event loop). A file that is not on procfs (a copy
 * of /proc, which may be replaced between readings) is opened for each reading as readProcText
 * does. A file that fails is dropped and opened again on the next reading. close() closes them all.
 */
export class ProcFiles {
  readonly #files = new Map<string, Promise<HeldFile | null>>();

  /** The whole text of `path`. */
  async read(path: string): Promise<string> {
    let entry = this.#files.get(path);
    if (entry === undefined) {
      entry = holdIfProcfs(path);
      this.#files.set(path, entry);
    }
    let file: HeldFile | null;
    try {
      file = await entry;
    } catch (err) {
      if (this.#files.get(path) === entry) this.#files.delete(path);
      throw err;
    }
    if (file === null) return readProcText(path);
    try {
      for (;;) {
        const { bytesRead } = await file.handle.read(file.buffer, 0, file.buffer.length, 0);
        // procfs fills the buffer unless the text ended: a short read is all of it.
        if (bytesRead < file.buffer.length) return file.buffer.toString('latin1', 0, bytesRead);
        file.buffer = Buffer.allocUnsafe(file.buffer.length * 2);
      }
    } catch (err) {
      if (this.#files.get(path) === entry) this.#files.delete(path);
      await file.handle.close().catch(() => undefined);
      throw err;
    }
  }

  /** Closes every file held open. */
  close(): void {
    for (const entry of this.#files.values()) void entry.then((file) => file?.handle.close(), () => undefined).catch(() => undefined);
    this.#files.clear();
  }
}

async function holdIfProcfs(path: string): Promise<HeldFile | null> {
  const handle = await open(path, 'r');
  try {
    if ((await statfs(path)).type === PROC_SUPER_MAGIC) return { handle, buffer: Buffer.allocUnsafe(8 * 1024) };
  } catch {
    // Not known to be procfs: read it the plain way.
  }
  await handle.close();
  return null;
}

async function readSource<T>(path: string, parse: (text: string) => T, files?: ProcFiles): Promise<T> {
  let text: string;
  try {
    text = files ? await files.read(path) : await readProcText(path);
  } catch (cause) {
    throw new BoltError('BOLT_ERR_METRICS_SOURCE_UNREADABLE', `${path} could not be read: ${(cause as Error).message}`, { cause, details: { source: path } });
  }
  return parse(text);
}

/** Reads and parses `<procRoot>/stat` (through `files` when given). */
export function readProcStat(procRoot = '/proc', files?: ProcFiles): Promise<ProcStat> {
  return readSource(join(procRoot, 'stat'), parseProcStat, files);
}

/** Reads and parses `<procRoot>/meminfo` (through `files` when given). */
export function readMeminfo(procRoot = '/proc', files?: ProcFiles): Promise<MemInfo> {
  return readSource(join(procRoot, 'meminfo'), parseMeminfo, files);
}

/** Reads and parses `<procRoot>/net/dev` (through `files` when given). */
export function readNetDev(procRoot = '/proc', files?: ProcFiles): Promise<Map<string, NetCounters>> {
  return readSource(join(procRoot, 'net', 'dev'), parseNetDev, files);
}

/** Reads and parses `<procRoot>/diskstats` (through `files` when given). */
export function readDiskstats(procRoot = '/proc', files?: ProcFiles): Promise<DiskCounters[]> {
  return readSource(join(procRoot, 'diskstats'), parseDiskstats, files);
}

/** Reads and parses `<procRoot>/loadavg` (through `files` when given). */
export function readLoadavg(procRoot = '/proc', files?: ProcFiles): Promise<LoadAvg> {
  return readSource(join(procRoot, 'loadavg'), parseLoadavg, files);
}

/** Names of whole block devices (the entries of `<sysRoot>/block`), or undefined without sysfs. */
export async function readWholeDisks(sysRoot = '/sys'): Promise<Set<string> | undefined> {
  try {
    return new Set(await readdir(join(sysRoot, 'block')));
  } catch {
    return undefined;
  }
}

/**
 * statfs(2) of one mount point.
 * @throws BoltError BOLT_ERR_METRICS_SOURCE_UNREADABLE when the path does not exist or cannot be queried.
 */
export async function readFilesystemUsage(mount: string): Promise<FilesystemUsage> {
  try {
    return filesystemUsageFromStatfs(mount, await statfs(mount));
  } catch (cause) {
    throw new BoltError('BOLT_ERR_METRICS_SOURCE_UNREADABLE', `statfs of mount point ${mount} failed: ${(cause as Error).message}`, { cause, details: { source: mount } });
  }
}
