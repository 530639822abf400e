/** The writer-sqlite plugin in a real worker on a real bus: what reaches the sink is stored and queried. */
import { expect } from 'chai';
import Database from 'better-sqlite3';
import { fileURLToPath } from 'node:url';
import { createTestHost, type TestHost } from '../../../plugin-sdk/src/testing.ts';
import { startSinkCore, eventually } from '../../aggregator-results/test/sink-core.ts';
import type { CommitTaskStatusRequest, CommitTaskStatusResponse, FleetSeriesView, PendingResponse, RawSeriesView, RunsView, RunView, StatSeriesView } from '../services.ts';
import type { RunMetricsSummary } from '../store.ts';
import { congestionBounds, MAX_SAMPLES_PER_WRITE, type IngestStats } from '../ingest.ts';

const PLUGIN_DIR = fileURLToPath(new URL('..', import.meta.url));
type Stats = IngestStats & { pending: number; file: string };

function event(id: string, host: string, kind: string, extra: Record<string, unknown> = {}) {
  return { hostId: `key-${host}`, id, runId: 'run-1', taskId: 'hammer', host, kind, at: 1_000, ...extra };
}

function status(state: 'succeeded' | 'failed', finished: number, failed: number): CommitTaskStatusRequest {
  return { runId: 'run-1', taskId: 'hammer', state, hosts: { total: finished + failed, started: finished + failed, finished, failed, timedout: 0, cancelled: 0 } };
}

function count(file: string, sql: string): number {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare(sql).pluck().get() as number;
  } finally {
    db.close();
  }
}

