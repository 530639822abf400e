/**
 * SinkStore: the sink's storage on one SQLite file (better-sqlite3 12), as a plain library.
 *
 * Guarantees:
 * - Every write is one transaction: a call either stores all of its input or nothing.
 * - Writes are idempotent by message id: an event or a metrics batch delivered again (a client
 *   resending after a reconnect) changes nothing and is reported as a duplicate.
 * - commitTaskStatus returns only after the status reached the disk (fsync, synchronous=FULL);
 *   bulk ingest runs with synchronous=NORMAL (see `commitTaskStatus` for the trade-off).
 * - Bad input raises BOLT_ERR_STORE_BAD_RECORD; SQLite failures raise BOLT_ERR_STORE_WRITE_FAILED
 *   with SQLite's error as `cause`.
 *
 * One SinkStore per file and process is the intended use; it is synchronous, so call it from the
 * sink's writer worker, not from a latency-sensitive thread.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { BoltError } from '../../plugin-sdk/src/errors.ts';
import type { TaskEventKind, TaskEventMessage, TaskStatusMessage } from '../../plugin-sdk/src/schemas/wire.ts';
import { BlockBuilder, blockStart, decodeBlock, type SampleBlock } from './blocks.ts';
import { ValueDigest } from './digest.ts';

/** File name of the store inside the sink's data directory. */
export const DEFAULT_STORE_FILENAME = 'sink.sqlite';

/** The schema version this code writes; older files are migrated forward on open. */
export const SCHEMA_VERSION = 5;

export interface SinkStoreOptions {
  /** How long a write waits for another connection's lock before failing, in ms. Default 5000. */
  busyTimeoutMs?: number;
  /** SQLite page cache of this connection, in MiB. Default 32. */
  cacheSizeMb?: number;
  /**
   * Width of the aggregate buckets of runs that get their first sample from now on, in ms.
   * Default 1000. A run keeps the width it started with.
   */
  bucketMs?: number;
}

/**
 * A task.event as the store takes it: the wire message, envelope `v`/`type` optional, with the
 * sending host's key fingerprint (`hostId`) when the transport knows it.
 */
export type TaskEventRecord = Omit<TaskEventMessage, 'v' | 'type'> & { hostId?: string };

/** Final states of a task, as sent to the server in task.status. */
export type FinalTaskState = TaskStatusMessage['state'];

/** State of a task in the store: running until its final status is committed. */
export type TaskState = 'running' | FinalTaskState;

/**
 * State of one host in one task: running after `started`, then the kind of its final event, or
 * `timedout` / `lost` when the aggregator decided the task without a final event from that host.
 */
export type HostState = 'running' | Exclude<TaskEventKind, 'started'> | 'lost';

/**
 * Host counts of a task: ok + failed + lost = total (lost: never reported a final event).
 * `failed` counts every host that ended without success, including the `timedout` and
 * `cancelled` ones, which are broken out (timedout + cancelled <= failed). `started`: hosts that
 * reported starting the action. The three optional counts default to 0.
 */
export interface HostCounts {
  total: number;
  ok: number;
  failed: number;
  lost: number;
  started?: number;
  timedout?: number;
  cancelled?: number;
}

/** A host the aggregator decided without a final event from it (timed out, or its host was lost). */
export interface UnreportedHost {
  host: string;
  state: 'timedout' | 'lost';
}

/** The final status of a task as decided by the aggregator. */
export interface TaskStatusRecord {
  runId: string;
  taskId: string;
  state: FinalTaskState;
  hosts: HostCounts;
  /** Default: the earliest start instant among the task's host results. */
  startedAt?: number;
  /** Default: the latest start + duration among the task's host results. */
  finishedAt?: number;
  /** Default: latest minus earliest start instant among the task's host results. */
  startSkewMs?: number;
  /**
   * Hosts that sent no final event, recorded as their host result (a host that has a final
   * result already keeps it; one whose final event arrives later gets that event's state).
   */
  unreported?: UnreportedHost[];
}

/** One dispatch of a task to its targets, as the scheduler announced it (`run.task.dispatched`). */
export interface DispatchRecord {
  runId: string;
  taskId: string;
  /** Unique per dispatch; a dispatch recorded again is a duplicate. */
  commandId: string;
  /** Host id (key fingerprint) and name of every target. */
  targets: Array<{ id: string; name: string }>;
  /** The synchronized start instant (server clock), or null for "as soon as possible". */
  startAt: number | null;
  timeoutMs: number;
  /** The task's failure policy, stored as given (JSON). */
  failure: unknown;
  dispatchedAt: number;
}

/** A task whose final status is not committed yet, with everything needed to decide it again. */
export interface PendingTask {
  runId: string;
  taskId: string;
  /** Its dispatches in the order they were recorded (none: only events were seen). */
  dispatches: DispatchRecord[];
  /** Its stored events in arrival order, without output tails. */
  events: TaskEventRecord[];
}

/** A run as the server describes it. Times are epoch ms. */
export interface RunRecord {
  id: string;
  jobName: string | null;
  /** The job as parsed; stored as JSON. Omitted: the stored job is kept. */
  job?: unknown;
  state: string;
  createdAt: number;
  /** Omitted or null: the stored value is kept. */
  startedAt?: number | null;
  finishedAt?: number | null;
}

/** A run as listRuns returns it (without the job). */
export interface RunSummary {
  id: string;
  jobName: string | null;
  state: string;
  createdAt: number;
  startedAt: number | null;
  finishedAt: number | null;
}

/** A run as getRun returns it. `job` is undefined when none was stored. */
export interface StoredRun extends RunSummary {
  job: unknown;
}

export interface StoredTask {
  runId: string;
  taskId: string;
  state: TaskState;
  hosts: Required<HostCounts>;
  startedAt: number | null;
  finishedAt: number | null;
  startSkewMs: number | null;
  /** When the final status was reported as published (markStatusPublished), else null. */
  statusPublishedAt: number | null;
}

export interface HostResult {
  runId: string;
  taskId: string;
  host: string;
  state: HostState;
  exitCode: number | null;
  /** The instant the action started on this host, on the server's clock (ms, fractional). */
  startedAt: number | null;
  durationMs: number | null;
  stdoutTail: string | null;
  stderrTail: string | null;
}

/**
 * One sample to ingest. `t` is epoch ms on the server's clock, stored rounded to whole ms.
 * In a run, a `task` tag names the sample's task (as collectors send it): it is stored as the
 * task, not as a tag. `taskId`, when given, wins over the tag.
 */
export interface SampleInput {
  t: number;
  metric: string;
  value: number;
  tags?: Record<string, string>;
  /** The task the sample belongs to; needs runId. */
  taskId?: string;
  /** Omitted: the batch's runId; without either, a host metric outside any run, stored with no run. */
  runId?: string;
}

/** One metrics batch for ingestBatches. */
export interface SampleBatch {
  batchId: string;
  host: string;
  /** The run of every sample that names none itself. */
  runId?: string;
  samples: SampleInput[];
}

export interface IngestResult {
  duplicate: boolean;
  stored: number;
}

export interface SampleQuery {
  runId: string;
  /** Omitted: every metric (one pass over the blocks instead of one per metric). */
  metric?: string;
  host?: string;
  taskId?: string;
  /** Inclusive bounds on t, epoch ms. */
  from?: number;
  to?: number;
  /** More matching samples than this: BOLT_ERR_METRICS_BAD_QUERY (after reading limit + 1 rows, no more). */
  limit?: number;
  /**
   * More samples read than this, matching or not: BOLT_ERR_METRICS_BAD_QUERY, before reading the
   * block that would pass it. Blocks hold every metric of their host, so a query for one metric
   * across all hosts reads the others too; this bounds the time such a query can take.
   */
  maxScanned?: number;
}

/** One series: the points of one metric from one host in one task with one tag set, in time order. */
export interface Series {
  metric: string;
  host: string;
  /** The task of the samples; null for samples of the run outside any task. */
  task: string | null;
  tags: Record<string, string>;
  t: number[];
  values: number[];
}

export interface BucketQuery {
  runId: string;
  metric: string;
  /** Only this task's buckets; null: only samples outside any task; omitted: every task. */
  taskId?: string | null;
  /** Inclusive bounds on the bucket start, epoch ms. */
  from?: number;
  to?: number;
}

/**
 * Aggregates across hosts of one metric in one task with one tag set: one entry per time bucket
 * (`t` is the bucket start; a bucket holds samples with bucketStart <= t < bucketStart + bucketMs).
 * p50 and p95 are nearest-rank quantiles (exact up to 256 samples per bucket, else within 1%:
 * see digest.ts).
 */
export interface BucketSeries {
  task: string | null;
  tags: Record<string, string>;
  bucketMs: number;
  t: number[];
  count: number[];
  sum: number[];
  min: number[];
  mean: number[];
  p50: number[];
  p95: number[];
  max: number[];
}

/** Statistics of a set of samples; quantiles are nearest-rank. */
export interface SampleStats {
  count: number;
  min: number;
  mean: number;
  p50: number;
  p95: number;
  max: number;
  sum: number;
  /** Time of the first and the last sample (or bucket start), epoch ms. */
  from: number;
  to: number;
}

/** One row of a run's metric summary: one metric in one task with one tag set, on one host or on all. */
export interface MetricSummary extends SampleStats {
  metric: string;
  task: string | null;
  /** null: every host (from the aggregate buckets: quantiles within 1%, see digest.ts). */
  host: string | null;
  tags: Record<string, string>;
}

/** A run's metric summary: fleet rows (host null) first, then per-host rows (exact). */
export interface RunMetricsSummary {
  runId: string;
  /** Width of the run's aggregate buckets; null when it has no samples. */
  bucketMs: number | null;
  rows: MetricSummary[];
}

export interface RunFilter {
  state?: string;
  /** Job name. */
  job?: string;
  /** Default 100, at most 10,000. */
  limit?: number;
}

const EVENT_KINDS: ReadonlySet<string> = new Set<TaskEventKind>(['started', 'finished', 'failed', 'timedout', 'cancelled']);
const FINAL_STATES: ReadonlySet<string> = new Set<FinalTaskState>(['succeeded', 'failed', 'cancelled']);
/** A run first seen through an event or a sample, before upsertRun describes it. */
const PLACEHOLDER_RUN_STATE = 'unknown';
/** Dimension caches are dropped when one grows past this many entries (tags of high cardinality). */
const MAX_CACHE_ENTRIES = 100_000;
/** Latest (and, negated, earliest) sample time the store takes: JavaScript's last Date, epoch ms. */
const MAX_TIME_MS = 8.64e15;
/** CSV rows collected before one call of the export's write callback. */
const CSV_ROWS_PER_CHUNK = 1000;

/**
 * Forward migrations; migration N brings a file from version N-1 to N: its `sql`, then its
 * `migrate` step when it has one. Never edit a shipped one. Exported for tests that build a file
 * of an older version.
 */
