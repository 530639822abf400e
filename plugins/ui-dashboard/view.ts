/**
 * The dashboard's compact views of the sink's data (pure functions, no bus): a run as the page draws
 * it (`ui.run`), one host's result (`ui.result`) and a runs-list row. Retries are folded into their
 * task: the scheduler sends attempt N >= 2 of task `x` under the wire task id `x.N`, and the view
 * shows one column per job task with each host's latest attempt.
 */
import type { RunTaskView, RunView } from '../writer-sqlite/services.ts';
import type { HostResult, RunSummary, StoredRun } from '../writer-sqlite/store.ts';

/** A host's state in one task, as the grid shows it; `none`: not a target of that task. */
export const CELL_STATES = ['none', 'pending', 'running', 'ok', 'failed', 'timedout', 'cancelled', 'lost'] as const;
export type CellState = (typeof CELL_STATES)[number];

/** A task's state as the page shows it. */
export type UiTaskState = 'pending' | 'running' | 'succeeded' | 'failed' | 'cancelled';

/** One task of the job as far as the view needs it (from a NormalizedJob task or a scheduler TaskRecord). */
export interface JobTask {
  id: string;
  action: string | null;
  needs: string[];
  start: string | null;
  description: string | null;
  timeoutMs: number | null;
  order: number;
}

/** A task's progress as the scheduler's `run.updated` carries it (TaskProgress, the fields used here). */
export interface TaskProgressLike {
  taskId: string;
  action?: string;
  state: string;
  startAt?: number | null;
  dispatchedAt?: number | null;
  endedAt?: number | null;
  attempts?: number;
  reason?: string;
}

export interface UiTaskHosts {
  total: number;
  pending: number;
  running: number;
  ok: number;
  failed: number;
  timedout: number;
  cancelled: number;
  lost: number;
}

/** One task of `ui.run`. Instants are epoch ms on the server's clock. */
export interface UiTask {
  id: string;
  action: string | null;
  description: string | null;
  /** `asap` or `together`; null when neither the job nor a dispatch says. */
  start: string | null;
  needs: string[];
  state: UiTaskState;
  /** Why a task ended without running (the scheduler's reason), when known. */
  reason: string | null;
  hosts: UiTaskHosts;
  /** Earliest start instant among its hosts. */
  startedAt: number | null;
  finishedAt: number | null;
  dispatchedAt: number | null;
  /** The synchronized start instant of its latest dispatch (together tasks). */
  startAt: number | null;
  timeoutMs: number | null;
  attempts: number;
  startSkewMs: number | null;
}

/**
 * The start instants of a together-task's hosts relative to its `startAt`: `offsets[i]` (ms, 0.001
 * resolution) is host `grid.hosts[hosts[i]]`; sorted by offset. Retried hosts count their latest
 * attempt against that attempt's startAt.
 */
export interface UiSkew {
  taskId: string;
  startAt: number;
  count: number;
  offsets: number[];
  hosts: number[];
  minMs: number | null;
  p50Ms: number | null;
  p95Ms: number | null;
  maxMs: number | null;
  /** Latest minus earliest start. */
  spreadMs: number | null;
}

/**
 * The hosts x tasks grid: `cells[t]` is a string with one character per host of `hosts`, the digit
 * of its state in `codes` (so 1,000 hosts x 5 tasks is 5,000 characters).
 */
export interface UiGrid {
  codes: readonly CellState[];
  hosts: string[];
  tasks: string[];
  cells: string[];
}

export interface UiRunInfo {
  id: string;
  jobName: string | null;
  description: string | null;
  state: string;
  createdAt: number;
  startedAt: number | null;
  finishedAt: number | null;
}

/** `ui.run` response. */
export interface UiRun {
  run: UiRunInfo;
  tasks: UiTask[];
  grid: UiGrid;
  skew: UiSkew[];
  /** Metric names the run has (as far as known). */
  metrics: string[];
  /** Metrics the page charts first when the run has them (the plugin's `charts` setting); without any, its first two. */
  charts: string[];
  /** The live sequence number this view is current to: apply `ui.live` run messages with a higher `seq`. */
  seq: number;
  /** When the view was built (epoch ms). */
  at: number;
}

/** `ui.result` response: one host's latest attempt of a task, with its output tails. */
export interface UiResult {
  runId: string;
  taskId: string;
  host: string;
  attempt: number;
  state: CellState;
  exitCode: number | null;
  startedAt: number | null;
  durationMs: number | null;
  stdoutTail: string | null;
  stderrTail: string | null;
  /** Earlier attempts of this host, oldest first, without tails. */
  earlier: Array<{ attempt: number; state: CellState; exitCode: number | null; startedAt: number | null; durationMs: number | null }>;
}

