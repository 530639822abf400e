/**
 * sink-store: how fast SinkStore (plugins/writer-sqlite/store.ts) stores metric samples and
 * commits final task statuses, on a real file in a temp dir.
 *
 *   node --import tsx bench/sink-store.ts [--seconds 25] [--runs 3] [--commits 200] [--scenarios a,b]
 *
 * The load is 1,000 hosts each sending 20 metrics once per second (20,000 samples per simulated
 * second, tags like a system collector's: cores, interfaces, disks); every scenario stores the same
 * samples (--seconds of that load), ingested as:
 * 1. batches of 20 (one host, one second), one transaction per batch (`ingestSamples`);
 * 2. batches of 500 (one host, 25 seconds), one transaction per batch;
 * 3. batches of 20, 1,000 of them per transaction (`ingestBatches`, a sink's group commit);
 * 4. batches of 500, 40 of them per transaction;
 * 5. `collector20-group1000`: as 3, shaped as collectors send them (the run on the batch, the task
 *    as a `task` tag), so 20,000 samples per transaction: the largest group the writer plugin makes.
 * Scenarios 1-4 name run and task on every sample. --scenarios runs only the named ones (a long
 * --seconds shows how the cost per sample grows with the file).
 * Then `commitTaskStatus` (synchronous=FULL, one fsync each) one after another.
 *
 * Per scenario: samples per second of wall time, CPU microseconds per sample and bytes written
 * per sample (WAL and checkpoints, from /proc/self/io). Prints one JSON object on stdout; progress
 * goes to stderr. Figures are medians over --runs, each run on a fresh file. Exits non-zero when a
 * run fails.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';
import { SinkStore } from '../plugins/writer-sqlite/store.ts';
import type { SampleBatch, SampleInput } from '../plugins/writer-sqlite/store.ts';
import { median } from './lib/stats.ts';

const HOSTS = 1000;
const RUN_ID = 'bench-run';
const TASK_ID = 'hammer';
/** The aim of the later sink-ingest benchmark, for comparison. */
const AIM_SAMPLES_PER_SECOND = 200_000;

/** 20 metrics of one host at one instant, shaped like collector-system's output. */
const METRICS: ReadonlyArray<{ metric: string; tags?: Record<string, string> }> = [
  { metric: 'cpu.busy' },
  { metric: 'cpu.busy', tags: { core: '0' } },
  { metric: 'cpu.busy', tags: { core: '1' } },
  { metric: 'cpu.iowait' },
  { metric: 'memory.used' },
  { metric: 'memory.available' },
  { metric: 'memory.cached' },
  { metric: 'load.1m' },
  { metric: 'load.5m' },
  { metric: 'network.rx_bytes', tags: { iface: 'eth0' } },
  { metric: 'network.tx_bytes', tags: { iface: 'eth0' } },
  { metric: 'network.rx_packets', tags: { iface: 'eth0' } },
  { metric: 'network.tx_packets', tags: { iface: 'eth0' } },
  { metric: 'disk.read_bytes', tags: { dev: 'vda' } },
  { metric: 'disk.write_bytes', tags: { dev: 'vda' } },
  { metric: 'disk.busy', tags: { dev: 'vda' } },
  { metric: 'filesystem.used', tags: { mount: '/' } },
  { metric: 'filesystem.free', tags: { mount: '/' } },
  { metric: 'http.requests' },
  { metric: 'http.latency_p99' },
];

const T0 = 1_790_000_000_000;

function hostSamples(host: number, fromSecond: number, seconds: number, collector: boolean): SampleInput[] {
  const samples: SampleInput[] = [];
  for (let s = fromSecond; s < fromSecond + seconds; s++) {
    for (let i = 0; i < METRICS.length; i++) {
      const m = METRICS[i]!;
      const t = T0 + s * 1000 + (host % 1000) / 10;
      const value = (host * 31 + s * 7 + i) % 1000;
      // A collector's sample: run from the batch, task as a tag (each sample its own tags object, as decoded).
      if (collector) samples.push({ t, metric: m.metric, value, tags: { ...m.tags, task: TASK_ID } });
      else samples.push({ t, metric: m.metric, value, runId: RUN_ID, taskId: TASK_ID, ...(m.tags !== undefined && { tags: m.tags }) });
    }
  }
  return samples;
}