describe('writer-sqlite plugin', function () {
  this.timeout(15_000);
  let host: TestHost | undefined;

  beforeEach(async () => {
    host = await createTestHost(PLUGIN_DIR, { config: { flushIntervalMs: 20 } });
    expect(host.status()).to.include({ state: 'running', isolation: 'worker' });
  });

  afterEach(async () => {
    await host?.close();
    host = undefined;
  });

  it('stores runs, dispatches, events and metrics from the bus and answers sink.runs, sink.run and sink.metrics', async () => {
    const { bus } = host!;
    bus.publish('run.updated', { run: { id: 'run-1', job: { name: 'nightly', tasks: [{ id: 'hammer' }] }, state: 'running', createdAt: 500, startedAt: 510 } });
    bus.publish('run.updated', { run: { id: 'run-0', jobName: 'smoke', state: 'succeeded', createdAt: 100 } });
    bus.publish('run.task.dispatched', {
      runId: 'run-1', taskId: 'hammer', commandId: 'cmd-1', targets: [{ id: 'key-a', name: 'a' }, { id: 'key-b', name: 'b' }],
      startAt: 1_000, timeoutMs: 30_000, failure: { maxFailedHosts: { count: 0 } }, dispatchedAt: 900,
    });
    bus.publish('sink.task.event', event('a:started', 'a', 'started', { startedAt: 1_000.25 }));
    bus.publish('sink.task.event', event('a:finished', 'a', 'finished', { at: 1_300, exitCode: 0, durationMs: 299.75, stdoutTail: 'hello\n', stderrTail: '' }));
    bus.publish('sink.task.event', event('b:failed', 'b', 'failed', { at: 1_400, exitCode: 2, durationMs: 399, startedAt: 1_001, stderrTail: 'boom\n' }));
    bus.publish('sink.metrics.batch', { hostId: 'key-a', id: 'batch-1', host: 'a', runId: 'run-1', samples: [{ t: 1_000, metric: 'cpu.busy', value: 0.5 }, { t: 2_000, metric: 'cpu.busy', value: 0.75 }, { t: 1_500, metric: 'mem.used', value: 42, tags: { kind: 'rss' } }] });
    bus.publish('sink.metrics.batch', { hostId: 'key-b', id: 'batch-2', host: 'b', runId: 'run-1', samples: [{ t: 1_000, metric: 'cpu.busy', value: 0.1 }] });

    const runs = await bus.request<RunsView>('sink.runs');
    expect(runs.map((r) => [r.id, r.jobName, r.state])).to.deep.equal([['run-1', 'nightly', 'running'], ['run-0', 'smoke', 'succeeded']]);
    expect((await bus.request<RunsView>('sink.runs', { state: 'succeeded' })).map((r) => r.id)).to.deep.equal(['run-0']);

    const view = await bus.request<RunView>('sink.run', { runId: 'run-1' });
    expect(view.run).to.deep.include({ id: 'run-1', jobName: 'nightly', state: 'running', createdAt: 500, startedAt: 510 });
    expect(view.tasks).to.have.length(1);
    const task = view.tasks[0]!;
    expect(task).to.deep.include({ taskId: 'hammer', state: 'running' });
    expect(task.dispatch).to.deep.equal({ commandId: 'cmd-1', targets: [{ id: 'key-a', name: 'a' }, { id: 'key-b', name: 'b' }], startAt: 1_000, timeoutMs: 30_000, failure: { maxFailedHosts: { count: 0 } }, dispatchedAt: 900 });
    expect(task.results).to.deep.equal([
      { runId: 'run-1', taskId: 'hammer', host: 'a', state: 'finished', exitCode: 0, startedAt: 1_000.25, durationMs: 299.75, stdoutTail: 'hello\n', stderrTail: '' },
      { runId: 'run-1', taskId: 'hammer', host: 'b', state: 'failed', exitCode: 2, startedAt: 1_001, durationMs: 399, stdoutTail: null, stderrTail: 'boom\n' },
    ]);
    expect(await bus.request('sink.run', { runId: 'no-such-run' })).to.equal(null);

    const raw = await bus.request<RawSeriesView[]>('sink.metrics', { runId: 'run-1', agg: 'raw' });
    expect(raw.map((s) => [s.metric, s.host, s.values])).to.deep.equal([
      ['cpu.busy', 'a', [0.5, 0.75]],
      ['cpu.busy', 'b', [0.1]],
      ['mem.used', 'a', [42]],
    ]);
    expect(await bus.request<RawSeriesView[]>('sink.metrics', { runId: 'run-1', metric: 'cpu.busy', host: 'a', from: 1_500 })).to.deep.equal([
      { metric: 'cpu.busy', host: 'a', task: null, tags: {}, t: [2_000], values: [0.75] },
    ]);
    // Without a host: the aggregates across hosts, one bucket per second.
    const fleet = await bus.request<FleetSeriesView[]>('sink.metrics', { runId: 'run-1', metric: 'cpu.busy' });
    expect(fleet).to.deep.equal([{
      metric: 'cpu.busy', task: null, tags: {}, bucketMs: 1000, t: [1_000, 2_000],
      count: [2, 1], sum: [0.6, 0.75], min: [0.1, 0.75], mean: [0.3, 0.75], p50: [0.1, 0.75], p95: [0.5, 0.75], max: [0.5, 0.75],
    }]);
    expect(await bus.request<StatSeriesView[]>('sink.metrics', { runId: 'run-1', metric: 'cpu.busy', agg: 'max', from: 1_999 })).to.deep.equal([
      { metric: 'cpu.busy', task: null, tags: {}, bucketMs: 1000, stat: 'max', t: [1_000, 2_000], values: [0.5, 0.75] },
    ]);
    let refused: unknown;
    await bus.request('sink.run', {}).catch((err: unknown) => (refused = err));
    expect(refused).to.have.property('code', 'BOLT_ERR_BUS_HANDLER_FAILED');
    for (const bad of [{ runId: 'run-1', agg: 'p99' }, { runId: 'run-1', host: 'a', agg: 'fleet' }, { metric: 'cpu.busy' }]) {
      const err = await bus.request('sink.metrics', bad).then(() => null, (e: { cause?: { code?: string } }) => e);
      expect(err, JSON.stringify(bad)).to.have.nested.property('cause.code', 'BOLT_ERR_METRICS_BAD_QUERY');
    }
  });

  it('keeps aggregates across hosts per task from the collectors\' task tag, counting a resent batch once', async () => {
    const { bus } = host!;
    const batch = (id: string, hostName: string, value: number) => ({
      hostId: `key-${hostName}`, id, host: hostName, runId: 'run-2',
      samples: [
        { t: 10_100, metric: 'cpu.busy', value, tags: { task: 'load' } },
        { t: 10_200, metric: 'net.rx_bytes', value: value * 1000, tags: { task: 'load', iface: 'eth0' } },
      ],
    });
    for (let i = 1; i <= 20; i++) bus.publish('sink.metrics.batch', batch(`b${i}`, `h${i}`, i));
    // h1..h5 resend after a reconnect.
    for (let i = 1; i <= 5; i++) bus.publish('sink.metrics.batch', batch(`b${i}`, `h${i}`, i));
    await eventually(async () => ((await bus.request<Stats>('sink.store.stats')).batches === 25 ? true : undefined), 'every batch handled');
    const cpu = await bus.request<FleetSeriesView[]>('sink.metrics', { runId: 'run-2', metric: 'cpu.busy', task: 'load' });
    expect(cpu).to.have.length(1);
    expect(cpu[0]).to.deep.include({ task: 'load', tags: {}, t: [10_000], count: [20], sum: [210], min: [1], max: [20], p50: [10], p95: [19] });
    const net = await bus.request<StatSeriesView[]>('sink.metrics', { runId: 'run-2', metric: 'net.rx_bytes', agg: 'sum' });
    expect(net).to.deep.equal([{ metric: 'net.rx_bytes', task: 'load', tags: { iface: 'eth0' }, bucketMs: 1000, stat: 'sum', t: [10_000], values: [210_000] }]);
    const perHost = await bus.request<RawSeriesView[]>('sink.metrics', { runId: 'run-2', metric: 'cpu.busy', host: 'h3' });
    expect(perHost).to.deep.equal([{ metric: 'cpu.busy', host: 'h3', task: 'load', tags: {}, t: [10_100], values: [3] }]);
    const summary = await bus.request<RunMetricsSummary>('sink.metrics', { runId: 'run-2', agg: 'summary', metric: 'cpu.busy', host: 'h3' });
    expect(summary.rows.map((r) => [r.host, r.count, r.mean])).to.deep.equal([[null, 20, 10.5], ['h3', 1, 3]]);
  });

  it('stores batches that arrive as the JSON text of their message, and drops one whose text holds no samples', async () => {
    const { bus } = host!;
    const text = (id: string, hostName: string, value: number) => {
      const samples = [{ t: 20_100, metric: 'cpu.busy', value, tags: { task: 'load' } }, { t: 20_200, metric: 'cpu.busy', value: value + 1, tags: { task: 'load', core: '0' } }];
      return { hostId: `key-${hostName}`, id, host: hostName, runId: 'run-3', sampleCount: samples.length, json: JSON.stringify({ v: 1, type: 'metrics.batch', id, host: hostName, runId: 'run-3', samples }) };
    };
    bus.publish('sink.metrics.batch', text('t1', 'h1', 1));
    bus.publish('sink.metrics.batch', { hostId: 'key-h9', id: 'bad', host: 'h9', runId: 'run-3', sampleCount: 1, json: '{"samples": "none"' });
    bus.publish('sink.metrics.batch', text('t2', 'h2', 3));
    bus.publish('sink.metrics.batch', text('t1', 'h1', 1));
    const stats = await eventually(async () => {
      const s = await bus.request<Stats>('sink.store.stats');
      return s.batches === 3 && s.rejected === 1 ? s : undefined;
    }, 'every batch handled');
    expect(stats).to.include({ samples: 4, duplicates: 1, dropped: 0, pending: 0 });
    const cpu = await bus.request<FleetSeriesView[]>('sink.metrics', { runId: 'run-3', metric: 'cpu.busy', task: 'load' });
    expect(cpu.map((s) => [s.tags, s.count, s.sum])).to.deep.equal([[{ core: '0' }, [2], [6]], [{}, [2], [4]]]);
    expect(host!.logs.some((l) => l.msg.includes('without a samples array') && l.id === 'bad')).to.equal(true);
  });

  it('stores a burst larger than one transaction takes in several, all of it', async () => {
    await host!.close();
    host = await createTestHost(PLUGIN_DIR, { config: { flushIntervalMs: 10_000 } });
    const { bus } = host;
    // 60 batches of 1,000 samples: several times what one transaction takes.
    for (let b = 0; b < 60; b++) {
      bus.publish('sink.metrics.batch', { hostId: `key-h${b}`, id: `big-${b}`, host: `h${b}`, runId: 'run-big', samples: Array.from({ length: 1000 }, (_, i) => ({ t: 1_000 + i, metric: 'm', value: i })) });
    }
    const counts = await eventually(async () => {
      const fleet = await bus.request<StatSeriesView[]>('sink.metrics', { runId: 'run-big', metric: 'm', agg: 'count' });
      const total = fleet[0]?.values.reduce((a, b) => a + b, 0);
      return total === 60_000 ? total : undefined;
    }, 'every sample stored');
    expect(counts).to.equal(60_000);
    const stats = await bus.request<Stats>('sink.store.stats');
    expect(stats).to.include({ batches: 60, samples: 60_000, pending: 0, dropped: 0 });
    expect(stats.flushes).to.be.at.least(Math.ceil(60_000 / MAX_SAMPLES_PER_WRITE));
  });

  it('keeps at most maxPendingSamples queued, dropping the oldest batches and counting them', async () => {
    await host!.close();
    host = await createTestHost(PLUGIN_DIR, { config: { flushIntervalMs: 10_000, maxPendingSamples: 5000 } });
    const { bus } = host;
    for (let b = 0; b < 10; b++) {
      bus.publish('sink.metrics.batch', { hostId: 'key-h', id: `b${b}`, host: 'h', runId: 'run-full', samples: Array.from({ length: 1000 }, (_, i) => ({ t: b * 1000 + i, metric: 'm', value: b })) });
    }
    const queued = await eventually(async () => {
      const s = await bus.request<Stats & { pendingSamples: number }>('sink.store.stats');
      return s.dropped === 5 ? s : undefined;
    }, 'five batches dropped');
    expect(queued).to.include({ pending: 5, pendingSamples: 5000, droppedSamples: 5000, samples: 0 });
    const stored = await bus.request<RawSeriesView[]>('sink.metrics', { runId: 'run-full', metric: 'm', agg: 'raw' });
    expect([...new Set(stored[0]!.values)]).to.deep.equal([5, 6, 7, 8, 9]);
    // Logged once for the burst (at most every 10 s), with the first drop's count.
    expect(host.logs.filter((l) => l.level === 50 && l.msg.includes('queue full')).map((l) => l.droppedSamplesTotal)).to.deep.equal([1000]);
  });

  it('announces congestion once a few transactions\' worth of samples wait, and relief once they are stored', async () => {
    await host!.close();
    host = await createTestHost(PLUGIN_DIR, { config: { flushIntervalMs: 10_000, maxPendingSamples: 8000 } });
    const { bus } = host;
    const { congestedAt, relievedAt } = congestionBounds(8000);
    expect([congestedAt, relievedAt]).to.deep.equal([4000, 1000]);
    const heard: Array<{ congested: boolean; holdMs?: number; pendingSamples: number }> = [];
    bus.subscribe('sink.store.congestion', (data) => void heard.push(data as (typeof heard)[number]));
    for (let b = 0; b < 5; b++) {
      bus.publish('sink.metrics.batch', { hostId: 'key-h', id: `c${b}`, host: 'h', runId: 'run-c', samples: Array.from({ length: 1000 }, (_, i) => ({ t: b * 1000 + i, metric: 'm', value: b })) });
    }
    await eventually(async () => (heard.length > 0 ? true : undefined), 'a congestion announcement');
    expect(heard[0]).to.include({ congested: true, pendingSamples: 4000 });
    expect(heard[0]!.holdMs).to.be.above(0);
    // A query stores what is queued first.
    const count = await bus.request<StatSeriesView[]>('sink.metrics', { runId: 'run-c', metric: 'm', agg: 'count' });
    expect(count[0]!.values.reduce((a, b) => a + b, 0)).to.equal(5000);
    await eventually(async () => (heard.at(-1)?.congested === false ? true : undefined), 'relief');
    expect(heard.at(-1)!.pendingSamples).to.be.at.most(relievedAt);
    expect(await bus.request<Stats>('sink.store.stats')).to.include({ congestions: 1, dropped: 0, pending: 0 });
  });

  it('stores a burst of events in a few transactions, each message id once', async () => {
    const { bus } = host!;
    for (let i = 0; i < 300; i++) bus.publish('sink.task.event', event(`e${i}`, `h${i % 30}`, i < 30 ? 'started' : 'finished', { exitCode: 0 }));
    // The same messages again, as a client resends after a reconnect.
    for (let i = 0; i < 30; i++) bus.publish('sink.task.event', event(`e${i}`, `h${i % 30}`, 'started'));
    for (let i = 0; i < 2; i++) bus.publish('sink.metrics.batch', { hostId: 'key-h0', id: 'batch-1', host: 'h0', runId: 'run-1', samples: [{ t: 1, metric: 'cpu.busy', value: 1 }] });
    const stats = await eventually(async () => {
      const s = await bus.request<Stats>('sink.store.stats');
      return s.events + s.batches === 332 ? s : undefined;
    }, 'every message stored');
    // 30 events and 1 batch were resent.
    expect(stats).to.include({ duplicates: 31, rejected: 0, dropped: 0, pending: 0, samples: 1 });
    expect(stats.flushes, `${stats.flushes} transactions for 332 messages`).to.be.at.most(10);
    expect(count(stats.file, 'SELECT count(*) FROM events')).to.equal(300);
    const view = await bus.request<RunView>('sink.run', { runId: 'run-1' });
    expect(view.tasks[0]!.results.map((r) => r.state)).to.deep.equal(Array(30).fill('finished'));
  });

  it('drops a malformed event alone and stores the others of its group', async () => {
    const { bus } = host!;
    bus.publish('sink.task.event', event('good-1', 'a', 'started'));
    bus.publish('sink.task.event', { ...event('bad', 'b', 'started'), at: 'yesterday' });
    bus.publish('sink.task.event', event('good-2', 'c', 'started'));
    const stats = await eventually(async () => {
      const s = await bus.request<Stats>('sink.store.stats');
      return s.events === 3 ? s : undefined;
    }, 'the group handled');
    expect(stats.rejected).to.equal(1);
    const view = await bus.request<RunView>('sink.run', { runId: 'run-1' });
    expect(view.tasks[0]!.results.map((r) => r.host)).to.deep.equal(['a', 'c']);
    expect(host!.logs.some((l) => l.msg.includes('refused by the sink store') && l.id === 'bad')).to.equal(true);
  });

  it('commits a task status durably after the events received before it, and keeps the first of two different ones', async () => {
    const { bus } = host!;
    bus.publish('sink.task.event', event('a:finished', 'a', 'finished', { exitCode: 0, durationMs: 5, startedAt: 995 }));
    bus.publish('sink.task.event', event('b:finished', 'b', 'finished', { exitCode: 0, durationMs: 7, startedAt: 996 }));
    const first = await bus.request<CommitTaskStatusResponse>('sink.store.commitTaskStatus', status('succeeded', 2, 0));
    expect(first).to.deep.equal({ outcome: 'committed', publishedAt: null, status: { runId: 'run-1', taskId: 'hammer', state: 'succeeded', hosts: { total: 2, started: 2, finished: 2, failed: 0, timedout: 0, cancelled: 0 } } });
    const file = (await bus.request<Stats>('sink.store.stats')).file;
    // The events went to disk with the status, although the flush interval had not passed.
    expect(count(file, `SELECT count(*) FROM host_results WHERE state = 'finished'`)).to.equal(2);
    expect(count(file, `SELECT start_skew_ms FROM tasks WHERE task_id = 'hammer'`)).to.equal(1);

    expect(await bus.request<CommitTaskStatusResponse>('sink.store.commitTaskStatus', status('succeeded', 2, 0))).to.include({ outcome: 'duplicate' });
    const conflict = await bus.request<CommitTaskStatusResponse>('sink.store.commitTaskStatus', status('failed', 1, 1));
    expect(conflict).to.deep.equal({ ...first, outcome: 'conflict' });

    expect(await bus.request('sink.store.markPublished', { runId: 'run-1', taskId: 'hammer', at: 1234 })).to.equal(true);
    expect(await bus.request<CommitTaskStatusResponse>('sink.store.commitTaskStatus', status('succeeded', 2, 0))).to.include({ outcome: 'duplicate', publishedAt: 1234 });
    const pending = await bus.request<PendingResponse>('sink.store.pending', {});
    expect(pending).to.deep.equal({ tasks: [], unpublished: [] });
  });

  it('stores what is still queued when it stops', async () => {
    await host!.close();
    host = undefined;
    const sink = await startSinkCore({ 'writer-sqlite': { flushIntervalMs: 10_000 } }, ['writer-sqlite']);
    try {
      const { bus } = sink.core;
      for (let i = 0; i < 5; i++) bus.publish('sink.task.event', event(`e${i}`, `h${i}`, 'started'));
      await eventually(async () => ((await bus.request<Stats>('sink.store.stats')).pending === 5 ? true : undefined), 'five events queued');
      expect(count(sink.storeFile, 'SELECT count(*) FROM events')).to.equal(0);
      await sink.restartPlugin('writer-sqlite');
      expect(count(sink.storeFile, 'SELECT count(*) FROM events')).to.equal(5);
    } finally {
      await sink.close();
    }
  });
});
