/**
 * Bolt's numbers against the operating system's own tools, under load the test creates:
 * total CPU busy against mpstat(1) interval by interval, loopback bytes against the interface
 * counters in sysfs, filesystem space against df(1), block devices against lsblk(8).
 */
import { expect } from 'chai';
import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { SystemSampler } from '../sampler.ts';
import type { SystemSample } from '../sampler.ts';

const run = promisify(execFile);

/** Reports (after the first) that mpstat prints; the whole test takes about REPORTS + 2 seconds. */
const REPORTS = 8;
/** Loopback transfer: bytes in all and the pace, so that it spans about three intervals. */
const TRANSFER_BYTES = 200 * 1024 * 1024;
const TRANSFER_BYTES_PER_SECOND = 80 * 1024 * 1024;
const BURN_MS = 3000;
/** An interval is compared when neither of its ends arrived more than this off mpstat's 1 s beat. */
const ALIGNMENT_SLACK_MS = 30;

// A single-threaded busy loop, bounded by time and by iterations.
const BURNER = `
process.stdout.write('busy ');
const end = Date.now() + Number(process.argv[1]);
let i = 0, x = 0;
while (Date.now() < end && i < 4e9) { x += Math.sqrt(i++); }
process.stdout.write(String(x > 0));
`;

// One TCP connection on 127.0.0.1 between two sockets of this child, paced, bounded in bytes and time.
const TRANSFER = `
const net = require('node:net');
const total = Number(process.argv[1]), perSecond = Number(process.argv[2]);
setTimeout(() => process.exit(3), 12000).unref();
const server = net.createServer((sock) => {
  let got = 0;
  sock.on('data', (d) => { got += d.length; if (got >= total) { process.stdout.write(String(got)); sock.destroy(); server.close(); } });
});
server.listen(0, '127.0.0.1', () => {
  const client = net.connect(server.address().port, '127.0.0.1', () => {
    const chunk = Buffer.alloc(256 * 1024, 7);
    const t0 = Date.now();
    let sent = 0;
    const pump = () => {
      const due = Math.min(total, (perSecond * (Date.now() - t0)) / 1000 + chunk.length);
      while (sent < due) {
        const n = Math.min(chunk.length, total - sent);
        sent += n;
        if (!client.write(n === chunk.length ? chunk : chunk.subarray(0, n))) { client.once('drain', pump); return; }
      }
      if (sent < total) setTimeout(pump, 5); else client.end();
    };
    pump();
  });
});
`;

interface MpstatReport {
  idle: number;
  iowait: number;
}

interface Beat {
  /** performance.now() when the mpstat line arrived. */
  arrivedMs: number;
  report: MpstatReport;
  sample: SystemSample;
  /** The kernel's loopback counters read just before and just after the sample: the sample's own read lies between. */
  lo: { before: { rx: number; tx: number }; after: { rx: number; tx: number } };
}

function metric(sample: SystemSample, name: string, tags?: Record<string, string>): number {
  const point = sample.metrics.find((m) => m.metric === name && JSON.stringify(m.tags ?? {}) === JSON.stringify(tags ?? {}));
  if (!point) expect.fail(`no ${name} ${JSON.stringify(tags ?? {})} in the sample`);
  return point.value;
}

async function readLoCounters(): Promise<{ rx: number; tx: number }> {
  const [rx, tx] = await Promise.all([
    readFile('/sys/class/net/lo/statistics/rx_bytes', 'utf8'),
    readFile('/sys/class/net/lo/statistics/tx_bytes', 'utf8'),
  ]);
  return { rx: Number(rx), tx: Number(tx) };
}

function exited(child: ChildProcess): Promise<{ code: number | null; stdout: string }> {
  let stdout = '';
  child.stdout?.on('data', (d: Buffer) => { stdout += d.toString(); });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout }));
  });
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

/**
 * How far each arrival time lies off mpstat's beat, in ms. The beat (period and phase) is taken
 * from medians, so one late arrival does not shift the estimate for the others.
 */
function offBeat(times: readonly number[]): number[] {
  const period = median(times.slice(1).map((t, k) => t - (times[k] ?? NaN)));
  const phase = median(times.map((t, k) => t - k * period));
  return times.map((t, k) => t - k * period - phase);
}

