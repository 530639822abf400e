/**
 * Bolt's own numbers as Prometheus metrics: hosts by state, runs by state, dispatch latency,
 * the sink's ingest rate and store counters, and samples the clients dropped. Each comes from what
 * this process's bus carries (see README.md for which role sees what); a number whose source is
 * absent is left out rather than reported as 0.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Bus } from '../../plugin-sdk/src/index.ts';
import type { IncomingSample } from './fleet.ts';

/** The metric collectors report their dropped samples with: the count since their previous report. */
export const DROPPED_SAMPLES_METRIC = 'bolt.dropped_samples';
/** Runs and hosts remembered for the state gauges; the oldest are forgotten beyond this. */
const MAX_TRACKED = 100_000;
/** A dispatch whose acks stop coming is forgotten after this. */
const DISPATCH_TTL_MS = 10 * 60_000;
const MAX_PENDING_DISPATCHES = 10_000;
/** Seconds over which the ingest rate gauge averages. */
const RATE_WINDOW_S = 10;
const HOST_STATES = ['healthy', 'degraded', 'unhealthy', 'missing', 'lost'] as const;

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Sets key → value in an insertion-ordered map, moving it last and forgetting the oldest past `max`. */
function remember<K, V>(map: Map<K, V>, key: K, value: V, max: number): void {
  map.delete(key);
  map.set(key, value);
  if (map.size > max) map.delete(map.keys().next().value as K);
}

/** Samples per second over the last complete seconds. */
class RateWindow {
  readonly #counts = new Map<number, number>();

