/**
 * Serving an action on a client host: what every action plugin shares, so the plugin itself only
 * says how to run one task.
 *
 * `serveAction(ctx, 'shell', run)` takes the dispatches the client transport publishes on
 * `client.task.dispatch` whose `action` is `shell`, and for each one:
 * - runs it at most once per plugin life (a command id seen before is ignored);
 * - gives `run` a `waitForStart()` that waits, in this worker, until the task's `startAt` on the
 *   server's clock (timers until a few ms before, then a short precise wait) and reports the
 *   instant reached with a `started` event;
 * - ends it on its timeout (counted from the start instant) or on a matching `client.task.cancel`
 *   by aborting the signal it gave `run`;
 * - sends exactly one final event (finished, failed, timedout or cancelled) after `started`,
 *   through the client transport's `client.send` service, which keeps events until the sink has
 *   them. Event ids are `<command id>:<kind>`, so a resent event is recognised at the sink.
 *
 * Server time is this host's clock plus the offset the `client.clock` service estimates (asked at
 * every dispatch, and every second while a task waits for its instant).
 */
import { createHash } from 'node:crypto';
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { BoltError, type ErrorCode } from './errors.ts';
import type { Logger, PluginContext } from './index.ts';
import { waitUntil } from './precise-wait.ts';
import { WIRE_LIMITS, WIRE_VERSION, type TaskCancelMessage, type TaskDispatchMessage, type TaskEventKind, type TaskEventMessage } from './schemas/wire.ts';

export { waitUntil, type WaitResult } from './precise-wait.ts';

/** A verified dispatch, as the client transport publishes it on `client.task.dispatch`. */
export interface ActionDispatch extends TaskDispatchMessage {
  /** When it arrived, on the server's clock as the transport estimated it. */
  receivedAt: number;
}

/** How a task ended on this host: the kind of its final `task.event`. */
export type FinalKind = Exclude<TaskEventKind, 'started'>;

/** What an action's `run` resolves with. */
export interface ActionOutcome {
  /** The action's view of how it ended; a timeout or cancel seen by serveAction takes precedence. */
  kind: FinalKind;
  /** The command's exit code, when a process ran and exited. */
  exitCode?: number | null;
  /** How long the work took (ms); default: from the start instant to the end of run. */
  durationMs?: number;
  /** The end of the output; each is cut to its last WIRE_LIMITS.maxOutputTail characters. */
  stdoutTail?: string;
  stderrTail?: string;
  /** Why it did not finish; logged, and appended to stderrTail when the action failed before producing output. */
  error?: { code: ErrorCode | string; message: string };
}

/** What serveAction hands `run` for one task. */
export interface ActionTools {
  /** Aborted on the task's timeout, on a matching cancel and when the plugin stops; `reason` is a BoltError (BOLT_ERR_ACTION_TIMEOUT or BOLT_ERR_ACTION_CANCELLED). */
  readonly signal: AbortSignal;
  /** Now on the server's clock (ms since the epoch), as this host estimates it. */
  serverNow(): number;
  /**
   * Waits until the task's startAt (at once when it is null or past), sends the `started` event
   * and resolves with the instant reached on the server's clock. The timeout counts from there.
   * Rejects with BOLT_ERR_ACTION_CANCELLED when the signal aborts during the wait. Calling it
   * again returns the same promise.
   */
  waitForStart(): Promise<number>;
  readonly log: Logger;
}

/** Runs one task on this host. It should end soon after `tools.signal` aborts. */
export type ActionRun = (task: ActionDispatch, tools: ActionTools) => Promise<ActionOutcome>;

export interface ServeActionOptions {
  /**
   * After a timeout or cancel, how long `run` may take to end before the final event is sent
   * without its results (and an error is logged). Default 10000 ms: enough for a process tree's
   * SIGTERM grace, SIGKILL and output drain.
   */
  stopGraceMs?: number;
  /** When the plugin stops, how long close() waits for running tasks to end. Default 4000 ms (the plugin stop deadline is 5 s). */
  closeTimeoutMs?: number;
}