/** The batches of one scenario, built before the clock starts so only the store is timed. */
function buildBatches(simulatedSeconds: number, secondsPerBatch: number, collector: boolean): SampleBatch[] {
  const batches: SampleBatch[] = [];
  for (let second = 0; second < simulatedSeconds; second += secondsPerBatch) {
    for (let host = 0; host < HOSTS; host++) {
      batches.push({ batchId: `h${host}-s${second}`, host: `host-${host}`, ...(collector && { runId: RUN_ID }), samples: hostSamples(host, second, secondsPerBatch, collector) });
    }
  }
  return batches;
}

interface Scenario {
  name: string;
  samplesPerBatch: number;
  batchesPerTransaction: number;
  secondsPerBatch: number;
  /** Shaped as collectors send them (run on the batch, task tag) rather than run and task on each sample. */
  collector: boolean;
}

/** Seconds of one host's samples in a batch of 500: the simulated duration is a multiple of it. */
const SECONDS_PER_BATCH500 = 25;

const SCENARIOS: Scenario[] = [
  { name: 'batch20', samplesPerBatch: 20, batchesPerTransaction: 1, secondsPerBatch: 1, collector: false },
  { name: 'batch500', samplesPerBatch: 500, batchesPerTransaction: 1, secondsPerBatch: SECONDS_PER_BATCH500, collector: false },
  { name: 'batch20-group1000', samplesPerBatch: 20, batchesPerTransaction: 1000, secondsPerBatch: 1, collector: false },
  { name: 'batch500-group40', samplesPerBatch: 500, batchesPerTransaction: 40, secondsPerBatch: SECONDS_PER_BATCH500, collector: false },
  { name: 'collector20-group1000', samplesPerBatch: 20, batchesPerTransaction: 1000, secondsPerBatch: 1, collector: true },
];

/** Bytes this process has written so far (write() and friends, whatever the page cache did with them). */
function bytesWritten(): number {
  const line = readFileSync('/proc/self/io', 'utf8').split('\n').find((l) => l.startsWith('wchar:'));
  return Number(line?.split(':')[1] ?? 0);
}

