/**
 * aggregator-results: the sink's feedback loop. Decides each dispatched task's final state from
 * its hosts' events (tracker.ts), commits it through `sink.store.commitTaskStatus` (durable, in
 * writer-sqlite) and only then publishes `task.status`, once per task (see README.md).
 *
 * Subscribes `run.task.dispatched`, `sink.task.event`, `host.state` (to: 'lost'). Provides
 * `aggregator.pending` (tasks still collecting or being committed). On start it rebuilds its state
 * from the store (`sink.store.pending`): pending tasks are decided again from their stored
 * dispatches and events, and statuses committed but never published are published.
 */
import { definePlugin, type PluginContext } from 'bolt-plugin-sdk';
import type { TaskEventKind } from 'bolt-plugin-sdk';
import type { CommitTaskStatusResponse, PendingResponse, TaskStatus } from '../writer-sqlite/services.ts';
import { ResultsTracker, type Decision, type Dispatch, type HostEvent, type TrackerSettings } from './tracker.ts';

interface Config extends TrackerSettings {
  tickMs: number;
  commitTimeoutMs: number;
}

const EVENT_KINDS: ReadonlySet<string> = new Set<TaskEventKind>(['started', 'finished', 'failed', 'timedout', 'cancelled']);
/** Retries of a commit or of the rebuild back off up to this. */
const MAX_RETRY_MS = 5000;
/** A missing writer is logged at warn level at most this often. */
const COMPLAIN_EVERY_MS = 30_000;

/** The server's clock, as the scheduler's instants (dispatchedAt, startAt) are on it. */
function now(): number {
  return performance.timeOrigin + performance.now();
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isName(value: unknown): value is string {
  return typeof value === 'string' && value !== '';
}

function isNumber(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value);
}

/** A `run.task.dispatched` message, or null when it lacks what a decision needs. */
export function parseDispatch(data: unknown): Dispatch | null {
  if (!isObject(data) || !isName(data.runId) || !isName(data.taskId) || !isName(data.commandId)) return null;
  if (!Array.isArray(data.targets) || !isNumber(data.timeoutMs) || !isNumber(data.dispatchedAt)) return null;
  if (data.startAt !== null && data.startAt !== undefined && !isNumber(data.startAt)) return null;
  const targets = data.targets.filter((t): t is { id: string; name: string } => isObject(t) && isName(t.id) && isName(t.name));
  if (targets.length !== data.targets.length) return null;
  return {
    runId: data.runId,
    taskId: data.taskId,
    commandId: data.commandId,
    targets: targets.map((t) => ({ id: t.id, name: t.name })),
    startAt: (data.startAt as number | null | undefined) ?? null,
    timeoutMs: data.timeoutMs,
    failure: isObject(data.failure) ? (data.failure as Dispatch['failure']) : null,
    dispatchedAt: data.dispatchedAt,
  };
}

