/**
 * The DAG scheduler: turns a parsed job into a run, walks its tasks in dependency order over the
 * bus, and keeps every step in the RunStore so a restarted server resumes where it was.
 *
 * How a task goes out (each step only after the one before):
 *  1. it is saved as `dispatching` with a new attempt (command id generated here, `startAt` fixed);
 *  2. `run.task.dispatched` is published (the sink learns the targets before any event);
 *  3. `transport.dispatch` is requested with the same `commandId`;
 *  4. the transport's answer moves it to `running`; only the sink's `task.status` ends it.
 * A task whose step 3 did not complete when the server stopped is sent again on start with the same
 * command id, which a client that already has it refuses as a replay.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import cron, { type ScheduledTask } from 'node-cron';
import type { Bus, Logger } from '../../plugin-sdk/src/index.ts';
import { BoltError, toErrorInfo } from '../../plugin-sdk/src/errors.ts';
import type { HostShare, NormalizedJob } from '../../plugin-sdk/src/schemas/job.ts';
import type { TaskHostCounts } from '../../plugin-sdk/src/schemas/wire.ts';
import type { HostView } from '../health-monitor/monitor.ts';
import { formatIssue } from '../parser-yaml/issues.ts';
import type { ParseResult } from '../parser-yaml/parse.ts';
import { renderTemplate, type TemplateContext } from '../parser-yaml/template.ts';
import type { RunTaskView, RunView } from '../writer-sqlite/services.ts';
import { checkHealthGate, resolveGroups, targetsOf } from './hosts.ts';
import {
  FINAL_TASK_STATES, IN_FLIGHT_TASK_STATES, mergeHostCounts, summarize,
  type AttemptRecord, type RecordedError, type RunRecord, type RunSummary, type ScheduleRecord, type ScheduledOrigin, type TaskRecord,
} from './model.ts';
import { isActive, type RunStore } from './store.ts';

/** The longest delay a Node.js timer supports: the timeout sent for a task without one. */
export const NO_TIMEOUT_MS = 2_147_483_647;

/** Settings (the plugin's config; see README.md). */
export interface SchedulerSettings {
  knownActions: string[];
  healthyStates: string[];
  togetherMarginMs: number;
  togetherDefaultLeadMs: number;
  togetherMaxLeadMs: number;
  latencyWindowMs: number;
  dispatchTimeoutMs: number;
  providerWaitMs: number;
  retryLookupMs: number;
}

export interface SchedulerDeps {
  bus: Bus;
  log: Logger;
  store: RunStore;
  settings: SchedulerSettings;
  /** Aborted when the plugin unloads: pending waits end, late answers are ignored. */
  signal: AbortSignal;
  /** The server's clock (ms since the epoch). */
  now(): number;
}

/** `scheduler.runs.create` request (what `POST /api/runs` sends). */
export interface CreateRequest {
  text: string;
  file?: string;
  vars?: Record<string, string>;
}

/** What `scheduler.runs.create` answers for a job with `schedule:`. */
export interface ScheduleInfo {
  scheduleId: string;
  job: string;
  schedule: string;
  nextRunAt: number | null;
  /** A schedule of the same job name existed and was replaced. */
  replaced: boolean;
}

/** A task of a run as `run.updated` carries it: progress only, no per-host lists. */
export interface TaskProgress {
  taskId: string;
  action: string;
  state: TaskRecord['state'];
  targets: number;
  hosts: TaskRecord['hosts'];
  startAt: number | null;
  dispatchedAt: number | null;
  endedAt: number | null;
  attempts: number;
  reason?: string;
  error?: RecordedError;
}

/** The `run` of a `run.updated` message. */
export interface RunUpdate extends RunSummary {
  description: string | null;
  spec: NormalizedJob;
  taskProgress: TaskProgress[];
}

/** A task of `scheduler.runs.get`, with the sink's per-host rows when the sink answered. */
export interface TaskDetail extends TaskRecord {
  results?: Array<RunTaskView['results'][number] & { attempt: number }>;
}

/** What `scheduler.runs.get` answers. */
export interface RunDetail extends Omit<RunRecord, 'tasks'> {
  tasks: TaskDetail[];
}

interface StatusMessage {
  runId: string;
  taskId: string;
  state: 'succeeded' | 'failed' | 'cancelled';
  hosts: TaskHostCounts;
  lost?: number;
}

interface AckMessage {
  hostId: string;
  runId: string;
  taskId: string;
  accepted: boolean;
  code?: string;
}

interface DispatchAnswer {
  commandId: string;
  sentAt?: number;
  sent: string[];
  /** Accepted hosts not connected right now: the transport delivers to them when they are back (until the command expires). */
  held?: string[];
  skipped: { id: string; reason: string }[];
}

