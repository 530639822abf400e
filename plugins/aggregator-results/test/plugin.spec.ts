/**
 * aggregator-results with writer-sqlite in one real core (role sink): dispatches and host events
 * go in on the bus, task.status comes out, committed in the SQLite file before it is published.
 */
import { expect } from 'chai';
import Database from 'better-sqlite3';
import type { CommitTaskStatusResponse, RunView, TaskStatus } from '../../writer-sqlite/services.ts';
import { eventually, startSinkCore, type SinkCore } from './sink-core.ts';

const GRACE_MS = 200;

interface Seen {
  status: TaskStatus;
  /** The task's state in the SQLite file at the moment task.status was delivered. */
  storedState: string | undefined;
  at: number;
}

interface Target {
  id: string;
  name: string;
}

const hostsNamed = (...names: string[]): Target[] => names.map((name) => ({ id: `key-${name}`, name }));

function storedState(file: string, runId: string, taskId: string): string | undefined {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return db.prepare('SELECT k.state FROM tasks k JOIN runs r ON r.id = k.run WHERE r.run_id = ? AND k.task_id = ?').pluck().get(runId, taskId) as string | undefined;
  } finally {
    db.close();
  }
}

function count(file: string, sql: string, ...params: unknown[]): number {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare(sql).pluck().get(...params) as number;
  } finally {
    db.close();
  }
}

/** Bus traffic of one run: dispatches, host events, and the task.status messages seen. */
class Run {
  readonly seen: Seen[] = [];
  readonly runId: string;
  #sink: SinkCore;

  constructor(sink: SinkCore, runId: string) {
    this.#sink = sink;
    this.runId = runId;
    this.listen();
  }

  /** Subscribes to task.status on the current core (again after a restart of the core). */
  listen(): void {
    this.#sink.core.bus.subscribe('task.status', (data) => {
      const status = data as TaskStatus;
      if (status.runId !== this.runId) return;
      this.seen.push({ status, storedState: storedState(this.#sink.storeFile, status.runId, status.taskId), at: Date.now() });
    });
  }

  dispatch(taskId: string, targets: Target[], extra: Record<string, unknown> = {}): void {
    this.#sink.core.bus.publish('run.task.dispatched', {
      runId: this.runId, taskId, commandId: `${this.runId}:${taskId}:cmd`, targets, startAt: null, timeoutMs: 30_000,
      failure: { maxFailedHosts: { count: 0 } }, dispatchedAt: Date.now(), ...extra,
    });
  }

  event(taskId: string, host: Target, kind: string, extra: Record<string, unknown> = {}): void {
    this.#sink.core.bus.publish('sink.task.event', {
      hostId: host.id, id: `${this.runId}:${taskId}:${host.id}:${kind}`, runId: this.runId, taskId, host: host.name, kind, at: Date.now(),
      ...(kind === 'finished' && { exitCode: 0 }), ...extra,
    });
  }

  /** Every host starts, then reports `kinds[i]` (default finished). */
  report(taskId: string, targets: Target[], kinds: string[] = []): void {
    const t = Date.now();
    for (const [i, host] of targets.entries()) this.event(taskId, host, 'started', { startedAt: t + i });
    for (const [i, host] of targets.entries()) {
      const kind = kinds[i] ?? 'finished';
      this.event(taskId, host, kind, { durationMs: 10, ...(kind === 'failed' && { exitCode: 1 }) });
    }
  }

  statuses(taskId: string): TaskStatus[] {
    return this.seen.filter((s) => s.status.taskId === taskId).map((s) => s.status);
  }

  async status(taskId: string, timeoutMs = 5000): Promise<Seen> {
    return eventually(() => this.seen.find((s) => s.status.taskId === taskId), `task.status of ${taskId}`, timeoutMs);
  }

  /** A task dispatched and reported after everything published so far: once its status is seen, earlier messages were handled. */
  async barrier(name: string): Promise<void> {
    const [host] = hostsNamed(`barrier-${name}`);
    this.dispatch(name, [host!]);
    this.report(name, [host!]);
    await this.status(name);
  }
}

