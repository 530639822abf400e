/** The writer-sqlite plugin in a real worker on a real bus: what reaches the sink is stored and queried. */
import { expect } from 'chai';
import Database from 'better-sqlite3';
import { fileURLToPath } from 'node:url';
import { createTestHost, type TestHost } from '../../../plugin-sdk/src/testing.ts';
import { startSinkCore, eventually } from '../../aggregator-results/test/sink-core.ts';
import type { CommitTaskStatusRequest, CommitTaskStatusResponse, MetricsView, PendingResponse, RunsView, RunView } from '../services.ts';
import type { IngestStats } from '../ingest.ts';

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

    const all = await bus.request<MetricsView>('sink.metrics', { runId: 'run-1' });
    expect(all.map((s) => [s.metric, s.host, s.values])).to.deep.equal([
      ['cpu.busy', 'a', [0.5, 0.75]],
      ['cpu.busy', 'b', [0.1]],
      ['mem.used', 'a', [42]],
    ]);
    expect(await bus.request<MetricsView>('sink.metrics', { runId: 'run-1', metric: 'cpu.busy', host: 'a', from: 1_500 })).to.deep.equal([
      { metric: 'cpu.busy', host: 'a', tags: {}, t: [2_000], values: [0.75] },
    ]);
    let refused: unknown;
    await bus.request('sink.run', {}).catch((err: unknown) => (refused = err));
    expect(refused).to.have.property('code', 'BOLT_ERR_BUS_HANDLER_FAILED');
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