/** Ack round trips kept for the `start: together` lead. */
const MAX_LATENCY_SAMPLES = 4096;
const STATUS_STATES: ReadonlySet<string> = new Set(['succeeded', 'failed', 'cancelled']);

function codeOf(err: unknown): string {
  return typeof (err as { code?: unknown })?.code === 'string' ? (err as { code: string }).code : 'ERR_UNKNOWN';
}

/** The innermost BoltError-like error of a bus failure (the bus wraps what a handler threw). */
function recorded(err: unknown): RecordedError {
  let info = toErrorInfo(err);
  while (info.code === 'BOLT_ERR_BUS_HANDLER_FAILED' && info.cause) info = info.cause;
  return { code: info.code, message: info.message, ...(info.details && { details: info.details }) };
}

function isStringMap(value: unknown): value is Record<string, string> {
  return value !== null && typeof value === 'object' && !Array.isArray(value) && Object.values(value).every((v) => typeof v === 'string');
}

function newRunId(now: number): string {
  const stamp = new Date(now).toISOString().slice(0, 19).replace(/[-:]/g, '').replace('T', '-');
  return `run-${stamp}-${randomBytes(2).toString('hex')}`;
}

export class Scheduler {
  readonly #bus: Bus;
  readonly #log: Logger;
  readonly #store: RunStore;
  readonly #settings: SchedulerSettings;
  readonly #healthy: ReadonlySet<string>;
  readonly #signal: AbortSignal;
  readonly #now: () => number;
  /** Runs the scheduler still acts on or waits for (see isActive), by id. */
  readonly #active = new Map<string, RunRecord>();
  /** When each in-flight attempt was handed to the transport, by `runId \0 wireTaskId`. */
  readonly #requestedAt = new Map<string, { at: number; attempt: AttemptRecord }>();
  /** Dispatch round trips (ack received minus dispatch requested), oldest first. */
  readonly #latencies: { at: number; ms: number }[] = [];
  readonly #schedules = new Map<string, ScheduleRecord>();
  readonly #crons = new Map<string, ScheduledTask>();

  constructor(deps: SchedulerDeps) {
    this.#bus = deps.bus;
    this.#log = deps.log;
    this.#store = deps.store;
    this.#settings = deps.settings;
    this.#healthy = new Set(deps.settings.healthyStates);
    this.#signal = deps.signal;
    this.#now = deps.now;
  }

  /** Loads the active runs and the schedules from the store, arms the schedules and resumes the runs in the background. */
  start(): void {
    for (const schedule of this.#store.listSchedules()) {
      this.#schedules.set(schedule.scheduleId, schedule);
      this.#arm(schedule);
    }
    const runs = this.#store.activeRuns();
    for (const run of runs) this.#active.set(run.runId, run);
    if (runs.length > 0) this.#log.info({ runs: runs.map((r) => r.runId) }, `resuming ${runs.length} run${runs.length === 1 ? '' : 's'}`);
    for (const run of runs) this.#resume(run);
  }

