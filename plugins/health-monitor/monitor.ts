/**
 * The health of every host the server knows, derived from the transport's `host.connected`,
 * `host.heartbeat` and `host.disconnected` records. Pure logic: no bus and no timers. Time comes
 * from the injected clock (records) and from `tick(now)`; transitions are handed to `onTransition`
 * synchronously, in the order they happen.
 *
 * States:
 * - `healthy`, `degraded`, `unhealthy`: the host heartbeats; the worst level any metric of its
 *   last record reaches (see {@link THRESHOLD_METRICS}). Getting worse takes one record; getting
 *   better takes `recoverAfterBeats` records in a row, so a figure hovering around a threshold
 *   does not flap.
 * - `missing`: disconnected, or silent for `missingAfterMs`; it may come back under the same id.
 * - `lost`: silent for `lostAfterMs`. Terminal for this life: whatever ran there gets a final
 *   status. A lost host that connects or heartbeats again starts a new life (`life` + 1); its
 *   history keeps the lost episode.
 */

import { BoltError } from 'bolt-plugin-sdk';
import { WIRE_LIMITS, type PluginSummary } from '../../plugin-sdk/src/schemas/wire.ts';

/** Every state a host can be in. */
export const HOST_STATES = ['healthy', 'degraded', 'unhealthy', 'missing', 'lost'] as const;
export type HostState = (typeof HOST_STATES)[number];

/** The states a heartbeat's figures give, best first. */
type Level = 'healthy' | 'degraded' | 'unhealthy';
const LEVEL_RANK: Readonly<Record<Level, number>> = { healthy: 0, degraded: 1, unhealthy: 2 };

/**
 * The metrics thresholds apply to, and which way is bad. `above`: the level is reached when the
 * value is at or above the threshold; `below`: at or below.
 * - `cpuPercent`: the record's CPU use, 0-100 over all CPUs.
 * - `loadPerCpu`: the record's load1 divided by the CPU count from the facts (see {@link cpuCountOf}).
 * - `memAvailableBytes`: the record's available memory.
 * - `memAvailablePercent`: available memory as a percent of the total from the facts (see {@link memTotalOf}).
 * - `diskFreeBytes`: free space on the client's data directory.
 * - `eventLoopLagMs`: the client agent's event loop lag.
 * - `clockOffsetMs`: the absolute value of the client's clock offset estimate.
 * A metric the record or the facts do not give is not judged.
 */
export const THRESHOLD_METRICS = {
  cpuPercent: 'above',
  loadPerCpu: 'above',
  memAvailableBytes: 'below',
  memAvailablePercent: 'below',
  diskFreeBytes: 'below',
  eventLoopLagMs: 'above',
  clockOffsetMs: 'above',
} as const;
export type ThresholdMetric = keyof typeof THRESHOLD_METRICS;
const METRIC_NAMES = Object.keys(THRESHOLD_METRICS) as ThresholdMetric[];

/** The two thresholds of one metric; `null` turns that level off for the metric. */
export interface Threshold {
  degraded: number | null;
  unhealthy: number | null;
}

export type Thresholds = Record<ThresholdMetric, Threshold>;

export interface MonitorSettings {
  /** The clients' heartbeat interval (the transport's `welcome.heartbeatIntervalMs`). */
  heartbeatIntervalMs: number;
  /** Silence before `missing`; default 3 × heartbeatIntervalMs. */
  missingAfterMs?: number;
  /** Silence before `lost`; must exceed the missing timeout. */
  lostAfterMs: number;
  /** Records in a row at a better level before the state improves. */
  recoverAfterBeats: number;
  /** Transitions kept per host (the oldest are dropped). */
  historyLimit: number;
  /** Hosts tracked at most; when full, the longest-lost host makes room, else the new host is refused. */
  maxHosts: number;
  /** A host lost this long is forgotten. */
  lostRetentionMs: number;
  /** `host.connected` roles that are monitored (sinks do not heartbeat). */
  roles: string[];
  thresholds: Thresholds;
}

