/**
 * A run's metrics through the sink's real HTTP API and `bolt-core show RUN --metrics`, with the
 * samples sent by two hosts over the real protocol to a `bolt-core start` process.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { BIN, eventually } from '../../../test/helpers/processes.ts';
import type { FleetSeriesView, StatSeriesView } from '../services.ts';
import type { RunMetricsSummary } from '../store.ts';
import { startSinkProcess, type SinkProcess } from './sink-process.ts';
import { parseCsv } from './csv.ts';

const execFileAsync = promisify(execFile);
const RUN = 'run-cli';
const T0 = 1_800_000_000_000;

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [BIN, ...args], { timeout: 30_000, maxBuffer: 64 * 1024 * 1024 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

describe('writer-sqlite through the sink API and bolt-core show --metrics', function () {
  this.timeout(60_000);
  let sink: SinkProcess;

  before(async () => {
    sink = await startSinkProcess(['transport-ws', 'health-monitor', 'writer-sqlite']);
    const hosts = [await sink.connectHost('web-1'), await sink.connectHost('web-2')];
    for (let second = 0; second < 3; second++) {
      hosts.forEach((host, h) => {
        host.sendBatch([
          { t: T0 + second * 1000 + 10 * h, metric: 'cpu.busy', value: 10 * (h + 1) + second, tags: { task: 'load' } },
          { t: T0 + second * 1000 + 10 * h, metric: 'net.rx_bytes', value: 1_000_000 * (h + 1), tags: { task: 'load', iface: 'eth0' } },
        ], RUN, `${host.name}-s${second}`);
      });
    }
    // web-1 resends its first batch after a reconnect: stored once, counted once.
    hosts[0]!.sendBatch([{ t: T0, metric: 'cpu.busy', value: 10, tags: { task: 'load' } }, { t: T0, metric: 'net.rx_bytes', value: 1_000_000, tags: { task: 'load', iface: 'eth0' } }], RUN, 'web-1-s0');
    hosts[1]!.sendBatch([{ t: T0 + 5000, metric: 'cpu.busy', value: 1 }], RUN, 'web-2-idle');
    await eventually(async () => {
      const answer = await sink.get(`/api/runs/${RUN}/metrics?agg=summary`);
      const summary = JSON.parse(answer.text) as RunMetricsSummary;
      return summary.rows.filter((r) => r.host === null).reduce((n, r) => n + r.count, 0) === 13 ? true : undefined;
    }, 20_000, 'every sample at the sink');
  });

  after(async () => {
    await sink?.close();
  });

  it('GET /api/runs/:id/metrics: aggregates across hosts without host, raw series with it', async () => {
    const fleet = JSON.parse((await sink.get(`/api/runs/${RUN}/metrics?metric=cpu.busy`)).text) as FleetSeriesView[];
    expect(fleet.map((s) => [s.task, s.t, s.count, s.min, s.max, s.sum])).to.deep.equal([
      [null, [T0 + 5000], [1], [1], [1], [1]],
      ['load', [T0, T0 + 1000, T0 + 2000], [2, 2, 2], [10, 11, 12], [20, 21, 22], [30, 32, 34]],
    ]);
    const p95 = JSON.parse((await sink.get(`/api/runs/${RUN}/metrics?metric=net.rx_bytes&task=load&agg=p95&from=${T0 + 1000}`)).text) as StatSeriesView[];
    expect(p95).to.deep.equal([{ metric: 'net.rx_bytes', task: 'load', tags: { iface: 'eth0' }, bucketMs: 1000, stat: 'p95', t: [T0 + 1000, T0 + 2000], values: [2_000_000, 2_000_000] }]);
    const raw = JSON.parse((await sink.get(`/api/runs/${RUN}/metrics?metric=cpu.busy&host=web-1`)).text) as Array<{ host: string; values: number[] }>;
    expect(raw.map((s) => [s.host, s.values])).to.deep.equal([['web-1', [10, 11, 12]]]);
    const refused = await sink.get(`/api/runs/${RUN}/metrics?host=web-1&agg=fleet`);
    expect(JSON.parse(refused.text)).to.have.nested.property('error.code', 'BOLT_ERR_METRICS_BAD_QUERY');
  });

  it('bolt-core show RUN --metrics prints the summary per task and host, as a table and as JSON', async () => {
    const common = ['--sink', sink.sinkUrl, '--data', sink.dataDir];
    const table = await cli(['show', RUN, '--metrics', ...common]);
    expect(table.stderr).to.equal('');
    expect(table.code).to.equal(0);
    const lines = table.stdout.split('\n');
    expect(lines[0]).to.contain(`run ${RUN}: metrics per task and host`);
    expect(lines[2]).to.match(/^TASK\s+HOST\s+METRIC\s+TAGS\s+SAMPLES\s+MIN\s+MEAN\s+P50\s+P95\s+MAX$/);
    expect(lines.slice(3).filter((l) => l !== '').map((l) => l.split(/\s{2,}/))).to.deep.equal([
      ['-', '(all)', 'cpu.busy', '-', '1', '1', '1', '1', '1', '1'],
      ['-', 'web-2', 'cpu.busy', '-', '1', '1', '1', '1', '1', '1'],
      ['load', '(all)', 'cpu.busy', '-', '6', '10', '16', '12', '22', '22'],
      ['load', '(all)', 'net.rx_bytes', 'iface=eth0', '6', '1M', '1.5M', '1M', '2M', '2M'],
      ['load', 'web-1', 'cpu.busy', '-', '3', '10', '11', '11', '12', '12'],
      ['load', 'web-1', 'net.rx_bytes', 'iface=eth0', '3', '1M', '1M', '1M', '1M', '1M'],
      ['load', 'web-2', 'cpu.busy', '-', '3', '20', '21', '21', '22', '22'],
      ['load', 'web-2', 'net.rx_bytes', 'iface=eth0', '3', '2M', '2M', '2M', '2M', '2M'],
    ]);
    const json = await cli(['show', RUN, '--metrics', '--json', ...common]);
    expect(json.code).to.equal(0);
    const summary = JSON.parse(json.stdout) as RunMetricsSummary;
    expect(summary).to.include({ runId: RUN, bucketMs: 1000 });
    expect(summary.rows).to.have.length(8);

    const unknown = await cli(['show', 'no-such-run', '--metrics', ...common]);
    expect(unknown).to.include({ code: 0 });
    expect(unknown.stdout).to.contain('has no metrics');
    expect(await cli(['show', RUN, '--csv', ...common])).to.include({ code: 2 });
  });

  it('bolt-core show RUN --metrics --csv writes every stored sample once', async () => {
    const csv = await cli(['show', RUN, '--metrics', '--csv', '--sink', sink.sinkUrl, '--data', sink.dataDir]);
    expect(csv.stderr).to.equal('');
    expect(csv.code).to.equal(0);
    const rows = parseCsv(csv.stdout);
    expect(rows[0]).to.deep.equal(['metric', 't', 'host', 'task', 'tags', 'value']);
    expect(rows.slice(1)).to.deep.equal([
      ['cpu.busy', String(T0), 'web-1', 'load', '{}', '10'],
      ['cpu.busy', String(T0 + 1000), 'web-1', 'load', '{}', '11'],
      ['cpu.busy', String(T0 + 2000), 'web-1', 'load', '{}', '12'],
      ['net.rx_bytes', String(T0), 'web-1', 'load', '{"iface":"eth0"}', '1000000'],
      ['net.rx_bytes', String(T0 + 1000), 'web-1', 'load', '{"iface":"eth0"}', '1000000'],
      ['net.rx_bytes', String(T0 + 2000), 'web-1', 'load', '{"iface":"eth0"}', '1000000'],
      ['cpu.busy', String(T0 + 10), 'web-2', 'load', '{}', '20'],
      ['cpu.busy', String(T0 + 1010), 'web-2', 'load', '{}', '21'],
      ['cpu.busy', String(T0 + 2010), 'web-2', 'load', '{}', '22'],
      ['cpu.busy', String(T0 + 5000), 'web-2', '', '{}', '1'],
      ['net.rx_bytes', String(T0 + 10), 'web-2', 'load', '{"iface":"eth0"}', '2000000'],
      ['net.rx_bytes', String(T0 + 1010), 'web-2', 'load', '{"iface":"eth0"}', '2000000'],
      ['net.rx_bytes', String(T0 + 2010), 'web-2', 'load', '{"iface":"eth0"}', '2000000'],
    ]);
  });
});