/** The running service; see serveAction. */
export interface ActionServer {
  /** Tasks running (or waiting for their instant) now. */
  readonly running: number;
  /**
   * Cancels every running task and waits up to closeTimeoutMs for their final events to be
   * handed to `client.send`. Called by itself when the plugin's signal aborts; idempotent.
   */
  close(): Promise<void>;
}

/** Command ids remembered to refuse a second run; beyond this, the transport's replay guard still refuses replays. */
const MAX_SEEN_COMMANDS = 100_000;
/** Offset refresh interval while a task waits for its instant. */
const CLOCK_REFRESH_MS = 1000;
const SERVICE_TIMEOUT_MS = 2000;
/** How long a dispatch waits for a fresh offset when it has one already. */
const REFRESH_TIMEOUT_MS = 250;
/** An event client.send refused is retried with backoff for this long. */
const SEND_RETRY_FOR_MS = 5 * 60_000;
const SEND_RETRY_MAX_DELAY_MS = 5000;
const MAX_DURATION_MS = 31 * 24 * 3600 * 1000;
/** Longest delay setTimeout honours. */
const MAX_TIMER_MS = 2_147_483_647;

interface Running {
  readonly task: ActionDispatch;
  readonly abort: AbortController;
  /** Why serveAction ended it, if it did. */
  ended: 'timedout' | 'cancelled' | null;
  startedAt: number | null;
  /** performance.now() at the start instant. */
  startedMono: number;
  timer: NodeJS.Timeout | undefined;
  /** Resolves when the final event has been handed over (or given up on). */
  done: Promise<void>;
}

/**
 * Serves the action named `action` on this client host until the plugin stops (see the module
 * comment). Guarantees, per command id, in one plugin life: `run` is called at most once; a
 * `started` event is sent only after waitForStart reached the instant, and before the final
 * event; exactly one final event is sent (after a timeout or cancel: timedout or cancelled,
 * whatever `run` says; `run` throwing: failed); each event is retried through `client.send` until
 * accepted (for up to 5 minutes), with the same id.
 */