describe('collector-system accuracy against the OS tools', function () {
  this.timeout(60_000);
  const children: ChildProcess[] = [];

  before(async function () {
    try {
      await run('mpstat', ['-V']);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      if (process.getuid?.() !== 0) throw new Error('mpstat is missing: install the sysstat package (apt-get install -y sysstat) to run this test');
      await run('apt-get', ['install', '-y', 'sysstat'], { timeout: 50_000 });
    }
  });

  afterEach(() => {
    for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });

  it('agrees with mpstat on CPU busy within 3 points per interval and with sysfs on loopback bytes within 1%', async function () {
    this.timeout(30_000);
    const sampler = new SystemSampler({ groups: ['cpu', 'network'], interfaces: { include: ['lo'] }, perCore: false });
    const mpstat = spawn('mpstat', ['1', String(REPORTS + 1)], { env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(mpstat);
    const mpstatDone = new Promise<number | null>((resolve, reject) => {
      mpstat.once('error', reject);
      mpstat.once('close', resolve);
    });

    // How the intervals are aligned: mpstat reads /proc/stat once per second and prints its report
    // for the second just ended at once (it flushes every line). On each report line this test takes
    // a Bolt sample and the sysfs counters at that instant, so Bolt's interval between two report
    // lines spans the same second as mpstat's report on the second line, offset only by the time from
    // mpstat's read to our read (pipe, wake-up, about a millisecond on a free core). Arrivals that a
    // busy machine delayed show up as off the 1 s beat; intervals with such an end are not compared.
    const beats: Beat[] = [];
    let columns: string[] = [];
    let burner: Promise<{ code: number | null; stdout: string }> | undefined;
    let transfer: Promise<{ code: number | null; stdout: string }> | undefined;
    let burnStartedMs = Infinity;
    const startLoad = (reportNumber: number): void => {
      if (reportNumber === 1) {
        const child = spawn(process.execPath, ['-e', BURNER, String(BURN_MS)], { stdio: ['ignore', 'pipe', 'inherit'] });
        children.push(child);
        child.stdout?.once('data', () => { burnStartedMs = performance.now(); });
        burner = exited(child);
      }
      if (reportNumber === 3) {
        const child = spawn(process.execPath, ['-e', TRANSFER, String(TRANSFER_BYTES), String(TRANSFER_BYTES_PER_SECOND)], { stdio: ['ignore', 'pipe', 'inherit'] });
        children.push(child);
        transfer = exited(child);
      }
    };

    const pending: Array<Promise<void>> = [];
    const lines = createInterface({ input: mpstat.stdout });
    lines.on('line', (line) => {
      const arrivedMs = performance.now();
      const fields = line.trim().split(/\s+/);
      if (fields.includes('%idle')) { columns = fields; return; }
      if (fields[1] !== 'all' || fields[0] === 'Average:' || columns.length === 0) return;
      const at = (name: string): number => Number(fields[columns.indexOf(name)]);
      const report = { idle: at('%idle'), iowait: at('%iowait') };
      pending.push((async () => {
        const before = await readLoCounters();
        const sample = await sampler.sample();
        const after = await readLoCounters();
        beats.push({ arrivedMs, report, sample, lo: { before, after } });
      })());
      startLoad(pending.length);
    });

    expect(await mpstatDone).to.equal(0);
    await Promise.all(pending);
    const burnt = await burner;
    const sent = await transfer;
    expect(burnt?.code, 'the CPU burner ran to its end').to.equal(0);
    expect(sent?.code, 'the loopback transfer completed').to.equal(0);
    expect(Number(sent?.stdout)).to.equal(TRANSFER_BYTES);
    expect(beats).to.have.length(REPORTS + 1);

    // CPU: interval k (between beats k-1 and k) against mpstat's report on beat k.
    const residuals = offBeat(beats.map((b) => b.arrivedMs));
    const rows: string[] = [];
    const compared: number[] = [];
    for (let k = 1; k < beats.length; k++) {
      const beat = beats[k] as Beat;
      const aligned = Math.abs(residuals[k] ?? Infinity) <= ALIGNMENT_SLACK_MS && Math.abs(residuals[k - 1] ?? Infinity) <= ALIGNMENT_SLACK_MS;
      const boltBusy = metric(beat.sample, 'cpu.busy');
      const boltNotIdle = 100 - metric(beat.sample, 'cpu.idle');
      const osBusy = 100 - beat.report.idle - beat.report.iowait;
      const osNotIdle = 100 - beat.report.idle;
      rows.push(`interval ${k}: bolt busy ${boltBusy.toFixed(2)} mpstat ${osBusy.toFixed(2)} | bolt 100-idle ${boltNotIdle.toFixed(2)} mpstat ${osNotIdle.toFixed(2)} | ends off beat ${residuals[k - 1]?.toFixed(1)} / ${residuals[k]?.toFixed(1)} ms${aligned ? '' : ' (not compared)'}`);
      if (!aligned) continue;
      compared.push(k);
      expect(Math.abs(boltBusy - osBusy), rows.join('\n')).to.be.at.most(3);
      expect(Math.abs(boltNotIdle - osNotIdle), rows.join('\n')).to.be.at.most(3);
    }
    expect(compared.length, `too few intervals aligned with mpstat:\n${rows.join('\n')}`).to.be.at.least(4);

    // The known load shows: an interval that lies wholly inside the busy loop has at least one of
    // the two cores busy.
    const burnEndMs = burnStartedMs + BURN_MS;
    const insideBurn = beats.slice(1).filter((b, i) => (beats[i] as Beat).arrivedMs > burnStartedMs && b.arrivedMs < burnEndMs);
    expect(insideBurn.length, 'an interval inside the busy loop').to.be.at.least(1);
    for (const b of insideBurn) expect(metric(b.sample, 'cpu.busy'), rows.join('\n')).to.be.at.least(45);

    // Network: Bolt's per-second rates times its intervals give back the byte counts the kernel
    // shows in sysfs over the same window, for the whole window and for each busy interval.
    let boltRx = 0;
    let boltTx = 0;
    for (let k = 1; k < beats.length; k++) {
      const beat = beats[k] as Beat;
      const previous = beats[k - 1] as Beat;
      const seconds = (beat.sample.intervalMs ?? NaN) / 1000;
      const rx = metric(beat.sample, 'net.rx_bytes', { iface: 'lo' }) * seconds;
      const tx = metric(beat.sample, 'net.tx_bytes', { iface: 'lo' }) * seconds;
      boltRx += rx;
      boltTx += tx;
      // The kernel's count over the sample's own interval lies between the counters read around
      // the two samples; under load those reads can be milliseconds from the sample's (1 % of an
      // interval at 80 MiB/s is 10 ms), so the check is against that range, within 1 %.
      const least = beat.lo.before.rx - previous.lo.after.rx;
      const most = beat.lo.after.rx - previous.lo.before.rx;
      if (least > 10 * 1024 * 1024) {
        expect(rx, `interval ${k} rx`).to.be.within(least * 0.99, most * 1.01);
        expect(tx, `interval ${k} tx`).to.be.within((beat.lo.before.tx - previous.lo.after.tx) * 0.99, (beat.lo.after.tx - previous.lo.before.tx) * 1.01);
      }
    }
    const first = beats[0] as Beat;
    const last = beats[beats.length - 1] as Beat;
    const sysRx = last.lo.before.rx - first.lo.after.rx;
    expect(sysRx).to.be.at.least(TRANSFER_BYTES);
    expect(boltRx).to.be.within(sysRx * 0.99, (last.lo.after.rx - first.lo.before.rx) * 1.01);
    expect(boltTx).to.be.within((last.lo.before.tx - first.lo.after.tx) * 0.99, (last.lo.after.tx - first.lo.before.tx) * 1.01);
  });

  it('agrees with df on the root filesystem and with lsblk on the block devices', async () => {
    const sampler = new SystemSampler({ groups: ['filesystem', 'disk'], mounts: ['/'] });
    await sampler.sample();
    const [sample, df, lsblk] = await Promise.all([
      sampler.sample(),
      run('df', ['-B1', '--output=avail,pcent', '/'], { env: { ...process.env, LC_ALL: 'C' } }),
      run('lsblk', ['-dn', '-o', 'NAME,TYPE'], { env: { ...process.env, LC_ALL: 'C' } }),
    ]);
    const [avail, pcent] = (df.stdout.trim().split('\n')[1] ?? '').trim().split(/\s+/);
    // Others write to this disk while the test runs: allow 1 GiB of drift between the two reads.
    expect(Math.abs(metric(sample, 'fs.free_bytes', { mount: '/' }) - Number(avail))).to.be.below(2 ** 30);
    // df rounds Use% up to a whole percent.
    expect(Math.ceil(metric(sample, 'fs.used_percent', { mount: '/' }))).to.be.closeTo(Number(pcent?.replace('%', '')), 1);

    const wholeDevices = lsblk.stdout
      .trim()
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter(([name, type]) => type !== 'loop' && !/^ram\d+$/.test(name ?? ''))
      .map(([name]) => name);
    const ours = new Set(sample.metrics.filter((m) => m.metric === 'disk.util').map((m) => m.tags?.dev));
    expect([...ours].sort()).to.deep.equal(wholeDevices.sort());
  });
});
