/**
 * The collector-process plugin in a real worker host: tasks that collect `process` get CPU and
 * RSS of the processes bolt.yaml names; other tasks get nothing from it.
 */
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { createTestHost, type TestHost } from '../../../plugin-sdk/src/testing.ts';
import type { CollectorStats } from '../../collector-system/serve.ts';
import { fakeClient, instants, pollUntil, type FakeClient } from '../../collector-system/test/fake-client.ts';

// A single-threaded busy loop, bounded by time and by iterations.
const BURNER = `const end = Date.now() + 15000; let i = 0, x = 0; while (Date.now() < end && i < 4e10) { x += Math.sqrt(i++); } console.log(x > 0);`;

const COMMON = { startMarginMs: 0, endMarginMs: 0, flushMs: 50 };

async function idle(host: TestHost): Promise<void> {
  await pollUntil('the collector to go idle', async () => {
    const s = await host.bus.request<CollectorStats>('collector-process.stats');
    return s.open === 0 && s.waiting === 0 && s.stream.queued === 0;
  }, 8000);
}

describe('collector-process plugin', function () {
  this.timeout(20_000);
  let burner: ChildProcess;
  let host: TestHost;
  let client: FakeClient;

  before(async () => {
    burner = spawn(process.execPath, ['-e', BURNER], { stdio: 'ignore' });
    host = await createTestHost(new URL('..', import.meta.url), {
      config: { ...COMMON, processes: [{ pid: burner.pid, label: 'burner' }, { name: 'bolt-no-such-process' }] },
    });
    expect(host.status().state).to.equal('running');
    client = fakeClient(host.bus, { offsetMs: 0 });
  });

  after(async () => {
    burner?.kill('SIGKILL');
    client?.dispose();
    await host?.close();
  });

  it('samples CPU and RSS of the configured processes for a task that collects process, tagged with process and task', async () => {
    const task = client.dispatch({ runId: 'run-p', taskId: 'watch', metrics: { intervalMs: 200, collect: ['process', 'cpu'] } });
    await pollUntil('four ticks', () => instants(client.samplesOf('watch')).length >= 4);
    client.event(task, 'finished');
    await idle(host);

    const samples = client.samplesOf('watch');
    expect([...new Set(samples.map((s) => s.metric))].sort()).to.deep.equal(['proc.count', 'proc.cpu_percent', 'proc.rss_bytes']);
    expect([...new Set(samples.map((s) => s.tags?.process))].sort()).to.deep.equal(['bolt-no-such-process', 'burner']);
    expect(samples.every((s) => s.runId === 'run-p')).to.equal(true);
    const [t0] = instants(samples);
    // The first tick has counts and RSS but no CPU %, which needs two readings.
    expect(samples.filter((s) => s.t === t0).map((s) => s.metric)).to.not.include('proc.cpu_percent');
    const of = (metric: string, name: string) => samples.filter((s) => s.metric === metric && s.tags?.process === name).map((s) => s.value);
    expect(of('proc.count', 'burner').every((v) => v === 1)).to.equal(true);
    expect(of('proc.count', 'bolt-no-such-process').every((v) => v === 0)).to.equal(true);
    expect(Math.min(...of('proc.rss_bytes', 'burner'))).to.be.above(10 * 1024 * 1024);
    expect(Math.max(...of('proc.cpu_percent', 'burner'))).to.be.above(20);
  });

  it('samples nothing for a task that does not collect process', async () => {
    const task = client.dispatch({ runId: 'run-p', taskId: 'other', metrics: { intervalMs: 200, collect: ['cpu', 'memory'] } });
    const s = await host.bus.request<CollectorStats>('collector-process.stats');
    expect(s.waiting + s.open).to.equal(0);
    client.event(task, 'finished');
    expect(client.samplesOf('other')).to.deep.equal([]);
  });
});

describe('collector-process plugin without processes configured', function () {
  this.timeout(20_000);

  it('warns once and samples nothing', async () => {
    const host = await createTestHost(new URL('..', import.meta.url), { config: COMMON });
    const client = fakeClient(host.bus, { offsetMs: 0 });
    try {
      const task = client.dispatch({ runId: 'run-q', taskId: 'watch', metrics: { intervalMs: 100, collect: ['process'] } });
      await pollUntil('the warning', () => host.logs.some((l) => l.level === 40 && l.msg.includes('names no process')));
      client.event(task, 'finished');
      await idle(host);
      expect(client.samples()).to.deep.equal([]);
      expect(host.logs.filter((l) => l.msg.includes('names no process'))).to.have.length(1);
    } finally {
      client.dispose();
      await host.close();
    }
  });
});
