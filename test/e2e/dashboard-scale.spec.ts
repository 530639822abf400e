/**
 * The run page with 1,000 hosts: a real `bolt-core start` (server and sink) and a Fleet of 1,000
 * simulated hosts in this process (bench/fleet: real protocol, each host also connected to its
 * sink) run test/e2e/dashboard/scale.yaml. The hosts play its `sleep` task: they report started,
 * send cpu.busy and mem.used once a second (each host at its own phase of the second) and report
 * finished. With the run page open in chromium, the test measures over a window how often the
 * page applies live updates, their lag (window.__bolt.updates, lastUpdateLagMs, frameMs), how old
 * the newest cpu.busy point is, and the page's frame time (requestAnimationFrame deltas); it
 * asserts at least one update a second, a lag under 2 s and a chart at most a bucket plus 2 s
 * behind, then that the run ends on the page with 1,000 ok cells and charts equal to the API's
 * numbers. The figures are printed as JSON lines (`"bench":"dashboard-scale"`) for BENCHMARKS.md.
 */
import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { Fleet } from '../../bench/fleet/fleet.ts';
import { submitRun } from '../../core/cli/run.ts';
import { connectServer, type ServerApi } from '../../core/cli/server-api.ts';
import { taskEventId } from '../../plugin-sdk/src/action.ts';
import { parseDuration } from '../../plugin-sdk/src/schemas/job.ts';
import { WIRE_VERSION, type MetricsBatchMessage, type TaskDispatchMessage, type TaskEventMessage } from '../../plugin-sdk/src/schemas/wire.ts';
import { boltState, chartsMatchingApi, launchBrowser, openDashboard, screenshot, type TestBrowser } from '../helpers/browser.ts';
import { REPO } from '../helpers/core.ts';
import { eventually, freePort, spawnBolt, type BoltProcess } from '../helpers/processes.ts';

const JOB = path.join(REPO, 'test', 'e2e', 'dashboard', 'scale.yaml');
const HOSTS = 1000;
/** How long the simulated task lasts: the page opens, settles and is measured within it. */
const TASK_MS = 16_000;
const SAMPLE_EVERY_MS = 1000;
/** How long the page is measured. */
const WINDOW_MS = 6000;
const MAX_LAG_MS = 2000;
const MAX_UPDATE_GAP_MS = 1000;
/** The sink's aggregate buckets (writer-sqlite's default bucketMs): the newest chart point starts at most this long before now, plus the lag. */
const BUCKET_MS = 1000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface PageFigures {
  elapsedMs: number;
  /** requestAnimationFrame deltas over the window. */
  frames: number[];
  /** Each change of window.__bolt.updates seen at a frame: when (ms into the window), the count, the lag then. */
  changes: { at: number; updates: number; lagMs: number }[];
  startUpdates: number;
  endUpdates: number;
  /** window.__bolt.frameMs at the end (receive → drawn of the last 120 updates). */
  frameMs: number[];
  /** At each frame: now minus the start of the newest cpu.busy bucket drawn (epoch ms). */
  chartAgeMs: number[];
  heapBytes: number | null;
  cells: number;
}

/** Watches the page for `ms` from inside it (a string: functions here would carry the transpiler's helpers). */
function measurePage(page: Page, ms: number): Promise<PageFigures> {
  return page.evaluate(`new Promise((resolve) => {
    const t0 = performance.now();
    let last = t0;
    let seen = window.__bolt.updates;
    const startUpdates = seen;
    const frames = [];
    const changes = [];
    const chartAgeMs = [];
    requestAnimationFrame(function step(now) {
      frames.push(now - last);
      last = now;
      const bolt = window.__bolt;
      const chart = bolt.charts['cpu.busy'];
      if (chart && chart.t.length > 0) chartAgeMs.push(Date.now() - chart.t[chart.t.length - 1]);
      if (bolt.updates !== seen) {
        seen = bolt.updates;
        changes.push({ at: now - t0, updates: bolt.updates, lagMs: bolt.lastUpdateLagMs });
      }
      if (now - t0 < ${ms}) return requestAnimationFrame(step);
      resolve({
        elapsedMs: now - t0, frames: frames.slice(1), changes, startUpdates, endUpdates: bolt.updates, frameMs: bolt.frameMs.slice(), chartAgeMs,
        heapBytes: performance.memory ? performance.memory.usedJSHeapSize : null,
        cells: document.querySelectorAll('[data-testid=cell]').length,
      });
    });
  })`) as Promise<PageFigures>;
}

