/** A run as the server's API returns it, and how the CLI shows it (`run`, `show`, `runs`). */
import { formatTable } from './table.ts';

export interface HostResult {
  host: string;
  hostId?: string;
  /** running, finished, failed, timedout, cancelled or lost. */
  state: string;
  /** Which attempt of the task (retries are new attempts on the hosts that failed). */
  attempt?: number;
  exitCode?: number | null;
  /** When the action actually started, on the server's clock. */
  startedAt?: number | null;
  durationMs?: number | null;
  stdoutTail?: string | null;
  stderrTail?: string | null;
}

export interface TaskView {
  taskId: string;
  action: string;
  state: string;
  targets?: { id: string; name: string }[];
  /** Counts from the sink's final status (over all attempts); null before it. */
  hosts?: { total: number; started: number; finished: number; failed: number; timedout: number; cancelled: number; lost?: number } | null;
  startAt?: number | null;
  dispatchedAt?: number | null;
  endedAt?: number | null;
  attempts?: unknown[];
  results?: HostResult[];
  reason?: string;
}

export interface RunView {
  runId: string;
  job: string;
  state: string;
  createdAt?: number | string;
  startedAt?: number | null;
  endedAt?: number | null;
  error?: { code: string; message: string } | null;
  tasks: TaskView[];
}

export const FINAL_RUN_STATES: ReadonlySet<string> = new Set(['succeeded', 'failed', 'cancelled']);

/** Max − min of the hosts' actual start instants, in ms (null with fewer than two). */
export function startSkewMs(task: TaskView): number | null {
  const starts = (task.results ?? []).map((r) => r.startedAt).filter((t): t is number => typeof t === 'number');
  if (starts.length < 2) return null;
  return Math.max(...starts) - Math.min(...starts);
}

/** Per-host outcome counts: from the final status when there is one, else from the live per-host rows (latest attempt per host). */
export function hostCounts(task: TaskView): { ok: number; failed: number; lost: number; total: number; running: number } {
  const total = task.targets?.length ?? task.hosts?.total ?? 0;
  const latest = new Map<string, HostResult>();
  for (const r of task.results ?? []) {
    const seen = latest.get(r.host);
    if (!seen || (r.attempt ?? 0) >= (seen.attempt ?? 0)) latest.set(r.host, r);
  }
  const rows = [...latest.values()];
  const count = (...states: string[]) => rows.filter((r) => states.includes(r.state)).length;
  if (task.hosts) {
    return { ok: task.hosts.finished, failed: task.hosts.failed + task.hosts.timedout, lost: task.hosts.lost ?? 0, total, running: 0 };
  }
  return { ok: count('finished'), failed: count('failed', 'timedout'), lost: count('lost'), total, running: count('running') };
}

export function formatDuration(ms: number | null | undefined): string {
  if (typeof ms !== 'number' || !Number.isFinite(ms)) return '-';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  return `${Math.floor(ms / 60_000)}m${Math.round((ms % 60_000) / 1000)}s`;
}

function skewText(task: TaskView): string {
  const skew = startSkewMs(task);
  return skew === null ? '-' : skew < 10 ? `${skew.toFixed(2)} ms` : formatDuration(skew);
}

/** The per-task summary table at the end of `run` and at the top of `show`. */
export function taskTable(run: RunView): string {
  const rows = run.tasks.map((t) => {
    const c = hostCounts(t);
    const duration = t.endedAt && (t.startAt ?? t.dispatchedAt) ? t.endedAt - (t.startAt ?? t.dispatchedAt)! : null;
    return [t.taskId, t.action, t.state, `${c.ok}/${c.total}`, String(c.failed), String(c.lost), formatDuration(duration), skewText(t)];
  });
  return formatTable(['TASK', 'ACTION', 'STATE', 'OK', 'FAILED', 'LOST', 'DURATION', 'START SKEW'], rows);
}

/** Per task and host: state, exit code, start instant, duration, the last line of output. */
export function hostTable(run: RunView): string {
  const rows: string[][] = [];
  for (const t of run.tasks) {
    for (const r of t.results ?? []) {
      const lastLine = (r.stderrTail || r.stdoutTail || '').trimEnd().split('\n').at(-1) ?? '';
      rows.push([
        t.taskId, r.host, r.state, r.exitCode === null || r.exitCode === undefined ? '-' : String(r.exitCode),
        typeof r.startedAt === 'number' ? new Date(r.startedAt).toISOString().slice(11, 23) : '-',
        formatDuration(r.durationMs), lastLine.slice(0, 60),
      ]);
    }
  }
  return formatTable(['TASK', 'HOST', 'STATE', 'EXIT', 'STARTED (UTC)', 'DURATION', 'OUTPUT (LAST LINE)'], rows);
}

/** A problem in a job file, as the parser reports it. */
export interface JobIssue {
  code: string;
  message: string;
  file: string;
  line: number;
  column: number;
  path: string;
}

/** `file:line:column: CODE: message`, the form editors jump to. */
export function formatJobIssue(i: JobIssue): string {
  return `${i.file}${i.line ? `:${i.line}:${i.column}` : ''}: ${i.code}: ${i.message}`;
}
