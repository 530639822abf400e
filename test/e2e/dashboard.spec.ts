/**
 * The sink's dashboard in a real browser (chromium through playwright-core, test/helpers/browser.ts)
 * during a real run: one `bolt-core start` (server and sink) and three `--role client` processes on
 * loopback run test/e2e/dashboard/live.yaml while the run page is open. The page must show the
 * tasks turning done and the hosts × tasks grid filling without a reload, draw charts whose
 * points are the sink API's numbers, and show a failed host's output when its cell is clicked; the
 * runs, hosts and plugins pages list what the sink knows. The run's report (`bolt-core report` and
 * `GET /api/runs/:id/report.html`) must open from disk with networking blocked and show the same
 * task states and chart figures. Screenshots go to the folder the run prints.
 */
import { expect } from 'chai';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Page } from 'playwright-core';
import type { RunView } from '../../core/cli/run-view.ts';
import { connectServer, type ServerApi } from '../../core/cli/server-api.ts';
import { boltState, chartProblems, chartsMatchingApi, drawnMetrics, launchBrowser, offlineContext, openDashboard, screenshot, type Charts, type SinkAccess, type TestBrowser } from '../helpers/browser.ts';
import { REPO } from '../helpers/core.ts';
import { eventually, freePort, killCliProcesses, runCli, spawnBolt, type BoltProcess, type CliResult } from '../helpers/processes.ts';

const JOB = path.join(REPO, 'test', 'e2e', 'dashboard', 'live.yaml');
const JOB_NAME = 'e2e-dashboard';
const HOSTS = ['c0', 'c1', 'c2'];
const TASKS = ['warm', 'flaky', 'line-up'];

/** How the run ends, per task and per grid cell (`host/task`). */
const FINAL_TASKS: Record<string, string> = { warm: 'succeeded', flaky: 'failed', 'line-up': 'succeeded' };
const FINAL_CELLS = HOSTS.flatMap((h) => TASKS.map((t) => `${h}/${t} ${t === 'flaky' && h === 'c2' ? 'failed' : 'ok'}`)).sort();

const TASK_STATES = new Set(['pending', 'running', 'succeeded', 'failed', 'cancelled']);
const CELL_STATES = new Set(['pending', 'running', 'ok', 'failed', 'timedout', 'cancelled', 'lost']);
const FINAL_TASK_STATES = new Set(['succeeded', 'failed', 'cancelled']);
const FINAL_CELL_STATES = new Set(['ok', 'failed', 'timedout', 'cancelled', 'lost']);

/** Short heartbeats and health timers, a short aggregator grace, half-second metric buckets. */
const CONFIG = {
  plugins: {
    'transport-ws': { heartbeatIntervalMs: 300 },
    'health-monitor': { missingAfterMs: 1500, lostAfterMs: 4000, tickMs: 100 },
    'aggregator-results': { graceMs: 2000 },
    'writer-sqlite': { bucketMs: 500 },
  },
};


/** One server with its sink and the clients c0..c2 (label e2e=dashboard), each with BOLT_E2E_HOST=<name>. */
class DashboardFleet {
  dir = '';
  port = 0;
  sinkPort = 0;
  private readonly procs: BoltProcess[] = [];

  get serverData(): string {
    return path.join(this.dir, 'server');
  }

  get sinkUrl(): string {
    return `http://127.0.0.1:${this.sinkPort}`;
  }

  /** `--server` and `--data` for the CLI. */
  get flags(): string[] {
    return ['--server', `http://127.0.0.1:${this.port}`, '--data', this.serverData];
  }