function quantile(values: number[], q: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

const round = (v: number) => Math.round(v * 10) / 10;

/**
 * The simulated hosts' `sleep`: started at the dispatch's startAt (or at once), cpu.busy and
 * mem.used every second at the host's own phase, finished after the duration. Sends wait while a
 * host's sink session is down or its socket buffer full (Fleet.sendToSink keeps nothing).
 */
class SleepingHosts {
  readonly fleet: Fleet;
  /** Errors of the simulated actions (the test fails on any). */
  readonly errors: string[] = [];
  /** Messages a host could not hand to its sink session within 20 s. */
  undelivered = 0;
  batches = 0;
  #stopped = false;

  constructor(url: string) {
    this.fleet = new Fleet({
      url,
      count: HOSTS,
      labels: { e2e: 'dashboard-scale' },
      sink: true,
      concurrency: 200,
      onDispatch: (i, command) => {
        if (command.action !== 'sleep') return;
        this.#act(i, command).catch((err: unknown) => this.errors.push(`host ${i}: ${(err as Error).stack ?? String(err)}`));
      },
    });
  }

  async #deliver(i: number, message: TaskEventMessage | MetricsBatchMessage): Promise<void> {
    const giveUpAt = Date.now() + 20_000;
    while (!this.#stopped && !this.fleet.sendToSink(i, message)) {
      if (Date.now() > giveUpAt) {
        this.undelivered++;
        return;
      }
      await sleep(50);
    }
  }

  async #act(i: number, command: TaskDispatchMessage): Promise<void> {
    const client = this.fleet.client(i);
    const host = `sim-${i}`;
    const durationMs = parseDuration(command.with.duration);
    if (durationMs === null) throw new Error(`dispatch ${command.id} has no duration: ${JSON.stringify(command.with)}`);
    if (command.startAt !== null) await sleep(Math.max(0, command.startAt - client.serverNow()));
    const startedAt = client.serverNow();
    const hostId = client.identity.fingerprint;
    const event = { v: WIRE_VERSION, type: 'task.event', runId: command.runId, taskId: command.taskId, host, startedAt } as const;
    await this.#deliver(i, { ...event, id: taskEventId(command.id, hostId, 'started'), kind: 'started', at: startedAt });
    const endAt = startedAt + durationMs;
    await sleep((i * SAMPLE_EVERY_MS) / HOSTS);
    for (let n = 0; !this.#stopped && client.serverNow() < endAt; n++) {
      const t = client.serverNow();
      // Values that differ across hosts and in time: the bands are apart.
      const busy = 20 + (i % 60) + 10 * Math.sin(t / 3000);
      const tags = { task: command.taskId };
      await this.#deliver(i, {
        v: WIRE_VERSION, type: 'metrics.batch', id: randomUUID(), host, runId: command.runId,
        samples: [{ t, metric: 'cpu.busy', value: busy, tags }, { t, metric: 'mem.used', value: 2e9 + i * 1e6 + n * 1e5, tags }],
      });
      this.batches++;
      await sleep(Math.max(0, Math.min(SAMPLE_EVERY_MS, endAt - client.serverNow())));
    }
    if (this.#stopped) return;
    const at = client.serverNow();
    await this.#deliver(i, { ...event, id: taskEventId(command.id, hostId, 'finished'), kind: 'finished', at, exitCode: 0, durationMs: at - startedAt });
  }

  async close(): Promise<void> {
    this.#stopped = true;
    await this.fleet.close();
  }
}

