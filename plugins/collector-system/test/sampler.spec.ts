import { expect } from 'chai';
import { mkdir, mkdtemp, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { computeSystemMetrics, SystemSampler } from '../sampler.ts';
import type { MetricPoint, SystemReading, SystemSample } from '../sampler.ts';
import type { CpuTimes, NetCounters } from '../procfs.ts';

/** A fake host: procfs and sysfs trees in a temporary directory, rewritten between samples. */
interface HostState {
  total: CpuTimes;
  cores: CpuTimes[];
  net: Record<string, NetCounters>;
  /** name -> [reads, sectorsRead, writes, sectorsWritten, ioTicksMs] */
  disks: Record<string, [number, number, number, number, number]>;
  wholeDisks: string[];
}

const cpuLine = (label: string, t: CpuTimes): string =>
  `${label} ${t.user} ${t.nice} ${t.system} ${t.idle} ${t.iowait} ${t.irq} ${t.softirq} ${t.steal} 0 0`;

const netLine = (name: string, c: NetCounters): string =>
  `${name.padStart(6)}: ${c.rxBytes} ${c.rxPackets} ${c.rxErrors} ${c.rxDrops} 0 0 0 0 ${c.txBytes} ${c.txPackets} ${c.txErrors} ${c.txDrops} 0 0 0 0`;

const MEMINFO = ['MemTotal: 1000 kB', 'MemFree: 200 kB', 'MemAvailable: 600 kB', 'Buffers: 50 kB', 'Cached: 300 kB', 'SwapTotal: 400 kB', 'SwapFree: 100 kB', ''].join('\n');

async function writeHost(root: string, s: HostState): Promise<void> {
  const proc = join(root, 'proc');
  await mkdir(join(proc, 'net'), { recursive: true });
  await writeFile(join(proc, 'stat'), [cpuLine('cpu ', s.total), ...s.cores.map((c, i) => cpuLine(`cpu${i}`, c)), 'ctxt 1', ''].join('\n'));
  await writeFile(join(proc, 'meminfo'), MEMINFO);
  await writeFile(join(proc, 'loadavg'), '1.50 0.75 0.25 2/100 4242\n');
  await writeFile(
    join(proc, 'net', 'dev'),
    ['Inter-|   Receive                                                |  Transmit', ' face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed', ...Object.entries(s.net).map(([n, c]) => netLine(n, c)), ''].join('\n'),
  );
  await writeFile(
    join(proc, 'diskstats'),
    Object.entries(s.disks).map(([name, [r, sr, w, sw, io]], i) => `   8 ${i} ${name} ${r} 0 ${sr} 0 ${w} 0 ${sw} 0 0 ${io} 0 0 0 0 0 0 0`).join('\n') + '\n',
  );
  for (const d of s.wholeDisks) await mkdir(join(root, 'sys', 'block', d), { recursive: true });
}

const cpu = (user: number, idle: number, extra: Partial<CpuTimes> = {}): CpuTimes => ({ user, nice: 0, system: 0, idle, iowait: 0, irq: 0, softirq: 0, steal: 0, ...extra });
const net = (rxBytes: number, txBytes: number, rest: Partial<NetCounters> = {}): NetCounters => ({ rxBytes, rxPackets: 0, rxErrors: 0, rxDrops: 0, txBytes, txPackets: 0, txErrors: 0, txDrops: 0, ...rest });

function initialState(): HostState {
  return {
    total: { user: 1000, nice: 10, system: 500, idle: 8000, iowait: 100, irq: 5, softirq: 20, steal: 3 },
    cores: [cpu(500, 4000), cpu(500, 4000)],
    net: { lo: net(1000, 1000), eth0: net(5000, 7000, { rxPackets: 10, txPackets: 20 }) },
    disks: { loop0: [1, 1, 1, 1, 1], sda: [100, 1000, 50, 800, 400], sda1: [90, 900, 40, 700, 390], vdb: [0, 0, 0, 0, 0] },
    wholeDisks: ['loop0', 'sda', 'vdb'],
  };
}

function find(sample: SystemSample, metric: string, tags?: Record<string, string>): MetricPoint | undefined {
  return sample.metrics.find((m) => m.metric === metric && JSON.stringify(m.tags ?? {}) === JSON.stringify(tags ?? {}));
}

function value(sample: SystemSample, metric: string, tags?: Record<string, string>): number {
  const point = find(sample, metric, tags);
  if (!point) expect.fail(`no ${metric} ${JSON.stringify(tags ?? {})} in the sample`);
  return point.value;
}

const names = (sample: SystemSample): Set<string> => new Set(sample.metrics.map((m) => m.metric));

describe('collector-system SystemSampler', () => {
  let root: string;
  let state: HostState;
  let sampler: SystemSampler;

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'bolt-sampler-'));
    state = initialState();
    await writeHost(root, state);
    sampler = new SystemSampler({ procRoot: join(root, 'proc'), sysRoot: join(root, 'sys'), mounts: [root] });
  });

  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('gives only gauges on the first sample: no CPU percentages and no rates, not even zeros', async () => {
    const first = await sampler.sample();
    expect(first.errors).to.deep.equal([]);
    expect(first.intervalMs).to.equal(undefined);
    expect([...names(first)].sort()).to.deep.equal(
      ['fs.free_bytes', 'fs.used_percent', 'load.1', 'load.15', 'load.5', 'mem.available', 'mem.cached', 'mem.swap_used', 'mem.total', 'mem.used'].sort(),
    );
    expect(value(first, 'mem.used')).to.equal(400 * 1024);
    expect(value(first, 'mem.available')).to.equal(600 * 1024);
    expect(value(first, 'mem.cached')).to.equal(300 * 1024);
    expect(value(first, 'mem.swap_used')).to.equal(300 * 1024);
    expect([value(first, 'load.1'), value(first, 'load.5'), value(first, 'load.15')]).to.deep.equal([1.5, 0.75, 0.25]);
    expect(value(first, 'fs.used_percent', { mount: root })).to.be.within(0, 100);
    expect(first.timestamp).to.be.closeTo(Date.now(), 5000);
  });

  it('turns two readings into CPU percentages and per-second rates over the measured interval', async () => {
    const firstStart = performance.now();
    await sampler.sample();
    const firstEnd = performance.now();
    const t = state.total;
    // 1000 ticks in all: user 100 + nice 20, system 40 + irq 5 + softirq 15, iowait 30, steal 10, idle 780.
    state.total = { user: t.user + 100, nice: t.nice + 20, system: t.system + 40, idle: t.idle + 780, iowait: t.iowait + 30, irq: t.irq + 5, softirq: t.softirq + 15, steal: t.steal + 10 };
    state.cores = [cpu(500 + 75, 4000 + 25), cpu(500, 4000 + 100)];
    state.net.eth0 = net(5000 + 3_000_000, 7000 + 1_000_000, { rxPackets: 10 + 2000, txPackets: 20 + 1000, rxErrors: 3, txDrops: 4 });
    state.disks.sda = [100 + 40, 1000 + 2048, 50 + 10, 800 + 4096, 400];
    await writeHost(root, state);
    const secondStart = performance.now();
    const second = await sampler.sample();
    const secondEnd = performance.now();
    expect(second.errors).to.deep.equal([]);

    expect(value(second, 'cpu.user')).to.be.closeTo(12, 1e-9);
    expect(value(second, 'cpu.system')).to.be.closeTo(6, 1e-9);
    expect(value(second, 'cpu.iowait')).to.be.closeTo(3, 1e-9);
    expect(value(second, 'cpu.steal')).to.be.closeTo(1, 1e-9);
    expect(value(second, 'cpu.idle')).to.be.closeTo(78, 1e-9);
    expect(value(second, 'cpu.busy')).to.be.closeTo(19, 1e-9);
    expect(value(second, 'cpu.busy', { core: '0' })).to.be.closeTo(75, 1e-9);
    expect(value(second, 'cpu.busy', { core: '1' })).to.equal(0);

    const intervalMs = second.intervalMs ?? expect.fail('the second sample has an interval');
    // The interval is the monotonic time between the two readings, so it lies within what the test saw.
    expect(intervalMs).to.be.within(secondStart - firstEnd, secondEnd - firstStart);
    const seconds = intervalMs / 1000;
    const perSecond = (delta: number): number => delta / seconds;
    expect(value(second, 'net.rx_bytes', { iface: 'eth0' })).to.be.closeTo(perSecond(3_000_000), 1e-6);
    expect(value(second, 'net.tx_bytes', { iface: 'eth0' })).to.be.closeTo(perSecond(1_000_000), 1e-6);
    expect(value(second, 'net.rx_packets', { iface: 'eth0' })).to.be.closeTo(perSecond(2000), 1e-6);
    expect(value(second, 'net.tx_packets', { iface: 'eth0' })).to.be.closeTo(perSecond(1000), 1e-6);
    expect(value(second, 'net.rx_errors', { iface: 'eth0' })).to.be.closeTo(perSecond(3), 1e-6);
    expect(value(second, 'net.tx_drops', { iface: 'eth0' })).to.be.closeTo(perSecond(4), 1e-6);
    expect(value(second, 'net.rx_bytes', { iface: 'lo' })).to.equal(0);

    expect(value(second, 'disk.read_bytes', { dev: 'sda' })).to.be.closeTo(perSecond(2048 * 512), 1e-6);
    expect(value(second, 'disk.write_bytes', { dev: 'sda' })).to.be.closeTo(perSecond(4096 * 512), 1e-6);
    expect(value(second, 'disk.read_iops', { dev: 'sda' })).to.be.closeTo(perSecond(40), 1e-6);
    expect(value(second, 'disk.write_iops', { dev: 'sda' })).to.be.closeTo(perSecond(10), 1e-6);
    expect(value(second, 'disk.util', { dev: 'sda' })).to.equal(0);
    const devs = new Set(second.metrics.filter((m) => m.tags?.dev).map((m) => m.tags?.dev));
    expect([...devs]).to.deep.equal(['sda', 'vdb']);
  });

  it('reports no rate for a counter that went backwards (wrap or reset), and rates again after it', async () => {
    await sampler.sample();
    state.net.eth0 = net(100, 7000 + 500);
    state.total = { ...state.total, idle: state.total.idle - 5, user: state.total.user + 50 };
    state.cores = [cpu(510, 4010), cpu(490, 4010)];
    state.disks.sda = [10, 10, 60, 900, 500];
    await writeHost(root, state);
    const wrapped = await sampler.sample();
    expect(find(wrapped, 'net.rx_bytes', { iface: 'eth0' })).to.equal(undefined);
    expect(value(wrapped, 'net.tx_bytes', { iface: 'eth0' })).to.be.above(0);
    expect(find(wrapped, 'cpu.busy')).to.equal(undefined);
    expect(find(wrapped, 'cpu.idle')).to.equal(undefined);
    expect(value(wrapped, 'cpu.busy', { core: '0' })).to.equal(50);
    expect(find(wrapped, 'cpu.busy', { core: '1' })).to.equal(undefined);
    expect(find(wrapped, 'disk.read_bytes', { dev: 'sda' })).to.equal(undefined);
    expect(find(wrapped, 'disk.read_iops', { dev: 'sda' })).to.equal(undefined);
    expect(value(wrapped, 'disk.write_iops', { dev: 'sda' })).to.be.above(0);
    expect(wrapped.metrics.every((m) => m.value >= 0)).to.equal(true);

    state.net.eth0 = net(100 + 1000, 7000 + 500);
    state.total = { ...state.total, idle: state.total.idle + 100 };
    await writeHost(root, state);
    const recovered = await sampler.sample();
    expect(value(recovered, 'net.rx_bytes', { iface: 'eth0' })).to.be.above(0);
    expect(value(recovered, 'cpu.idle')).to.equal(100);
  });

  it('starts rates for an interface when it appears and drops it when it disappears', async () => {
    await sampler.sample();
    state.net.wg0 = net(10, 10);
    await writeHost(root, state);
    const appeared = await sampler.sample();
    expect(find(appeared, 'net.rx_bytes', { iface: 'wg0' })).to.equal(undefined);
    state.net.wg0 = net(1010, 10);
    delete state.net.eth0;
    await writeHost(root, state);
    const next = await sampler.sample();
    expect(find(next, 'net.rx_bytes', { iface: 'wg0' })?.value).to.be.above(0);
    expect(next.metrics.some((m) => m.tags?.iface === 'eth0')).to.equal(false);
  });

  it('collects only the configured groups, interfaces and disks', async () => {
    const only = new SystemSampler({
      procRoot: join(root, 'proc'),
      sysRoot: join(root, 'sys'),
      groups: ['network', 'disk'],
      interfaces: { exclude: ['^lo$'] },
      disks: { partitions: true },
    });
    await only.sample();
    const second = await only.sample();
    expect([...names(second)].every((n) => n.startsWith('net.') || n.startsWith('disk.'))).to.equal(true);
    expect(new Set(second.metrics.map((m) => m.tags?.iface).filter(Boolean))).to.deep.equal(new Set(['eth0']));
    expect(new Set(second.metrics.map((m) => m.tags?.dev).filter(Boolean))).to.deep.equal(new Set(['sda', 'sda1', 'vdb']));
    const noCores = new SystemSampler({ procRoot: join(root, 'proc'), groups: ['cpu'], perCore: false });
    await noCores.sample();
    state.total = { ...state.total, idle: state.total.idle + 10 };
    await writeHost(root, state);
    expect((await noCores.sample()).metrics.some((m) => m.tags?.core !== undefined)).to.equal(false);
  });

  it('refuses an unknown group and a filter pattern that is not a regular expression', () => {
    expect(() => new SystemSampler({ groups: ['cpu', 'gpu' as 'cpu'] })).to.throw(RangeError, /gpu/);
    expect(() => new SystemSampler({ disks: { exclude: ['(['] } })).to.throw(SyntaxError);
  });

  it('leaves out a group whose source cannot be read, keeps the rest, and resumes when it returns', async () => {
    await sampler.sample();
    const diskstats = join(root, 'proc', 'diskstats');
    const saved = await readFile(diskstats, 'utf8');
    await unlink(diskstats);
    const missing = await sampler.sample();
    expect(missing.errors.map((e) => e.code)).to.deep.equal(['BOLT_ERR_METRICS_SOURCE_UNREADABLE']);
    expect(missing.errors[0]?.message).to.contain('diskstats');
    expect([...names(missing)].some((n) => n.startsWith('disk.'))).to.equal(false);
    expect(names(missing).has('net.rx_bytes')).to.equal(true);
    await writeFile(diskstats, saved);
    const back = await sampler.sample();
    expect([...names(back)].some((n) => n.startsWith('disk.'))).to.equal(false);
    expect(names(await sampler.sample()).has('disk.read_bytes')).to.equal(true);
  });

  it('reports a missing mount point as an error and the other mounts as usual', async () => {
    const withBadMount = new SystemSampler({ groups: ['filesystem'], mounts: ['/no/such/mount', root] });
    const sample = await withBadMount.sample();
    expect(sample.errors).to.have.length(1);
    expect(sample.errors[0]?.message).to.contain('/no/such/mount');
    expect(sample.metrics.map((m) => m.tags?.mount)).to.deep.equal([root, root]);
  });

  it('serializes overlapping calls, so each one gets its own interval', async () => {
    const [a, b] = await Promise.all([sampler.sample(), sampler.sample()]);
    expect(a.intervalMs).to.equal(undefined);
    expect(b.intervalMs).to.be.above(0);
    sampler.reset();
    expect((await sampler.sample()).intervalMs).to.equal(undefined);
  });
});

