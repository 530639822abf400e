/**
 * The fleet simulator: N simulated hosts in one process, each a real WireClient with its own
 * Ed25519 identity, socket, session, clock estimate and replay guard, speaking the real protocol
 * to a real endpoint. Tests and benchmarks use it to put 1,000+ hosts on one 2-core machine.
 *
 * What is simulated, per host: a clock offset (its clock runs `clockSkewMs(i)` off), a one-way
 * network latency, and failures injected on demand (stop heartbeating, drop the connection,
 * send garbage). What is shared, to keep a simulated host small: the process, one health
 * sampler (sampled at most once a second), one pin store, one data directory root (each host's
 * replay guard gets its own subfolder, created on its first command).
 *
 * With `sink: true` each host also keeps a second connection, to the sink its server's welcome
 * names (as a client agent does), over which `sendToSink` streams task events and metrics. The
 * fleet runs no actions: `onDispatch` hands each verified dispatch to the caller.
 */

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from '../../plugin-sdk/src/index.ts';
import type { MetricsBatchMessage, TaskDispatchMessage, TaskEventMessage, WelcomeMessage } from '../../plugin-sdk/src/schemas/wire.ts';
import type { BackoffOptions } from '../../plugins/transport-ws/client/backoff.ts';
import { WireClient, type CommandArrival, type WireClientCounters } from '../../plugins/transport-ws/client/connection.ts';
import { HealthSampler, type HostHealth } from '../../plugins/transport-ws/client/health-record.ts';
import { PinStore } from '../../plugins/transport-ws/client/pins.ts';
import { generateIdentity, localClock, type ClockEstimate } from '../../plugins/transport-ws/protocol/index.ts';

export interface FleetOptions {
  /** The endpoint every simulated host connects to, e.g. ws://127.0.0.1:7700/agent. */
  url: string;
  count: number;
  /** Host names are `${namePrefix}-${i}` (i from 0). Default 'sim'. */
  namePrefix?: string;
  /** Labels of every host, or of host i. */
  labels?: Record<string, string> | ((i: number) => Record<string, string>);
  facts?: (i: number) => Record<string, unknown>;
  /** At most this many hosts in their first connection attempt at once. Default 200. */
  concurrency?: number;
  /** At most this many hosts started per second. Default: no limit. */
  rampPerSecond?: number;
  /** Host i's clock runs this many ms off the real one (server clock − host clock = −skew). Default 0. */
  clockSkewMs?: (i: number) => number;
  /** Simulated one-way latency per frame, ms. Default 0. */
  latencyMs?: number;
  /** Send heartbeats. Default true. */
  heartbeats?: boolean;
  /**
   * Directory under which each host's replay guard gets a subfolder (and the shared pins.json).
   * Default: a fresh temp dir under /dev/shm (fsync there is nearly free) or the OS temp dir,
   * removed by close().
   */
  dataRoot?: string;
  /** Extra CA for wss://. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** The server's key (base64 or fingerprint); without it, hosts trust on first use via a shared pin store. */
  serverKey?: string;
  backoff?: BackoffOptions;
  /** The health record every host sends. Default: one shared HealthSampler, sampled at most once a second. */
  health?: () => HostHealth;
  log?: Logger;
  /**
   * Also connect every host to the sink its server's welcome names (same key, role client, the
   * sink's key taken from the authenticated welcome), following it when a new welcome names
   * another. Needed for `sendToSink`. Default false.
   */
  sink?: boolean;
  /** Called with every verified dispatch a host received (after its arrival was recorded). */
  onDispatch?: (index: number, command: TaskDispatchMessage, arrival: CommandArrival) => void;
}

/** Kinds of injected failure. */
export type FleetFault = 'stop-heartbeat' | 'resume-heartbeat' | 'drop' | 'garbage';

/** A histogram: counts[i] holds values ≤ boundsMs[i] (and above boundsMs[i - 1]). */
export interface Histogram {
  boundsMs: number[];
  counts: number[];
}

export interface FleetStats extends Omit<WireClientCounters, 'refusals' | 'commandsRefused'> {
  clients: number;
  /** Hosts started so far. */
  started: number;
  /** Hosts with an open session now. */
  connected: number;
  /** Hosts with an open session to the sink now (0 without the `sink` option). */
  sinkConnected: number;
  refusals: Record<string, number>;
  commandsRefused: Record<string, number>;
  /** Every reconnect delay drawn so far (full jitter). */
  reconnectDelays: Histogram;
}

/** One simulated host's clock: its injected skew and what it estimated. */
export interface FleetEstimate {
  index: number;
  name: string;
  skewMs: number;
  estimate: ClockEstimate | null;
}