export const MIGRATIONS: ReadonlyArray<{ version: number; sql: string; migrate?: (db: Database.Database) => void }> = [
  {
    version: 1,
    sql: `
      CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL UNIQUE,
        job_name TEXT,
        job_json TEXT,
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER
      );
      CREATE INDEX runs_by_created ON runs (created_at);
      CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        run INTEGER NOT NULL REFERENCES runs (id),
        task_id TEXT NOT NULL,
        state TEXT NOT NULL,
        hosts_total INTEGER NOT NULL DEFAULT 0,
        hosts_ok INTEGER NOT NULL DEFAULT 0,
        hosts_failed INTEGER NOT NULL DEFAULT 0,
        hosts_lost INTEGER NOT NULL DEFAULT 0,
        started_at REAL,
        finished_at REAL,
        start_skew_ms REAL,
        UNIQUE (run, task_id)
      );
      CREATE TABLE hosts (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        key_fingerprint TEXT
      );
      CREATE TABLE metrics (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
      );
      CREATE TABLE tag_sets (
        id INTEGER PRIMARY KEY,
        tags TEXT NOT NULL UNIQUE
      );
      CREATE TABLE host_results (
        task INTEGER NOT NULL REFERENCES tasks (id),
        host INTEGER NOT NULL REFERENCES hosts (id),
        state TEXT NOT NULL,
        exit_code INTEGER,
        started_at REAL,
        duration_ms REAL,
        stdout_tail TEXT,
        stderr_tail TEXT,
        PRIMARY KEY (task, host)
      );
      CREATE TABLE events (
        message_id TEXT NOT NULL UNIQUE,
        task INTEGER NOT NULL REFERENCES tasks (id),
        host INTEGER NOT NULL REFERENCES hosts (id),
        kind TEXT NOT NULL,
        at REAL NOT NULL,
        payload TEXT NOT NULL
      );
      CREATE INDEX events_by_task ON events (task, at);
      CREATE TABLE samples (
        run INTEGER REFERENCES runs (id),
        task INTEGER REFERENCES tasks (id),
        host INTEGER NOT NULL REFERENCES hosts (id),
        metric INTEGER NOT NULL REFERENCES metrics (id),
        tags INTEGER NOT NULL REFERENCES tag_sets (id),
        t INTEGER NOT NULL,
        value REAL NOT NULL
      );
      CREATE INDEX samples_by_run_metric ON samples (run, metric, t);
      CREATE INDEX samples_by_run_host ON samples (run, host, metric, t);
      CREATE TABLE ingested_batches (
        batch_id TEXT PRIMARY KEY,
        host INTEGER NOT NULL REFERENCES hosts (id),
        samples INTEGER NOT NULL,
        received_at INTEGER NOT NULL
      ) WITHOUT ROWID;
    `,
  },
  {
    // The aggregator's view of a task: its dispatches (to decide it again after a restart), the
    // full host breakdown of its final status, and whether that status was published.
    version: 2,
    sql: `
      ALTER TABLE tasks ADD COLUMN hosts_started INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE tasks ADD COLUMN hosts_timedout INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE tasks ADD COLUMN hosts_cancelled INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE tasks ADD COLUMN status_published_at REAL;
      -- Statuses committed before this version were handled by whoever committed them.
      UPDATE tasks SET status_published_at = (julianday('now') - 2440587.5) * 86400000.0 WHERE state <> 'running';
      CREATE INDEX tasks_running ON tasks (id) WHERE state = 'running';
      CREATE INDEX tasks_unpublished ON tasks (id) WHERE state <> 'running' AND status_published_at IS NULL;
      CREATE TABLE dispatches (
        command_id TEXT PRIMARY KEY,
        task INTEGER NOT NULL REFERENCES tasks (id),
        dispatched_at REAL NOT NULL,
        start_at REAL,
        timeout_ms REAL NOT NULL,
        failure TEXT NOT NULL,
        targets TEXT NOT NULL
      );
      CREATE INDEX dispatches_by_task ON dispatches (task);
    `,
  },
  {
    // Aggregates across hosts per run, metric, task, tag set and time bucket, kept as samples
    // arrive. task 0: samples of the run outside any task. Runs stored before this version have
    // no buckets.
    version: 3,
    sql: `
      ALTER TABLE runs ADD COLUMN bucket_ms INTEGER;
      CREATE TABLE sample_buckets (
        run INTEGER NOT NULL REFERENCES runs (id),
        metric INTEGER NOT NULL REFERENCES metrics (id),
        task INTEGER NOT NULL,
        tags INTEGER NOT NULL REFERENCES tag_sets (id),
        t INTEGER NOT NULL,
        count INTEGER NOT NULL,
        sum REAL NOT NULL,
        min REAL NOT NULL,
        max REAL NOT NULL,
        p50 REAL NOT NULL,
        p95 REAL NOT NULL,
        digest BLOB NOT NULL
      );
      CREATE UNIQUE INDEX sample_buckets_key ON sample_buckets (run, metric, task, tags, t);
    `,
  },
  {
    // The per-host sample index ordered by time before metric, so a host's new samples are
    // appended at the end of its range. Ordered (run, host, metric, t), every (host, metric) pair
    // had its own insertion point: once a run was a few minutes old, each sample of a group commit
    // dirtied a page of its own (1,000 hosts x 20 metrics: 5 us of CPU per sample at first, 18 us
    // with 40 us of wall time after 200 s; ordered by time, a flat ~3.7 us).
    version: 4,
    sql: `
      DROP INDEX samples_by_run_host;
      CREATE INDEX samples_by_run_host_time ON samples (run, host, t, metric);
    `,
  },
  {
    // Samples packed in blocks (blocks.ts) instead of a row each: one row per run, host, write and
    // 5 s window. The metrics a run has are listed in run_metrics (the blocks do not say without
    // being read). The rows of version 4 are packed in the order they arrived.
    version: 5,
    sql: `
      CREATE TABLE sample_blocks (
        run INTEGER REFERENCES runs (id),
        host INTEGER NOT NULL REFERENCES hosts (id),
        t0 INTEGER NOT NULL,
        count INTEGER NOT NULL,
        data BLOB NOT NULL
      );
      CREATE INDEX sample_blocks_by_run_host ON sample_blocks (run, host, t0);
      CREATE INDEX sample_blocks_by_run ON sample_blocks (run, t0);
      CREATE TABLE run_metrics (
        run INTEGER NOT NULL REFERENCES runs (id),
        metric INTEGER NOT NULL REFERENCES metrics (id),
        PRIMARY KEY (run, metric)
      ) WITHOUT ROWID;
      INSERT INTO run_metrics SELECT DISTINCT run, metric FROM samples WHERE run IS NOT NULL;
    `,
    migrate: packSampleRows,
  },
];

/** Most samples the version 5 migration packs into one block. */
const MIGRATION_BLOCK_SAMPLES = 5000;

/** Moves the rows of the version 4 `samples` table into blocks, consecutive rows of one run, host and window together, then drops it. */
function packSampleRows(db: Database.Database): void {
  const insert = db.prepare('INSERT INTO sample_blocks (run, host, t0, count, data) VALUES (?, ?, ?, ?, ?)');
  let block: BlockBuilder | undefined;
  let blockHost = 0;
  const flush = () => {
    if (block !== undefined && block.count > 0) insert.run(block.run, blockHost, block.t0, block.count, block.encode());
  };
  // Read in pages: better-sqlite3 runs no write while a read is iterating on the connection.
  const page = db.prepare('SELECT rowid, run, task, host, metric, tags, t, value FROM samples WHERE rowid > ? ORDER BY rowid LIMIT 20000').raw();
  let after = 0;
  for (;;) {
    const rows = page.all(after) as Array<[number, number | null, number | null, number, number, number, number, number]>;
    if (rows.length === 0) break;
    for (const [rowid, run, task, host, metric, tags, t, value] of rows) {
      const t0 = blockStart(t);
      if (block === undefined || block.run !== run || blockHost !== host || block.t0 !== t0 || block.count >= MIGRATION_BLOCK_SAMPLES) {
        flush();
        block = new BlockBuilder(run, t0);
        blockHost = host;
      }
      block.add(metric, tags, task ?? 0, t, value);
      after = rowid;
    }
  }
  flush();
  db.exec('DROP TABLE samples');
}

type Statement = Database.Statement<unknown[]>;

/** The values one write adds to one aggregate bucket. */
interface BucketDelta {
  run: number;
  metric: number;
  task: number;
  tags: number;
  t: number;
  values: number[];
}

/**
 * What the metric name and tags of a sample resolve to, cached by their text (see `tagsText`),
 * so that the samples of a known series cost no validation, sorting or JSON: metric and tag-set
 * ids and, in a run, the task named by the `task` tag. It also remembers the task row it resolved
 * for the last run and the bucket it fed last.
 */
interface SeriesEntry {
  metric: number;
  tags: number;
  /** The `task` tag, checked (samples in a run only). */
  taskName: string | undefined;
  /** The run `task` was resolved (and the metric listed) for; -1 before the first time. */
  run: number;
  /** The task row; 0: none. */
  task: number;
  /** The bucket this series fed last and the write (`#writes`) that bucket belongs to. */
  delta: BucketDelta | null;
  write: number;
}

/** Default width of aggregate buckets, ms. */
const DEFAULT_BUCKET_MS = 1000;
/** Decoded bucket digests kept between writes (the buckets samples are arriving for). */
const MAX_CACHED_DIGESTS = 20_000;

interface RunRow {
  run_id: string;
  job_name: string | null;
  job_json: string | null;
  state: string;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
}

interface TaskRow {
  run_id: string;
  task_id: string;
  state: TaskState;
  hosts_total: number;
  hosts_ok: number;
  hosts_failed: number;
  hosts_lost: number;
  hosts_started: number;
  hosts_timedout: number;
  hosts_cancelled: number;
  started_at: number | null;
  finished_at: number | null;
  start_skew_ms: number | null;
  status_published_at: number | null;
}

interface DispatchRow {
  run_id: string;
  task_id: string;
  command_id: string;
  dispatched_at: number;
  start_at: number | null;
  timeout_ms: number;
  failure: string;
  targets: string;
}

interface EventRow {
  message_id: string;
  host: string;
  kind: TaskEventKind;
  at: number;
  payload: string;
}

interface HostResultRow {
  run_id: string;
  task_id: string;
  host: string;
  state: HostState;
  exit_code: number | null;
  started_at: number | null;
  duration_ms: number | null;
  stdout_tail: string | null;
  stderr_tail: string | null;
}