  /** Stops the schedules; later bus answers are ignored (the signal is aborted by then). */
  close(): void {
    for (const task of this.#crons.values()) void task.destroy();
    this.#crons.clear();
  }

  // ------------------------------------------------------------------ services

  /**
   * Parses the job through `parser-yaml`; a job with `schedule:` is registered (ScheduleInfo), any
   * other starts a run (its RunSummary). Throws BOLT_ERR_JOB_INVALID (details.issues),
   * BOLT_ERR_JOB_TEMPLATE, BOLT_ERR_RUN_NO_HOSTS or BOLT_ERR_RUN_UNHEALTHY.
   */
  async create(data: unknown): Promise<RunSummary | ScheduleInfo> {
    const req = (data ?? {}) as Partial<CreateRequest>;
    if (typeof req.text !== 'string') throw new TypeError('scheduler.runs.create takes { text: string, file?: string, vars?: { [name]: string } }');
    if (req.vars !== undefined && !isStringMap(req.vars)) throw new TypeError('scheduler.runs.create: vars must map names to strings');
    const file = typeof req.file === 'string' && req.file !== '' ? req.file : 'job.yaml';
    const vars = req.vars ?? {};
    const parsed = await this.#request<ParseResult>('parser-yaml', { text: req.text, file, vars, knownActions: this.#settings.knownActions }, 10_000);
    if (!parsed.job) {
      const first = parsed.issues[0];
      const n = parsed.issues.length;
      throw new BoltError('BOLT_ERR_JOB_INVALID',
        `${file}: the job has ${n} problem${n === 1 ? '' : 's'}${first ? `; the first: ${formatIssue(first)}` : ''}`,
        { details: { file, issues: parsed.issues } });
    }
    if (parsed.job.schedule !== null) return this.#register(parsed.job, file, vars);
    return summarize(await this.#startRun(parsed.job, file, vars, null));
  }

  /** The newest `limit` runs (default 1000), newest first. */
  list(data: unknown): RunSummary[] {
    const limit = (data as { limit?: unknown } | null | undefined)?.limit;
    return this.#store.listRuns(typeof limit === 'number' && Number.isInteger(limit) && limit > 0 ? Math.min(limit, 100_000) : 1000);
  }

  /** The run with every task, its targets and attempts, and the sink's per-host rows when `sink.run` answers. */
  async get(data: unknown): Promise<RunDetail> {
    const run = this.#find(data);
    let view: RunView | null = null;
    try {
      view = await this.#bus.request<RunView | null>('sink.run', { runId: run.runId }, { timeoutMs: 2000 });
    } catch (err) {
      this.#log.debug({ code: codeOf(err) }, 'sink.run not available; the run is shown without per-host results');
    }
    if (!view) return run;
    const byWireId = new Map(view.tasks.map((t) => [t.taskId, t]));
    return {
      ...run,
      tasks: run.tasks.map((task) => ({
        ...task,
        results: task.attempts.flatMap((a) => (byWireId.get(a.wireTaskId)?.results ?? []).map((r) => ({ ...r, attempt: a.attempt }))),
      })),
    };
  }

  /**
   * Cancels a running run: tasks not started are cancelled, `transport.cancel` goes to every target
   * of the tasks in flight, the run ends `cancelled` at once (their statuses are still recorded when
   * they come). A run that already ended is returned as it is.
   */
  async cancel(data: unknown): Promise<RunSummary & { cancelled: { taskId: string; targets: number; sent: number; error?: RecordedError }[] }> {
    const run = this.#find(data);
    if (run.state !== 'running') return { ...summarize(run), cancelled: [] };
    const now = this.#now();
    run.state = 'cancelled';
    run.endedAt = now;
    const changed = run.tasks.filter((t) => t.state === 'waiting');
    for (const task of changed) this.#endTask(task, 'cancelled', now, 'the run was cancelled');
    this.#save(run, changed);
    this.#bus.publish('run.cancelled', { runId: run.runId });
    this.#log.info({ runId: run.runId }, `run ${run.runId} cancelled`);
    const inFlight = run.tasks.filter((t) => IN_FLIGHT_TASK_STATES.has(t.state));
    const cancelled = await Promise.all(inFlight.map((task) => this.#cancelTask(run, task)));
    return { ...summarize(run), cancelled };
  }

  schedules(): Array<ScheduleRecord & { nextRunAt: number | null }> {
    return [...this.#schedules.values()].map((s) => ({ ...s, nextRunAt: this.#nextRunAt(s.scheduleId) }));
  }

  /** Removes a schedule, by `scheduleId` or `job` name; runs it started are kept. */
  removeSchedule(data: unknown): ScheduleRecord {
    const { scheduleId, job } = (data ?? {}) as { scheduleId?: unknown; job?: unknown };
    const schedule = [...this.#schedules.values()].find((s) => s.scheduleId === scheduleId || (typeof job === 'string' && s.job === job));
    if (!schedule) throw new BoltError('BOLT_ERR_RUN_SCHEDULE_NOT_FOUND', `no schedule ${String(scheduleId ?? job)}`);
    void this.#crons.get(schedule.scheduleId)?.destroy();
    this.#crons.delete(schedule.scheduleId);
    this.#schedules.delete(schedule.scheduleId);
    this.#store.deleteSchedule(schedule.scheduleId);
    this.#log.info({ scheduleId: schedule.scheduleId, job: schedule.job }, `schedule of ${schedule.job} removed`);
    return schedule;
  }

  // ------------------------------------------------------------------ bus topics

  /** `task.status` from the sink: the final state of one attempt of a task. */
  onStatus(data: unknown): void {
    const msg = data as Partial<StatusMessage> | null;
    if (!msg || typeof msg.runId !== 'string' || typeof msg.taskId !== 'string' || !STATUS_STATES.has(String(msg.state)) || typeof msg.hosts !== 'object' || msg.hosts === null) {
      this.#log.warn({ status: msg }, 'ignored a malformed task.status');
      return;
    }
    const run = this.#active.get(msg.runId);
    const found = run && this.#attemptOf(run, msg.taskId);
    if (!run || !found) {
      this.#log.debug({ runId: msg.runId, taskId: msg.taskId }, 'task.status for no task in flight (a repeat, or another server\'s run)');
      return;
    }
    const { task, attempt } = found;
    if (attempt.status !== null) return;
    attempt.status = { state: msg.state!, hosts: msg.hosts, ...(msg.lost !== undefined && { lost: msg.lost }), at: this.#now() };
    this.#requestedAt.delete(`${run.runId}\0${attempt.wireTaskId}`);
    task.hosts = mergeHostCounts(task.attempts);
    this.#log.info({ runId: run.runId, taskId: task.taskId, attempt: attempt.attempt, state: msg.state, hosts: msg.hosts }, `task ${task.taskId} ${msg.state}`);
    if (task.attempts.at(-1) !== attempt || FINAL_TASK_STATES.has(task.state)) {
      this.#save(run, [task]);
      return;
    }
    this.#decide(run, task, attempt);
  }

  /** `task.ack` from the transport: a client accepted or refused a command. */
  onAck(data: unknown): void {
    const ack = data as Partial<AckMessage> | null;
    if (!ack || typeof ack.runId !== 'string' || typeof ack.taskId !== 'string') return;
    const pending = this.#requestedAt.get(`${ack.runId}\0${ack.taskId}`);
    if (!pending) return;
    const now = this.#now();
    this.#latencies.push({ at: now, ms: now - pending.at });
    if (this.#latencies.length > MAX_LATENCY_SAMPLES) this.#latencies.shift();
    if (ack.accepted === true) pending.attempt.acks.accepted++;
    else {
      pending.attempt.acks.refused.push({ hostId: String(ack.hostId), code: typeof ack.code === 'string' ? ack.code : null });
      this.#log.warn({ runId: ack.runId, taskId: ack.taskId, hostId: ack.hostId, code: ack.code }, 'a client refused a dispatch');
    }
  }

  // ------------------------------------------------------------------ runs

  async #startRun(job: NormalizedJob, file: string, vars: Record<string, string>, scheduled: ScheduledOrigin | null): Promise<RunRecord> {
    const hosts = await this.#request<HostView[]>('health.hosts', {}, 5000);
    const groups = resolveGroups(job, hosts, this.#healthy);
    const targeted = new Map<string, HostView>();
    for (const task of job.tasks) for (const g of task.hosts) for (const h of groups.get(g) ?? []) targeted.set(h.id, h);
    checkHealthGate([...targeted.values()], job.require.healthy, this.#healthy);
    const templates: TemplateContext = {
      vars: job.vars,
      hosts: Object.fromEntries([...groups].map(([name, hs]) => [name, hs.map((h) => ({ name: h.name, address: h.address ?? '', labels: { ...h.labels } }))])),
    };
    const run = this.#newRun(job, file, vars, scheduled);
    run.tasks = job.tasks.map((t) => ({
      taskId: t.id,
      description: t.description,
      action: t.action,
      groups: t.hosts,
      needs: t.needs,
      start: t.start,
      with: renderTemplate(t.with, templates) as Record<string, unknown>,
      timeoutMs: t.timeoutMs,
      retries: t.retries,
      failure: t.failure,
      order: t.order,
      targets: targetsOf(t.hosts, groups),
      state: 'waiting',
      hosts: null,
      startAt: null,
      dispatchedAt: null,
      endedAt: null,
      attempts: [],
    }));
    this.#active.set(run.runId, run);
    this.#log.info({ runId: run.runId, job: job.name, tasks: run.tasks.length, hosts: targeted.size }, `run ${run.runId} of ${job.name} started`);
    this.#advance(run, run.tasks);
    return run;
  }

  #newRun(job: NormalizedJob, file: string, vars: Record<string, string>, scheduled: ScheduledOrigin | null): RunRecord {
    const now = this.#now();
    let runId = newRunId(now);
    while (this.#store.hasRun(runId)) runId = newRunId(now);
    return {
      runId, job: job.name, description: job.description, state: 'running', createdAt: now, startedAt: null, endedAt: null,
      file, vars, scheduled, spec: job, tasks: [],
    };
  }

  /**
   * Walks the DAG once: cancels waiting tasks that need a failed or cancelled task, starts every
   * waiting task whose needs all succeeded, ends the run when no task is left to finish. Saves the
   * run (with `changed` and every task it touched) before anything is announced or sent.
   */
  #advance(run: RunRecord, changed: TaskRecord[] = []): void {
    const touched = new Set(changed);
    const now = this.#now();
    const byId = new Map(run.tasks.map((t) => [t.taskId, t]));
    const starting: TaskRecord[] = [];
    if (run.state === 'running') {
      // Dependency order: a cancellation reaches the dependents of dependents in this one pass.
      for (const task of [...run.tasks].sort((a, b) => a.order - b.order)) {
        if (task.state !== 'waiting') continue;
        const needs = task.needs.map((id) => byId.get(id)!);
        const blocker = needs.find((n) => n.state === 'failed' || n.state === 'cancelled');
        if (blocker) {
          this.#endTask(task, 'cancelled', now, `needs ${blocker.taskId}, which ${blocker.state === 'failed' ? 'failed' : 'was cancelled'}`);
          touched.add(task);
        } else if (needs.every((n) => n.state === 'succeeded')) {
          this.#newAttempt(run, task, task.targets.map((t) => t.id));
          starting.push(task);
          touched.add(task);
        }
      }
      if (run.tasks.every((t) => FINAL_TASK_STATES.has(t.state))) {
        run.state = run.tasks.every((t) => t.state === 'succeeded') ? 'succeeded' : 'failed';
        run.endedAt = now;
        this.#log.info({ runId: run.runId, state: run.state }, `run ${run.runId} ${run.state}`);
      }
    }
    this.#save(run, [...touched]);
    for (const task of starting) void this.#send(run, task, task.attempts.at(-1)!);
  }

  /** Resumes a run loaded from the store. */
  #resume(run: RunRecord): void {
    for (const task of run.tasks) {
      const attempt = task.attempts.at(-1);
      if (!attempt) continue;
      if (task.state === 'dispatching') {
        if (run.state === 'running') void this.#send(run, task, attempt);
        else void this.#cancelTask(run, task);
      } else if (task.state === 'running' && attempt.status !== null) {
        // Stopped between a failed attempt's status and its retry: decide again.
        this.#decide(run, task, attempt);
      }
    }
    this.#advance(run);
    if (run.tasks.some((t) => IN_FLIGHT_TASK_STATES.has(t.state))) void this.#adoptFromSink(run);
  }

  /** What to do after the latest attempt of a task got its status. */
  #decide(run: RunRecord, task: TaskRecord, attempt: AttemptRecord): void {
    const status = attempt.status!;
    const now = this.#now();
    if (status.state === 'succeeded') this.#endTask(task, 'succeeded', now);
    else if (status.state === 'failed' && run.state === 'running' && task.attempts.length <= task.retries) {
      this.#save(run, [task]);
      void this.#retry(run, task, attempt);
      return;
    } else this.#endTask(task, status.state === 'cancelled' ? 'cancelled' : 'failed', now, status.state === 'cancelled' ? 'cancelled on its hosts' : undefined);
    this.#advance(run, [task]);
  }

  /** Retries a failed attempt on the hosts that failed it and are still connected. */
  async #retry(run: RunRecord, task: TaskRecord, failed: AttemptRecord): Promise<void> {
    const failedHosts = await this.#failedHosts(run, task, failed);
    const usable = await this.#request<HostView[]>('health.hosts', {}, 5000).then(
      (hosts) => new Set(hosts.filter((h) => h.connected !== false && h.state !== 'lost').map((h) => h.id)),
      () => null,
    );
    if (this.#signal.aborted) return;
    const targets = failedHosts.filter((id) => usable === null || usable.has(id));
    if (run.state !== 'running' || task.attempts.at(-1) !== failed || targets.length === 0) {
      this.#endTask(task, 'failed', this.#now(), targets.length === 0 && run.state === 'running' ? 'no host that failed is still connected to retry on' : undefined);
      this.#advance(run, [task]);
      return;
    }
    this.#log.info({ runId: run.runId, taskId: task.taskId, attempt: failed.attempt + 1, hosts: targets.length }, `retrying task ${task.taskId} on ${targets.length} host${targets.length === 1 ? '' : 's'}`);
    this.#newAttempt(run, task, targets);
    this.#save(run, [task]);
    void this.#send(run, task, task.attempts.at(-1)!);
  }

  /**
   * The hosts that did not succeed in an attempt: its targets minus those the sink's per-host rows
   * (`sink.run`) show finished. The rows may trail the status by a flush, so they are asked again
   * until they account for every finished host or `retryLookupMs` passed; without `sink.run`, every
   * target of the attempt is retried unless the status says none finished.
   */
  async #failedHosts(run: RunRecord, task: TaskRecord, attempt: AttemptRecord): Promise<string[]> {
    const finishedCount = attempt.status!.hosts.finished;
    if (finishedCount === 0) return attempt.targets;
    const idOfName = new Map(task.targets.map((t) => [t.name, t.id]));
    const deadline = this.#now() + this.#settings.retryLookupMs;
    let finished = new Set<string>();
    for (;;) {
      try {
        const view = await this.#bus.request<RunView | null>('sink.run', { runId: run.runId }, { timeoutMs: 2000 });
        const rows = view?.tasks.find((t) => t.taskId === attempt.wireTaskId)?.results ?? [];
        finished = new Set(rows.filter((r) => r.state === 'finished').map((r) => idOfName.get(r.host)).filter((id): id is string => id !== undefined));
      } catch (err) {
        this.#log.warn({ runId: run.runId, taskId: task.taskId, code: codeOf(err) }, 'no per-host results from the sink: retrying on every host of the attempt');
        return attempt.targets;
      }
      if (finished.size >= finishedCount || this.#now() >= deadline || this.#signal.aborted) break;
      await delay(100, undefined, { signal: this.#signal }).catch(() => undefined);
    }
    return attempt.targets.filter((id) => !finished.has(id));
  }

  /** Adopts final task states the sink committed while this server was down. */
  async #adoptFromSink(run: RunRecord): Promise<void> {
    let view: RunView | null;
    try {
      view = await this.#request<RunView | null>('sink.run', { runId: run.runId }, 5000);
    } catch (err) {
      this.#log.debug({ runId: run.runId, code: codeOf(err) }, 'sink.run not available; waiting for task.status');
      return;
    }
    for (const t of view?.tasks ?? []) {
      if (t.state === 'running') continue;
      const h = t.hosts;
      this.onStatus({
        runId: run.runId,
        taskId: t.taskId,
        state: t.state,
        hosts: { total: h.total, started: h.started, finished: h.ok, failed: h.failed - h.timedout - h.cancelled, timedout: h.timedout, cancelled: h.cancelled },
        ...(h.lost > 0 && { lost: h.lost }),
      });
    }
  }

  // ------------------------------------------------------------------ dispatch

  #newAttempt(run: RunRecord, task: TaskRecord, targets: string[]): void {
    const now = this.#now();
    const n = task.attempts.length + 1;
    const attempt: AttemptRecord = {
      attempt: n,
      wireTaskId: n === 1 ? task.taskId : `${task.taskId}.${n}`,
      commandId: randomUUID(),
      targets,
      startAt: task.start === 'together' ? now + this.#lead() : null,
      timeoutMs: task.timeoutMs ?? NO_TIMEOUT_MS,
      failure: n === 1 ? task.failure : { maxFailedHosts: allowanceOf(task.failure.maxFailedHosts, task.targets.length) },
      dispatchedAt: now,
      transport: null,
      acks: { accepted: 0, refused: [] },
      status: null,
    };
    task.attempts.push(attempt);
    task.state = 'dispatching';
    task.startAt = attempt.startAt;
    task.dispatchedAt ??= now;
    run.startedAt ??= now;
  }

  /**
   * How far ahead a `start: together` task starts: the longest dispatch round trip measured from
   * acks in the last `latencyWindowMs` (capped at `togetherMaxLeadMs`; `togetherDefaultLeadMs`
   * before any was measured), plus `togetherMarginMs`.
   */
  #lead(): number {
    const { latencyWindowMs, togetherDefaultLeadMs, togetherMaxLeadMs, togetherMarginMs } = this.#settings;
    const since = this.#now() - latencyWindowMs;
    while (this.#latencies.length > 0 && this.#latencies[0]!.at < since) this.#latencies.shift();
    const measured = this.#latencies.length === 0 ? togetherDefaultLeadMs : Math.min(togetherMaxLeadMs, Math.max(...this.#latencies.map((l) => l.ms)));
    return Math.ceil(measured) + togetherMarginMs;
  }

  /** Announces an attempt and hands it to the transport (the attempt is already saved). */
  async #send(run: RunRecord, task: TaskRecord, attempt: AttemptRecord): Promise<void> {
    const names = new Map(task.targets.map((t) => [t.id, t.name]));
    this.#bus.publish('run.task.dispatched', {
      runId: run.runId,
      taskId: attempt.wireTaskId,
      commandId: attempt.commandId,
      targets: attempt.targets.map((id) => ({ id, name: names.get(id) ?? id })),
      startAt: attempt.startAt,
      timeoutMs: attempt.timeoutMs,
      failure: attempt.failure,
      dispatchedAt: attempt.dispatchedAt,
      task: task.taskId,
      attempt: attempt.attempt,
    });
    this.#requestedAt.set(`${run.runId}\0${attempt.wireTaskId}`, { at: this.#now(), attempt });
    let answer: DispatchAnswer | null = null;
    let error: RecordedError | undefined;
    try {
      answer = await this.#request<DispatchAnswer>('transport.dispatch', {
        runId: run.runId,
        taskId: attempt.wireTaskId,
        commandId: attempt.commandId,
        action: task.action,
        with: task.with,
        startAt: attempt.startAt,
        timeoutMs: attempt.timeoutMs,
        metrics: run.spec.tasks.find((t) => t.id === task.taskId)?.metrics,
        targets: attempt.targets,
      }, this.#settings.dispatchTimeoutMs);
    } catch (err) {
      const cause = recorded(err);
      error = { code: 'BOLT_ERR_RUN_DISPATCH_FAILED', message: `transport.dispatch failed: ${cause.code}: ${cause.message}` };
    }
    if (this.#signal.aborted) return;
    if (answer) {
      attempt.transport = { commandId: answer.commandId, sentAt: answer.sentAt ?? null, sent: answer.sent, skipped: answer.skipped };
      if (answer.skipped.length > 0) this.#log.warn({ runId: run.runId, taskId: attempt.wireTaskId, skipped: answer.skipped }, `${answer.skipped.length} target${answer.skipped.length === 1 ? ' was' : 's were'} not reached`);
      if (answer.held?.length) this.#log.info({ runId: run.runId, taskId: attempt.wireTaskId, held: answer.held }, `${answer.held.length} target(s) not connected: the command waits for them`);
      if (answer.sent.length === 0 && !answer.held?.length) {
        const why = answer.skipped.slice(0, 10).map((s) => `${names.get(s.id) ?? s.id} (${s.reason})`).join(', ');
        error = { code: 'BOLT_ERR_RUN_DISPATCH_FAILED', message: `the transport reached none of the ${attempt.targets.length} targets: ${why}` };
      }
    }
    if (error) attempt.error = error;
    if (task.attempts.at(-1) !== attempt || task.state !== 'dispatching') {
      // Its status came first, or the run was cancelled meanwhile: only record the answer.
      this.#save(run, [task]);
      return;
    }
    if (error) {
      this.#log.error({ runId: run.runId, taskId: task.taskId, code: error.code }, error.message);
      task.error = error;
      this.#endTask(task, 'failed', this.#now());
    } else {
      task.state = 'running';
    }
    this.#advance(run, [task]);
  }

  async #cancelTask(run: RunRecord, task: TaskRecord): Promise<{ taskId: string; targets: number; sent: number; error?: RecordedError }> {
    const attempt = task.attempts.at(-1)!;
    const targets = attempt.transport?.sent ?? attempt.targets;
    try {
      const answer = await this.#request<DispatchAnswer>('transport.cancel', { runId: run.runId, taskId: attempt.wireTaskId, targets }, this.#settings.dispatchTimeoutMs);
      return { taskId: task.taskId, targets: targets.length, sent: answer.sent.length };
    } catch (err) {
      const error = recorded(err);
      this.#log.error({ runId: run.runId, taskId: task.taskId, code: error.code }, `could not cancel task ${task.taskId}: ${error.message}`);
      return { taskId: task.taskId, targets: targets.length, sent: 0, error };
    } finally {
      // Its dispatch had no answer yet (still in flight, or cut short by a stop of the server):
      // the cancel follows the dispatch to the same hosts, so the task ends here.
      if (task.state === 'dispatching' && !this.#signal.aborted) {
        this.#endTask(task, 'cancelled', this.#now(), 'the run was cancelled while the task was being dispatched');
        this.#save(run, [task]);
      }
    }
  }

  // ------------------------------------------------------------------ schedules

  #register(job: NormalizedJob, file: string, vars: Record<string, string>): ScheduleInfo {
    const now = this.#now();
    const existing = [...this.#schedules.values()].find((s) => s.job === job.name);
    const schedule: ScheduleRecord = {
      scheduleId: existing?.scheduleId ?? `sched-${randomBytes(4).toString('hex')}`,
      job: job.name,
      schedule: job.schedule!,
      file,
      vars,
      spec: job,
      createdAt: existing?.createdAt ?? now,
      updatedAt: now,
      fired: existing?.fired ?? 0,
      lastFiredAt: existing?.lastFiredAt ?? null,
      lastRunId: existing?.lastRunId ?? null,
    };
    this.#store.saveSchedule(schedule);
    this.#schedules.set(schedule.scheduleId, schedule);
    this.#arm(schedule);
    this.#log.info({ scheduleId: schedule.scheduleId, job: job.name, schedule: schedule.schedule }, `${existing ? 'replaced the' : 'registered a'} schedule of ${job.name}: ${schedule.schedule}`);
    return { scheduleId: schedule.scheduleId, job: job.name, schedule: schedule.schedule, nextRunAt: this.#nextRunAt(schedule.scheduleId), replaced: existing !== undefined };
  }

  #arm(schedule: ScheduleRecord): void {
    void this.#crons.get(schedule.scheduleId)?.destroy();
    const log = this.#log;
    const task = cron.schedule(schedule.schedule, () => this.#fire(schedule.scheduleId), {
      name: `bolt-${schedule.scheduleId}`,
      logger: {
        info: (m) => log.debug(`node-cron: ${m}`),
        warn: (m) => log.warn(`node-cron: ${m}`),
        error: (m) => log.error(`node-cron: ${String(m)}`),
        debug: (m) => log.debug(`node-cron: ${String(m)}`),
      },
    });
    this.#crons.set(schedule.scheduleId, task);
  }