/** A `sink.task.event` message, or null when it is not one. */
export function parseEvent(data: unknown): HostEvent | null {
  if (!isObject(data) || !isName(data.id) || !isName(data.runId) || !isName(data.taskId) || !isName(data.host)) return null;
  if (typeof data.kind !== 'string' || !EVENT_KINDS.has(data.kind) || !isNumber(data.at)) return null;
  return {
    id: data.id,
    runId: data.runId,
    taskId: data.taskId,
    host: data.host,
    kind: data.kind as TaskEventKind,
    at: data.at,
    ...(isName(data.hostId) && { hostId: data.hostId }),
    ...(isNumber(data.startedAt) && { startedAt: data.startedAt }),
    ...(isNumber(data.durationMs) && { durationMs: data.durationMs }),
  };
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

function errorFields(err: unknown): Record<string, unknown> {
  const e = err as { code?: unknown; message?: unknown };
  return { code: e.code, err: typeof e.message === 'string' ? e.message : String(err) };
}

function startAggregator(ctx: PluginContext<Config>): void {
  const { bus, log, config, signal } = ctx;
  const tracker = new ResultsTracker(config);
  // The writer usually starts alongside: a missing one is only worth a warning after a while.
  let lastComplaint = Date.now();

  /** Logs a failed request to the writer: at warn level, but a missing writer only every 30 s. */
  const complain = (what: string, err: unknown, fields: Record<string, unknown> = {}) => {
    const missing = (err as { code?: unknown }).code === 'BOLT_ERR_BUS_NO_PROVIDER';
    if (missing && Date.now() - lastComplaint < COMPLAIN_EVERY_MS) return void log.debug({ ...fields, ...errorFields(err) }, what);
    if (missing) lastComplaint = Date.now();
    log.warn({ ...fields, ...errorFields(err) }, what);
  };

  const publish = (status: TaskStatus) => {
    bus.publish('task.status', status);
    log.info({ runId: status.runId, taskId: status.taskId, state: status.state, hosts: status.hosts, lost: status.lost ?? 0 }, `task ${status.taskId} ${status.state}`);
    bus.request('sink.store.markPublished', { runId: status.runId, taskId: status.taskId, at: Date.now() }, { timeoutMs: config.commitTimeoutMs }).catch((err: unknown) =>
      // Not fatal: after a restart the status would be published once more.
      complain('could not mark a task status published', err, { runId: status.runId, taskId: status.taskId }),
    );
  };

  /** Commits a decision (retrying until the writer answers) and publishes what was committed. */
  const settle = async (decision: Decision): Promise<void> => {
    const { runId, taskId } = decision;
    for (let attempt = 0; !signal.aborted; attempt++) {
      let committed: CommitTaskStatusResponse;
      try {
        committed = await bus.request<CommitTaskStatusResponse>('sink.store.commitTaskStatus', decision, { timeoutMs: config.commitTimeoutMs });
      } catch (err) {
        complain('task status not committed yet; retrying', err, { runId, taskId, attempt });
        await sleep(Math.min(MAX_RETRY_MS, 100 * 2 ** attempt), signal);
        continue;
      }
      if (signal.aborted) return;
      tracker.settled(runId, taskId);
      if (committed.outcome === 'conflict') {
        log.warn({ runId, taskId, decided: decision.state, committed: committed.status.state }, 'a different status was committed for this task before; it stands');
      }
      if (committed.publishedAt === null) publish(committed.status);
      else log.debug({ runId, taskId }, 'task status was published before');
      return;
    }
  };

  const handle = (decision: Decision | null) => {
    if (decision !== null) void settle(decision);
  };

  bus.subscribe('run.task.dispatched', (data) => {
    const dispatch = parseDispatch(data);
    if (dispatch === null) return void log.warn({ data }, 'run.task.dispatched not understood; ignored');
    handle(tracker.dispatched(dispatch));
  });
  bus.subscribe('sink.task.event', (data) => {
    const event = parseEvent(data);
    if (event === null) return void log.warn({ id: isObject(data) ? data.id : undefined }, 'sink.task.event not understood; ignored');
    handle(tracker.event(event, now()));
  });
  bus.subscribe('host.state', (data) => {
    if (!isObject(data) || data.to !== 'lost' || !isName(data.id)) return;
    const decisions = tracker.hostLost(data.id);
    log.info({ hostId: data.id, name: data.name, decided: decisions.length }, 'host lost: counted lost for its open tasks');
    for (const d of decisions) handle(d);
  });
  bus.provide('aggregator.pending', () => tracker.snapshot());

  const timer = setInterval(() => {
    for (const d of tracker.tick(now())) handle(d);
  }, config.tickMs);
  signal.addEventListener('abort', () => clearInterval(timer), { once: true });

  void rebuild();

  /** Takes up where a previous life of this plugin left off, from what the store kept. */
  async function rebuild(): Promise<void> {
    let pending: PendingResponse | undefined;
    for (let attempt = 0; pending === undefined; attempt++) {
      if (signal.aborted) return;
      try {
        pending = await bus.request<PendingResponse>('sink.store.pending', { eventsSince: Date.now() - config.orphanTtlMs }, { timeoutMs: config.commitTimeoutMs });
      } catch (err) {
        complain('pending tasks not read from the store yet; retrying', err, { attempt });
        await sleep(Math.min(MAX_RETRY_MS, 100 * 2 ** attempt), signal);
      }
    }
    if (signal.aborted) return;
    let republished = 0;
    for (const status of pending.unpublished) {
      // A task this life already decided is published by its own settle().
      if (tracker.phase(status.runId, status.taskId) !== undefined) continue;
      tracker.markDone(status.runId, status.taskId);
      publish(status);
      republished++;
    }
    const at = now();
    for (const task of pending.tasks) {
      for (const d of task.dispatches) {
        const dispatch = parseDispatch(d);
        if (dispatch !== null) handle(tracker.dispatched(dispatch));
      }
      for (const e of task.events) {
        const event = parseEvent(e);
        if (event !== null) handle(tracker.event(event, at));
      }
    }
    for (const d of tracker.tick(now())) handle(d);
    log.info({ pendingTasks: pending.tasks.length, republished }, 'state rebuilt from the sink store');
  }
}

export default definePlugin<Config>({
  start(ctx) {
    startAggregator(ctx);
  },
});
