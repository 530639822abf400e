/** SinkStore, schema version 2: dispatches, pending tasks, the full host breakdown of a status, publish marks. */
import { expect } from 'chai';
import Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { BoltError } from '../../../plugin-sdk/src/errors.ts';
import { MIGRATIONS, SCHEMA_VERSION, SinkStore } from '../store.ts';
import type { DispatchRecord, TaskEventRecord } from '../store.ts';

function event(id: string, taskId: string, host: string, kind: TaskEventRecord['kind'], at: number, extra: Partial<TaskEventRecord> = {}): TaskEventRecord {
  return { id, runId: 'run-1', taskId, host, kind, at, ...extra };
}

function dispatch(taskId: string, commandId: string, extra: Partial<DispatchRecord> = {}): DispatchRecord {
  return {
    runId: 'run-1',
    taskId,
    commandId,
    targets: [{ id: 'key-a', name: 'a' }, { id: 'key-b', name: 'b' }],
    startAt: 5_000,
    timeoutMs: 60_000,
    failure: { maxFailedHosts: { percent: 10 } },
    dispatchedAt: 4_000,
    ...extra,
  };
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof BoltError ? err.code : `not a BoltError: ${String(err)}`;
  }
  return undefined;
}

describe('writer-sqlite SinkStore: tasks as the aggregator sees them', () => {
  let dir: string;
  let file: string;
  let store: SinkStore;

  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'bolt-store-tasks-'));
    file = path.join(dir, 'sink.sqlite');
  });

  afterEach(() => {
    store?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('migrates a version 1 file, keeping its tasks and treating their statuses as published', () => {
    const v1 = new Database(file);
    v1.exec('CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)');
    v1.exec(MIGRATIONS[0]!.sql);
    v1.prepare('INSERT INTO schema_version VALUES (1, 1)').run();
    v1.exec(`INSERT INTO runs (id, run_id, state, created_at) VALUES (1, 'old', 'succeeded', 10)`);
    v1.exec(`INSERT INTO tasks (run, task_id, state, hosts_total, hosts_ok) VALUES (1, 'done', 'succeeded', 2, 2), (1, 'open', 'running', 0, 0)`);
    v1.close();

    store = new SinkStore(file);
    expect(store.schemaVersion).to.equal(SCHEMA_VERSION);
    const done = store.getTask('old', 'done')!;
    expect(done.hosts).to.deep.equal({ total: 2, started: 0, ok: 2, failed: 0, timedout: 0, cancelled: 0, lost: 0 });
    expect(done.statusPublishedAt).to.be.a('number');
    expect(store.getTask('old', 'open')!.statusPublishedAt).to.equal(null);
    expect(store.listUnpublishedTasks()).to.deep.equal([]);
  });

  it('records a dispatch once per command id and lists them in order', () => {
    store = new SinkStore(file);
    expect(store.recordDispatch(dispatch('hammer', 'c1'))).to.deep.equal({ duplicate: false });
    expect(store.recordDispatch(dispatch('hammer', 'c1', { timeoutMs: 1 }))).to.deep.equal({ duplicate: true });
    store.recordDispatch(dispatch('hammer', 'c2', { startAt: null }));
    expect(store.listDispatches('run-1', 'hammer')).to.deep.equal([dispatch('hammer', 'c1'), dispatch('hammer', 'c2', { startAt: null })]);
    expect(store.getTask('run-1', 'hammer')?.state).to.equal('running');
    expect(codeOf(() => store.recordDispatch({ ...dispatch('hammer', 'c3'), targets: [{ id: 'key-a' } as DispatchRecord['targets'][0]] }))).to.equal('BOLT_ERR_STORE_BAD_RECORD');
    expect(store.listDispatches('run-1', 'nothing')).to.deep.equal([]);
  });

  it('lists pending tasks with their dispatches and events, without output tails', () => {
    store = new SinkStore(file);
    store.recordDispatch(dispatch('hammer', 'c1'));
    store.recordEvents([
      event('e1', 'hammer', 'a', 'started', 5_001, { startedAt: 5_000.5, hostId: 'key-a' }),
      event('e2', 'hammer', 'a', 'finished', 6_000, { exitCode: 0, durationMs: 999, stdoutTail: 'lots of output', hostId: 'key-a' }),
      // Events of tasks not dispatched (yet): one recent, one old.
      event('e3', 'early', 'a', 'started', 9_000),
      event('e4', 'stale', 'a', 'started', 100),
      event('e5', 'decided', 'a', 'finished', 9_000),
    ]);
    store.recordDispatch(dispatch('decided', 'c9'));
    store.commitTaskStatus({ runId: 'run-1', taskId: 'decided', state: 'succeeded', hosts: { total: 1, ok: 1, failed: 0, lost: 0 } });

    const pending = store.listPendingTasks({ eventsSince: 1_000 });
    expect(pending.map((t) => t.taskId)).to.deep.equal(['hammer', 'early']);
    expect(pending[0]).to.deep.equal({
      runId: 'run-1',
      taskId: 'hammer',
      dispatches: [dispatch('hammer', 'c1')],
      events: [
        { id: 'e1', runId: 'run-1', taskId: 'hammer', host: 'a', kind: 'started', at: 5_001, startedAt: 5_000.5, hostId: 'key-a' },
        { id: 'e2', runId: 'run-1', taskId: 'hammer', host: 'a', kind: 'finished', at: 6_000, exitCode: 0, durationMs: 999, hostId: 'key-a' },
      ],
    });
    expect(pending[1]!.dispatches).to.deep.equal([]);
    expect(store.listPendingTasks().map((t) => t.taskId)).to.deep.equal(['hammer', 'early', 'stale']);
    expect(store.listPendingTasks({ limit: 1 }).map((t) => t.taskId)).to.deep.equal(['hammer']);
  });

  it('commits the full host breakdown and records hosts decided without an event', () => {
    store = new SinkStore(file);
    store.recordEvents([
      event('f1', 'hammer', 'a', 'finished', 10, { exitCode: 0, durationMs: 5, startedAt: 5 }),
      event('s2', 'hammer', 'b', 'started', 6),
      event('x4', 'hammer', 'd', 'cancelled', 12),
    ]);
    const status = {
      runId: 'run-1',
      taskId: 'hammer',
      state: 'failed' as const,
      hosts: { total: 4, started: 2, ok: 1, failed: 2, timedout: 1, cancelled: 1, lost: 1 },
      unreported: [{ host: 'b', state: 'timedout' as const }, { host: 'c', state: 'lost' as const }, { host: 'd', state: 'lost' as const }],
    };
    expect(store.commitTaskStatus(status)).to.deep.equal({ duplicate: false });
    expect(store.getTask('run-1', 'hammer')).to.deep.include({ state: 'failed', hosts: { total: 4, started: 2, ok: 1, failed: 2, timedout: 1, cancelled: 1, lost: 1 }, statusPublishedAt: null });
    expect(store.listHostResults('run-1', 'hammer').map((r) => [r.host, r.state])).to.deep.equal([
      ['a', 'finished'],
      ['b', 'timedout'],
      ['c', 'lost'],
      ['d', 'cancelled'],
    ]);
    expect(store.commitTaskStatus(status)).to.deep.equal({ duplicate: true });
    expect(codeOf(() => store.commitTaskStatus({ ...status, hosts: { ...status.hosts, timedout: 0 } }))).to.equal('BOLT_ERR_STORE_STATUS_CONFLICT');
    // A late final event of a host decided as timed out is still recorded as what it reported.
    store.recordEvent(event('f2', 'hammer', 'b', 'finished', 99, { exitCode: 0 }));
    expect(store.listHostResults('run-1', 'hammer').find((r) => r.host === 'b')?.state).to.equal('finished');
  });

  it('refuses counts whose breakdown does not fit', () => {
    store = new SinkStore(file);
    const base = { runId: 'run-1', taskId: 't', state: 'failed' as const };
    expect(codeOf(() => store.commitTaskStatus({ ...base, hosts: { total: 2, ok: 1, failed: 1, lost: 0, timedout: 1, cancelled: 1 } }))).to.equal('BOLT_ERR_STORE_BAD_RECORD');
    expect(codeOf(() => store.commitTaskStatus({ ...base, hosts: { total: 2, ok: 1, failed: 1, lost: 0, started: 3 } }))).to.equal('BOLT_ERR_STORE_BAD_RECORD');
    expect(codeOf(() => store.commitTaskStatus({ ...base, hosts: { total: 1, ok: 0, failed: 1, lost: 0 }, unreported: [{ host: 'a', state: 'gone' as 'lost' }] }))).to.equal('BOLT_ERR_STORE_BAD_RECORD');
    expect(store.getTask('run-1', 't')).to.equal(undefined);
  });

  it('lists committed statuses until they are marked published, keeping the first mark', () => {
    store = new SinkStore(file);
    const commit = (taskId: string) => store.commitTaskStatus({ runId: 'run-1', taskId, state: 'succeeded', hosts: { total: 1, ok: 1, failed: 0, lost: 0 } });
    commit('one');
    commit('two');
    store.recordDispatch(dispatch('running', 'c1'));
    expect(store.listUnpublishedTasks().map((t) => t.taskId)).to.deep.equal(['one', 'two']);
    expect(store.markStatusPublished('run-1', 'one', 111)).to.equal(true);
    expect(store.markStatusPublished('run-1', 'one', 222)).to.equal(true);
    expect(store.getTask('run-1', 'one')?.statusPublishedAt).to.equal(111);
    expect(store.markStatusPublished('run-1', 'running', 1)).to.equal(false);
    expect(store.markStatusPublished('run-1', 'unknown', 1)).to.equal(false);
    expect(store.listUnpublishedTasks().map((t) => t.taskId)).to.deep.equal(['two']);
  });

  it('lists the metrics of a run', () => {
    store = new SinkStore(file);
    store.ingestSamples('b1', 'a', [
      { t: 1, metric: 'mem.used', value: 1, runId: 'run-1' },
      { t: 1, metric: 'cpu.busy', value: 1, runId: 'run-1' },
      { t: 1, metric: 'disk.io', value: 1, runId: 'run-2' },
    ]);
    expect(store.listMetrics('run-1')).to.deep.equal(['cpu.busy', 'mem.used']);
    expect(store.listMetrics('nope')).to.deep.equal([]);
  });
});
