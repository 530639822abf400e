/** `bolt-core runs`, `bolt-core show RUN`, `bolt-core cancel RUN`: the server's runs (and a run's metrics, from the sink). */
import { readFileSync } from 'node:fs';
import { usageError, type Command } from './command.ts';
import { serverFromFlags, SERVER_OPTIONS } from './run.ts';
import { apiBaseUrl, apiToken, connectServer } from './server-api.ts';
import { formatDuration, hostTable, taskTable, type RunView } from './run-view.ts';
import { ago, formatTable } from './table.ts';

interface RunListEntry {
  runId: string;
  job: string;
  state: string;
  createdAt: number | string;
  startedAt?: number | null;
  endedAt?: number | null;
  scheduled?: boolean;
  tasks?: Record<string, number>;
}

export const runsCommand: Command = {
  usage: 'bolt-core runs [--server URL] [--token TOKEN] [--data DIR] [--json]',
  summary: 'list the runs on the server, newest first (scheduled ones included)',
  options: { ...SERVER_OPTIONS, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    if (positionals.length > 0) throw usageError(`unknown argument '${positionals[0]}'`, runsCommand);
    const api = await serverFromFlags(values, runsCommand);
    const runs = await api.get<RunListEntry[]>('/api/runs');
    if (values.json) {
      process.stdout.write(`${JSON.stringify(runs, null, 2)}\n`);
      return 0;
    }
    const rows = runs.map((r) => [
      r.runId, r.job, r.state, ago(r.createdAt),
      r.startedAt && r.endedAt ? formatDuration(r.endedAt - r.startedAt) : '-',
      Object.entries(r.tasks ?? {}).filter(([, n]) => n > 0).map(([s, n]) => `${n} ${s}`).join(', ') || '-',
      r.scheduled ? 'cron' : '',
    ]);
    process.stdout.write(`${formatTable(['RUN', 'JOB', 'STATE', 'CREATED', 'DURATION', 'TASKS', ''], rows)}\n`);
    return 0;
  },
};

export const showCommand: Command = {
  usage: 'bolt-core show RUN [--server URL] [--token TOKEN] [--data DIR] [--json] [--metrics [--csv] [--sink URL]]',
  summary: 'one run per task and per host: state, exit code, start instant, duration, output; --metrics: its metric summary from the sink (--csv: every raw sample)',
  options: { ...SERVER_OPTIONS, json: { type: 'boolean' }, metrics: { type: 'boolean' }, csv: { type: 'boolean' }, sink: { type: 'string' } },
  async run({ values, positionals }) {
    const [runId, ...extra] = positionals;
    if (!runId || extra.length > 0) throw usageError('show takes one run id', showCommand);
    if (values.csv && values.json) throw usageError('--csv and --json do not go together', showCommand);
    if ((values.csv || values.sink !== undefined) && !values.metrics) throw usageError('--csv and --sink go with --metrics', showCommand);
    if (values.metrics) return showMetrics(runId, values);
    const api = await serverFromFlags(values, showCommand);
    const run = await api.get<RunView>(`/api/runs/${encodeURIComponent(runId)}`);
    if (values.json) {
      process.stdout.write(`${JSON.stringify(run, null, 2)}\n`);
      return 0;
    }
    process.stdout.write(`run ${run.runId} (${run.job}): ${run.state}${run.error ? ` — ${run.error.code}: ${run.error.message}` : ''}\n\n${taskTable(run)}\n\n${hostTable(run)}\n`);
    return 0;
  },
};

/** Default port of the sink's API, where run metrics live. */
const DEFAULT_SINK_PORT = 7701;
/** Raw samples fetched per request by `show --metrics --csv`, at most about this many. */
const CSV_SAMPLES_PER_REQUEST = 200_000;

/** One row of the sink's metric summary (`GET /api/runs/:id/metrics?agg=summary`). */
interface MetricSummaryRow {
  metric: string;
  task: string | null;
  /** null: across all hosts. */
  host: string | null;
  tags: Record<string, string>;
  count: number;
  min: number;
  mean: number;
  p50: number;
  p95: number;
  max: number;
  sum: number;
  from: number;
  to: number;
}

interface MetricsSummary {
  runId: string;
  bucketMs: number | null;
  rows: MetricSummaryRow[];
}

/** One raw series (`GET /api/runs/:id/metrics?host=H&agg=raw`). */
interface RawSeries {
  metric: string;
  host: string;
  task: string | null;
  tags: Record<string, string>;
  t: number[];
  values: number[];
}

/** The sink's API: --sink, else the server's host (from --server) on port 7701. */
export function sinkBaseUrl(values: Record<string, unknown>, command: Command = showCommand): string {
  if (typeof values.sink === 'string') return apiBaseUrl(values.sink, command, '--sink');
  const url = new URL(apiBaseUrl(values.server as string | undefined, command));
  url.port = String(DEFAULT_SINK_PORT);
  return url.origin;
}

