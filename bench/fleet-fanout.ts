/**
 * fleet-fanout: time from one server message to its arrival at every one of N connected hosts.
 *
 *   node --import tsx bench/fleet-fanout.ts [--n 1000,5000] [--dispatches 20] [--warmup 2]
 *        [--breakdown 5] [--handshakes-per-sec 5000]
 *
 * For each N a fresh `bolt-core start` process (server + embedded sink, --auto-accept, loopback)
 * and a Fleet of N WireClients in this process, heartbeating every second. Each dispatch is a
 * `transport.dispatch` to all N host ids through the admin endpoint; the server answers with
 * `sentAt` (its clock, `performance.timeOrigin + performance.now()`, taken just before its send
 * loop) and the fleet stamps each frame's arrival on the same kind of clock in this process when
 * its socket is read, before it is verified. Per dispatch: last arrival − sentAt (the figure), the
 * median and the first arrival, and the median arrival per quarter of the send order. Median and
 * p99 (nearest rank: with 20 dispatches, the largest) over the dispatches.
 *
 * Where the time goes: the arrival pace along the send order (and the first arrival) shows
 * whether the server's send loop or the simulator's reads set the pace. With heartbeats paused,
 * --breakdown more dispatches measure the CPU the server's transport-ws thread spends per
 * dispatch (send loop plus reading the N acks that come back), and as many bursts of N acks sent
 * by the fleet alone measure what acks cost; the difference bounds the send loop from above. The
 * fleet's own CPU per dispatch (read, verify, record, ack) is measured alongside.
 *
 * The admission limit is raised (default 5000 handshakes/s) only so the fleet connects quickly;
 * it plays no part once hosts are connected. The fleet runs in the measuring process and competes
 * with the server for the same cores; each N is measured in a child process of this script,
 * restarted if it deadlocks (lib/isolate.ts). Prints one JSON object per N on stdout; progress on
 * stderr; exits non-zero when a run fails (a failed run is never turned into a figure).
 */
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { WIRE_VERSION, type TaskAckMessage } from '../plugin-sdk/src/schemas/wire.ts';
import { Fleet } from './fleet/fleet.ts';
import { BoltServer, busiestWorkerThread, codeVersion, epoch, FLEET_SETTLE_MS, HEARTBEAT_SWITCH_MS, loadavg, QUIET_HEALTH_MONITOR, removeScratchDir, scratchDir, sleep, threadUserSystem } from './lib/bolt-server.ts';
import { isIsolatedChild, isolatedAttempt, runSizesIsolated } from './lib/isolate.ts';
import { median, p99 } from './lib/stats.ts';

const AIM = { clients: 1000, lastArrivalMedianMs: 50 };
/** After the fleet has sent its last ack, time for the server to read them before the CPU is read. */
const ACK_DRAIN_MS = 300;

const progress = (msg: string) => process.stderr.write(`[fleet-fanout] ${msg}\n`);
const SELF = fileURLToPath(import.meta.url);
const round = (v: number, digits = 2) => Number(v.toFixed(digits));

interface DispatchAnswer {
  commandId: string;
  sentAt: number;
  sent: string[];
  skipped: { id: string; reason: string }[];
}

interface PluginRow {
  name: string;
  state: string;
  restarts: number;
}

interface Sample {
  lastMs: number;
  medianMs: number;
  firstMs: number;
  byQuarterMs: number[];
  requestToSentAtMs: number;
  fleetCpuMs: number;
}

function positiveInt(text: string, flag: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`--${flag} must be a positive integer, got '${text}'`);
  return n;
}

function figures(values: number[]) {
  return { median: round(median(values)), p99: round(p99(values)), min: round(Math.min(...values)), max: round(Math.max(...values)) };
}

/** Waits until the fleet has verified (and acknowledged) `total` commands since it started. */
async function acknowledged(fleet: Fleet, total: number, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (fleet.stats().commandsAccepted < total) {
    if (performance.now() > deadline) throw new Error(`${fleet.stats().commandsAccepted}/${total} commands verified after ${timeoutMs} ms`);
    await sleep(20);
  }
}

class Harness {
  readonly server: BoltServer;
  readonly fleet: Fleet;
  readonly ids: string[];
  #accepted = 0;
  #seq = 0;

  constructor(server: BoltServer, fleet: Fleet, ids: string[]) {
    this.server = server;
    this.fleet = fleet;
    this.ids = ids;
  }

