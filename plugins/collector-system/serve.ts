/**
 * What every collector plugin shares: following the tasks this host runs, sampling while their
 * metrics windows are open, and streaming the samples to the sink. A plugin only says which metric
 * groups it serves and how to read one (see serveCollector). collector-system and
 * collector-process both run on it.
 */
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import type { BoltError } from '../../plugin-sdk/src/errors.ts';
import { taskEventId } from '../../plugin-sdk/src/action.ts';
import type { PluginContext } from '../../plugin-sdk/src/index.ts';
import type { MetricSample, MetricsBatchMessage, TaskEventMessage } from '../../plugin-sdk/src/schemas/wire.ts';
import { ownThread } from '../../plugin-sdk/src/thread.ts';
import { SampleStream, type StreamSettings, type StreamStats } from './stream.ts';

/** One value of one metric, as the samplers return it. */
export interface MetricPoint {
  metric: string;
  value: number;
  tags?: Record<string, string>;
}

/** Reads one metric group; keeps its previous reading so that rates come from the second call on. */
export interface GroupReader {
  sample(): Promise<{ metrics: MetricPoint[]; errors: BoltError[] }>;
  /** Releases what the reader holds between samples (open files); called when the group is dropped. */
  close?(): void;
}

export interface CollectorDefinition {
  /** The metric groups (names of METRIC_NAMES) this collector serves; a task's other groups are left to other collectors. */
  groups: readonly string[];
  /** A fresh reader of one group, made when a sampling loop starts needing the group. */
  openReader(group: string): GroupReader;
}

/** The collector settings every collector plugin has in its bolt.yaml section. */
export interface CollectorSettings extends StreamSettings {
  /** Sampling starts this long before a task's startAt. */
  startMarginMs: number;
  /** Sampling goes on this long after a task's final event. */
  endMarginMs: number;
  /** What to collect for a dispatch that carries no `metrics`. */
  defaultMetrics: { intervalMs: number; collect: string[] };
  /** Collected all the time, for health, without a run (empty `collect`: off). */
  background: { intervalMs: number; collect: string[] };
}

export interface CollectorStats {
  /** Tasks waiting for their window to open, and tasks being sampled. */
  waiting: number;
  open: number;
  loops: Array<{ intervalMs: number; groups: string[]; members: number; ticks: number }>;
  stream: StreamStats;
  /** The collector's own thread: its id and CPU time since it started (from /proc/thread-self); null where procfs lacks it. */
  thread: { tid: number; cpuMs: number } | null;
}

export interface CollectorServer {
  stats(): CollectorStats;
  /** Stops sampling, then tries for up to `deadlineMs` (default 3 s) to hand over what is buffered. */
  close(deadlineMs?: number): Promise<void>;
}

/** What the collector keeps of a verified dispatch (`client.task.dispatch`). */
interface DispatchView {
  id: string;
  runId: string;
  taskId: string;
  startAt: number | null;
  timeoutMs: number;
  receivedAt?: number;
  metrics?: { intervalMs: number; collect: string[] };
}

/** A task (or the background set) and its window, both ends on the server's clock. */
interface Member {
  /** The command id, or 'background'. */
  key: string;
  runId?: string;
  taskId?: string;
  groups: ReadonlySet<string>;
  intervalMs: number;
  openAt: number;
  closeAt: number;
  state: 'waiting' | 'open' | 'closed';
  /** False until openAt and closeAt are set (that waits for the clock offset). */
  placed: boolean;
  timer?: NodeJS.Timeout;
}

/** One sampling loop per interval: every member with that interval shares its readings. */
interface Loop {
  intervalMs: number;
  members: Set<Member>;
  readers: Map<string, GroupReader>;
  startedMs: number;
  /** The beat slot (0, 1, ...) of the latest tick since startedMs. */
  slot: number;
  ticks: number;
  busy: boolean;
  timer?: NodeJS.Timeout;
}

const FINAL_KINDS = new Set(['finished', 'failed', 'timedout', 'cancelled']);
const SERVICE_TIMEOUT_MS = 2000;
/** How often the clock offset is asked again while something is sampled. */
const CLOCK_REFRESH_MS = 10_000;
/** Command ids remembered so that a dispatch seen twice is followed once. */
const SEEN_LIMIT = 10_000;
/** setTimeout's longest delay; later instants are reached in several steps. */
const MAX_TIMER_MS = 2_147_483_647;

