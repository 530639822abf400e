/**
 * The sink role's transport: the /ingest endpoint where clients stream task events and metrics,
 * published on the bus for the sink's aggregator and writers. A sink in its own process also
 * connects to the server (role `sink`), tells it its ingest URL, and forwards `task.status`.
 */
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import type { PluginContext } from '../../../plugin-sdk/src/index.ts';
import type { MetricsBatchMessage, TaskEventMessage, TaskStatusMessage } from '../../../plugin-sdk/src/schemas/wire.ts';
import { WireClient } from '../client/connection.ts';
import { HealthSampler } from '../client/health-record.ts';
import { PinStore } from '../client/pins.ts';
import type { Identity } from '../protocol/index.ts';
import { WireEndpoint, type ConnectionHandler } from '../server/endpoint.ts';
import { EventStreamResponse, Listener, TextResponse, type RouteHandler } from '../server/listener.ts';
import { BoltError } from '../../../plugin-sdk/src/errors.ts';
import type { TrustRole, TrustStore } from '../server/trust-store.ts';
import { agentUrl, type RunningRole, type TransportSettings } from './settings.ts';
import { readFileSync } from 'node:fs';

export const DEFAULT_SINK_PORT = 7701;
const MAX_HELD_STATUSES = 10_000;

/** What a dashboard plugin's `ui.asset` service answers. */
interface UiAsset {
  contentType: string;
  body: string;
  base64?: boolean;
}

/** The dashboard's own JSON services, `ui.<name>`, reachable as GET /api/ui/<name>. */
const UI_SERVICE_NAME = /^[a-z][a-z0-9-]{0,31}$/;
const UI_ASSET_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** The dashboard loads only what this sink serves; styles may be inline (the chart library sets them). */
const PAGE_POLICY = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
/** A report carries everything inline and may load nothing at all. */
const REPORT_POLICY = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'";

function notFound(what: string): never {
  throw new BoltError('BOLT_ERR_WIRE_API_NOT_FOUND', `No ${what}.`);
}

async function uiAsset(ctx: PluginContext<TransportSettings>, file: string): Promise<TextResponse> {
  if (!UI_ASSET_NAME.test(file)) notFound(`dashboard file '${file.slice(0, 80)}'`);
  const asset = await ctx.bus.request<UiAsset | null>('ui.asset', { path: file });
  if (asset === null) notFound(`dashboard file '${file}'`);
  const body = asset.base64 ? Buffer.from(asset.body, 'base64') : asset.body;
  return new TextResponse(asset.contentType, body, asset.contentType.startsWith('text/html') ? { 'content-security-policy': PAGE_POLICY } : {});
}

/**
 * The sink's HTTP API: runs and metrics as the writer stores them, Prometheus, and the dashboard
 * (pages, its JSON views, live events and reports, all from the `ui.*` services and the `ui.live`
 * topic of a dashboard plugin). The plugins behind the bus services answer; this is only their HTTP face.
 */