const counts = (total: number, c: Partial<TaskStatus['hosts']>): TaskStatus['hosts'] => ({ total, started: 0, finished: 0, failed: 0, timedout: 0, cancelled: 0, ...c });

describe('aggregator-results with writer-sqlite in a sink', function () {
  this.timeout(15_000);
  let sink: SinkCore;

  before(async () => {
    sink = await startSinkCore({ 'aggregator-results': { graceMs: GRACE_MS, tickMs: 20 }, 'writer-sqlite': { flushIntervalMs: 20 } });
  });

  after(async () => {
    await sink?.close();
  });

  it('reports succeeded when every host finished, after the status is in the SQLite file', async () => {
    const run = new Run(sink, 'run-ok');
    const targets = hostsNamed('a', 'b', 'c');
    run.dispatch('hammer', targets);
    run.report('hammer', targets);
    const seen = await run.status('hammer');
    expect(seen.status).to.deep.equal({ runId: 'run-ok', taskId: 'hammer', state: 'succeeded', hosts: counts(3, { started: 3, finished: 3 }) });
    expect(seen.storedState, 'committed before it was published').to.equal('succeeded');

    const view = await sink.core.bus.request<RunView>('sink.run', { runId: 'run-ok' });
    const task = view.tasks.find((t) => t.taskId === 'hammer')!;
    expect(task).to.deep.include({ state: 'succeeded', hosts: { total: 3, started: 3, ok: 3, failed: 0, timedout: 0, cancelled: 0, lost: 0 } });
    expect(task.startSkewMs).to.equal(2);
    expect(task.statusPublishedAt).to.be.a('number');
    expect(task.results.map((r) => [r.host, r.state, r.exitCode, r.durationMs])).to.deep.equal([
      ['a', 'finished', 0, 10],
      ['b', 'finished', 0, 10],
      ['c', 'finished', 0, 10],
    ]);
  });

  it('reports failed when one host failed and no failure is allowed', async () => {
    const run = new Run(sink, 'run-fail');
    const targets = hostsNamed('a', 'b', 'c');
    run.dispatch('hammer', targets);
    run.report('hammer', targets, ['finished', 'failed', 'finished']);
    const seen = await run.status('hammer');
    expect(seen.status).to.deep.include({ state: 'failed', hosts: counts(3, { started: 3, finished: 2, failed: 1 }) });
    expect(seen.storedState).to.equal('failed');
  });

  it('tolerates failed hosts within maxFailedHosts as a count and as a percent', async () => {
    const run = new Run(sink, 'run-tolerate');
    const four = hostsNamed('a', 'b', 'c', 'd');
    run.dispatch('count-ok', four, { failure: { maxFailedHosts: { count: 1 } } });
    run.report('count-ok', four, ['failed']);
    run.dispatch('count-over', four, { failure: { maxFailedHosts: { count: 1 } } });
    run.report('count-over', four, ['failed', 'failed']);
    run.dispatch('percent-ok', four, { failure: { maxFailedHosts: { percent: 50 } } });
    run.report('percent-ok', four, ['failed', 'failed']);
    run.dispatch('percent-over', four, { failure: { maxFailedHosts: { percent: 50 } } });
    run.report('percent-over', four, ['failed', 'failed', 'failed']);
    const state = async (taskId: string) => (await run.status(taskId)).status.state;
    expect(await state('count-ok')).to.equal('succeeded');
    expect(await state('count-over')).to.equal('failed');
    expect(await state('percent-ok')).to.equal('succeeded');
    expect(await state('percent-over')).to.equal('failed');
    expect((await run.status('percent-ok')).status.hosts).to.deep.equal(counts(4, { started: 4, finished: 2, failed: 2 }));
  });

  it('times out a silent host at startAt + timeout + grace', async () => {
    const run = new Run(sink, 'run-timeout');
    const targets = hostsNamed('a', 'b');
    const startAt = Date.now() + 300;
    const timeoutMs = 200;
    run.dispatch('hammer', targets, { startAt, timeoutMs });
    run.event('hammer', targets[0]!, 'started', { startedAt: startAt });
    run.event('hammer', targets[0]!, 'finished', { durationMs: 5 });
    const seen = await run.status('hammer');
    // The worker's clock (timeOrigin + now) may differ from Date.now() by a millisecond or two.
    expect(seen.at, 'not before the deadline').to.be.at.least(startAt + timeoutMs + GRACE_MS - 5);
    expect(seen.status).to.deep.include({ state: 'failed', hosts: counts(2, { started: 1, finished: 1, timedout: 1 }) });
    const view = await sink.core.bus.request<RunView>('sink.run', { runId: 'run-timeout' });
    expect(view.tasks[0]!.results.map((r) => [r.host, r.state])).to.deep.equal([['a', 'finished'], ['b', 'timedout']]);
  });

  it('counts a lost host against the allowance', async () => {
    const run = new Run(sink, 'run-lost');
    const targets = hostsNamed('a', 'b', 'c');
    run.dispatch('strict', targets);
    run.dispatch('lenient', targets, { failure: { maxFailedHosts: { count: 1 } } });
    for (const taskId of ['strict', 'lenient']) {
      run.event(taskId, targets[0]!, 'finished');
      run.event(taskId, targets[1]!, 'finished');
      run.event(taskId, targets[2]!, 'started');
    }
    await run.barrier('before-lost');
    expect(run.statuses('strict')).to.deep.equal([]);
    sink.core.bus.publish('host.state', { id: 'key-c', name: 'c', from: 'missing', to: 'lost', at: Date.now(), reason: 'no heartbeat' });
    const strict = await run.status('strict');
    expect(strict.status).to.deep.equal({ runId: 'run-lost', taskId: 'strict', state: 'failed', hosts: counts(3, { started: 3, finished: 2 }), lost: 1 });
    expect((await run.status('lenient')).status).to.deep.include({ state: 'succeeded', lost: 1 });
    const view = await sink.core.bus.request<RunView>('sink.run', { runId: 'run-lost' });
    expect(view.tasks.find((t) => t.taskId === 'strict')!.results.map((r) => r.state)).to.deep.equal(['finished', 'finished', 'lost']);
  });

  it('reports cancelled when every host was cancelled', async () => {
    const run = new Run(sink, 'run-cancel');
    const targets = hostsNamed('a', 'b');
    run.dispatch('hammer', targets);
    run.report('hammer', targets, ['cancelled', 'cancelled']);
    expect((await run.status('hammer')).status).to.deep.include({ state: 'cancelled', hosts: counts(2, { started: 2, cancelled: 2 }) });
  });

  it('counts the same event once and publishes one status per task', async () => {
    const run = new Run(sink, 'run-dup');
    const targets = hostsNamed('a', 'b', 'c');
    run.dispatch('hammer', targets, { failure: { maxFailedHosts: { count: 1 } } });
    run.event('hammer', targets[0]!, 'failed', { exitCode: 1 });
    run.event('hammer', targets[0]!, 'failed', { exitCode: 1 });
    run.event('hammer', targets[1]!, 'finished');
    run.event('hammer', targets[2]!, 'finished');
    expect((await run.status('hammer')).status).to.deep.include({ state: 'succeeded', hosts: counts(3, { started: 2, finished: 2, failed: 1 }) });
    // Resent after the decision, and the dispatch announced again: nothing more is published.
    run.event('hammer', targets[1]!, 'finished');
    run.dispatch('hammer', targets);
    await run.barrier('after-dup');
    expect(run.statuses('hammer')).to.have.length(1);
    expect(count(sink.storeFile, `SELECT count(*) FROM events WHERE message_id LIKE 'run-dup:hammer:%'`)).to.equal(3);
  });

  it('applies events that arrive before the dispatch is announced', async () => {
    const run = new Run(sink, 'run-early');
    const targets = hostsNamed('a', 'b');
    run.report('hammer', targets);
    await run.barrier('before-dispatch');
    expect(run.statuses('hammer')).to.deep.equal([]);
    run.dispatch('hammer', targets);
    expect((await run.status('hammer')).status).to.deep.include({ state: 'succeeded', hosts: counts(2, { started: 2, finished: 2 }) });
  });
});

