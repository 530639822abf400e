/**
 * The live side of the dashboard: what the sink's bus says as it happens (task events, statuses,
 * dispatches, run and host changes, metrics batches, plugin states), folded into coalesced `ui.live`
 * messages, plus the little the views need that the store does not keep (the job of a run, the
 * scheduler's progress, metric names, host transitions).
 *
 * Guarantees:
 * - At most one `run` message per run every `coalesceMs`, and one `runs`, `hosts` and `plugins`
 *   message every `coalesceMs`; a change is published within `gatherMs` + `coalesceMs`.
 * - A message carries the latest state of what changed since the previous one (last write wins
 *   per grid cell, per task, per host), never a log of every event.
 * - `seq` grows across messages and across restarts of the plugin (it starts at the clock, in µs).
 * - Memory is bounded: at most `maxRuns` runs (finished ones are forgotten `runRetentionMs` after
 *   they end, the least recently active first when over), `maxHosts` hosts with `historyPerHost`
 *   transitions each, `maxRunRows` runs-list rows, `maxMetricNames` names per run.
 */
import { metricsBatchSamples } from 'bolt-plugin-sdk';
import { cellStateOfEvent, splitWireTask, taskStateOf, type CellState, type TaskProgressLike, type UiRunRow, type UiTaskState } from './view.ts';

export interface LiveSettings {
  coalesceMs: number;
  gatherMs: number;
  maxRuns: number;
  runRetentionMs: number;
  maxHosts: number;
  historyPerHost: number;
  maxRunRows: number;
  maxMetricNames: number;
}

/** A task's changed fields in a `run` message. */
export interface TaskDelta {
  state?: UiTaskState;
  reason?: string;
  startedAt?: number;
  finishedAt?: number | null;
  dispatchedAt?: number | null;
  startAt?: number | null;
  attempts?: number;
}

/**
 * `ui.live` kind `run`: what changed in one run. `at` is the newest event instant it carries (epoch
 * ms: a task event's `at`, a metric sample's `t`, a host transition's `at`, or when a run update was
 * received; an instant later than its arrival at the sink counts as its arrival). Apply it over a
 * `ui.run` view whose `seq` is lower.
 */
export interface RunMessage {
  kind: 'run';
  runId: string;
  seq: number;
  at: number;
  sentAt: number;
  run?: { state?: string; jobName?: string | null; startedAt?: number | null; finishedAt?: number | null };
  tasks?: Record<string, TaskDelta>;
  /** Changed grid cells: task → state → host names. */
  cells?: Record<string, Partial<Record<CellState, string[]>>>;
  /** New dispatches: their targets are now `pending` in that task. */
  dispatched?: Array<{ taskId: string; attempt: number; startAt: number | null; hosts: string[] }>;
  /** Start instants of together-task hosts, as ms after the task's startAt (same order as hosts). */
  starts?: Record<string, { startAt: number; hosts: string[]; offsets: number[] }>;
  /** Metrics arrived up to sample time `t`; `names`: metric names new to this run. */
  metrics?: { t: number; names?: string[] };
  /** Something changed that the message cannot say cell by cell (hosts decided without an event): fetch `ui.run` again. */
  resync?: true;
}

/** `ui.live` kind `runs`: runs-list rows that changed. */
export interface RunsMessage {
  kind: 'runs';
  seq: number;
  at: number;
  sentAt: number;
  runs: UiRunRow[];
}

/** A host as the hosts page lists it when the health monitor is not in this process. */
export interface HostRecord {
  id: string;
  name: string;
  state: string;
  since: number;
  reason: string;
  /** Transitions seen by this plugin, oldest first. */
  history: Array<{ from: string | null; to: string; at: number; reason: string }>;
}

/** `ui.live` kind `hosts`: hosts whose state changed. */
export interface HostsMessage {
  kind: 'hosts';
  seq: number;
  at: number;
  sentAt: number;
  hosts: Array<Omit<HostRecord, 'history'>>;
}