function sinkRoutes(ctx: PluginContext<TransportSettings>): Map<string, RouteHandler> {
  const { bus, roles } = ctx;
  const numberOf = (text: string | null) => (text === null || text === '' || !Number.isFinite(Number(text)) ? undefined : Number(text));
  return new Map<string, RouteHandler>([
    ['/', () => uiAsset(ctx, 'index.html')],
    ['/ui/:file', (req) => uiAsset(ctx, req.params.file!)],
    ['/api/ui/:name', async (req) => {
      const name = req.params.name!;
      if (!UI_SERVICE_NAME.test(name)) notFound(`dashboard view '${name.slice(0, 80)}'`);
      const answer = await bus.request(`ui.${name}`, Object.fromEntries(req.query), { timeoutMs: 30_000 });
      if (answer === null) notFound(`${name} for ${req.query.toString().slice(0, 200) || 'that request'}`);
      return answer;
    }],
    ['/api/live', (req) => {
      const run = req.query.get('run');
      return new EventStreamResponse((sink) => bus.subscribe('ui.live', (data) => {
        const message = data as { kind?: unknown; runId?: unknown } | null;
        if (typeof message?.kind !== 'string') return;
        if (run !== null && message.runId !== undefined && message.runId !== run) return;
        sink.send(message.kind, message);
      }));
    }],
    ['/api/runs/:id/report.html', async (req) => {
      const html = await bus.request<string | null>('ui.report', { runId: req.params.id }, { timeoutMs: 60_000 });
      if (html === null) throw new BoltError('BOLT_ERR_RUN_NOT_FOUND', `The sink has no run ${req.params.id}.`);
      return new TextResponse('text/html; charset=utf-8', html, { 'content-security-policy': REPORT_POLICY });
    }],
    ['/api/health', () => ({ ok: true, roles })],
    ['/api/runs', (req) => bus.request('sink.runs', { ...(req.query.get('state') && { state: req.query.get('state') }), ...(req.query.get('job') && { job: req.query.get('job') }) })],
    ['/api/runs/:id', async (req) => {
      const run = await bus.request('sink.run', { runId: req.params.id });
      if (run === null) throw new BoltError('BOLT_ERR_RUN_NOT_FOUND', `The sink has no run ${req.params.id}.`);
      return run;
    }],
    ['/api/runs/:id/metrics', (req) => bus.request('sink.metrics', {
      runId: req.params.id,
      ...Object.fromEntries(['metric', 'host', 'task', 'agg'].flatMap((k) => (req.query.get(k) ? [[k, req.query.get(k)]] : []))),
      ...Object.fromEntries(['from', 'to'].flatMap((k) => (numberOf(req.query.get(k)) === undefined ? [] : [[k, numberOf(req.query.get(k))]]))),
    }, { timeoutMs: 30_000 })],
    ['/metrics', async () => new TextResponse('text/plain; version=0.0.4; charset=utf-8', await bus.request<string>('exporter.prometheus'))],
  ]);
}

