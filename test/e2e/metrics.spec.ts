/**
 * Host metrics end to end with real processes on loopback: a server (`--role server`), a separate
 * sink (`--role sink`) and three clients m0..m2 (label e2e=metrics), all `bolt-core start`, running
 * the jobs in test/e2e/metrics/ with `bolt-core run`. The samples are read back through the sink's
 * HTTP API (`GET /api/runs/:id/metrics?agg=raw`), task events from the sink's SQLite file.
 *
 * Covers: the job's and a task's metric groups honoured on every host, within the task's window;
 * the sink killed for 10 s mid-task and started again, with every sample of that time arriving
 * once; and a collector whose buffer overflows behind a full outbox, dropping the oldest samples
 * and reporting how many (bolt.dropped_samples).
 */
import { expect } from 'chai';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { serviceRequest } from '../../core/cli/admin-client.ts';
import type { RunView } from '../../core/cli/run-view.ts';
import type { RawSeriesView } from '../../plugins/writer-sqlite/services.ts';
import { REPO } from '../helpers/core.ts';
import { fleetForSuite, ProcessFleet, sinkRows, taskOf } from '../helpers/e2e-fleet.ts';
import { eventually, runCli, type CliResult } from '../helpers/processes.ts';

const JOBS = path.join(REPO, 'test', 'e2e', 'metrics');
const NAMES = ['m0', 'm1', 'm2'];
/** The collector's window margins here (plugin defaults: 1000 ms each). */
const START_MARGIN_MS = 800;
const END_MARGIN_MS = 800;
/** The overflowing client's collector buffer, in samples: eight ticks of the five memory gauges. */
const OVERFLOW_BUFFER = 40;
/** The client outbox's bound (plugins/transport-ws/client/outbox.ts, not configurable). */
const OUTBOX_MAX_BYTES = 64 * 1024 * 1024;
/** Two ticks closer than this are one slot of the loop's beat sampled twice (seen: 1.4 to 6.3 ms apart). */
const TWICE_MS = 10;

const CONFIG = {
  plugins: {
    'transport-ws': { heartbeatIntervalMs: 300 },
    // start: together begins 1.5 s after the dispatch round trip, so a window that opens
    // START_MARGIN_MS before startAt opens well after the dispatch arrived.
    'scheduler-dag': { togetherMarginMs: 1500 },
    'collector-system': { startMarginMs: START_MARGIN_MS, endMarginMs: END_MARGIN_MS },
  },
};

/** The metrics of the groups the jobs select (plugins/collector-system/README.md). */
const CPU_METRICS = ['cpu.user', 'cpu.system', 'cpu.iowait', 'cpu.steal', 'cpu.idle', 'cpu.busy'];
const MEMORY_METRICS = ['mem.total', 'mem.used', 'mem.available', 'mem.cached', 'mem.swap_used'];
const NETWORK_METRICS = ['net.rx_bytes', 'net.tx_bytes', 'net.rx_packets', 'net.tx_packets', 'net.rx_errors', 'net.tx_errors', 'net.rx_drops', 'net.tx_drops'];


function parseRun(r: CliResult): RunView {
  try {
    return JSON.parse(r.stdout) as RunView;
  } catch {
    throw new Error(`bolt-core run exited ${r.code} without JSON on stdout:\n${r.stdout.slice(-2000)}\nstderr:\n${r.stderr.slice(-2000)}`);
  }
}

/** `at` of each host's final event of a task, as the sink stored it (server clock). */
function finalEventAt(sinkFile: string, runId: string, taskId: string): Map<string, number> {
  const rows = sinkRows<{ host: string; at: number }>(sinkFile, `SELECT h.name AS host, e.at AS at FROM events e
    JOIN tasks t ON t.id = e.task JOIN runs r ON r.id = t.run JOIN hosts h ON h.id = e.host
    WHERE r.run_id = ? AND t.task_id = ? AND e.kind <> 'started'`, runId, taskId);
  return new Map(rows.map((r) => [r.host, r.at]));
}