const DELAY_BOUNDS_MS = [100, 250, 500, 1000, 2000, 4000, 8000, 16_000, 30_000, Infinity];
const MAX_ATTEMPT_TIMES = 1_000_000;

interface Member {
  readonly index: number;
  readonly name: string;
  readonly skewMs: number;
  readonly client: WireClient;
  firstAttemptSettled: boolean;
  /** The connection to the sink (with the `sink` option, once a welcome named one). */
  sink: WireClient | null;
  /** The sink key that connection was given. */
  sinkKey: string | null;
}

/**
 * N simulated hosts. Guarantees: each host is an independent WireClient (own key, socket,
 * session, backoff, replay guard); `close()` closes every socket and timer and removes the data
 * root it created.
 */
export class Fleet {
  readonly options: FleetOptions;
  /** Where the replay guards and the shared pin store live. */
  readonly dataRoot: string;
  readonly #ownsDataRoot: boolean;
  readonly #members: Member[] = [];
  readonly #pins: PinStore | undefined;
  readonly #health: () => HostHealth;
  readonly #sampler: HealthSampler | null;
  readonly #arrivals = new Map<string, Map<number, number>>();
  readonly #delayCounts = DELAY_BOUNDS_MS.map(() => 0);
  /** performance.now() at which each reconnect attempt was scheduled to happen. */
  readonly #attemptTimes: number[] = [];
  readonly #waiters = new Set<() => void>();
  #connected = 0;
  #sinkConnected = 0;
  #inFirstAttempt = 0;
  #closed = false;

