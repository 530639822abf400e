/**
 * plugin-lifecycle: how fast the plugin runtime loads, restarts and carries messages, measured on a
 * real core watching a temporary plugins directory.
 *
 *   node --import tsx bench/plugin-lifecycle.ts [--quick] [--settle-ms 100]
 *
 * 1. hot load: fs.cp of a plugin folder into the watched directory -> state `running` (worker);
 * 2. crash -> `running` again, minus the configured backoff (worker and child-process isolation);
 * 3. bus round trip, one request in flight: main thread <-> worker and worker <-> worker;
 * 4. bus messages per second between two workers: pub/sub and pipelined request/response.
 *
 * Prints one JSON object on stdout at the end; progress goes to stderr. Exits non-zero when a run
 * fails; a failed run is never turned into a figure.
 */
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { bundlePlugin } from '../core/build/bundle.ts';
import type { PluginState } from '../core/supervisor/index.ts';
import { PLUGINS, startTestCore, type TestCore } from '../test/helpers/core.ts';
import { median, p95, p99, summarize } from './lib/stats.ts';
import type { FloodRequest, PipelineRequest, RttRequest } from './fixtures/bus-driver/index.ts';

const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const PROBE = 'bench-probe';
const CRASHER_WORKER = 'bench-crasher';
const CRASHER_PROCESS = 'bench-crasher-process';
/** The backoff is set to the smallest value bolt.yaml accepts, so a restart measures the runtime itself. */
const BACKOFF_MS = 1;
/** The small object every bus figure sends (the shape MEASURED.md section 3 used for raw postMessage). */
const PAYLOAD = { id: 1, ts: 1_790_000_000_000, kind: 'bench', tags: ['a', 'b'], v: 1.5 };

const AIMS = {
  hotLoadMs: 250,
  restartWorkerMs: 100,
  restartProcessMs: 250,
  rttMedianUs: 100,
};

interface Plan {
  hotLoads: number;
  crashes: number;
  rttWarmup: number;
  rttCount: number;
  floodMs: number;
}

const FULL: Plan = { hotLoads: 20, crashes: 20, rttWarmup: 1000, rttCount: 10_000, floodMs: 2000 };
const QUICK: Plan = { hotLoads: 5, crashes: 5, rttWarmup: 200, rttCount: 2000, floodMs: 500 };

/** Epoch milliseconds with sub-millisecond resolution; the plugin fixtures use the same clock. */
const epoch = () => performance.timeOrigin + performance.now();

const progress = (msg: string) => process.stderr.write(`[plugin-lifecycle] ${msg}\n`);

async function loadavg(): Promise<number[]> {
  const text = await readFile('/proc/loadavg', 'utf8');
  return text.split(' ').slice(0, 3).map(Number);
}

const round = (v: number, digits = 2) => Number(v.toFixed(digits));

function figures(values: number[], digits = 2): { median: number; p95: number; min: number; max: number } {
  return { median: round(median(values), digits), p95: round(p95(values), digits), min: round(Math.min(...values), digits), max: round(Math.max(...values), digits) };
}

/** Copies a fixture to `dest`, merging `manifest` into its plugin.json. */
async function stageFixture(fixture: string, dest: string, manifest: Record<string, unknown> = {}): Promise<string> {
  await cp(path.join(FIXTURES, fixture), dest, { recursive: true });
  const file = path.join(dest, 'plugin.json');
  const current = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
  await writeFile(file, JSON.stringify({ ...current, ...manifest }, null, 2));
  return dest;
}

/**
 * Records the instant each state of one plugin is entered, from the supervisor's synchronous
 * 'change' event, and resolves `until(state)` once that state is reached after the recording began.
 */
class StateClock {
  private readonly t: TestCore;
  private readonly name: string;
  private readonly seen: { state: PluginState | 'gone'; at: number }[] = [];
  private readonly waiters: { match: (s: PluginState | 'gone') => boolean; resolve: (at: number) => void }[] = [];
  private readonly listener = (changed: string) => {
    if (changed !== this.name) return;
    const state = this.t.status(this.name)?.state ?? 'gone';
    const at = epoch();
    this.seen.push({ state, at });
    for (const w of [...this.waiters]) {
      if (w.match(state)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(at);
      }
    }
  };

  constructor(t: TestCore, name: string) {
    this.t = t;
    this.name = name;
    t.core.supervisor.on('change', this.listener);
  }