describe('aggregator-results across restarts', function () {
  this.timeout(15_000);
  let sink: SinkCore;

  beforeEach(async () => {
    sink = await startSinkCore({ 'aggregator-results': { graceMs: GRACE_MS, tickMs: 20 }, 'writer-sqlite': { flushIntervalMs: 20 } });
  });

  afterEach(async () => {
    await sink?.close();
  });

  it('decides a task begun before a restart of the sink, counting resent events once and publishing once', async () => {
    const run = new Run(sink, 'run-restart');
    const targets = hostsNamed('a', 'b', 'c');
    run.dispatch('hammer', targets, { failure: { maxFailedHosts: { count: 1 } } });
    run.event('hammer', targets[0]!, 'failed', { exitCode: 3 });
    run.event('hammer', targets[1]!, 'finished');
    await run.barrier('before-restart');

    await sink.restart();
    run.listen();
    // The client resends what it has no acknowledgement for, then the last host reports.
    run.event('hammer', targets[0]!, 'failed', { exitCode: 3 });
    run.event('hammer', targets[1]!, 'finished');
    run.event('hammer', targets[2]!, 'finished');
    const seen = await run.status('hammer');
    expect(seen.status).to.deep.include({ state: 'succeeded', hosts: counts(3, { started: 2, finished: 2, failed: 1 }) });
    expect(seen.storedState).to.equal('succeeded');
    expect(count(sink.storeFile, `SELECT count(*) FROM events WHERE message_id LIKE 'run-restart:hammer:%'`)).to.equal(3);

    await sink.restart();
    run.listen();
    await run.barrier('after-second-restart');
    expect(run.statuses('hammer'), 'a published status is not published again').to.have.length(1);
  });

  it('publishes a status committed by an aggregator that stopped before publishing it, once', async () => {
    const run = new Run(sink, 'run-unpublished');
    const committed = await sink.core.bus.request<CommitTaskStatusResponse>('sink.store.commitTaskStatus', {
      runId: 'run-unpublished', taskId: 'hammer', state: 'failed', hosts: counts(2, { started: 2, finished: 1, failed: 1 }),
    });
    expect(committed).to.include({ outcome: 'committed', publishedAt: null });
    expect(run.statuses('hammer')).to.deep.equal([]);

    await sink.restartPlugin('aggregator-results');
    const seen = await run.status('hammer');
    expect(seen.status).to.deep.equal(committed.status);
    await eventually(() => (count(sink.storeFile, `SELECT count(*) FROM tasks WHERE task_id = 'hammer' AND status_published_at IS NOT NULL`) === 1 ? true : undefined), 'marked published');

    await sink.restartPlugin('aggregator-results');
    await run.barrier('after-restart');
    expect(run.statuses('hammer')).to.have.length(1);
  });

  it('times out, after a restart, a task whose hosts never reported', async () => {
    const run = new Run(sink, 'run-silent');
    const targets = hostsNamed('a');
    run.dispatch('hammer', targets, { timeoutMs: 300 });
    await sink.restartPlugin('aggregator-results');
    expect((await run.status('hammer')).status).to.deep.include({ state: 'failed', hosts: counts(1, { timedout: 1 }) });
  });
});
