/**
 * writer-sqlite: the sink's storage plugin. Owns `<dataDir>/sink.sqlite` (a SinkStore), stores
 * what reaches the sink's bus and answers the sink's queries (see README.md, "Plugin").
 *
 * Subscribes `sink.task.event` and `sink.metrics.batch` (group commit, idempotent by message id;
 * a batch comes with its `samples`, or as the message's JSON text in `json` with `sampleCount`),
 * `run.updated` and `run.task.dispatched`. Provides `sink.store.commitTaskStatus` (durable),
 * `sink.store.markPublished`, `sink.store.pending`, `sink.runs`, `sink.run`, `sink.metrics` and
 * `sink.store.stats`. Every service but the last first stores the queued messages, so a query sees
 * everything received before it. Publishes `sink.store.congestion` while more is queued than it
 * stores quickly (see README.md, "Backpressure").
 */
import path from 'node:path';
import { BoltError, defineWriter, type PluginContext } from 'bolt-plugin-sdk';
import { IngestQueue, type IngestSettings } from './ingest.ts';
import { metricsView } from './query.ts';
import {
  commitRecord,
  statusOfTask,
  type CommitTaskStatusRequest,
  type CommitTaskStatusResponse,
  type MetricsView,
  type PendingResponse,
  type RunsView,
  type RunView,
} from './services.ts';
import { DEFAULT_STORE_FILENAME, SinkStore, type DispatchRecord, type RunRecord, type SampleInput, type TaskEventRecord } from './store.ts';

interface Config extends IngestSettings {
  busyTimeoutMs: number;
  cacheSizeMb: number;
  bucketMs: number;
}

interface Running {
  store: SinkStore;
  queue: IngestQueue;
  statsTimer: NodeJS.Timeout;
  congestionTimer: NodeJS.Timeout;
}

/**
 * How long a `sink.store.congestion` announcement asks the transport to stop reading, at most; it
 * is renewed every CONGESTION_RENEW_MS while the queue stays congested, so a writer that ends while
 * congested leaves the transport deaf for this long at most.
 */
const CONGESTION_HOLD_MS = 3000;
const CONGESTION_RENEW_MS = 1000;

let running: Running | null = null;

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function badRequest(service: string, expected: string): never {
  throw new BoltError('BOLT_ERR_STORE_BAD_RECORD', `${service} takes ${expected}`, { details: { record: service, field: '' } });
}