/** One row of `ui.runs`. */
export interface UiRunRow extends RunSummary {
  /** Most targets of any of its tasks; null when not known yet. */
  hosts: number | null;
  tasks: number | null;
  tasksFailed: number | null;
}

export interface ViewExtras {
  /** The job's tasks (needs, start mode, action), when known. */
  job?: { name: string | null; description: string | null; tasks: JobTask[] } | null;
  /** The scheduler's latest progress of the run's tasks, when known. */
  progress?: TaskProgressLike[] | null;
  /** The scheduler's run state and end, when known (the store may lag behind or lack the end). */
  runState?: { state: string; startedAt: number | null; endedAt: number | null } | null;
  metrics?: string[];
  charts?: string[];
  seq?: number;
  now?: number;
}

const FINAL_RUN_STATES: ReadonlySet<string> = new Set(['succeeded', 'failed', 'cancelled']);

/** `x.2` → `{ task: 'x', attempt: 2 }`; `x` → attempt 1 ('.' never appears in a job's task id). */
export function splitWireTask(wireTaskId: string): { task: string; attempt: number } {
  const dot = wireTaskId.indexOf('.');
  if (dot < 0) return { task: wireTaskId, attempt: 1 };
  const n = Number(wireTaskId.slice(dot + 1));
  return { task: wireTaskId.slice(0, dot), attempt: Number.isInteger(n) && n >= 2 ? n : 1 };
}

/** A stored host state as a grid cell state. */
export function cellStateOf(state: string): CellState {
  switch (state) {
    case 'finished':
      return 'ok';
    case 'running':
    case 'failed':
    case 'timedout':
    case 'cancelled':
    case 'lost':
      return state;
    default:
      return 'pending';
  }
}

/** A task.event kind as a grid cell state. */
export function cellStateOfEvent(kind: string): CellState | null {
  switch (kind) {
    case 'started':
      return 'running';
    case 'finished':
      return 'ok';
    case 'failed':
    case 'timedout':
    case 'cancelled':
      return kind;
    default:
      return null;
  }
}

