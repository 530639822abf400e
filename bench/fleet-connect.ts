/**
 * fleet-connect: how long N simulated hosts take to connect to a real Bolt server and be accepted,
 * what each connected host costs the server in memory, and what heartbeats cost the server in CPU.
 *
 *   node --expose-gc --import tsx bench/fleet-connect.ts [--n 1000,5000] [--handshakes-per-sec R]
 *        [--cpu-at 1000] [--cpu-window-s 10] [--cpu-rounds 2] [--concurrency 200]
 *
 * For each N a fresh `bolt-core start` process (server + embedded sink, --auto-accept, loopback)
 * and a Fleet of N WireClients in this process:
 * 1. connect: from fleet.start() until all N have a session (the fleet's view) and until
 *    `transport.sessions` lists every one of their key fingerprints (the server's view);
 * 2. memory: the server's VmRSS before the fleet and after it connected and settled, over N;
 *    the transport worker's heap from `transport.stats` (no forced GC in the server);
 * 3. heartbeat CPU (for N in --cpu-at): server process CPU time (utime + stime) over windows of
 *    --cpu-window-s with 1 s heartbeats, minus the same with the fleet connected and heartbeats
 *    paused (inject 'stop-heartbeat'), alternated --cpu-rounds times.
 *
 * Admission: without --handshakes-per-sec the server runs transport-ws's defaults (200
 * handshakes/s, burst 200); with it, handshakesPerSec and handshakeBurst are both set to R.
 * Every line says which. The fleet runs in the measuring process and shares the machine's cores
 * with the server; each N is measured in a child process of this script, restarted if it
 * deadlocks (lib/isolate.ts). Prints one JSON object per figure set on stdout; progress on
 * stderr; exits non-zero when a run fails (a failed run is never turned into a figure).
 */
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Fleet } from './fleet/fleet.ts';
import { BoltServer, busiestWorkerThread, codeVersion, epoch, FLEET_SETTLE_MS, HEARTBEAT_SWITCH_MS, loadavg, QUIET_HEALTH_MONITOR, removeScratchDir, scratchDir, sleep } from './lib/bolt-server.ts';
import { isIsolatedChild, isolatedAttempt, runSizesIsolated } from './lib/isolate.ts';

/** transport-ws's admission defaults (plugin.json). */
const DEFAULT_ADMISSION = { handshakesPerSec: 200, handshakeBurst: 200, maxHandshakesInFlight: 1000 };

const progress = (msg: string) => process.stderr.write(`[fleet-connect] ${msg}\n`);
const SELF = fileURLToPath(import.meta.url);
const round = (v: number, digits = 1) => Number(v.toFixed(digits));
const MiB = 1024 * 1024;

interface Plan {
  sizes: number[];
  raisedRate: number | undefined;
  cpuAt: Set<number>;
  cpuWindowS: number;
  cpuRounds: number;
  concurrency: number;
}

interface EndpointStats {
  accepted: number;
  refused: Record<string, number>;
  connections: number;
  memory: NodeJS.MemoryUsage;
}

interface PluginRow {
  name: string;
  state: string;
  restarts: number;
}

function gc(): boolean {
  const collect = (globalThis as { gc?: () => void }).gc;
  collect?.();
  return collect !== undefined;
}

function positiveInt(text: string, flag: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`--${flag} must be a positive integer, got '${text}'`);
  return n;
}

/** Time from `since` (performance.now) until the fleet reached each fraction of N connected. */
class ConnectProgress {
  readonly #samples: { atMs: number; connected: number }[] = [];
  readonly #timer: NodeJS.Timeout;
  readonly #fleet: Fleet;
  readonly #since: number;

  constructor(fleet: Fleet, since: number) {
    this.#fleet = fleet;
    this.#since = since;
    this.#timer = setInterval(() => this.#sample(), 50);
  }

  /** Stops sampling, after one last sample. */
  stop(): void {
    clearInterval(this.#timer);
    this.#sample();
  }

  #sample(): void {
    this.#samples.push({ atMs: performance.now() - this.#since, connected: this.#fleet.connected });
  }

  /** For each fraction, the first sample (50 ms resolution) at which that many were connected. */
  milestones(n: number, fractions: number[]): Record<string, number | null> {
    const out: Record<string, number | null> = {};
    for (const f of fractions) {
      const hit = this.#samples.find((s) => s.connected >= Math.ceil(n * f));
      out[`${Math.round(f * 100)}%`] = hit === undefined ? null : Math.round(hit.atMs);
    }
    return out;
  }
}

interface CpuWindow {
  serverCpuPercent: number;
  /** The same window split by thread (schedstat, ns resolution): the core's main thread (bus broker), the transport-ws worker, all others. */
  byThreadPercent: { main: number; transport: number; other: number };
  fleetCpuPercent: number;
  heartbeatsPerSecond: number;
}

