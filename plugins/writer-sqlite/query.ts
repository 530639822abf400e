/**
 * The `sink.metrics` service: a run's metrics as raw per-host series, as aggregates across hosts
 * (from the bucket rows kept at ingest, never by scanning samples), or as a per-task summary.
 * See README.md, "Metrics queries".
 */
import { BoltError } from '../../plugin-sdk/src/errors.ts';
import { BUCKET_STATS, type BucketStat, type MetricsAgg, type MetricsRequest, type MetricsView } from './services.ts';
import { orderSummaryRows, type MetricSummary, type SinkStore } from './store.ts';

/** Raw samples one `sink.metrics agg=raw` request may return, over all its metrics. */
export const MAX_RAW_SAMPLES = 500_000;
/**
 * Stored samples one `agg=raw` request may read to find its own (every metric of the hosts and
 * time it covers): bounds a query for one metric across a large fleet to a few hundred ms.
 */
export const MAX_RAW_SCANNED = 10_000_000;

const AGGS: ReadonlySet<string> = new Set<MetricsAgg>(['fleet', 'raw', 'summary', ...BUCKET_STATS]);
const STATS: ReadonlySet<string> = new Set<string>(BUCKET_STATS);
const USAGE = '{ runId, metric?, host?, task?, from?, to?, agg?: fleet | raw | summary | count | sum | min | mean | p50 | p95 | max }';

function badQuery(message: string): never {
  throw new BoltError('BOLT_ERR_METRICS_BAD_QUERY', `sink.metrics: ${message}; it takes ${USAGE}`);
}

function optionalString(data: Record<string, unknown>, key: string): string | undefined {
  const value = data[key];
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value !== 'string') badQuery(`${key} must be a string`);
  return value;
}

function optionalNumber(data: Record<string, unknown>, key: string): number | undefined {
  const value = data[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isFinite(value)) badQuery(`${key} must be a number (epoch ms)`);
  return value;
}

/** Checks a `sink.metrics` request; throws BOLT_ERR_METRICS_BAD_QUERY. */
export function parseMetricsRequest(data: unknown): MetricsRequest {
  if (typeof data !== 'object' || data === null || Array.isArray(data)) badQuery('the request must be an object');
  const d = data as Record<string, unknown>;
  const runId = optionalString(d, 'runId');
  if (runId === undefined) badQuery('runId is required');
  const host = optionalString(d, 'host');
  const agg = optionalString(d, 'agg') ?? (host === undefined ? 'fleet' : 'raw');
  if (!AGGS.has(agg)) badQuery(`unknown agg '${agg}'`);
  if (host !== undefined && (agg === 'fleet' || STATS.has(agg))) badQuery(`agg=${agg} is across hosts and takes no host (use agg=raw)`);
  const task = optionalString(d, 'task') ?? optionalString(d, 'taskId');
  const metric = optionalString(d, 'metric');
  const from = optionalNumber(d, 'from');
  const to = optionalNumber(d, 'to');
  return {
    runId,
    agg: agg as MetricsAgg,
    ...(metric !== undefined && { metric }),
    ...(host !== undefined && { host }),
    ...(task !== undefined && { task }),
    ...(from !== undefined && { from }),
    ...(to !== undefined && { to }),
  };
}

/**
 * Answers a `sink.metrics` request from the store (see MetricsView for the shapes). A summary is
 * computed metric by metric and host by host, letting the worker's event loop run in between
 * (a long run's summary reads every sample). Raw samples are refused past MAX_RAW_SAMPLES.
 */
export async function metricsView(store: SinkStore, data: unknown): Promise<MetricsView> {
  const req = parseMetricsRequest(data);
  const { runId, metric, host, task, from, to } = req;
  const agg = req.agg!;
  // Not for raw queries: they read every metric's blocks in one pass.
  const metricNames = () => (metric !== undefined ? [metric] : store.listMetrics(runId));
  if (agg === 'summary') {
    const rows: MetricSummary[] = [];
    for (const name of metricNames()) {
      rows.push(...store.summarizeFleet(runId, name));
      await yieldToEventLoop();
    }
    for (const name of host !== undefined ? [host] : store.listRunHosts(runId)) {
      rows.push(...store.summarizeHost(runId, name).filter((r) => metric === undefined || r.metric === metric));
      await yieldToEventLoop();
    }
    return { runId, bucketMs: store.bucketWidth(runId), rows: orderSummaryRows(rows.filter((r) => task === undefined || r.task === task)) };
  }
  const range = { ...(from !== undefined && { from }), ...(to !== undefined && { to }) };
  if (agg === 'raw') {
    return store.querySamples({ runId, ...(metric !== undefined && { metric }), ...(host !== undefined && { host }), ...(task !== undefined && { taskId: task }), ...range, limit: MAX_RAW_SAMPLES, maxScanned: MAX_RAW_SCANNED });
  }
  const buckets = metricNames().flatMap((name) =>
    store.queryBuckets({ runId, metric: name, ...(task !== undefined && { taskId: task }), ...range }).map((series) => ({ metric: name, ...series })),
  );
  if (agg === 'fleet') return buckets;
  const stat = agg as BucketStat;
  return buckets.map((b) => ({ metric: b.metric, task: b.task, tags: b.tags, bucketMs: b.bucketMs, stat, t: b.t, values: b[stat] }));
}

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