/** The defaults; plugin.json's config schema carries the same values (a test keeps them equal). */
export const DEFAULT_SETTINGS: Readonly<MonitorSettings> = Object.freeze({
  heartbeatIntervalMs: 1000,
  lostAfterMs: 60_000,
  recoverAfterBeats: 3,
  historyLimit: 100,
  maxHosts: 10_000,
  lostRetentionMs: 3_600_000,
  roles: ['client'],
  thresholds: {
    // Off: a host running a load test is busy by design; the agent's event loop lag says when it is too busy to work.
    cpuPercent: { degraded: null, unhealthy: null },
    loadPerCpu: { degraded: null, unhealthy: null },
    memAvailableBytes: { degraded: 256 * 2 ** 20, unhealthy: 64 * 2 ** 20 },
    memAvailablePercent: { degraded: 10, unhealthy: 3 },
    diskFreeBytes: { degraded: 2 ** 30, unhealthy: 100 * 2 ** 20 },
    eventLoopLagMs: { degraded: 200, unhealthy: 1000 },
    clockOffsetMs: { degraded: 5000, unhealthy: 60_000 },
  },
});

/** Settings as given: anything left out takes its default; a metric's thresholds merge one by one. */
export type MonitorOptions = Partial<Omit<MonitorSettings, 'thresholds'>> & {
  thresholds?: Partial<Record<ThresholdMetric, Partial<Threshold>>>;
};

/** A `host.state` message: one transition of one host. `from` is null when the host first appears. */
export interface Transition {
  id: string;
  name: string;
  from: HostState | null;
  to: HostState;
  at: number;
  reason: string;
}

/** One entry of a host's history; `life` counts from 1 and grows each time a lost host comes back. */
export interface HistoryEntry {
  from: HostState | null;
  to: HostState;
  at: number;
  reason: string;
  life: number;
}

/** The figures of a host's last heartbeat that the monitor keeps (only those the record had as finite numbers). */
export interface HealthRecord {
  at?: number;
  receivedAt?: number;
  load1?: number;
  cpuPercent?: number;
  memAvailableBytes?: number;
  diskFreeBytes?: number;
  eventLoopLagMs?: number;
  clockOffsetMs?: number;
}
const HEALTH_FIELDS = ['at', 'receivedAt', 'load1', 'cpuPercent', 'memAvailableBytes', 'diskFreeBytes', 'eventLoopLagMs', 'clockOffsetMs'] as const;

/** What `health.hosts` answers per host. `labels` and `facts` are shared with the monitor: do not mutate them. */
export interface HostView {
  id: string;
  name: string;
  role: string;
  address: string | null;
  labels: Readonly<Record<string, string>>;
  facts: Readonly<Record<string, unknown>>;
  state: HostState;
  /** When the host entered its state (monitor clock). */
  since: number;
  /** Why it is in its state. */
  reason: string;
  life: number;
  /** When the last heartbeat arrived (monitor clock), null before the first. */
  lastHeartbeatAt: number | null;
  clockOffsetMs: number | null;
  health: HealthRecord | null;
  /** The host's plugin table as its heartbeats last reported it (null before any report). */
  plugins: PluginSummary[] | null;
  /** Whether the transport holds a session with the host. */
  connected: boolean;
}

/** What `health.host` answers: the view and the transitions kept, oldest first. */
export interface HostDetail extends HostView {
  history: HistoryEntry[];
}

export interface HostFilter {
  /** Every pair must be among the host's labels. */
  labels?: Record<string, string>;
  state?: HostState;
}

export type HealthSummary = { total: number } & Record<HostState, number>;

export interface MonitorHooks {
  /** The monitor's clock, in milliseconds; stamps records as they arrive. */
  now: () => number;
  onTransition?: (transition: Transition) => void;
}

/** Longest host id, name, role, address or session id taken from a record. */
const MAX_ID_LENGTH = 256;

interface HostEntry extends HostInfo {
  cpuCount: number | null;
  memTotalBytes: number | null;
  connected: boolean;
  state: HostState;
  since: number;
  reason: string;
  life: number;
  /** The level the metrics give, kept while missing so a reconnect restores it. */
  level: Level;
  /** Records in a row better than `level`, the worst level among them and why it is not better. */
  betterStreak: number;
  betterLevel: Level;
  betterReason: string;
  /** Last heartbeat, or connect if none since: the timeouts count from here. */
  lastSeenAt: number;
  lastHeartbeatAt: number | null;
  health: HealthRecord | null;
  plugins: PluginSummary[] | null;
  history: HistoryEntry[];
}

/** The host's own facts on what identifies it, as a `host.connected` record gives them. */
interface HostInfo {
  id: string;
  name: string;
  role: string;
  address: string | null;
  labels: Record<string, string>;
  facts: Record<string, unknown>;
  sessionId: string | null;
}

/**
 * Tracks hosts and their states. Records are `unknown` because they come off the bus: one that
 * lacks a usable `id` is ignored (the method returns false).
 */
