/**
 * ResultsTracker: decides the final state of dispatched tasks from their hosts' events, as pure
 * in-memory logic with the clock passed in (the plugin in index.ts does the bus and the store).
 *
 * Per task (run id + task id) it keeps the targets of its dispatches and each target's outcome:
 * the first final event it reported (finished, failed, timedout, cancelled), `timedout` when
 * `(startAt ?? dispatchedAt) + timeoutMs + graceMs` passed without one, or `lost` when the health
 * monitor declared its host lost. When every target has an outcome it returns a Decision once;
 * the task then ignores everything until `settled()` forgets it (or it is decided again after a
 * restart from what the store kept).
 *
 * Rules:
 * - An event id seen before for the task is ignored; a host's first final event stands.
 * - Events are matched to targets by host id (key fingerprint); an event without a host id by a
 *   host name that only one target of the task has. Other events are ignored.
 * - Events of a task not dispatched yet are kept (bounded, for `orphanTtlMs`) and applied when
 *   its dispatch arrives: a fast host can report before the scheduler announces the dispatch.
 * - State: failed + timedout + lost hosts over the allowance of `failure.maxFailedHosts`
 *   (`{ count }`, or `{ percent }` of the targets rounded down; default `{ count: 0 }`) → failed;
 *   otherwise any cancelled host → cancelled; otherwise succeeded.
 * - A second dispatch of a task still collecting (new command id) adds its targets and restarts
 *   the ones it names; the same command id again changes nothing.
 */
import type { TaskEventKind } from '../../plugin-sdk/src/schemas/wire.ts';
import type { CommitTaskStatusRequest } from '../writer-sqlite/services.ts';

export interface Target {
  id: string;
  name: string;
}

export type MaxFailedHosts = { count: number } | { percent: number };

/** `run.task.dispatched` as published by the scheduler. */
export interface Dispatch {
  runId: string;
  taskId: string;
  commandId: string;
  targets: Target[];
  startAt: number | null;
  timeoutMs: number;
  failure?: { maxFailedHosts?: MaxFailedHosts } | null;
  dispatchedAt: number;
}

/** The fields of a `sink.task.event` the tracker reads. */
export interface HostEvent {
  id: string;
  runId: string;
  taskId: string;
  host: string;
  hostId?: string;
  kind: TaskEventKind;
  at: number;
  startedAt?: number;
  durationMs?: number;
}

/** What to commit for a decided task (a `sink.store.commitTaskStatus` request). */
export type Decision = CommitTaskStatusRequest;

export interface TrackerSettings {
  /** Added to a task's timeout before its silent hosts count as timed out. */
  graceMs: number;
  /** How long events of a task without a dispatch are kept. */
  orphanTtlMs: number;
  /** Events of undispatched tasks kept at most; past it the oldest task's are dropped. */
  maxOrphanEvents: number;
  /** Decided tasks remembered (to ignore their late events and dispatches). */
  maxDoneTasks: number;
}

export type Outcome = 'finished' | 'failed' | 'timedout' | 'cancelled' | 'lost';

interface HostTrack {
  target: Target;
  outcome: Outcome | null;
  /** The outcome came from the host's own event (not a timeout or a lost host). */
  reported: boolean;
  started: boolean;
  startedAt: number | undefined;
  durationMs: number | undefined;
  deadline: number;
}

interface TaskTrack {
  key: string;
  runId: string;
  taskId: string;
  commandIds: Set<string>;
  hosts: Map<string, HostTrack>;
  /** Host name → host id, or null when two targets share the name. */
  byName: Map<string, string | null>;
  maxFailedHosts: MaxFailedHosts;
  seen: Set<string>;
  open: number;
}

/** One task as `snapshot()` shows it. */
export interface TaskView {
  runId: string;
  taskId: string;
  phase: 'collecting' | 'deciding';
  total: number;
  open: number;
  /** The earliest deadline among hosts without an outcome (null when none is open). */
  nextDeadline: number | null;
}

const FINAL_KINDS: ReadonlySet<string> = new Set<Outcome>(['finished', 'failed', 'timedout', 'cancelled']);

function taskKey(runId: string, taskId: string): string {
  return `${runId}\u0000${taskId}`;
}

/** The number of failed, timed out and lost hosts a task of `total` targets may have and still succeed. */
export function allowedFailures(policy: MaxFailedHosts, total: number): number {
  if ('count' in policy) return policy.count;
  return Math.floor((total * policy.percent) / 100);
}

function policyOf(failure: Dispatch['failure']): MaxFailedHosts {
  const m = failure?.maxFailedHosts as Record<string, unknown> | undefined;
  if (m !== undefined && typeof m.count === 'number' && m.count >= 0) return { count: m.count };
  if (m !== undefined && typeof m.percent === 'number' && m.percent >= 0) return { percent: m.percent };
  return { count: 0 };
}

