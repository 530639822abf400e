/**
 * ui-dashboard: the sink's dashboard (see README.md). The sink's transport serves it over HTTP; this
 * plugin answers on the bus:
 *
 * - `ui.asset { path }` → `{ contentType, body }` | null: the page, its script and styles, uPlot;
 * - `ui.runs { state?, job?, limit? }` → `{ runs: UiRunRow[], partial }`;
 * - `ui.run { runId }` → UiRun | null: tasks with DAG edges, the hosts x tasks grid, start skew;
 * - `ui.result { runId, taskId, host }` → UiResult | null: one host's result with output tails;
 * - `ui.hosts` → `{ source, hosts }`; `ui.host { id }` → one host with its state history | null;
 * - `ui.plugins` → `{ roles, plugins }`: this process's plugin table;
 * - `ui.report { runId }` → one self-contained HTML string | null;
 * - `ui.stats` → what the live side holds and has published (its memory bounds at work).
 *
 * It subscribes to the sink's traffic (`sink.task.event`, `task.status`, `run.task.dispatched`,
 * `run.updated`, `run.cancelled`, `host.state`, `sink.metrics.batch`, `core.plugin.state`) and
 * publishes coalesced `ui.live` messages (live.ts) that the transport streams to browsers.
 * Query values arrive as strings (from the URL); a request without its required fields answers null.
 */
import { definePlugin, type Bus, type PluginContext } from 'bolt-plugin-sdk';
import type { FleetSeriesView, RunsView, RunView, StatSeriesView } from '../writer-sqlite/services.ts';
import { loadAssets, type Asset } from './assets.ts';
import { LiveHub, type LiveSettings } from './live.ts';
import { chartSeries, renderReport, type ReportData } from './report.ts';
import { buildResult, buildRunView, compareHostNames, jobOf, runRowOf, type UiResult, type UiRun, type UiRunRow, type ViewExtras } from './view.ts';

interface Config extends LiveSettings {
  charts: string[];
  requestTimeoutMs: number;
  reportMetrics: number;
  reportFailedHosts: number;
  runsListBudgetMs: number;
}

/** Finished runs whose job (needs, start modes) was looked up, kept at most. */
const MAX_CACHED_JOBS = 500;
/** How far into a run the metric names of a run the plugin did not watch are looked up, in ms. */
const NAMES_WINDOW_MS = 120_000;

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A non-empty string field of a request, or undefined. */
function field(data: unknown, key: string): string | undefined {
  const value = isObject(data) ? data[key] : undefined;
  return typeof value === 'string' && value !== '' ? value : undefined;
}

const FINAL: ReadonlySet<string> = new Set(['succeeded', 'failed', 'cancelled']);

/** A small map that forgets its oldest entry past `max`. */
class Bounded<V> extends Map<string, V> {
  readonly #max: number;
  constructor(max: number) {
    super();
    this.#max = max;
  }
  override set(key: string, value: V): this {
    super.delete(key);
    super.set(key, value);
    if (this.size > this.#max) super.delete(this.keys().next().value!);
    return this;
  }
}

class Dashboard {
  readonly #bus: Bus;
  readonly #config: Config;
  readonly #roles: readonly string[];
  readonly #assets: Map<string, Asset>;
  readonly hub: LiveHub;
  readonly #jobs = new Bounded<ViewExtras['job']>(MAX_CACHED_JOBS);
  readonly #names = new Bounded<string[]>(MAX_CACHED_JOBS);

  constructor(ctx: PluginContext<Config>) {
    this.#bus = ctx.bus;
    this.#config = ctx.config;
    this.#roles = ctx.roles;
    this.#assets = loadAssets();
    this.hub = new LiveHub(ctx.config, (message) => ctx.bus.publish('ui.live', message));
  }

  asset(data: unknown): Asset | null {
    const name = field(data, 'path');
    return name === undefined ? null : (this.#assets.get(name) ?? null);
  }

  async #request<T>(service: string, data: unknown): Promise<T> {
    return this.#bus.request<T>(service, data, { timeoutMs: this.#config.requestTimeoutMs });
  }