function isDispatch(data: unknown): data is DispatchView {
  const d = data as DispatchView | null;
  if (typeof d !== 'object' || d === null) return false;
  if (typeof d.id !== 'string' || typeof d.runId !== 'string' || typeof d.taskId !== 'string') return false;
  if (!(d.startAt === null || Number.isFinite(d.startAt)) || !Number.isFinite(d.timeoutMs)) return false;
  const m = d.metrics;
  return m === undefined || (typeof m === 'object' && m !== null && Number.isInteger(m.intervalMs) && m.intervalMs > 0 && Array.isArray(m.collect));
}

/**
 * Serves a collector on this client host until close():
 *
 * - For every verified dispatch (`client.task.dispatch`) whose `metrics.collect` (or, without
 *   `metrics`, `settings.defaultMetrics.collect`) names groups of `definition.groups`, it samples
 *   those groups every `intervalMs`. The window opens at `startAt − startMarginMs` (at once when
 *   startAt is null or already past) and closes `endMarginMs` after the task's final event on this
 *   host (`client.task.event` finished, failed, timedout or cancelled), at the latest at
 *   `(startAt or arrival) + timeoutMs + endMarginMs`. No sample has `t` outside its window.
 * - Members with the same interval share one loop: on each tick every group any of them needs is
 *   read once, and each member gets the values of its own groups. A loop runs only while a member
 *   is open; a group's reader is dropped when no member needs it, so a group that starts again
 *   starts without rates.
 * - Every sample carries `t`, the instant the reads were issued on the server's clock (this host's
 *   clock plus the `client.clock` offset, asked at start, at each dispatch and every 10 s while
 *   sampling), and the tag `task`; the batch carries `runId`. The background set (when
 *   `settings.background.collect` names served groups) has no task tag and no runId.
 * - Samples stream through SampleStream (bounded buffer, drop-oldest, `bolt.dropped_samples`).
 * - The service `<plugin name>.stats` answers CollectorStats.
 */