/** Server process CPU (% of one core), split by thread, the fleet's own CPU and the heartbeat rate over one window. */
async function cpuWindow(server: BoltServer, fleet: Fleet, transportTid: number, seconds: number): Promise<CpuWindow> {
  const beats0 = fleet.stats().heartbeatsSent;
  const fleet0 = process.cpuUsage();
  const threads0 = server.threadCpuNs();
  const server0 = server.cpuSeconds();
  const t0 = performance.now();
  await sleep(seconds * 1000);
  const server1 = server.cpuSeconds();
  const threads1 = server.threadCpuNs();
  const wallS = (performance.now() - t0) / 1000;
  const fleetCpu = process.cpuUsage(fleet0);
  const beats = fleet.stats().heartbeatsSent - beats0;
  const split = { main: 0, transport: 0, other: 0 };
  for (const [tid, ns] of threads1) {
    const used = ns - (threads0.get(tid) ?? 0);
    if (tid === server.pid) split.main += used;
    else if (tid === transportTid) split.transport += used;
    else split.other += used;
  }
  const percent = (ns: number) => round((ns / 1e9 / wallS) * 100, 2);
  return {
    serverCpuPercent: round(((server1 - server0) / wallS) * 100, 2),
    byThreadPercent: { main: percent(split.main), transport: percent(split.transport), other: percent(split.other) },
    fleetCpuPercent: round(((fleetCpu.user + fleetCpu.system) / 1e6 / wallS) * 100, 2),
    heartbeatsPerSecond: round(beats / wallS, 0),
  };
}

async function heartbeatCpu(server: BoltServer, fleet: Fleet, transportTid: number, plan: Plan) {
  const everyone = Array.from({ length: fleet.size }, (_, i) => i);
  const active: CpuWindow[] = [];
  const idle: CpuWindow[] = [];
  for (let r = 0; r < plan.cpuRounds; r++) {
    active.push(await cpuWindow(server, fleet, transportTid, plan.cpuWindowS));
    fleet.inject('stop-heartbeat', everyone);
    await sleep(HEARTBEAT_SWITCH_MS);
    idle.push(await cpuWindow(server, fleet, transportTid, plan.cpuWindowS));
    fleet.inject('resume-heartbeat', everyone);
    await sleep(HEARTBEAT_SWITCH_MS);
    progress(`  cpu round ${r + 1}: server ${active.at(-1)!.serverCpuPercent} % with heartbeats, ${idle.at(-1)!.serverCpuPercent} % without`);
  }
  const mean = (values: number[]) => values.reduce((s, v) => s + v, 0) / values.length;
  const cost = (pick: (w: CpuWindow) => number) => round(mean(active.map(pick)) - mean(idle.map(pick)), 2);
  const costPercent = mean(active.map((w) => w.serverCpuPercent)) - mean(idle.map((w) => w.serverCpuPercent));
  const beatsPerSecond = mean(active.map((w) => w.heartbeatsPerSecond)) - mean(idle.map((w) => w.heartbeatsPerSecond));
  return {
    serverCpuPercentOfOneCore: {
      withHeartbeats: round(mean(active.map((w) => w.serverCpuPercent)), 2),
      heartbeatsPaused: round(mean(idle.map((w) => w.serverCpuPercent)), 2),
      heartbeatCost: round(costPercent, 2),
    },
    heartbeatCostByThreadPercent: { main: cost((w) => w.byThreadPercent.main), transport: cost((w) => w.byThreadPercent.transport), other: cost((w) => w.byThreadPercent.other) },
    heartbeatsPerSecond: round(beatsPerSecond, 0),
    serverCpuUsPerHeartbeat: round(((costPercent / 100) * 1e6) / beatsPerSecond, 1),
    fleetCpuPercentOfOneCore: { withHeartbeats: round(mean(active.map((w) => w.fleetCpuPercent)), 2), heartbeatsPaused: round(mean(idle.map((w) => w.fleetCpuPercent)), 2) },
    windows: { seconds: plan.cpuWindowS, withHeartbeats: active, heartbeatsPaused: idle },
  };
}