  /** One dispatch to every host; resolves with its figures once every host has verified and acknowledged it. */
  async dispatch(): Promise<Sample> {
    const n = this.ids.length;
    const fleetCpu0 = process.cpuUsage();
    const requestedAt = epoch();
    const answer = await this.server.request<DispatchAnswer>('transport.dispatch', {
      runId: 'bench-fanout', taskId: `dispatch-${this.#seq++}`, action: 'bench.noop', with: {}, startAt: null, timeoutMs: 1000, targets: this.ids,
    });
    if (answer.sent.length !== n || answer.skipped.length !== 0) throw new Error(`dispatch sent to ${answer.sent.length}/${n}, skipped ${JSON.stringify(answer.skipped.slice(0, 3))}`);
    await this.fleet.waitArrivals(answer.commandId, n, 60_000);
    this.#accepted += n;
    await acknowledged(this.fleet, this.#accepted, 60_000);
    const fleetCpu = process.cpuUsage(fleetCpu0);
    const arrivals = this.fleet.arrivals(answer.commandId);
    this.fleet.clearArrivals();
    const after = [...arrivals.values()].map((at) => at - answer.sentAt);
    // The server sends in the order of `targets`, i.e. host index order.
    const byQuarterMs = [0, 1, 2, 3].map((q) => {
      const part: number[] = [];
      for (let i = Math.floor((q * n) / 4); i < Math.floor(((q + 1) * n) / 4); i++) part.push(arrivals.get(i)! - answer.sentAt);
      return round(median(part));
    });
    return {
      lastMs: Math.max(...after),
      medianMs: median(after),
      firstMs: Math.min(...after),
      byQuarterMs,
      requestToSentAtMs: answer.sentAt - requestedAt,
      fleetCpuMs: (fleetCpu.user + fleetCpu.system) / 1000,
    };
  }

  /** Every host sends one task.ack, as after a dispatch, without a dispatch. */
  ackBurst(): void {
    for (let i = 0; i < this.ids.length; i++) {
      const ack: TaskAckMessage = { v: WIRE_VERSION, type: 'task.ack', id: randomUUID(), ref: randomUUID(), runId: 'bench-fanout', taskId: 'ack-probe', accepted: true };
      if (!this.fleet.client(i).send(ack)) throw new Error(`host ${i} could not send its ack`);
    }
  }
}

/**
 * How far apart the server's clock (of `sentAt`) and this process's clock (of the arrival stamps)
 * are: one extra host, connected while the server is otherwise quiet, runs its 8 clock pings;
 * the estimate is server − this process, within ± errorMs.
 */
async function clockProbe(server: BoltServer, dataRoot: string) {
  const probe = new Fleet({ url: server.agentUrl, count: 1, namePrefix: 'clock-probe', heartbeats: false, dataRoot });
  try {
    await probe.start();
    await probe.waitConnected(1, 30_000);
    const deadline = performance.now() + 5000;
    for (;;) {
      const estimate = probe.client(0).estimate();
      if (estimate !== null && estimate.samples >= 8) return { offsetMs: round(estimate.offsetMs, 3), errorMs: round(estimate.errorMs, 3) };
      if (performance.now() > deadline) throw new Error(`clock probe: ${estimate?.samples ?? 0} clock samples after 5 s`);
      await sleep(50);
    }
  } finally {
    await probe.close();
  }
}

/** CPU of one thread of the server (ms, and its user/system seconds) and of this process (ms) while `work` runs, plus `drainMs`. */
async function cpuOf(h: Harness, tid: number, drainMs: number, work: () => Promise<unknown> | void) {
  const thread0 = h.server.threadCpuNs().get(tid)!;
  const split0 = threadUserSystem(h.server.pid, tid);
  const fleet0 = process.cpuUsage();
  const t0 = performance.now();
  await work();
  await sleep(drainMs);
  const wallMs = performance.now() - t0;
  const thread1 = h.server.threadCpuNs().get(tid);
  if (thread1 === undefined) throw new Error(`server thread ${tid} ended`);
  const split1 = threadUserSystem(h.server.pid, tid);
  const fleet = process.cpuUsage(fleet0);
  return {
    threadMs: (thread1 - thread0) / 1e6,
    userS: split1.user - split0.user,
    systemS: split1.system - split0.system,
    fleetMs: (fleet.user + fleet.system) / 1000,
    wallMs,
  };
}

/** User and system seconds summed over rows. */
function userSystem(rows: { userS: number; systemS: number }[]): { user: number; system: number } {
  return { user: rows.reduce((s, r) => s + r.userS, 0), system: rows.reduce((s, r) => s + r.systemS, 0) };
}

/** The system (kernel) share of user + system seconds, in percent. */
function systemShare({ user, system }: { user: number; system: number }): number {
  return user + system > 0 ? round((system / (user + system)) * 100, 1) : 0;
}

/** With heartbeats paused: the transport thread's CPU per dispatch and per burst of N acks, and the fleet's. */
async function breakdown(h: Harness, tid: number, rounds: number) {
  const everyone = h.ids.map((_, i) => i);
  h.fleet.inject('stop-heartbeat', everyone);
  await sleep(HEARTBEAT_SWITCH_MS);
  try {
    const idleRates: number[] = [];
    const dispatches: { threadMs: number; userS: number; systemS: number; fleetMs: number; wallMs: number; lastMs: number }[] = [];
    const acks: { threadMs: number; userS: number; systemS: number; fleetMs: number; wallMs: number }[] = [];
    for (let r = 0; r < rounds; r++) {
      const idle = await cpuOf(h, tid, 1000, () => {});
      idleRates.push(idle.threadMs / idle.wallMs);
      let sample: Sample | undefined;
      const d = await cpuOf(h, tid, ACK_DRAIN_MS, async () => {
        sample = await h.dispatch();
      });
      dispatches.push({ ...d, lastMs: sample!.lastMs });
      await sleep(200);
      acks.push(await cpuOf(h, tid, ACK_DRAIN_MS + h.ids.length * 0.1, () => h.ackBurst()));
      await sleep(200);
    }
    // What the thread does without dispatches (clock pings, timers) is taken out at the median idle rate.
    const idleRate = median(idleRates);
    const perDispatch = median(dispatches.map((d) => d.threadMs - idleRate * d.wallMs));
    const perAcks = median(acks.map((a) => a.threadMs - idleRate * a.wallMs));
    const sumDispatches = userSystem(dispatches);
    const sumAcks = userSystem(acks);
    return {
      heartbeats: 'paused',
      rounds,
      lastArrivalMs: figures(dispatches.map((d) => d.lastMs)),
      transportThreadCpuMs: {
        perDispatchWithItsAcks: round(perDispatch),
        perBurstOfAcks: round(perAcks),
        perDispatchMinusAckBurst: round(perDispatch - perAcks),
        note: 'perDispatchMinusAckBurst bounds the send loop from above: acks that trickle in while the hosts verify cost more each than a burst of them',
        idlePercent: round(idleRate * 100),
        // From 10 ms ticks summed over the rounds: coarse, but it tells syscalls from JavaScript.
        systemSharePercent: {
          dispatchWithAcks: systemShare(sumDispatches),
          acks: systemShare(sumAcks),
          dispatchMinusAcks: systemShare({ user: sumDispatches.user - sumAcks.user, system: sumDispatches.system - sumAcks.system }),
        },
      },
      fleetCpuMs: { perDispatch: round(median(dispatches.map((d) => d.fleetMs))), perBurstOfAcksSent: round(median(acks.map((a) => a.fleetMs))) },
    };
  } finally {
    h.fleet.inject('resume-heartbeat', everyone);
  }
}

async function measure(n: number, opts: { dispatches: number; warmup: number; breakdown: number; rate: number }, common: Record<string, unknown>): Promise<Record<string, unknown>> {
  const loadStart = loadavg();
  progress(`N=${n}: starting bolt-core, load ${loadStart.join(' ')}`);
  const server = await BoltServer.start({
    config: { plugins: { 'transport-ws': { handshakesPerSec: opts.rate, handshakeBurst: opts.rate }, 'health-monitor': QUIET_HEALTH_MONITOR } },
  });
  const fleetRoot = scratchDir('bolt-bench-fleet-', true);
  let fleet: Fleet | undefined;
  try {
    fleet = new Fleet({ url: server.agentUrl, count: n, concurrency: 200, dataRoot: fleetRoot });
    const threadsBefore = server.threadCpuNs();
    const t0 = performance.now();
    await fleet.start();
    await fleet.waitConnected(n, 240_000);
    const ids = Array.from({ length: n }, (_, i) => fleet!.client(i).identity.fingerprint);
    const listed = new Set((await server.request<{ id: string }[]>('transport.sessions')).map((s) => s.id));
    if (!ids.every((id) => listed.has(id))) throw new Error('transport.sessions does not list every connected host');
    const transportTid = busiestWorkerThread(server.pid, threadsBefore, server.threadCpuNs());
    progress(`  ${n} connected in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    await sleep(FLEET_SETTLE_MS);

    // Both clocks are performance.timeOrigin + performance.now(), one per process.
    const clockBefore = await clockProbe(server, fleetRoot);
    const h = new Harness(server, fleet, ids);
    for (let i = 0; i < opts.warmup; i++) await h.dispatch();
    const samples: Sample[] = [];
    for (let i = 0; i < opts.dispatches; i++) {
      samples.push(await h.dispatch());
      await sleep(200);
    }
    const last = samples.map((s) => s.lastMs);
    progress(`  last arrival median ${median(last).toFixed(1)} ms, p99 ${p99(last).toFixed(1)} ms over ${opts.dispatches}`);
    const clockAfter = await clockProbe(server, fleetRoot);
    const split = await breakdown(h, transportTid, opts.breakdown);
    progress(`  breakdown: transport thread ${split.transportThreadCpuMs.perDispatchWithItsAcks} ms CPU per dispatch with its acks, ${split.transportThreadCpuMs.perBurstOfAcks} ms per burst of ${n} acks`);

    const plugins = await server.request<PluginRow[]>('core.plugins');
    const transport = plugins.find((p) => p.name === 'transport-ws');
    if (transport?.state !== 'running' || transport.restarts !== 0) throw new Error(`transport-ws is ${transport?.state} after ${transport?.restarts} restarts: run discarded`);
    const stats = fleet.stats();
    if (stats.disconnects !== 0 || fleet.connected !== n) throw new Error(`${stats.disconnects} sessions ended, ${fleet.connected}/${n} connected: run discarded`);
    if (Object.keys(stats.commandsRefused).length !== 0) throw new Error(`hosts refused commands: ${JSON.stringify(stats.commandsRefused)}`);

    const lastFigures = figures(last);
    return {
      bench: 'fleet-fanout',
      ...common,
      clients: n,
      dispatches: opts.dispatches,
      warmup: opts.warmup,
      heartbeats: 'every 1 s',
      lastArrivalMs: lastFigures,
      medianArrivalMs: figures(samples.map((s) => s.medianMs)),
      firstArrivalMs: figures(samples.map((s) => s.firstMs)),
      aim: { ...AIM, met: n === AIM.clients ? lastFigures.median < AIM.lastArrivalMedianMs : null },
      medianArrivalByQuarterOfSendOrderMs: [0, 1, 2, 3].map((q) => round(median(samples.map((s) => s.byQuarterMs[q]!)))),
      // From the first to the last quarter's median arrival (3/4 of the send order apart): how fast
      // successive hosts got the frame, i.e. the send loop's pace while the fleet keeps up with it.
      arrivalPaceUsPerHost: round(median(samples.map((s) => ((s.byQuarterMs[3]! - s.byQuarterMs[0]!) / (0.75 * n)) * 1000)), 1),
      requestToSentAtMs: round(median(samples.map((s) => s.requestToSentAtMs))),
      fleetCpuMsPerDispatch: round(median(samples.map((s) => s.fleetCpuMs))),
      breakdown: split,
      clockCheck: {
        how: 'server clock minus this process clock, estimated by one extra host with 8 clock pings before and after the dispatches; arrivals are not corrected by it',
        before: clockBefore,
        after: clockAfter,
      },
      samples: { lastArrivalMs: last.map((v) => round(v, 1)), medianArrivalMs: samples.map((s) => round(s.medianMs, 1)) },
      admission: { handshakesPerSec: opts.rate, handshakeBurst: opts.rate, setting: 'raised in bolt.yaml to connect the fleet quickly; no part in the fan-out' },
      loadavgStart: loadStart,
      loadavgEnd: loadavg(),
    };
  } finally {
    await fleet?.close();
    await server.stop();
    removeScratchDir(fleetRoot);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      n: { type: 'string', default: '1000,5000' },
      dispatches: { type: 'string', default: '20' },
      warmup: { type: 'string', default: '2' },
      breakdown: { type: 'string', default: '5' },
      'handshakes-per-sec': { type: 'string', default: '5000' },
      'isolated-child': { type: 'boolean', default: false },
      attempt: { type: 'string' },
    },
  });
  const sizes = values.n.split(',').map((s) => positiveInt(s, 'n'));
  const opts = {
    dispatches: positiveInt(values.dispatches, 'dispatches'),
    warmup: Number(values.warmup),
    breakdown: positiveInt(values.breakdown, 'breakdown'),
    rate: positiveInt(values['handshakes-per-sec'], 'handshakes-per-sec'),
  };
  if (!Number.isInteger(opts.warmup) || opts.warmup < 0) throw new Error(`--warmup must be an integer >= 0, got '${values.warmup}'`);
  if (!isIsolatedChild) {
    progress(`node ${process.version}, ${os.availableParallelism()} cores, sizes ${sizes.join(', ')}; each in its own process`);
    await runSizesIsolated({ script: SELF, sizes, progress });
    return;
  }
  const common = {
    startedAt: new Date().toISOString(),
    node: process.version,
    cpus: os.availableParallelism(),
    code: codeVersion(),
    attempt: isolatedAttempt(),
    note: 'the fleet (N WireClients) runs in the benchmark process and competes with the server for the same cores; arrival = when the fleet read the frame',
  };
  for (const n of sizes) process.stdout.write(`${JSON.stringify(await measure(n, opts, common))}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`[fleet-fanout] failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exitCode = 1;
});
