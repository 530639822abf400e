/**
 * sink-ingest: how many metric samples per second a real sink stores, with its aggregates across
 * hosts kept current, and what that costs the sink process in CPU and memory.
 *
 *   node --import tsx bench/sink-ingest.ts [--hosts 1000] [--metrics 20] [--levels 1,2,3,4,5,10]
 *        [--seconds 20] [--warmup-s 5] [--concurrency 200] [--watchdog-ms MS]
 *
 * A `bolt-core start` process (server and embedded sink, loopback, --auto-accept) runs
 * transport-ws, health-monitor, writer-sqlite, aggregator-results and exporter-prometheus with
 * their default settings (`--watchdog-ms` sets the supervisor's heartbeat watchdog, 2 s by
 * default: on a machine where other work leaves the sink a fraction of a core, a busy worker can
 * miss it and be ended, which is reported as the level's failure). In this process, --hosts simulated hosts (bench/fleet/fleet.ts) connect to
 * the server; each then opens a second connection to the sink its welcome names, as a client agent
 * does, and streams `metrics.batch` messages over the real protocol (sealed frames, the sink's
 * validation, the bus, writer-sqlite's group commit and aggregate buckets).
 *
 * Load: every host sends one batch per second (hosts evenly spread over the second), each with
 * `--metrics × level` samples (names and tags shaped like collector-system's; the `task` tag and the
 * batch's runId as collectors send them), so level 1 of the defaults is 1,000 hosts × 20 metrics at
 * 1 s = 20,000 samples/s, and level 10 is 200,000 samples/s. For each level: --warmup-s of load,
 * then a --seconds window measured, then the load stops and the time until every sent sample is
 * stored (drain) is measured. A level where the sink fails (a plugin ended, a request failed) or
 * does not catch up within 120 s is reported as such (`failed`, with the plugin table) and ends
 * the ladder: the sink's limit on this machine is between it and the level before.
 *
 * Figures per level: samples/s sent and stored (writer-sqlite's `sink.store.stats` over the
 * window; a writer that falls behind announces congestion and the sink's transport, when it
 * listens, stops reading meanwhile, so the rest waits in the connections and is stored during the
 * drain: `writerCongestions` counts the episodes), how current the aggregates are (about every 2 s: how long after a one-second bucket of
 * `cpu.busy` ended it held a sample from every host, polled with `sink.metrics agg=count`), the sink
 * process's CPU (all threads, from /proc) and its busiest threads, its peak RSS, the writer's peak
 * queue, and this process's own CPU (it simulates the fleet on the same 2 cores). At the end, the
 * sum of the `cpu.busy` bucket counts is checked against the samples sent.
 *
 * Prints one JSON object per level and a summary on stdout; progress on stderr; exits non-zero when
 * a run fails. The measurement runs in a watched child process (lib/isolate.ts).
 */
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { MetricSample } from '../plugin-sdk/src/schemas/wire.ts';
import { WireClient } from '../plugins/transport-ws/client/connection.ts';
import { Fleet } from './fleet/fleet.ts';
import { BoltServer, codeVersion, epoch, loadavg, removeScratchDir, scratchDir, sleep, threadCpuNs } from './lib/bolt-server.ts';
import { isIsolatedChild, isolatedAttempt, runIsolated } from './lib/isolate.ts';
import { median } from './lib/stats.ts';

const SELF = fileURLToPath(import.meta.url);
const progress = (msg: string) => process.stderr.write(`[sink-ingest] ${msg}\n`);
const PLUGINS = ['transport-ws', 'health-monitor', 'writer-sqlite', 'aggregator-results', 'exporter-prometheus'];
const RUN_ID = 'bench-sink-ingest';
const TASK = 'load';
/** The metric whose buckets tell whether the aggregates are current. */
const PROBE_METRIC = 'cpu.busy';
const MiB = 1024 * 1024;
const round = (v: number, digits = 1) => Number(v.toFixed(digits));