/** `show RUN --metrics`: the run's metric summary per task and host, as a table, JSON or raw CSV. */
async function showMetrics(runId: string, values: Record<string, unknown>): Promise<number> {
  const ca = values['tls-ca'] as string | undefined;
  const sink = connectServer(sinkBaseUrl(values), await apiToken(values.token as string | undefined, (values.data as string | undefined) ?? '.bolt'), ca ? readFileSync(ca) : undefined);
  const route = `/api/runs/${encodeURIComponent(runId)}/metrics`;
  const summary = await sink.get<MetricsSummary>(`${route}?agg=summary`);
  if (values.json) {
    process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
    return 0;
  }
  if (values.csv) {
    await writeCsv(summary, (query) => sink.get<RawSeries[]>(`${route}?${query}`));
    return 0;
  }
  if (summary.rows.length === 0) {
    process.stdout.write(`run ${runId}: the sink at ${sink.url} has no metrics for it\n`);
    return 0;
  }
  // Per task: all hosts first, then host by host.
  const rows = [...summary.rows].sort((a, b) => byName(a.task, b.task) || byName(a.host, b.host) || byName(a.metric, b.metric) || byName(JSON.stringify(a.tags), JSON.stringify(b.tags)));
  const table = rows.map((r) => [
    r.task ?? '-', r.host ?? '(all)', r.metric, tagText(r.tags), String(r.count),
    formatValue(r.min), formatValue(r.mean), formatValue(r.p50), formatValue(r.p95), formatValue(r.max),
  ]);
  const note = summary.bucketMs === null ? '' : ` (all hosts: p50/p95 from ${summary.bucketMs} ms buckets, within 1%)`;
  process.stdout.write(`run ${runId}: metrics per task and host${note}\n\n${formatTable(['TASK', 'HOST', 'METRIC', 'TAGS', 'SAMPLES', 'MIN', 'MEAN', 'P50', 'P95', 'MAX'], table)}\n`);
  return 0;
}

/**
 * Streams every raw sample of the run as CSV (`metric,t,host,task,tags,value`), host by host and,
 * for a host with many samples, time window by time window, so neither side holds the whole run.
 */
async function writeCsv(summary: MetricsSummary, fetchRaw: (query: string) => Promise<RawSeries[]>): Promise<void> {
  await write('metric,t,host,task,tags,value\n');
  const hosts = new Map<string, { count: number; from: number; to: number }>();
  for (const r of summary.rows) {
    if (r.host === null) continue;
    const h = hosts.get(r.host) ?? { count: 0, from: r.from, to: r.to };
    hosts.set(r.host, { count: h.count + r.count, from: Math.min(h.from, r.from), to: Math.max(h.to, r.to) });
  }
  for (const [host, span] of [...hosts].sort(([a], [b]) => byName(a, b))) {
    const windows = Math.max(1, Math.ceil(span.count / CSV_SAMPLES_PER_REQUEST));
    const width = Math.ceil((span.to - span.from + 1) / windows);
    for (let w = 0; w < windows; w++) {
      const from = span.from + w * width;
      const query = new URLSearchParams({ host, agg: 'raw', from: String(from), to: String(Math.min(span.to, from + width - 1)) });
      const rows: Array<[string, number, string]> = [];
      for (const s of await fetchRaw(query.toString())) {
        const prefix = `${csvField(s.host)},${s.task === null ? '' : csvField(s.task)},${csvField(JSON.stringify(s.tags))}`;
        s.t.forEach((t, i) => rows.push([s.metric, t, `${csvField(s.metric)},${t},${prefix},${s.values[i]}\n`]));
      }
      rows.sort((a, b) => byName(a[0], b[0]) || a[1] - b[1]);
      for (let i = 0; i < rows.length; i += 1000) await write(rows.slice(i, i + 1000).map((r) => r[2]).join(''));
    }
  }
}

/** Writes to stdout, waiting when its buffer is full. */
function write(text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (process.stdout.write(text, (err) => (err ? reject(err) : undefined))) resolve();
    else process.stdout.once('drain', resolve);
  });
}

function csvField(value: string): string {
  return /[",\r\n]/.test(value) ? `"${value.replaceAll('"', '""')}"` : value;
}

/** Orders names with null (no task, all hosts) first. */
function byName(a: string | null, b: string | null): number {
  if (a === b) return 0;
  if (a === null) return -1;
  if (b === null) return 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

function tagText(tags: Record<string, string>): string {
  const pairs = Object.entries(tags).map(([k, v]) => `${k}=${v}`);
  return pairs.length === 0 ? '-' : pairs.join(',');
}

/** A number in at most 4 significant digits, large ones with an SI suffix (12.3k, 8.21G). */
function formatValue(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  const abs = Math.abs(value);
  for (const [scale, suffix] of [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e4, 'k']] as const) {
    if (abs >= scale) return `${Number((value / scale).toPrecision(3))}${suffix}`;
  }
  return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4)));
}

export const cancelCommand: Command = {
  usage: 'bolt-core cancel RUN [--server URL] [--token TOKEN] [--data DIR] [--json]',
  summary: 'stop a run: cancels what runs on every host, dispatches nothing more',
  options: { ...SERVER_OPTIONS, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const [runId, ...extra] = positionals;
    if (!runId || extra.length > 0) throw usageError('cancel takes one run id', cancelCommand);
    const api = await serverFromFlags(values, cancelCommand);
    const run = await api.post<RunView>(`/api/runs/${encodeURIComponent(runId)}/cancel`, '');
    process.stdout.write(values.json ? `${JSON.stringify(run)}\n` : `run ${runId}: ${run.state}\n`);
    return 0;
  },
};