export function serveAction(ctx: Pick<PluginContext<unknown>, 'bus' | 'log' | 'options' | 'signal'>, action: string, run: ActionRun, options: ServeActionOptions = {}): ActionServer {
  const { bus, log } = ctx;
  const stopGraceMs = options.stopGraceMs ?? 10_000;
  const closeTimeoutMs = options.closeTimeoutMs ?? 4000;
  const skewMs = ctx.options.clockSkewMs ?? 0;
  // The transport's clock: the same skew (a test option) applies to every plugin of the process.
  const localClock = (): number => performance.timeOrigin + performance.now() + skewMs;
  const running = new Map<string, Running>();
  const seen = new Set<string>();
  let offsetMs = 0;
  let offsetKnown = false;
  let hostName: { name: string; id: string } | null = null;
  let closing: Promise<void> | null = null;
  let waiting = 0;
  let refreshTimer: NodeJS.Timeout | undefined;

  const serverNow = (): number => localClock() + offsetMs;

  async function refreshOffset(): Promise<void> {
    // With an offset in hand, a slow transport must not hold a task past its instant.
    const timeoutMs = offsetKnown ? REFRESH_TIMEOUT_MS : SERVICE_TIMEOUT_MS;
    try {
      const estimate = await bus.request<{ offsetMs: number } | null>('client.clock', undefined, { timeoutMs });
      if (estimate && Number.isFinite(estimate.offsetMs)) {
        offsetMs = estimate.offsetMs;
        offsetKnown = true;
        return;
      }
      // No ping exchange yet: the transport's rough offset from the welcome is better than none.
      const status = await bus.request<{ offsetMs?: number }>('client.status', undefined, { timeoutMs });
      if (typeof status?.offsetMs === 'number' && Number.isFinite(status.offsetMs)) offsetMs = status.offsetMs;
    } catch (err) {
      if (!offsetKnown) log.warn({ err: (err as Error).message }, 'no clock offset from the client transport; using this host\'s clock as the server\'s');
    }
  }

  /** This host's name and id (its key fingerprint) from the transport. */
  async function host(): Promise<{ name: string; id: string }> {
    if (hostName !== null) return hostName;
    try {
      const status = await bus.request<{ name?: unknown; id?: unknown }>('client.status', undefined, { timeoutMs: SERVICE_TIMEOUT_MS });
      if (typeof status?.name === 'string' && status.name !== '' && typeof status.id === 'string') return (hostName = { name: status.name, id: status.id });
    } catch {
      // The transport is restarting: name the host as it would.
    }
    const name = ctx.options.name ?? os.hostname();
    return { name, id: name };
  }

  function keepOffsetFresh(on: boolean): void {
    waiting += on ? 1 : -1;
    if (waiting > 0 && refreshTimer === undefined) {
      refreshTimer = setInterval(() => void refreshOffset(), CLOCK_REFRESH_MS);
      refreshTimer.unref();
    } else if (waiting === 0 && refreshTimer !== undefined) {
      clearInterval(refreshTimer);
      refreshTimer = undefined;
    }
  }

  /**
   * Hands one event to client.send, retrying with the same id until it is accepted. Unless
   * `published` says it was already, it is also published on this host's bus as
   * `client.task.event`, so collectors know when a task started and ended here.
   */
  async function deliver(event: TaskEventMessage, published = false): Promise<void> {
    if (!published) bus.publish('client.task.event', event);
    const giveUpAt = performance.now() + SEND_RETRY_FOR_MS;
    let delayMs = 100;
    let warned = false;
    for (;;) {
      try {
        await bus.request('client.send', event, { timeoutMs: 10_000 });
        if (warned) log.info({ id: event.id }, `task event ${event.id} delivered to the transport after retries`);
        return;
      } catch (err) {
        const info = { id: event.id, runId: event.runId, taskId: event.taskId, kind: event.kind, code: (err as { code?: string }).code, err: (err as Error).message };
        if (performance.now() + delayMs > giveUpAt) {
          log.error(info, `task event ${event.id} lost: client.send refused it for ${SEND_RETRY_FOR_MS / 1000} s`);
          return;
        }
        if (!warned) log.warn(info, `client.send refused task event ${event.id}; retrying`);
        warned = true;
        await new Promise((resolve) => setTimeout(resolve, delayMs));
        delayMs = Math.min(SEND_RETRY_MAX_DELAY_MS, delayMs * 2);
      }
    }
  }

  async function event(task: ActionDispatch, kind: TaskEventKind, fields: Partial<TaskEventMessage>): Promise<TaskEventMessage> {
    const self = await host();
    return {
      v: WIRE_VERSION,
      type: 'task.event',
      id: taskEventId(task.id, self.id, kind),
      runId: task.runId,
      taskId: task.taskId,
      host: self.name,
      kind,
      at: Math.max(0, serverNow()),
      ...fields,
    };
  }

  function end(r: Running, why: 'timedout' | 'cancelled', reason: string): void {
    if (r.ended !== null) return;
    r.ended = why;
    clearTimeout(r.timer);
    const code = why === 'timedout' ? 'BOLT_ERR_ACTION_TIMEOUT' : 'BOLT_ERR_ACTION_CANCELLED';
    r.abort.abort(new BoltError(code, reason));
  }

  function armTimeout(r: Running, ms: number): void {
    clearTimeout(r.timer);
    // A timer longer than 2^31 - 1 ms fires at once in Node; a task sent without a timeout
    // carries exactly that, so longer waits are re-armed in steps.
    if (ms > MAX_TIMER_MS) {
      r.timer = setTimeout(() => armTimeout(r, ms - MAX_TIMER_MS), MAX_TIMER_MS);
      return;
    }
    r.timer = setTimeout(() => end(r, 'timedout', `ran longer than the task's timeout of ${r.task.timeoutMs} ms`), Math.max(0, ms));
  }

  async function execute(r: Running): Promise<void> {
    const { task } = r;
    let startWait: Promise<number> | null = null;
    let sending: Promise<void> = Promise.resolve();
    const waitForStart = (): Promise<number> => {
      startWait ??= (async () => {
        keepOffsetFresh(true);
        try {
          if (r.abort.signal.aborted) throw new BoltError('BOLT_ERR_ACTION_CANCELLED', 'The task ended before its start instant.', { cause: r.abort.signal.reason });
          const reached = task.startAt === null ? { actualServerMs: serverNow() } : await waitUntil(task.startAt, serverNow, r.abort.signal);
          r.startedMono = performance.now();
          r.startedAt = reached.actualServerMs;
          if (r.ended === null) armTimeout(r, task.timeoutMs);
          // After the action's own next step (a spawn), so the report does not delay the start.
          const startedAt = r.startedAt;
          sending = new Promise<void>((resolve) => setImmediate(resolve))
            .then(() => event(task, 'started', { startedAt }))
            .then(deliver);
          return reached.actualServerMs;
        } finally {
          keepOffsetFresh(false);
        }
      })();
      return startWait;
    };

    const tools: ActionTools = { signal: r.abort.signal, serverNow, waitForStart, log };
    const result = (async () => run(task, tools))().then(
      (o): ActionOutcome => o,
      (err: unknown): ActionOutcome => {
        // After an abort, whatever run rejects with (an AbortError, the wait's cancel) is its way of ending.
        if (r.ended !== null) return { kind: r.ended };
        const { code, message } = (err !== null && typeof err === 'object' ? err : {}) as { code?: unknown; message?: unknown };
        const text = typeof message === 'string' ? message : String(err);
        log.error({ id: task.id, runId: task.runId, taskId: task.taskId, err: text }, `action ${action} threw`);
        return { kind: 'failed', error: { code: typeof code === 'string' ? code : 'BOLT_ERR_ACTION_FAILED', message: text } };
      },
    );
    const outcome = await Promise.race([result, abandoned(r, result)]);
    clearTimeout(r.timer);

    const kind: FinalKind = r.ended ?? outcome.kind;
    const fields: Partial<TaskEventMessage> = {};
    if (r.startedAt !== null) fields.startedAt = r.startedAt;
    if (Number.isInteger(outcome.exitCode)) fields.exitCode = outcome.exitCode!;
    const durationMs = outcome.durationMs ?? (r.startedAt !== null ? performance.now() - r.startedMono : undefined);
    if (durationMs !== undefined && Number.isFinite(durationMs)) fields.durationMs = Math.min(MAX_DURATION_MS, Math.max(0, durationMs));
    let stderr = outcome.stderrTail ?? '';
    if (outcome.error && kind === 'failed' && stderr === '' && (outcome.stdoutTail ?? '') === '') stderr = `[bolt] ${outcome.error.code}: ${outcome.error.message}`;
    if (outcome.stdoutTail) fields.stdoutTail = tail(outcome.stdoutTail);
    if (stderr !== '') fields.stderrTail = tail(stderr);
    if (outcome.error) log.info({ id: task.id, runId: task.runId, taskId: task.taskId, kind, code: outcome.error.code }, `${action} ${kind}: ${outcome.error.message}`);
    // Collectors end their windows on the final event: they hear of it (and its instant) now,
    // even while the started event still waits for client.send (outbox full, transport away).
    const final = await event(task, kind, fields);
    bus.publish('client.task.event', final);
    await sending;
    await deliver(final, true);
  }

  /** Resolves with an outcome stopGraceMs after the task was ended, if run has not settled by then. */
  function abandoned(r: Running, result: Promise<ActionOutcome>): Promise<ActionOutcome> {
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const onAbort = (): void => {
        timer = setTimeout(() => {
          log.error({ id: r.task.id, runId: r.task.runId, taskId: r.task.taskId }, `action ${action} did not end within ${stopGraceMs} ms of being ${r.ended}; reporting it ${r.ended} without its results`);
          resolve({ kind: r.ended ?? 'cancelled' });
        }, stopGraceMs);
      };
      if (r.abort.signal.aborted) onAbort();
      else r.abort.signal.addEventListener('abort', onAbort, { once: true });
      void result.finally(() => {
        clearTimeout(timer);
        r.abort.signal.removeEventListener('abort', onAbort);
      });
    });
  }

  function onDispatch(data: unknown): void {
    const task = data as ActionDispatch;
    if (task?.action !== action || typeof task.id !== 'string' || closing !== null) return;
    if (seen.has(task.id)) {
      log.warn({ id: task.id, runId: task.runId, taskId: task.taskId }, `command ${task.id} was already run; ignored`);
      return;
    }
    seen.add(task.id);
    if (seen.size > MAX_SEEN_COMMANDS) seen.delete(seen.values().next().value!);
    const r: Running = { task, abort: new AbortController(), ended: null, startedAt: null, startedMono: 0, timer: undefined, done: Promise.resolve() };
    running.set(task.id, r);
    r.done = (async () => {
      await refreshOffset();
      // Not started by then: the timeout still bounds the task, counted from its instant.
      armTimeout(r, (task.startAt === null ? 0 : Math.max(0, task.startAt - serverNow())) + task.timeoutMs);
      await execute(r);
    })()
      .catch((err: unknown) => log.error({ id: task.id, err: (err as Error).message }, `action ${action}: task ${task.taskId} could not be reported`))
      .finally(() => {
        clearTimeout(r.timer);
        running.delete(task.id);
      });
  }

  function onCancel(data: unknown): void {
    const cancel = data as TaskCancelMessage;
    if (typeof cancel?.runId !== 'string') return;
    for (const r of running.values()) {
      if (r.task.runId === cancel.runId && (cancel.taskId === undefined || r.task.taskId === cancel.taskId)) {
        end(r, 'cancelled', `cancelled by the server (command ${cancel.id})`);
      }
    }
  }

  const disposers = [bus.subscribe('client.task.dispatch', onDispatch), bus.subscribe('client.task.cancel', onCancel)];

  const server: ActionServer = {
    get running() {
      return running.size;
    },
    close() {
      closing ??= (async () => {
        for (const dispose of disposers) dispose();
        for (const r of running.values()) end(r, 'cancelled', 'the action plugin is stopping');
        const all = Promise.all([...running.values()].map((r) => r.done));
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([all, new Promise((resolve) => (timer = setTimeout(resolve, closeTimeoutMs)))]);
        clearTimeout(timer);
        if (refreshTimer !== undefined) clearInterval(refreshTimer);
      })();
      return closing;
    },
  };
  ctx.signal.addEventListener('abort', () => void server.close(), { once: true });
  return server;
}

/**
 * A digest of the command id and this host's id, then `:<kind>`: the same for a resend (the sink
 * stores it once), different on every host (one signed command reaches them all).
 */
export function taskEventId(commandId: string, hostId: string, kind: TaskEventKind): string {
  return `${createHash('sha256').update(`${commandId}\n${hostId}`).digest('hex').slice(0, 40)}:${kind}`;
}

/** The last WIRE_LIMITS.maxOutputTail characters, without a lone low surrogate at the cut. */
function tail(text: string): string {
  if (text.length <= WIRE_LIMITS.maxOutputTail) return text;
  const cut = text.slice(-WIRE_LIMITS.maxOutputTail);
  const first = cut.charCodeAt(0);
  return first >= 0xdc00 && first <= 0xdfff ? cut.slice(1) : cut;
}