function optionalNumber(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

/** The run record of a `run.updated` message; the scheduler's run may name fields a little differently. */
function runRecord(store: SinkStore, run: Record<string, unknown>): RunRecord {
  const id = (run.id ?? run.runId) as string;
  // The scheduler's run.updated names the job in `job` and carries the parsed job as `spec`;
  // other writers of runs may send the job itself in `job`.
  const job = isObject(run.spec) ? run.spec : isObject(run.job) ? run.job : undefined;
  const jobName = run.jobName ?? run.name ?? (typeof run.job === 'string' ? run.job : job?.name);
  return {
    id,
    jobName: typeof jobName === 'string' && jobName !== '' ? jobName : null,
    ...(job !== undefined && { job }),
    state: run.state as string,
    createdAt: optionalNumber(run.createdAt) ?? store.getRun(id)?.createdAt ?? Date.now(),
    startedAt: optionalNumber(run.startedAt) ?? null,
    finishedAt: optionalNumber(run.finishedAt) ?? optionalNumber(run.endedAt) ?? null,
  };
}

async function commit(store: SinkStore, queue: IngestQueue, data: unknown): Promise<CommitTaskStatusResponse> {
  if (!isObject(data)) badRequest('sink.store.commitTaskStatus', '{ runId, taskId, state, hosts, lost? }');
  const req = data as unknown as CommitTaskStatusRequest;
  // The events received before the status are stored first, and made durable with it.
  await queue.settle();
  let outcome: CommitTaskStatusResponse['outcome'];
  try {
    outcome = store.commitTaskStatus(commitRecord(req)).duplicate ? 'duplicate' : 'committed';
  } catch (err) {
    if (!(err instanceof BoltError) || err.code !== 'BOLT_ERR_STORE_STATUS_CONFLICT') throw err;
    outcome = 'conflict';
  }
  const task = store.getTask(req.runId, req.taskId)!;
  return { status: statusOfTask(task), outcome, publishedAt: task.statusPublishedAt };
}

function runView(store: SinkStore, runId: string): RunView | null {
  const run = store.getRun(runId);
  if (run === undefined) return null;
  const results = store.listHostResults(runId);
  const tasks = store.listTasks(runId).map((task) => {
    const latest = store.listDispatches(runId, task.taskId).at(-1);
    let dispatch = null;
    if (latest !== undefined) {
      const { runId: _r, taskId: _t, ...rest } = latest;
      dispatch = rest;
    }
    return { ...task, dispatch, results: results.filter((r) => r.taskId === task.taskId) };
  });
  return { run, tasks };
}

function subscribe(ctx: PluginContext<Config>, store: SinkStore, queue: IngestQueue): void {
  const { bus, log } = ctx;
  bus.subscribe('sink.task.event', (data) => {
    if (!isObject(data) || typeof data.id !== 'string') return void log.warn({ data }, 'sink.task.event without an id dropped');
    queue.addEvent(data as unknown as TaskEventRecord);
  });
  bus.subscribe('sink.metrics.batch', (data) => {
    const text = isObject(data) && typeof data.json === 'string' && Number.isSafeInteger(data.sampleCount) && (data.sampleCount as number) >= 0;
    if (!isObject(data) || typeof data.id !== 'string' || (!Array.isArray(data.samples) && !text)) {
      return void log.warn({ id: isObject(data) ? data.id : undefined }, 'sink.metrics.batch without an id or samples dropped');
    }
    const batch = { batchId: data.id, host: data.host as string, ...(typeof data.runId === 'string' && { runId: data.runId }) };
    if (Array.isArray(data.samples)) queue.addBatch({ ...batch, samples: data.samples as SampleInput[] });
    else queue.addBatchText({ ...batch, json: data.json as string, sampleCount: data.sampleCount as number });
  });
  // Runs and dispatches are rare: stored at once, each in its own transaction.
  bus.subscribe('run.updated', (data) => {
    const run = isObject(data) ? data.run : undefined;
    if (!isObject(run)) return void log.warn('run.updated without a run dropped');
    try {
      store.upsertRun(runRecord(store, run));
    } catch (err) {
      log.warn({ code: (err as BoltError).code, err: String(err) }, 'run.updated not stored');
    }
  });
  bus.subscribe('run.task.dispatched', (data) => {
    try {
      const duplicate = store.recordDispatch(data as DispatchRecord).duplicate;
      if (duplicate) log.debug({ commandId: (data as DispatchRecord).commandId }, 'dispatch already stored');
    } catch (err) {
      log.warn({ code: (err as BoltError).code, err: String(err) }, 'run.task.dispatched not stored');
    }
  });
}

function provide(ctx: PluginContext<Config>, store: SinkStore, queue: IngestQueue): void {
  const { bus } = ctx;
  bus.provide('sink.store.commitTaskStatus', (data) => commit(store, queue, data));
  bus.provide('sink.store.markPublished', (data) => {
    if (!isObject(data) || typeof data.runId !== 'string' || typeof data.taskId !== 'string') badRequest('sink.store.markPublished', '{ runId, taskId, at? }');
    return store.markStatusPublished(data.runId, data.taskId, optionalNumber(data.at) ?? Date.now());
  });
  bus.provide('sink.store.pending', async (data): Promise<PendingResponse> => {
    await queue.settle();
    const eventsSince = isObject(data) ? optionalNumber(data.eventsSince) : undefined;
    return {
      tasks: store.listPendingTasks(eventsSince === undefined ? {} : { eventsSince }),
      unpublished: store.listUnpublishedTasks().map(statusOfTask),
    };
  });
  bus.provide('sink.runs', async (data): Promise<RunsView> => {
    await queue.settle();
    const filter = isObject(data) ? data : {};
    return store.listRuns({
      ...(typeof filter.state === 'string' && { state: filter.state }),
      ...(typeof filter.job === 'string' && { job: filter.job }),
      ...(optionalNumber(filter.limit) !== undefined && { limit: filter.limit as number }),
    });
  });
  bus.provide('sink.run', async (data): Promise<RunView | null> => {
    if (!isObject(data) || typeof data.runId !== 'string') badRequest('sink.run', '{ runId }');
    await queue.settle();
    return runView(store, data.runId);
  });
  bus.provide('sink.metrics', async (data): Promise<MetricsView> => {
    await queue.settle();
    return metricsView(store, data);
  });
  bus.provide('sink.store.stats', () => ({ ...queue.stats, pending: queue.pending, pendingSamples: queue.pendingSamples, file: store.file }));
}

export default defineWriter<Config>({
  start(ctx) {
    const { config, log } = ctx;
    const file = path.join(ctx.dataDir, DEFAULT_STORE_FILENAME);
    const store = new SinkStore(file, { busyTimeoutMs: config.busyTimeoutMs, cacheSizeMb: config.cacheSizeMb, bucketMs: config.bucketMs });
    const announce = (congested: boolean) => {
      const pendingSamples = queue.pendingSamples;
      ctx.bus.publish('sink.store.congestion', congested ? { congested, holdMs: CONGESTION_HOLD_MS, pendingSamples } : { congested, pendingSamples });
    };
    const queue: IngestQueue = new IngestQueue(store, config, log, (congested) => {
      log.debug({ pendingSamples: queue.pendingSamples }, congested ? 'sink store congested: asking the transport to stop reading' : 'sink store caught up');
      announce(congested);
    });
    const congestionTimer = setInterval(() => {
      if (queue.congested) announce(true);
    }, CONGESTION_RENEW_MS);
    congestionTimer.unref();
    subscribe(ctx, store, queue);
    provide(ctx, store, queue);
    let reported = { ...queue.stats };
    const statsTimer = setInterval(() => {
      const now = queue.stats;
      if (now.flushes === reported.flushes && now.dropped === reported.dropped) return;
      log.debug({ ...now, pending: queue.pending }, 'sink store ingest');
      reported = { ...now };
    }, 60_000);
    statsTimer.unref();
    running = { store, queue, statsTimer, congestionTimer };
    log.info({ file, schemaVersion: store.schemaVersion, flushIntervalMs: config.flushIntervalMs, bucketMs: config.bucketMs }, 'sink store open');
  },
  stop(ctx) {
    if (running === null) return;
    const { store, queue, statsTimer, congestionTimer } = running;
    running = null;
    clearInterval(statsTimer);
    clearInterval(congestionTimer);
    queue.close();
    if (queue.pending > 0) ctx.log.error({ pending: queue.pending }, 'sink store closed with messages not stored');
    ctx.log.info({ ...queue.stats }, 'sink store closed');
    store.close();
  },
});