const key = (tags: Record<string, string>): string => JSON.stringify(Object.entries(tags).sort(([a], [b]) => a.localeCompare(b)));

/** Longest step between consecutive instants (sorted). */
function longestGap(times: number[]): number {
  let gap = 0;
  for (let i = 1; i < times.length; i++) gap = Math.max(gap, times[i]! - times[i - 1]!);
  return gap;
}

/**
 * Shortest step between consecutive instants (sorted). A loop that ticks one slot twice shows a
 * step of a few ms; a tick late under load followed by one on time shows interval minus the delay.
 */
function shortestGap(times: number[]): number {
  let gap = Infinity;
  for (let i = 1; i < times.length; i++) gap = Math.min(gap, times[i]! - times[i - 1]!);
  return gap;
}

/** The one raw series of `metric` without tags for `host` and `task`. */
function seriesOf(series: RawSeriesView[], metric: string, host: string, taskId: string | null): RawSeriesView {
  const found = series.filter((s) => s.metric === metric && s.host === host && s.task === taskId && Object.keys(s.tags).length === 0);
  if (found.length !== 1) throw new Error(`${found.length} series of ${metric} for ${host} task ${taskId}; the sink has: ${[...new Set(series.map((s) => `${s.metric}@${s.host}/${s.task}`))].join(', ')}`);
  return found[0]!;
}

/** Samples the collector handed to its transport so far, per client. */
async function sentSamples(fleet: Fleet, names: string[]): Promise<Map<string, number>> {
  return new Map(await Promise.all(names.map(async (n) => [n, (await fleet.collectorStats(n)).stream.sentSamples] as const)));
}

/**
 * Waits until every client's collector is idle (no window open or waiting, nothing buffered) and
 * the sink holds, per client, exactly the samples of the run the collector handed to its
 * transport since `sentBefore`; returns the run's samples. Fewer means lost on the way, more means
 * stored twice.
 */
async function delivered(fleet: Fleet, runId: string, sentBefore: Map<string, number>, timeoutMs: number): Promise<RawSeriesView[]> {
  let last = '';
  try {
    return await eventually(async () => {
      const stats = new Map(await Promise.all([...sentBefore.keys()].map(async (n) => [n, await fleet.collectorStats(n)] as const)));
      const series = await fleet.samples(runId);
      const counts = [...stats].map(([n, s]) => ({
        host: n,
        idle: s.open === 0 && s.waiting === 0 && s.stream.queued === 0,
        sent: s.stream.sentSamples - sentBefore.get(n)!,
        stored: series.filter((x) => x.host === n).reduce((sum, x) => sum + x.t.length, 0),
      }));
      last = JSON.stringify(counts);
      return counts.every((c) => c.idle && c.stored === c.sent) ? series : undefined;
    }, timeoutMs, 'every sample the collectors sent stored at the sink');
  } catch (err) {
    throw new Error(`${(err as Error).message}; last seen (per host: collector idle, samples sent, samples stored): ${last}`);
  }
}

/** Metrics batches of `runId` in a client's outbox segment files (a line being written is passed over). */
function queuedBatches(clientDir: string, runId: string): { t: number }[][] {
  const dir = path.join(clientDir, 'plugins', 'transport-ws', 'outbox');
  const batches: { t: number }[][] = [];
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.log'));
  } catch {
    return batches;
  }
  for (const name of names) {
    let text: string;
    try {
      text = readFileSync(path.join(dir, name), 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      try {
        const message = JSON.parse(line.slice(line.indexOf(' ') + 1)) as { type?: string; runId?: string; samples?: { t: number }[] };
        if (message.type === 'metrics.batch' && message.runId === runId) batches.push(message.samples ?? []);
      } catch {
        // torn or empty line
      }
    }
  }
  return batches;
}

