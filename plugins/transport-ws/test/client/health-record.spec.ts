import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { HealthSampler } from '../../client/health-record.ts';
import { tempDir } from './helpers.ts';

function busyFor(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

describe('transport-ws client: health record', () => {
  let sampler: HealthSampler | null = null;
  afterEach(() => sampler?.close());

  it('reports load, CPU, available memory, free disk of the data dir, event loop lag and the clock offset', async () => {
    const dir = tempDir();
    sampler = new HealthSampler({ dataDir: dir, clockOffsetMs: () => -12.5 });
    await new Promise((resolve) => setTimeout(resolve, 100));
    sampler.sample();
    // Block the loop for 150 ms: both the CPU share and the lag must show it.
    await new Promise((resolve) => setTimeout(resolve, 50));
    busyFor(150);
    await new Promise((resolve) => setTimeout(resolve, 50));
    const record = sampler.sample();
    expect(record.clockOffsetMs).to.equal(-12.5);
    expect(record.eventLoopLagMs).to.be.within(100, 400);
    expect(record.cpuPercent).to.be.above(10).and.at.most(100);
    expect(record.load1).to.be.at.least(0);
    const meminfo = /^MemAvailable:\s+(\d+) kB$/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))!;
    expect(Math.abs(record.memAvailableBytes - Number(meminfo[1]) * 1024)).to.be.below(256 * 1024 * 1024);
    const statfs = fs.statfsSync(dir);
    expect(Math.abs(record.diskFreeBytes - statfs.bavail * statfs.bsize)).to.be.below(256 * 1024 * 1024);
  });

  it('reports little lag on an idle loop and falls back when sources are missing', async () => {
    sampler = new HealthSampler({ dataDir: path.join(tempDir(), 'missing'), meminfoPath: '/nonexistent/meminfo', statPath: '/nonexistent/stat' });
    sampler.sample();
    await new Promise((resolve) => setTimeout(resolve, 200));
    busyFor(50);
    const record = sampler.sample();
    expect(record.cpuPercent, 'from os.cpus()').to.be.above(0).and.at.most(100);
    expect(record.eventLoopLagMs).to.be.below(100);
    expect(record.diskFreeBytes).to.equal(0);
    expect(record.memAvailableBytes).to.be.above(0);
    expect(record.clockOffsetMs).to.equal(0);
  });

  it('costs well under a millisecond per sample', () => {
    sampler = new HealthSampler({ dataDir: tempDir() });
    const n = 2000;
    const started = performance.now();
    for (let i = 0; i < n; i++) sampler.sample();
    const perCallUs = ((performance.now() - started) / n) * 1000;
    console.log(`      health record: ${perCallUs.toFixed(1)} us per sample (${n} samples)`);
    expect(perCallUs).to.be.below(1000);
  });
});