  #nextRunAt(scheduleId: string): number | null {
    return this.#crons.get(scheduleId)?.getNextRun()?.getTime() ?? null;
  }

  /**
   * One firing of a schedule: starts a run, unless the run it started last is still running (that
   * firing is skipped and logged). A run the firing could not start (no hosts, health gate) is
   * recorded as a failed run with its error, so `runs` shows it.
   */
  async #fire(scheduleId: string): Promise<void> {
    const schedule = this.#schedules.get(scheduleId);
    if (!schedule || this.#signal.aborted) return;
    schedule.fired++;
    schedule.lastFiredAt = this.#now();
    const previous = schedule.lastRunId === null ? undefined : this.#active.get(schedule.lastRunId);
    if (previous?.state === 'running') {
      this.#log.warn({ scheduleId, job: schedule.job, runId: previous.runId }, `schedule of ${schedule.job} fired while its run ${previous.runId} is still running; skipped`);
      this.#store.saveSchedule(schedule);
      return;
    }
    const origin = { scheduleId, schedule: schedule.schedule };
    try {
      schedule.lastRunId = (await this.#startRun(schedule.spec, schedule.file, schedule.vars, origin)).runId;
    } catch (err) {
      if (this.#signal.aborted) return;
      const run = this.#newRun(schedule.spec, schedule.file, schedule.vars, origin);
      run.state = 'failed';
      run.endedAt = run.createdAt;
      run.error = recorded(err);
      this.#log.error({ scheduleId, job: schedule.job, runId: run.runId, code: run.error.code }, `scheduled run of ${schedule.job} could not start: ${run.error.message}`);
      this.#save(run, []);
      schedule.lastRunId = run.runId;
    }
    if (this.#schedules.has(scheduleId)) this.#store.saveSchedule(schedule);
  }

  // ------------------------------------------------------------------ helpers

  #find(data: unknown): RunRecord {
    const runId = (data as { runId?: unknown } | null | undefined)?.runId;
    const run = typeof runId === 'string' ? (this.#active.get(runId) ?? this.#store.getRun(runId)) : undefined;
    if (!run) throw new BoltError('BOLT_ERR_RUN_NOT_FOUND', `no run ${String(runId)} on this server`, { details: { runId } });
    return run;
  }

  #attemptOf(run: RunRecord, wireTaskId: string): { task: TaskRecord; attempt: AttemptRecord } | undefined {
    for (const task of run.tasks) {
      const attempt = task.attempts.find((a) => a.wireTaskId === wireTaskId);
      if (attempt) return { task, attempt };
    }
    return undefined;
  }

  #endTask(task: TaskRecord, state: 'succeeded' | 'failed' | 'cancelled', now: number, reason?: string): void {
    task.state = state;
    task.endedAt = now;
    if (reason !== undefined) task.reason = reason;
  }

  /** Saves the run with `tasks`, publishes `run.updated`, and forgets the run once nothing is left to wait for. */
  #save(run: RunRecord, tasks: readonly TaskRecord[]): void {
    this.#store.saveRun(run, tasks);
    this.#bus.publish('run.updated', { run: progressOf(run) });
    if (!isActive(run) && this.#active.delete(run.runId)) {
      for (const a of run.tasks.flatMap((t) => t.attempts)) this.#requestedAt.delete(`${run.runId}\0${a.wireTaskId}`);
    }
  }

  /** A bus request that waits up to `providerWaitMs` for a provider that is not running yet (it may be starting). */
  async #request<T>(service: string, data: unknown, timeoutMs: number): Promise<T> {
    const deadline = this.#now() + this.#settings.providerWaitMs;
    for (let pause = 100; ; pause = Math.min(pause * 2, 1000)) {
      try {
        return await this.#bus.request<T>(service, data, { timeoutMs });
      } catch (err) {
        if (codeOf(err) !== 'BOLT_ERR_BUS_NO_PROVIDER' || this.#now() + pause > deadline || this.#signal.aborted) throw err;
        await delay(pause, undefined, { signal: this.#signal }).catch(() => undefined);
      }
    }
  }
}

/** A failure allowance as a number of hosts, for a retry that goes to fewer hosts than the task has. */
function allowanceOf(share: HostShare, total: number): HostShare {
  return 'count' in share ? share : { count: Math.floor((share.percent * total) / 100 + 1e-9) };
}

function progressOf(run: RunRecord): RunUpdate {
  return {
    ...summarize(run),
    description: run.description,
    spec: run.spec,
    taskProgress: run.tasks.map((t) => ({
      taskId: t.taskId,
      action: t.action,
      state: t.state,
      targets: t.targets.length,
      hosts: t.hosts,
      startAt: t.startAt,
      dispatchedAt: t.dispatchedAt,
      endedAt: t.endedAt,
      attempts: t.attempts.length,
      ...(t.reason !== undefined && { reason: t.reason }),
      ...(t.error && { error: t.error }),
    })),
  };
}
