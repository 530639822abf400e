/**
 * A real browser for the dashboard tests: Debian's chromium (test/setup.sh installs it) driven by
 * playwright-core, headless, with a fresh profile directory per launch; the dashboard login; a
 * context with every network request blocked (for reports); and the folder where a test run keeps
 * its screenshots.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext, type BrowserContextOptions, type Page } from 'playwright-core';
import type { ServerApi } from '../../core/cli/server-api.ts';
import { eventually } from './processes.ts';

/** The chromium binary; BOLT_CHROMIUM overrides it. */
export const CHROMIUM = process.env.BOLT_CHROMIUM ?? '/usr/bin/chromium';

/** Switches every launch gets (Playwright adds `--headless` and `--user-data-dir=<the fresh profile>`). */
export const CHROMIUM_ARGS: readonly string[] = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'];

/** Page size of every context: what the screenshots show. */
export const VIEWPORT = { width: 1400, height: 900 } as const;

/** `window.__bolt`, the state the dashboard page and the report keep for tests (DASHBOARD-CONTRACT). */
export interface BoltPageState {
  runId?: string;
  charts: Record<string, { t: number[]; p50: (number | null)[]; p95: (number | null)[]; max: (number | null)[] }>;
  /** Live updates applied so far. */
  updates: number;
  /** Time the last update was drawn minus the newest event time it carried, ms (both epoch ms). */
  lastUpdateLagMs: number;
  /** The last 120 update durations, receive → drawn, ms. */
  frameMs: number[];
}

/** `window.__bolt.charts`: per metric, the instants and the p50, p95 and max bands drawn. */
export type Charts = BoltPageState['charts'];

export interface TestBrowser {
  /** The context of the fresh profile (the dashboard's login cookie lives here). */
  readonly context: BrowserContext;
  /** The profile directory chromium was started with (`--user-data-dir`), removed by close(). */
  readonly userDataDir: string;
  /** Another context of the same browser, sharing nothing with `context` (no cookies, no cache). */
  newContext(options?: BrowserContextOptions): Promise<BrowserContext>;
  /** Uncaught errors of every page opened so far, as `URL: message`. */
  pageErrors(): string[];
  close(): Promise<void>;
}

/**
 * Starts chromium headless with CHROMIUM_ARGS and a fresh profile directory. Playwright refuses
 * `--user-data-dir` in `launch()` args (it makes a profile of its own there), so the profile is
 * passed to `launchPersistentContext`, which starts chromium with `--user-data-dir=<it>`.
 */