describe('collector-system SystemSampler on this host', () => {
  it('reads every group without errors, in milliseconds per sample', async () => {
    const sampler = new SystemSampler();
    await sampler.sample();
    const start = process.cpuUsage();
    const rounds = 50;
    const seen = new Set<string>();
    for (let i = 0; i < rounds; i++) {
      const sample = await sampler.sample();
      expect(sample.errors).to.deep.equal([]);
      for (const name of names(sample)) seen.add(name);
    }
    const used = process.cpuUsage(start);
    // (CPU percentages may be absent here: samples this close together often fall within one clock
    // tick, and an interval without a tick says nothing about CPU use. accuracy.spec.ts checks them.)
    expect([...seen]).to.include.members(['mem.used', 'load.1', 'net.rx_bytes', 'disk.util', 'fs.used_percent']);
    // A bound against a regression to shelling out (tens of ms per call): the process's CPU here
    // includes whatever else the test process does. The agent's real cost is bench/agent-overhead's.
    expect((used.user + used.system) / 1000 / rounds).to.be.below(10);
  });
});

describe('collector-system computeSystemMetrics', () => {
  const reading = (monotonicMs: number, ioTicksMs: number, rxBytes: number): SystemReading => ({
    monotonicMs,
    timestamp: 0,
    network: new Map([['eth0', net(rxBytes, 0)]]),
    disk: [{ major: 8, minor: 0, name: 'sda', readsCompleted: 0, sectorsRead: 0, writesCompleted: 0, sectorsWritten: 0, ioTicksMs }],
  });

  it('divides by the time between the readings, not by a nominal second', () => {
    const metrics = computeSystemMetrics(reading(10_000, 1000, 0), reading(12_500, 1500, 5_000_000));
    expect(metrics).to.deep.include({ metric: 'net.rx_bytes', value: 2_000_000, tags: { iface: 'eth0' } });
    expect(metrics).to.deep.include({ metric: 'disk.util', value: 20, tags: { dev: 'sda' } });
  });

  it('caps disk utilisation at 100 percent', () => {
    const metrics = computeSystemMetrics(reading(0, 0, 0), reading(1000, 1010, 0));
    expect(metrics).to.deep.include({ metric: 'disk.util', value: 100, tags: { dev: 'sda' } });
  });

  it('gives no rates for two readings taken at the same instant', () => {
    expect(computeSystemMetrics(reading(5, 0, 0), reading(5, 10, 10))).to.deep.equal([]);
  });
});