  /** The first instant `state` was entered since the clock started (or was reset). */
  first(state: PluginState | 'gone'): number | undefined {
    return this.seen.find((s) => s.state === state)?.at;
  }

  reset(): void {
    this.seen.length = 0;
  }

  /** Resolves with the instant `state` is next entered; fails on `failed`/`invalid` or after `timeoutMs`. */
  until(state: PluginState | 'gone', timeoutMs = 20_000): Promise<number> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`${this.name} did not reach ${state} within ${timeoutMs} ms; now: ${JSON.stringify(this.t.status(this.name))}`));
      }, timeoutMs);
      const waiter = {
        match: (s: PluginState | 'gone') => s === state || s === 'failed' || s === 'invalid',
        resolve: (at: number) => {
          cleanup();
          const now = this.t.status(this.name);
          if (state !== 'gone' && now && now.state !== state) reject(new Error(`${this.name} became ${now.state}: ${JSON.stringify(now.lastError)}`));
          else resolve(at);
        },
      };
      const cleanup = () => {
        clearTimeout(timer);
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
      };
      this.waiters.push(waiter);
    });
  }

  close(): void {
    this.t.core.supervisor.off('change', this.listener);
  }
}

/** The phases of one hot load, in milliseconds. */
interface HotLoadRow {
  totalMs: number;
  copyMs: number;
  watchAndSettleMs: number;
  manifestAndBundleMs: number;
  workerEnvironmentMs: number;
  workerBootstrapMs: number;
  runtimeAndImportMs: number;
  toStartCallMs: number;
  startToRunningMs: number;
}

/** The phases of one crash and restart, in milliseconds. */
interface RestartRow {
  restartMs: number;
  exitNoticedMs: number;
  backoffAndQueueMs: number;
  hostStartMs: number;
}

/** The median of each field over the rows. */
function medians<Row extends object>(rows: Row[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const key of Object.keys(rows[0]!) as (keyof Row & string)[]) out[key] = round(median(rows.map((r) => r[key] as number)));
  return out;
}

interface ProbeTimes {
  environmentAt: number;
  bootstrappedAt: number;
  evaluatedAt: number;
  startCalledAt: number;
}

/**
 * 1. Hot load of a worker plugin: one unmeasured warm-up, then `trials` measured loads, each unloaded
 * again. The phases come from marks the core already gives: the watcher's call of supervisor.sync
 * (end of the debounce), the process 'worker' event (a Worker was constructed, i.e. manifest and
 * bundle are done), the probe's own instants inside the new thread, and the `running` state.
 */
async function hotLoad(t: TestCore, staging: string, trials: number, settleMs: number) {
  const source = await stageFixture('lifecycle-probe', path.join(staging, 'probe'));
  const syncAt = new Map<string, number>();
  const supervisor = t.core.supervisor;
  const sync = supervisor.sync.bind(supervisor);
  // Wrapping sync on this instance marks the end of the debounce without touching the core.
  supervisor.sync = (folder: string) => {
    syncAt.set(folder, epoch());
    return sync(folder);
  };
  let workerCreatedAt: number | undefined;
  const onWorker = () => {
    workerCreatedAt = epoch();
  };
  process.on('worker', onWorker);
  const clock = new StateClock(t, PROBE);
  const rows: HotLoadRow[] = [];
  try {
    for (let i = 0; i <= trials; i++) {
      const dest = path.join(t.pluginsDir, `probe-${i}`);
      workerCreatedAt = undefined;
      const running = clock.until('running');
      const t0 = epoch();
      await cp(source, dest, { recursive: true });
      const copied = epoch();
      const runningAt = await running;
      const settledAt = syncAt.get(dest);
      if (workerCreatedAt === undefined || settledAt === undefined) throw new Error(`hot load ${i}: no worker creation or sync call was seen`);
      const probe = await t.core.bus.request<ProbeTimes>('bench.probe.times');
      const row: HotLoadRow = {
        totalMs: runningAt - t0,
        copyMs: copied - t0,
        watchAndSettleMs: settledAt - copied,
        manifestAndBundleMs: workerCreatedAt - settledAt,
        workerEnvironmentMs: probe.environmentAt - workerCreatedAt,
        workerBootstrapMs: probe.bootstrappedAt - probe.environmentAt,
        runtimeAndImportMs: probe.evaluatedAt - probe.bootstrappedAt,
        toStartCallMs: probe.startCalledAt - probe.evaluatedAt,
        startToRunningMs: runningAt - probe.startCalledAt,
      };
      if (i === 0) progress(`hot load warm-up: ${row.totalMs.toFixed(1)} ms`);
      else rows.push(row);
      const gone = clock.until('gone');
      await rm(dest, { recursive: true, force: true });
      await gone;
    }
  } finally {
    clock.close();
    process.off('worker', onWorker);
    supervisor.sync = sync;
  }
  const totals = rows.map((r) => r.totalMs);
  progress(`hot load: median ${median(totals).toFixed(1)} ms, p95 ${p95(totals).toFixed(1)} ms`);
  const breakdownMedianMs = medians(rows);

  // The bundle step alone, outside the core: the same function on the same entry, into a scratch cache.
  const cache = path.join(staging, 'bundle-cache');
  const bundleMs: number[] = [];
  for (let i = 0; i <= trials; i++) {
    const b0 = epoch();
    await bundlePlugin(path.join(source, 'index.ts'), cache, `probe-${i}`);
    if (i > 0) bundleMs.push(epoch() - b0);
  }
  return {
    isolation: 'worker',
    settleMs,
    trials,
    ms: figures(totals),
    msWithoutSettle: figures(totals.map((v) => v - settleMs)),
    breakdownMedianMs,
    bundleOnlyMs: figures(bundleMs),
    samplesMs: totals.map((v) => round(v, 1)),
  };
}

