import { expect } from 'chai';
import Database from 'better-sqlite3';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BoltError } from '../../../plugin-sdk/src/errors.ts';
import type { ErrorCode } from '../../../plugin-sdk/src/errors.ts';
import { MIGRATIONS, SCHEMA_VERSION, SinkStore } from '../store.ts';
import type { SampleInput, TaskEventRecord } from '../store.ts';
import { parseCsv } from './csv.ts';

const REPO = fileURLToPath(new URL('../../..', import.meta.url));
const KILL_FIXTURE = fileURLToPath(new URL('./fixtures/commit-then-kill.ts', import.meta.url));

/** Every row of every Bolt table (not SQLite's own statistics), as sorted JSON lines: equal dumps mean nothing changed. */
function dump(file: string): string[] {
  const db = new Database(file, { readonly: true });
  try {
    const tables = db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`).pluck().all() as string[];
    return tables.flatMap((t) => (db.prepare(`SELECT * FROM "${t}"`).all() as object[]).map((row) => `${t} ${JSON.stringify(row)}`)).sort();
  } finally {
    db.close();
  }
}

/** Samples stored, summed over the blocks that hold them. */
function sampleCount(file: string): number {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare('SELECT coalesce(sum(count), 0) FROM sample_blocks').pluck().get() as number;
  } finally {
    db.close();
  }
}

function count(file: string, table: string): number {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare(`SELECT count(*) FROM "${table}"`).pluck().get() as number;
  } finally {
    db.close();
  }
}

function expectBoltError(fn: () => unknown, code: ErrorCode): BoltError {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(thrown, `expected ${code}`).to.be.instanceOf(BoltError);
  expect((thrown as BoltError).code).to.equal(code);
  return thrown as BoltError;
}

function event(id: string, host: string, kind: TaskEventRecord['kind'], at: number, extra: Partial<TaskEventRecord> = {}): TaskEventRecord {
  return { id, runId: 'run-1', taskId: 'hammer', host, kind, at, ...extra };
}

function samples(from: number, n: number, extra: Partial<SampleInput> = {}): SampleInput[] {
  return Array.from({ length: n }, (_, i) => ({ t: from + i * 1000, metric: 'cpu.busy', value: i, runId: 'run-1', taskId: 'hammer', ...extra }));
}

describe('writer-sqlite SinkStore', () => {
  let dir: string;
  let file: string;
  let store: SinkStore | undefined;

  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'bolt-writer-sqlite-'));
    file = path.join(dir, 'data', 'sink.sqlite');
  });

  afterEach(() => {
    store?.close();
    store = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  function open(): SinkStore {
    store = new SinkStore(file);
    return store;
  }

  function reopen(): SinkStore {
    store?.close();
    return open();
  }

  describe('opening and migrations', () => {
    it('creates the file and its directory in WAL mode at the current schema version', () => {
      const s = open();
      expect(s.schemaVersion).to.equal(SCHEMA_VERSION);
      const db = new Database(file, { readonly: true });
      try {
        expect(db.pragma('journal_mode', { simple: true })).to.equal('wal');
      } finally {
        db.close();
      }
    });

    it('runs each migration once: reopening leaves schema_version untouched', () => {
      open();
      const before = dump(file).filter((line) => line.startsWith('schema_version '));
      expect(before).to.have.length(SCHEMA_VERSION);
      reopen();
      reopen();
      expect(dump(file).filter((line) => line.startsWith('schema_version '))).to.deep.equal(before);
    });

    it('refuses a file written by a newer schema, naming both versions', () => {
      open().close();
      store = undefined;
      const db = new Database(file);
      db.prepare('INSERT INTO schema_version (version, applied_at) VALUES (?, ?)').run(SCHEMA_VERSION + 1, Date.now());
      db.close();
      const err = expectBoltError(() => open(), 'BOLT_ERR_STORE_SCHEMA_TOO_NEW');
      expect(err.message).to.contain(`schema version ${SCHEMA_VERSION + 1}`);
      store = undefined;
    });

    it('refuses a file that is not SQLite, and a SQLite file that is not a sink store', () => {
      writeFileSync(path.join(dir, 'junk.sqlite'), 'this is not a database, just some text long enough to look like a header'.repeat(20));
      expectBoltError(() => new SinkStore(path.join(dir, 'junk.sqlite')), 'BOLT_ERR_STORE_OPEN_FAILED');
      const other = new Database(path.join(dir, 'other.sqlite'));
      other.exec('CREATE TABLE notes (body TEXT)');
      other.close();
      const err = expectBoltError(() => new SinkStore(path.join(dir, 'other.sqlite')), 'BOLT_ERR_STORE_OPEN_FAILED');
      expect(err.message).to.contain('not a Bolt sink store');
      expect(dump(path.join(dir, 'other.sqlite'))).to.deep.equal([]);
    });

    it('migrates a version 3 file: its sample rows are packed into blocks and answered as before', () => {
      open().close();
      store = undefined;
      rmSync(path.dirname(file), { recursive: true });
      mkdirSync(path.dirname(file));
      const v3 = new Database(file);
      v3.exec('CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)');
      for (const m of MIGRATIONS.filter((m) => m.version <= 3)) {
        v3.exec(m.sql);
        v3.prepare('INSERT INTO schema_version VALUES (?, 1)').run(m.version);
      }
      v3.exec(`INSERT INTO runs (id, run_id, state, created_at) VALUES (1, 'old', 'succeeded', 10)`);
      v3.exec(`INSERT INTO hosts (id, name) VALUES (1, 'h1'), (2, 'h2')`);
      v3.exec(`INSERT INTO metrics (id, name) VALUES (1, 'cpu.busy'), (2, 'mem.used')`);
      v3.exec(`INSERT INTO tag_sets (id, tags) VALUES (1, '{}')`);
      v3.exec(`INSERT INTO samples (run, task, host, metric, tags, t, value) VALUES
        (1, NULL, 1, 1, 1, 2000, 2), (1, NULL, 1, 2, 1, 1000, 50), (1, NULL, 2, 1, 1, 1000, 9), (1, NULL, 1, 1, 1, 1000, 1)`);
      v3.close();

      const s = open();
      expect(s.schemaVersion).to.equal(SCHEMA_VERSION);
      const db = new Database(file, { readonly: true });
      try {
        expect(db.prepare(`SELECT name FROM sqlite_master WHERE name = 'samples'`).all(), 'the row table is gone').to.deep.equal([]);
        // Consecutive rows of one host and window share a block: h1, h2, h1.
        expect(db.prepare('SELECT host, t0, count FROM sample_blocks ORDER BY rowid').raw().all()).to.deep.equal([[1, 0, 2], [2, 0, 1], [1, 0, 1]]);
      } finally {
        db.close();
      }
      expect(s.listMetrics('old')).to.deep.equal(['cpu.busy', 'mem.used']);
      expect(s.querySamples({ runId: 'old', metric: 'cpu.busy' }).map((x) => [x.host, x.t, x.values])).to.deep.equal([['h1', [1000, 2000], [1, 2]], ['h2', [1000], [9]]]);
      expect(s.querySamples({ runId: 'old', metric: 'cpu.busy', host: 'h1' })).to.deep.equal([{ metric: 'cpu.busy', host: 'h1', task: null, tags: {}, t: [1000, 2000], values: [1, 2] }]);
      expect(s.listRunHosts('old')).to.deep.equal(['h1', 'h2']);
      expect(s.summarizeHost('old', 'h1').map((r) => [r.metric, r.count, r.from, r.to, r.max])).to.deep.equal([['cpu.busy', 2, 1000, 2000, 2], ['mem.used', 1, 1000, 1000, 50]]);
    });

    it('refuses every call after close() with a coded error', () => {
      const s = open();
      s.close();
      s.close();
      expectBoltError(() => s.getRun('run-1'), 'BOLT_ERR_STORE_CLOSED');
      expectBoltError(() => s.recordEvent(event('e1', 'h1', 'started', 1)), 'BOLT_ERR_STORE_CLOSED');
      store = undefined;
    });
  });

  describe('idempotency by message id', () => {
    it('stores an event once; the second delivery changes nothing and is reported as a duplicate', () => {
      const s = open();
      const e = event('e1', 'h1', 'finished', 2_000, { exitCode: 3, durationMs: 500, stdoutTail: 'out', stderrTail: 'err' });
      expect(s.recordEvent(e)).to.deep.equal({ duplicate: false });
      const before = dump(file);
      expect(s.recordEvent(e)).to.deep.equal({ duplicate: true });
      // Same id, different content: still the first delivery that counts.
      expect(s.recordEvent({ ...e, exitCode: 0, stdoutTail: 'other' })).to.deep.equal({ duplicate: true });
      expect(dump(file)).to.deep.equal(before);
      expect(s.listHostResults('run-1')).to.deep.equal([
        { runId: 'run-1', taskId: 'hammer', host: 'h1', state: 'finished', exitCode: 3, startedAt: null, durationMs: 500, stdoutTail: 'out', stderrTail: 'err' },
      ]);
    });

    it('stores a metrics batch once; the second delivery stores nothing', () => {
      const s = open();
      expect(s.ingestSamples('b1', 'h1', samples(0, 5))).to.deep.equal({ duplicate: false, stored: 5 });
      const before = dump(file);
      expect(s.ingestSamples('b1', 'h1', samples(0, 5))).to.deep.equal({ duplicate: true, stored: 0 });
      expect(dump(file)).to.deep.equal(before);
      expect(sampleCount(file)).to.equal(5);
    });

    it('drops the resent part of interleaved events and batches after a reconnect, keeps the new part', () => {
      const s = open();
      // Before the connection drops: two hosts start, some samples flow, one host finishes.
      s.recordEvents([event('e1', 'h1', 'started', 1_000), event('e2', 'h2', 'started', 1_001)]);
      s.ingestSamples('b1', 'h1', samples(1_000, 3));
      s.ingestSamples('b2', 'h2', samples(1_000, 3));
      s.recordEvent(event('e3', 'h1', 'finished', 5_000, { exitCode: 0, durationMs: 4_000 }));
      s.ingestSamples('b3', 'h1', samples(4_000, 2));
      const beforeReconnect = dump(file);

      // The client did not see the acks of e2, b2, e3, b3 and resends them, mixed with new messages.
      expect(s.recordEvent(event('e2', 'h2', 'started', 1_001))).to.deep.equal({ duplicate: true });
      expect(s.ingestSamples('b2', 'h2', samples(1_000, 3))).to.deep.equal({ duplicate: true, stored: 0 });
      expect(dump(file), 'resent messages change nothing').to.deep.equal(beforeReconnect);
      expect(s.ingestSamples('b4', 'h2', samples(4_000, 2))).to.deep.equal({ duplicate: false, stored: 2 });
      expect(s.recordEvents([event('e3', 'h1', 'finished', 5_000, { exitCode: 0, durationMs: 4_000 }), event('e4', 'h2', 'failed', 5_100, { exitCode: 1 })])).to.deep.equal({
        stored: 1,
        duplicates: ['e3'],
      });
      expect(s.ingestBatches([
        { batchId: 'b3', host: 'h1', samples: samples(4_000, 2) },
        { batchId: 'b5', host: 'h1', samples: samples(6_000, 1) },
      ])).to.deep.equal([
        { duplicate: true, stored: 0 },
        { duplicate: false, stored: 1 },
      ]);

      expect(count(file, 'events')).to.equal(4);
      expect(sampleCount(file)).to.equal(3 + 3 + 2 + 2 + 1);
      expect(count(file, 'ingested_batches')).to.equal(5);
      const series = s.querySamples({ runId: 'run-1', metric: 'cpu.busy' });
      expect(series.map((x) => [x.host, x.t])).to.deep.equal([
        ['h1', [1_000, 2_000, 3_000, 4_000, 5_000, 6_000]],
        ['h2', [1_000, 2_000, 3_000, 4_000, 5_000]],
      ]);
      expect(s.listHostResults('run-1').map((r) => [r.host, r.state, r.exitCode])).to.deep.equal([
        ['h1', 'finished', 0],
        ['h2', 'failed', 1],
      ]);
    });

    it('remembers message ids across a reopen', () => {
      open().recordEvent(event('e1', 'h1', 'started', 1));
      store!.ingestSamples('b1', 'h1', samples(0, 2));
      const s = reopen();
      expect(s.recordEvent(event('e1', 'h1', 'started', 1))).to.deep.equal({ duplicate: true });
      expect(s.ingestSamples('b1', 'h1', samples(0, 2))).to.deep.equal({ duplicate: true, stored: 0 });
    });
  });

  describe('bad input', () => {
    it('refuses an event missing a field with a coded error and stores nothing of the call', () => {
      const s = open();
      s.recordEvent(event('e0', 'h0', 'started', 1));
      const before = dump(file);
      const bad = { id: 'e3', runId: 'run-2', taskId: 'other', kind: 'started', at: 3 } as unknown as TaskEventRecord;
      const err = expectBoltError(
        () => s.recordEvents([{ ...event('e1', 'h1', 'started', 1), runId: 'run-2' }, event('e2', 'h2', 'finished', 2), bad]),
        'BOLT_ERR_STORE_BAD_RECORD',
      );
      expect(err.message).to.contain('"host"');
      expect(err.details).to.deep.equal({ record: 'task event', field: 'host' });
      expect(dump(file), 'the first two events, their run, task and hosts are rolled back').to.deep.equal(before);
      expectBoltError(() => s.recordEvent({ ...event('e5', 'h1', 'started', 1), kind: 'exploded' as 'started' }), 'BOLT_ERR_STORE_BAD_RECORD');
      expectBoltError(() => s.recordEvent({ ...event('e6', 'h1', 'started', 1), at: Number.NaN }), 'BOLT_ERR_STORE_BAD_RECORD');
      expect(dump(file)).to.deep.equal(before);
      // The refused ids were not recorded: sending them again, fixed, stores them.
      expect(s.recordEvent(event('e1', 'h1', 'started', 1))).to.deep.equal({ duplicate: false });
    });

    it('refuses a batch with one bad sample as a whole and accepts it once fixed', () => {
      const s = open();
      const batch: SampleInput[] = [...samples(0, 3), { t: 3_000, metric: 'brand.new.metric', value: 1, runId: 'run-9', tags: { core: '1' } }, { t: 4_000, metric: 'cpu.busy', value: Infinity }];
      const before = dump(file);
      const err = expectBoltError(() => s.ingestSamples('b1', 'h1', batch), 'BOLT_ERR_STORE_BAD_RECORD');
      expect(err.message).to.contain('samples[4].value');
      expect(dump(file)).to.deep.equal(before);
      expectBoltError(() => s.ingestSamples('b1', 'h1', [{ t: 1, metric: 'x', value: 1, taskId: 'hammer' }]), 'BOLT_ERR_STORE_BAD_RECORD');
      expectBoltError(() => s.ingestSamples('b1', 'h1', [{ t: 1, metric: 'x', value: 1, tags: { core: 1 as unknown as string } }]), 'BOLT_ERR_STORE_BAD_RECORD');
      expect(dump(file)).to.deep.equal(before);
      // The failed call created a run, task, host, metric and tag set that were rolled back. Another
      // batch now takes their row ids; the fixed batch must not reuse ids it saw before the rollback.
      expect(s.ingestSamples('b0', 'h7', [{ t: 1, metric: 'other.metric', value: 7, runId: 'run-8', taskId: 'other', tags: { disk: 'vda' } }]).stored).to.equal(1);
      batch[4] = { t: 4_000, metric: 'cpu.busy', value: 4 };
      expect(s.ingestSamples('b1', 'h1', batch)).to.deep.equal({ duplicate: false, stored: 5 });
      expect(s.querySamples({ runId: 'run-9', metric: 'brand.new.metric' })).to.deep.equal([{ metric: 'brand.new.metric', host: 'h1', task: null, tags: { core: '1' }, t: [3_000], values: [1] }]);
      expect(s.querySamples({ runId: 'run-1', metric: 'cpu.busy', taskId: 'hammer' }).map((x) => [x.host, x.values])).to.deep.equal([['h1', [0, 1, 2]]]);
      expect(s.querySamples({ runId: 'run-8', metric: 'other.metric' })).to.deep.equal([{ metric: 'other.metric', host: 'h7', task: 'other', tags: { disk: 'vda' }, t: [1], values: [7] }]);
    });

    it('refuses a task status whose host counts do not add up', () => {
      const s = open();
      const err = expectBoltError(
        () => s.commitTaskStatus({ runId: 'run-1', taskId: 'hammer', state: 'succeeded', hosts: { total: 3, ok: 1, failed: 0, lost: 0 } }),
        'BOLT_ERR_STORE_BAD_RECORD',
      );
      expect(err.message).to.contain('ok + failed + lost = total');
      expect(s.getTask('run-1', 'hammer')).to.equal(undefined);
    });
  });

  describe('task status', () => {
    it('derives start, finish and start skew from the host results, and commits once', () => {
      const s = open();
      s.recordEvents([
        event('s1', 'h1', 'started', 100.2, { startedAt: 100.0 }),
        event('s2', 'h2', 'started', 100.9, { startedAt: 100.4 }),
        event('s3', 'h3', 'started', 102.0, { startedAt: 101.5 }),
        event('f1', 'h1', 'finished', 200, { exitCode: 0, durationMs: 90 }),
        event('f2', 'h2', 'failed', 300, { exitCode: 2, durationMs: 150 }),
      ]);
      const status = { runId: 'run-1', taskId: 'hammer', state: 'failed' as const, hosts: { total: 3, ok: 1, failed: 1, lost: 1 } };
      expect(s.commitTaskStatus(status)).to.deep.equal({ duplicate: false });
      const task = s.getTask('run-1', 'hammer')!;
      expect(task).to.deep.include({ state: 'failed', hosts: { total: 3, started: 0, ok: 1, failed: 1, timedout: 0, cancelled: 0, lost: 1 }, startedAt: 100.0, finishedAt: 250.4 });
      expect(task.startSkewMs).to.be.closeTo(1.5, 1e-9);

      expect(s.commitTaskStatus(status)).to.deep.equal({ duplicate: true });
      const before = dump(file);
      const err = expectBoltError(() => s.commitTaskStatus({ ...status, state: 'succeeded', hosts: { total: 3, ok: 3, failed: 0, lost: 0 } }), 'BOLT_ERR_STORE_STATUS_CONFLICT');
      expect(err.message).to.contain('already committed as failed');
      expect(dump(file)).to.deep.equal(before);
    });

    it('keeps a host final when its started event arrives late', () => {
      const s = open();
      s.recordEvent(event('f1', 'h1', 'finished', 200, { exitCode: 0, durationMs: 90, startedAt: 110 }));
      s.recordEvent(event('s1', 'h1', 'started', 111, { startedAt: 110 }));
      expect(s.listHostResults('run-1', 'hammer')).to.deep.equal([
        { runId: 'run-1', taskId: 'hammer', host: 'h1', state: 'finished', exitCode: 0, startedAt: 110, durationMs: 90, stdoutTail: null, stderrTail: null },
      ]);
    });

    it('survives a process killed right after commitTaskStatus returns', async function () {
      this.timeout(30_000);
      const child = spawn(process.execPath, ['--import', 'tsx', KILL_FIXTURE, file], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const signal = await new Promise<NodeJS.Signals | null>((resolve, reject) => {
        child.on('error', reject);
        child.on('close', (_code, sig) => resolve(sig));
      });
      expect(stderr).to.equal('');
      expect(stdout).to.equal('committed\n');
      expect(signal).to.equal('SIGKILL');
      // Nothing checkpointed or closed the file: the committed transactions live only in the WAL.
      expect(statSync(`${file}-wal`).size).to.be.greaterThan(0);

      const s = open();
      expect(s.getTask('run-crash', 'hammer')).to.deep.include({ state: 'succeeded', hosts: { total: 2, started: 0, ok: 2, failed: 0, timedout: 0, cancelled: 0, lost: 0 }, startedAt: 2_000, startSkewMs: 1 });
      expect(s.listHostResults('run-crash').map((r) => [r.host, r.state])).to.deep.equal([
        ['h1', 'finished'],
        ['h2', 'finished'],
      ]);
      expect(s.querySamples({ runId: 'run-crash', metric: 'cpu.busy' })).to.deep.equal([{ metric: 'cpu.busy', host: 'h1', task: 'hammer', tags: {}, t: [2_500], values: [42] }]);
    });
  });

  describe('runs and reopening', () => {
    it('lists runs newest first, filtered by state and job, limited', () => {
      const s = open();
      s.upsertRun({ id: 'a', jobName: 'nightly', state: 'succeeded', createdAt: 1 });
      s.upsertRun({ id: 'b', jobName: 'nightly', state: 'running', createdAt: 2 });
      s.upsertRun({ id: 'c', jobName: 'smoke', state: 'running', createdAt: 3 });
      expect(s.listRuns().map((r) => r.id)).to.deep.equal(['c', 'b', 'a']);
      expect(s.listRuns({ state: 'running' }).map((r) => r.id)).to.deep.equal(['c', 'b']);
      expect(s.listRuns({ job: 'nightly' }).map((r) => r.id)).to.deep.equal(['b', 'a']);
      expect(s.listRuns({ job: 'nightly', state: 'running' }).map((r) => r.id)).to.deep.equal(['b']);
      expect(s.listRuns({ limit: 1 }).map((r) => r.id)).to.deep.equal(['c']);
    });

    it('updates a run in place, keeping fields the update leaves out', () => {
      const s = open();
      s.recordEvent(event('e1', 'h1', 'started', 1));
      expect(s.getRun('run-1')).to.deep.include({ state: 'unknown', jobName: null, job: undefined });
      s.upsertRun({ id: 'run-1', jobName: 'nightly', job: { name: 'nightly', tasks: [{ id: 'hammer' }] }, state: 'running', createdAt: 10, startedAt: 11 });
      s.upsertRun({ id: 'run-1', jobName: 'nightly', state: 'succeeded', createdAt: 10, finishedAt: 99 });
      expect(s.getRun('run-1')).to.deep.equal({
        id: 'run-1',
        jobName: 'nightly',
        job: { name: 'nightly', tasks: [{ id: 'hammer' }] },
        state: 'succeeded',
        createdAt: 10,
        startedAt: 11,
        finishedAt: 99,
      });
      expect(s.listTasks('run-1').map((t) => [t.taskId, t.state])).to.deep.equal([['hammer', 'running']]);
      expect(s.getRun('nope')).to.equal(undefined);
    });

    it('finds everything again after a reopen, and keeps adding to the same dimensions', () => {
      const s = open();
      s.upsertRun({ id: 'run-1', jobName: 'nightly', job: { x: 1 }, state: 'running', createdAt: 5 });
      s.upsertHost('h1', 'SHA256:abc');
      s.recordEvents([event('e1', 'h1', 'started', 10, { startedAt: 10 }), event('e2', 'h1', 'finished', 20, { exitCode: 0, durationMs: 10, stdoutTail: 'done' })]);
      s.ingestSamples('b1', 'h1', samples(10, 3, { tags: { core: '0' } }));
      s.commitTaskStatus({ runId: 'run-1', taskId: 'hammer', state: 'succeeded', hosts: { total: 1, ok: 1, failed: 0, lost: 0 } });
      const snapshot = (x: SinkStore) => ({
        run: x.getRun('run-1'),
        runs: x.listRuns(),
        task: x.getTask('run-1', 'hammer'),
        results: x.listHostResults('run-1'),
        series: x.querySamples({ runId: 'run-1', metric: 'cpu.busy' }),
      });
      const before = snapshot(s);
      const dumped = dump(file);
      const r = reopen();
      expect(snapshot(r)).to.deep.equal(before);
      expect(dump(file)).to.deep.equal(dumped);
      expect(dumped.some((line) => line.includes('"key_fingerprint":"SHA256:abc"'))).to.equal(true);

      r.ingestSamples('b2', 'h1', samples(3_010, 1, { tags: { core: '0' } }));
      expect(count(file, 'metrics')).to.equal(1);
      expect(count(file, 'tag_sets')).to.equal(1);
      expect(count(file, 'hosts')).to.equal(1);
      expect(r.querySamples({ runId: 'run-1', metric: 'cpu.busy' })).to.deep.equal([{ metric: 'cpu.busy', host: 'h1', task: 'hammer', tags: { core: '0' }, t: [10, 1_010, 2_010, 3_010], values: [0, 1, 2, 0] }]);
    });
  });

  describe('samples', () => {
    function seed(s: SinkStore): void {
      s.ingestSamples('a1', 'h1', [
        { t: 1_000, metric: 'cpu.busy', value: 10, runId: 'run-1', taskId: 'install' },
        { t: 2_000, metric: 'cpu.busy', value: 11, runId: 'run-1', taskId: 'hammer' },
        { t: 2_000, metric: 'cpu.busy', value: 12, runId: 'run-1', taskId: 'hammer', tags: { core: '0', node: 'a' } },
        { t: 3_000, metric: 'mem.used', value: 500, runId: 'run-1', taskId: 'hammer' },
        { t: 9_000, metric: 'cpu.busy', value: 99, runId: 'run-2' },
        { t: 9_000, metric: 'cpu.busy', value: 1 },
      ]);
      s.ingestSamples('b1', 'h2', [
        { t: 2_500, metric: 'cpu.busy', value: 21, runId: 'run-1', taskId: 'hammer', tags: { node: 'a', core: '0' } },
        { t: 1_500, metric: 'cpu.busy', value: 20, runId: 'run-1', taskId: 'install' },
      ]);
    }

    it('returns one series per host, task and tag set, points in time order', () => {
      const s = open();
      seed(s);
      expect(s.querySamples({ runId: 'run-1', metric: 'cpu.busy' })).to.deep.equal([
        { metric: 'cpu.busy', host: 'h1', task: 'hammer', tags: { core: '0', node: 'a' }, t: [2_000], values: [12] },
        { metric: 'cpu.busy', host: 'h1', task: 'hammer', tags: {}, t: [2_000], values: [11] },
        { metric: 'cpu.busy', host: 'h1', task: 'install', tags: {}, t: [1_000], values: [10] },
        { metric: 'cpu.busy', host: 'h2', task: 'hammer', tags: { core: '0', node: 'a' }, t: [2_500], values: [21] },
        { metric: 'cpu.busy', host: 'h2', task: 'install', tags: {}, t: [1_500], values: [20] },
      ]);
      // Without a metric: every metric of the run, in one pass, ordered by metric first.
      expect(s.querySamples({ runId: 'run-1', host: 'h1', taskId: 'hammer' }).map((x) => `${x.metric} ${x.values}`)).to.deep.equal(['cpu.busy 12', 'cpu.busy 11', 'mem.used 500']);
      expect(s.querySamples({ runId: 'run-2', metric: 'cpu.busy' })).to.deep.equal([{ metric: 'cpu.busy', host: 'h1', task: null, tags: {}, t: [9_000], values: [99] }]);
    });

    it('filters by host, task and time (inclusive bounds)', () => {
      const s = open();
      seed(s);
      const points = (q: Parameters<SinkStore['querySamples']>[0]) => s.querySamples(q).map((x) => `${x.host}:${x.values.join('/')}`);
      expect(points({ runId: 'run-1', metric: 'cpu.busy', host: 'h2' })).to.deep.equal(['h2:21', 'h2:20']);
      expect(points({ runId: 'run-1', metric: 'cpu.busy', taskId: 'install' })).to.deep.equal(['h1:10', 'h2:20']);
      expect(points({ runId: 'run-1', metric: 'cpu.busy', host: 'h1', taskId: 'hammer' })).to.deep.equal(['h1:12', 'h1:11']);
      expect(points({ runId: 'run-1', metric: 'cpu.busy', from: 1_500, to: 2_000 })).to.deep.equal(['h1:12', 'h1:11', 'h2:20']);
      expect(points({ runId: 'run-1', metric: 'cpu.busy', host: 'h1', from: 2_000, to: 2_000 })).to.deep.equal(['h1:12', 'h1:11']);
      expect(points({ runId: 'run-2', metric: 'cpu.busy' })).to.deep.equal(['h1:99']);
      expect(points({ runId: 'run-1', metric: 'mem.used' })).to.deep.equal(['h1:500']);
      expect(points({ runId: 'run-1', metric: 'no.such.metric' })).to.deep.equal([]);
      expect(points({ runId: 'run-1', metric: 'cpu.busy', host: 'nobody' })).to.deep.equal([]);
      expect(points({ runId: 'run-1', metric: 'cpu.busy', taskId: 'nothing' })).to.deep.equal([]);
      expect(points({ runId: 'no-run', metric: 'cpu.busy' })).to.deep.equal([]);
    });

    it('keeps a batch as one block per run and 5 s window at 24 bytes a sample, and answers in time order', () => {
      const s = open();
      // 1,000 samples from 12,490 down to 2,500 ms (windows 10,000, 5,000 and 0), newest first.
      s.ingestSamples('b1', 'h1', Array.from({ length: 1000 }, (_, i) => ({ t: 12_490 - i * 10, metric: 'm', value: i })), 'run-1');
      s.ingestSamples('b2', 'h1', [{ t: 12_490, metric: 'm', value: -1 }], 'run-1');
      const db = new Database(file, { readonly: true });
      try {
        expect(db.prepare('SELECT t0, count, length(data) FROM sample_blocks ORDER BY rowid').raw().all()).to.deep.equal([
          [10_000, 250, 6_000],
          [5_000, 500, 12_000],
          [0, 250, 6_000],
          [10_000, 1, 24],
        ]);
      } finally {
        db.close();
      }
      const [series] = s.querySamples({ runId: 'run-1', metric: 'm', host: 'h1' });
      expect(series!.t).to.have.length(1001);
      expect(series!.t.every((t, i) => i === 0 || series!.t[i - 1]! <= t), 'time order').to.equal(true);
      expect(series!.t.slice(-2)).to.deep.equal([12_490, 12_490]);
      expect(series!.values.slice(-2), 'equal times in arrival order').to.deep.equal([0, -1]);
      expect(s.querySamples({ runId: 'run-1', metric: 'm', from: 4_990, to: 5_010 })[0]!.values).to.deep.equal([750, 749, 748]);
      // Reading is bounded by the samples stored in the blocks, whatever the query matches.
      expect(s.querySamples({ runId: 'run-1', metric: 'm', maxScanned: 1_001 })[0]!.t).to.have.length(1001);
      const tooMuch = expectBoltError(() => s.querySamples({ runId: 'run-1', metric: 'm', maxScanned: 1_000 }), 'BOLT_ERR_METRICS_BAD_QUERY');
      expect(tooMuch.message).to.contain('more than 1000 stored samples');
      const err = expectBoltError(() => s.ingestSamples('b3', 'h1', [{ t: 1e300, metric: 'm', value: 1 }], 'run-1'), 'BOLT_ERR_STORE_BAD_RECORD');
      expect(err.message).to.contain('samples[0].t');
    });

    it('resolves a series once whatever the order of its tags, and keeps tag sets apart that differ only in where a key ends', () => {
      const s = open();
      const batch = (id: string, host: string, tagsOf: (i: number) => Record<string, string> | undefined) =>
        s.ingestBatches([{ batchId: id, host, runId: 'run-1', samples: Array.from({ length: 4 }, (_, i) => ({ t: 1_000 + i, metric: 'disk.busy', value: i, ...(tagsOf(i) !== undefined && { tags: tagsOf(i) }) })) }]);
      batch('b1', 'h1', (i) => (i % 2 === 0 ? { task: 'load', dev: 'vda', ab: 'c' } : { ab: 'c', dev: 'vda', task: 'load' }));
      batch('b2', 'h1', (i) => (i % 2 === 0 ? { task: 'load', dev: 'vda', a: 'bc' } : { dev: 'vda', a: 'bc', task: 'load' }));
      batch('b3', 'h2', (i) => (i % 2 === 0 ? undefined : {}));
      expect(s.querySamples({ runId: 'run-1', metric: 'disk.busy' }).map((x) => [x.host, x.task, x.tags, x.values])).to.deep.equal([
        ['h1', 'load', { a: 'bc', dev: 'vda' }, [0, 1, 2, 3]],
        ['h1', 'load', { ab: 'c', dev: 'vda' }, [0, 1, 2, 3]],
        ['h2', null, {}, [0, 1, 2, 3]],
      ]);
      expect(s.queryBuckets({ runId: 'run-1', metric: 'disk.busy', taskId: 'load' }).map((b) => [b.tags, b.count])).to.deep.equal([
        [{ a: 'bc', dev: 'vda' }, [4]],
        [{ ab: 'c', dev: 'vda' }, [4]],
      ]);
      // Outside a run the task tag is a tag like any other; a bad tag value is refused by its position.
      s.ingestBatches([{ batchId: 'b4', host: 'h1', samples: [{ t: 1, metric: 'disk.busy', value: 1, tags: { task: 'load', dev: 'vda' } }] }]);
      const err = expectBoltError(() => s.ingestBatches([{ batchId: 'b5', host: 'h1', runId: 'run-1', samples: [{ t: 1, metric: 'disk.busy', value: 1, tags: { task: 'load', dev: 'vda' } }, { t: 2, metric: 'disk.busy', value: 2, tags: { dev: 7 as unknown as string, task: 'load' } }] }]), 'BOLT_ERR_STORE_BAD_RECORD');
      expect(err.message).to.contain('samples[1].tags.dev');
      expect(sampleCount(file)).to.equal(13);
    });

    it('exports every row of a run as CSV in chunks, ordered by time and arrival', () => {
      const s = open();
      // 2,400 rows in batches that arrive out of time order, plus values needing CSV quoting.
      const hosts = ['h1', 'h,2', 'h"3'];
      for (let batch = 0; batch < 8; batch++) {
        const second = (batch * 5) % 8;
        for (const host of hosts) {
          s.ingestSamples(`b${batch}-${host}`, host, [
            ...Array.from({ length: 50 }, (_, i) => ({ t: second * 1000 + i, metric: 'z.last', value: i, runId: 'run-1' })),
            ...Array.from({ length: 50 }, (_, i) => ({ t: second * 1000 + i, metric: 'a.first', value: i + 0.5, runId: 'run-1', taskId: 'hammer', tags: { note: 'x,"y"' } })),
          ]);
        }
      }
      s.ingestSamples('other-run', 'h1', [{ t: 1, metric: 'a.first', value: 1, runId: 'run-2' }]);

      const chunks: string[] = [];
      const rowsWritten = s.exportSamplesCsv('run-1', (chunk) => chunks.push(chunk));
      expect(rowsWritten).to.equal(2_400);
      expect(chunks.length, 'header plus 1,000-row chunks').to.equal(1 + 3);
      const rows = parseCsv(chunks.join(''));
      expect(rows[0]).to.deep.equal(['metric', 't', 'host', 'task', 'tags', 'value']);
      const body = rows.slice(1);
      expect(body).to.have.length(2_400);
      expect(body[0]).to.deep.equal(['z.last', '0', 'h1', '', '{}', '0']);
      expect(body.at(-1)).to.deep.equal(['a.first', '7049', 'h"3', 'hammer', '{"note":"x,\\"y\\""}', '49.5']);
      const times = body.map((r) => Number(r[1]));
      for (let i = 1; i < times.length; i++) expect(times[i - 1]! <= times[i]!, `row ${i + 1} is in time order`).to.equal(true);
      // Equal times keep the order of arrival (the hosts' batches came h1, h,2, h"3; z.last before a.first).
      expect(body.slice(0, 6).map((r) => `${r[2]} ${r[0]}`)).to.deep.equal(hosts.flatMap((h) => [`${h} z.last`, `${h} a.first`]));
      expect(new Set(body.map((r) => `${r[0]} ${r[1]} ${r[2]}`)).size).to.equal(2_400);

      const empty: string[] = [];
      expect(s.exportSamplesCsv('no-run', (chunk) => empty.push(chunk))).to.equal(0);
      expect(empty).to.deep.equal(['metric,t,host,task,tags,value\n']);
    });
  });
});