/** `ui.live` kind `plugins`: plugin table rows that changed (the core's `core.plugin.state`). */
export interface PluginsMessage {
  kind: 'plugins';
  seq: number;
  at: number;
  sentAt: number;
  plugins: unknown[];
}

export type LiveMessage = RunMessage | RunsMessage | HostsMessage | PluginsMessage;

const FINAL_RUN_STATES: ReadonlySet<string> = new Set(['succeeded', 'failed', 'cancelled']);
/** How often finished and idle runs are looked at for forgetting. */
const SWEEP_MS = 10_000;
/** A run that is not final but has had no message for this long is forgotten like a finished one. */
const IDLE_RUN_MS = 6 * 3600_000;

/** Fires `fire` at most every `intervalMs`, and no sooner than `gatherMs` after the first touch. */
class Throttle {
  #last = -Infinity;
  #timer: NodeJS.Timeout | null = null;
  readonly #intervalMs: number;
  readonly #gatherMs: number;
  readonly #fire: () => void;

  constructor(intervalMs: number, gatherMs: number, fire: () => void) {
    this.#intervalMs = intervalMs;
    this.#gatherMs = gatherMs;
    this.#fire = fire;
  }

  touch(): void {
    if (this.#timer !== null) return;
    const wait = Math.max(this.#gatherMs, this.#last + this.#intervalMs - performance.now());
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#last = performance.now();
      this.#fire();
    }, wait);
  }

  cancel(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }
}

/** What changed in one run since its last message. */
class PendingRun {
  at = -Infinity;
  run: NonNullable<RunMessage['run']> | null = null;
  readonly tasks = new Map<string, TaskDelta>();
  readonly cells = new Map<string, Map<string, CellState>>();
  readonly dispatched: NonNullable<RunMessage['dispatched']> = [];
  readonly starts = new Map<string, { startAt: number; hosts: Map<string, number> }>();
  metricT: number | null = null;
  readonly names: string[] = [];
  resync = false;

  /**
   * Notes an event instant. A host's clock may run ahead of this one: an instant later than now
   * (when the event reached the sink) is taken as now, so a browser's lag is never negative.
   */
  seen(at: unknown): void {
    if (typeof at !== 'number' || !Number.isFinite(at)) return;
    const bounded = Math.min(at, Date.now());
    if (bounded > this.at) this.at = bounded;
  }

  task(id: string): TaskDelta {
    let delta = this.tasks.get(id);
    if (delta === undefined) this.tasks.set(id, (delta = {}));
    return delta;
  }

  cell(task: string, host: string, state: CellState): void {
    let hosts = this.cells.get(task);
    if (hosts === undefined) this.cells.set(task, (hosts = new Map()));
    // Re-inserted so a host appears under its latest state only.
    hosts.delete(host);
    hosts.set(host, state);
  }

  message(runId: string, seq: number): RunMessage {
    const message: RunMessage = { kind: 'run', runId, seq, at: Number.isFinite(this.at) ? this.at : Date.now(), sentAt: Date.now() };
    if (this.run !== null) message.run = this.run;
    if (this.tasks.size > 0) message.tasks = Object.fromEntries(this.tasks);
    if (this.cells.size > 0) {
      const cells: NonNullable<RunMessage['cells']> = {};
      for (const [task, hosts] of this.cells) {
        const byState: Partial<Record<CellState, string[]>> = {};
        for (const [host, state] of hosts) (byState[state] ??= []).push(host);
        cells[task] = byState;
      }
      message.cells = cells;
    }
    if (this.dispatched.length > 0) message.dispatched = this.dispatched;
    if (this.starts.size > 0) {
      message.starts = Object.fromEntries(
        [...this.starts].map(([task, s]) => [task, { startAt: s.startAt, hosts: [...s.hosts.keys()], offsets: [...s.hosts.values()] }]),
      );
    }
    if (this.metricT !== null) message.metrics = { t: this.metricT, ...(this.names.length > 0 && { names: this.names }) };
    if (this.resync) message.resync = true;
    return message;
  }
}

