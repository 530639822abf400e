/**
 * The bus services of writer-sqlite: what they take and return, and the mapping between the
 * `task.status` message (host counts as the server sees them) and the store's host counts.
 * Other plugins import these types with `import type` only; nothing here is needed at run time
 * outside this plugin.
 */
import { BoltError } from '../../plugin-sdk/src/errors.ts';
import type { TaskHostCounts, TaskStatusMessage } from '../../plugin-sdk/src/schemas/wire.ts';
import type { BucketSeries, DispatchRecord, HostCounts, HostResult, PendingTask, RunMetricsSummary, RunSummary, Series, StoredRun, StoredTask, TaskStatusRecord, UnreportedHost } from './store.ts';

/**
 * The `task.status` bus message: the wire message without envelope, plus `lost` (hosts that never
 * reported because the health monitor declared them lost; present only when not 0).
 * finished + failed + timedout + cancelled + lost = total.
 */
export type TaskStatus = Omit<TaskStatusMessage, 'v' | 'type' | 'id'> & { lost?: number };

/** `sink.store.commitTaskStatus` request: the status plus what the store records with it. */
export interface CommitTaskStatusRequest extends TaskStatus {
  /** Earliest start instant among the hosts (server clock); default: derived from stored host results. */
  startedAt?: number;
  finishedAt?: number;
  startSkewMs?: number;
  /** Hosts decided without a final event from them. */
  unreported?: UnreportedHost[];
}

/**
 * `sink.store.commitTaskStatus` response. `status` is the status now committed: the request's, or
 * (outcome `conflict`) the one committed first, which stands. `publishedAt` is set when that status
 * was already marked published (`sink.store.markPublished`): do not publish it again.
 */
export interface CommitTaskStatusResponse {
  status: TaskStatus;
  outcome: 'committed' | 'duplicate' | 'conflict';
  publishedAt: number | null;
}

/** `sink.store.pending` response: what an aggregator needs to rebuild its state after a restart. */
export interface PendingResponse {
  /** Tasks without a committed final status (dispatched, or with events since `eventsSince`). */
  tasks: PendingTask[];
  /** Committed final statuses never marked published. */
  unpublished: TaskStatus[];
}

/** One task of `sink.run`: the stored task, its latest dispatch and its per-host results. */
export interface RunTaskView extends StoredTask {
  /** The latest dispatch (targets, start instant, timeout), or null when none was recorded. */
  dispatch: Omit<DispatchRecord, 'runId' | 'taskId'> | null;
  results: HostResult[];
}

/** `sink.run` response (null when the run is unknown). */
export interface RunView {
  run: StoredRun;
  tasks: RunTaskView[];
}

/** `sink.runs` response. */
export type RunsView = RunSummary[];

/** The statistics `agg` can pick out of the aggregate buckets. */
export const BUCKET_STATS = ['count', 'sum', 'min', 'mean', 'p50', 'p95', 'max'] as const;
export type BucketStat = (typeof BUCKET_STATS)[number];

/** What `sink.metrics` can return: see MetricsView. */
export type MetricsAgg = 'fleet' | BucketStat | 'raw' | 'summary';

/**
 * `sink.metrics` request (the query of `GET /api/runs/:id/metrics`). `task` and `taskId` are the
 * same filter. `agg` defaults to `raw` with `host`, else `fleet`.
 */
export interface MetricsRequest {
  runId: string;
  metric?: string;
  host?: string;
  task?: string;
  taskId?: string;
  from?: number;
  to?: number;
  agg?: MetricsAgg;
}

/** One metric's raw series: one per host, task and tag set (Series names its metric). */
export type RawSeriesView = Series;
/** One metric's aggregate buckets across hosts, every statistic. */
export type FleetSeriesView = BucketSeries & { metric: string };
/** One statistic of one metric's aggregate buckets across hosts, as `t` and `values`. */
export interface StatSeriesView {
  metric: string;
  task: string | null;
  tags: Record<string, string>;
  bucketMs: number;
  stat: BucketStat;
  t: number[];
  values: number[];
}

/**
 * `sink.metrics` response, by `agg`: `raw` RawSeriesView[]; `fleet` FleetSeriesView[]; a
 * statistic StatSeriesView[]; `summary` RunMetricsSummary. Without `metric`, every metric of the run.
 */
export type MetricsView = RawSeriesView[] | FleetSeriesView[] | StatSeriesView[] | RunMetricsSummary;

/**
 * The store's host counts for a task.status: finished is `ok`; failed, timedout and cancelled are
 * all `failed` (with timedout and cancelled broken out). The store checks the numbers.
 */
export function storeCounts(status: TaskStatus): HostCounts {
  const h = status.hosts as TaskHostCounts | undefined;
  if (typeof h !== 'object' || h === null) {
    throw new BoltError('BOLT_ERR_STORE_BAD_RECORD', 'task status: field "hosts" must be an object of host counts', { details: { record: 'task status', field: 'hosts' } });
  }
  const lost = status.lost ?? 0;
  return {
    total: h.total,
    started: h.started,
    ok: h.finished,
    failed: h.failed + h.timedout + h.cancelled,
    timedout: h.timedout,
    cancelled: h.cancelled,
    lost,
  };
}

/** The task.status of a task whose final status is committed. */
export function statusOfTask(task: StoredTask): TaskStatus {
  if (task.state === 'running') throw new TypeError(`task ${task.runId}/${task.taskId} has no final status`);
  const h = task.hosts;
  const hosts: TaskHostCounts = {
    total: h.total,
    started: h.started,
    finished: h.ok,
    failed: h.failed - h.timedout - h.cancelled,
    timedout: h.timedout,
    cancelled: h.cancelled,
  };
  return { runId: task.runId, taskId: task.taskId, state: task.state, hosts, ...(h.lost > 0 && { lost: h.lost }) };
}

/** The store's record for a commit request. */
export function commitRecord(req: CommitTaskStatusRequest): TaskStatusRecord {
  return {
    runId: req.runId,
    taskId: req.taskId,
    state: req.state,
    hosts: storeCounts(req),
    ...(req.startedAt !== undefined && { startedAt: req.startedAt }),
    ...(req.finishedAt !== undefined && { finishedAt: req.finishedAt }),
    ...(req.startSkewMs !== undefined && { startSkewMs: req.startSkewMs }),
    ...(req.unreported !== undefined && { unreported: req.unreported }),
  };
}