/** A scheduler or store task state as the page's task state. */
export function taskStateOf(state: string): UiTaskState {
  switch (state) {
    case 'waiting':
      return 'pending';
    case 'dispatching':
    case 'running':
      return 'running';
    case 'succeeded':
    case 'failed':
    case 'cancelled':
      return state;
    default:
      return 'pending';
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function stringOr(value: unknown, fallback: string | null): string | null {
  return typeof value === 'string' ? value : fallback;
}

function numberOr(value: unknown, fallback: number | null): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : fallback;
}

/**
 * The job's tasks from a parsed job (NormalizedJob: `tasks[].id`, `needs`, `start`) or from the
 * scheduler's run record (`tasks[].taskId`); null when `job` has no task list.
 */
export function jobOf(job: unknown): ViewExtras['job'] {
  if (!isObject(job) || !Array.isArray(job.tasks)) return null;
  const tasks: JobTask[] = [];
  job.tasks.forEach((t, i) => {
    if (!isObject(t)) return;
    const id = stringOr(t.id, null) ?? stringOr(t.taskId, null);
    if (id === null || id === '') return;
    tasks.push({
      id,
      action: stringOr(t.action, null),
      needs: Array.isArray(t.needs) ? t.needs.filter((n): n is string => typeof n === 'string') : [],
      start: stringOr(t.start, null),
      description: stringOr(t.description, null),
      timeoutMs: numberOr(t.timeoutMs, null),
      order: numberOr(t.order, i) ?? i,
    });
  });
  tasks.sort((a, b) => a.order - b.order);
  const name = stringOr(job.name, null) ?? stringOr(job.job, null);
  return { name, description: stringOr(job.description, null), tasks };
}

/** The job name a stored run carries: its jobName, or the job itself when it is a name or has one. */
export function jobNameOf(run: Pick<StoredRun, 'jobName' | 'job'>): string | null {
  if (run.jobName) return run.jobName;
  if (typeof run.job === 'string' && run.job !== '') return run.job;
  return isObject(run.job) ? stringOr(run.job.name, null) : null;
}

/** Attempts of one job task, in attempt order. */
interface TaskAttempts {
  id: string;
  attempts: Array<{ attempt: number; view: RunTaskView }>;
}

function groupAttempts(view: RunView): Map<string, TaskAttempts> {
  const byTask = new Map<string, TaskAttempts>();
  for (const t of view.tasks) {
    const { task, attempt } = splitWireTask(t.taskId);
    let entry = byTask.get(task);
    if (entry === undefined) byTask.set(task, (entry = { id: task, attempts: [] }));
    entry.attempts.push({ attempt, view: t });
  }
  for (const entry of byTask.values()) entry.attempts.sort((a, b) => a.attempt - b.attempt);
  return byTask;
}

/** Each host's latest attempt of a task: its result (null: targeted, no result yet) and that attempt's startAt. */
function latestPerHost(attempts: TaskAttempts['attempts']): Map<string, { attempt: number; result: HostResult | null; startAt: number | null }> {
  const hosts = new Map<string, { attempt: number; result: HostResult | null; startAt: number | null }>();
  for (const { attempt, view } of attempts) {
    const startAt = view.dispatch?.startAt ?? null;
    for (const target of view.dispatch?.targets ?? []) hosts.set(target.name, { attempt, result: null, startAt });
    for (const result of view.results) hosts.set(result.host, { attempt, result, startAt });
  }
  return hosts;
}

function quantile(sorted: number[], q: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

const round3 = (x: number) => Math.round(x * 1000) / 1000;

/** Builds `ui.run` from the sink's RunView and what the live side knows. */
export function buildRunView(view: RunView, extras: ViewExtras = {}): UiRun {
  const attemptsByTask = groupAttempts(view);
  const job = extras.job ?? null;
  const progress = new Map((extras.progress ?? []).map((p) => [p.taskId, p]));

  // Columns: the job's tasks in order, then any task the store has that the job does not name.
  const taskIds: string[] = job ? job.tasks.map((t) => t.id) : [];
  for (const id of attemptsByTask.keys()) if (!taskIds.includes(id)) taskIds.push(id);
  for (const p of progress.keys()) if (!taskIds.includes(p)) taskIds.push(p);
  const jobTasks = new Map((job?.tasks ?? []).map((t) => [t.id, t]));

  const perTask = taskIds.map((id) => latestPerHost(attemptsByTask.get(id)?.attempts ?? []));
  const hostSet = new Set<string>();
  for (const hosts of perTask) for (const name of hosts.keys()) hostSet.add(name);
  const hosts = [...hostSet].sort(compareHostNames);
  const hostIndex = new Map(hosts.map((h, i) => [h, i]));

  const runFinal = FINAL_RUN_STATES.has(extras.runState?.state ?? view.run.state);
  const cells: string[] = [];
  const tasks: UiTask[] = [];
  const skew: UiSkew[] = [];
  taskIds.forEach((id, t) => {
    const latest = perTask[t]!;
    const codes = new Uint8Array(hosts.length);
    const counts: UiTaskHosts = { total: latest.size, pending: 0, running: 0, ok: 0, failed: 0, timedout: 0, cancelled: 0, lost: 0 };
    const starts: Array<{ host: number; offset: number }> = [];
    for (const [name, { result, startAt }] of latest) {
      const state = result === null ? 'pending' : cellStateOf(result.state);
      codes[hostIndex.get(name)!] = CELL_STATES.indexOf(state);
      counts[state as keyof UiTaskHosts]++;
      if (startAt !== null && result?.startedAt != null) starts.push({ host: hostIndex.get(name)!, offset: round3(result.startedAt - startAt) });
    }
    cells.push(Buffer.from(codes.map((c) => c + 48)).toString('latin1'));

    const attempts = attemptsByTask.get(id)?.attempts ?? [];
    const first = attempts[0]?.view;
    const last = attempts.at(-1)?.view;
    const p = progress.get(id);
    const spec = jobTasks.get(id);
    const startAt = last?.dispatch?.startAt ?? p?.startAt ?? null;
    let state: UiTaskState;
    if (p !== undefined) state = taskStateOf(p.state);
    else if (last !== undefined) state = taskStateOf(last.state);
    else state = runFinal ? 'cancelled' : 'pending';
    const startedAts = attempts.map((a) => a.view.startedAt).filter((x): x is number => x !== null);
    tasks.push({
      id,
      action: spec?.action ?? p?.action ?? null,
      description: spec?.description ?? null,
      start: spec?.start ?? (startAt !== null ? 'together' : last?.dispatch ? 'asap' : null),
      needs: spec?.needs ?? [],
      state,
      reason: p?.reason ?? null,
      hosts: counts,
      startedAt: startedAts.length > 0 ? Math.min(...startedAts) : null,
      finishedAt: last?.finishedAt ?? (state === 'running' || state === 'pending' ? null : (p?.endedAt ?? null)),
      dispatchedAt: first?.dispatch?.dispatchedAt ?? p?.dispatchedAt ?? null,
      startAt,
      timeoutMs: spec?.timeoutMs ?? last?.dispatch?.timeoutMs ?? null,
      attempts: p?.attempts ?? attempts.length,
      startSkewMs: first?.startSkewMs ?? null,
    });

    if (startAt !== null || spec?.start === 'together') {
      starts.sort((a, b) => a.offset - b.offset);
      const offsets = starts.map((s) => s.offset);
      skew.push({
        taskId: id,
        startAt: startAt ?? 0,
        count: offsets.length,
        offsets,
        hosts: starts.map((s) => s.host),
        minMs: offsets[0] ?? null,
        p50Ms: quantile(offsets, 0.5),
        p95Ms: quantile(offsets, 0.95),
        maxMs: offsets.at(-1) ?? null,
        spreadMs: offsets.length > 0 ? round3(offsets.at(-1)! - offsets[0]!) : null,
      });
    }
  });

  const metrics = [...new Set(extras.metrics ?? [])].sort();
  const rs = extras.runState;
  return {
    run: {
      id: view.run.id,
      jobName: jobNameOf(view.run) ?? job?.name ?? null,
      description: job?.description ?? null,
      state: rs?.state ?? view.run.state,
      createdAt: view.run.createdAt,
      startedAt: view.run.startedAt ?? rs?.startedAt ?? null,
      finishedAt: view.run.finishedAt ?? rs?.endedAt ?? (runFinal ? lastFinish(tasks) : null),
    },
    tasks,
    grid: { codes: CELL_STATES, hosts, tasks: taskIds, cells },
    skew,
    metrics,
    charts: extras.charts ?? [],
    seq: extras.seq ?? 0,
    at: extras.now ?? Date.now(),
  };
}

function lastFinish(tasks: UiTask[]): number | null {
  const ends = tasks.map((t) => t.finishedAt).filter((x): x is number => x !== null);
  return ends.length > 0 ? Math.max(...ends) : null;
}

/** Host names in natural order: `web-2` before `web-10`. */
export function compareHostNames(a: string, b: string): number {
  return collator.compare(a, b);
}
const collator = new Intl.Collator('en', { numeric: true });

/** `ui.result`: one host's latest attempt of a job task with its tails, or null when the host has no row there. */
export function buildResult(view: RunView, taskId: string, host: string): UiResult | null {
  const attempts = groupAttempts(view).get(taskId)?.attempts ?? [];
  const rows: Array<{ attempt: number; result: HostResult | null }> = [];
  for (const { attempt, view: t } of attempts) {
    const result = t.results.find((r) => r.host === host) ?? null;
    if (result !== null || t.dispatch?.targets.some((target) => target.name === host)) rows.push({ attempt, result });
  }
  const latest = rows.at(-1);
  if (latest === undefined) return null;
  const r = latest.result;
  return {
    runId: view.run.id,
    taskId,
    host,
    attempt: latest.attempt,
    state: r === null ? 'pending' : cellStateOf(r.state),
    exitCode: r?.exitCode ?? null,
    startedAt: r?.startedAt ?? null,
    durationMs: r?.durationMs ?? null,
    stdoutTail: r?.stdoutTail ?? null,
    stderrTail: r?.stderrTail ?? null,
    earlier: rows.slice(0, -1).map(({ attempt, result }) => ({
      attempt,
      state: result === null ? 'pending' : cellStateOf(result.state),
      exitCode: result?.exitCode ?? null,
      startedAt: result?.startedAt ?? null,
      durationMs: result?.durationMs ?? null,
    })),
  };
}

/** A runs-list row from a run view (hosts: most targets of a task; failed tasks by the job task). */
export function runRowOf(view: UiRun): UiRunRow {
  return {
    id: view.run.id,
    jobName: view.run.jobName,
    state: view.run.state,
    createdAt: view.run.createdAt,
    startedAt: view.run.startedAt,
    finishedAt: view.run.finishedAt,
    hosts: view.tasks.reduce((most, t) => Math.max(most, t.hosts.total), 0),
    tasks: view.tasks.length,
    tasksFailed: view.tasks.filter((t) => t.state === 'failed').length,
  };
}