export class SinkStore {
  /** The file this store writes. */
  readonly file: string;
  readonly #db: Database.Database;
  readonly #tx: Database.Transaction<(fn: () => unknown) => unknown>;
  readonly #stmt: Record<
    | 'runKey'
    | 'insertPlaceholderRun'
    | 'upsertRun'
    | 'taskKey'
    | 'insertTask'
    | 'hostKey'
    | 'insertHost'
    | 'setHostFingerprint'
    | 'metricKey'
    | 'insertMetric'
    | 'tagsKey'
    | 'insertTags'
    | 'insertEvent'
    | 'upsertHostResult'
    | 'insertBatch'
    | 'insertBlock'
    | 'insertRunMetric'
    | 'taskState'
    | 'hostResultSpan'
    | 'finishTask'
    | 'recordUnreported'
    | 'insertDispatch'
    | 'dispatchesOfTask'
    | 'eventsOfTask'
    | 'runningTasks'
    | 'unpublishedTasks'
    | 'markPublished'
    | 'metricsOfRun'
    | 'syncFull'
    | 'syncNormal'
    | 'getRun'
    | 'listRuns'
    | 'getTask'
    | 'listTasks'
    | 'listHostResults'
    | 'listHostResultsOfTask'
    | 'hostName'
    | 'tagsJson'
    | 'blocksOfRun'
    | 'runBucketMs'
    | 'runAndBucketMs'
    | 'setRunBucketMs'
    | 'bucketDigest'
    | 'upsertBucket'
    | 'bucketsOfMetric'
    | 'hostsOfRun'
    | 'blocksOfRunHost'
    | 'taskName'
    | 'metricName',
    Statement
  >;
  readonly #bucketMs: number;
  // Dimension ids by name. Entries added inside a transaction that rolls back would point at rows
  // that no longer exist, so every failed write clears all of them (see #write).
  readonly #runKeys = new Map<string, number>();
  readonly #taskKeys = new Map<string, number>();
  readonly #hostKeys = new Map<string, number>();
  readonly #metricKeys = new Map<string, number>();
  readonly #tagKeys = new Map<string, number>();
  /** Bucket width by run row id. */
  readonly #runBuckets = new Map<number, number>();
  /** Digests of recently written buckets, by bucket key; always equal to the stored row. */
  readonly #digests = new Map<string, ValueDigest>();
  /** Series of samples in a run and outside any run, by metric name, then tags text. */
  readonly #runSeries = new Map<string, Map<string, SeriesEntry>>();
  readonly #plainSeries = new Map<string, Map<string, SeriesEntry>>();
  #seriesCount = 0;
  /** `run metric` pairs known to be in run_metrics. */
  readonly #runMetrics = new Set<string>();
  /** Ingest calls so far: tells a bucket delta of this call from one of an earlier call. */
  #writes = 0;
  readonly #queries = new Map<string, Statement>();
  #closed = false;