/** What the dashboard keeps about one run it heard of. */
export interface LiveRun {
  runId: string;
  /** The parsed job from `run.updated` (`spec`), when seen. */
  spec: unknown;
  progress: TaskProgressLike[] | null;
  runState: { state: string; startedAt: number | null; endedAt: number | null } | null;
  metricNames: Set<string>;
  /** Newest metric sample time seen. */
  metricT: number | null;
  /** startAt of each wire task id (for start offsets). */
  startAt: Map<string, number | null>;
  touchedAt: number;
  /** When it was seen final (performance.now()), null while it runs. */
  endedSeenAt: number | null;
  pending: PendingRun | null;
  throttle: Throttle;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isName(value: unknown): value is string {
  return typeof value === 'string' && value !== '';
}

function finite(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

/** Folds bus traffic into coalesced `ui.live` messages; see the module comment. */
export class LiveHub {
  readonly #settings: LiveSettings;
  readonly #publish: (message: LiveMessage) => void;
  readonly #runs = new Map<string, LiveRun>();
  readonly #rows = new Map<string, UiRunRow>();
  readonly #hosts = new Map<string, HostRecord>();
  readonly #pendingRows = new Map<string, UiRunRow>();
  readonly #pendingHosts = new Map<string, Omit<HostRecord, 'history'>>();
  readonly #pendingPlugins = new Map<string, unknown>();
  #pendingHostsAt = -Infinity;
  readonly #rowsThrottle: Throttle;
  readonly #hostsThrottle: Throttle;
  readonly #pluginsThrottle: Throttle;
  readonly #sweep: NodeJS.Timeout;
  #seq = Date.now() * 1000;
  /** Messages published, by kind (for tests and the log). */
  readonly published = { run: 0, runs: 0, hosts: 0, plugins: 0 };

  constructor(settings: LiveSettings, publish: (message: LiveMessage) => void) {
    this.#settings = settings;
    this.#publish = publish;
    this.#rowsThrottle = new Throttle(settings.coalesceMs, settings.gatherMs, () => this.#flushRows());
    this.#hostsThrottle = new Throttle(settings.coalesceMs, settings.gatherMs, () => this.#flushHosts());
    this.#pluginsThrottle = new Throttle(settings.coalesceMs, settings.gatherMs, () => this.#flushPlugins());
    this.#sweep = setInterval(() => this.sweep(performance.now()), SWEEP_MS);
    this.#sweep.unref();
  }

  /** The sequence number of the latest message; a view built now is current to it. */
  get seq(): number {
    return this.#seq;
  }

  run(runId: string): LiveRun | undefined {
    return this.#runs.get(runId);
  }

  /** The runs-list row the live side holds for a run (from `run.updated`), if any. */
  row(runId: string): UiRunRow | undefined {
    return this.#rows.get(runId);
  }

  /** Keeps a runs-list row computed from the store, so the next list does not compute it again. */
  rememberRow(row: UiRunRow): void {
    if (this.#rows.has(row.id)) return;
    this.#keepRow(row);
  }

  /** What the hub holds and has published. */
  stats(): { runs: number; hosts: number; runRows: number; published: LiveHub['published'] } {
    return { runs: this.#runs.size, hosts: this.#hosts.size, runRows: this.#rows.size, published: { ...this.published } };
  }

  hosts(): HostRecord[] {
    return [...this.#hosts.values()];
  }

  host(id: string): HostRecord | undefined {
    return this.#hosts.get(id);
  }

  onTaskEvent(data: unknown): void {
    if (!isObject(data) || !isName(data.runId) || !isName(data.taskId) || !isName(data.host) || typeof data.kind !== 'string') return;
    const state = cellStateOfEvent(data.kind);
    if (state === null) return;
    const live = this.#touch(data.runId);
    const { task } = splitWireTask(data.taskId);
    const p = this.#pending(live);
    p.seen(data.at);
    p.cell(task, data.host, state);
    const startedAt = finite(data.startedAt);
    const startAt = live.startAt.get(data.taskId);
    if (startedAt !== null && startAt != null) {
      let s = p.starts.get(task);
      if (s === undefined) p.starts.set(task, (s = { startAt, hosts: new Map() }));
      s.hosts.set(data.host, Math.round((startedAt - startAt) * 1000) / 1000);
    }
    if (state === 'running' && startedAt !== null) {
      const t = p.task(task);
      if (t.startedAt === undefined || startedAt < t.startedAt) t.startedAt = startedAt;
    }
    live.throttle.touch();
  }

  onTaskStatus(data: unknown): void {
    if (!isObject(data) || !isName(data.runId) || !isName(data.taskId) || typeof data.state !== 'string') return;
    const live = this.#touch(data.runId);
    const { task } = splitWireTask(data.taskId);
    const p = this.#pending(live);
    p.seen(Date.now());
    // The scheduler's run.updated (which follows) is the authority on the task: a failed attempt may be retried.
    if (live.progress === null) p.task(task).state = taskStateOf(data.state);
    const hosts = isObject(data.hosts) ? data.hosts : {};
    // Hosts the aggregator decided without an event from them (timed out, lost) have no event to carry.
    if ((finite(data.lost) ?? 0) > 0 || (finite(hosts.timedout) ?? 0) > 0) p.resync = true;
    live.throttle.touch();
  }

  onDispatched(data: unknown): void {
    if (!isObject(data) || !isName(data.runId) || !isName(data.taskId) || !Array.isArray(data.targets)) return;
    const live = this.#touch(data.runId);
    const { task, attempt } = splitWireTask(data.taskId);
    const startAt = finite(data.startAt);
    live.startAt.set(data.taskId, startAt);
    const hosts = data.targets.flatMap((t) => (isObject(t) && isName(t.name) ? [t.name] : []));
    const p = this.#pending(live);
    p.seen(data.dispatchedAt);
    for (const host of hosts) p.cells.get(task)?.delete(host);
    p.dispatched.push({ taskId: task, attempt, startAt, hosts });
    const t = p.task(task);
    if (live.progress === null) t.state = 'running';
    t.startAt = startAt;
    if (attempt === 1) t.dispatchedAt = finite(data.dispatchedAt);
    live.throttle.touch();
  }

  onRunUpdated(data: unknown): void {
    const run = isObject(data) ? data.run : undefined;
    if (!isObject(run)) return;
    const runId = run.runId ?? run.id;
    if (!isName(runId) || typeof run.state !== 'string') return;
    const live = this.#touch(runId);
    const p = this.#pending(live);
    p.seen(Date.now());
    const jobName = typeof run.job === 'string' ? run.job : typeof run.jobName === 'string' ? run.jobName : null;
    const startedAt = finite(run.startedAt);
    const endedAt = finite(run.endedAt) ?? finite(run.finishedAt);
    p.run = { state: run.state, jobName, startedAt, finishedAt: endedAt };
    live.runState = { state: run.state, startedAt, endedAt };
    if (run.spec !== undefined) live.spec = run.spec;
    if (Array.isArray(run.taskProgress)) {
      const before = new Map((live.progress ?? []).map((t) => [t.taskId, t]));
      const progress = run.taskProgress.filter((t): t is TaskProgressLike => isObject(t) && isName(t.taskId) && typeof t.state === 'string');
      for (const t of progress) {
        const old = before.get(t.taskId);
        if (old && old.state === t.state && old.endedAt === t.endedAt && old.dispatchedAt === t.dispatchedAt && old.attempts === t.attempts) continue;
        const delta = p.task(t.taskId);
        delta.state = taskStateOf(t.state);
        if (t.reason !== undefined) delta.reason = t.reason;
        if (t.dispatchedAt !== undefined) delta.dispatchedAt = t.dispatchedAt;
        if (t.startAt !== undefined) delta.startAt = t.startAt;
        if (t.endedAt !== undefined && delta.state !== 'running' && delta.state !== 'pending') delta.finishedAt = t.endedAt;
        if (t.attempts !== undefined) delta.attempts = t.attempts;
      }
      live.progress = progress;
    }
    if (FINAL_RUN_STATES.has(run.state)) live.endedSeenAt ??= performance.now();
    else live.endedSeenAt = null;
    live.throttle.touch();

    const targets = Array.isArray(run.taskProgress) ? run.taskProgress.map((t) => (isObject(t) ? (finite(t.targets) ?? 0) : 0)) : [];
    const counts = isObject(run.tasks) ? run.tasks : {};
    this.#setRow({
      id: runId,
      jobName,
      state: run.state,
      createdAt: finite(run.createdAt) ?? this.#rows.get(runId)?.createdAt ?? Date.now(),
      startedAt,
      finishedAt: endedAt,
      hosts: targets.length > 0 ? Math.max(...targets) : null,
      tasks: finite(counts.total) ?? (Array.isArray(run.taskProgress) ? run.taskProgress.length : null),
      tasksFailed: finite(counts.failed),
    });
  }

  onRunCancelled(data: unknown): void {
    if (!isObject(data) || !isName(data.runId)) return;
    const live = this.#touch(data.runId);
    const p = this.#pending(live);
    p.seen(Date.now());
    p.run = { ...p.run, state: 'cancelled' };
    live.runState = { startedAt: null, endedAt: null, ...live.runState, state: 'cancelled' };
    live.endedSeenAt ??= performance.now();
    live.throttle.touch();
  }

  onMetricsBatch(data: unknown): void {
    if (!isObject(data) || !isName(data.runId)) return;
    const samples = metricsBatchSamples(data);
    if (samples === undefined) return;
    let newest = -Infinity;
    let live: LiveRun | undefined;
    let p: PendingRun | undefined;
    for (const s of samples) {
      if (!isObject(s) || typeof s.t !== 'number' || !Number.isFinite(s.t)) continue;
      if (s.t > newest) newest = s.t;
      if (typeof s.metric !== 'string') continue;
      live ??= this.#touch(data.runId);
      if (!live.metricNames.has(s.metric) && live.metricNames.size < this.#settings.maxMetricNames) {
        live.metricNames.add(s.metric);
        p ??= this.#pending(live);
        p.names.push(s.metric);
      }
    }
    if (live === undefined || !Number.isFinite(newest)) return;
    if (live.metricT === null || newest > live.metricT) live.metricT = newest;
    p ??= this.#pending(live);
    p.seen(newest);
    p.metricT = live.metricT;
    live.throttle.touch();
  }

  onHostState(data: unknown): void {
    if (!isObject(data) || !isName(data.id) || typeof data.to !== 'string') return;
    const at = Math.min(finite(data.at) ?? Date.now(), Date.now());
    const reason = typeof data.reason === 'string' ? data.reason : '';
    let host = this.#hosts.get(data.id);
    if (host === undefined) {
      host = { id: data.id, name: isName(data.name) ? data.name : data.id, state: data.to, since: at, reason, history: [] };
    } else {
      this.#hosts.delete(data.id);
      if (isName(data.name)) host.name = data.name;
      host.state = data.to;
      host.since = at;
      host.reason = reason;
    }
    host.history.push({ from: typeof data.from === 'string' ? data.from : null, to: data.to, at, reason });
    if (host.history.length > this.#settings.historyPerHost) host.history.shift();
    // Most recently changed last: the first entry is the one to forget when full.
    this.#hosts.set(data.id, host);
    if (this.#hosts.size > this.#settings.maxHosts) this.#hosts.delete(this.#hosts.keys().next().value!);
    const { history: _h, ...row } = host;
    this.#pendingHosts.set(host.id, row);
    if (at > this.#pendingHostsAt) this.#pendingHostsAt = at;
    this.#hostsThrottle.touch();
  }

  onPluginState(data: unknown): void {
    if (!isObject(data) || !isName(data.name)) return;
    this.#pendingPlugins.set(data.name, data);
    this.#pluginsThrottle.touch();
  }

  /** Forgets runs that ended `runRetentionMs` ago or stayed silent for hours. */
  sweep(now: number): void {
    for (const [id, live] of this.#runs) {
      const ended = live.endedSeenAt !== null && now - live.endedSeenAt > this.#settings.runRetentionMs;
      if ((ended || now - live.touchedAt > IDLE_RUN_MS) && live.pending === null) this.#forget(id);
    }
  }

  close(): void {
    clearInterval(this.#sweep);
    for (const live of this.#runs.values()) live.throttle.cancel();
    this.#rowsThrottle.cancel();
    this.#hostsThrottle.cancel();
    this.#pluginsThrottle.cancel();
  }

  #touch(runId: string): LiveRun {
    let live = this.#runs.get(runId);
    if (live === undefined) {
      if (this.#runs.size >= this.#settings.maxRuns) this.#evictOne();
      live = {
        runId,
        spec: undefined,
        progress: null,
        runState: null,
        metricNames: new Set(),
        metricT: null,
        startAt: new Map(),
        touchedAt: performance.now(),
        endedSeenAt: null,
        pending: null,
        throttle: new Throttle(this.#settings.coalesceMs, this.#settings.gatherMs, () => this.#flushRun(runId)),
      };
      this.#runs.set(runId, live);
    }
    live.touchedAt = performance.now();
    return live;
  }

  /** Makes room: a finished run first (the one that ended first), else the least recently active. */
  #evictOne(): void {
    let victim: LiveRun | undefined;
    for (const live of this.#runs.values()) {
      const key = (l: LiveRun) => (l.endedSeenAt !== null ? [0, l.endedSeenAt] : [1, l.touchedAt]);
      if (victim === undefined) victim = live;
      else {
        const [a0, a1] = key(live);
        const [b0, b1] = key(victim);
        if (a0! < b0! || (a0 === b0 && a1! < b1!)) victim = live;
      }
    }
    if (victim !== undefined) this.#forget(victim.runId);
  }

  #forget(runId: string): void {
    const live = this.#runs.get(runId);
    if (live === undefined) return;
    live.throttle.cancel();
    this.#runs.delete(runId);
  }

  #pending(live: LiveRun): PendingRun {
    return (live.pending ??= new PendingRun());
  }

  #flushRun(runId: string): void {
    const live = this.#runs.get(runId);
    if (live?.pending == null) return;
    const message = live.pending.message(runId, ++this.#seq);
    live.pending = null;
    this.published.run++;
    this.#publish(message);
  }

  #keepRow(row: UiRunRow): void {
    this.#rows.delete(row.id);
    this.#rows.set(row.id, row);
    if (this.#rows.size > this.#settings.maxRunRows) this.#rows.delete(this.#rows.keys().next().value!);
  }

  #setRow(row: UiRunRow): void {
    this.#keepRow(row);
    this.#pendingRows.set(row.id, row);
    this.#rowsThrottle.touch();
  }

  #flushRows(): void {
    if (this.#pendingRows.size === 0) return;
    const runs = [...this.#pendingRows.values()];
    this.#pendingRows.clear();
    this.published.runs++;
    this.#publish({ kind: 'runs', seq: ++this.#seq, at: Date.now(), sentAt: Date.now(), runs });
  }

  #flushHosts(): void {
    if (this.#pendingHosts.size === 0) return;
    const hosts = [...this.#pendingHosts.values()];
    this.#pendingHosts.clear();
    const at = this.#pendingHostsAt;
    this.#pendingHostsAt = -Infinity;
    this.published.hosts++;
    this.#publish({ kind: 'hosts', seq: ++this.#seq, at, sentAt: Date.now(), hosts });
  }

  #flushPlugins(): void {
    if (this.#pendingPlugins.size === 0) return;
    const plugins = [...this.#pendingPlugins.values()];
    this.#pendingPlugins.clear();
    this.published.plugins++;
    this.#publish({ kind: 'plugins', seq: ++this.#seq, at: Date.now(), sentAt: Date.now(), plugins });
  }
}