  async start(): Promise<void> {
    this.dir = await mkdtemp(path.join(os.tmpdir(), 'bolt-dashboard-'));
    const config = path.join(this.dir, 'bolt.yaml');
    await writeFile(config, JSON.stringify(CONFIG));
    this.port = await freePort();
    this.sinkPort = await freePort();
    const server = spawnBolt(['start', '--config', config, '--data', this.serverData, '--port', String(this.port), '--sink-port', String(this.sinkPort),
      '--auto-accept', '--listen', '127.0.0.1'], { cwd: this.dir, env: { BOLT_LOG_LEVEL: 'info' } });
    this.procs.push(server);
    await server.waitForOutput(/"msg":"bolt-core server[^"]* started/, 40_000);
    for (const name of HOSTS) {
      this.procs.push(spawnBolt(['start', '--config', config, '--role', 'client', '--server', `ws://127.0.0.1:${this.port}`, '--data', path.join(this.dir, name),
        '--name', name, '--label', 'e2e=dashboard'], { cwd: this.dir, env: { BOLT_LOG_LEVEL: 'info', BOLT_E2E_HOST: name } }));
    }
    await this.waitHealthy(60_000);
  }

  async token(): Promise<string> {
    return (await readFile(path.join(this.serverData, 'plugins', 'transport-ws', 'api-token'), 'utf8')).trim();
  }

  async sink(): Promise<SinkAccess> {
    return { url: this.sinkUrl, token: await this.token() };
  }

  /** The sink's HTTP API (runs, metrics, reports) with the bearer token. */
  async sinkApi(): Promise<ServerApi> {
    return connectServer(this.sinkUrl, await this.token());
  }

  async serverApi(): Promise<ServerApi> {
    return connectServer(`http://127.0.0.1:${this.port}`, await this.token());
  }

  async waitHealthy(timeoutMs = 30_000): Promise<void> {
    await eventually(async () => {
      const hosts = await (await this.serverApi()).get<{ name: string; state: string; connected: boolean }[]>('/api/hosts');
      return HOSTS.every((n) => hosts.some((h) => h.name === n && h.state === 'healthy' && h.connected)) ? true : undefined;
    }, timeoutMs, `${HOSTS.join(', ')} healthy`);
  }

  /** Starts `bolt-core run` of the dashboard job; resolves with the new run's id and the CLI's end. */
  async submit(): Promise<{ runId: string; ended: Promise<CliResult> }> {
    await this.waitHealthy();
    const api = await this.serverApi();
    const before = new Set((await api.get<{ runId: string }[]>('/api/runs')).map((r) => r.runId));
    const ended = runCli(['run', JOB, ...this.flags, '--no-progress', '--json']).result;
    const runId = await eventually(async () => (await api.get<{ runId: string; job: string }[]>('/api/runs')).find((r) => r.job === JOB_NAME && !before.has(r.runId))?.runId,
      15_000, `the new run of ${JOB_NAME}`);
    return { runId, ended };
  }

  async stop(): Promise<void> {
    await Promise.all(this.procs.map((p) => p.kill()));
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }
}

/** What the run page shows at one instant. */
interface RunPageSnapshot {
  runState: string | null;
  /** Task id → data-state. */
  tasks: Record<string, string>;
  /** `host/task state`, sorted. */
  cells: string[];
  /** Points in window.__bolt.charts over all metrics (-1 without window.__bolt). */
  points: number;
  /** Whether window.__boltTestMark, set once the page showed the run, is still there (false after a reload). */
  sameDocument: boolean;
}

/** In-page code as strings: functions written here would carry the test runner's transpiler helpers. */
const SNAPSHOT_SCRIPT = `(() => {
  const all = (sel) => Array.from(document.querySelectorAll(sel));
  const state = document.querySelector('[data-testid=run-state]');
  const tasks = {};
  for (const el of all('[data-testid=task]')) tasks[el.getAttribute('data-task-id')] = el.getAttribute('data-state');
  const cells = all('[data-testid=cell]').map((el) => el.getAttribute('data-host') + '/' + el.getAttribute('data-task') + ' ' + el.getAttribute('data-state')).sort();
  const charts = window.__bolt && window.__bolt.charts;
  const points = charts ? Object.values(charts).reduce((n, c) => n + ((c && c.t) ? c.t.length : 0), 0) : -1;
  return { runState: state ? (state.getAttribute('data-state') || state.textContent.trim()) : null, tasks, cells, points, sameDocument: window.__boltTestMark === true };
})()`;

function snapshotRunPage(page: Page): Promise<RunPageSnapshot> {
  return page.evaluate(SNAPSHOT_SCRIPT) as Promise<RunPageSnapshot>;
}

