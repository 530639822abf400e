/**
 * The collector-system plugin in a real worker host, driven the way a client process drives it:
 * dispatches and task events on the bus, client.clock / client.status / client.send served by a
 * fake transport. What reaches client.send is what the sink would get.
 */
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { createServer, connect, type AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { createTestHost, type TestHost } from '../../../plugin-sdk/src/testing.ts';
import type { CollectorStats } from '../serve.ts';
import { FAKE_HOST_NAME, fakeClient, instants, pollUntil, type FakeClient, type ReceivedSample } from './fake-client.ts';

/** The server's clock runs 5 s ahead of this host's. */
const OFFSET_MS = 5000;
const START_MARGIN_MS = 300;
const END_MARGIN_MS = 300;

const CONFIG = {
  startMarginMs: START_MARGIN_MS,
  endMarginMs: END_MARGIN_MS,
  flushMs: 50,
  perCore: false,
  defaultMetrics: { intervalMs: 200, collect: ['memory', 'load'] },
};

/** The groups a set of samples covers, by metric name prefix. */
function groupsOf(samples: readonly ReceivedSample[]): string[] {
  const prefixes: Record<string, string> = { cpu: 'cpu', mem: 'memory', load: 'load', net: 'network', disk: 'disk', fs: 'filesystem' };
  return [...new Set(samples.map((s) => prefixes[s.metric.split('.')[0]!] ?? s.metric))].sort();
}

async function stats(host: TestHost): Promise<CollectorStats> {
  return host.bus.request<CollectorStats>('collector-system.stats');
}

/** Waits until the plugin samples nothing and has handed every sample to client.send. */
async function drained(host: TestHost): Promise<void> {
  await pollUntil('the collector to go idle', async () => {
    const s = await stats(host);
    return s.open === 0 && s.waiting === 0 && s.stream.queued === 0;
  }, 8000);
}

describe('collector-system plugin', function () {
  this.timeout(20_000);
  let host: TestHost;
  let client: FakeClient;

  before(async () => {
    host = await createTestHost(new URL('..', import.meta.url), { config: CONFIG });
    expect(host.status().state).to.equal('running');
    client = fakeClient(host.bus, { offsetMs: OFFSET_MS });
  });

  after(async () => {
    client?.dispose();
    await host?.close();
  });

  it('samples only the groups each task asks for, falls back to the configured default, and shares one reading per tick', async () => {
    const cpuMem = client.dispatch({ runId: 'run-sel', taskId: 'cpu-mem', metrics: { intervalMs: 200, collect: ['cpu', 'memory'] } });
    const netLoad = client.dispatch({ runId: 'run-sel', taskId: 'net-load', metrics: { intervalMs: 200, collect: ['network', 'load', 'process'] } });
    const byDefault = client.dispatch({ runId: 'run-sel', taskId: 'default' });
    const processOnly = client.dispatch({ runId: 'run-sel', taskId: 'process-only', metrics: { intervalMs: 200, collect: ['process'] } });
    await pollUntil('four ticks of each task', () => ['cpu-mem', 'net-load', 'default'].every((task) => instants(client.samplesOf(task)).length >= 4));
    const during = await stats(host);
    for (const task of [cpuMem, netLoad, byDefault, processOnly]) client.event(task, 'finished');
    await drained(host);

    expect(groupsOf(client.samplesOf('cpu-mem'))).to.deep.equal(['cpu', 'memory']);
    expect(groupsOf(client.samplesOf('net-load'))).to.deep.equal(['load', 'network']);
    expect(groupsOf(client.samplesOf('default'))).to.deep.equal(['load', 'memory']);
    expect(client.samplesOf('process-only')).to.deep.equal([]);
    // One loop for the three tasks: every group any of them needs, read once per tick.
    expect(during.loops).to.have.length(1);
    expect(during.loops[0]!.groups.sort()).to.deep.equal(['cpu', 'load', 'memory', 'network']);
    const shared = instants(client.samplesOf('net-load')).filter((t) => t >= instants(client.samplesOf('cpu-mem'))[0]!);
    expect(shared.length).to.be.at.least(3);
    for (const t of shared) expect(instants(client.samplesOf('cpu-mem'))).to.include(t);

    for (const batch of client.batches.filter((b) => b.runId === 'run-sel')) {
      expect(batch).to.include({ v: 1, type: 'metrics.batch', host: FAKE_HOST_NAME });
      expect(batch.samples.length).to.be.within(1, 2000);
    }
    const first = client.samplesOf('cpu-mem')[0]!;
    expect(first.runId).to.equal('run-sel');
    // t is on the server's clock: this host's plus the offset.
    expect(Math.abs(first.t - cpuMem.receivedAt)).to.be.below(1500);
    expect(client.samples().filter((s) => s.runId === 'run-sel').every((s) => typeof s.tags?.task === 'string')).to.equal(true);
  });

  it('opens the window startMarginMs before startAt and closes it endMarginMs after the final event', async () => {
    const startAt = client.serverNow() + 1000;
    const task = client.dispatch({ runId: 'run-win', taskId: 'window', startAt, timeoutMs: 60_000, metrics: { intervalMs: 100, collect: ['memory'] } });
    await pollUntil('the task to run a while', () => client.serverNow() > startAt + 400, 5000);
    const final = client.event(task, 'finished');
    await pollUntil('the end margin to pass', () => client.serverNow() > final.at + END_MARGIN_MS + 300, 5000);
    await drained(host);

    const ts = instants(client.samplesOf('window'));
    expect(ts[0]).to.be.at.least(startAt - START_MARGIN_MS);
    expect(ts.at(-1)).to.be.at.most(final.at + END_MARGIN_MS);
    // Sampled through the window: from its first interval to its last.
    expect(ts[0]).to.be.below(startAt - START_MARGIN_MS + 100 + 200);
    expect(ts.at(-1)).to.be.above(final.at + END_MARGIN_MS - 100 - 200);
  });

  it('closes a window without a final event at (startAt or arrival) + timeoutMs + endMarginMs', async () => {
    const task = client.dispatch({ runId: 'run-cap', taskId: 'no-final', timeoutMs: 400, metrics: { intervalMs: 100, collect: ['load'] } });
    const limit = task.receivedAt + 400 + END_MARGIN_MS;
    await pollUntil('the cap to pass', () => client.serverNow() > limit + 300, 5000);
    await drained(host);
    const ts = instants(client.samplesOf('no-final'));
    expect(ts.length).to.be.at.least(3);
    expect(ts.at(-1)).to.be.at.most(limit);
  });

  it('leaves rates out of the first sample instead of reporting zeros', async () => {
    const task = client.dispatch({ runId: 'run-rates', taskId: 'rates', metrics: { intervalMs: 250, collect: ['cpu', 'network', 'memory'] } });
    await pollUntil('three ticks', () => instants(client.samplesOf('rates')).length >= 3);
    client.event(task, 'finished');
    await drained(host);
    const samples = client.samplesOf('rates');
    const [t0, t1] = instants(samples);
    const at = (t: number | undefined) => samples.filter((s) => s.t === t).map((s) => s.metric);
    expect(at(t0)).to.include('mem.used');
    expect(at(t0).filter((m) => m.startsWith('cpu.') || m.startsWith('net.'))).to.deep.equal([]);
    expect(at(t1)).to.include.members(['mem.used', 'cpu.busy', 'cpu.user', 'net.rx_bytes', 'net.tx_bytes']);
  });

  it('measures loopback bytes through the plugin path within 1 % of the kernel counters', async () => {
    const TRANSFER = 64 * 1024 * 1024;
    const loRx = (): number => Number(readFileSync('/sys/class/net/lo/statistics/rx_bytes', 'utf8'));
    const trace: Array<{ t: number; rx: number }> = [];
    const poll = setInterval(() => trace.push({ t: client.serverNow(), rx: loRx() }), 2);
    trace.push({ t: client.serverNow(), rx: loRx() });
    const task = client.dispatch({ runId: 'run-net', taskId: 'net', metrics: { intervalMs: 200, collect: ['network', 'memory'] } });
    const lo = (): ReceivedSample[] => client.samplesOf('net').filter((s) => s.metric === 'net.rx_bytes' && s.tags?.iface === 'lo');
    try {
      await pollUntil('two rates of lo', () => lo().length >= 2);
      // One TCP connection on 127.0.0.1, sent in full while the window is open.
      await new Promise<void>((resolve, reject) => {
        const server = createServer((sock) => {
          let got = 0;
          sock.on('data', (d: Buffer) => {
            got += d.length;
            if (got >= TRANSFER) {
              sock.destroy();
              server.close(() => resolve());
            }
          });
        });
        server.on('error', reject);
        server.listen(0, '127.0.0.1', () => {
          const sock = connect((server.address() as AddressInfo).port, '127.0.0.1', () => {
            const chunk = Buffer.alloc(1024 * 1024, 7);
            let sent = 0;
            const pump = (): void => {
              while (sent < TRANSFER) {
                sent += chunk.length;
                if (!sock.write(chunk)) return void sock.once('drain', pump);
              }
              sock.end();
            };
            pump();
          });
          sock.on('error', reject);
        });
      });
      const rates = lo().length;
      await pollUntil('two more rates of lo', () => lo().length >= rates + 2);
      client.event(task, 'finished');
      await drained(host);
    } finally {
      clearInterval(poll);
    }
    const samples = lo();
    const ticks = instants(client.samplesOf('net'));
    // Every tick after the first carries lo's rate, so the rates cover one unbroken span of time.
    const first = ticks.indexOf(samples[0]!.t);
    expect(first).to.equal(1);
    expect(samples.map((x) => x.t)).to.deep.equal(ticks.slice(1));
    // Bytes Bolt saw: each rate times the time since the tick before it.
    let bolt = 0;
    samples.forEach((x, i) => (bolt += (x.value * (x.t - ticks[i]!)) / 1000));
    // The kernel's count from the last trace point before the span to the first after it.
    const from = trace.filter((p) => p.t <= ticks[0]!).at(-1)!;
    const to = trace.find((p) => p.t >= ticks.at(-1)!)!;
    const kernel = to.rx - from.rx;
    expect(bolt).to.be.at.least(TRANSFER);
    expect(Math.abs(bolt - kernel) / kernel).to.be.below(0.01);
  });
});

describe('collector-system plugin when client.send refuses', function () {
  this.timeout(20_000);
  let host: TestHost;
  let client: FakeClient;

  before(async () => {
    host = await createTestHost(new URL('..', import.meta.url), { config: { ...CONFIG, bufferSamples: 20, batchSamples: 10 } });
    client = fakeClient(host.bus, { offsetMs: OFFSET_MS });
  });

  after(async () => {
    client?.dispose();
    await host?.close();
  });

  it('drops the oldest samples beyond the buffer, counts them, logs a warning and reports them to the sink', async () => {
    client.refusing = true;
    const task = client.dispatch({ runId: 'run-drop', taskId: 'drop', metrics: { intervalMs: 100, collect: ['memory'] } });
    await pollUntil('sends to be refused', () => client.refused.length >= 2);
    await pollUntil('the buffer to overflow', async () => (await stats(host)).stream.dropped >= 20);
    client.refusing = false;
    await pollUntil('samples to flow again', () => client.samplesOf('drop').length >= 10);
    client.event(task, 'finished');
    await drained(host);
    const s = await stats(host);

    const delivered = client.samplesOf('drop');
    const reports = client.samples().filter((x) => x.metric === 'bolt.dropped_samples');
    expect(s.stream.dropped).to.be.at.least(20);
    expect(s.stream.refused).to.be.at.least(2);
    // Every dropped sample is reported, in batches of its run, and nothing is lost silently.
    expect(reports.reduce((sum, r) => sum + r.value, 0)).to.equal(s.stream.dropped);
    expect(reports.every((r) => r.runId === 'run-drop')).to.equal(true);
    expect(delivered.length + s.stream.dropped).to.equal(s.stream.added);
    // The oldest went: every sample that was refused and never delivered is older than every delivered one.
    const deliveredAt = new Set(delivered.map((x) => `${x.t}/${x.metric}`));
    const lost = client.refused.flatMap((b) => b.samples).filter((x) => x.tags?.task === 'drop' && !deliveredAt.has(`${x.t}/${x.metric}`));
    expect(lost.length).to.be.above(0);
    expect(Math.max(...lost.map((x) => x.t))).to.be.below(Math.min(...delivered.map((x) => x.t)));
    const warn = host.logs.find((l) => l.level === 40 && l.code === 'BOLT_ERR_METRICS_SAMPLES_DROPPED');
    expect(warn, 'a warn log about the drops').to.not.equal(undefined);
    expect(warn!.dropped).to.be.above(0);
    expect(warn!.sendCode).to.be.a('string');
  });
});