/** 20 metrics of one host at one instant, shaped like collector-system's output. */
const BASE_METRICS: ReadonlyArray<{ metric: string; tags?: Record<string, string> }> = [
  { metric: 'cpu.busy' },
  { metric: 'cpu.busy', tags: { core: '0' } },
  { metric: 'cpu.busy', tags: { core: '1' } },
  { metric: 'cpu.iowait' },
  { metric: 'mem.used' },
  { metric: 'mem.available' },
  { metric: 'mem.cached' },
  { metric: 'load.1' },
  { metric: 'load.5' },
  { metric: 'net.rx_bytes', tags: { iface: 'eth0' } },
  { metric: 'net.tx_bytes', tags: { iface: 'eth0' } },
  { metric: 'net.rx_packets', tags: { iface: 'eth0' } },
  { metric: 'net.tx_packets', tags: { iface: 'eth0' } },
  { metric: 'disk.read_bytes', tags: { dev: 'vda' } },
  { metric: 'disk.write_bytes', tags: { dev: 'vda' } },
  { metric: 'disk.util', tags: { dev: 'vda' } },
  { metric: 'fs.used_percent', tags: { mount: '/' } },
  { metric: 'fs.free_bytes', tags: { mount: '/' } },
  { metric: 'proc.cpu', tags: { process: 'nginx' } },
  { metric: 'proc.rss', tags: { process: 'nginx' } },
];

interface Plan {
  /** The supervisor's watchdog (bolt.yaml supervisor.watchdogTimeoutMs); undefined: Bolt's default. */
  watchdogMs: number | undefined;
  hosts: number;
  metrics: number;
  levels: number[];
  seconds: number;
  warmupS: number;
  concurrency: number;
}

interface StoreStats {
  samples: number;
  batches: number;
  duplicates: number;
  dropped: number;
  droppedSamples: number;
  pending: number;
  flushes: number;
  writeMs: number;
  maxWriteMs: number;
  /** Times the writer's queue became congested (absent in writers before it announced congestion). */
  congestions?: number;
}

/** The metric names and tags of one batch with `n` samples: the base 20, then copies with a suffix. */
function shapes(n: number): Array<{ metric: string; tags: Record<string, string> }> {
  return Array.from({ length: n }, (_, k) => {
    const base = BASE_METRICS[k % BASE_METRICS.length]!;
    const copy = Math.floor(k / BASE_METRICS.length);
    return { metric: copy === 0 ? base.metric : `${base.metric}_${copy}`, tags: { ...base.tags, task: TASK } };
  });
}

/**
 * Sends the load: batch number g goes from host g % N at start + floor(g / N) s + (g % N) / N s.
 * Counts what the sink connections took and what they refused (their socket buffer was full).
 */
class Sender {
  sentBatches = 0;
  sentSamples = 0;
  probeSamples = 0;
  refused = 0;
  #g = 0;
  #start = 0;
  #timer: NodeJS.Timeout | null = null;
  #shapes: Array<{ metric: string; tags: Record<string, string> }> = [];
  readonly #sinks: WireClient[];
  readonly #names: string[];

  constructor(sinks: WireClient[], names: string[]) {
    this.#sinks = sinks;
    this.#names = names;
  }

  start(samplesPerBatch: number): void {
    this.#shapes = shapes(samplesPerBatch);
    this.#g = 0;
    this.#start = epoch();
    this.#timer = setInterval(() => this.#tick(), 10);
  }

  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  #tick(): void {
    const n = this.#sinks.length;
    const now = epoch();
    for (;;) {
      const host = this.#g % n;
      const at = this.#start + Math.floor(this.#g / n) * 1000 + (host * 1000) / n;
      if (at > now) return;
      const samples: MetricSample[] = this.#shapes.map((s, k) => ({ t: at, metric: s.metric, value: ((this.#g * 7919 + k * 104_729) % 10_000) / 100, tags: s.tags }));
      const sent = this.#sinks[host]!.send({ v: 1, type: 'metrics.batch', id: randomUUID(), host: this.#names[host]!, runId: RUN_ID, samples });
      if (sent) {
        this.sentBatches++;
        this.sentSamples += samples.length;
        this.probeSamples++;
      } else this.refused++;
      this.#g++;
    }
  }
}

/** A row of `core.plugins`. */
interface PluginRow {
  name: string;
  state: string;
  restarts: number;
  lastError: { code: string; message: string } | null;
}

/** One bucket series of `sink.metrics agg=count`. */
interface CountSeries {
  task: string | null;
  tags: Record<string, string>;
  t: number[];
  values: number[];
}

/**
 * How long after a one-second bucket ended its aggregate held a sample from every host: waits for
 * the next second to end, then asks `sink.metrics agg=count` for that bucket every 50 ms (null:
 * not complete within 10 s). Each request also makes the writer store what it has queued.
 */
