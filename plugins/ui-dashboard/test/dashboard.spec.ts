/**
 * ui-dashboard through a real core (role sink) with writer-sqlite and aggregator-results: runs,
 * dispatches, host events and metrics go in on the bus as the transport and the scheduler publish
 * them; the ui.* services and the ui.live messages come out.
 */
import { expect } from 'chai';
import type { FleetSeriesView } from '../../writer-sqlite/services.ts';
import { eventually, startSinkCore, type SinkCore } from '../../aggregator-results/test/sink-core.ts';
import type { LiveMessage, RunMessage } from '../live.ts';
import type { ReportData } from '../report.ts';
import type { UiResult, UiRun, UiRunRow } from '../view.ts';

const COALESCE_MS = 150;

interface Target {
  id: string;
  name: string;
}

const hostsNamed = (...names: string[]): Target[] => names.map((name) => ({ id: `key-${name}`, name }));

/** Publishes what the scheduler and the clients would for one run. */
class FakeRun {
  readonly runId: string;
  readonly #sink: SinkCore;
  #n = 0;

  constructor(sink: SinkCore, runId: string) {
    this.#sink = sink;
    this.runId = runId;
  }

  updated(state: string, tasks: Array<{ id: string; needs?: string[]; start?: string; action?: string; state?: string; targets?: number }>, extra: Record<string, unknown> = {}): void {
    this.#sink.core.bus.publish('run.updated', {
      run: {
        runId: this.runId,
        job: 'web-load',
        state,
        createdAt: Date.now() - 1000,
        startedAt: Date.now() - 900,
        endedAt: state === 'running' ? null : Date.now(),
        tasks: { total: tasks.length, failed: tasks.filter((t) => t.state === 'failed').length },
        description: 'a job for the tests',
        spec: {
          name: 'web-load',
          description: 'a job for the tests',
          tasks: tasks.map((t, order) => ({ id: t.id, needs: t.needs ?? [], start: t.start ?? 'asap', action: t.action ?? 'shell', description: null, timeoutMs: 30_000, order })),
        },
        taskProgress: tasks.map((t) => ({ taskId: t.id, action: t.action ?? 'shell', state: t.state ?? 'waiting', targets: t.targets ?? 0, startAt: null, dispatchedAt: null, endedAt: null, attempts: 1 })),
        ...extra,
      },
    });
  }

  dispatch(taskId: string, targets: Target[], extra: Record<string, unknown> = {}): void {
    this.#sink.core.bus.publish('run.task.dispatched', {
      runId: this.runId, taskId, commandId: `${this.runId}:${taskId}:${++this.#n}`, targets, startAt: null, timeoutMs: 30_000,
      failure: { maxFailedHosts: { count: 0 } }, dispatchedAt: Date.now(), ...extra,
    });
  }

  /** Publishes a host's task event; returns its `at`. */
  event(taskId: string, host: Target, kind: string, extra: Record<string, unknown> = {}): number {
    const at = Date.now();
    this.#sink.core.bus.publish('sink.task.event', {
      hostId: host.id, id: `${this.runId}:${taskId}:${host.id}:${kind}`, runId: this.runId, taskId, host: host.name, kind, at,
      ...(kind === 'finished' && { exitCode: 0 }), ...extra,
    });
    return at;
  }

  metrics(host: Target, samples: Array<{ t: number; metric: string; value: number; tags?: Record<string, string> }>): void {
    this.#sink.core.bus.publish('sink.metrics.batch', { hostId: host.id, id: `${this.runId}:m:${++this.#n}`, host: host.name, runId: this.runId, samples });
  }
}

/** A cell's state in a ui.run grid. */
function cell(view: UiRun, taskId: string, host: string): string {
  const t = view.grid.tasks.indexOf(taskId);
  const h = view.grid.hosts.indexOf(host);
  if (t < 0 || h < 0) return 'absent';
  return view.grid.codes[view.grid.cells[t]!.charCodeAt(h) - 48]!;
}