function withStore<T>(fn: (store: SinkStore, file: string) => T): T {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bolt-bench-sink-'));
  const file = path.join(dir, 'sink.sqlite');
  const store = new SinkStore(file);
  try {
    return fn(store, file);
  } finally {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

interface IngestRun {
  samplesPerSecond: number;
  samples: number;
  wallMs: number;
  cpuMicrosPerSample: number;
  bytesWrittenPerSample: number;
}

function runIngest(scenario: Scenario, simulatedSeconds: number): IngestRun {
  const batches = buildBatches(simulatedSeconds, scenario.secondsPerBatch, scenario.collector);
  return withStore((store) => {
    store.upsertRun({ id: RUN_ID, jobName: 'bench', state: 'running', createdAt: T0 });
    let stored = 0;
    const written = bytesWritten();
    const cpu = process.cpuUsage();
    const started = performance.now();
    if (scenario.batchesPerTransaction === 1) {
      for (const b of batches) stored += store.ingestSamples(b.batchId, b.host, b.samples).stored;
    } else {
      for (let i = 0; i < batches.length; i += scenario.batchesPerTransaction) {
        for (const r of store.ingestBatches(batches.slice(i, i + scenario.batchesPerTransaction))) stored += r.stored;
      }
    }
    const wallMs = performance.now() - started;
    const { user, system } = process.cpuUsage(cpu);
    const expected = batches.reduce((n, b) => n + b.samples.length, 0);
    if (stored !== expected) throw new Error(`${scenario.name}: stored ${stored} samples, expected ${expected}`);
    return {
      samplesPerSecond: Math.round(stored / (wallMs / 1000)),
      samples: stored,
      wallMs: Math.round(wallMs),
      cpuMicrosPerSample: Number(((user + system) / stored).toFixed(2)),
      bytesWrittenPerSample: Math.round((bytesWritten() - written) / stored),
    };
  });
}

function runCommits(count: number): { commitsPerSecond: number; wallMs: number } {
  return withStore((store) => {
    const started = performance.now();
    for (let i = 0; i < count; i++) {
      store.commitTaskStatus({ runId: RUN_ID, taskId: `task-${i}`, state: 'succeeded', hosts: { total: 1000, ok: 998, failed: 1, lost: 1 } });
    }
    const wallMs = performance.now() - started;
    return { commitsPerSecond: Math.round(count / (wallMs / 1000)), wallMs: Math.round(wallMs) };
  });
}

function loadavg(): number[] {
  return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number);
}

function main(): void {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: String(SECONDS_PER_BATCH500) },
      runs: { type: 'string', default: '3' },
      commits: { type: 'string', default: '200' },
      scenarios: { type: 'string', default: SCENARIOS.map((s) => s.name).join(',') },
    },
  });
  const chosen = values.scenarios.split(',');
  const unknown = chosen.filter((name) => !SCENARIOS.some((s) => s.name === name));
  if (unknown.length > 0) throw new Error(`unknown scenario ${unknown.join(', ')}; known: ${SCENARIOS.map((s) => s.name).join(', ')}`);
  const simulatedSeconds = Number(values.seconds);
  const runs = Number(values.runs);
  const commits = Number(values.commits);
  const secondsOk = simulatedSeconds % SECONDS_PER_BATCH500 === 0 && simulatedSeconds > 0 && simulatedSeconds <= 600;
  if (!(secondsOk && runs >= 1 && runs <= 20 && commits >= 1 && commits <= 100_000)) {
    throw new Error('usage: --seconds 25|50|...|600 (simulated seconds of 1,000 hosts x 20 metrics) --runs 1..20 --commits 1..100000');
  }
  const loadavgStart = loadavg();
  const memory = new Database(':memory:');
  const sqliteVersion = memory.prepare('SELECT sqlite_version()').pluck().get() as string;
  memory.close();

  const ingest: Record<string, unknown> = {};
  for (const scenario of SCENARIOS.filter((s) => chosen.includes(s.name))) {
    const results = [];
    for (let r = 0; r < runs; r++) {
      process.stderr.write(`sink-store: ${scenario.name} run ${r + 1}/${runs}\n`);
      results.push(runIngest(scenario, simulatedSeconds));
    }
    ingest[scenario.name] = {
      samplesPerBatch: scenario.samplesPerBatch,
      batchesPerTransaction: scenario.batchesPerTransaction,
      samplesPerRun: results[0]!.samples,
      samplesPerSecondMedian: median(results.map((x) => x.samplesPerSecond)),
      samplesPerSecond: results.map((x) => x.samplesPerSecond),
      wallMs: results.map((x) => x.wallMs),
      cpuMicrosPerSampleMedian: median(results.map((x) => x.cpuMicrosPerSample)),
      bytesWrittenPerSampleMedian: median(results.map((x) => x.bytesWrittenPerSample)),
    };
  }
  const commitResults = [];
  for (let r = 0; r < runs; r++) {
    process.stderr.write(`sink-store: durable commits run ${r + 1}/${runs}\n`);
    commitResults.push(runCommits(commits));
  }
  const output = {
    bench: 'sink-store',
    hosts: HOSTS,
    metricsPerHost: METRICS.length,
    simulatedSeconds,
    runs,
    aimSamplesPerSecond: AIM_SAMPLES_PER_SECOND,
    ingest,
    durableCommits: {
      commitsPerRun: commits,
      commitsPerSecondMedian: median(commitResults.map((x) => x.commitsPerSecond)),
      commitsPerSecond: commitResults.map((x) => x.commitsPerSecond),
    },
    versions: { node: process.version, sqlite: sqliteVersion },
    cpus: os.cpus().length,
    loadavgStart,
    loadavgEnd: loadavg(),
  };
  process.stdout.write(`${JSON.stringify(output)}\n`);
}

main();