export class HealthMonitor {
  readonly settings: Readonly<Required<MonitorSettings>>;
  private readonly hosts = new Map<string, HostEntry>();
  /** Ids of connected peers whose role is not monitored (their heartbeats are ignored too). */
  private readonly unmonitored = new Set<string>();
  private readonly now: () => number;
  private readonly onTransition: (transition: Transition) => void;
  private refused = 0;

  /** Throws BOLT_ERR_PLUGIN_CONFIG_INVALID naming the setting when the settings contradict each other. */
  constructor(options: MonitorOptions, hooks: MonitorHooks) {
    this.settings = resolveSettings(options);
    this.now = hooks.now;
    this.onTransition = hooks.onTransition ?? (() => {});
  }

  /** New hosts refused so far because `maxHosts` hosts were tracked and none of them was lost. */
  get refusedHosts(): number {
    return this.refused;
  }

  /** A session opened. A new host starts `healthy`; a missing one returns to its last level; a lost one starts a new life. */
  connected(record: unknown): boolean {
    const info = parseConnected(record);
    if (!info) return false;
    if (!this.settings.roles.includes(info.role)) {
      if (!this.hosts.has(info.id)) this.rememberUnmonitored(info.id);
      return false;
    }
    const now = this.now();
    let h = this.hosts.get(info.id);
    if (!h) {
      h = this.admit(info, now, 'healthy', 'connected');
      return h !== undefined;
    }
    this.describe(h, info);
    h.connected = true;
    h.lastSeenAt = now;
    if (h.state === 'lost') {
      this.newLife(h, 'healthy');
      this.setState(h, 'healthy', now, `reconnected after being lost; life ${h.life} begins`);
    } else if (h.state === 'missing') {
      this.setState(h, h.level, now, 'reconnected');
    }
    return true;
  }

  /** A heartbeat arrived: judges its figures; a missing host comes back, a lost one starts a new life. */
  heartbeat(record: unknown): boolean {
    if (!isRecord(record)) return false;
    const id = shortString(record.id);
    if (id === null || this.unmonitored.has(id)) return false;
    const now = this.now();
    const health = healthOf(record);
    let h = this.hosts.get(id);
    if (!h) {
      // The host connected before this monitor started (or restarted): learn it from its heartbeat.
      const info: HostInfo = { id, name: id, role: this.settings.roles[0] ?? 'client', address: null, labels: {}, facts: {}, sessionId: null };
      const judged = judge(this.settings.thresholds, health, null, null);
      h = this.admit(info, now, judged.level, joinReasons('heartbeat from a host connected before the monitor started', judged.reason));
      if (!h) return false;
      h.health = health;
      h.plugins = pluginsOf(record) ?? h.plugins;
      h.lastHeartbeatAt = now;
      return true;
    }
    h.health = health;
    h.plugins = pluginsOf(record) ?? h.plugins;
    h.lastHeartbeatAt = now;
    h.lastSeenAt = now;
    h.connected = true;
    const { level, reason } = judge(this.settings.thresholds, health, h.cpuCount, h.memTotalBytes);
    if (h.state === 'lost') {
      this.newLife(h, level);
      this.setState(h, level, now, joinReasons(`heartbeat after being lost; life ${h.life} begins`, reason));
    } else if (h.state === 'missing') {
      h.level = level;
      h.betterStreak = 0;
      this.setState(h, level, now, joinReasons('heartbeat resumed', reason));
    } else {
      this.applyLevel(h, level, reason, now);
    }
    return true;
  }

  /** A session closed: the host is `missing` at once. A close of a session other than the host's current one is ignored. */
  disconnected(record: unknown): boolean {
    if (!isRecord(record)) return false;
    const id = shortString(record.id);
    if (id === null) return false;
    const h = this.hosts.get(id);
    if (!h) {
      this.unmonitored.delete(id);
      return false;
    }
    const sessionId = shortString(record.sessionId);
    if (sessionId !== null && h.sessionId !== null && sessionId !== h.sessionId) return false;
    h.connected = false;
    h.sessionId = null;
    if (h.state !== 'missing' && h.state !== 'lost') {
      const why = shortString(record.reason);
      this.setState(h, 'missing', this.now(), why ? `disconnected: ${why}` : 'disconnected');
    }
    return true;
  }