/**
 * Fills a client's outbox directory, before the client starts, with metrics batches of another run
 * (as a client that lived through a long sink outage leaves it), in the outbox's segment format
 * (`<seq> <message JSON>` lines), up to less than one small message below the outbox's bound, so
 * that nothing more fits until the sink takes some. Returns the bytes written.
 */
function fillOutbox(clientDir: string, host: string, runId: string): number {
  const dir = path.join(clientDir, 'plugins', 'transport-ws', 'outbox');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // Big samples (64 tags of 256 characters) keep the number the sink must store small.
  const tags = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`k${String(i).padStart(2, '0')}`, 'x'.repeat(256)]));
  const t = Date.now();
  const line = (seq: number, full: number, pad: number | null): string => {
    const samples: object[] = Array.from({ length: full }, () => ({ t, metric: 'e2e.backlog', value: 1, tags }));
    if (pad !== null) samples.push({ t, metric: 'e2e.backlog', value: 1, tags: { z: 'x'.repeat(pad) } });
    return `${seq} ${JSON.stringify({ v: 1, type: 'metrics.batch', id: `backlog-${seq}`, host, runId, samples })}\n`;
  };
  const lines: string[] = [];
  let need = OUTBOX_MAX_BYTES;
  for (let seq = 1; ; seq++) {
    let text = line(seq, 24, null);
    for (let full = 23; full > 0 && Buffer.byteLength(text) > need; full--) text = line(seq, full, null);
    if (Buffer.byteLength(text) > need) {
      // Less than one big sample left: one small sample per message, the last one sized to fit exactly.
      const base = Buffer.byteLength(line(seq, 0, 0));
      if (need < base) break;
      text = line(seq, 0, Math.min(256, need - base));
    }
    lines.push(text);
    need -= Buffer.byteLength(text);
  }
  writeFileSync(path.join(dir, 'outbox-0000000000000001.log'), lines.join(''), { mode: 0o600 });
  return OUTBOX_MAX_BYTES - need;
}

interface CollectorStats {
  waiting: number;
  open: number;
  stream: { added: number; queued: number; sentBatches: number; sentSamples: number; dropped: number; refused: number };
}

/** Server, separate sink and the clients m0..m2, in a temp dir; more clients on demand. */
class Fleet extends ProcessFleet {
  constructor() {
    super(true, 'bolt-metrics-');
  }

  async start(): Promise<void> {
    await this.prepare(CONFIG);
    await this.startServer();
    await this.startSinkAndWait();
    for (const name of NAMES) this.startClient(name, ['--label', 'e2e=metrics']);
    await this.waitHealthy(NAMES, 60_000);
  }

  /** Every raw sample of a run at the sink, one series per metric, host, task and tag set. */
  async samples(runId: string): Promise<RawSeriesView[]> {
    return (await this.sinkApi()).get<RawSeriesView[]>(`/api/runs/${encodeURIComponent(runId)}/metrics?agg=raw`);
  }

  /** `bolt-core run JOB --json` against the server. */
  run(jobFile: string, extra: string[] = []): Promise<CliResult> {
    return runCli(['run', path.join(JOBS, jobFile), '--server', `http://127.0.0.1:${this.port}`, '--data', this.serverData, '--no-progress', '--json', ...extra]).result;
  }

  collectorStats(name: string): Promise<CollectorStats> {
    return serviceRequest<CollectorStats>(this.clientData(name), 'collector-system.stats');
  }
}