async function bucketDelayMs(server: BoltServer, hosts: number): Promise<number | null> {
  const end = Math.ceil(epoch() / 1000) * 1000;
  await sleep(end - epoch());
  const bucket = end - 1000;
  while (epoch() - end < 10_000) {
    const series = await server.request<CountSeries[]>('sink.metrics', { runId: RUN_ID, metric: PROBE_METRIC, task: TASK, agg: 'count', from: bucket, to: bucket });
    const total = series.find((s) => Object.keys(s.tags).length === 0);
    const i = total?.t.indexOf(bucket) ?? -1;
    if (i >= 0 && total!.values[i]! >= hosts) return Math.round(epoch() - end);
    await sleep(50);
  }
  return null;
}

function topThreads(before: Map<number, number>, after: Map<number, number>, seconds: number, pid: number): Array<{ tid: number; main: boolean; cores: number }> {
  return [...after]
    .map(([tid, ns]) => ({ tid, main: tid === pid, cores: round((ns - (before.get(tid) ?? 0)) / 1e9 / seconds, 3) }))
    .sort((a, b) => b.cores - a.cores)
    .slice(0, 4);
}

async function measure(plan: Plan): Promise<void> {
  const loadStart = loadavg();
  const server = await BoltServer.start({ plugins: PLUGINS, logLevel: 'warn', ...(plan.watchdogMs !== undefined && { config: { supervisor: { watchdogTimeoutMs: plan.watchdogMs } } }) });
  const fleetRoot = scratchDir('bolt-bench-sink-ingest-fleet-', true);
  let fleet: Fleet | undefined;
  const sinks: WireClient[] = [];
  try {
    progress(`server up (pid ${server.pid}); connecting ${plan.hosts} hosts to the server`);
    fleet = new Fleet({ url: server.agentUrl, count: plan.hosts, concurrency: plan.concurrency, dataRoot: fleetRoot });
    await fleet.start();
    await fleet.waitConnected(plan.hosts, 180_000);
    progress(`${plan.hosts} hosts connected to the server; connecting each to the sink of its welcome`);
    const names: string[] = [];
    let sinkUp = 0;
    for (let i = 0; i < plan.hosts; i++) {
      const agent = fleet.client(i);
      const target = agent.session?.welcome.sink;
      if (target === undefined) throw new Error(`host ${i}: the server's welcome names no sink`);
      const name = `sim-${i}`;
      names.push(name);
      const sink = new WireClient({
        url: target.url,
        identity: agent.identity,
        host: name,
        expectRole: 'sink',
        serverKey: target.publicKey,
        deferFrames: true,
        onConnected: () => sinkUp++,
        onDisconnected: () => sinkUp--,
      });
      sinks.push(sink);
      sink.start();
      // Stay under the sink's handshake admission (200/s, burst 200 by default).
      if (i % 100 === 99) await sleep(450);
    }
    const deadline = epoch() + 180_000;
    while (sinkUp < plan.hosts) {
      if (epoch() > deadline) throw new Error(`${sinkUp}/${plan.hosts} sink sessions after 180 s`);
      await sleep(200);
    }
    progress(`${plan.hosts} sink sessions up`);
    await sleep(2000);

    const sender = new Sender(sinks, names);
    const stats = () => server.request<StoreStats>('sink.store.stats');
    const common = {
      bench: 'sink-ingest',
      startedAt: new Date().toISOString(),
      node: process.version,
      cpus: os.availableParallelism(),
      code: codeVersion(['core', 'plugin-sdk/src', 'bench', ...PLUGINS.map((p) => `plugins/${p}`)]),
      attempt: isolatedAttempt(),
      hosts: plan.hosts,
      plugins: PLUGINS,
      watchdogTimeoutMs: plan.watchdogMs ?? 'default (2000)',
      note: 'server and sink in one bolt-core process (as `bolt-core start` runs them); the fleet runs in the benchmark process and competes with it for the same 2 cores',
    };
    let failedAt: number | null = null;
    for (const level of plan.levels) {
      try {
        const perBatch = plan.metrics * level;
        const target = plan.hosts * perBatch;
        progress(`level ${level}: ${plan.hosts} hosts × ${perBatch} samples/s = ${target} samples/s; warm-up ${plan.warmupS} s`);
        const loadLevel = loadavg();
        sender.start(perBatch);
        await sleep(plan.warmupS * 1000);

        const s0 = await stats();
        const sent0 = sender.sentSamples;
        const refused0 = sender.refused;
        const cpu0 = server.cpuSeconds();
        const threads0 = server.threadCpuNs();
        const self0 = process.cpuUsage();
        const t0 = epoch();
        const lags: Array<number | null> = [];
        let rssMax = 0;
        let pendingMax = 0;
        const probing = (async () => {
          while (epoch() < t0 + (plan.seconds - 1.5) * 1000) {
            lags.push(await bucketDelayMs(server, plan.hosts));
            await sleep(1000);
          }
        })();
        // Awaited below; a failure before that must not surface as an unhandled rejection.
        probing.catch(() => undefined);
        for (let second = 1; second <= plan.seconds; second++) {
          await sleep(t0 + second * 1000 - epoch());
          rssMax = Math.max(rssMax, server.rssBytes());
          pendingMax = Math.max(pendingMax, (await stats()).pending);
        }
        await probing;
        const seconds = (epoch() - t0) / 1000;
        const cpu1 = server.cpuSeconds();
        const threads1 = server.threadCpuNs();
        const self1 = process.cpuUsage(self0);
        const s1 = await stats();
        const sentInWindow = sender.sentSamples - sent0;
        sender.stop();

        // Drain: the time until every sample sent so far is stored (or counted as dropped by the store).
        const stopAt = epoch();
        let drained: number | null = null;
        let last = s1;
        while (epoch() - stopAt < 120_000) {
          last = await stats();
          if (last.samples + last.droppedSamples >= sender.sentSamples) {
            drained = Math.round(epoch() - stopAt);
            break;
          }
          await sleep(100);
        }
        const known = lags.filter((l): l is number => l !== null);
        const plugins = await server.request<PluginRow[]>('core.plugins');
        const line = {
          ...common,
          figure: 'level',
          level,
          samplesPerBatch: perBatch,
          targetSamplesPerSec: target,
          windowS: round(seconds, 2),
          sentSamplesPerSec: Math.round(sentInWindow / seconds),
          storedSamplesPerSec: Math.round((s1.samples - s0.samples) / seconds),
          storedBatchesPerSec: Math.round((s1.batches - s0.batches) / seconds),
          transactionsPerSec: round((s1.flushes - s0.flushes) / seconds),
          refusedSends: sender.refused - refused0,
          droppedByStoreSamples: s1.droppedSamples - s0.droppedSamples,
          writerCongestions: (s1.congestions ?? 0) - (s0.congestions ?? 0),
          writerQueuePeakMessages: pendingMax,
          drainMs: drained,
          bucketCompleteAfterMs: { median: known.length > 0 ? median(known) : null, max: known.length > 0 ? Math.max(...known) : null, probes: lags.length, notWithin10s: lags.length - known.length },
          sink: {
            cpuCores: round((cpu1 - cpu0) / seconds, 2),
            busiestThreads: topThreads(threads0, threads1, seconds, server.pid),
            rssPeakMiB: round(rssMax / MiB),
            cpuMicrosPerStoredSample: round(((cpu1 - cpu0) * 1e6) / Math.max(1, s1.samples - s0.samples), 2),
            writerTransactionsBusyCores: round((s1.writeMs - s0.writeMs) / 1000 / seconds, 3),
            longestTransactionMsSinceStart: round(s1.maxWriteMs),
          },
          benchProcessCpuCores: round((self1.user + self1.system) / 1e6 / seconds, 2),
          storeTotals: { samples: last.samples, duplicates: last.duplicates, droppedSamples: last.droppedSamples },
          pluginRestarts: Object.fromEntries(plugins.filter((p) => p.restarts > 0 || p.state !== 'running').map((p) => [p.name, { state: p.state, restarts: p.restarts, lastError: p.lastError?.message ?? null }])),
          loadavgLevelStart: loadLevel,
          loadavgLevelEnd: loadavg(),
        };
        process.stdout.write(`${JSON.stringify(line)}\n`);
        progress(`level ${level}: stored ${line.storedSamplesPerSec}/s of ${line.sentSamplesPerSec}/s sent; sink ${line.sink.cpuCores} cores, RSS ${line.sink.rssPeakMiB} MiB, writer transactions ${line.sink.writerTransactionsBusyCores} cores (longest ${line.sink.longestTransactionMsSinceStart} ms); buckets complete ${line.bucketCompleteAfterMs.median} ms (median) after they end; drain ${drained} ms`);
        if (drained === null || line.droppedByStoreSamples > 0) {
          progress(drained === null ? 'the sink did not catch up within 120 s; higher levels are skipped' : 'the sink store dropped samples (its queue overflowed); higher levels are skipped');
          failedAt = level;
          break;
        }
      } catch (err) {
        // The sink failed under this load (a plugin ended, a request failed): that is the finding.
        sender.stop();
        failedAt = level;
        const plugins = await server.request<PluginRow[]>('core.plugins').catch(() => []);
        const line = { ...common, figure: 'level', level, samplesPerBatch: plan.metrics * level, targetSamplesPerSec: plan.hosts * plan.metrics * level, failed: (err as Error).message, plugins: plugins.map((p) => ({ name: p.name, state: p.state, restarts: p.restarts, lastError: p.lastError?.message ?? null })), loadavg: loadavg() };
        process.stdout.write(`${JSON.stringify(line)}\n`);
        progress(`level ${level} failed: ${line.failed}; higher levels are skipped`);
        break;
      }
    }

    // Every probe sample sent is in exactly one bucket count (resends are not counted twice).
    // After a failure the writer may have lost what it had queued: then only the stored ones count.
    const counts = await server.request<CountSeries[]>('sink.metrics', { runId: RUN_ID, metric: PROBE_METRIC, task: TASK, agg: 'count' }).catch(() => null);
    const counted = counts?.filter((s) => Object.keys(s.tags).length === 0).reduce((n, s) => n + s.values.reduce((a, b) => a + b, 0), 0) ?? null;
    const summary = {
      ...common,
      figure: 'summary',
      levels: plan.levels,
      metricsPerHostAtLevel1: plan.metrics,
      probeSamplesSent: sender.probeSamples,
      probeSamplesInBuckets: counted,
      // null: the sink did not answer (after a failed level).
      aggregatesMatchSent: counted === null ? null : counted === sender.probeSamples,
      failedAtLevel: failedAt,
      loadavgStart: loadStart,
      loadavgEnd: loadavg(),
      how: 'stored samples/s: writer-sqlite sink.store.stats over the window; bucket complete after: about every 2 s, the time from the end of a 1 s cpu.busy bucket until sink.metrics agg=count (through the admin endpoint, polled every 50 ms; each request makes the writer store its queue) shows a sample from every host in it; CPU: utime+stime of the bolt-core process from /proc, busiest threads from /proc/<pid>/task/*/schedstat',
    };
    process.stdout.write(`${JSON.stringify(summary)}\n`);
  } finally {
    await Promise.all(sinks.map((s) => s.close()));
    await fleet?.close();
    await server.stop();
    removeScratchDir(fleetRoot);
  }
}