describe('ui-dashboard', function () {
  this.timeout(30_000);
  let sink: SinkCore;
  const live: LiveMessage[] = [];

  before(async () => {
    sink = await startSinkCore(
      {
        'writer-sqlite': { flushIntervalMs: 20 },
        'aggregator-results': { graceMs: 200, tickMs: 20 },
        'ui-dashboard': { coalesceMs: COALESCE_MS, gatherMs: 20, maxRuns: 5, runRetentionMs: 0 },
      },
      ['writer-sqlite', 'aggregator-results', 'ui-dashboard'],
    );
    sink.core.bus.subscribe('ui.live', (data) => live.push(data as LiveMessage));
  });

  after(async () => {
    await sink?.close();
  });

  const request = <T>(service: string, data?: unknown) => sink.core.bus.request<T>(service, data, { timeoutMs: 10_000 });
  const runMessages = (runId: string) => live.filter((m): m is RunMessage => m.kind === 'run' && m.runId === runId);

  describe('ui.asset', () => {
    it('serves the page, its script and styles, and uPlot from the installed package; null for anything else', async () => {
      const page = await request<{ contentType: string; body: string }>('ui.asset', { path: 'index.html' });
      expect(page.contentType).to.equal('text/html; charset=utf-8');
      expect(page.body).to.include('<script src="ui/app.js"></script>');
      const js = await request<{ contentType: string; body: string }>('ui.asset', { path: 'app.js' });
      expect(js.contentType).to.equal('text/javascript; charset=utf-8');
      expect(js.body).to.include('window.__bolt');
      const uplot = await request<{ contentType: string; body: string }>('ui.asset', { path: 'uPlot.iife.min.js' });
      expect(uplot.body).to.match(/^\/\*! https:\/\/github\.com\/leeoniya\/uPlot/);
      expect((await request<{ contentType: string }>('ui.asset', { path: 'uPlot.min.css' })).contentType).to.equal('text/css; charset=utf-8');
      for (const path of ['plugin.json', '../plugin.json', 'index.ts', '', 'missing.js']) {
        expect(await request('ui.asset', { path }), path).to.equal(null);
      }
      expect(await request('ui.asset', {})).to.equal(null);
    });
  });

  describe('a run with a failed host, a retry and a together-task', () => {
    const run = () => new FakeRun(sink, 'run-grid');
    const web = hostsNamed('web-1', 'web-2', 'web-10', 'web-3');
    let startAt = 0;
    const offsets = [0.1, 0.25, 1.5, -0.05];

    before(async () => {
      const r = run();
      r.updated('running', [
        { id: 'prep', action: 'shell', state: 'running', targets: 4 },
        { id: 'hammer', needs: ['prep'], start: 'together', action: 'mark', state: 'waiting', targets: 4 },
        { id: 'never', needs: ['hammer'] },
      ]);
      r.dispatch('prep', web, { failure: { maxFailedHosts: { count: 1 } } });
      for (const host of web) r.event('prep', host, 'started', { startedAt: Date.now() });
      for (const host of web.slice(0, 3)) r.event('prep', host, 'finished', { durationMs: 12, stdoutTail: `hello from ${host.name}\n` });
      r.event('prep', web[3]!, 'failed', { exitCode: 2, durationMs: 30, stdoutTail: 'see http://example.test/why\n', stderrTail: 'boom: no such file\n' });
      // The scheduler retries the failed host as wire task prep.2.
      r.dispatch('prep.2', [web[3]!]);
      r.event('prep.2', web[3]!, 'started', { startedAt: Date.now() });
      r.event('prep.2', web[3]!, 'finished', { durationMs: 8, stdoutTail: 'second time lucky\n' });
      startAt = Date.now() + 50;
      r.dispatch('hammer', web, { startAt });
      web.forEach((host, i) => r.event('hammer', host, 'started', { startedAt: startAt + offsets[i]! }));
      const t0 = Math.floor(startAt / 1000) * 1000;
      web.forEach((host, i) => {
        r.metrics(host, [
          { t: t0, metric: 'cpu.busy', value: 10 * (i + 1) },
          { t: t0 + 1000, metric: 'cpu.busy', value: 20 * (i + 1) },
          { t: t0, metric: 'cpu.busy', value: 99, tags: { core: '0' } },
          { t: t0, metric: 'mem.used', value: 1e9 * (i + 1) },
        ]);
      });
      for (const host of web) r.event('hammer', host, 'finished', { durationMs: 1 });
      await eventually(async () => {
        const view = await request<UiRun>('ui.run', { runId: 'run-grid' });
        return view.tasks.find((t) => t.id === 'hammer')?.hosts.ok === 4 ? view : undefined;
      }, 'hammer finished on every host');
    });

    it('ui.run: tasks in job order with needs, states and timing; the grid as compact strings, hosts in natural order', async () => {
      const view = await request<UiRun>('ui.run', { runId: 'run-grid' });
      expect(view.run).to.deep.include({ id: 'run-grid', jobName: 'web-load', state: 'running', description: 'a job for the tests' });
      expect(view.tasks.map((t) => [t.id, t.needs, t.start, t.action])).to.deep.equal([
        ['prep', [], 'asap', 'shell'],
        ['hammer', ['prep'], 'together', 'mark'],
        ['never', ['hammer'], 'asap', 'shell'],
      ]);
      const prep = view.tasks[0]!;
      expect(prep.hosts).to.deep.equal({ total: 4, pending: 0, running: 0, ok: 4, failed: 0, timedout: 0, cancelled: 0, lost: 0 });
      expect(prep.attempts).to.equal(1, 'the scheduler\'s progress says one attempt');
      expect(prep.startedAt).to.be.a('number');
      expect(view.tasks[2]!.state).to.equal('pending');
      expect(view.tasks[2]!.hosts.total).to.equal(0);

      expect(view.grid.hosts).to.deep.equal(['web-1', 'web-2', 'web-3', 'web-10']);
      expect(view.grid.tasks).to.deep.equal(['prep', 'hammer', 'never']);
      expect(view.grid.cells).to.deep.equal(['3333', '3333', '0000']);
      expect(cell(view, 'prep', 'web-3'), 'the retry that succeeded wins').to.equal('ok');
      expect(view.metrics).to.deep.equal(['cpu.busy', 'mem.used']);
      expect(view.charts).to.deep.equal(['cpu.busy', 'mem.used']);
      expect(view.seq).to.be.a('number');
    });

    it('ui.run: start offsets of the together-task against its startAt, sorted, with the hosts', async () => {
      const view = await request<UiRun>('ui.run', { runId: 'run-grid' });
      expect(view.skew.map((s) => s.taskId)).to.deep.equal(['hammer']);
      const skew = view.skew[0]!;
      expect(skew.startAt).to.equal(startAt);
      expect(skew.count).to.equal(4);
      expect(skew.offsets).to.deep.equal([-0.05, 0.1, 0.25, 1.5]);
      expect(skew.hosts.map((i) => view.grid.hosts[i])).to.deep.equal(['web-3', 'web-1', 'web-2', 'web-10']);
      expect(skew).to.deep.include({ minMs: -0.05, maxMs: 1.5, spreadMs: 1.55, p50Ms: 0.1 });
    });

    it('ui.result: a host\'s latest attempt with its tails and the earlier attempts; null when there is none', async () => {
      const result = await request<UiResult>('ui.result', { runId: 'run-grid', taskId: 'prep', host: 'web-3' });
      expect(result).to.deep.include({ runId: 'run-grid', taskId: 'prep', host: 'web-3', attempt: 2, state: 'ok', exitCode: 0, durationMs: 8, stdoutTail: 'second time lucky\n' });
      expect(result.earlier).to.have.length(1);
      expect(result.earlier[0]).to.deep.include({ attempt: 1, state: 'failed', exitCode: 2, durationMs: 30 });
      const ok = await request<UiResult>('ui.result', { runId: 'run-grid', taskId: 'prep', host: 'web-10' });
      expect(ok).to.deep.include({ attempt: 1, state: 'ok', stdoutTail: 'hello from web-10\n', stderrTail: null, earlier: [] });
      expect(await request('ui.result', { runId: 'run-grid', taskId: 'prep', host: 'nobody' })).to.equal(null);
      expect(await request('ui.result', { runId: 'run-grid', taskId: 'never', host: 'web-1' })).to.equal(null);
      expect(await request('ui.result', { runId: 'no-such-run', taskId: 'prep', host: 'web-1' })).to.equal(null);
      expect(await request('ui.result', { runId: 'run-grid' })).to.equal(null);
      expect(await request('ui.run', { runId: 'no-such-run' })).to.equal(null);
      expect(await request('ui.run', {})).to.equal(null);
    });

    it('ui.report: one HTML file with no URL, uPlot and the dashboard inlined, the run and its metrics embedded', async () => {
      // A failed host whose output names a URL: the report must still write none.
      const r = run();
      r.dispatch('probe', web.slice(0, 2));
      r.event('probe', web[0]!, 'finished', { durationMs: 1 });
      r.event('probe', web[1]!, 'failed', { exitCode: 7, durationMs: 1, stdoutTail: 'curl: (7) https://example.test:8443/x refused\n', stderrTail: '</script><script>alert(1)</script>' });
      await eventually(async () => (cell(await request<UiRun>('ui.run', { runId: 'run-grid' }), 'probe', 'web-2') === 'failed' ? true : undefined), 'probe failed on web-2');

      const html = await request<string>('ui.report', { runId: 'run-grid' });
      expect(html).to.match(/^<!doctype html>/);
      expect(html, 'no URL with a scheme').to.not.match(/[a-z][a-z0-9+.-]*:\/\//i);
      expect(html, 'nothing to load but data: URLs').to.not.match(/\b(src|href)=(?!["']?data:)/i);
      expect(html).to.include('<title>Bolt run run-grid (web-load)</title>');
      expect(html).to.include('var uPlot=function()');
      expect(html).to.include('window.__bolt');
      const scripts = [...html.matchAll(/<script\b[^>]*>/g)].length;
      expect(scripts, 'three script elements: the data, uPlot, the dashboard').to.equal(3);

      const json = /<script type="application\/json" id="bolt-report">([\s\S]*?)<\/script>/.exec(html)![1]!;
      const data = JSON.parse(json) as ReportData;
      expect(data.kind).to.equal('report');
      expect(data.view.run.id).to.equal('run-grid');
      expect(data.view.tasks.map((t) => t.id)).to.deep.equal(['prep', 'hammer', 'never', 'probe']);
      expect(data.view.skew[0]!.offsets).to.deep.equal([-0.05, 0.1, 0.25, 1.5]);
      expect(Object.keys(data.metrics)).to.deep.equal(['cpu.busy', 'mem.used']);
      const fleet = await request<FleetSeriesView[]>('sink.metrics', { runId: 'run-grid', metric: 'cpu.busy', agg: 'fleet' });
      expect(data.metrics['cpu.busy'], 'the untagged series, as the API answers it').to.deep.equal(fleet.filter((s) => JSON.stringify(s.tags) === '{}'));
      expect(data.metrics['cpu.busy']![0]!.max).to.deep.equal([40, 80]);
      expect(Object.keys(data.results)).to.deep.equal(['probe\nweb-2']);
      expect(data.results['probe\nweb-2']).to.deep.include({ state: 'failed', exitCode: 7, stdoutTail: 'curl: (7) https://example.test:8443/x refused\n', stderrTail: '</script><script>alert(1)</script>' });

      expect(await request('ui.report', { runId: 'no-such-run' })).to.equal(null);
    });

    it('ui.runs: a row with hosts and failed tasks, filtered by state and by job name', async () => {
      const all = await request<{ runs: UiRunRow[]; partial: boolean }>('ui.runs', {});
      const row = all.runs.find((r) => r.id === 'run-grid');
      expect(row).to.deep.include({ jobName: 'web-load', state: 'running', hosts: 4, tasks: 3, tasksFailed: 0 });
      expect((await request<{ runs: UiRunRow[] }>('ui.runs', { job: 'WEB' })).runs.map((r) => r.id)).to.include('run-grid');
      expect((await request<{ runs: UiRunRow[] }>('ui.runs', { job: 'nightly' })).runs).to.deep.equal([]);
      expect((await request<{ runs: UiRunRow[] }>('ui.runs', { state: 'failed' })).runs.map((r) => r.id)).to.not.include('run-grid');
    });
  });

  describe('ui.live', () => {
    it('coalesces a burst of events into few messages that carry every change: cells, dispatches, starts, metrics', async () => {
      const r = new FakeRun(sink, 'run-live');
      const fleet = hostsNamed(...Array.from({ length: 200 }, (_, i) => `h-${i}`));
      const startAt = Date.now() + 20;
      const from = live.length;
      const began = performance.now();
      r.dispatch('go', fleet, { startAt });
      fleet.forEach((host, i) => r.event('go', host, 'started', { startedAt: startAt + i / 100 }));
      let lastEventAt = 0;
      fleet.forEach((host, i) => (lastEventAt = r.event('go', host, i % 50 === 0 ? 'failed' : 'finished', { exitCode: i % 50 === 0 ? 1 : 0 })));
      const sampledAt = Date.now() - 500;
      // A host whose clock runs ahead: its sample from "the future" counts as arrived now.
      r.metrics(fleet[0]!, [{ t: sampledAt - 500, metric: 'load.1', value: 1 }, { t: sampledAt, metric: 'load.1', value: 2 }]);
      r.metrics(fleet[1]!, [{ t: Date.now() + 60_000, metric: 'load.5', value: 2 }]);

      const messages = await eventually(() => {
        const mine = runMessages('run-live');
        const done = new Set(mine.flatMap((m) => [...(m.cells?.go?.ok ?? []), ...(m.cells?.go?.failed ?? [])]));
        return done.size === 200 && mine.some((m) => m.metrics) ? mine : undefined;
      }, 'every host final in ui.live');
      const elapsed = performance.now() - began;
      expect(live.slice(from).filter((m) => m.kind === 'run' && m.runId === 'run-live').length).to.equal(messages.length);
      // 600 bus messages; at most one ui.live message per coalesce interval (plus the first one).
      expect(messages.length).to.be.at.most(Math.ceil(elapsed / COALESCE_MS) + 1);
      expect(messages.length).to.be.below(10);
      for (let i = 1; i < messages.length; i++) {
        expect(messages[i]!.seq).to.be.above(messages[i - 1]!.seq);
        expect(messages[i]!.sentAt - messages[i - 1]!.sentAt, 'spaced by the interval').to.be.at.least(COALESCE_MS - 15);
      }

      // The latest state per cell: a host that finished is not also listed as running in a later message.
      const final = new Map<string, string>();
      for (const m of messages) for (const [state, hosts] of Object.entries(m.cells?.go ?? {})) for (const h of hosts!) final.set(h, state);
      expect(final.size).to.equal(200);
      expect([...final.values()].filter((s) => s === 'failed')).to.have.length(4);
      expect(messages.flatMap((m) => m.dispatched ?? [])).to.deep.equal([{ taskId: 'go', attempt: 1, startAt, hosts: fleet.map((h) => h.name) }]);
      const starts = new Map<string, number>();
      for (const m of messages) m.starts?.go?.hosts.forEach((h, i) => starts.set(h, m.starts!.go!.offsets[i]!));
      expect(starts.size).to.equal(200);
      expect(starts.get('h-150')).to.equal(1.5);
      const metrics = messages.filter((m) => m.metrics).at(-1)!.metrics!;
      expect(metrics.t, 'the newest sample time, as the host stamped it').to.be.above(Date.now() + 50_000);
      expect(messages.flatMap((m) => m.metrics?.names ?? [])).to.deep.equal(['load.1', 'load.5']);
      for (const m of messages) expect(m.at, 'no event instant after the message was sent').to.be.at.most(m.sentAt);
      const newest = Math.max(...messages.map((m) => m.at));
      expect(newest, 'at: the newest event instant carried').to.be.at.least(lastEventAt);
      expect(newest).to.be.below(Date.now());

      // ui.run's seq is current: a view asked for now needs no message published before it.
      const view = await request<UiRun>('ui.run', { runId: 'run-live' });
      expect(view.seq).to.be.at.least(messages.at(-1)!.seq);
      expect(view.grid.cells[0]!.replace(/3/g, '')).to.equal('4444');
      expect(view.skew[0]!.count).to.equal(200);
    });

    it('says when hosts were decided without an event (resync), and carries run and task states from run.updated', async () => {
      const r = new FakeRun(sink, 'run-resync');
      const two = hostsNamed('a', 'b');
      r.updated('running', [{ id: 'solo', state: 'running', targets: 2 }]);
      const startAt = Date.now();
      r.dispatch('solo', two, { startAt, timeoutMs: 100 });
      r.event('solo', two[0]!, 'finished', { durationMs: 1 });
      const resync = await eventually(() => runMessages('run-resync').find((m) => m.resync), 'a resync message', 5000);
      expect(resync.resync).to.equal(true);
      r.updated('failed', [{ id: 'solo', state: 'failed', targets: 2 }]);
      const ended = await eventually(() => runMessages('run-resync').find((m) => m.run?.state === 'failed'), 'the run failed');
      expect(ended.tasks?.solo).to.deep.include({ state: 'failed' });
      const view = await request<UiRun>('ui.run', { runId: 'run-resync' });
      expect(view.grid.cells).to.deep.equal(['35']);
      const rows = await eventually(() => live.find((m) => m.kind === 'runs' && m.runs.some((x) => x.id === 'run-resync' && x.state === 'failed')), 'a runs message');
      expect(rows.kind).to.equal('runs');
    });

    it('keeps at most maxRuns runs and forgets finished ones', async () => {
      for (let i = 0; i < 8; i++) {
        const r = new FakeRun(sink, `run-many-${i}`);
        r.dispatch('t', hostsNamed('x'));
        r.event('t', hostsNamed('x')[0]!, 'started');
      }
      await eventually(() => (runMessages('run-many-7').length > 0 ? true : undefined), 'the last run published');
      const stats = await request<{ runs: number }>('ui.stats');
      expect(stats.runs).to.be.at.most(5);
    });
  });

  describe('hosts and plugins', () => {
    it('ui.hosts without a health monitor: what host.state said, with each host\'s transitions; ui.host', async () => {
      const { bus } = sink.core;
      bus.publish('host.state', { id: 'key-n1', name: 'n1', from: null, to: 'healthy', at: Date.now() - 2000, reason: 'connected' });
      bus.publish('host.state', { id: 'key-n2', name: 'n2', from: null, to: 'healthy', at: Date.now() - 2000, reason: 'connected' });
      bus.publish('host.state', { id: 'key-n2', name: 'n2', from: 'healthy', to: 'missing', at: Date.now(), reason: 'no heartbeat for 15 s' });
      const message = await eventually(() => live.find((m) => m.kind === 'hosts' && m.hosts.some((h) => h.name === 'n2' && h.state === 'missing')), 'a hosts message');
      expect(message.kind).to.equal('hosts');
      const answer = await request<{ source: string; hosts: Array<{ name: string; state: string; history: unknown[] }> }>('ui.hosts');
      expect(answer.source).to.equal('host.state');
      expect(answer.hosts.map((h) => [h.name, h.state, h.history.length])).to.deep.include.members([['n1', 'healthy', 1], ['n2', 'missing', 2]]);
      const n2 = await request<{ history: Array<{ to: string }> }>('ui.host', { id: 'key-n2' });
      expect(n2.history.map((e) => e.to)).to.deep.equal(['healthy', 'missing']);
      expect(await request('ui.host', { id: 'key-nobody' })).to.equal(null);
    });

    it('ui.plugins: this process\'s plugin table and roles', async () => {
      const answer = await request<{ roles: string[]; plugins: Array<{ name: string; state: string }> }>('ui.plugins');
      expect(answer.roles).to.deep.equal(['sink']);
      expect(answer.plugins.map((p) => [p.name, p.state])).to.deep.include.members([['ui-dashboard', 'running'], ['writer-sqlite', 'running'], ['aggregator-results', 'running']]);
    });
  });
});