export function serveCollector(ctx: Pick<PluginContext<unknown>, 'name' | 'bus' | 'log' | 'options'>, definition: CollectorDefinition, settings: CollectorSettings): CollectorServer {
  const { bus, log } = ctx;
  const served = new Set(definition.groups);
  const skewMs = ctx.options.clockSkewMs ?? 0;
  // The transport's clock: the same skew (a test option) applies to every plugin of the process.
  const localClock = (): number => performance.timeOrigin + performance.now() + skewMs;
  let offsetMs = 0;
  let offsetKnown = false;
  const serverNow = (): number => localClock() + offsetMs;
  let self: { name: string; id: string } | null = null;
  let closed = false;
  let clockTimer: NodeJS.Timeout | undefined;

  const members = new Map<string, Member>();
  const loops = new Map<number, Loop>();
  const seen = new Set<string>();
  const reportedErrors = new Set<string>();

  const stream = new SampleStream({
    send: (batch: MetricsBatchMessage, timeoutMs: number) => bus.request('client.send', batch, { timeoutMs }),
    host: async () => (await host()).name,
    serverNow,
    log,
    settings,
  });

  async function refreshOffset(): Promise<void> {
    try {
      const estimate = await bus.request<{ offsetMs: number } | null>('client.clock', undefined, { timeoutMs: SERVICE_TIMEOUT_MS });
      if (estimate && Number.isFinite(estimate.offsetMs)) {
        offsetMs = estimate.offsetMs;
        offsetKnown = true;
        return;
      }
      // No ping exchange yet: the transport's rough offset from the welcome is better than none.
      const status = await bus.request<{ offsetMs?: number }>('client.status', undefined, { timeoutMs: SERVICE_TIMEOUT_MS });
      if (typeof status?.offsetMs === 'number' && Number.isFinite(status.offsetMs)) offsetMs = status.offsetMs;
    } catch (err) {
      if (!offsetKnown) log.debug({ err: (err as Error).message }, 'no clock offset from the client transport yet; using this host\'s clock');
    }
  }

  /** This host's name (the `host` of batches) and id (its key fingerprint, in task event ids). */
  async function host(): Promise<{ name: string; id: string }> {
    if (self !== null) return self;
    try {
      const status = await bus.request<{ name?: unknown; id?: unknown }>('client.status', undefined, { timeoutMs: SERVICE_TIMEOUT_MS });
      if (typeof status?.name === 'string' && status.name !== '' && typeof status.id === 'string') return (self = { name: status.name, id: status.id });
    } catch {
      // The transport is restarting: name the host as it would.
    }
    const name = ctx.options.name ?? os.hostname();
    return { name, id: name };
  }

  function keepClockFresh(): void {
    const sampling = loops.size > 0;
    if (sampling && clockTimer === undefined) clockTimer = setInterval(() => void refreshOffset(), CLOCK_REFRESH_MS);
    else if (!sampling && clockTimer !== undefined) {
      clearInterval(clockTimer);
      clockTimer = undefined;
    }
  }

  /** Calls `fn` when the server clock reaches `at` (at once when it has). */
  function atServerTime(member: Member, at: number, fn: () => void): void {
    clearTimeout(member.timer);
    member.timer = undefined;
    if (at === Infinity) return;
    const delay = at - serverNow();
    if (delay <= 0) {
      fn();
      return;
    }
    member.timer = setTimeout(() => atServerTime(member, at, fn), Math.min(delay, MAX_TIMER_MS));
  }

  function schedule(member: Member): void {
    if (!member.placed) return;
    if (member.closeAt < member.openAt) close(member);
    else if (member.state === 'waiting') atServerTime(member, member.openAt, () => open(member));
    else if (member.state === 'open') atServerTime(member, member.closeAt, () => close(member));
  }

  function open(member: Member): void {
    if (closed || member.state !== 'waiting') return;
    member.state = 'open';
    let loop = loops.get(member.intervalMs);
    if (!loop) {
      loop = { intervalMs: member.intervalMs, members: new Set(), readers: new Map(), startedMs: performance.now(), slot: 0, ticks: 0, busy: false };
      loops.set(member.intervalMs, loop);
    }
    loop.members.add(member);
    for (const group of member.groups) if (!loop.readers.has(group)) loop.readers.set(group, definition.openReader(group));
    if (loop.timer === undefined && !loop.busy) {
      loop.startedMs = performance.now();
      loop.slot = 0;
      void tick(loop);
    }
    keepClockFresh();
    log.debug({ task: member.taskId, runId: member.runId, intervalMs: member.intervalMs, groups: [...member.groups] }, 'metrics window open');
    schedule(member);
  }

  function close(member: Member): void {
    if (member.state === 'closed') return;
    const wasOpen = member.state === 'open';
    member.state = 'closed';
    clearTimeout(member.timer);
    members.delete(member.key);
    if (!wasOpen) return;
    const loop = loops.get(member.intervalMs);
    if (!loop) return;
    loop.members.delete(member);
    const needed = new Set([...loop.members].flatMap((m) => [...m.groups]));
    for (const [group, reader] of loop.readers) {
      if (needed.has(group)) continue;
      loop.readers.delete(group);
      reader.close?.();
    }
    if (loop.members.size === 0) {
      clearTimeout(loop.timer);
      loop.timer = undefined;
      loops.delete(loop.intervalMs);
    }
    keepClockFresh();
    log.debug({ task: member.taskId, runId: member.runId }, 'metrics window closed');
  }

  async function tick(loop: Loop): Promise<void> {
    loop.timer = undefined;
    if (closed || loops.get(loop.intervalMs) !== loop) return;
    loop.busy = true;
    const t = serverNow();
    const readers = [...loop.readers];
    const present = new Set(loop.members);
    const results = await Promise.all(readers.map(async ([group, reader]) => {
      try {
        return { group, ...(await reader.sample()) };
      } catch (err) {
        return { group, metrics: [], errors: [err as BoltError] };
      }
    }));
    loop.busy = false;
    loop.ticks++;
    if (closed) return;
    const byGroup = new Map<string, MetricPoint[]>();
    for (const { group, metrics, errors } of results) {
      byGroup.set(group, metrics);
      for (const err of errors) reportSourceError(group, err);
    }
    for (const member of present) {
      if (t < member.openAt || t > member.closeAt) continue;
      const samples: MetricSample[] = [];
      for (const group of member.groups) {
        for (const m of byGroup.get(group) ?? []) {
          const tags = member.taskId === undefined ? m.tags : { ...m.tags, task: member.taskId };
          samples.push(tags ? { t, metric: m.metric, value: m.value, tags } : { t, metric: m.metric, value: m.value });
        }
      }
      stream.add(member.runId, samples);
    }
    if (loops.get(loop.intervalMs) !== loop) return;
    // The next slot of the loop's beat that is still ahead (a slow tick skips slots, never bunches
    // them). A timer may fire up to a millisecond early: the slot after this tick's own, never its own again.
    const now = performance.now();
    loop.slot = Math.max(loop.slot + 1, Math.ceil((now - loop.startedMs) / loop.intervalMs));
    const next = loop.startedMs + loop.slot * loop.intervalMs;
    loop.timer = setTimeout(() => void tick(loop), next - now);
  }

  function reportSourceError(group: string, err: BoltError): void {
    const key = `${group}\n${err.message}`;
    const info = { group, code: err.code, err: err.message };
    if (reportedErrors.has(key)) return void log.debug(info, `metrics source unreadable: ${err.message}`);
    // Bounded: source errors are few (a group and a path each), but their texts come from the OS.
    if (reportedErrors.size >= 1000) reportedErrors.clear();
    reportedErrors.add(key);
    log.warn(info, `metrics source unreadable, left out of the samples: ${err.message}`);
  }

  function onDispatch(data: unknown): void {
    if (closed) return;
    if (!isDispatch(data)) return void log.warn({ id: (data as { id?: unknown } | null)?.id }, 'client.task.dispatch without the fields a collector needs ignored');
    if (seen.has(data.id)) return;
    seen.add(data.id);
    if (seen.size > SEEN_LIMIT) seen.delete(seen.values().next().value!);
    const spec = data.metrics ?? settings.defaultMetrics;
    const groups = new Set(spec.collect.filter((g) => served.has(g)));
    if (groups.size === 0) return;
    const member: Member = {
      key: data.id,
      runId: data.runId,
      taskId: data.taskId,
      groups,
      intervalMs: spec.intervalMs,
      openAt: 0,
      closeAt: Infinity,
      state: 'waiting',
      placed: false,
    };
    members.set(member.key, member);
    const place = (): void => {
      if (member.state !== 'waiting') return;
      const now = serverNow();
      member.openAt = data.startAt === null ? now : data.startAt - settings.startMarginMs;
      member.closeAt = Math.min(member.closeAt, (data.startAt ?? data.receivedAt ?? now) + data.timeoutMs + settings.endMarginMs);
      member.placed = true;
      schedule(member);
    };
    void host();
    // Without an offset yet, sampling waits for one (at most the service timeout), so no sample is stamped on the wrong clock.
    if (offsetKnown) {
      place();
      void refreshOffset();
    } else void refreshOffset().then(place);
  }

  function onEvent(data: unknown): void {
    const event = data as TaskEventMessage | null;
    if (closed || typeof event !== 'object' || event === null || !FINAL_KINDS.has(event.kind) || !Number.isFinite(event.at)) return;
    for (const member of members.values()) {
      if (member.runId !== event.runId || member.taskId !== event.taskId) continue;
      // With the host id known, match the exact command (a retry of the task is another command).
      if (self !== null && taskEventId(member.key, self.id, event.kind) !== event.id) continue;
      member.closeAt = Math.min(member.closeAt, event.at + settings.endMarginMs);
      schedule(member);
    }
  }

  const disposers = [
    bus.subscribe('client.task.dispatch', onDispatch),
    bus.subscribe('client.task.event', onEvent),
    bus.provide(`${ctx.name}.stats`, (): CollectorStats => stats()),
  ];
  void refreshOffset();

  const background = new Set(settings.background.collect.filter((g) => served.has(g)));
  if (background.size > 0) {
    const member: Member = { key: 'background', groups: background, intervalMs: settings.background.intervalMs, openAt: 0, closeAt: Infinity, state: 'waiting', placed: true };
    members.set(member.key, member);
    open(member);
  }

  function stats(): CollectorStats {
    let waiting = 0;
    let openCount = 0;
    for (const m of members.values()) {
      if (m.state === 'waiting') waiting++;
      else if (m.state === 'open') openCount++;
    }
    return {
      waiting,
      open: openCount,
      loops: [...loops.values()].map((l) => ({ intervalMs: l.intervalMs, groups: [...l.readers.keys()], members: l.members.size, ticks: l.ticks })),
      stream: stream.stats,
      thread: ownThread(),
    };
  }

  return {
    stats,
    async close(deadlineMs = 3000) {
      if (closed) return;
      closed = true;
      const deadline = performance.now() + deadlineMs;
      for (const dispose of disposers) dispose();
      for (const member of members.values()) clearTimeout(member.timer);
      for (const loop of loops.values()) {
        clearTimeout(loop.timer);
        for (const reader of loop.readers.values()) reader.close?.();
      }
      members.clear();
      loops.clear();
      keepClockFresh();
      await stream.close(deadline);
    },
  };
}
