/**
 * A run as one self-contained HTML file: the dashboard's own script and styles and uPlot inlined,
 * the run's data embedded as JSON, drawn by the same renderer as the live page (app.js in report
 * mode). The file names no URL with a scheme at all, so it opens with networking disabled and
 * passes a policy of `default-src 'none'`.
 */
import type { FleetSeriesView } from '../writer-sqlite/services.ts';
import type { Asset } from './assets.ts';
import type { UiResult, UiRun } from './view.ts';

/** What the report embeds (the page reads it from `<script id="bolt-report" type="application/json">`). */
export interface ReportData {
  kind: 'report';
  /** When the report was made (epoch ms). */
  generatedAt: number;
  view: UiRun;
  /** Per metric: its aggregate series across hosts (the chart's tag set only, every task). */
  metrics: Record<string, FleetSeriesView[]>;
  /** Output of the hosts that did not succeed, by `taskId + '\n' + host` (at most `failedHostsPerTask` per task). */
  results: Record<string, UiResult>;
  /** Hosts left out of `results` because of that bound, per task. */
  resultsLeftOut: Record<string, number>;
}

/**
 * The series of a metric that its chart shows: the untagged ones (the total, in every task) when
 * there are any, else those of the first tag set in JSON order. app.js applies the same rule.
 */
export function chartSeries(series: FleetSeriesView[]): FleetSeriesView[] {
  if (series.length === 0) return series;
  const keys = series.map((s) => JSON.stringify(s.tags));
  const pick = keys.includes('{}') ? '{}' : [...keys].sort()[0]!;
  return series.filter((_, i) => keys[i] === pick);
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * Text that is safe inside a `<script>` or `<style>` element: no `</` that could end it, and no
 * `scheme://` (a slash after a colon is written `:\/` in JSON and JS strings, which read the same).
 */
function inlineSafe(text: string): string {
  return text.replace(/<\//g, '<\\/').replace(/<!--/g, '<\\!--');
}

/** JSON for a `<script type="application/json">` element: `<` escaped, no `://` written out. */
export function embedJson(data: unknown): string {
  return JSON.stringify(data).replace(/</g, '\\u003c').replace(/:\/\//g, ':\\/\\/').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
}

/** uPlot's banner names its home page with a scheme; the report keeps the credit without one. */
function uplotScript(js: string): string {
  return js.replace(/^\/\*!\s*https?:\/\/([^\s*]+)/, '/*! uPlot, $1, MIT License,');
}

/** The report's HTML. `assets` is the dashboard's file table (see assets.ts). */
export function renderReport(data: ReportData, assets: Map<string, Asset>): string {
  const file = (name: string) => {
    const asset = assets.get(name);
    if (asset === undefined) throw new Error(`dashboard asset ${name} is missing`);
    return asset.body;
  };
  const title = `Bolt run ${data.view.run.id}${data.view.run.jobName ? ` (${data.view.run.jobName})` : ''}`;
  return [
    '<!doctype html>',
    '<html lang="en">',
    '<head>',
    '<meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    `<title>${escapeHtml(title)}</title>`,
    '<link rel="icon" href="data:,">',
    `<style>${inlineSafe(file('uPlot.min.css'))}</style>`,
    `<style>${inlineSafe(file('app.css'))}</style>`,
    '</head>',
    '<body class="report">',
    '<div id="app"></div>',
    `<script type="application/json" id="bolt-report">${embedJson(data)}</script>`,
    `<script>${inlineSafe(uplotScript(file('uPlot.iife.min.js')))}</script>`,
    `<script>${inlineSafe(file('app.js'))}</script>`,
    '</body>',
    '</html>',
    '',
  ].join('\n');
}