/** Each chart in window.__bolt.charts has its `[data-testid=chart]` element with a drawing (uPlot's canvas). */
async function expectChartElements(page: Page, charts: Charts): Promise<void> {
  for (const metric of drawnMetrics(charts)) {
    const chart = page.locator(`[data-testid=chart][data-metric="${metric}"]`);
    expect(await chart.count(), `[data-testid=chart][data-metric="${metric}"]`).to.equal(1);
    expect(await chart.locator('canvas').count(), `a canvas in the ${metric} chart`).to.be.at.least(1);
  }
}

async function taskStates(page: Page): Promise<Record<string, string>> {
  return (await snapshotRunPage(page)).tasks;
}

describe('dashboard end to end: a live run on three clients in chromium, and its report offline', function () {
  this.timeout(60_000);
  const fleet = new DashboardFleet();
  let browser: TestBrowser;
  /** The run the live test watched to its end (later tests start their own when it is missing). */
  let endedRunId: string | undefined;

  before(async function () {
    this.timeout(120_000);
    [browser] = await Promise.all([launchBrowser(), fleet.start()]);
  });

  after(async () => {
    await killCliProcesses();
    await browser?.close();
    await fleet.stop();
  });

  /** Uncaught page errors since `since` (a count of browser.pageErrors()) must be none. */
  function expectNoPageErrors(since: number): void {
    expect(browser.pageErrors().slice(since), 'uncaught errors in the pages').to.deep.equal([]);
  }

  /**
   * A finished run of the job (the live test's, or a new one) whose metrics are all in the sink:
   * collectors sample until 1 s after a task's last event, so samples still arrive after the run
   * ended. Complete: 2 s past the run's end and the API's series unchanged for a second.
   */
  async function endedRun(): Promise<string> {
    if (endedRunId === undefined) {
      const { runId, ended } = await fleet.submit();
      const r = await ended;
      expect(r.code, r.stderr).to.equal(1);
      endedRunId = runId;
    }
    const runId = endedRunId;
    const api = await fleet.sinkApi();
    const run = await (await fleet.serverApi()).get<RunView>(`/api/runs/${encodeURIComponent(runId)}`);
    expect(run.endedAt, `run ${runId} (${run.state}) has no end`).to.be.a('number');
    let previous = '';
    let changedAt = Date.now();
    await eventually(async () => {
      const now = JSON.stringify(await api.get(`/api/runs/${encodeURIComponent(runId)}/metrics?agg=fleet`));
      if (now !== previous) [previous, changedAt] = [now, Date.now()];
      return Date.now() - changedAt >= 1000 && Date.now() >= run.endedAt! + 2000 ? true : undefined;
    }, 20_000, `the metrics of run ${runId} complete in the sink`);
    return runId;
  }

  it('lets a browser in with /?token= once (an HttpOnly cookie, the token gone from the URL) and no one without it', async () => {
    const sink = await fleet.sink();
    const plain = await fetch(`${sink.url}/`, { redirect: 'manual' });
    expect(plain.status, 'GET / without the cookie').to.equal(401);
    expect(plain.headers.get('content-type') ?? '').to.match(/^text\/html/);
    expect(await plain.text()).to.match(/token/i);
    const wrong = await fetch(`${sink.url}/?token=not-the-token`, { redirect: 'manual' });
    expect(wrong.status, 'a wrong token').to.equal(401);

    const errorsBefore = browser.pageErrors().length;
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      const login = (await page.goto(`${sink.url}/?token=${encodeURIComponent(sink.token)}`))!;
      expect(login.status(), 'the page after the login').to.equal(200);
      expect(login.request().redirectedFrom()?.url(), 'the login request').to.equal(`${sink.url}/?token=${encodeURIComponent(sink.token)}`);
      expect((await login.request().redirectedFrom()!.response())!.status(), 'the login answer').to.equal(303);
      expect(page.url(), 'the page URL after the login').to.equal(`${sink.url}/`);
      const cookies = await context.cookies(sink.url);
      expect(cookies, 'the login cookie').to.have.length.at.least(1);
      for (const c of cookies) expect(c, c.name).to.include({ httpOnly: true, sameSite: 'Strict' });
      expect(await page.evaluate('document.cookie'), 'cookies the page can read').to.equal('');
      expect(await page.content(), 'the page').to.not.include(sink.token);
      // The cookie alone opens the API to the page.
      const status = await page.evaluate(`fetch('/api/runs').then((r) => r.status)`);
      expect(status, 'GET /api/runs from the page').to.equal(200);
    } finally {
      await context.close();
    }
    expectNoPageErrors(errorsBefore);
  });

  it('shows a run as it happens: tasks turn done, the grid fills, charts draw the API\'s numbers, a failed cell shows its output', async () => {
    const sink = await fleet.sink();
    const api = await fleet.sinkApi();
    const errorsBefore = browser.pageErrors().length;
    const { runId, ended } = await fleet.submit();
    const page = await openDashboard(browser.context, sink, `/runs/${runId}`);
    try {
      await eventually(async () => {
        const s = await snapshotRunPage(page);
        return s.runState !== null && TASKS.every((t) => s.tasks[t] !== undefined) ? true : undefined;
      }, 15_000, 'the run page with its three tasks');
      await page.evaluate('window.__boltTestMark = true');

      // Watch the page, without touching it, until the run has ended there.
      const seen: RunPageSnapshot[] = [];
      const last = await eventually(async () => {
        const s = await snapshotRunPage(page);
        seen.push(s);
        const done = s.runState !== null && FINAL_TASK_STATES.has(s.runState) && TASKS.every((t) => FINAL_TASK_STATES.has(s.tasks[t] ?? ''))
          && s.cells.length === FINAL_CELLS.length && s.cells.every((c) => FINAL_CELL_STATES.has(c.slice(c.lastIndexOf(' ') + 1)));
        return done ? s : undefined;
      }, 45_000, `run ${runId} ended on the page`);
      const run = await ended;
      expect(run.code, run.stderr).to.equal(1);
      expect((JSON.parse(run.stdout) as RunView).state).to.equal('failed');

      const first = seen[0]!;
      expect(first.runState, 'the run state when the page opened').to.equal('running');
      expect(first.tasks['line-up'], 'line-up when the page opened').to.equal('pending');
      expect(first.cells.filter((c) => / (pending|running)$/.test(c)), 'cells still pending or running when the page opened').to.not.be.empty;
      for (const task of TASKS) {
        const states = [...new Set(seen.map((s) => s.tasks[task]))];
        expect(FINAL_TASK_STATES.has(states[0] ?? ''), `${task} was ${states[0]} when first seen (states seen: ${states.join(' → ')})`).to.equal(false);
      }
      expect(last.tasks).to.deep.equal(FINAL_TASKS);
      expect(last.runState).to.equal('failed');
      expect(last.cells).to.deep.equal(FINAL_CELLS);
      expect(last.sameDocument, 'the page was reloaded while the run went on').to.equal(true);
      expect(seen.some((s) => s.runState === 'running' && s.points > 0), 'chart points drawn while the run was running').to.equal(true);

      const state = (await boltState(page))!;
      expect(state.runId).to.equal(runId);
      expect(state.updates, 'live updates applied').to.be.above(0);

      const charts = await chartsMatchingApi(page, api, runId, 'the run page');
      expect(Math.max(...drawnMetrics(charts).map((m) => charts[m]!.t.length)), 'points of the longest chart').to.be.at.least(3);
      await expectChartElements(page, charts);

      expect(await page.locator('[data-testid=dag]').count(), 'the DAG').to.equal(1);
      expect(await page.locator('[data-testid=skew][data-task-id="line-up"]').getAttribute('data-count'), 'starts in the line-up skew').to.equal('3');

      // A failed host's result, then another host's: each shows its own output.
      const result = page.locator('[data-testid=result]');
      await page.locator('[data-testid=cell][data-host="c2"][data-task="flaky"]').click();
      await result.waitFor({ state: 'visible', timeout: 10_000 });
      await eventually(async () => ((await result.locator('[data-testid=stderr-tail]').textContent()) ?? '').includes('disk full on c2') ? true : undefined, 10_000, 'c2\'s stderr tail');
      expect((await result.locator('[data-testid=result-exit-code]').textContent())?.trim()).to.equal('7');
      expect(await result.locator('[data-testid=stdout-tail]').textContent()).to.include('checking the disk on c2');
      await screenshot(page, 'run-page');

      await page.locator('[data-testid=cell][data-host="c0"][data-task="flaky"]').click();
      await eventually(async () => ((await result.locator('[data-testid=stdout-tail]').textContent()) ?? '').includes('ok on c0') ? true : undefined, 10_000, 'c0\'s stdout tail');
      expect((await result.locator('[data-testid=result-exit-code]').textContent())?.trim()).to.equal('0');
      expect(await result.locator('[data-testid=stdout-tail]').textContent()).to.include('checking the disk on c0');
      expect(await result.locator('[data-testid=stderr-tail]').textContent()).to.not.include('disk full');

      // Every state the page showed is one of the contract's (every host is a target of every task).
      const taskStatesSeen = [...new Set(seen.flatMap((s) => Object.values(s.tasks)))];
      expect(taskStatesSeen.filter((x) => !TASK_STATES.has(x)), 'task states outside pending|running|succeeded|failed|cancelled').to.deep.equal([]);
      const cellsSeen = [...new Set(seen.flatMap((s) => s.cells))].sort();
      expect(cellsSeen.filter((c) => !CELL_STATES.has(c.slice(c.lastIndexOf(' ') + 1))), 'cells whose state is outside pending|running|ok|failed|timedout|cancelled|lost').to.deep.equal([]);
      endedRunId = runId;
    } finally {
      await page.close();
    }
    expectNoPageErrors(errorsBefore);
  });

  it('lists the run (filtered by state and job), the hosts and the plugins', async () => {
    const runId = await endedRun();
    const errorsBefore = browser.pageErrors().length;
    const sink = await fleet.sink();
    const page = await openDashboard(browser.context, sink, '/runs');
    try {
      const row = page.locator(`[data-testid=run-row][data-run-id="${runId}"]`);
      await row.waitFor({ timeout: 10_000 });
      expect(await row.getAttribute('data-state')).to.equal('failed');
      expect(await row.textContent()).to.include(JOB_NAME);

      await page.locator('[data-testid=filter-state]').selectOption('succeeded');
      await row.waitFor({ state: 'detached', timeout: 10_000 });
      await page.locator('[data-testid=filter-state]').selectOption('failed');
      await row.waitFor({ timeout: 10_000 });
      for (const r of await page.locator('[data-testid=run-row]').all()) expect(await r.getAttribute('data-state'), 'a row under the filter failed').to.equal('failed');
      const job = page.locator('[data-testid=filter-job]');
      await job.fill('no-such-job');
      await job.press('Enter');
      await row.waitFor({ state: 'detached', timeout: 10_000 });
      await job.fill(JOB_NAME);
      await job.press('Enter');
      await row.waitFor({ timeout: 10_000 });
      await screenshot(page, 'runs');

      await page.goto(`${sink.url}/#/hosts`);
      await eventually(async () => {
        const rows = await page.locator('[data-testid=host-row]').evaluateAll((els) => els.map((el) => `${el.getAttribute('data-host')} ${el.getAttribute('data-state')}`));
        return HOSTS.every((h) => rows.includes(`${h} healthy`)) ? rows : undefined;
      }, 10_000, 'c0, c1, c2 healthy on the hosts page');
      await screenshot(page, 'hosts');

      await page.goto(`${sink.url}/#/plugins`);
      await eventually(async () => {
        const rows = await page.locator('[data-testid=plugin-row]').evaluateAll((els) => els.map((el) => `${el.getAttribute('data-plugin')} ${el.getAttribute('data-state')}`));
        return ['transport-ws', 'scheduler-dag', 'writer-sqlite', 'ui-dashboard'].every((p) => rows.includes(`${p} running`)) ? rows : undefined;
      }, 10_000, 'transport-ws, scheduler-dag, writer-sqlite and ui-dashboard running on the plugins page');
      // Each client's own plugin table, from its heartbeats.
      await eventually(async () => {
        const rows = await page.locator('[data-testid=host-plugins-row]').evaluateAll((els) => els.map((el) => `${el.getAttribute('data-host')} ${el.getAttribute('data-state')} ${el.children[1]?.textContent}`));
        return ['c0', 'c1', 'c2'].every((c) => rows.some((r) => new RegExp(`^${c} ok (\\d+)/\\1$`).test(r) && Number(r.split(' ')[2]!.split('/')[0]) >= 2)) ? rows : undefined;
      }, 15_000, 'the plugins of c0, c1 and c2 all running on the plugins page');
      await screenshot(page, 'plugins');
    } finally {
      await page.close();
    }
    expectNoPageErrors(errorsBefore);
  });

  it('writes the run as one HTML file (bolt-core report, GET /api/runs/:id/report.html) that shows the same figures with networking blocked', async () => {
    const runId = await endedRun();
    const errorsBefore = browser.pageErrors().length;
    const sink = await fleet.sink();
    const api = await fleet.sinkApi();

    // The run page's figures of the ended run, to hold the report against.
    const page = await openDashboard(browser.context, sink, `/runs/${runId}`);
    let pageCharts: Charts;
    let pageTasks: Record<string, string>;
    try {
      pageCharts = await chartsMatchingApi(page, api, runId, 'the run page of the ended run');
      pageTasks = await taskStates(page);
      expect(pageTasks).to.deep.equal(FINAL_TASKS);
      await screenshot(page, 'run-page-ended');
    } finally {
      await page.close();
    }

    const fromCli = path.join(fleet.dir, 'report.html');
    const r = await runCli(['report', runId, '--out', fromCli, '--sink', fleet.sinkUrl, '--data', fleet.serverData]).result;
    expect(r.code, `bolt-core report: ${r.stderr}`).to.equal(0);
    expect((await stat(fromCli)).size).to.be.above(0);

    const res = await fetch(`${sink.url}/api/runs/${encodeURIComponent(runId)}/report.html`, { headers: { authorization: `Bearer ${sink.token}` } });
    expect(res.status).to.equal(200);
    expect(res.headers.get('content-type') ?? '').to.match(/^text\/html/);
    const fromApi = path.join(fleet.dir, 'report-api.html');
    await writeFile(fromApi, await res.text());
    expect((await fetch(`${sink.url}/api/runs/${encodeURIComponent(runId)}/report.html`)).status, 'the report without the token').to.equal(401);
    expect((await fetch(`${sink.url}/api/runs/no-such-run/report.html`, { headers: { authorization: `Bearer ${sink.token}` } })).status, 'the report of an unknown run').to.equal(404);

    for (const [file, name] of [[fromCli, 'report'], [fromApi, 'report-api']] as const) {
      const { context, attempts } = await offlineContext(browser);
      try {
        const report = await context.newPage();
        await report.goto(pathToFileURL(file).href);
        await eventually(async () => ((await report.locator('[data-testid=task]').count()) === TASKS.length ? true : undefined), 10_000, `${name}: its ${TASKS.length} tasks`);
        expect(await taskStates(report), `${name}: task states`).to.deep.equal(pageTasks);
        expect(await report.locator('[data-testid=skew][data-task-id="line-up"]').getAttribute('data-count'), `${name}: starts in the line-up skew`).to.equal('3');
        const charts = (await boltState(report))?.charts ?? {};
        expect(drawnMetrics(charts), `${name}: charted metrics`).to.deep.equal(drawnMetrics(pageCharts));
        expect(await chartProblems(api, runId, charts), `${name}: chart points that are not the API's numbers`).to.deep.equal([]);
        for (const m of drawnMetrics(charts)) expect(charts[m]!.t, `${name}: ${m} instants, as on the run page`).to.deep.equal(pageCharts[m]!.t);
        await expectChartElements(report, charts);
        await screenshot(report, name);
        expect(attempts, `${name}: network requests attempted`).to.deep.equal([]);
      } finally {
        await context.close();
      }
    }
    expectNoPageErrors(errorsBefore);
  });
});