describe('host metrics end to end: server, separate sink and three clients as processes', function () {
  this.timeout(60_000);
  const fleet = fleetForSuite(new Fleet());

  it('samples exactly the job\'s groups, and a task\'s own groups where it overrides them, on every host within each task\'s window', async () => {
    const sentBefore = await sentSamples(fleet, NAMES);
    const r = await fleet.run('selection.yaml');
    expect(r.code, r.stderr).to.equal(0);
    const run = parseRun(r);
    expect(run.state).to.equal('succeeded');
    const series = await delivered(fleet, run.runId, sentBefore, 15_000);
    expect([...new Set(series.map((s) => s.task))].sort(), 'tasks of the samples').to.deep.equal(['base', 'net']);
    // Each task's metrics with their tag sets, `name [tags]`: base the job's cpu and memory (cpu.busy
    // also per core), net the network group only (per interface, every interface of this machine).
    const interfaces = [...new Set(series.filter((s) => s.metric.startsWith('net.')).map((s) => s.tags.iface!))];
    expect(interfaces, 'interfaces in net.* samples').to.include('lo');
    const expected: Record<string, string[]> = {
      base: [
        ...CPU_METRICS.map((m) => `${m} []`),
        ...Array.from({ length: os.cpus().length }, (_, core) => `cpu.busy ${key({ core: String(core) })}`),
        ...MEMORY_METRICS.map((m) => `${m} []`),
      ],
      net: NETWORK_METRICS.flatMap((m) => interfaces.map((iface) => `${m} ${key({ iface })}`)),
    };

    for (const taskId of ['base', 'net']) {
      const t = taskOf(run, taskId);
      expect(t.startAt, `${taskId} startAt`).to.be.a('number');
      const openAt = t.startAt! - START_MARGIN_MS;
      const finals = finalEventAt(fleet.sinkFile, run.runId, taskId);
      for (const host of NAMES) {
        const mine = series.filter((s) => s.task === taskId && s.host === host);
        expect(mine.map((s) => `${s.metric} ${key(s.tags)}`).sort(), `${taskId} on ${host}: metrics and tag sets`).to.deep.equal([...expected[taskId]!].sort());
        const times = mine.flatMap((s) => s.t);
        const closeAt = finals.get(host)! + END_MARGIN_MS;
        // (The sink keeps t in whole milliseconds.)
        expect(Math.min(...times), `${taskId} on ${host}: first sample at or after startAt - startMarginMs`).to.be.at.least(Math.floor(openAt));
        expect(Math.max(...times), `${taskId} on ${host}: last sample at or before the final event + endMarginMs`).to.be.at.most(Math.ceil(closeAt));
        // The window follows the task: sampling began before its start and went on after its end.
        expect(Math.min(...times), `${taskId} on ${host}: a sample before startAt`).to.be.below(t.startAt!);
        expect(Math.max(...times), `${taskId} on ${host}: a sample after the final event`).to.be.above(finals.get(host)!);
        // Every tick in the window, at the job's interval (the override keeps it).
        const ticks = [...new Set(times)].sort((a, b) => a - b);
        expect(ticks.length, `${taskId} on ${host}: ticks in ${closeAt - openAt} ms`).to.be.at.least(Math.floor(((closeAt - openAt) / 200) * 0.7));
        expect(longestGap(ticks), `${taskId} on ${host}: longest step between ticks`).to.be.at.most(2 * 200 + 100);
        expect(shortestGap(ticks), `${taskId} on ${host}: shortest step between ticks (a slot ticked twice?)`).to.be.at.least(TWICE_MS);
      }
    }
  });

  it('stores every sample taken while the sink was killed for 10 s and started again, none twice', async () => {
    const intervalMs = 500;
    const sentBefore = await sentSamples(fleet, NAMES);
    const running = fleet.run('sink-down.yaml');
    const runId = await fleet.runIdOf('e2e-metrics-sink-down');
    // Streaming works before the kill: every host's samples of the task reach the sink.
    await eventually(async () => {
      const hosts = new Set((await fleet.samples(runId)).filter((s) => s.metric === 'mem.used').map((s) => s.host));
      return NAMES.every((n) => hosts.has(n)) ? true : undefined;
    }, 15_000, 'samples of every host at the sink');
    await fleet.sink!.kill();
    const killedAt = Date.now();
    // Down until every client has queued on disk samples taken 10 s after the kill.
    await eventually(() => (NAMES.every((n) => queuedBatches(fleet.clientData(n), runId).some((b) => b.some((s) => s.t >= killedAt + 10_000))) ? true : undefined),
      20_000, 'every client queued 10 s of samples while the sink was down');
    const restartedAt = Date.now();
    fleet.startSink();
    const r = await running;
    expect(r.code, r.stderr).to.equal(0);
    const run = parseRun(r);
    expect(run.state).to.equal('succeeded');
    const long = taskOf(run, 'long');
    const finals = finalEventAt(fleet.sinkFile, runId, 'long');
    const series = await delivered(fleet, runId, sentBefore, 20_000);

    // None twice: within each series (metric, host, task, tag set) every instant once.
    for (const s of series) expect(new Set(s.t).size, `${s.metric} ${key(s.tags)} on ${s.host}: instants stored more than once`).to.equal(s.t.length);
    const down = restartedAt - killedAt;
    for (const host of NAMES) {
      const times = seriesOf(series, 'mem.used', host, 'long').t;
      const openAt = long.startAt! - START_MARGIN_MS;
      const closeAt = finals.get(host)! + END_MARGIN_MS;
      expect(Math.min(...times), `${host}: first sample`).to.be.at.least(Math.floor(openAt));
      expect(Math.max(...times), `${host}: last sample`).to.be.at.most(Math.ceil(closeAt));
      expect(longestGap(times), `${host}: longest step between samples over the whole task`).to.be.at.most(2 * intervalMs + 100);
      expect(shortestGap(times), `${host}: shortest step between samples (a slot ticked twice?)`).to.be.at.least(TWICE_MS);
      const inOutage = times.filter((t) => t >= killedAt && t <= restartedAt);
      expect(inOutage.length, `${host}: samples in the ${down} ms the sink was down`).to.be.within(Math.floor((down / intervalMs) * 0.9), Math.ceil(down / intervalMs) + 1);
      expect(times.length, `${host}: samples in the ${closeAt - openAt} ms window`).to.be.at.least(Math.floor(((closeAt - openAt) / intervalMs) * 0.9));
    }
  });

  it('drops the oldest samples behind a full outbox and reports the count, keeping the newest', async function () {
    this.timeout(90_000);
    const name = 'full0';
    const backlogBytes = fillOutbox(fleet.clientData(name), name, 'e2e-backlog');
    expect(OUTBOX_MAX_BYTES - backlogBytes, 'room left in the outbox').to.be.below(250);
    await writeFile(path.join(fleet.dir, 'small-buffer.yaml'), JSON.stringify({
      plugins: { ...CONFIG.plugins, 'collector-system': { ...CONFIG.plugins['collector-system'], bufferSamples: OVERFLOW_BUFFER } },
    }));
    // The sink is away while the task runs: the backlog stays, the outbox refuses every new message.
    await fleet.sink!.kill();
    const client = fleet.startClient(name, ['--label', 'e2e=overflow'], 'small-buffer.yaml');
    await fleet.waitHealthy([name], 60_000);
    const doneFile = path.join(fleet.dir, 'fill.done');
    const running = fleet.run('overflow.yaml', ['--var', `done=${doneFile}`]);
    const runId = await fleet.runIdOf('e2e-metrics-overflow');
    await eventually(() => (existsSync(doneFile) ? true : undefined), 20_000, 'the command of fill ended');
    // The window closes endMarginMs after the command's end, though its task events wait for room in the outbox.
    let stats: CollectorStats | undefined;
    await eventually(async () => {
      stats = await fleet.collectorStats(name);
      return stats.open === 0 && stats.waiting === 0 ? true : undefined;
    }, END_MARGIN_MS + 5000, `${name}'s metrics window closed`).catch((err: Error) => {
      throw new Error(`${err.message}: the collector still samples the ended task (${JSON.stringify(stats?.stream)}), so it never heard of the final event `
        + '(client.task.event) while client.send refused the started event');
    });
    // (queued reads 0 while a refused batch is out for its retry: polled past that.)
    const before = await eventually(async () => {
      const s = await fleet.collectorStats(name);
      return s.stream.queued === OVERFLOW_BUFFER ? s : undefined;
    }, 10_000, `${OVERFLOW_BUFFER} samples held by ${name}'s collector`);
    expect(before.stream.sentSamples, 'samples client.send took while the outbox was full').to.equal(0);
    expect(before.stream.refused, 'batches client.send refused').to.be.above(0);
    expect(before.stream.dropped).to.equal(before.stream.added - OVERFLOW_BUFFER);
    await client.waitForOutput(/"code":"BOLT_ERR_METRICS_SAMPLES_DROPPED"/, 15_000);
    expect(client.output()).to.match(/outbox full/);

    fleet.startSink();
    const r = await running;
    expect(r.code, r.stderr).to.equal(0);
    const run = parseRun(r);
    expect(run.state).to.equal('succeeded');
    const fill = taskOf(run, 'fill');
    const series = await delivered(fleet, runId, new Map([[name, 0]]), 30_000);
    const after = await fleet.collectorStats(name);
    expect(after.stream.added, 'samples taken after the window closed').to.equal(before.stream.added);
    expect(after.stream.sentSamples, 'samples handed over: the buffer and one drop report').to.equal(OVERFLOW_BUFFER + 1);

    const dropped = series.filter((s) => s.metric === 'bolt.dropped_samples');
    expect(dropped.map((s) => [s.host, s.task, s.tags]), 'drop reports').to.deep.equal([[name, null, {}]]);
    const reported = dropped[0]!.values.reduce((a, b) => a + b, 0);
    const memory = series.filter((s) => s.metric !== 'bolt.dropped_samples');
    expect(memory.map((s) => s.metric).sort()).to.deep.equal([...MEMORY_METRICS].sort());
    const stored = memory.reduce((n, s) => n + s.t.length, 0);
    // Every sample taken is either at the sink or counted as dropped, and the buffer kept all it could.
    expect(stored, 'samples at the sink').to.equal(OVERFLOW_BUFFER);
    expect(reported, 'bolt.dropped_samples reported').to.equal(after.stream.dropped);
    expect(reported, 'samples taken and never stored').to.equal(after.stream.added - stored);

    // The newest: the last OVERFLOW_BUFFER / 5 ticks of the window, none missing between them.
    const interval = 100;
    const ticks = [...new Set(memory.flatMap((s) => s.t))].sort((a, b) => a - b);
    expect(ticks, 'ticks stored').to.have.length(OVERFLOW_BUFFER / MEMORY_METRICS.length);
    for (const s of memory) expect(s.t, `${s.metric} at every stored tick`).to.deep.equal(ticks);
    const finalAt = finalEventAt(fleet.sinkFile, runId, 'fill').get(name)!;
    expect(ticks.at(-1)!, 'last stored tick').to.be.within(finalAt + END_MARGIN_MS - 2 * interval - 100, Math.ceil(finalAt + END_MARGIN_MS));
    expect(longestGap(ticks), 'longest step between stored ticks').to.be.at.most(2 * interval + 100);
    expect(shortestGap(ticks), 'shortest step between stored ticks (a slot ticked twice?)').to.be.at.least(TWICE_MS);
    // The ticks before them were taken (and dropped) at least one interval apart from the window's opening on.
    const droppedTicks = reported / MEMORY_METRICS.length;
    const openAt = fill.startAt! - START_MARGIN_MS;
    expect(ticks[0]! - openAt, `first stored tick after ${droppedTicks} dropped ticks`).to.be.at.least(droppedTicks * interval - 50);
  });
});