describe('dashboard at 1,000 simulated hosts: the run page keeps up with the live run', function () {
  this.timeout(60_000);
  let dir = '';
  let server: BoltProcess | undefined;
  let hosts: SleepingHosts | undefined;
  let browser: TestBrowser | undefined;
  let port = 0;
  let sinkPort = 0;

  before(async function () {
    this.timeout(120_000);
    dir = await mkdtemp(path.join(os.tmpdir(), 'bolt-dashboard-scale-'));
    const config = path.join(dir, 'bolt.yaml');
    // Admission raised only so that 1,000 hosts connect (to the server, then the sink) in seconds.
    await writeFile(config, JSON.stringify({ plugins: { 'transport-ws': { handshakesPerSec: 5000, handshakeBurst: 5000 } } }));
    port = await freePort();
    sinkPort = await freePort();
    server = spawnBolt(['start', '--config', config, '--data', path.join(dir, 'server'), '--port', String(port), '--sink-port', String(sinkPort),
      '--auto-accept', '--listen', '127.0.0.1'], { cwd: dir, env: { BOLT_LOG_LEVEL: 'info' } });
    const started = server.waitForOutput(/"msg":"bolt-core server[^"]* started/, 40_000);
    browser = await launchBrowser();
    await started;
    hosts = new SleepingHosts(`ws://127.0.0.1:${port}/agent`);
    await hosts.fleet.start();
    await hosts.fleet.waitConnected(HOSTS, 60_000);
    await hosts.fleet.waitSinkConnected(HOSTS, 60_000);
    const api = await serverApi();
    await eventually(async () => {
      const listed = await api.get<{ name: string; connected: boolean }[]>('/api/hosts');
      return listed.filter((h) => h.connected && h.name.startsWith('sim-')).length === HOSTS ? true : undefined;
    }, 30_000, `the server listing ${HOSTS} connected hosts`);
  });

  after(async () => {
    await browser?.close();
    await hosts?.close();
    await server?.kill();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function token(): Promise<string> {
    return (await readFile(path.join(dir, 'server', 'plugins', 'transport-ws', 'api-token'), 'utf8')).trim();
  }

  async function serverApi(): Promise<ServerApi> {
    return connectServer(`http://127.0.0.1:${port}`, await token());
  }

  it('updates the run page at least once a second with a lag under 2 s while 1,000 hosts stream (figures printed as JSON)', async () => {
    const sink = { url: `http://127.0.0.1:${sinkPort}`, token: await token() };
    const sinkApi = connectServer(sink.url, sink.token);
    const submitted = await submitRun(await serverApi(), JOB, await readFile(JOB, 'utf8'), { duration: `${TASK_MS}ms` });
    if (!('runId' in submitted)) throw new Error(`the job was scheduled, not run: ${JSON.stringify(submitted)}`);
    const { runId } = submitted;

    const errorsBefore = browser!.pageErrors().length;
    const openedAt = Date.now();
    const page = await openDashboard(browser!.context, sink, `/runs/${runId}`);
    try {
      await page.locator('[data-testid=cell]').first().waitFor({ timeout: 20_000 });
      const loadMs = Date.now() - openedAt;
      // Measured once the hosts stream and the page draws their metrics.
      await eventually(async () => {
        const state = await boltState(page);
        return state !== null && state.updates > 0 && (state.charts['cpu.busy']?.t.length ?? 0) > 0 ? true : undefined;
      }, 20_000, 'cpu.busy drawn from live updates');
      const task = await page.locator('[data-testid=task][data-task-id="soak"]').getAttribute('data-state');
      expect(task, 'soak when the measurement starts').to.equal('running');
      const m = await measurePage(page, WINDOW_MS);
      const runState = await page.locator('[data-testid=run-state]').getAttribute('data-state');

      const at = m.changes.map((c) => c.at);
      const gaps = [...at.map((t, k) => t - (k === 0 ? 0 : at[k - 1]!)), m.elapsedMs - (at.at(-1) ?? 0)];
      const lags = m.changes.map((c) => c.lagMs);
      const figures = {
        bench: 'dashboard-scale',
        hosts: HOSTS,
        samplesPerHostPerSec: 2 * (1000 / SAMPLE_EVERY_MS),
        windowMs: round(m.elapsedMs),
        pageLoadMs: loadMs,
        updates: m.endUpdates - m.startUpdates,
        updatesPerSec: round(((m.endUpdates - m.startUpdates) * 1000) / m.elapsedMs),
        maxUpdateGapMs: round(Math.max(...gaps)),
        lagMs: { p50: round(quantile(lags, 0.5)), p95: round(quantile(lags, 0.95)), max: round(Math.max(...lags)) },
        chartAgeMs: { p50: round(quantile(m.chartAgeMs, 0.5)), max: round(Math.max(...m.chartAgeMs)) },
        updateFrameMs: { p50: round(quantile(m.frameMs, 0.5)), p95: round(quantile(m.frameMs, 0.95)), max: round(Math.max(...m.frameMs)), n: m.frameMs.length },
        rafMs: { p50: round(quantile(m.frames, 0.5)), p95: round(quantile(m.frames, 0.95)), max: round(Math.max(...m.frames)), frames: m.frames.length },
        cellsInDom: m.cells,
        heapMiB: m.heapBytes === null ? null : round(m.heapBytes / 2 ** 20),
        batchesSent: hosts!.batches,
        loadavg: os.loadavg().map(round),
      };
      console.log(`      ${JSON.stringify(figures)}`);

      expect(runState, 'the run state after the measurement (the hosts were still busy)').to.equal('running');
      expect(figures.updates, 'live updates in the window').to.be.at.least(Math.floor(WINDOW_MS / 1000));
      expect(figures.maxUpdateGapMs, 'the longest time without a live update').to.be.at.most(MAX_UPDATE_GAP_MS);
      expect(figures.lagMs.max, 'the largest lag of a live update').to.be.below(MAX_LAG_MS);
      // Event instants are the hosts' estimates of the server clock: a lag can be a few ms below 0.
      expect(lags.every((l) => Number.isFinite(l)), `lags ${JSON.stringify(lags)}`).to.equal(true);
      expect(m.chartAgeMs.length, 'frames with a cpu.busy point').to.equal(m.frames.length + 1);
      expect(figures.chartAgeMs.max, 'now minus the newest cpu.busy bucket drawn').to.be.below(BUCKET_MS + MAX_LAG_MS);

      // The run ends on the page by itself; the charts are the API's numbers; a cell opens its host's result.
      await eventually(async () => ((await page.locator('[data-testid=run-state]').getAttribute('data-state')) === 'succeeded' ? true : undefined),
        30_000, 'the run succeeded on the page');
      expect(await page.locator('[data-testid=task][data-task-id="soak"]').getAttribute('data-state')).to.equal('succeeded');
      await chartsMatchingApi(page, sinkApi, runId, '1,000 hosts');
      const cells = await page.locator('[data-testid=cell]').evaluateAll((els) => els.map((el) => el.getAttribute('data-state')));
      expect(cells.length, 'grid cells (1,000 hosts × 1 task)').to.equal(HOSTS);
      expect(cells.filter((s) => s !== 'ok'), 'cells not ok after the run').to.deep.equal([]);
      const cell = page.locator('[data-testid=cell]').last();
      const host = await cell.getAttribute('data-host');
      const clickedAt = Date.now();
      await cell.click();
      await page.locator('[data-testid=result]').waitFor({ state: 'visible', timeout: 10_000 });
      await eventually(async () => ((await page.locator('[data-testid=result-exit-code]').textContent())?.trim() === '0' ? true : undefined), 10_000, `${host}'s result`);
      console.log(`      ${JSON.stringify({ bench: 'dashboard-scale', cellsInDom: cells.length, clickToResultMs: Date.now() - clickedAt })}`);
      await screenshot(page, 'run-page-1000-hosts');
      expect(hosts!.errors, 'simulated hosts').to.deep.equal([]);
      expect(hosts!.undelivered, 'messages the simulated hosts could not send').to.equal(0);
    } finally {
      await page.close();
    }
    expect(browser!.pageErrors().slice(errorsBefore), 'uncaught errors in the page').to.deep.equal([]);
  });
});