  /** Applies the timeouts at `now`: silent hosts turn `missing`, then `lost`; lost hosts past the retention are forgotten. */
  tick(now: number = this.now()): void {
    const { missingAfterMs, lostAfterMs, lostRetentionMs } = this.settings;
    for (const h of this.hosts.values()) {
      if (h.state === 'lost') {
        if (now - h.since >= lostRetentionMs) this.hosts.delete(h.id);
        continue;
      }
      const silentMs = now - h.lastSeenAt;
      if (silentMs < missingAfterMs) continue;
      const reason = `no heartbeat for ${Math.round(silentMs)} ms`;
      // `lost` always follows `missing`, even when one tick crosses both timeouts.
      this.setState(h, 'missing', now, reason);
      if (silentMs >= lostAfterMs) this.setState(h, 'lost', now, reason);
    }
  }

  /** Hosts matching the filter, sorted by name then id. */
  list(filter: HostFilter = {}): HostView[] {
    const wanted = filter.labels ? Object.entries(filter.labels) : [];
    const out: HostView[] = [];
    for (const h of this.hosts.values()) {
      if (filter.state !== undefined && h.state !== filter.state) continue;
      if (!wanted.every(([k, v]) => Object.hasOwn(h.labels, k) && h.labels[k] === v)) continue;
      out.push(view(h));
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** One host with its history, or null when the id is not tracked. */
  host(id: string): HostDetail | null {
    const h = this.hosts.get(id);
    return h ? { ...view(h), history: h.history.map((e) => ({ ...e })) } : null;
  }

  /** How many hosts are in each state. */
  summary(): HealthSummary {
    const counts: HealthSummary = { total: this.hosts.size, healthy: 0, degraded: 0, unhealthy: 0, missing: 0, lost: 0 };
    for (const h of this.hosts.values()) counts[h.state]++;
    return counts;
  }

  private admit(info: HostInfo, now: number, state: HostState, reason: string): HostEntry | undefined {
    if (this.hosts.size >= this.settings.maxHosts && !this.evictLongestLost()) {
      this.refused++;
      return undefined;
    }
    const h: HostEntry = {
      id: info.id, name: info.name, role: info.role, address: null, labels: {}, facts: {}, cpuCount: null, memTotalBytes: null,
      sessionId: null, connected: true, state, since: now, reason, life: 1,
      level: state === 'degraded' || state === 'unhealthy' ? state : 'healthy', betterStreak: 0, betterLevel: 'healthy', betterReason: '',
      lastSeenAt: now, lastHeartbeatAt: null, health: null, plugins: null, history: [],
    };
    this.describe(h, info);
    this.hosts.set(h.id, h);
    this.record(h, null);
    return h;
  }

  private evictLongestLost(): boolean {
    let oldest: HostEntry | undefined;
    for (const h of this.hosts.values()) if (h.state === 'lost' && (!oldest || h.since < oldest.since)) oldest = h;
    if (oldest) this.hosts.delete(oldest.id);
    return oldest !== undefined;
  }

  private rememberUnmonitored(id: string): void {
    if (this.unmonitored.size >= this.settings.maxHosts) {
      const first = this.unmonitored.values().next();
      if (!first.done) this.unmonitored.delete(first.value);
    }
    this.unmonitored.add(id);
  }

  private describe(h: HostEntry, info: HostInfo): void {
    h.name = info.name;
    h.role = info.role;
    h.address = info.address;
    h.labels = info.labels;
    h.facts = info.facts;
    h.cpuCount = cpuCountOf(info.facts);
    h.memTotalBytes = memTotalOf(info.facts);
    h.sessionId = info.sessionId;
  }

  private newLife(h: HostEntry, level: Level): void {
    h.life++;
    h.level = level;
    h.betterStreak = 0;
  }

  /** A record judged `level` while the host heartbeats: worse at once, better after `recoverAfterBeats` in a row. */
  private applyLevel(h: HostEntry, level: Level, reason: string, now: number): void {
    if (LEVEL_RANK[level] >= LEVEL_RANK[h.level]) {
      h.betterStreak = 0;
      if (level !== h.level) {
        h.level = level;
        this.setState(h, level, now, reason);
      }
      return;
    }
    if (h.betterStreak === 0 || LEVEL_RANK[level] > LEVEL_RANK[h.betterLevel]) {
      h.betterLevel = level;
      h.betterReason = reason;
    }
    h.betterStreak++;
    if (h.betterStreak < this.settings.recoverAfterBeats) return;
    h.level = h.betterLevel;
    h.betterStreak = 0;
    const streak = `${this.settings.recoverAfterBeats} heartbeat(s) in a row`;
    this.setState(h, h.level, now, h.level === 'healthy' ? `every metric within its thresholds for ${streak}` : `${h.betterReason}; better for ${streak}`);
  }

  private setState(h: HostEntry, to: HostState, now: number, reason: string): void {
    if (h.state === to) return;
    const from = h.state;
    h.state = to;
    h.since = now;
    h.reason = reason;
    this.record(h, from);
  }

  private record(h: HostEntry, from: HostState | null): void {
    h.history.push({ from, to: h.state, at: h.since, reason: h.reason, life: h.life });
    if (h.history.length > this.settings.historyLimit) h.history.shift();
    this.onTransition({ id: h.id, name: h.name, from, to: h.state, at: h.since, reason: h.reason });
  }
}

/**
 * Fills in defaults and checks what a JSON Schema cannot: each metric's two thresholds in order,
 * lost after missing. Throws BOLT_ERR_PLUGIN_CONFIG_INVALID naming the setting.
 */
export function resolveSettings(options: MonitorOptions): Required<MonitorSettings> {
  const { thresholds: given, ...rest } = options;
  const merged = { ...DEFAULT_SETTINGS, ...stripUndefined(rest) };
  const thresholds = {} as Thresholds;
  for (const metric of METRIC_NAMES) {
    const t = { ...DEFAULT_SETTINGS.thresholds[metric], ...stripUndefined(given?.[metric] ?? {}) };
    if (t.degraded !== null && t.unhealthy !== null) {
      const inOrder = THRESHOLD_METRICS[metric] === 'above' ? t.unhealthy >= t.degraded : t.unhealthy <= t.degraded;
      if (!inOrder) {
        const word = THRESHOLD_METRICS[metric] === 'above' ? 'at least' : 'at most';
        throw new BoltError('BOLT_ERR_PLUGIN_CONFIG_INVALID', `thresholds.${metric}.unhealthy (${t.unhealthy}) must be ${word} thresholds.${metric}.degraded (${t.degraded})`);
      }
    }
    thresholds[metric] = t;
  }
  const missingAfterMs = merged.missingAfterMs ?? 3 * merged.heartbeatIntervalMs;
  if (merged.lostAfterMs <= missingAfterMs) {
    throw new BoltError('BOLT_ERR_PLUGIN_CONFIG_INVALID', `lostAfterMs (${merged.lostAfterMs}) must be longer than missingAfterMs (${missingAfterMs})`);
  }
  return { ...merged, missingAfterMs, roles: [...merged.roles], thresholds };
}

/**
 * The CPU count in a host's facts, read from the first of: `facts.cpu.cores` (what transport-ws
 * gathers, as systeminformation's `cpu()` does), `facts.cpus` (a number, or an array as
 * `os.cpus()` gives), `facts.cpuCount`.
 * Null when none is a positive number.
 */
export function cpuCountOf(facts: Readonly<Record<string, unknown>>): number | null {
  const cpu = facts.cpu;
  const cpus = facts.cpus;
  return positive(isRecord(cpu) ? cpu.cores : undefined) ?? positive(Array.isArray(cpus) ? cpus.length : cpus) ?? positive(facts.cpuCount);
}

/**
 * The memory total in bytes in a host's facts, read from the first of: `facts.memory.totalBytes`
 * (what transport-ws gathers), `facts.memory.total`, `facts.memory` (a number), `facts.mem.total`
 * (systeminformation's `mem()`), `facts.memTotalBytes`. Null when none is a positive number.
 */
export function memTotalOf(facts: Readonly<Record<string, unknown>>): number | null {
  const memory = facts.memory;
  const mem = facts.mem;
  return (isRecord(memory) ? positive(memory.totalBytes) ?? positive(memory.total) : positive(memory))
    ?? positive(isRecord(mem) ? mem.total : undefined)
    ?? positive(facts.memTotalBytes);
}

/** Checks a `health.hosts` request; throws a TypeError naming what is wrong. */
export function parseHostFilter(data: unknown): HostFilter {
  if (data === undefined || data === null) return {};
  if (!isRecord(data)) throw new TypeError('health.hosts takes { labels?: { key: value }, state?: string }');
  const filter: HostFilter = {};
  if (data.labels !== undefined) {
    if (!isRecord(data.labels)) throw new TypeError('health.hosts: labels must be an object of strings');
    for (const [k, v] of Object.entries(data.labels)) {
      if (typeof v !== 'string') throw new TypeError(`health.hosts: label ${JSON.stringify(k)} must be a string`);
    }
    filter.labels = Object.fromEntries(Object.entries(data.labels)) as Record<string, string>;
  }
  if (data.state !== undefined) {
    if (!(HOST_STATES as readonly unknown[]).includes(data.state)) throw new TypeError(`health.hosts: state must be one of ${HOST_STATES.join(', ')}`);
    filter.state = data.state as HostState;
  }
  return filter;
}

/** The worst level the record's metrics reach, and which metrics reached it (worst first). */
function judge(thresholds: Thresholds, health: HealthRecord, cpuCount: number | null, memTotal: number | null): { level: Level; reason: string } {
  let level: Level = 'healthy';
  let unhealthy: string[] | undefined;
  let degraded: string[] | undefined;
  for (const metric of METRIC_NAMES) {
    const value = metricValue(metric, health, cpuCount, memTotal);
    if (value === undefined) continue;
    const t = thresholds[metric];
    const above = THRESHOLD_METRICS[metric] === 'above';
    const reaches = (limit: number | null) => limit !== null && (above ? value >= limit : value <= limit);
    const shown = `${metric} ${round(value)} ${above ? '>=' : '<='}`;
    if (reaches(t.unhealthy)) {
      (unhealthy ??= []).push(`${shown} ${t.unhealthy} (unhealthy)`);
      level = 'unhealthy';
    } else if (reaches(t.degraded)) {
      (degraded ??= []).push(`${shown} ${t.degraded} (degraded)`);
      if (level === 'healthy') level = 'degraded';
    }
  }
  return { level, reason: [...(unhealthy ?? []), ...(degraded ?? [])].join(', ') };
}

function metricValue(metric: ThresholdMetric, h: HealthRecord, cpuCount: number | null, memTotal: number | null): number | undefined {
  switch (metric) {
    case 'loadPerCpu':
      return h.load1 !== undefined && cpuCount !== null ? h.load1 / cpuCount : undefined;
    case 'memAvailablePercent':
      return h.memAvailableBytes !== undefined && memTotal !== null ? (100 * h.memAvailableBytes) / memTotal : undefined;
    case 'clockOffsetMs':
      return h.clockOffsetMs !== undefined ? Math.abs(h.clockOffsetMs) : undefined;
    default:
      return h[metric];
  }
}

function view(h: HostEntry): HostView {
  return {
    id: h.id, name: h.name, role: h.role, address: h.address, labels: h.labels, facts: h.facts,
    state: h.state, since: h.since, reason: h.reason, life: h.life,
    lastHeartbeatAt: h.lastHeartbeatAt, clockOffsetMs: h.health?.clockOffsetMs ?? null,
    health: h.health ? { ...h.health } : null, plugins: h.plugins, connected: h.connected,
  };
}

/** A heartbeat's plugin table (the transport validated it against the wire schema), or undefined when it carries none. */
function pluginsOf(record: Record<string, unknown>): PluginSummary[] | undefined {
  return Array.isArray(record.plugins) ? (record.plugins as PluginSummary[]).slice(0, WIRE_LIMITS.maxPluginsReported) : undefined;
}

function parseConnected(record: unknown): HostInfo | null {
  if (!isRecord(record)) return null;
  const id = shortString(record.id);
  if (id === null) return null;
  // Object.fromEntries defines own properties, so even a key such as `__proto__` stays a label.
  const labels = isRecord(record.labels)
    ? Object.fromEntries(Object.entries(record.labels).filter((e): e is [string, string] => typeof e[1] === 'string'))
    : {};
  return {
    id,
    name: shortString(record.name) ?? id,
    role: shortString(record.role) ?? 'client',
    address: shortString(record.address),
    labels,
    facts: isRecord(record.facts) ? record.facts : {},
    sessionId: shortString(record.sessionId),
  };
}

function healthOf(record: Record<string, unknown>): HealthRecord {
  const health: HealthRecord = {};
  for (const field of HEALTH_FIELDS) {
    const v = record[field];
    if (typeof v === 'number' && Number.isFinite(v)) health[field] = v;
  }
  return health;
}

function joinReasons(what: string, figures: string): string {
  return figures ? `${what}; ${figures}` : what;
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function shortString(x: unknown): string | null {
  return typeof x === 'string' && x.length > 0 && x.length <= MAX_ID_LENGTH ? x : null;
}

function positive(x: unknown): number | null {
  return typeof x === 'number' && Number.isFinite(x) && x > 0 ? x : null;
}

function round(x: number): number {
  return Math.round(x * 100) / 100;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