export class ResultsTracker {
  readonly settings: TrackerSettings;
  /** Events dropped because the orphan buffer was full or expired. */
  droppedOrphans = 0;
  readonly #collecting = new Map<string, TaskTrack>();
  readonly #deciding = new Map<string, Decision>();
  readonly #done = new Set<string>();
  readonly #orphans = new Map<string, { since: number; events: HostEvent[] }>();
  #orphanCount = 0;
  /** Host id → keys of collecting tasks that target it. */
  readonly #tasksOfHost = new Map<string, Set<string>>();

  constructor(settings: TrackerSettings) {
    this.settings = settings;
  }

  /** Where a task is: collecting events, decided and being committed, done, or unknown. */
  phase(runId: string, taskId: string): 'collecting' | 'deciding' | 'done' | undefined {
    const key = taskKey(runId, taskId);
    if (this.#collecting.has(key)) return 'collecting';
    if (this.#deciding.has(key)) return 'deciding';
    return this.#done.has(key) ? 'done' : undefined;
  }

  /** Applies a dispatch; returns the decision when it completes the task (no targets, or events already in). */
  dispatched(d: Dispatch): Decision | null {
    const key = taskKey(d.runId, d.taskId);
    if (this.#deciding.has(key) || this.#done.has(key)) return null;
    let task = this.#collecting.get(key);
    if (task === undefined) {
      task = { key, runId: d.runId, taskId: d.taskId, commandIds: new Set(), hosts: new Map(), byName: new Map(), maxFailedHosts: { count: 0 }, seen: new Set(), open: 0 };
      this.#collecting.set(key, task);
    }
    if (task.commandIds.has(d.commandId)) return null;
    task.commandIds.add(d.commandId);
    task.maxFailedHosts = policyOf(d.failure);
    const deadline = (d.startAt ?? d.dispatchedAt) + d.timeoutMs + this.settings.graceMs;
    for (const target of d.targets) {
      const existing = task.hosts.get(target.id);
      if (existing === undefined) task.open++;
      else if (existing.outcome !== null) task.open++;
      task.hosts.set(target.id, { target, outcome: null, reported: false, started: false, startedAt: undefined, durationMs: undefined, deadline });
      const named = task.byName.get(target.name);
      task.byName.set(target.name, named === undefined || named === target.id ? target.id : null);
      let keys = this.#tasksOfHost.get(target.id);
      if (keys === undefined) this.#tasksOfHost.set(target.id, (keys = new Set()));
      keys.add(key);
    }
    const orphans = this.#orphans.get(key);
    if (orphans !== undefined) {
      this.#orphans.delete(key);
      this.#orphanCount -= orphans.events.length;
      for (const e of orphans.events) this.#apply(task, e);
    }
    return this.#decideIfComplete(task);
  }

  /** Applies a host's event; returns the decision when it was the last outcome the task waited for. */
  event(e: HostEvent, now: number): Decision | null {
    const key = taskKey(e.runId, e.taskId);
    const task = this.#collecting.get(key);
    if (task === undefined) {
      if (!this.#deciding.has(key) && !this.#done.has(key)) this.#keepOrphan(key, e, now);
      return null;
    }
    this.#apply(task, e);
    return this.#decideIfComplete(task);
  }

  /** A host will never report again: its open tasks count it lost. Returns the tasks this decides. */
  hostLost(hostId: string): Decision[] {
    const keys = this.#tasksOfHost.get(hostId);
    if (keys === undefined) return [];
    const decisions: Decision[] = [];
    for (const key of [...keys]) {
      const task = this.#collecting.get(key);
      const host = task?.hosts.get(hostId);
      if (task === undefined || host === undefined || host.outcome !== null) continue;
      host.outcome = 'lost';
      task.open--;
      const decision = this.#decideIfComplete(task);
      if (decision !== null) decisions.push(decision);
    }
    return decisions;
  }

  /** Times out hosts past their deadline and expires old orphan events. Returns the tasks this decides. */
  tick(now: number): Decision[] {
    const decisions: Decision[] = [];
    for (const task of [...this.#collecting.values()]) {
      for (const host of task.hosts.values()) {
        if (host.outcome !== null || host.deadline > now) continue;
        host.outcome = 'timedout';
        task.open--;
      }
      const decision = this.#decideIfComplete(task);
      if (decision !== null) decisions.push(decision);
    }
    for (const [key, orphans] of this.#orphans) {
      if (orphans.since + this.settings.orphanTtlMs > now) break;
      this.#dropOrphans(key);
    }
    return decisions;
  }

  /** The decision of a task was committed (and published if it had to be): forget the task. */
  settled(runId: string, taskId: string): void {
    const key = taskKey(runId, taskId);
    this.#deciding.delete(key);
    this.#markDone(key);
  }

  /** A task decided elsewhere (a status committed before a restart): ignore it from now on. */
  markDone(runId: string, taskId: string): void {
    const key = taskKey(runId, taskId);
    const task = this.#collecting.get(key);
    if (task !== undefined) this.#forget(task);
    this.#deciding.delete(key);
    if (this.#orphans.has(key)) this.#dropOrphans(key, false);
    this.#markDone(key);
  }

  /** Tasks collecting or being decided. */
  snapshot(): { tasks: TaskView[]; orphanEvents: number; droppedOrphans: number } {
    const tasks: TaskView[] = [];
    for (const task of this.#collecting.values()) {
      let nextDeadline: number | null = null;
      for (const h of task.hosts.values()) if (h.outcome === null && (nextDeadline === null || h.deadline < nextDeadline)) nextDeadline = h.deadline;
      tasks.push({ runId: task.runId, taskId: task.taskId, phase: 'collecting', total: task.hosts.size, open: task.open, nextDeadline });
    }
    for (const d of this.#deciding.values()) tasks.push({ runId: d.runId, taskId: d.taskId, phase: 'deciding', total: d.hosts.total, open: 0, nextDeadline: null });
    return { tasks, orphanEvents: this.#orphanCount, droppedOrphans: this.droppedOrphans };
  }

  #apply(task: TaskTrack, e: HostEvent): void {
    if (task.seen.has(e.id)) return;
    task.seen.add(e.id);
    const hostId = e.hostId ?? task.byName.get(e.host);
    const host = hostId == null ? undefined : task.hosts.get(hostId);
    if (host === undefined) return;
    if (e.kind === 'started') {
      host.started = true;
      host.startedAt ??= e.startedAt ?? e.at;
      return;
    }
    if (!FINAL_KINDS.has(e.kind) || host.outcome !== null) return;
    host.outcome = e.kind as Outcome;
    host.reported = true;
    if (e.startedAt !== undefined) host.startedAt = e.startedAt;
    if (e.startedAt !== undefined || e.kind === 'finished') host.started = true;
    if (e.durationMs !== undefined) host.durationMs = e.durationMs;
    task.open--;
  }

  #decideIfComplete(task: TaskTrack): Decision | null {
    if (task.open > 0) return null;
    const counts = { total: task.hosts.size, started: 0, finished: 0, failed: 0, timedout: 0, cancelled: 0 };
    let lost = 0;
    const starts: number[] = [];
    let finishedAt: number | undefined;
    const unreported: Decision['unreported'] = [];
    for (const h of task.hosts.values()) {
      if (h.started) counts.started++;
      if (h.outcome === 'lost') lost++;
      else if (h.outcome !== null) counts[h.outcome]++;
      if (!h.reported && (h.outcome === 'timedout' || h.outcome === 'lost')) unreported.push({ host: h.target.name, state: h.outcome });
      if (h.startedAt !== undefined) {
        starts.push(h.startedAt);
        if (h.durationMs !== undefined) finishedAt = Math.max(finishedAt ?? -Infinity, h.startedAt + h.durationMs);
      }
    }
    const failures = counts.failed + counts.timedout + lost;
    const state = failures > allowedFailures(task.maxFailedHosts, counts.total) ? 'failed' : counts.cancelled > 0 ? 'cancelled' : 'succeeded';
    const decision: Decision = {
      runId: task.runId,
      taskId: task.taskId,
      state,
      hosts: counts,
      ...(lost > 0 && { lost }),
      ...(starts.length > 0 && { startedAt: Math.min(...starts), startSkewMs: Math.max(...starts) - Math.min(...starts) }),
      ...(finishedAt !== undefined && { finishedAt }),
      ...(unreported.length > 0 && { unreported }),
    };
    this.#forget(task);
    this.#deciding.set(task.key, decision);
    return decision;
  }

  #forget(task: TaskTrack): void {
    this.#collecting.delete(task.key);
    for (const hostId of task.hosts.keys()) {
      const keys = this.#tasksOfHost.get(hostId);
      keys?.delete(task.key);
      if (keys?.size === 0) this.#tasksOfHost.delete(hostId);
    }
  }

  #markDone(key: string): void {
    this.#done.add(key);
    if (this.#done.size > this.settings.maxDoneTasks) {
      const oldest = this.#done.values().next().value;
      if (oldest !== undefined) this.#done.delete(oldest);
    }
  }

  #keepOrphan(key: string, e: HostEvent, now: number): void {
    let orphans = this.#orphans.get(key);
    if (orphans === undefined) this.#orphans.set(key, (orphans = { since: now, events: [] }));
    orphans.events.push(e);
    this.#orphanCount++;
    while (this.#orphanCount > this.settings.maxOrphanEvents) {
      const oldest = this.#orphans.keys().next().value;
      if (oldest === undefined) break;
      this.#dropOrphans(oldest);
    }
  }

  #dropOrphans(key: string, count = true): void {
    const orphans = this.#orphans.get(key);
    if (orphans === undefined) return;
    this.#orphans.delete(key);
    this.#orphanCount -= orphans.events.length;
    if (count) this.droppedOrphans += orphans.events.length;
  }
}