  /**
   * Opens (creating if needed, with its directory) the store at `file` and migrates it to
   * SCHEMA_VERSION. Throws BOLT_ERR_STORE_OPEN_FAILED or BOLT_ERR_STORE_SCHEMA_TOO_NEW.
   */
  constructor(file: string, opts: SinkStoreOptions = {}) {
    this.file = file;
    this.#bucketMs = Math.max(1, Math.floor(opts.bucketMs ?? DEFAULT_BUCKET_MS));
    let db: Database.Database | undefined;
    try {
      mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
      db = new Database(file, { timeout: opts.busyTimeoutMs ?? 5000 });
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      db.pragma(`cache_size = ${-1024 * Math.max(1, Math.floor(opts.cacheSizeMb ?? 32))}`);
      // Integrity of the integer references is kept by this class (ids come from the dimension
      // tables it owns). Enforcing them in SQLite cost ~15% of ingest CPU when measured
      // (280k against 330k samples per CPU-second, grouped batches of 20).
      db.pragma('foreign_keys = OFF');
      // Checkpoints fsync the WAL and the database file. One run of bench/sink-store.ts made 3,526
      // fsyncs at SQLite's default (a checkpoint every 1,000 pages) and 412 at 10,000 pages
      // (~40 MiB of WAL). After a checkpoint the WAL file is truncated to at most 64 MiB.
      db.pragma('wal_autocheckpoint = 10000');
      db.pragma(`journal_size_limit = ${64 * 1024 * 1024}`);
      migrate(db, file);
    } catch (err) {
      db?.close();
      if (err instanceof BoltError) throw err;
      throw new BoltError('BOLT_ERR_STORE_OPEN_FAILED', `cannot open the sink store ${file}: ${(err as Error).message}`, {
        cause: err,
        details: { file },
      });
    }
    this.#db = db;
    this.#tx = db.transaction((fn: () => unknown) => fn());
    const prepare = (sql: string): Statement => db.prepare(sql);
    this.#stmt = {
      runKey: prepare('SELECT id FROM runs WHERE run_id = ?').pluck(),
      insertPlaceholderRun: prepare('INSERT INTO runs (run_id, state, created_at) VALUES (?, ?, ?)'),
      upsertRun: prepare(`
        INSERT INTO runs (run_id, job_name, job_json, state, created_at, started_at, finished_at)
        VALUES (@id, @jobName, @jobJson, @state, @createdAt, @startedAt, @finishedAt)
        ON CONFLICT (run_id) DO UPDATE SET
          job_name = excluded.job_name,
          job_json = coalesce(excluded.job_json, runs.job_json),
          state = excluded.state,
          created_at = excluded.created_at,
          started_at = coalesce(excluded.started_at, runs.started_at),
          finished_at = coalesce(excluded.finished_at, runs.finished_at)`),
      taskKey: prepare('SELECT id FROM tasks WHERE run = ? AND task_id = ?').pluck(),
      insertTask: prepare(`INSERT INTO tasks (run, task_id, state) VALUES (?, ?, 'running')`),
      hostKey: prepare('SELECT id FROM hosts WHERE name = ?').pluck(),
      insertHost: prepare('INSERT INTO hosts (name) VALUES (?)'),
      setHostFingerprint: prepare('UPDATE hosts SET key_fingerprint = ? WHERE id = ?'),
      metricKey: prepare('SELECT id FROM metrics WHERE name = ?').pluck(),
      insertMetric: prepare('INSERT INTO metrics (name) VALUES (?)'),
      tagsKey: prepare('SELECT id FROM tag_sets WHERE tags = ?').pluck(),
      insertTags: prepare('INSERT INTO tag_sets (tags) VALUES (?)'),
      insertEvent: prepare(`
        INSERT INTO events (message_id, task, host, kind, at, payload) VALUES (?, ?, ?, ?, ?, ?)
        ON CONFLICT (message_id) DO NOTHING`),
      // A late `started` never demotes a host that already reported its final event.
      upsertHostResult: prepare(`
        INSERT INTO host_results (task, host, state, exit_code, started_at, duration_ms, stdout_tail, stderr_tail)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (task, host) DO UPDATE SET
          state = CASE WHEN excluded.state = 'running' THEN host_results.state ELSE excluded.state END,
          exit_code = coalesce(excluded.exit_code, host_results.exit_code),
          started_at = coalesce(excluded.started_at, host_results.started_at),
          duration_ms = coalesce(excluded.duration_ms, host_results.duration_ms),
          stdout_tail = coalesce(excluded.stdout_tail, host_results.stdout_tail),
          stderr_tail = coalesce(excluded.stderr_tail, host_results.stderr_tail)`),
      insertBatch: prepare(`
        INSERT INTO ingested_batches (batch_id, host, samples, received_at) VALUES (?, ?, ?, ?)
        ON CONFLICT (batch_id) DO NOTHING`),
      insertBlock: prepare('INSERT INTO sample_blocks (run, host, t0, count, data) VALUES (?, ?, ?, ?, ?)'),
      insertRunMetric: prepare('INSERT INTO run_metrics (run, metric) VALUES (?, ?) ON CONFLICT DO NOTHING'),
      taskState: prepare(`
        SELECT state, hosts_total, hosts_ok, hosts_failed, hosts_lost, hosts_started, hosts_timedout, hosts_cancelled
        FROM tasks WHERE id = ?`),
      hostResultSpan: prepare(`
        SELECT min(started_at) AS first, max(started_at) AS last, max(started_at + duration_ms) AS end
        FROM host_results WHERE task = ?`),
      finishTask: prepare(`
        UPDATE tasks SET state = @state, hosts_total = @total, hosts_ok = @ok, hosts_failed = @failed, hosts_lost = @lost,
          hosts_started = @started, hosts_timedout = @timedout, hosts_cancelled = @cancelled,
          started_at = @startedAt, finished_at = @finishedAt, start_skew_ms = @startSkewMs
        WHERE id = @task`),
      // A host that already has a final result keeps it.
      recordUnreported: prepare(`
        INSERT INTO host_results (task, host, state) VALUES (?, ?, ?)
        ON CONFLICT (task, host) DO UPDATE SET state = excluded.state WHERE host_results.state = 'running'`),
      insertDispatch: prepare(`
        INSERT INTO dispatches (command_id, task, dispatched_at, start_at, timeout_ms, failure, targets)
        VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (command_id) DO NOTHING`),
      dispatchesOfTask: prepare(`
        SELECT r.run_id, k.task_id, d.* FROM dispatches d JOIN tasks k ON k.id = d.task JOIN runs r ON r.id = k.run
        WHERE d.task = ? ORDER BY d.rowid`),
      eventsOfTask: prepare(`
        SELECT e.message_id, h.name AS host, e.kind, e.at, e.payload FROM events e JOIN hosts h ON h.id = e.host
        WHERE e.task = ? ORDER BY e.rowid`),
      // Tasks still running that were dispatched, or that saw an event since @since (events that
      // arrived before their dispatch was announced).
      runningTasks: prepare(`
        SELECT k.id, r.run_id, k.task_id FROM tasks k JOIN runs r ON r.id = k.run
        WHERE k.state = 'running' AND (
          EXISTS (SELECT 1 FROM dispatches d WHERE d.task = k.id)
          OR EXISTS (SELECT 1 FROM events e WHERE e.task = k.id AND e.at >= @since))
        ORDER BY k.id LIMIT @limit`),
      unpublishedTasks: prepare(`
        SELECT r.run_id, k.* FROM tasks k JOIN runs r ON r.id = k.run
        WHERE k.state <> 'running' AND k.status_published_at IS NULL ORDER BY k.id LIMIT @limit`),
      markPublished: prepare(`
        UPDATE tasks SET status_published_at = coalesce(status_published_at, ?)
        WHERE run = (SELECT id FROM runs WHERE run_id = ?) AND task_id = ? AND state <> 'running'`),
      metricsOfRun: prepare(`
        SELECT m.name FROM run_metrics x JOIN metrics m ON m.id = x.metric
        WHERE x.run = (SELECT id FROM runs WHERE run_id = ?) ORDER BY m.name`).pluck(),
      syncFull: prepare('PRAGMA synchronous = FULL'),
      syncNormal: prepare('PRAGMA synchronous = NORMAL'),
      getRun: prepare('SELECT * FROM runs WHERE run_id = ?'),
      listRuns: prepare(`
        SELECT run_id, job_name, state, created_at, started_at, finished_at FROM runs
        WHERE (@state IS NULL OR state = @state) AND (@job IS NULL OR job_name = @job)
        ORDER BY created_at DESC, id DESC LIMIT @limit`),
      getTask: prepare(`
        SELECT r.run_id, k.* FROM tasks k JOIN runs r ON r.id = k.run WHERE r.run_id = ? AND k.task_id = ?`),
      listTasks: prepare(`
        SELECT r.run_id, k.* FROM tasks k JOIN runs r ON r.id = k.run WHERE r.run_id = ? ORDER BY k.id`),
      listHostResults: prepare(`
        SELECT r.run_id, k.task_id, h.name AS host, x.state, x.exit_code, x.started_at, x.duration_ms, x.stdout_tail, x.stderr_tail
        FROM host_results x JOIN tasks k ON k.id = x.task JOIN runs r ON r.id = k.run JOIN hosts h ON h.id = x.host
        WHERE r.run_id = ? ORDER BY k.id, h.name`),
      listHostResultsOfTask: prepare(`
        SELECT r.run_id, k.task_id, h.name AS host, x.state, x.exit_code, x.started_at, x.duration_ms, x.stdout_tail, x.stderr_tail
        FROM host_results x JOIN tasks k ON k.id = x.task JOIN runs r ON r.id = k.run JOIN hosts h ON h.id = x.host
        WHERE r.run_id = ? AND k.task_id = ? ORDER BY h.name`),
      hostName: prepare('SELECT name FROM hosts WHERE id = ?').pluck(),
      tagsJson: prepare('SELECT tags FROM tag_sets WHERE id = ?').pluck(),
      // Walks sample_blocks_by_run in order (its last column is the rowid): no sort.
      blocksOfRun: prepare('SELECT host, t0, count, data FROM sample_blocks WHERE run = ? ORDER BY t0, rowid').raw(),
      runBucketMs: prepare('SELECT bucket_ms FROM runs WHERE id = ?').pluck(),
      runAndBucketMs: prepare('SELECT id, bucket_ms FROM runs WHERE run_id = ?'),
      setRunBucketMs: prepare('UPDATE runs SET bucket_ms = ? WHERE id = ?'),
      bucketDigest: prepare('SELECT digest FROM sample_buckets WHERE run = ? AND metric = ? AND task = ? AND tags = ? AND t = ?').pluck(),
      upsertBucket: prepare(`
        INSERT INTO sample_buckets (run, metric, task, tags, t, count, sum, min, max, p50, p95, digest)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (run, metric, task, tags, t) DO UPDATE SET
          count = excluded.count, sum = excluded.sum, min = excluded.min, max = excluded.max,
          p50 = excluded.p50, p95 = excluded.p95, digest = excluded.digest`),
      // Walks sample_buckets_key in order: one task and tag set after the other.
      bucketsOfMetric: prepare('SELECT task, tags, t, digest FROM sample_buckets WHERE run = ? AND metric = ? ORDER BY task, tags, t').raw(),
      // A loose index scan of sample_blocks_by_run_host: one seek per distinct host.
      hostsOfRun: prepare(`
        WITH RECURSIVE h(id) AS (
          SELECT (SELECT min(host) FROM sample_blocks WHERE run = @run)
          UNION ALL
          SELECT (SELECT min(host) FROM sample_blocks WHERE run = @run AND host > h.id) FROM h WHERE h.id IS NOT NULL
        ) SELECT id FROM h WHERE id IS NOT NULL`).pluck(),
      // Walks sample_blocks_by_run_host: the host's blocks by window, then arrival.
      blocksOfRunHost: prepare('SELECT t0, count, data FROM sample_blocks INDEXED BY sample_blocks_by_run_host WHERE run = ? AND host = ? ORDER BY t0, rowid').raw(),
      taskName: prepare('SELECT task_id FROM tasks WHERE id = ?').pluck(),
      metricName: prepare('SELECT name FROM metrics WHERE id = ?').pluck(),
    };
  }

  /** The schema version of the open file (always SCHEMA_VERSION after a successful open). */
  get schemaVersion(): number {
    this.#assertOpen();
    return this.#db.prepare('SELECT max(version) FROM schema_version').pluck().get() as number;
  }

  /** Creates or updates a run. Fields left out (job, startedAt, finishedAt) keep their stored values. */
  upsertRun(run: RunRecord): void {
    this.#write(() => {
      const what = 'run';
      requireObject(run, what);
      const id = requireName(run.id, what, 'id');
      const jobName = run.jobName == null ? null : requireName(run.jobName, what, 'jobName');
      const state = requireName(run.state, what, 'state');
      const createdAt = requireNumber(run.createdAt, what, 'createdAt');
      const startedAt = run.startedAt == null ? null : requireNumber(run.startedAt, what, 'startedAt');
      const finishedAt = run.finishedAt == null ? null : requireNumber(run.finishedAt, what, 'finishedAt');
      const jobJson = run.job === undefined ? null : JSON.stringify(run.job);
      this.#stmt.upsertRun.run({ id, jobName, jobJson, state, createdAt, startedAt, finishedAt });
      if (!this.#runKeys.has(id)) this.#remember(this.#runKeys, id, this.#stmt.runKey.get(id) as number);
    });
  }

  /** Records a host's name with the fingerprint of its public key (creates the host if new). */
  upsertHost(name: string, keyFingerprint: string): void {
    this.#write(() => {
      const host = this.#hostKey(requireName(name, 'host', 'name'));
      this.#stmt.setHostFingerprint.run(requireName(keyFingerprint, 'host', 'keyFingerprint'), host);
    });
  }

  /**
   * Stores one task.event and applies it to the host's result. A message id seen before changes
   * nothing and returns `{ duplicate: true }`.
   */
  recordEvent(event: TaskEventRecord): { duplicate: boolean } {
    return this.#write(() => ({ duplicate: !this.#recordEvent(event) }));
  }

  /**
   * Stores several task.events in one transaction: all of them or, if one is invalid, none.
   * Returns how many were new and the ids of those already stored.
   */
  recordEvents(events: readonly TaskEventRecord[]): { stored: number; duplicates: string[] } {
    return this.#write(() => {
      if (!Array.isArray(events as unknown)) badRecord('events', '', 'an array', events);
      const duplicates: string[] = [];
      for (const event of events) if (!this.#recordEvent(event)) duplicates.push(event.id);
      return { stored: events.length - duplicates.length, duplicates };
    });
  }

  /**
   * Stores one metrics batch in one transaction. A batch id seen before stores nothing and
   * returns `{ duplicate: true, stored: 0 }`.
   */
  ingestSamples(batchId: string, hostName: string, samples: readonly SampleInput[], runId?: string): IngestResult {
    return this.#write(() => {
      this.#writes++;
      const buckets = new Map<string, BucketDelta>();
      const result = this.#ingest(batchId, hostName, samples, runId, buckets);
      this.#applyBuckets(buckets);
      return result;
    });
  }

  /**
   * Stores several metrics batches in one transaction (group commit: one WAL append for all of
   * them). Each batch is still deduplicated by its own id; results are in input order.
   *
   * The samples of a run also update the run's aggregate buckets (see queryBuckets) in the same
   * transaction, each bucket row written once per call: a batch stored as a duplicate adds
   * nothing to them, and a call that fails adds nothing either.
   */
  ingestBatches(batches: readonly SampleBatch[]): IngestResult[] {
    return this.#write(() => {
      if (!Array.isArray(batches as unknown)) badRecord('batches', '', 'an array', batches);
      this.#writes++;
      const buckets = new Map<string, BucketDelta>();
      const results = batches.map((b) => {
        requireObject(b, 'metrics batch');
        return this.#ingest(b.batchId, b.host, b.samples, b.runId, buckets);
      });
      this.#applyBuckets(buckets);
      return results;
    });
  }

  /**
   * Commits the final status of a task durably: when this returns, the status is on disk
   * (fsync'd) and survives a crash of the process or of the machine, and so does everything
   * written before it. Committing the same status again returns `{ duplicate: true }`; a
   * different final status for the same task (state or any host count) throws
   * BOLT_ERR_STORE_STATUS_CONFLICT and changes nothing. `unreported` hosts get their host result
   * (timedout or lost) in the same transaction.
   *
   * Durability: the connection runs synchronous=NORMAL (WAL): commits survive a process crash
   * but the last ones may be lost on power loss. For this transaction it switches to FULL, which
   * fsyncs the WAL at commit, and back. Measured against a second connection kept at FULL, both
   * cost the same (~360-400 commits/s here, the fsync dominates; the pragma pair costs ~5 µs),
   * so the single connection wins: no second page cache, no lock hand-over between connections.
   */
  commitTaskStatus(status: TaskStatusRecord): { duplicate: boolean } {
    this.#assertOpen();
    this.#stmt.syncFull.run();
    try {
      return this.#write(() => this.#commitTaskStatus(status));
    } finally {
      this.#stmt.syncNormal.run();
    }
  }

  /**
   * Records a dispatch of a task (the task is created `running` if new). A command id recorded
   * before changes nothing and returns `{ duplicate: true }`.
   */
  recordDispatch(dispatch: DispatchRecord): { duplicate: boolean } {
    return this.#write(() => {
      const what = 'dispatch';
      requireObject(dispatch, what);
      const runId = requireName(dispatch.runId, what, 'runId');
      const taskId = requireName(dispatch.taskId, what, 'taskId');
      const commandId = requireName(dispatch.commandId, what, 'commandId');
      if (!Array.isArray(dispatch.targets as unknown)) badRecord(what, 'targets', 'an array', dispatch.targets);
      const targets = dispatch.targets.map((t, i) => {
        requireObject(t, what, `targets[${i}]`);
        return { id: requireName(t.id, what, `targets[${i}].id`), name: requireName(t.name, what, `targets[${i}].name`) };
      });
      const startAt = dispatch.startAt === null ? null : requireNumber(dispatch.startAt, what, 'startAt');
      const timeoutMs = requireNumber(dispatch.timeoutMs, what, 'timeoutMs');
      const dispatchedAt = requireNumber(dispatch.dispatchedAt, what, 'dispatchedAt');
      const failure = JSON.stringify(dispatch.failure ?? null);
      const task = this.#taskKey(this.#runKey(runId), taskId);
      const changes = this.#stmt.insertDispatch.run(commandId, task, dispatchedAt, startAt, timeoutMs, failure, JSON.stringify(targets)).changes;
      return { duplicate: changes === 0 };
    });
  }

  /** The dispatches of a task in the order they were recorded. */
  listDispatches(runId: string, taskId: string): DispatchRecord[] {
    this.#assertOpen();
    const task = this.#stmt.getTask.get(runId, taskId) as { id: number } | undefined;
    return task === undefined ? [] : (this.#stmt.dispatchesOfTask.all(task.id) as DispatchRow[]).map(dispatchFromRow);
  }

  /**
   * Tasks whose final status is not committed yet: those that were dispatched, and those that
   * only saw events, at or after `eventsSince` (epoch ms, default 0). Each comes with its
   * dispatches and its events (arrival order, without output tails), so an aggregator can decide
   * it again after a restart. At most `limit` tasks (default 10,000), oldest first.
   */
  listPendingTasks(opts: { eventsSince?: number; limit?: number } = {}): PendingTask[] {
    this.#assertOpen();
    const limit = Math.min(1_000_000, Math.max(1, Math.floor(opts.limit ?? 10_000)));
    const rows = this.#stmt.runningTasks.all({ since: opts.eventsSince ?? 0, limit }) as Array<{ id: number; run_id: string; task_id: string }>;
    return rows.map((row) => ({
      runId: row.run_id,
      taskId: row.task_id,
      dispatches: (this.#stmt.dispatchesOfTask.all(row.id) as DispatchRow[]).map(dispatchFromRow),
      events: (this.#stmt.eventsOfTask.all(row.id) as EventRow[]).map((e) => eventFromRow(row.run_id, row.task_id, e)),
    }));
  }

  /** Tasks with a committed final status that was never marked published, oldest first. */
  listUnpublishedTasks(limit = 10_000): StoredTask[] {
    this.#assertOpen();
    return (this.#stmt.unpublishedTasks.all({ limit: Math.max(1, Math.floor(limit)) }) as TaskRow[]).map(taskFromRow);
  }

  /**
   * Notes that the final status of a task was published (the first instant stays). Returns false
   * when the task has no committed final status. Not fsync'd: after a power loss a status may be
   * reported as unpublished once more.
   */
  markStatusPublished(runId: string, taskId: string, at: number = Date.now()): boolean {
    return this.#write(() => this.#stmt.markPublished.run(requireNumber(at, 'publish mark', 'at'), runId, taskId).changes > 0);
  }

  /** Names of the metrics that have samples in a run, sorted. */
  listMetrics(runId: string): string[] {
    this.#assertOpen();
    return this.#stmt.metricsOfRun.all(runId) as string[];
  }

  getRun(id: string): StoredRun | undefined {
    this.#assertOpen();
    const row = this.#stmt.getRun.get(id) as RunRow | undefined;
    if (row === undefined) return undefined;
    return { ...runSummary(row), job: row.job_json === null ? undefined : JSON.parse(row.job_json) };
  }

  /** Runs, newest first. */
  listRuns(filter: RunFilter = {}): RunSummary[] {
    this.#assertOpen();
    const limit = Math.min(10_000, Math.max(1, Math.floor(filter.limit ?? 100)));
    const rows = this.#stmt.listRuns.all({ state: filter.state ?? null, job: filter.job ?? null, limit }) as RunRow[];
    return rows.map(runSummary);
  }

  getTask(runId: string, taskId: string): StoredTask | undefined {
    this.#assertOpen();
    const row = this.#stmt.getTask.get(runId, taskId) as TaskRow | undefined;
    return row === undefined ? undefined : taskFromRow(row);
  }

  /** The tasks of a run in the order the store first saw them. */
  listTasks(runId: string): StoredTask[] {
    this.#assertOpen();
    return (this.#stmt.listTasks.all(runId) as TaskRow[]).map(taskFromRow);
  }

  /** Host results of a run (or of one of its tasks), by task then host name. */
  listHostResults(runId: string, taskId?: string): HostResult[] {
    this.#assertOpen();
    const rows = (
      taskId === undefined ? this.#stmt.listHostResults.all(runId) : this.#stmt.listHostResultsOfTask.all(runId, taskId)
    ) as HostResultRow[];
    return rows.map((r) => ({
      runId: r.run_id,
      taskId: r.task_id,
      host: r.host,
      state: r.state,
      exitCode: r.exit_code,
      startedAt: r.started_at,
      durationMs: r.duration_ms,
      stdoutTail: r.stdout_tail,
      stderrTail: r.stderr_tail,
    }));
  }

  /**
   * The samples of one metric (or every metric) in one run, as one series per (metric, host, task,
   * tag set), series ordered by metric, host, task (none first, then by name) and tags, points by
   * time. Unknown run, metric, host or task: no series.
   */
  querySamples(query: SampleQuery): Series[] {
    this.#assertOpen();
    const run = this.#stmt.runKey.get(query.runId) as number | undefined;
    const metric = query.metric === undefined ? undefined : (this.#stmt.metricKey.get(query.metric) as number | undefined);
    if (run === undefined || (query.metric !== undefined && metric === undefined)) return [];
    const conditions = ['run = ?'];
    const params: unknown[] = [run];
    if (query.host !== undefined) {
      const host = this.#stmt.hostKey.get(query.host) as number | undefined;
      if (host === undefined) return [];
      conditions.push('host = ?');
      params.push(host);
    }
    let task: number | undefined;
    if (query.taskId !== undefined) {
      task = this.#stmt.taskKey.get(run, query.taskId) as number | undefined;
      if (task === undefined) return [];
    }
    const from = query.from ?? -Infinity;
    const to = query.to ?? Infinity;
    if (query.from !== undefined) {
      conditions.push('t0 >= ?');
      params.push(blockStart(query.from));
    }
    if (query.to !== undefined) {
      conditions.push('t0 <= ?');
      params.push(query.to);
    }
    // One host: its own index; otherwise every host's blocks of the run in the time range.
    const sql = `SELECT host, t0, count, data FROM sample_blocks WHERE ${conditions.join(' AND ')} ORDER BY t0, rowid`;
    const byKey = new Map<string, { metric: number; host: number; task: number; tags: number; t: number[]; values: number[]; sorted: boolean }>();
    let read = 0;
    let scanned = 0;
    for (const [host, t0, count, data] of this.#query(sql).iterate(...params) as IterableIterator<[number, number, number, Buffer]>) {
      scanned += count;
      if (query.maxScanned !== undefined && scanned > query.maxScanned) {
        throw new BoltError('BOLT_ERR_METRICS_BAD_QUERY', `the query for ${query.metric ?? 'every metric'} would read more than ${query.maxScanned} stored samples; narrow it with host, from and to (or export the run with bolt-core show RUN --metrics --csv)`, {
          details: { maxScanned: query.maxScanned },
        });
      }
      const block = decodeBlock(t0, count, data);
      for (let i = 0; i < count; i++) {
        if ((metric !== undefined && block.metrics[i] !== metric) || (task !== undefined && block.tasks[i] !== task)) continue;
        const t = t0 + block.dts[i]!;
        if (t < from || t > to) continue;
        if (query.limit !== undefined && ++read > query.limit) {
          throw new BoltError('BOLT_ERR_METRICS_BAD_QUERY', `more than ${query.limit} samples of ${query.metric ?? 'the run'} match; narrow the query with host, from and to (or export them with bolt-core show RUN --metrics --csv)`, {
            details: { limit: query.limit },
          });
        }
        const key = `${block.metrics[i]}:${host}:${block.tasks[i]}:${block.tags[i]}`;
        let series = byKey.get(key);
        if (series === undefined) {
          series = { metric: block.metrics[i]!, host, task: block.tasks[i]!, tags: block.tags[i]!, t: [], values: [], sorted: true };
          byKey.set(key, series);
        }
        if (series.t.length > 0 && t < series.t[series.t.length - 1]!) series.sorted = false;
        series.t.push(t);
        series.values.push(block.values[i]!);
      }
    }
    const result = [...byKey.values()].map((s) => {
      // Blocks come window by window, so only samples of one window can be out of time order;
      // a stable sort keeps equal times in the order they arrived.
      if (!s.sorted) {
        const order = s.t.map((_, i) => i).sort((a, b) => s.t[a]! - s.t[b]! || a - b);
        s.t = order.map((i) => s.t[i]!);
        s.values = order.map((i) => s.values[i]!);
      }
      return {
        metric: this.#stmt.metricName.get(s.metric) as string,
        host: this.#stmt.hostName.get(s.host) as string,
        task: s.task === 0 ? null : (this.#stmt.taskName.get(s.task) as string),
        tagsJson: this.#stmt.tagsJson.get(s.tags) as string,
        t: s.t,
        values: s.values,
      };
    });
    result.sort((a, b) => compare(a.metric, b.metric) || compare(a.host, b.host) || compareTask(a.task, b.task) || compare(a.tagsJson, b.tagsJson));
    return result.map((s) => ({ metric: s.metric, host: s.host, task: s.task, tags: JSON.parse(s.tagsJson) as Record<string, string>, t: s.t, values: s.values }));
  }

  /**
   * The aggregate buckets of one metric in one run: one series per (task, tag set) across all
   * hosts, ordered by task (none first, then by name) and tags, buckets by time. `from`/`to` keep
   * the buckets that overlap [from, to]. Reads only the bucket rows, never the samples. Unknown
   * run, metric or task: no series.
   */
  queryBuckets(query: BucketQuery): BucketSeries[] {
    this.#assertOpen();
    const run = this.#runWithBuckets(query.runId);
    if (run === undefined || run.bucket_ms === null) return [];
    const width = run.bucket_ms;
    const conditions = ['b.run = ?', 'b.metric = (SELECT id FROM metrics WHERE name = ?)'];
    const params: unknown[] = [run.id, query.metric];
    if (query.taskId === null) conditions.push('b.task = 0');
    else if (query.taskId !== undefined) {
      conditions.push('b.task = (SELECT id FROM tasks WHERE run = ? AND task_id = ?)');
      params.push(run.id, query.taskId);
    }
    if (query.from !== undefined) {
      conditions.push('b.t > ?');
      params.push(query.from - width);
    }
    if (query.to !== undefined) {
      conditions.push('b.t <= ?');
      params.push(query.to);
    }
    const sql = `
      SELECT b.task, b.tags, b.t, b.count, b.sum, b.min, b.max, b.p50, b.p95 FROM sample_buckets b
      WHERE ${conditions.join(' AND ')} ORDER BY b.task, b.tags, b.t`;
    const series: Array<BucketSeries & { tagsJson: string }> = [];
    let current: (BucketSeries & { tagsJson: string }) | undefined;
    let currentKey = '';
    const rows = this.#query(sql).iterate(...params) as IterableIterator<[number, number, number, number, number, number, number, number, number]>;
    for (const [task, tags, t, count, sum, min, max, p50, p95] of rows) {
      const key = `${task}:${tags}`;
      if (current === undefined || key !== currentKey) {
        const tagsJson = this.#stmt.tagsJson.get(tags) as string;
        current = {
          task: task === 0 ? null : (this.#stmt.taskName.get(task) as string),
          tags: JSON.parse(tagsJson) as Record<string, string>,
          tagsJson,
          bucketMs: width,
          t: [], count: [], sum: [], min: [], mean: [], p50: [], p95: [], max: [],
        };
        currentKey = key;
        series.push(current);
      }
      current.t.push(t);
      current.count.push(count);
      current.sum.push(sum);
      current.min.push(min);
      current.mean.push(sum / count);
      current.p50.push(p50);
      current.p95.push(p95);
      current.max.push(max);
    }
    // Index order is by task row id (first seen), which is what compareTask needs only for names.
    series.sort((a, b) => compareTask(a.task, b.task) || compare(a.tagsJson, b.tagsJson));
    return series.map(({ tagsJson: _json, ...rest }) => rest);
  }

  /**
   * A run's metric summary per task: for every metric, task and tag set one row across all hosts
   * (summarizeFleet) and one row per host (summarizeHost), ordered by orderSummaryRows. Reads every
   * sample of the run once; in a worker that must stay responsive, call the parts one at a time
   * (as writer-sqlite's `sink.metrics agg=summary` does).
   */
  summarizeRun(runId: string): RunMetricsSummary {
    this.#assertOpen();
    const run = this.#runWithBuckets(runId);
    if (run === undefined) return { runId, bucketMs: null, rows: [] };
    const rows = this.listMetrics(runId).flatMap((metric) => this.summarizeFleet(runId, metric));
    for (const host of this.listRunHosts(runId)) rows.push(...this.summarizeHost(runId, host));
    return { runId, bucketMs: run.bucket_ms, rows: orderSummaryRows(rows) };
  }

  /** The width of a run's aggregate buckets; null when the run is unknown or has no aggregated sample. */
  bucketWidth(runId: string): number | null {
    this.#assertOpen();
    return this.#runWithBuckets(runId)?.bucket_ms ?? null;
  }

  /**
   * One metric of a run across all hosts, per task and tag set: the run's aggregate buckets
   * merged (quantiles within 1%, see digest.ts; `from`/`to` are bucket starts). Reads bucket rows
   * only (one per second of the run and series).
   */
  summarizeFleet(runId: string, metric: string): MetricSummary[] {
    this.#assertOpen();
    const run = this.#runWithBuckets(runId);
    const metricId = this.#stmt.metricKey.get(metric) as number | undefined;
    if (run === undefined || metricId === undefined) return [];
    const rows: MetricSummary[] = [];
    let merged: { task: number; tags: number; digest: ValueDigest; from: number; to: number } | undefined;
    const flush = () => {
      if (merged === undefined) return;
      const d = merged.digest;
      rows.push(this.#summaryRow(metricId, merged.task, null, merged.tags, { count: d.count, min: d.min, mean: d.mean, p50: d.quantile(0.5), p95: d.quantile(0.95), max: d.max, sum: d.sum, from: merged.from, to: merged.to }));
    };
    for (const [task, tags, t, digest] of this.#stmt.bucketsOfMetric.iterate(run.id, metricId) as IterableIterator<[number, number, number, Buffer]>) {
      if (merged === undefined || merged.task !== task || merged.tags !== tags) {
        flush();
        merged = { task, tags, digest: new ValueDigest(), from: t, to: t };
      }
      merged.digest.merge(ValueDigest.decode(digest));
      merged.to = t;
    }
    flush();
    return rows;
  }

  /**
   * The hosts with samples in a run, by name. Seeks the (run, host) index once per host rather
   * than reading the samples.
   */
  listRunHosts(runId: string): string[] {
    this.#assertOpen();
    const run = this.#stmt.runKey.get(runId) as number | undefined;
    if (run === undefined) return [];
    return (this.#stmt.hostsOfRun.all({ run }) as number[]).map((id) => this.#stmt.hostName.get(id) as string).sort(compare);
  }

  /**
   * One host's samples in a run, per metric, task and tag set, with exact statistics; rows by
   * metric (in the order the store first saw the metrics), then series by their first sample.
   * Reads the host's blocks of the run once (memory: the values of that host).
   */
  summarizeHost(runId: string, hostName: string): MetricSummary[] {
    this.#assertOpen();
    const run = this.#stmt.runKey.get(runId) as number | undefined;
    const host = this.#stmt.hostKey.get(hostName) as number | undefined;
    if (run === undefined || host === undefined) return [];
    const groups = new Map<string, { metric: number; task: number; tags: number; values: number[]; sum: number; from: number; to: number }>();
    for (const [t0, count, data] of this.#stmt.blocksOfRunHost.iterate(run, host) as IterableIterator<[number, number, Buffer]>) {
      const block = decodeBlock(t0, count, data);
      for (let i = 0; i < count; i++) {
        const metric = block.metrics[i]!;
        const task = block.tasks[i]!;
        const tags = block.tags[i]!;
        const t = t0 + block.dts[i]!;
        const value = block.values[i]!;
        const key = `${metric}:${task}:${tags}`;
        let g = groups.get(key);
        if (g === undefined) {
          g = { metric, task, tags, values: [], sum: 0, from: t, to: t };
          groups.set(key, g);
        }
        g.values.push(value);
        g.sum += value;
        if (t < g.from) g.from = t;
        if (t > g.to) g.to = t;
      }
    }
    // Stable: series of one metric with the same first sample keep the order they were first seen.
    const ordered = [...groups.values()].sort((a, b) => a.metric - b.metric || a.from - b.from);
    return ordered.map((g) => {
      g.values.sort((a, b) => a - b);
      const n = g.values.length;
      const at = (q: number) => g.values[Math.min(n, Math.max(1, Math.ceil(q * n))) - 1]!;
      return this.#summaryRow(g.metric, g.task, host, g.tags, { count: n, min: g.values[0]!, mean: g.sum / n, p50: at(0.5), p95: at(0.95), max: g.values[n - 1]!, sum: g.sum, from: g.from, to: g.to });
    });
  }

  #summaryRow(metric: number, task: number, host: number | null, tags: number, stats: SampleStats): MetricSummary {
    return {
      metric: this.#stmt.metricName.get(metric) as string,
      task: task === 0 ? null : (this.#stmt.taskName.get(task) as string),
      host: host === null ? null : (this.#stmt.hostName.get(host) as string),
      tags: JSON.parse(this.#stmt.tagsJson.get(tags) as string) as Record<string, string>,
      ...stats,
    };
  }

  /**
   * Streams every sample of a run as CSV (header `metric,t,host,task,tags,value`; tags as JSON)
   * to `write`, in chunks of up to 1,000 rows, ordered by time, equal times in the order they
   * arrived. Blocks are read window by window (5 s of the run) as they are written out: memory
   * holds one window's samples, never the run. `write` must not call back into this store (the
   * connection is busy reading). Returns the row count.
   */
  exportSamplesCsv(runId: string, write: (chunk: string) => void): number {
    this.#assertOpen();
    const run = this.#stmt.runKey.get(runId) as number | undefined;
    write('metric,t,host,task,tags,value\n');
    if (run === undefined) return 0;
    const metricName = memo((id) => csvField(this.#stmt.metricName.get(id) as string));
    const hostName = memo((id) => csvField(this.#stmt.hostName.get(id) as string));
    const taskName = memo((id) => (id === 0 ? '' : csvField(this.#stmt.taskName.get(id) as string)));
    const tagsText = memo((id) => csvField(this.#stmt.tagsJson.get(id) as string));
    let count = 0;
    let lines: string[] = [];
    let window: Array<{ host: number; block: SampleBlock }> = [];
    const flushWindow = () => {
      const total = window.reduce((n, w) => n + w.block.count, 0);
      // Samples in arrival order (block by block), then a stable sort by time.
      const times = new Float64Array(total);
      const owner = new Uint32Array(total);
      const index = new Uint32Array(total);
      let k = 0;
      window.forEach((w, b) => {
        for (let i = 0; i < w.block.count; i++, k++) {
          times[k] = w.block.t0 + w.block.dts[i]!;
          owner[k] = b;
          index[k] = i;
        }
      });
      const order = Array.from({ length: total }, (_, i) => i).sort((a, b) => times[a]! - times[b]! || a - b);
      for (const k of order) {
        const { host, block } = window[owner[k]!]!;
        const i = index[k]!;
        lines.push(`${metricName(block.metrics[i]!)},${times[k]},${hostName(host)},${taskName(block.tasks[i]!)},${tagsText(block.tags[i]!)},${block.values[i]}\n`);
        count++;
        if (lines.length === CSV_ROWS_PER_CHUNK) {
          write(lines.join(''));
          lines = [];
        }
      }
      window = [];
    };
    for (const [host, t0, blockCount, data] of this.#stmt.blocksOfRun.iterate(run) as IterableIterator<[number, number, number, Buffer]>) {
      if (window.length > 0 && window[0]!.block.t0 !== t0) flushWindow();
      window.push({ host, block: decodeBlock(t0, blockCount, data) });
    }
    if (window.length > 0) flushWindow();
    if (lines.length > 0) write(lines.join(''));
    return count;
  }

  /** Closes the file (running SQLite's `PRAGMA optimize` first). Calling it again does nothing. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#db.pragma('optimize');
    } finally {
      this.#db.close();
    }
  }

  #runWithBuckets(runId: string): { id: number; bucket_ms: number | null } | undefined {
    return this.#stmt.runAndBucketMs.get(runId) as { id: number; bucket_ms: number | null } | undefined;
  }

  /** A prepared statement for dynamically built SQL, prepared once per distinct text. */
  #query(sql: string): Statement {
    let stmt = this.#queries.get(sql);
    if (stmt === undefined) {
      stmt = this.#db.prepare(sql).raw();
      this.#queries.set(sql, stmt);
    }
    return stmt;
  }

  #assertOpen(): void {
    if (this.#closed) throw new BoltError('BOLT_ERR_STORE_CLOSED', `the sink store ${this.file} is closed`, { details: { file: this.file } });
  }

  /** Runs `fn` in one IMMEDIATE transaction; any failure rolls it back and forgets cached ids. */
  #write<T>(fn: () => T): T {
    this.#assertOpen();
    try {
      return this.#tx.immediate(fn) as T;
    } catch (err) {
      this.#forgetCachedKeys();
      if (err instanceof BoltError) throw err;
      const e = err as Error & { code?: unknown };
      throw new BoltError('BOLT_ERR_STORE_WRITE_FAILED', `write to the sink store ${this.file} failed: ${e.message}`, {
        cause: err,
        details: { file: this.file, sqliteCode: e.code },
      });
    }
  }

  #forgetCachedKeys(): void {
    for (const cache of [this.#runKeys, this.#taskKeys, this.#hostKeys, this.#metricKeys, this.#tagKeys]) cache.clear();
    this.#runBuckets.clear();
    this.#digests.clear();
    this.#runSeries.clear();
    this.#plainSeries.clear();
    this.#seriesCount = 0;
    this.#runMetrics.clear();
  }

  #remember(cache: Map<string, number>, key: string, id: number): number {
    if (cache.size >= MAX_CACHE_ENTRIES) cache.clear();
    cache.set(key, id);
    return id;
  }

  #runKey(runId: string): number {
    const cached = this.#runKeys.get(runId);
    if (cached !== undefined) return cached;
    let id = this.#stmt.runKey.get(runId) as number | undefined;
    id ??= Number(this.#stmt.insertPlaceholderRun.run(runId, PLACEHOLDER_RUN_STATE, Date.now()).lastInsertRowid);
    return this.#remember(this.#runKeys, runId, id);
  }

  #taskKey(run: number, taskId: string): number {
    const key = `${run}\u0000${taskId}`;
    const cached = this.#taskKeys.get(key);
    if (cached !== undefined) return cached;
    let id = this.#stmt.taskKey.get(run, taskId) as number | undefined;
    id ??= Number(this.#stmt.insertTask.run(run, taskId).lastInsertRowid);
    return this.#remember(this.#taskKeys, key, id);
  }

  #hostKey(name: string): number {
    return this.#dimensionKey(this.#hostKeys, this.#stmt.hostKey, this.#stmt.insertHost, name);
  }

  #dimensionKey(cache: Map<string, number>, select: Statement, insert: Statement, value: string): number {
    const cached = cache.get(value);
    if (cached !== undefined) return cached;
    let id = select.get(value) as number | undefined;
    id ??= Number(insert.run(value).lastInsertRowid);
    return this.#remember(cache, value, id);
  }

  /** Returns false when the event's id was already stored. */
  #recordEvent(event: TaskEventRecord): boolean {
    const what = 'task event';
    requireObject(event, what);
    const id = requireName(event.id, what, 'id');
    const runId = requireName(event.runId, what, 'runId');
    const taskId = requireName(event.taskId, what, 'taskId');
    const hostName = requireName(event.host, what, 'host');
    if (!EVENT_KINDS.has(event.kind)) badRecord(what, 'kind', `one of ${[...EVENT_KINDS].join(', ')}`, event.kind);
    const at = requireNumber(event.at, what, 'at');
    const exitCode = optionalInteger(event.exitCode, what, 'exitCode');
    const durationMs = optionalNumber(event.durationMs, what, 'durationMs');
    const startedAt = optionalNumber(event.startedAt, what, 'startedAt');
    const stdoutTail = optionalString(event.stdoutTail, what, 'stdoutTail');
    const stderrTail = optionalString(event.stderrTail, what, 'stderrTail');
    const hostId = event.hostId === undefined ? undefined : requireName(event.hostId, what, 'hostId');

    const task = this.#taskKey(this.#runKey(runId), taskId);
    const host = this.#hostKey(hostName);
    const payload = JSON.stringify({ exitCode, durationMs, startedAt, stdoutTail, stderrTail, hostId });
    if (this.#stmt.insertEvent.run(id, task, host, event.kind, at, payload).changes === 0) return false;
    const state: HostState = event.kind === 'started' ? 'running' : event.kind;
    const start = startedAt ?? (event.kind === 'started' ? at : undefined);
    this.#stmt.upsertHostResult.run(
      task,
      host,
      state,
      exitCode ?? null,
      start ?? null,
      durationMs ?? null,
      stdoutTail ?? null,
      stderrTail ?? null,
    );
    return true;
  }

  #ingest(batchId: string, hostName: string, samples: readonly SampleInput[], batchRunId: string | undefined, buckets: Map<string, BucketDelta>): IngestResult {
    const what = 'metrics batch';
    requireName(batchId, what, 'batchId');
    const host = this.#hostKey(requireName(hostName, what, 'host'));
    if (!Array.isArray(samples as unknown)) badRecord(what, 'samples', 'an array', samples);
    if (batchRunId !== undefined) requireName(batchRunId, what, 'runId');
    if (this.#stmt.insertBatch.run(batchId, host, samples.length, Date.now()).changes === 0) return { duplicate: true, stored: 0 };

    // The batch's blocks (one per run and window; usually one or two) and the last one used.
    const blocks = new Map<string, BlockBuilder>();
    let block: BlockBuilder | undefined;
    // The batch's run and its bucket width, resolved at its first sample.
    let batchRun: number | null = null;
    let width = 0;
    for (let i = 0; i < samples.length; i++) {
      const s = samples[i];
      if (typeof s !== 'object' || s === null) badRecord(what, `samples[${i}]`, 'an object', s);
      if (typeof s.t !== 'number' || !(Math.abs(s.t) <= MAX_TIME_MS)) badRecord(what, `samples[${i}].t`, 'a time in epoch ms', s.t);
      if (typeof s.value !== 'number' || !Number.isFinite(s.value)) badRecord(what, `samples[${i}].value`, 'a finite number', s.value);
      if (typeof s.metric !== 'string' || s.metric === '') badRecord(what, `samples[${i}].metric`, 'a non-empty string', s.metric);
      if (s.runId !== undefined || s.taskId !== undefined) {
        this.#ingestOwnRun(s, i, batchRunId, blocks, buckets);
        continue;
      }
      if (batchRunId !== undefined && batchRun === null) {
        batchRun = this.#runKey(batchRunId);
        width = this.#bucketWidth(batchRun);
      }
      const run = batchRun;
      const series = this.#series(s, i, run);
      let task = 0;
      if (run !== null) {
        if (series.run !== run) {
          series.task = series.taskName === undefined ? 0 : this.#taskKey(run, series.taskName);
          this.#listRunMetric(run, series.metric);
          series.run = run;
        }
        task = series.task;
      }
      const t = Math.round(s.t);
      const t0 = blockStart(t);
      if (block === undefined || block.run !== run || block.t0 !== t0) block = blockOf(blocks, run, t0);
      block.add(series.metric, series.tags, task, t, s.value);
      if (run === null) continue;
      const start = Math.floor(t / width) * width;
      let delta = series.delta;
      if (delta === null || series.write !== this.#writes || delta.run !== run || delta.t !== start) {
        delta = this.#bucketDelta(buckets, run, series.metric, task, series.tags, start);
        series.delta = delta;
        series.write = this.#writes;
      }
      delta.values.push(s.value);
    }
    for (const b of blocks.values()) this.#stmt.insertBlock.run(b.run, host, b.t0, b.count, b.encode());
    return { duplicate: false, stored: samples.length };
  }

  /** Lists `metric` among the run's metrics (run_metrics), once per run and metric. */
  #listRunMetric(run: number, metric: number): void {
    const key = `${run} ${metric}`;
    if (this.#runMetrics.has(key)) return;
    if (this.#runMetrics.size >= MAX_CACHE_ENTRIES) this.#runMetrics.clear();
    this.#stmt.insertRunMetric.run(run, metric);
    this.#runMetrics.add(key);
  }

  /** A sample that names its own run or task (collectors leave both to the batch). */
  #ingestOwnRun(s: SampleInput, i: number, batchRunId: string | undefined, blocks: Map<string, BlockBuilder>, buckets: Map<string, BucketDelta>): void {
    const what = 'metrics batch';
    const field = `samples[${i}]`;
    let run: number | null = null;
    let task: number | null = null;
    const runId = s.runId ?? batchRunId;
    if (runId !== undefined) run = this.#runKey(requireName(runId, what, `${field}.runId`));
    const taskId = s.taskId ?? (run !== null ? taskTag(s.tags) : undefined);
    if (taskId !== undefined) {
      if (run === null) badRecord(what, `${field}.runId`, 'set when taskId is set', s.runId);
      task = this.#taskKey(run, requireName(taskId, what, `${field}.taskId`));
    }
    const metric = this.#dimensionKey(this.#metricKeys, this.#stmt.metricKey, this.#stmt.insertMetric, s.metric);
    const tags = this.#dimensionKey(this.#tagKeys, this.#stmt.tagsKey, this.#stmt.insertTags, canonicalTags(s.tags, what, `${field}.tags`, run !== null));
    const t = Math.round(s.t);
    blockOf(blocks, run, blockStart(t)).add(metric, tags, task ?? 0, t, s.value);
    if (run === null) return;
    this.#listRunMetric(run, metric);
    const width = this.#bucketWidth(run);
    this.#bucketDelta(buckets, run, metric, task ?? 0, tags, Math.floor(t / width) * width).values.push(s.value);
  }

  /**
   * The series of a sample that takes its run from its batch (`run`, null: outside any run), from
   * the cache or resolved and checked as `#ingestOwnRun` does (same errors, in the same order).
   */
  #series(s: SampleInput, i: number, run: number | null): SeriesEntry {
    const cache = run === null ? this.#plainSeries : this.#runSeries;
    const text = tagsText(s.tags);
    const cached = text === null ? undefined : cache.get(s.metric)?.get(text);
    if (cached !== undefined) return cached;
    const what = 'metrics batch';
    const field = `samples[${i}]`;
    const taskId = run !== null ? taskTag(s.tags) : undefined;
    const taskName = taskId === undefined ? undefined : requireName(taskId, what, `${field}.taskId`);
    const metric = this.#dimensionKey(this.#metricKeys, this.#stmt.metricKey, this.#stmt.insertMetric, s.metric);
    const tags = this.#dimensionKey(this.#tagKeys, this.#stmt.tagsKey, this.#stmt.insertTags, canonicalTags(s.tags, what, `${field}.tags`, run !== null));
    const entry: SeriesEntry = { metric, tags, taskName, run: -1, task: 0, delta: null, write: 0 };
    // tagsText is null only for tags canonicalTags refuses, so here it is a string.
    if (this.#seriesCount >= MAX_CACHE_ENTRIES) {
      this.#runSeries.clear();
      this.#plainSeries.clear();
      this.#seriesCount = 0;
    }
    let byTags = cache.get(s.metric);
    if (byTags === undefined) cache.set(s.metric, (byTags = new Map()));
    byTags.set(text!, entry);
    this.#seriesCount++;
    return entry;
  }

  /** The width of a run's buckets: set on its first aggregated sample, kept for the run's life. */
  #bucketWidth(run: number): number {
    const cached = this.#runBuckets.get(run);
    if (cached !== undefined) return cached;
    let width = this.#stmt.runBucketMs.get(run) as number | null | undefined;
    if (width == null) {
      width = this.#bucketMs;
      this.#stmt.setRunBucketMs.run(width, run);
    }
    this.#runBuckets.set(run, width);
    return width;
  }

  /** The values this write adds to one bucket (run, metric, task, tags, bucket start). */
  #bucketDelta(buckets: Map<string, BucketDelta>, run: number, metric: number, task: number, tags: number, start: number): BucketDelta {
    const key = `${run} ${metric} ${task} ${tags} ${start}`;
    let delta = buckets.get(key);
    if (delta === undefined) {
      delta = { run, metric, task, tags, t: start, values: [] };
      buckets.set(key, delta);
    }
    return delta;
  }

  /**
   * Adds the values of one write to their bucket rows (read, merged, written back). The digests
   * of recent buckets stay decoded in #digests; a failed write clears them (see #write), so they
   * never hold values the file does not.
   */
  #applyBuckets(buckets: Map<string, BucketDelta>): void {
    const { bucketDigest, upsertBucket } = this.#stmt;
    for (const [key, d] of buckets) {
      let digest = this.#digests.get(key);
      if (digest === undefined) {
        const stored = bucketDigest.get(d.run, d.metric, d.task, d.tags, d.t) as Buffer | undefined;
        digest = stored === undefined ? new ValueDigest() : ValueDigest.decode(stored);
      } else {
        // Re-inserted below, so the map's order is least recently written first.
        this.#digests.delete(key);
      }
      for (const v of d.values) digest.add(v);
      upsertBucket.run(d.run, d.metric, d.task, d.tags, d.t, digest.count, digest.sum, digest.min, digest.max, digest.quantile(0.5), digest.quantile(0.95), digest.encode());
      this.#digests.set(key, digest);
      if (this.#digests.size > MAX_CACHED_DIGESTS) this.#digests.delete(this.#digests.keys().next().value!);
    }
  }

  #commitTaskStatus(status: TaskStatusRecord): { duplicate: boolean } {
    const what = 'task status';
    requireObject(status, what);
    const runId = requireName(status.runId, what, 'runId');
    const taskId = requireName(status.taskId, what, 'taskId');
    if (!FINAL_STATES.has(status.state)) badRecord(what, 'state', `one of ${[...FINAL_STATES].join(', ')}`, status.state);
    requireObject(status.hosts, what, 'hosts');
    const optionalCount = (field: 'started' | 'timedout' | 'cancelled') =>
      status.hosts[field] === undefined ? 0 : requireCount(status.hosts[field], what, `hosts.${field}`);
    const counts = {
      total: requireCount(status.hosts.total, what, 'hosts.total'),
      ok: requireCount(status.hosts.ok, what, 'hosts.ok'),
      failed: requireCount(status.hosts.failed, what, 'hosts.failed'),
      lost: requireCount(status.hosts.lost, what, 'hosts.lost'),
      started: optionalCount('started'),
      timedout: optionalCount('timedout'),
      cancelled: optionalCount('cancelled'),
    };
    if (counts.ok + counts.failed + counts.lost !== counts.total || counts.timedout + counts.cancelled > counts.failed || counts.started > counts.total) {
      badRecord(what, 'hosts', 'counts with ok + failed + lost = total, timedout + cancelled <= failed and started <= total', status.hosts);
    }
    const startedAt = optionalNumber(status.startedAt, what, 'startedAt');
    const finishedAt = optionalNumber(status.finishedAt, what, 'finishedAt');
    const startSkewMs = optionalNumber(status.startSkewMs, what, 'startSkewMs');
    const unreported = status.unreported ?? [];
    if (!Array.isArray(unreported as unknown)) badRecord(what, 'unreported', 'an array', unreported);
    const unreportedHosts = unreported.map((u, i) => {
      requireObject(u, what, `unreported[${i}]`);
      if (u.state !== 'timedout' && u.state !== 'lost') badRecord(what, `unreported[${i}].state`, 'timedout or lost', u.state);
      return { host: requireName(u.host, what, `unreported[${i}].host`), state: u.state };
    });

    const task = this.#taskKey(this.#runKey(runId), taskId);
    const stored = this.#stmt.taskState.get(task) as
      | { state: TaskState; hosts_total: number; hosts_ok: number; hosts_failed: number; hosts_lost: number; hosts_started: number; hosts_timedout: number; hosts_cancelled: number }
      | undefined;
    if (stored !== undefined && stored.state !== 'running') {
      const same =
        stored.state === status.state &&
        stored.hosts_total === counts.total &&
        stored.hosts_ok === counts.ok &&
        stored.hosts_failed === counts.failed &&
        stored.hosts_lost === counts.lost &&
        stored.hosts_started === counts.started &&
        stored.hosts_timedout === counts.timedout &&
        stored.hosts_cancelled === counts.cancelled;
      if (same) return { duplicate: true };
      throw new BoltError(
        'BOLT_ERR_STORE_STATUS_CONFLICT',
        `task ${runId}/${taskId} was already committed as ${stored.state} (hosts ok ${stored.hosts_ok}, failed ${stored.hosts_failed}, lost ${stored.hosts_lost} of ${stored.hosts_total}); refusing ${status.state}`,
        { details: { runId, taskId, stored: stored.state, refused: status.state } },
      );
    }
    for (const u of unreportedHosts) this.#stmt.recordUnreported.run(task, this.#hostKey(u.host), u.state);
    const span = this.#stmt.hostResultSpan.get(task) as { first: number | null; last: number | null; end: number | null };
    const skew = span.first !== null && span.last !== null ? span.last - span.first : null;
    this.#stmt.finishTask.run({
      state: status.state,
      ...counts,
      startedAt: startedAt ?? span.first,
      finishedAt: finishedAt ?? span.end,
      startSkewMs: startSkewMs ?? skew,
      task,
    });
    return { duplicate: false };
  }
}

function migrate(db: Database.Database, file: string): void {
  const latest = MIGRATIONS[MIGRATIONS.length - 1]!.version;
  const run = db.transaction(() => {
    const hasVersionTable = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'`).get() !== undefined;
    if (!hasVersionTable) {
      const tables = db.prepare(`SELECT count(*) FROM sqlite_master WHERE type = 'table'`).pluck().get() as number;
      if (tables > 0) {
        throw new BoltError('BOLT_ERR_STORE_OPEN_FAILED', `${file} is a SQLite database but not a Bolt sink store (it has tables and no schema_version)`, {
          details: { file },
        });
      }
      db.exec('CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)');
    }
    const current = (db.prepare('SELECT max(version) FROM schema_version').pluck().get() as number | null) ?? 0;
    if (current > latest) {
      throw new BoltError(
        'BOLT_ERR_STORE_SCHEMA_TOO_NEW',
        `${file} has schema version ${current}; this sink knows versions up to ${latest}`,
        { details: { file, version: current, known: latest } },
      );
    }
    const record = db.prepare('INSERT INTO schema_version (version, applied_at) VALUES (?, ?)');
    for (const migration of MIGRATIONS) {
      if (migration.version <= current) continue;
      db.exec(migration.sql);
      migration.migrate?.(db);
      record.run(migration.version, Date.now());
    }
  });
  // IMMEDIATE: two processes opening a fresh file at once must not both run migration 1.
  run.immediate();
}

function runSummary(row: RunRow): RunSummary {
  return {
    id: row.run_id,
    jobName: row.job_name,
    state: row.state,
    createdAt: row.created_at,
    startedAt: row.started_at,
    finishedAt: row.finished_at,
  };
}

function taskFromRow(row: TaskRow): StoredTask {
  return {
    runId: row.run_id,
    taskId: row.task_id,
    state: row.state,
    hosts: {
      total: row.hosts_total,
      started: row.hosts_started,
      ok: row.hosts_ok,
      failed: row.hosts_failed,
      timedout: row.hosts_timedout,
      cancelled: row.hosts_cancelled,
      lost: row.hosts_lost,
    },
    startedAt: row.started_at,
    finishedAt: row.finished_at,
    startSkewMs: row.start_skew_ms,
    statusPublishedAt: row.status_published_at,
  };
}

function dispatchFromRow(row: DispatchRow): DispatchRecord {
  return {
    runId: row.run_id,
    taskId: row.task_id,
    commandId: row.command_id,
    targets: JSON.parse(row.targets) as DispatchRecord['targets'],
    startAt: row.start_at,
    timeoutMs: row.timeout_ms,
    failure: JSON.parse(row.failure) as unknown,
    dispatchedAt: row.dispatched_at,
  };
}

/** A stored event as a record again; output tails are left out (an aggregator does not need them). */
function eventFromRow(runId: string, taskId: string, row: EventRow): TaskEventRecord {
  const payload = JSON.parse(row.payload) as { exitCode?: number; durationMs?: number; startedAt?: number; hostId?: string };
  return {
    id: row.message_id,
    runId,
    taskId,
    host: row.host,
    kind: row.kind,
    at: row.at,
    ...(payload.exitCode !== undefined && { exitCode: payload.exitCode }),
    ...(payload.durationMs !== undefined && { durationMs: payload.durationMs }),
    ...(payload.startedAt !== undefined && { startedAt: payload.startedAt }),
    ...(payload.hostId !== undefined && { hostId: payload.hostId }),
  };
}

/**
 * Tags as JSON with sorted keys, so equal tag sets intern to one row. No tags: `{}`. `withoutTask`:
 * the `task` tag is left out (in a run it is the sample's task, stored as such).
 */
function canonicalTags(tags: Record<string, string> | undefined, what: string, field: string, withoutTask: boolean): string {
  if (tags === undefined) return '{}';
  if (typeof tags !== 'object' || tags === null || Array.isArray(tags)) badRecord(what, field, 'an object of strings', tags);
  const keys = Object.keys(tags);
  if (keys.length > 1) keys.sort();
  const sorted: Record<string, string> = {};
  for (const key of keys) {
    const value = tags[key];
    if (typeof value !== 'string') badRecord(what, `${field}.${key}`, 'a string', value);
    if (withoutTask && key === 'task') continue;
    sorted[key] = value;
  }
  return JSON.stringify(sorted);
}

/**
 * Tags as given, as an unambiguous text (each key and value prefixed by its length, key order
 * kept): the series cache key. '' for none; null when they are not an object of strings (which
 * canonicalTags refuses).
 */
function tagsText(tags: unknown): string | null {
  if (tags === undefined) return '';
  if (typeof tags !== 'object' || tags === null || Array.isArray(tags)) return null;
  let text = '';
  for (const key of Object.keys(tags)) {
    const value = (tags as Record<string, unknown>)[key];
    if (typeof value !== 'string') return null;
    text += `${key.length}:${key}${value.length}:${value}`;
  }
  return text;
}

/** The `task` tag of a sample's tags, when there is one (type checked by canonicalTags). */
function taskTag(tags: Record<string, string> | undefined): string | undefined {
  if (typeof tags !== 'object' || tags === null) return undefined;
  const task = (tags as Record<string, unknown>).task;
  return task === undefined ? undefined : (task as string);
}

function csvField(value: string): string {
  return /[",\r\n]/.test(value) ? `"${value.replaceAll('"', '""')}"` : value;
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Summary rows in their order: by task (none first, then by name), metric, host (all hosts first) and tags. */
export function orderSummaryRows(rows: MetricSummary[]): MetricSummary[] {
  const keyed = rows.map((row) => ({ row, tags: JSON.stringify(row.tags) }));
  keyed.sort((a, b) => compareTask(a.row.task, b.row.task) || compare(a.row.metric, b.row.metric) || compareTask(a.row.host, b.row.host) || compare(a.tags, b.tags));
  return keyed.map((k) => k.row);
}

/** Orders names with null (no task, all hosts) first. */
function compareTask(a: string | null, b: string | null): number {
  if (a === b) return 0;
  if (a === null) return -1;
  if (b === null) return 1;
  return compare(a, b);
}

/** The batch's block for a run and window, created when it has none yet. */
function blockOf(blocks: Map<string, BlockBuilder>, run: number | null, t0: number): BlockBuilder {
  const key = `${run} ${t0}`;
  let block = blocks.get(key);
  if (block === undefined) {
    block = new BlockBuilder(run, t0);
    blocks.set(key, block);
  }
  return block;
}

/** `fn` with its results remembered by argument. */
function memo<T>(fn: (id: number) => T): (id: number) => T {
  const seen = new Map<number, T>();
  return (id) => {
    if (seen.has(id)) return seen.get(id)!;
    const value = fn(id);
    seen.set(id, value);
    return value;
  };
}

function badRecord(what: string, field: string, expected: string, got: unknown): never {
  let shown: string;
  try {
    shown = got === undefined ? 'nothing' : (JSON.stringify(got) ?? String(got));
  } catch {
    shown = String(got);
  }
  if (shown.length > 80) shown = `${shown.slice(0, 77)}...`;
  const where = field === '' ? what : `${what}: field "${field}"`;
  throw new BoltError('BOLT_ERR_STORE_BAD_RECORD', `${where} must be ${expected} (got ${shown})`, { details: { record: what, field } });
}

function requireObject(value: unknown, what: string, field = ''): asserts value is object {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) badRecord(what, field, 'an object', value);
}

function requireName(value: unknown, what: string, field: string): string {
  if (typeof value !== 'string' || value === '') badRecord(what, field, 'a non-empty string', value);
  return value;
}

function requireNumber(value: unknown, what: string, field: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) badRecord(what, field, 'a finite number', value);
  return value;
}

function requireCount(value: unknown, what: string, field: string): number {
  if (!Number.isSafeInteger(value) || (value as number) < 0) badRecord(what, field, 'a whole number of at least 0', value);
  return value as number;
}

function optionalNumber(value: unknown, what: string, field: string): number | undefined {
  return value === undefined ? undefined : requireNumber(value, what, field);
}

function optionalInteger(value: unknown, what: string, field: string): number | undefined {
  if (value === undefined) return undefined;
  if (!Number.isSafeInteger(value)) badRecord(what, field, 'a whole number', value);
  return value as number;
}

function optionalString(value: unknown, what: string, field: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string') badRecord(what, field, 'a string', value);
  return value;
}