/** 2. Crash -> running again, for one crasher plugin; the backoff is subtracted. */
async function crashRestart(t: TestCore, name: string, trials: number) {
  const clock = new StateClock(t, name);
  const rows: RestartRow[] = [];
  try {
    for (let i = 0; i <= trials; i++) {
      clock.reset();
      const crashed = clock.until('crashed');
      const running = clock.until('running');
      const crashAt = await t.core.bus.request<number>(`${name}.crash`);
      const crashedAt = await crashed;
      const runningAt = await running;
      const loadingAt = clock.first('loading');
      if (loadingAt === undefined) throw new Error(`${name}: no loading state between crashed and running`);
      const row: RestartRow = {
        restartMs: runningAt - crashAt - BACKOFF_MS,
        exitNoticedMs: crashedAt - crashAt,
        backoffAndQueueMs: loadingAt - crashedAt,
        hostStartMs: runningAt - loadingAt,
      };
      if (i === 0) progress(`${name} warm-up restart: ${row.restartMs.toFixed(1)} ms`);
      else rows.push(row);
    }
  } finally {
    clock.close();
  }
  const restart = rows.map((r) => r.restartMs);
  const status = t.status(name);
  if (status?.state !== 'running') throw new Error(`${name} ended the run ${status?.state ?? 'unloaded'}`);
  progress(`${name}: restart median ${median(restart).toFixed(1)} ms, p95 ${p95(restart).toFixed(1)} ms (restarts so far ${status.restarts})`);
  const breakdownMedianMs = medians(rows);
  return {
    isolation: status.isolation,
    trials,
    backoffMs: BACKOFF_MS,
    msMinusBackoff: figures(restart),
    breakdownMedianMs,
    samplesMs: restart.map((v) => round(v, 1)),
  };
}

function rttFigures(samplesUs: number[]) {
  const s = summarize(samplesUs);
  return { count: s.count, medianUs: round(s.median, 1), p99Us: round(p99(samplesUs), 1), minUs: round(s.min, 1), maxUs: round(s.max, 1) };
}