  /** The sink's view of a run and the dashboard's, or null when the sink does not know the run. */
  async runData(runId: string): Promise<{ stored: RunView; view: UiRun } | null> {
    const seq = this.hub.seq;
    const stored = await this.#request<RunView | null>('sink.run', { runId });
    if (stored === null) return null;
    const live = this.hub.run(runId);
    const job = jobOf(stored.run.job) ?? jobOf(live?.spec) ?? (await this.#schedulerJob(runId));
    const names = live !== undefined && live.metricNames.size > 0 ? [...live.metricNames] : await this.#storedMetricNames(stored);
    const view = buildRunView(stored, {
      job,
      progress: live?.progress ?? null,
      runState: live?.runState ?? null,
      metrics: names,
      charts: this.#config.charts,
      seq,
    });
    return { stored, view };
  }

  /**
   * The job of a run the store keeps without one: asked once of the scheduler when it runs in this
   * process (its `scheduler.runs.get`), then remembered.
   */
  async #schedulerJob(runId: string): Promise<ViewExtras['job']> {
    if (this.#jobs.has(runId)) return this.#jobs.get(runId)!;
    let job: ViewExtras['job'] = null;
    try {
      const detail = await this.#request<Record<string, unknown> | null>('scheduler.runs.get', { runId });
      job = jobOf(detail?.spec) ?? jobOf(detail);
    } catch {
      // No scheduler in this process (a separate sink), or it does not know the run: no DAG edges.
    }
    this.#jobs.set(runId, job);
    return job;
  }

  /** Metric names of a run this plugin did not watch: those in the first NAMES_WINDOW_MS of its samples. */
  async #storedMetricNames(stored: RunView): Promise<string[]> {
    const runId = stored.run.id;
    if (this.#names.has(runId)) return this.#names.get(runId)!;
    const starts = stored.tasks.map((t) => t.startedAt).filter((t): t is number => t !== null);
    const from = starts.length > 0 ? Math.min(...starts) : (stored.run.startedAt ?? stored.run.createdAt);
    let names: string[] = [];
    try {
      const series = await this.#request<StatSeriesView[]>('sink.metrics', { runId, agg: 'count', from: from - NAMES_WINDOW_MS / 4, to: from + NAMES_WINDOW_MS });
      names = [...new Set(series.map((s) => s.metric))];
    } catch {
      // No metrics service: the page shows no charts.
    }
    if (FINAL.has(stored.run.state)) this.#names.set(runId, names);
    return names;
  }

  async run(data: unknown): Promise<UiRun | null> {
    const runId = field(data, 'runId');
    return runId === undefined ? null : ((await this.runData(runId))?.view ?? null);
  }

  async result(data: unknown): Promise<UiResult | null> {
    const runId = field(data, 'runId');
    const taskId = field(data, 'taskId');
    const host = field(data, 'host');
    if (runId === undefined || taskId === undefined || host === undefined) return null;
    const stored = await this.#request<RunView | null>('sink.run', { runId });
    return stored === null ? null : buildResult(stored, taskId, host);
  }

  /**
   * The runs list, newest first, with hosts and failed tasks. Rows of runs this plugin saw live come
   * from `run.updated`; others are computed from `sink.run` once and remembered, within
   * `runsListBudgetMs` per request (`partial`: some rows still lack those numbers; ask again).
   */
  async runs(data: unknown): Promise<{ runs: UiRunRow[]; partial: boolean }> {
    const state = field(data, 'state');
    const job = field(data, 'job')?.toLowerCase();
    const limit = Math.min(10_000, Math.max(1, Math.floor(Number(field(data, 'limit') ?? 200)) || 200));
    const stored = await this.#request<RunsView>('sink.runs', { ...(state !== undefined && { state }), limit: job === undefined ? limit : Math.min(10_000, limit * 5) });
    const deadline = performance.now() + this.#config.runsListBudgetMs;
    let partial = false;
    const rows: UiRunRow[] = [];
    for (const summary of stored) {
      let row = this.hub.row(summary.id);
      if (row === undefined && performance.now() < deadline) {
        const stored = await this.#request<RunView | null>('sink.run', { runId: summary.id }).catch(() => null);
        if (stored !== null) {
          row = runRowOf(buildRunView(stored));
          if (FINAL.has(row.state)) this.hub.rememberRow(row);
        }
      }
      if (row === undefined) {
        partial = true;
        row = { id: summary.id, jobName: summary.jobName, state: summary.state, createdAt: summary.createdAt, startedAt: summary.startedAt, finishedAt: summary.finishedAt, hosts: null, tasks: null, tasksFailed: null };
      }
      // The store is the authority on a run's state once it is final; the live row may be fresher before.
      if (FINAL.has(summary.state) && row.state !== summary.state && !FINAL.has(row.state)) row = { ...row, state: summary.state };
      if (state !== undefined && row.state !== state) continue;
      if (job !== undefined && !(row.jobName ?? '').toLowerCase().includes(job)) continue;
      rows.push(row);
      if (rows.length >= limit) break;
    }
    return { runs: rows, partial };
  }

  /** Hosts with their health (from the health monitor when it runs in this process), and the transitions this plugin saw. */
  async hosts(): Promise<{ source: 'health-monitor' | 'host.state'; hosts: Array<Record<string, unknown>> }> {
    let monitored: Array<Record<string, unknown>> | null = null;
    try {
      monitored = await this.#request<Array<Record<string, unknown>>>('health.hosts', {});
    } catch {
      // A sink in its own process: the server's host.state notices are all there is.
    }
    const seen = new Map(this.hub.hosts().map((h) => [h.id, h]));
    const hosts: Array<Record<string, unknown>> =
      monitored === null
        ? [...seen.values()].map((h) => ({ ...h }))
        : monitored.map((h) => ({ ...h, history: seen.get(h.id as string)?.history ?? [] }));
    hosts.sort((a, b) => compareHostNames(String(a.name), String(b.name)));
    return { source: monitored === null ? 'host.state' : 'health-monitor', hosts };
  }

  async host(data: unknown): Promise<Record<string, unknown> | null> {
    const id = field(data, 'id');
    if (id === undefined) return null;
    try {
      const detail = await this.#request<Record<string, unknown> | null>('health.host', { id });
      if (detail !== null) return detail;
    } catch {
      // No health monitor here: what host.state said.
    }
    const seen = this.hub.host(id);
    return seen === undefined ? null : { ...seen };
  }

  async plugins(): Promise<{ roles: readonly string[]; plugins: unknown }> {
    return { roles: this.#roles, plugins: await this.#request('core.plugins', undefined) };
  }

  /** The report of a run (report.ts), or null when the sink does not know the run. */
  async report(data: unknown): Promise<string | null> {
    const runId = field(data, 'runId');
    if (runId === undefined) return null;
    const loaded = await this.runData(runId);
    if (loaded === null) return null;
    const { stored, view } = loaded;
    const first = view.charts.filter((m) => view.metrics.includes(m));
    const chosen = [...first, ...view.metrics.filter((m) => !first.includes(m))].slice(0, this.#config.reportMetrics);
    const metrics: Record<string, FleetSeriesView[]> = {};
    for (const metric of chosen) {
      const series = await this.#request<FleetSeriesView[]>('sink.metrics', { runId, metric, agg: 'fleet' }).catch(() => []);
      metrics[metric] = chartSeries(series);
    }
    const results: ReportData['results'] = {};
    const resultsLeftOut: ReportData['resultsLeftOut'] = {};
    view.grid.tasks.forEach((taskId, t) => {
      const cells = view.grid.cells[t]!;
      let kept = 0;
      for (let h = 0; h < cells.length; h++) {
        const state = view.grid.codes[cells.charCodeAt(h) - 48];
        if (state === 'none' || state === 'ok' || state === 'pending' || state === 'running') continue;
        if (kept >= this.#config.reportFailedHosts) {
          resultsLeftOut[taskId] = (resultsLeftOut[taskId] ?? 0) + 1;
          continue;
        }
        const host = view.grid.hosts[h]!;
        const result = buildResult(stored, taskId, host);
        if (result !== null) {
          results[`${taskId}\n${host}`] = result;
          kept++;
        }
      }
    });
    return renderReport({ kind: 'report', generatedAt: Date.now(), view, metrics, results, resultsLeftOut }, this.#assets);
  }
}

let dashboard: Dashboard | null = null;

export default definePlugin<Config>({
  start(ctx) {
    const { bus, log } = ctx;
    const d = new Dashboard(ctx);
    dashboard = d;
    const { hub } = d;
    bus.subscribe('sink.task.event', (data) => hub.onTaskEvent(data));
    bus.subscribe('task.status', (data) => hub.onTaskStatus(data));
    bus.subscribe('run.task.dispatched', (data) => hub.onDispatched(data));
    bus.subscribe('run.updated', (data) => hub.onRunUpdated(data));
    bus.subscribe('run.cancelled', (data) => hub.onRunCancelled(data));
    bus.subscribe('host.state', (data) => hub.onHostState(data));
    bus.subscribe('sink.metrics.batch', (data) => hub.onMetricsBatch(data));
    bus.subscribe('core.plugin.state', (data) => hub.onPluginState(data));

    bus.provide('ui.asset', (data) => d.asset(data));
    bus.provide('ui.runs', (data) => d.runs(data));
    bus.provide('ui.run', (data) => d.run(data));
    bus.provide('ui.result', (data) => d.result(data));
    bus.provide('ui.hosts', () => d.hosts());
    bus.provide('ui.host', (data) => d.host(data));
    bus.provide('ui.plugins', () => d.plugins());
    bus.provide('ui.report', (data) => d.report(data));
    bus.provide('ui.stats', () => hub.stats());
    log.info({ coalesceMs: ctx.config.coalesceMs, charts: ctx.config.charts }, 'dashboard serving ui.* and publishing ui.live');
  },
  stop() {
    dashboard?.hub.close();
    dashboard = null;
  },
});