export async function launchBrowser(): Promise<TestBrowser> {
  const userDataDir = mkdtempSync(path.join(os.tmpdir(), 'bolt-chromium-profile-'));
  const errors: string[] = [];
  const watch = (context: BrowserContext) => context.on('page', (page) => page.on('pageerror', (err) => errors.push(`${page.url()}: ${err.message}`)));
  let context: BrowserContext;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: [...CHROMIUM_ARGS],
      viewport: VIEWPORT,
      timeout: 30_000,
    });
  } catch (err) {
    rmSync(userDataDir, { recursive: true, force: true });
    throw new Error(`could not start ${CHROMIUM} (test/setup.sh installs it with apt-get): ${(err as Error).message}`);
  }
  watch(context);
  const browser = context.browser()!;
  return {
    context,
    userDataDir,
    async newContext(options = {}) {
      const other = await browser.newContext({ viewport: VIEWPORT, ...options });
      watch(other);
      return other;
    },
    pageErrors: () => [...errors],
    async close() {
      await context.close().catch(() => {});
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/** Where the dashboard of a sink answers, and the token its API takes (`<data>/plugins/transport-ws/api-token`). */
export interface SinkAccess {
  /** e.g. http://127.0.0.1:7701 (no trailing slash). */
  url: string;
  token: string;
}

/**
 * Opens the dashboard in a new page of `context` as a user does: `GET /?token=TOKEN` once (the sink
 * answers with a cookie and a redirect to `/`), then the page's `#<route>` (e.g. `/runs/ID`).
 * Throws when the login does not end on the page with status 200.
 */
export async function openDashboard(context: BrowserContext, sink: SinkAccess, route = '/runs'): Promise<Page> {
  const page = await context.newPage();
  const landed = await page.goto(`${sink.url}/?token=${encodeURIComponent(sink.token)}`);
  if (landed === null || landed.status() !== 200) {
    const body = landed === null ? '' : (await landed.text().catch(() => '')).slice(0, 500);
    throw new Error(`dashboard login at ${sink.url}/?token=… answered ${landed?.status() ?? 'nothing'} (${page.url()}): ${body}`);
  }
  await page.goto(`${sink.url}/#${route}`);
  return page;
}

/** What an offline context saw: requests for anything but file:, data:, blob: and about: URLs. */
export interface OfflineContext {
  context: BrowserContext;
  /** `METHOD URL` of every network request or WebSocket attempted (and refused). */
  attempts: string[];
}

/**
 * A context with networking off (`offline: true`) and every http(s) request aborted by a route,
 * recording whatever was attempted: a self-contained file must leave `attempts` empty.
 */
export async function offlineContext(browser: TestBrowser): Promise<OfflineContext> {
  const context = await browser.newContext({ offline: true });
  const attempts: string[] = [];
  const local = /^(file|data|blob|about):/;
  context.on('request', (req) => {
    if (!local.test(req.url())) attempts.push(`${req.method()} ${req.url()}`);
  });
  context.on('page', (page) => page.on('websocket', (ws) => attempts.push(`WEBSOCKET ${ws.url()}`)));
  await context.route('**', (route) => (local.test(route.request().url()) ? route.continue() : route.abort('internetdisconnected')));
  return { context, attempts };
}

let screenshots: string | undefined;

/**
 * The folder of this test process's screenshots (BOLT_SCREENSHOT_DIR, or a new
 * `<tmp>/bolt-screenshots-<time>`), created and printed the first time it is asked for.
 */
export function screenshotDir(): string {
  if (screenshots === undefined) {
    screenshots = process.env.BOLT_SCREENSHOT_DIR ?? path.join(os.tmpdir(), `bolt-screenshots-${new Date().toISOString().replace(/[:.]/g, '-')}`);
    mkdirSync(screenshots, { recursive: true });
    console.log(`      screenshots: ${screenshots}`);
  }
  return screenshots;
}

/** Saves a full-page PNG of `page` as `<screenshotDir>/<name>.png` and returns its path. */
export async function screenshot(page: Page, name: string): Promise<string> {
  const file = path.join(screenshotDir(), `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** The page's `window.__bolt`, or null while the page has not set it. */
export function boltState(page: Page): Promise<BoltPageState | null> {
  return page.evaluate('window.__bolt ?? null') as Promise<BoltPageState | null>;
}

/** One series of the sink API's `GET /api/runs/:id/metrics?agg=fleet` (plugins/writer-sqlite/query.ts). */
export interface FleetSeries {
  metric: string;
  task: string | null;
  tags: Record<string, string>;
  bucketMs: number;
  t: number[];
  p50: number[];
  p95: number[];
  max: number[];
}

/** The charted metrics that have at least one point, sorted. */
export function drawnMetrics(charts: Charts): string[] {
  return Object.keys(charts).filter((m) => (charts[m]?.t.length ?? 0) > 0).sort();
}

const sameNumber = (a: number, b: number) => Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(b));

/**
 * Checks drawn charts against the sink's API (`api`: the sink's base URL with the token): every
 * point (t, p50, p95, max) of every chart must be a bucket that `agg=fleet` gives for that metric,
 * in any of its task and tag series. Points with all three values null are gaps and skipped.
 * Returns one line per point that is not the API's, or ['no chart has a point'].
 */
export async function chartProblems(api: ServerApi, runId: string, charts: Charts): Promise<string[]> {
  const problems: string[] = [];
  const metrics = drawnMetrics(charts);
  if (metrics.length === 0) return ['no chart has a point'];
  for (const metric of metrics) {
    const chart = charts[metric]!;
    const series = await api.get<FleetSeries[]>(`/api/runs/${encodeURIComponent(runId)}/metrics?agg=fleet&metric=${encodeURIComponent(metric)}`);
    for (const [i, t] of chart.t.entries()) {
      const drawn = [chart.p50[i], chart.p95[i], chart.max[i]];
      if (drawn.every((v) => v === null || v === undefined)) continue;
      const found = series.some((s) => {
        const j = s.t.indexOf(t);
        return j >= 0 && [s.p50[j]!, s.p95[j]!, s.max[j]!].every((v, k) => typeof drawn[k] === 'number' && sameNumber(drawn[k], v));
      });
      if (!found) {
        const there = series.flatMap((s) => {
          const j = s.t.indexOf(t);
          return j < 0 ? [] : [`task ${s.task} ${JSON.stringify(s.tags)}: ${s.p50[j]}/${s.p95[j]}/${s.max[j]}`];
        });
        problems.push(`${metric} at t=${t}: drawn p50/p95/max ${drawn.join('/')}; the API has ${there.length > 0 ? there.join('; ') : 'no bucket at that t'}`);
      }
    }
  }
  return problems;
}

/**
 * Waits (up to 20 s) until every chart on the page (`[data-testid=chart]`) has points in
 * window.__bolt.charts and chartProblems finds none; returns the charts. The error names the
 * points that still differed.
 */
export async function chartsMatchingApi(page: Page, api: ServerApi, runId: string, what: string): Promise<Charts> {
  let last: string[] = [];
  try {
    return await eventually(async () => {
      const charts = (await boltState(page))?.charts ?? {};
      const shown = await page.locator('[data-testid=chart]').evaluateAll((els) => els.map((el) => el.getAttribute('data-metric') ?? ''));
      const drawn = drawnMetrics(charts);
      last = shown.filter((m) => !drawn.includes(m)).map((m) => `the ${m} chart has no point`);
      if (last.length === 0) last = await chartProblems(api, runId, charts);
      return last.length === 0 ? charts : undefined;
    }, 20_000, `${what}: chart points equal to the sink API's agg=fleet numbers`);
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${last.slice(0, 10).join('\n')}`);
  }
}