/** 3a. core.bus.request from the main thread to example-echo in its worker, one in flight. */
async function rttMainToWorker(t: TestCore, plan: Plan) {
  const samplesUs: number[] = [];
  for (let i = 0; i < plan.rttWarmup + plan.rttCount; i++) {
    const t0 = process.hrtime.bigint();
    await t.core.bus.request('example.echo', PAYLOAD);
    if (i >= plan.rttWarmup) samplesUs.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  return rttFigures(samplesUs);
}

/** 3b. bench-bus-driver's own loop of ctx.bus.request to example-echo; the first call opens the direct channel. */
async function rttWorkerToWorker(t: TestCore, plan: Plan) {
  const request: RttRequest = { service: 'example.echo', warmup: plan.rttWarmup, count: plan.rttCount, payload: PAYLOAD };
  const r = await t.core.bus.request<{ firstCallUs: number; samplesUs: number[] }>('bench.driver.rtt', request, { timeoutMs: 120_000 });
  return { ...rttFigures(r.samplesUs), firstCallUs: round(r.firstCallUs, 1) };
}

/** 4. Messages per second from bench-bus-driver to another worker: pub/sub with a flow-control window, and pipelined requests. */
async function throughput(t: TestCore, plan: Plan) {
  const flood: FloodRequest = { window: 4096, ackEvery: 256, durationMs: plan.floodMs, payload: PAYLOAD };
  const pub = await t.core.bus.request<{ sent: number; elapsedMs: number }>('bench.driver.flood', flood, { timeoutMs: plan.floodMs + 60_000 });
  const pipe: PipelineRequest = { service: 'example.echo', window: 256, durationMs: plan.floodMs, payload: PAYLOAD };
  const req = await t.core.bus.request<{ completed: number; elapsedMs: number }>('bench.driver.pipeline', pipe, { timeoutMs: plan.floodMs + 60_000 });
  return {
    pubSub: { messages: pub.sent, seconds: round(pub.elapsedMs / 1000, 3), perSecond: Math.round(pub.sent / (pub.elapsedMs / 1000)), window: flood.window, ackEvery: flood.ackEvery, path: 'worker -> core broker -> worker' },
    requestResponse: { requests: req.completed, seconds: round(req.elapsedMs / 1000, 3), perSecond: Math.round(req.completed / (req.elapsedMs / 1000)), inFlight: pipe.window, path: 'direct worker <-> worker MessageChannel' },
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false }, 'settle-ms': { type: 'string', default: '100' } } });
  const plan = values.quick ? QUICK : FULL;
  const settleMs = Number(values['settle-ms']);
  if (!Number.isFinite(settleMs) || settleMs < 0) throw new Error(`--settle-ms must be a number >= 0, got ${values['settle-ms']}`);
  const startedAt = new Date().toISOString();
  const loadavgStart = await loadavg();
  progress(`node ${process.version}, ${os.availableParallelism()} cores, load ${loadavgStart.join(' ')}${values.quick ? ', quick' : ''}`);

  const staging = await mkdtemp(path.join(os.tmpdir(), 'bolt-bench-lifecycle-'));
  let t: TestCore | undefined;
  try {
    const preload = [
      path.join(PLUGINS, 'example-echo'),
      await stageFixture('crasher', path.join(staging, 'crasher')),
      await stageFixture('crasher', path.join(staging, 'crasher-process'), { name: CRASHER_PROCESS, isolation: 'process' }),
      await stageFixture('bus-driver', path.join(staging, 'bus-driver')),
      await stageFixture('bus-sink', path.join(staging, 'bus-sink')),
    ];
    const supervisor = { backoffInitialMs: BACKOFF_MS, backoffMaxMs: BACKOFF_MS, maxRestarts: 100_000 };
    t = await startTestCore({ plugins: preload, settleMs, config: { supervisor } });
    const notRunning = t.core.plugins().filter((p) => p.state !== 'running');
    if (notRunning.length > 0) throw new Error(`plugins not running after start: ${JSON.stringify(notRunning)}`);

    progress(`hot load x${plan.hotLoads} (settle ${settleMs} ms)`);
    const hot = await hotLoad(t, staging, plan.hotLoads, settleMs);
    progress(`crash restart x${plan.crashes}, worker and process`);
    const restartWorker = await crashRestart(t, CRASHER_WORKER, plan.crashes);
    const restartProcess = await crashRestart(t, CRASHER_PROCESS, plan.crashes);
    progress(`round trips ${plan.rttCount} after ${plan.rttWarmup} warm-up`);
    const mainToWorker = await rttMainToWorker(t, plan);
    const workerToWorker = await rttWorkerToWorker(t, plan);
    progress(`rtt median: main<->worker ${mainToWorker.medianUs} us, worker<->worker ${workerToWorker.medianUs} us`);
    progress(`throughput, ${plan.floodMs} ms each`);
    const rate = await throughput(t, plan);
    progress(`pub/sub ${rate.pubSub.perSecond}/s, request/response ${rate.requestResponse.perSecond}/s`);

    const result = {
      bench: 'plugin-lifecycle',
      startedAt,
      quick: values.quick,
      node: process.version,
      cpus: os.availableParallelism(),
      loadavgStart,
      loadavgEnd: await loadavg(),
      supervisor: { ...supervisor, settleMs },
      aims: AIMS,
      hotLoad: hot,
      restart: { worker: restartWorker, process: restartProcess },
      roundTrip: { payload: PAYLOAD, mainToWorker, workerToWorker },
      throughput: rate,
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    await t?.close();
    await rm(staging, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`[plugin-lifecycle] failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exitCode = 1;
});