  constructor(options: FleetOptions) {
    if (!(Number.isInteger(options.count) && options.count >= 0)) throw new RangeError('count must be a non-negative integer');
    this.options = options;
    if (options.dataRoot !== undefined) {
      this.dataRoot = options.dataRoot;
      this.#ownsDataRoot = false;
      fs.mkdirSync(this.dataRoot, { recursive: true, mode: 0o700 });
    } else {
      const base = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
      this.dataRoot = fs.mkdtempSync(path.join(base, 'bolt-fleet-'));
      this.#ownsDataRoot = true;
    }
    this.#pins = options.serverKey === undefined ? PinStore.open(this.dataRoot) : undefined;
    if (options.health !== undefined) {
      this.#health = options.health;
      this.#sampler = null;
    } else {
      const sampler = new HealthSampler({ dataDir: this.dataRoot });
      this.#sampler = sampler;
      let cached = sampler.sample();
      let takenAt = performance.now();
      this.#health = () => {
        if (performance.now() - takenAt >= 1000) {
          cached = sampler.sample();
          takenAt = performance.now();
        }
        return cached;
      };
    }
  }

  /** Host count. */
  get size(): number {
    return this.options.count;
  }

  /** Hosts with an open session now. */
  get connected(): number {
    return this.#connected;
  }

  /**
   * Creates and starts every host, honouring `concurrency` and `rampPerSecond`. Resolves when the
   * last host has been started (not when all are connected: see waitConnected).
   */
  async start(): Promise<void> {
    const { count } = this.options;
    const concurrency = Math.max(1, this.options.concurrency ?? 200);
    const ramp = this.options.rampPerSecond;
    const began = performance.now();
    for (let i = this.#members.length; i < count && !this.#closed; i++) {
      while (this.#inFirstAttempt >= concurrency && !this.#closed) await this.#changed();
      if (ramp !== undefined && ramp > 0) {
        const due = began + (i * 1000) / ramp;
        const wait = due - performance.now();
        if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait));
      }
      if (this.#closed) return;
      this.#startMember(i);
    }
  }

  /** Hosts with an open session to the sink now. */
  get sinkConnected(): number {
    return this.#sinkConnected;
  }

  /** Resolves once at least `n` hosts are connected; rejects after `timeoutMs` with the stats. */
  waitConnected(n: number = this.options.count, timeoutMs = 60_000): Promise<void> {
    return this.#waitUntil(() => this.#connected >= n, timeoutMs, () => `${this.#connected}/${n} connected; ${JSON.stringify(this.stats())}`);
  }

  /** Resolves once at least `n` hosts have a sink session (`sink` option); rejects after `timeoutMs`. */
  waitSinkConnected(n: number = this.options.count, timeoutMs = 60_000): Promise<void> {
    return this.#waitUntil(() => this.#sinkConnected >= n, timeoutMs, () => `${this.#sinkConnected}/${n} connected to the sink`);
  }

  /**
   * Sends a task event or metrics batch from host `index` to its sink. Returns false, sending
   * nothing, when the host has no open sink session or its socket buffer is full (the caller
   * retries: nothing is kept here).
   */
  sendToSink(index: number, message: TaskEventMessage | MetricsBatchMessage): boolean {
    const member = this.#members[index];
    if (member === undefined) throw new RangeError(`host ${index} is not started`);
    return member.sink?.send(message) ?? false;
  }

  /** Totals over every host. */
  stats(): FleetStats {
    const total: FleetStats = {
      clients: this.options.count,
      started: this.#members.length,
      connected: this.#connected,
      sinkConnected: this.#sinkConnected,
      attempts: 0,
      connects: 0,
      disconnects: 0,
      busy: 0,
      refusals: {},
      commandsAccepted: 0,
      commandsRefused: {},
      heartbeatsSent: 0,
      badFrames: 0,
      reconnectDelays: { boundsMs: [...DELAY_BOUNDS_MS], counts: [...this.#delayCounts] },
    };
    for (const { client } of this.#members) {
      const c = client.counters;
      total.attempts += c.attempts;
      total.connects += c.connects;
      total.disconnects += c.disconnects;
      total.busy += c.busy;
      total.commandsAccepted += c.commandsAccepted;
      total.heartbeatsSent += c.heartbeatsSent;
      total.badFrames += c.badFrames;
      addCounts(total.refusals, c.refusals);
      addCounts(total.commandsRefused, c.commandsRefused);
    }
    return total;
  }

  /**
   * When the reconnect attempts happen: counts per `bucketMs` window from `sinceMs`
   * (performance.now() scale), by the instant each attempt was scheduled for.
   */
  attemptHistogram(sinceMs: number, bucketMs: number): number[] {
    const counts: number[] = [];
    for (const t of this.#attemptTimes) {
      if (t < sinceMs) continue;
      const i = Math.floor((t - sinceMs) / bucketMs);
      while (counts.length <= i) counts.push(0);
      counts[i]!++;
    }
    return counts;
  }

  /** Every started host's injected skew and clock estimate. */
  estimates(): FleetEstimate[] {
    return this.#members.map((m) => ({ index: m.index, name: m.name, skewMs: m.skewMs, estimate: m.client.estimate() }));
  }

  /**
   * Arrival instants (`performance.timeOrigin + performance.now()`, stamped when the frame reached
   * the host, before it was processed) of a dispatch at every host that verified it, by host index.
   */
  arrivals(commandId: string): Map<number, number> {
    return new Map(this.#arrivals.get(commandId) ?? []);
  }

  /** Resolves once `n` hosts have verified dispatch `commandId`; rejects after `timeoutMs`. */
  waitArrivals(commandId: string, n: number = this.#connected, timeoutMs = 10_000): Promise<void> {
    return this.#waitUntil(() => (this.#arrivals.get(commandId)?.size ?? 0) >= n, timeoutMs, () => `${this.#arrivals.get(commandId)?.size ?? 0}/${n} arrivals of ${commandId}`);
  }

  /** Forgets recorded arrivals (long benchmarks). */
  clearArrivals(): void {
    this.#arrivals.clear();
  }

  /** The WireClient of host `index` (started hosts only). */
  client(index: number): WireClient {
    const member = this.#members[index];
    if (member === undefined) throw new RangeError(`host ${index} is not started`);
    return member.client;
  }

  /** Injects a failure into the given hosts (indexes). Returns how many it applied to. */
  inject(kind: FleetFault, clients: Iterable<number>): number {
    let applied = 0;
    for (const index of clients) {
      const client = this.#members[index]?.client;
      if (client === undefined) continue;
      if (kind === 'stop-heartbeat') client.pauseHeartbeats(true);
      else if (kind === 'resume-heartbeat') client.pauseHeartbeats(false);
      else if (kind === 'drop') client.dropConnection();
      else if (!client.sendRaw(`{"garbage":${index},"v":1,"type":"heartbeat"}`)) continue;
      applied++;
    }
    return applied;
  }

  /** Closes every host and removes the data root if the fleet created it. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#notify();
    await Promise.all(this.#members.flatMap((m) => (m.sink === null ? [m.client.close()] : [m.client.close(), m.sink.close()])));
    this.#sampler?.close();
    if (this.#ownsDataRoot) fs.rmSync(this.dataRoot, { recursive: true, force: true });
  }

  #startMember(index: number): void {
    const { options } = this;
    const name = `${options.namePrefix ?? 'sim'}-${index}`;
    const skewMs = options.clockSkewMs?.(index) ?? 0;
    const labels = typeof options.labels === 'function' ? options.labels(index) : options.labels;
    const facts = options.facts?.(index);
    const settleFirst = () => {
      if (member.firstAttemptSettled) return;
      member.firstAttemptSettled = true;
      this.#inFirstAttempt--;
      this.#notify();
    };
    const client = new WireClient({
      url: options.url,
      identity: generateIdentity(),
      host: name,
      ...(labels !== undefined && { labels }),
      ...(facts !== undefined && { facts }),
      ...(this.#pins !== undefined && { pins: this.#pins }),
      ...(options.serverKey !== undefined && { serverKey: options.serverKey }),
      replayGuardDir: path.join(this.dataRoot, name),
      health: this.#health,
      ...(skewMs !== 0 && { clock: () => localClock() + skewMs }),
      ...(options.ca !== undefined && { ca: options.ca }),
      ...(options.log !== undefined && { log: options.log }),
      ...(options.backoff !== undefined && { backoff: options.backoff }),
      ...(options.latencyMs !== undefined && { latencyMs: options.latencyMs }),
      heartbeats: options.heartbeats ?? true,
      deferFrames: true,
      onConnected: (_session, welcome) => {
        this.#connected++;
        settleFirst();
        if (options.sink === true) this.#followSink(member, welcome);
        this.#notify();
      },
      onDisconnected: () => {
        this.#connected--;
        this.#notify();
      },
      onReconnectScheduled: (delayMs) => {
        settleFirst();
        this.#delayCounts[DELAY_BOUNDS_MS.findIndex((b) => delayMs <= b)]!++;
        if (this.#attemptTimes.length < MAX_ATTEMPT_TIMES) this.#attemptTimes.push(performance.now() + delayMs);
      },
      onDispatch: (command, arrival) => {
        let byHost = this.#arrivals.get(command.id);
        if (byHost === undefined) this.#arrivals.set(command.id, (byHost = new Map()));
        byHost.set(index, arrival.arrivedAt);
        this.#notify();
        options.onDispatch?.(index, command, arrival);
      },
    });
    const member: Member = { index, name, skewMs, client, firstAttemptSettled: false, sink: null, sinkKey: null };
    this.#members.push(member);
    this.#inFirstAttempt++;
    client.start();
  }

  /** Connects host `member` to the sink `welcome` names; a welcome naming another sink (or none) replaces the connection. */
  #followSink(member: Member, welcome: WelcomeMessage): void {
    const target = welcome.sink;
    const current = member.sink;
    if (current !== null && target !== undefined && current.url === target.url && member.sinkKey === target.publicKey) return;
    if (current !== null) {
      member.sink = null;
      member.sinkKey = null;
      void current.close();
    }
    if (target === undefined || this.#closed) return;
    const { options } = this;
    const sink: WireClient = new WireClient({
      url: target.url,
      identity: member.client.identity,
      host: member.name,
      role: 'client',
      expectRole: 'sink',
      // The server vouched for this key in the authenticated welcome.
      serverKey: target.publicKey,
      ...(options.labels !== undefined && { labels: typeof options.labels === 'function' ? options.labels(member.index) : options.labels }),
      ...(member.skewMs !== 0 && { clock: () => localClock() + member.skewMs }),
      ...(options.ca !== undefined && { ca: options.ca }),
      ...(options.log !== undefined && { log: options.log }),
      ...(options.backoff !== undefined && { backoff: options.backoff }),
      ...(options.latencyMs !== undefined && { latencyMs: options.latencyMs }),
      deferFrames: true,
      onConnected: () => {
        this.#sinkConnected++;
        this.#notify();
      },
      // Also called when a replaced or closed connection's session ends.
      onDisconnected: () => {
        this.#sinkConnected--;
        this.#notify();
      },
    });
    member.sink = sink;
    member.sinkKey = target.publicKey;
    sink.start();
  }

  /** Resolves at the next change of connections, first attempts or arrivals. */
  #changed(): Promise<void> {
    return new Promise((resolve) => this.#waiters.add(resolve));
  }

  #notify(): void {
    if (this.#waiters.size === 0) return;
    const waiters = [...this.#waiters];
    this.#waiters.clear();
    for (const resolve of waiters) resolve();
  }

  async #waitUntil(done: () => boolean, timeoutMs: number, describe: () => string): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (!done()) {
      const left = deadline - performance.now();
      if (left <= 0 || this.#closed) throw new Error(`fleet: timed out after ${timeoutMs} ms: ${describe()}`);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.#changed(), new Promise((resolve) => (timer = setTimeout(resolve, Math.min(left, 250))))]);
      clearTimeout(timer);
    }
  }
}

function addCounts(into: Record<string, number>, from: Record<string, number>): void {
  for (const [key, n] of Object.entries(from)) into[key] = (into[key] ?? 0) + n;
}