/** Starts the sink's listener and /ingest; `standalone` when no server runs in this process. */
export async function startSinkRole(ctx: PluginContext<TransportSettings>, identity: Identity, trust: TrustStore, standalone: boolean): Promise<RunningRole & { port: number; secure: boolean }> {
  const { config: settings, options, bus, log } = ctx;
  const listener = await Listener.start({
    port: options.sinkPort ?? DEFAULT_SINK_PORT,
    ...(options.listen !== undefined && { host: options.listen }),
    ...(options.tlsCert && options.tlsKey && { tls: { certFile: options.tlsCert, keyFile: options.tlsKey } }),
    dataDir: ctx.dataDir,
    routes: sinkRoutes(ctx),
    browserLogin: true,
    onError: (err, req) => log.error({ err: String(err), path: req.path }, 'API handler failed'),
  });
  const clientHandlers = new Map<string, ConnectionHandler>([
    ['task.event', (message, conn) => {
      const { v: _v, type: _t, ...event } = message as TaskEventMessage;
      bus.publish('sink.task.event', { hostId: conn.fingerprint, ...event });
    }],
    ['metrics.batch', (message, conn, text) => {
      const { id, host, runId, samples } = message as MetricsBatchMessage;
      // The samples travel as the message's JSON text: one string to copy to each subscriber's
      // thread instead of thousands of small objects.
      bus.publish('sink.metrics.batch', { hostId: conn.fingerprint, id, host, ...(runId !== undefined && { runId }), sampleCount: samples.length, json: text });
    }],
  ]);
  const endpoint = new WireEndpoint({
    server: listener.server,
    path: '/ingest',
    identity,
    role: 'sink',
    handlers: new Map<TrustRole, Map<string, ConnectionHandler>>([['client', clientHandlers]]),
    trust,
    onOpen: (conn) => log.debug({ host: conn.hello.host, address: conn.address }, `client ${conn.hello.host} streaming to the sink`),
    onError: (err, conn) => log.warn({ err: String(err), host: conn?.hello.host }, 'ingest handler failed'),
    admission: { handshakesPerSec: settings.handshakesPerSec, burst: settings.handshakeBurst, maxInFlight: settings.maxHandshakesInFlight },
    handshakeTimeoutMs: settings.handshakeTimeoutMs,
    maxBufferedBytes: settings.maxBufferedBytes,
    // Metrics batches come in bursts; the per-connection limit is a guard against floods, not a quota.
    messagesPerSec: settings.messagesPerSec * 5,
    messageBurst: settings.messageBurst * 5,
  });

  const stopDropping = trust.onRejected((entry) => endpoint.disconnect(entry.fingerprint, entry.role));
  // Backpressure: while the writer says it is behind, /ingest stops reading, so clients keep
  // their samples in their own buffers and outboxes instead of the writer dropping them.
  const stopCongestion = bus.subscribe('sink.store.congestion', (data) => {
    const d = data as { congested?: unknown; holdMs?: unknown } | null;
    if (d?.congested === true) endpoint.pauseReading(typeof d.holdMs === 'number' ? d.holdMs : 3000);
    else endpoint.resumeReading();
  });
  let upstream: WireClient | null = null;
  let sampler: HealthSampler | null = null;
  let disposeStatus: (() => void) | null = null;
  let flushHeld = () => {};
  if (standalone && options.server) {
    const advertised = `${listener.secure ? 'wss' : 'ws'}://${options.listen && options.listen !== '0.0.0.0' && options.listen !== '::' ? options.listen : os.hostname()}:${listener.port}/ingest`;
    sampler = new HealthSampler({ dataDir: ctx.dataDir, clockOffsetMs: () => upstream?.offsetMs ?? 0 });
    const health = sampler;
    upstream = new WireClient({
      url: agentUrl(options.server),
      identity,
      host: options.name ?? os.hostname(),
      role: 'sink',
      expectRole: 'server',
      endpoint: advertised,
      pins: PinStore.open(ctx.dataDir),
      ...(options.serverKey !== undefined && { serverKey: options.serverKey }),
      ...(options.tlsCa !== undefined && { ca: readFileSync(options.tlsCa) }),
      health: () => health.sample(),
      log,
      onNotice: (notice) => bus.publish(notice.topic, notice.data),
      onConnected: () => {
        log.info({ server: options.server, advertised }, 'sink connected to the server');
        flushHeld();
      },
      onRefused: (code) => {
        if (code === 'BOLT_ERR_WIRE_PEER_NOT_ACCEPTED') log.warn({ fingerprint: identity.fingerprint }, `waiting for the server to accept this sink: bolt-core keys accept ${identity.fingerprint} --role sink`);
      },
    });
    // Statuses wait here while the server is away, and go first once it is back: the scheduler
    // moves on only when it hears them.
    const held: TaskStatusMessage[] = [];
    const flush = () => {
      while (held.length > 0 && link.send(held[0]!)) held.shift();
    };
    const link: WireClient = upstream;
    upstream.start();
    disposeStatus = bus.subscribe('task.status', (data) => {
      held.push({ v: 1, type: 'task.status', id: randomUUID(), ...(data as Omit<TaskStatusMessage, 'v' | 'type' | 'id'>) });
      if (held.length > MAX_HELD_STATUSES) log.error({ dropped: held.shift() }, `more than ${MAX_HELD_STATUSES} task statuses wait for the server; dropped the oldest`);
      flush();
    });
    flushHeld = flush;
  }
  // As a notebook server does: the address with the token is how a person gets to the dashboard.
  log.info({ url: listener.url(), ingest: listener.wsUrl('/ingest') }, `sink listening on ${listener.url()}; dashboard: ${listener.url('/')}?token=${listener.token}`);
  return {
    port: listener.port,
    secure: listener.secure,
    async close() {
      stopDropping();
      stopCongestion();
      disposeStatus?.();
      await upstream?.close();
      sampler?.close();
      await endpoint.close();
      await listener.close();
    },
  };
}
