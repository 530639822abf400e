/**
 * exporter-prometheus: Bolt's metrics in the Prometheus text format, for an existing Prometheus
 * and Grafana to scrape. Provides `exporter.prometheus` → the text (a string); the sink's
 * transport serves it at `GET /metrics` (see README.md).
 *
 * Subscribes `sink.metrics.batch` (sink role: the live fleet view and the ingest counters),
 * `host.state`, `run.updated`, `run.task.dispatched` and `task.ack` (server role). At each scrape
 * it asks `health.summary`, `sink.store.stats` and (once) the run lists, where they are provided.
 */
import { Gauge, Counter, Registry } from 'prom-client';
import { definePlugin, metricsBatchSamples } from 'bolt-plugin-sdk';
import { FleetView, type FleetSettings, type IncomingSample } from './fleet.ts';
import { OwnMetrics, type OwnSettings } from './own.ts';

type Config = FleetSettings & OwnSettings;

export default definePlugin<Config>({
  start(ctx) {
    const { bus, config, log } = ctx;
    const registry = new Registry();
    const fleet = new FleetView(config, registry);
    const own = new OwnMetrics(bus, registry, config, { version: ctx.version, roles: ctx.roles });
    new Gauge({
      name: 'bolt_exporter_fleet_series',
      help: 'Host metric series (host, metric, tag set) the exporter holds',
      registers: [registry],
      collect() {
        fleet.expire(performance.now());
        this.set(fleet.series);
      },
    });
    new Counter({
      name: 'bolt_exporter_fleet_refused_samples_total',
      help: 'Samples of new host metric series refused because maxSeries series were held',
      registers: [registry],
      collect() {
        this.reset();
        this.inc(fleet.refused);
      },
    });

    bus.subscribe('sink.metrics.batch', (data) => {
      const batch = data as { host?: unknown; samples?: unknown; json?: unknown } | null;
      if (typeof batch?.host !== 'string') return;
      const samples = metricsBatchSamples(batch) as IncomingSample[] | undefined;
      if (samples === undefined) return;
      own.onBatch(batch.host, samples);
      fleet.add(batch.host, samples, performance.now());
    });
    bus.subscribe('host.state', (data) => own.onHostState(data));
    bus.subscribe('run.updated', (data) => own.onRunUpdated(data));
    bus.subscribe('run.task.dispatched', (data) => own.onDispatched(data, performance.now()));
    bus.subscribe('task.ack', (data) => own.onAck(data, performance.now()));
    bus.provide('exporter.prometheus', async () => {
      fleet.expire(performance.now());
      return registry.metrics();
    });
    log.info({ metrics: config.metrics, maxSeries: config.maxSeries, roles: ctx.roles }, 'serving exporter.prometheus');
  },
});
