/**
 * exporter-prometheus: its output parses with a strict Prometheus text-format parser and says
 * what happened on the bus, through a real core with writer-sqlite, and through the sink's real
 * HTTP port (`GET /metrics`) of a `bolt-core start` process fed over the real protocol.
 */
import { expect } from 'chai';
import { startSinkCore, eventually, type SinkCore } from '../../aggregator-results/test/sink-core.ts';
import { startSinkProcess, type SinkProcess } from '../../writer-sqlite/test/sink-process.ts';
import { parsePrometheusText, valueOf, type PromFamily } from './prom-text.ts';

const T0 = 1_800_000_000_000;

describe('exporter-prometheus', function () {
  this.timeout(60_000);

  describe('the text-format parser of these tests', () => {
    it('reads a valid exposition and refuses malformed ones', () => {
      const good = [
        '# HELP a_total Things, with a \\\\ backslash',
        '# TYPE a_total counter',
        'a_total{x="q\\"uote\\\\d\\nl",y=""} 3',
        '# TYPE h histogram',
        'h_bucket{le="0.1"} 1',
        'h_bucket{le="+Inf"} 2',
        'h_sum 0.3',
        'h_count 2',
        'g NaN',
        '',
      ].join('\n');
      const families = parsePrometheusText(good);
      expect(valueOf(families, 'a_total', { x: 'q"uote\\d\nl', y: '' })).to.equal(3);
      expect(families.get('a_total')!.help).to.equal('Things, with a \\ backslash');
      expect(families.get('h')!.type).to.equal('histogram');
      for (const bad of [
        'a 1',
        'a 1\nb 2\na 3\n',
        'a{x="1",x="2"} 1\n',
        'a{x="\\t"} 1\n',
        'a{x="1"} one\n',
        '1a 1\n',
        'a{__x="1"} 1\n',
        '# TYPE a counter\na -1\n',
        'a 1\n# TYPE a gauge\n',
        'a 1\na 2\n',
        '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
        '# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n',
        '# TYPE a sometype\na 1\n',
      ]) {
        expect(() => parsePrometheusText(bad), JSON.stringify(bad)).to.throw(Error);
      }
    });
  });

  describe('through a real core', () => {
    let sink: SinkCore | undefined;

    afterEach(async () => {
      await sink?.close();
      sink = undefined;
    });

    async function scrape(): Promise<Map<string, PromFamily>> {
      return parsePrometheusText(await sink!.core.bus.request<string>('exporter.prometheus'));
    }

    it('exports the latest value per host and metric, Bolt\'s own numbers, and parses strictly', async () => {
      sink = await startSinkCore({ 'writer-sqlite': { flushIntervalMs: 20 } }, ['writer-sqlite', 'exporter-prometheus']);
      const { bus } = sink.core;
      const batch = (id: string, host: string, samples: unknown[]) => ({ hostId: `key-${host}`, id, host, runId: 'run-1', samples });
      bus.publish('sink.metrics.batch', batch('b1', 'web-1', [
        { t: T0, metric: 'cpu.busy', value: 10, tags: { task: 'load' } },
        { t: T0, metric: 'cpu.busy', value: 11, tags: { task: 'load', core: '0' } },
        { t: T0, metric: 'fs.used_pct', value: 40, tags: { task: 'load', mount: '/srv/"data"\\x' } },
      ]));
      bus.publish('sink.metrics.batch', batch('b2', 'web-1', [{ t: T0 + 1000, metric: 'cpu.busy', value: 20, tags: { task: 'load' } }]));
      // A late resend of an older sample does not replace the newer value.
      bus.publish('sink.metrics.batch', batch('b0', 'web-1', [{ t: T0 - 1000, metric: 'cpu.busy', value: 5, tags: { task: 'load' } }]));
      bus.publish('sink.metrics.batch', batch('b3', 'web-2', [
        { t: T0, metric: 'cpu.busy', value: 30 },
        { t: T0, metric: 'bolt.dropped_samples', value: 120 },
      ]));
      bus.publish('sink.metrics.batch', batch('b4', 'web-2', [{ t: T0 + 1000, metric: 'bolt.dropped_samples', value: 30 }]));
      bus.publish('host.state', { id: 'key-web-1', name: 'web-1', from: null, to: 'healthy' });
      bus.publish('host.state', { id: 'key-web-2', name: 'web-2', from: null, to: 'healthy' });
      bus.publish('host.state', { id: 'key-web-2', name: 'web-2', from: 'healthy', to: 'missing' });
      bus.publish('run.updated', { run: { id: 'run-1', state: 'running', createdAt: T0 } });
      bus.publish('run.updated', { run: { id: 'run-0', state: 'succeeded', createdAt: T0 - 5000 } });
      bus.publish('run.task.dispatched', { runId: 'run-1', taskId: 'load', commandId: 'c1', targets: [], startAt: null, timeoutMs: 1000, failure: null, dispatchedAt: T0 });
      bus.publish('task.ack', { hostId: 'key-web-1', ref: 'c1', runId: 'run-1', taskId: 'load', accepted: true });
      bus.publish('task.ack', { hostId: 'key-web-2', ref: 'c1', runId: 'run-1', taskId: 'load', accepted: false, code: 'BOLT_ERR_WIRE_COMMAND_EXPIRED' });

      const families = await eventually(async () => {
        const f = await scrape();
        return valueOf(f, 'bolt_sink_samples_stored_total') === 8 && valueOf(f, 'bolt_dispatch_acks_total', { accepted: 'false' }) === 1 ? f : undefined;
      }, 'every message counted');

      expect(families.get('bolt_host_cpu_busy')).to.deep.include({ type: 'gauge' });
      expect(valueOf(families, 'bolt_host_cpu_busy', { host: 'web-1' })).to.equal(20);
      expect(valueOf(families, 'bolt_host_cpu_busy', { host: 'web-1', core: '0' })).to.equal(11);
      expect(valueOf(families, 'bolt_host_cpu_busy', { host: 'web-2' })).to.equal(30);
      expect(valueOf(families, 'bolt_host_fs_used_pct', { host: 'web-1', mount: '/srv/"data"\\x' })).to.equal(40);
      expect(families.get('bolt_host_cpu_busy')!.samples.every((s) => !('task' in s.labels))).to.equal(true);
      expect(valueOf(families, 'bolt_dropped_samples_total', { host: 'web-2' })).to.equal(150);
      expect(valueOf(families, 'bolt_sink_batches_received_total')).to.equal(5);
      expect(valueOf(families, 'bolt_sink_samples_received_total')).to.equal(8);
      expect(valueOf(families, 'bolt_hosts', { state: 'healthy' })).to.equal(1);
      expect(valueOf(families, 'bolt_hosts', { state: 'missing' })).to.equal(1);
      expect(valueOf(families, 'bolt_runs', { state: 'running' })).to.equal(1);
      expect(valueOf(families, 'bolt_runs', { state: 'succeeded' })).to.equal(1);
      expect(valueOf(families, 'bolt_dispatches_total')).to.equal(1);
      expect(valueOf(families, 'bolt_dispatch_ack_seconds_count')).to.equal(2);
      expect(valueOf(families, 'bolt_dispatch_acks_total', { accepted: 'true' })).to.equal(1);
      expect(valueOf(families, 'bolt_sink_store_pending_messages')).to.equal(0);
      expect(valueOf(families, 'bolt_info', { exporter_version: '1.0.0', roles: 'sink' })).to.equal(1);
      expect(valueOf(families, 'bolt_process_resident_memory_bytes')).to.be.greaterThan(10e6);
      expect(valueOf(families, 'bolt_exporter_fleet_series')).to.equal(5);
    });

    it('holds at most maxSeries host series, counts what it refused, and forgets stale ones', async () => {
      sink = await startSinkCore({ 'exporter-prometheus': { maxSeries: 3, staleAfterMs: 1000, metrics: ['cpu.*', 'mem.used'] } }, ['exporter-prometheus']);
      const { bus } = sink.core;
      for (let h = 0; h < 4; h++) {
        bus.publish('sink.metrics.batch', { id: `b${h}`, host: `h${h}`, samples: [{ t: T0, metric: 'cpu.busy', value: h }, { t: T0, metric: 'mem.used', value: h }, { t: T0, metric: 'load.1', value: h }] });
      }
      const full = await eventually(async () => {
        const f = await scrape();
        return valueOf(f, 'bolt_sink_batches_received_total') === 4 ? f : undefined;
      }, 'four batches');
      expect(valueOf(full, 'bolt_exporter_fleet_series')).to.equal(3);
      expect(valueOf(full, 'bolt_exporter_fleet_refused_samples_total')).to.equal(5);
      expect(full.has('bolt_host_load_1'), 'load.1 is not among the exported metrics').to.equal(false);
      // Nothing more arrives: after staleAfterMs every series is gone, and new ones fit again.
      await eventually(async () => (valueOf(await scrape(), 'bolt_exporter_fleet_series') === 0 ? true : undefined), 'stale series removed');
      bus.publish('sink.metrics.batch', { id: 'b9', host: 'h9', samples: [{ t: T0, metric: 'cpu.busy', value: 9 }] });
      const after = await eventually(async () => {
        const f = await scrape();
        return valueOf(f, 'bolt_host_cpu_busy', { host: 'h9' }) === 9 ? f : undefined;
      }, 'a new series after the stale ones left');
      expect(valueOf(after, 'bolt_host_cpu_busy', { host: 'h0' })).to.equal(undefined);
    });
  });

  describe('through the sink port of bolt-core start', () => {
    let proc: SinkProcess | undefined;

    after(async () => {
      await proc?.close();
    });

    it('serves GET /metrics with the token: host metrics sent over the protocol, hosts by state', async () => {
      proc = await startSinkProcess();
      const unauthorized = await proc.get('/metrics', false);
      expect(unauthorized.status).to.equal(401);
      const host = await proc.connectHost('probe-1');
      host.sendBatch([{ t: Date.now(), metric: 'cpu.busy', value: 42.5, tags: { task: 'load' } }, { t: Date.now(), metric: 'net.rx_bytes', value: 1e9, tags: { task: 'load', iface: 'eth0' } }], 'run-http');
      const families = await eventually(async () => {
        const answer = await proc!.get('/metrics');
        expect(answer.status).to.equal(200);
        expect(answer.contentType).to.match(/^text\/plain; version=0\.0\.4/);
        const f = parsePrometheusText(answer.text);
        const hosts = f.get('bolt_hosts')?.samples.reduce((n, s) => n + s.value, 0);
        return valueOf(f, 'bolt_sink_samples_stored_total') === 2 && hosts === 1 ? f : undefined;
      }, 'the batch and the host on /metrics', 20_000);
      expect(valueOf(families, 'bolt_host_cpu_busy', { host: 'probe-1' })).to.equal(42.5);
      expect(valueOf(families, 'bolt_host_net_rx_bytes', { host: 'probe-1', iface: 'eth0' })).to.equal(1e9);
      expect(valueOf(families, 'bolt_info', { exporter_version: '1.0.0', roles: 'server,sink' })).to.equal(1);
      expect(families.get('bolt_hosts')!.samples.map((s) => s.labels.state)).to.have.members(['healthy', 'degraded', 'unhealthy', 'missing', 'lost']);
    });
  });
});