async function measure(n: number, plan: Plan, common: Record<string, unknown>): Promise<Record<string, unknown>[]> {
  const admission = plan.raisedRate === undefined
    ? { ...DEFAULT_ADMISSION, setting: 'default' }
    : { ...DEFAULT_ADMISSION, handshakesPerSec: plan.raisedRate, handshakeBurst: plan.raisedRate, setting: 'raised in bolt.yaml' };
  const transportConfig = plan.raisedRate === undefined ? {} : { handshakesPerSec: plan.raisedRate, handshakeBurst: plan.raisedRate };
  const loadStart = loadavg();
  progress(`N=${n}: starting bolt-core (admission ${admission.handshakesPerSec}/s, burst ${admission.handshakeBurst}), load ${loadStart.join(' ')}`);
  const server = await BoltServer.start({ config: { plugins: { 'transport-ws': transportConfig, 'health-monitor': QUIET_HEALTH_MONITOR } } });
  const fleetRoot = scratchDir('bolt-bench-fleet-', true);
  let fleet: Fleet | undefined;
  try {
    await sleep(FLEET_SETTLE_MS);
    const rssBefore = server.rssBytes();
    const statsBefore = await server.request<EndpointStats>('transport.stats');
    const withGc = gc();
    const fleetBefore = process.memoryUsage();

    fleet = new Fleet({ url: server.agentUrl, count: n, concurrency: plan.concurrency, dataRoot: fleetRoot });
    const threadsBefore = server.threadCpuNs();
    const serverCpuBefore = server.cpuSeconds();
    const fleetCpuBefore = process.cpuUsage();
    const t0 = performance.now();
    const curve = new ConnectProgress(fleet, t0);
    await fleet.start();
    await fleet.waitConnected(n, 240_000).finally(() => curve.stop());
    const connectedMs = performance.now() - t0;
    const ids = new Set(Array.from({ length: n }, (_, i) => fleet!.client(i).identity.fingerprint));
    let listed = 0;
    for (const deadline = performance.now() + 30_000; ; await sleep(100)) {
      const sessions = await server.request<{ id: string }[]>('transport.sessions');
      listed = sessions.filter((s) => ids.has(s.id)).length;
      if (listed === n) break;
      if (performance.now() > deadline) throw new Error(`transport.sessions lists ${listed} of the ${n} connected hosts after 30 s`);
    }
    const acceptedMs = performance.now() - t0;
    const threadsConnected = server.threadCpuNs();
    const serverCpuConnect = server.cpuSeconds() - serverCpuBefore;
    const fleetCpuConnect = process.cpuUsage(fleetCpuBefore);
    const transportTid = busiestWorkerThread(server.pid, threadsBefore, threadsConnected);
    const transportCpuConnectNs = threadsConnected.get(transportTid)! - (threadsBefore.get(transportTid) ?? 0);
    const fleetStats = fleet.stats();
    const statsConnected = await server.request<EndpointStats>('transport.stats');
    progress(`  all ${n} connected in ${(connectedMs / 1000).toFixed(2)} s, listed by transport.sessions at ${(acceptedMs / 1000).toFixed(2)} s; ${fleetStats.attempts} attempts, ${fleetStats.busy} answered 503`);

    await sleep(FLEET_SETTLE_MS);
    const rssAfter = server.rssBytes();
    const statsAfter = await server.request<EndpointStats>('transport.stats');
    gc();
    const fleetAfter = process.memoryUsage();
    const perClientKiB = (after: number, before: number) => round((after - before) / n / 1024, 1);
    progress(`  server RSS ${(rssBefore / MiB).toFixed(1)} -> ${(rssAfter / MiB).toFixed(1)} MiB (${perClientKiB(rssAfter, rssBefore)} KiB per client)`);

    const cpu = plan.cpuAt.has(n) ? await heartbeatCpu(server, fleet, transportTid, plan) : undefined;

    // A run in which the transport restarted or hosts dropped out measured something else.
    const plugins = await server.request<PluginRow[]>('core.plugins');
    const transport = plugins.find((p) => p.name === 'transport-ws');
    if (transport?.state !== 'running' || transport.restarts !== 0) throw new Error(`transport-ws is ${transport?.state} after ${transport?.restarts} restarts: run discarded`);
    if (fleet.connected !== n) throw new Error(`${fleet.connected}/${n} hosts connected at the end: run discarded`);
    const endStats = fleet.stats();
    if (endStats.disconnects !== 0) throw new Error(`${endStats.disconnects} sessions ended during the run: run discarded`);
    const loadEnd = loadavg();

    const head = { bench: 'fleet-connect', ...common, clients: n, admission };
    const lines: Record<string, unknown>[] = [
      {
        ...head,
        figure: 'connect',
        allConnectedMs: Math.round(connectedMs),
        allAcceptedMs: Math.round(acceptedMs),
        acceptedPerSecond: Math.round((n / acceptedMs) * 1000),
        connectedAfterMs: curve.milestones(n, [0.25, 0.5, 0.75, 0.9, 0.99, 1]),
        fleetConcurrency: plan.concurrency,
        cpuMsPerHost: {
          serverProcess: round((serverCpuConnect * 1000) / n, 2),
          transportThread: round(transportCpuConnectNs / 1e6 / n, 2),
          fleetProcess: round((fleetCpuConnect.user + fleetCpuConnect.system) / 1000 / n, 2),
          how: 'CPU used from fleet.start() until every host was listed, over N: server process (/proc stat), its transport-ws thread (schedstat), this process',
        },
        attempts: fleetStats.attempts,
        busy503: fleetStats.busy,
        refusals: fleetStats.refusals,
        reconnectDelays: fleetStats.reconnectDelays,
        serverRefused: Object.fromEntries(Object.entries(statsConnected.refused).filter(([, v]) => v > 0)),
        serverAccepted: statsConnected.accepted - statsBefore.accepted,
        loadavgStart: loadStart,
        loadavgEnd: loadEnd,
      },
      {
        ...head,
        figure: 'memory',
        server: {
          rssBeforeMiB: round(rssBefore / MiB),
          rssAfterMiB: round(rssAfter / MiB),
          rssPerClientKiB: perClientKiB(rssAfter, rssBefore),
          transportHeapUsedBeforeMiB: round(statsBefore.memory.heapUsed / MiB),
          transportHeapUsedAfterMiB: round(statsAfter.memory.heapUsed / MiB),
          transportHeapPerClientKiB: perClientKiB(statsAfter.memory.heapUsed, statsBefore.memory.heapUsed),
          transportExternalPerClientKiB: perClientKiB(statsAfter.memory.external, statsBefore.memory.external),
          how: 'VmRSS of the server process (every thread) from /proc; heap and external of the transport-ws worker from transport.stats; no forced GC in the server',
        },
        fleetProcess: {
          rssPerClientKiB: perClientKiB(fleetAfter.rss, fleetBefore.rss),
          heapPerClientKiB: perClientKiB(fleetAfter.heapUsed, fleetBefore.heapUsed),
          externalPerClientKiB: perClientKiB(fleetAfter.external, fleetBefore.external),
          gc: withGc,
        },
        settleMs: FLEET_SETTLE_MS,
        loadavgStart: loadStart,
        loadavgEnd: loadEnd,
      },
    ];
    if (cpu !== undefined) {
      lines.push({
        ...head,
        figure: 'heartbeat-cpu',
        heartbeatIntervalMs: 1000,
        ...cpu,
        how: 'server process utime+stime from /proc/<pid>/stat; idle windows have every host connected with heartbeats paused (inject stop-heartbeat); by thread from /proc/<pid>/task/*/schedstat, the transport-ws worker being the thread busiest during the handshakes',
        healthMonitor: QUIET_HEALTH_MONITOR,
        loadavgStart: loadStart,
        loadavgEnd: loadEnd,
      });
    }
    return lines;
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
      'handshakes-per-sec': { type: 'string' },
      'cpu-at': { type: 'string', default: '1000' },
      'cpu-window-s': { type: 'string', default: '10' },
      'cpu-rounds': { type: 'string', default: '2' },
      concurrency: { type: 'string', default: '200' },
      'isolated-child': { type: 'boolean', default: false },
      attempt: { type: 'string' },
    },
  });
  const rate = values['handshakes-per-sec'];
  const plan: Plan = {
    sizes: values.n.split(',').map((s) => positiveInt(s, 'n')),
    raisedRate: rate === undefined ? undefined : positiveInt(rate, 'handshakes-per-sec'),
    cpuAt: new Set(values['cpu-at'] === '' ? [] : values['cpu-at'].split(',').map((s) => positiveInt(s, 'cpu-at'))),
    cpuWindowS: positiveInt(values['cpu-window-s'], 'cpu-window-s'),
    cpuRounds: positiveInt(values['cpu-rounds'], 'cpu-rounds'),
    concurrency: positiveInt(values.concurrency, 'concurrency'),
  };
  if (!isIsolatedChild) {
    progress(`node ${process.version}, ${os.availableParallelism()} cores, sizes ${plan.sizes.join(', ')}; each in its own process`);
    await runSizesIsolated({ script: SELF, sizes: plan.sizes, progress });
    return;
  }
  const common = {
    startedAt: new Date().toISOString(),
    node: process.version,
    cpus: os.availableParallelism(),
    code: codeVersion(),
    attempt: isolatedAttempt(),
    note: 'the fleet (N WireClients) runs in the benchmark process and competes with the server for the same cores',
  };
  for (const n of plan.sizes) {
    const began = epoch();
    for (const line of await measure(n, plan, common)) process.stdout.write(`${JSON.stringify(line)}\n`);
    progress(`N=${n} done in ${((epoch() - began) / 1000).toFixed(1)} s`);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`[fleet-connect] failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exitCode = 1;
});