  add(n: number, nowMs: number): void {
    const second = Math.floor(nowMs / 1000);
    this.#counts.set(second, (this.#counts.get(second) ?? 0) + n);
    for (const s of this.#counts.keys()) if (s < second - RATE_WINDOW_S - 1) this.#counts.delete(s);
  }

  rate(nowMs: number): number {
    const current = Math.floor(nowMs / 1000);
    let sum = 0;
    for (const [s, n] of this.#counts) if (s < current && s >= current - RATE_WINDOW_S) sum += n;
    return sum / RATE_WINDOW_S;
  }
}

export interface OwnSettings {
  /** How long a scrape waits for health.summary, sink.store.stats and the run lists. */
  requestTimeoutMs: number;
  /** Hosts with a dropped-samples counter at most. */
  maxSeries: number;
}

export class OwnMetrics {
  readonly #bus: Bus;
  readonly #settings: OwnSettings;
  readonly #hostStates = new Map<string, string>();
  readonly #runStates = new Map<string, string>();
  #runsSeeded = false;
  /** performance.now() at which each dispatch (runId, wire task id) was announced. */
  readonly #dispatched = new Map<string, number>();
  readonly #rate = new RateWindow();
  readonly #droppedHosts = new Set<string>();
  readonly #ackSeconds: Histogram;
  readonly #acks: Counter;
  readonly #dispatches: Counter;
  readonly #batches: Counter;
  readonly #samples: Counter;
  readonly #dropped: Counter;

  constructor(bus: Bus, registry: Registry, settings: OwnSettings, info: { version: string; roles: readonly string[] }) {
    this.#bus = bus;
    this.#settings = settings;
    const registers = [registry];
    new Gauge({ name: 'bolt_info', help: 'Always 1: the version of exporter-prometheus and the roles of this process', labelNames: ['exporter_version', 'roles'], registers }).set({ exporter_version: info.version, roles: [...info.roles].sort().join(',') }, 1);

    const hostStates = this.#hostStates;
    const own = this;
    new Gauge({
      name: 'bolt_hosts',
      help: 'Client hosts by health state (from the health monitor; server role)',
      labelNames: ['state'],
      registers,
      async collect() {
        this.reset();
        const summary = await own.#ask<Record<string, unknown>>('health.summary');
        if (summary !== undefined) {
          for (const state of HOST_STATES) if (typeof summary[state] === 'number') this.set({ state }, summary[state]);
          return;
        }
        if (hostStates.size === 0) return;
        const counts = new Map<string, number>(HOST_STATES.map((s) => [s, 0]));
        for (const state of hostStates.values()) counts.set(state, (counts.get(state) ?? 0) + 1);
        for (const [state, n] of counts) this.set({ state }, n);
      },
    });
    new Gauge({
      name: 'bolt_runs',
      help: 'Runs by state (from run.updated, and the run lists of the scheduler or the sink store)',
      labelNames: ['state'],
      registers,
      async collect() {
        this.reset();
        await own.#seedRuns();
        const counts = new Map<string, number>();
        for (const state of own.#runStates.values()) counts.set(state, (counts.get(state) ?? 0) + 1);
        for (const [state, n] of counts) this.set({ state }, n);
      },
    });
    this.#dispatches = new Counter({ name: 'bolt_dispatches_total', help: 'Task dispatches announced by the scheduler (server role)', registers });
    this.#acks = new Counter({ name: 'bolt_dispatch_acks_total', help: 'Acknowledgements of dispatches from clients, by whether the client accepted the command', labelNames: ['accepted'], registers });
    this.#ackSeconds = new Histogram({
      name: 'bolt_dispatch_ack_seconds',
      help: 'Dispatch latency: from the scheduler announcing a dispatch to a client\'s acknowledgement arriving, as seen on this process\'s bus',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.#batches = new Counter({ name: 'bolt_sink_batches_received_total', help: 'Metrics batches the sink received from clients (resends included)', registers });
    this.#samples = new Counter({ name: 'bolt_sink_samples_received_total', help: 'Metric samples the sink received from clients (resends included)', registers });
    const rate = this.#rate;
    new Gauge({
      name: 'bolt_sink_ingest_samples_per_second',
      help: `Metric samples received per second by the sink, averaged over the last ${RATE_WINDOW_S} complete seconds`,
      registers,
      collect() {
        this.set(rate.rate(Date.now()));
      },
    });
    this.#dropped = new Counter({ name: 'bolt_dropped_samples_total', help: 'Metric samples clients dropped because their buffer was full, by host (from their bolt.dropped_samples reports)', labelNames: ['host'], registers });
    this.#storeMetrics(registry);
    this.#processMetrics(registry);
  }

  /** A `host.state` transition (`{ id, to }`). */
  onHostState(data: unknown): void {
    if (!isObject(data) || typeof data.id !== 'string' || typeof data.to !== 'string') return;
    remember(this.#hostStates, data.id, data.to, MAX_TRACKED);
  }

  /** A `run.updated` message (`{ run: { id | runId, state } }`). */
  onRunUpdated(data: unknown): void {
    const run = isObject(data) ? data.run : undefined;
    if (!isObject(run)) return;
    const id = run.id ?? run.runId;
    if (typeof id === 'string' && typeof run.state === 'string') remember(this.#runStates, id, run.state, MAX_TRACKED);
  }

  /** A `run.task.dispatched` announcement; `now` is performance.now(). */
  onDispatched(data: unknown, now: number): void {
    if (!isObject(data) || typeof data.runId !== 'string' || typeof data.taskId !== 'string') return;
    this.#dispatches.inc();
    for (const [key, at] of this.#dispatched) {
      if (at >= now - DISPATCH_TTL_MS && this.#dispatched.size < MAX_PENDING_DISPATCHES) break;
      this.#dispatched.delete(key);
    }
    remember(this.#dispatched, `${data.runId}\u0000${data.taskId}`, now, MAX_PENDING_DISPATCHES);
  }

  /** A `task.ack` from a client; `now` is performance.now(). */
  onAck(data: unknown, now: number): void {
    if (!isObject(data) || typeof data.runId !== 'string' || typeof data.taskId !== 'string') return;
    this.#acks.inc({ accepted: data.accepted === true ? 'true' : 'false' });
    const at = this.#dispatched.get(`${data.runId}\u0000${data.taskId}`);
    if (at !== undefined) this.#ackSeconds.observe((now - at) / 1000);
  }

  /** A `sink.metrics.batch`: counts it and its samples, and the drops its host reported. */
  onBatch(host: string, samples: readonly IncomingSample[]): void {
    this.#batches.inc();
    this.#samples.inc(samples.length);
    this.#rate.add(samples.length, Date.now());
    for (const s of samples) {
      if (s?.metric !== DROPPED_SAMPLES_METRIC || typeof s.value !== 'number' || !(s.value > 0) || !Number.isFinite(s.value)) continue;
      if (!this.#droppedHosts.has(host)) {
        if (this.#droppedHosts.size >= this.#settings.maxSeries) continue;
        this.#droppedHosts.add(host);
      }
      this.#dropped.inc({ host }, s.value);
    }
  }

  /** The sink store's counters (writer-sqlite's `sink.store.stats`), as of each scrape. */
  #storeMetrics(registry: Registry): void {
    const own = this;
    let last: Record<string, unknown> | undefined;
    let pending: Promise<void> | null = null;
    // One request per scrape feeds all of them.
    const refresh = () => {
      pending ??= own.#ask<Record<string, unknown>>('sink.store.stats').then((stats) => {
        last = stats;
        queueMicrotask(() => (pending = null));
      });
      return pending;
    };
    const counters: Array<[string, string, string]> = [
      ['bolt_sink_samples_stored_total', 'samples', 'Metric samples the sink store wrote (resent batches not counted)'],
      ['bolt_sink_store_duplicates_total', 'duplicates', 'Task events and metrics batches the sink store recognised as resent and stored no more'],
      ['bolt_sink_store_rejected_total', 'rejected', 'Task events and metrics batches the sink store refused as malformed'],
      ['bolt_sink_store_dropped_total', 'dropped', 'Task events and metrics batches the sink store dropped because its queue was full (writes failing, or more arriving than it can store)'],
      ['bolt_sink_store_dropped_samples_total', 'droppedSamples', 'Metric samples in the batches the sink store dropped because its queue was full'],
      ['bolt_sink_store_failed_writes_total', 'failedWrites', 'Writes SQLite refused (retried)'],
    ];
    for (const [name, field, help] of counters) {
      new Counter({
        name,
        help,
        registers: [registry],
        async collect() {
          await refresh();
          this.reset();
          const value = last?.[field];
          if (typeof value === 'number') this.inc(value);
        },
      });
    }
    new Gauge({
      name: 'bolt_sink_store_pending_messages',
      help: 'Task events and metrics batches waiting for the sink store\'s next transaction',
      registers: [registry],
      async collect() {
        await refresh();
        this.reset();
        if (typeof last?.pending === 'number') this.set(last.pending);
      },
    });
  }

  /** CPU and memory of the whole Bolt process (every plugin's thread). */
  #processMetrics(registry: Registry): void {
    new Counter({
      name: 'bolt_process_cpu_seconds_total',
      help: 'CPU time of the whole Bolt process (user + system, every thread)',
      registers: [registry],
      collect() {
        const { user, system } = process.cpuUsage();
        this.reset();
        this.inc((user + system) / 1e6);
      },
    });
    new Gauge({
      name: 'bolt_process_resident_memory_bytes',
      help: 'Resident memory of the whole Bolt process',
      registers: [registry],
      collect() {
        this.set(process.memoryUsage.rss());
      },
    });
  }

  /** Fills the run states from a run list once (runs created before this plugin started). */
  async #seedRuns(): Promise<void> {
    if (this.#runsSeeded) return;
    const lists = await Promise.all([this.#ask<unknown[]>('scheduler.runs.list', { limit: 10_000 }), this.#ask<unknown[]>('sink.runs', { limit: 10_000 })]);
    for (const list of lists) {
      if (!Array.isArray(list)) continue;
      this.#runsSeeded = true;
      for (const run of list) {
        if (!isObject(run)) continue;
        const id = run.runId ?? run.id;
        // run.updated messages seen already are newer than a list.
        if (typeof id === 'string' && typeof run.state === 'string' && !this.#runStates.has(id)) remember(this.#runStates, id, run.state, MAX_TRACKED);
      }
    }
  }

  /** A bus request that answers undefined when nobody provides the service or it fails. */
  async #ask<T>(service: string, data?: unknown): Promise<T | undefined> {
    try {
      return await this.#bus.request<T>(service, data, { timeoutMs: this.#settings.requestTimeoutMs });
    } catch {
      return undefined;
    }
  }
}