function positiveInt(text: string, flag: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${flag} must be a positive integer (got '${text}')`);
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      hosts: { type: 'string', default: '1000' },
      metrics: { type: 'string', default: '20' },
      levels: { type: 'string', default: '1,2,3,4,5,10' },
      seconds: { type: 'string', default: '20' },
      'warmup-s': { type: 'string', default: '5' },
      concurrency: { type: 'string', default: '200' },
      'watchdog-ms': { type: 'string' },
      'isolated-child': { type: 'boolean', default: false },
      attempt: { type: 'string' },
    },
  });
  const plan: Plan = {
    watchdogMs: values['watchdog-ms'] === undefined ? undefined : positiveInt(values['watchdog-ms'], 'watchdog-ms'),
    hosts: positiveInt(values.hosts, 'hosts'),
    metrics: positiveInt(values.metrics, 'metrics'),
    levels: values.levels.split(',').map((s) => positiveInt(s, 'levels')),
    seconds: positiveInt(values.seconds, 'seconds'),
    warmupS: positiveInt(values['warmup-s'], 'warmup-s'),
    concurrency: positiveInt(values.concurrency, 'concurrency'),
  };
  if (!isIsolatedChild) {
    progress(`node ${process.version}, ${os.availableParallelism()} cores; ${plan.hosts} hosts, levels ${plan.levels.join(', ')}; in a watched child process`);
    const { lines, discarded } = await runIsolated({
      label: 'sink-ingest',
      script: SELF,
      args: process.argv.slice(2),
      stallMs: 60_000,
      timeoutMs: 30 * 60_000,
      attempts: 2,
      progress,
    });
    for (const line of lines) process.stdout.write(`${JSON.stringify({ ...(JSON.parse(line) as object), discardedAttempts: discarded })}\n`);
    return;
  }
  await measure(plan);
}

main().catch((err: unknown) => {
  process.stderr.write(`[sink-ingest] failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
