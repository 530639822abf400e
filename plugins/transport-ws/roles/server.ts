/**
 * The server role: the HTTP API and the /agent endpoint that clients (and a separate sink) connect
 * to. It keeps the accept list, signs commands once and seals them per session, and publishes what
 * hosts send on the bus for the health monitor and the scheduler.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { PluginContext } from '../../../plugin-sdk/src/index.ts';
import { BoltError } from '../../../plugin-sdk/src/errors.ts';
import { NOTICE_TOPICS, WIRE_VERSION, type HeartbeatMessage, type TaskAckMessage, type TaskCancelMessage, type TaskDispatchMessage, type TaskStatusMessage } from '../../../plugin-sdk/src/schemas/wire.ts';
import { localClock, signCommand, type Identity } from '../protocol/index.ts';
import { clockPongHandler, WireEndpoint, type ConnectionHandler, type PeerConnection } from '../server/endpoint.ts';
import { Listener, TextResponse, type RouteHandler } from '../server/listener.ts';
import type { TrustRole, TrustStore } from '../server/trust-store.ts';
import type { RunningRole, TransportSettings } from './settings.ts';

/** What `host.connected` carries, and what `transport.sessions` lists. */
export interface HostRecord {
  id: string;
  name: string;
  role: TrustRole;
  address: string;
  labels: Record<string, string>;
  facts: Record<string, unknown>;
  sessionId: string;
  connectedAt: number;
}

const COMMAND_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;
/** Notices held for an absent separate sink at most. */
const MAX_HELD_NOTICES = 100_000;
/** Commands held for one disconnected client at most (the oldest go first). */
const MAX_HELD_PER_HOST = 64;

interface DispatchRequest {
  commandId?: string;
  runId: string;
  taskId: string;
  action: string;
  with?: Record<string, unknown>;
  startAt?: number | null;
  timeoutMs: number;
  ttlMs?: number;
  metrics?: { intervalMs: number; collect: string[] };
  targets: string[];
}

interface CancelRequest {
  runId: string;
  taskId?: string;
  targets: string[];
}

/** Where embedded sinks listen, for the welcome (a separate sink tells its own URL in its hello). */
export interface EmbeddedSink {
  port: number;
  secure: boolean;
}

function hostRecord(conn: PeerConnection): HostRecord {
  return {
    id: conn.fingerprint,
    name: conn.hello.host,
    role: conn.role,
    address: conn.address,
    labels: conn.hello.labels ?? {},
    facts: conn.hello.facts ?? {},
    sessionId: conn.sessionId,
    connectedAt: conn.connectedAt,
  };
}

function badRequest(message: string): BoltError {
  return new BoltError('BOLT_ERR_BUS_HANDLER_FAILED', message);
}

function targetsOf(data: unknown): string[] {
  const targets = (data as { targets?: unknown }).targets;
  if (!Array.isArray(targets) || !targets.every((t) => typeof t === 'string')) throw badRequest('targets must be an array of host ids');
  return targets;
}

/** `k=v` query values as a map (a Map first: keys come from the request). */
function pairs(values: string[]): Record<string, string> {
  const map = new Map<string, string>();
  for (const pair of values) {
    const eq = pair.indexOf('=');
    if (eq > 0) map.set(pair.slice(0, eq), pair.slice(eq + 1));
  }
  return Object.fromEntries(map);
}

/** The host name a client used to reach this server, for the embedded sink's URL in the welcome. */
function requestHostname(request: IncomingMessage): string {
  try {
    return new URL(`http://${request.headers.host ?? 'localhost'}`).hostname;
  } catch {
    return 'localhost';
  }
}

/** Starts the server role; `embeddedSink` is set when this process is the sink as well. */
export async function startServerRole(ctx: PluginContext<TransportSettings>, identity: Identity, trust: TrustStore, embeddedSink: EmbeddedSink | null): Promise<RunningRole> {
  const { config: settings, options, bus, log } = ctx;
  let separateSink: PeerConnection | null = null;

  const apiRoutes = new Map<string, RouteHandler>([
    ['/api/health', async () => ({
      ok: true,
      roles: ctx.roles,
      publicKey: identity.publicKeyBase64,
      fingerprint: identity.fingerprint,
      hosts: await bus.request('health.summary').catch(() => null),
    })],
    ['/api/hosts', (req) => {
      const state = req.query.get('state');
      return bus.request('health.hosts', { labels: pairs(req.query.getAll('label')), ...(state && { state }) });
    }],
    ['/api/plugins', () => bus.request('core.plugins')],
    ['/metrics', async () => new TextResponse('text/plain; version=0.0.4; charset=utf-8', await bus.request<string>('exporter.prometheus'))],
    // Runs belong to the scheduler plugin; this is only their HTTP face.
    ['POST /api/runs', (req) => {
      const json = /\bjson\b/i.test(String(req.headers['content-type'] ?? ''));
      return bus.request('scheduler.runs.create', {
        text: req.body.toString('utf8'),
        file: req.query.get('file') ?? (json ? 'job.json' : 'job.yaml'),
        vars: pairs(req.query.getAll('var')),
      }, { timeoutMs: 30_000 });
    }],
    ['GET /api/runs', () => bus.request('scheduler.runs.list')],
    ['GET /api/runs/:id', (req) => bus.request('scheduler.runs.get', { runId: req.params.id })],
    ['POST /api/runs/:id/cancel', (req) => bus.request('scheduler.runs.cancel', { runId: req.params.id })],
  ]);
  const listener = await Listener.start({
    port: options.port ?? 7700,
    ...(options.listen !== undefined && { host: options.listen }),
    ...(options.tlsCert && options.tlsKey && { tls: { certFile: options.tlsCert, keyFile: options.tlsKey } }),
    dataDir: ctx.dataDir,
    routes: apiRoutes,
    onError: (err, req) => log.error({ err: String(err), path: req.path }, 'API handler failed'),
  });

  const heartbeat: ConnectionHandler = (message, conn) => {
    const { v: _v, type: _t, id: _id, ...record } = message as HeartbeatMessage;
    bus.publish('host.heartbeat', { id: conn.fingerprint, role: conn.role, receivedAt: localClock(), ...record });
  };
  const pong = clockPongHandler();
  const clientHandlers = new Map<string, ConnectionHandler>([
    ['heartbeat', heartbeat],
    ['clock.ping', pong],
    ['task.ack', (message, conn) => {
      const { v: _v, type: _t, ...ack } = message as TaskAckMessage;
      bus.publish('task.ack', { hostId: conn.fingerprint, ...ack });
    }],
    ['error', (message, conn) => log.warn({ host: conn.hello.host, message }, 'client reported an error')],
  ]);
  const sinkHandlers = new Map<string, ConnectionHandler>([
    ['heartbeat', heartbeat],
    ['clock.ping', pong],
    ['task.status', (message) => {
      const { v: _v, type: _t, ...status } = message as TaskStatusMessage;
      bus.publish('task.status', status);
    }],
  ]);

  const endpoint = new WireEndpoint({
    server: listener.server,
    path: '/agent',
    identity,
    role: 'server',
    handlers: new Map<TrustRole, Map<string, ConnectionHandler>>([['client', clientHandlers], ['sink', sinkHandlers]]),
    trust,
    welcome: (hello, request) => {
      const sink = embeddedSink
        ? { url: `${embeddedSink.secure ? 'wss' : 'ws'}://${requestHostname(request)}:${embeddedSink.port}/ingest`, publicKey: identity.publicKeyBase64 }
        : separateSink?.hello.endpoint
          ? { url: separateSink.hello.endpoint, publicKey: separateSink.publicKey }
          : undefined;
      return { heartbeatIntervalMs: settings.heartbeatIntervalMs, ...(hello.role === 'client' && sink && { sink }) };
    },
    onOpen: (conn) => {
      if (conn.role === 'sink') {
        separateSink = conn;
        announceSink(conn);
        for (const notice of notices.splice(0)) conn.sendText(notice);
      }
      log.info({ host: conn.hello.host, role: conn.role, address: conn.address, id: conn.fingerprint }, `${conn.role} ${conn.hello.host} connected`);
      bus.publish('host.connected', hostRecord(conn));
      if (conn.role === 'client') deliverHeld(conn);
    },
    onClose: (conn, info) => {
      if (separateSink === conn) separateSink = null;
      log.info({ host: conn.hello.host, role: conn.role, code: info.code, reason: info.reason }, `${conn.role} ${conn.hello.host} disconnected`);
      bus.publish('host.disconnected', { id: conn.fingerprint, role: conn.role, sessionId: conn.sessionId, reason: info.reason || `close ${info.code}`, at: localClock() });
    },
    onError: (err, conn) => log.warn({ err: String(err), host: conn?.hello.host }, 'wire handler failed'),
    admission: { handshakesPerSec: settings.handshakesPerSec, burst: settings.handshakeBurst, maxInFlight: settings.maxHandshakesInFlight },
    handshakeTimeoutMs: settings.handshakeTimeoutMs,
    messagesPerSec: settings.messagesPerSec,
    messageBurst: settings.messageBurst,
    maxBufferedBytes: settings.maxBufferedBytes,
  });

  /** Tells every connected client where the sink that just registered is (they learn it from the welcome otherwise). */
  function announceSink(sink: PeerConnection): void {
    if (!sink.hello.endpoint) return;
    const text = JSON.stringify({ v: WIRE_VERSION, type: 'sink.info', id: randomUUID(), sink: { url: sink.hello.endpoint, publicKey: sink.publicKey } });
    endpoint.broadcast(text, endpoint.connections().filter((c) => c.role === 'client'));
  }

  /**
   * What a separate sink must hear from this server's bus to decide and store tasks; held (bounded)
   * while no sink is connected, and sent in order when one is.
   */
  const notices: string[] = [];
  const noticeDisposers = embeddedSink ? [] : NOTICE_TOPICS.map((topic) => bus.subscribe(topic, (data) => {
    const text = JSON.stringify({ v: WIRE_VERSION, type: 'notice', id: randomUUID(), topic, data });
    if (separateSink?.open && separateSink.sendText(text)) return;
    notices.push(text);
    if (notices.length > MAX_HELD_NOTICES) {
      notices.shift();
      log.error({ topic }, `more than ${MAX_HELD_NOTICES} notices wait for the sink; dropped the oldest`);
    }
  }));

  /**
   * Commands for accepted clients that are not connected right now (a server restart, a network
   * blip): delivered when the client is back, unless they expired first. The client's replay guard
   * makes a late copy harmless; the command's own expiry bounds how late it can be.
   */
  const held = new Map<string, { text: string; expiresAt: number }[]>();

  function hold(id: string, text: string, expiresAt: number): void {
    const queue = (held.get(id) ?? []).filter((c) => c.expiresAt > localClock());
    if (queue.length >= MAX_HELD_PER_HOST) queue.shift();
    queue.push({ text, expiresAt });
    held.set(id, queue);
  }

  function deliverHeld(conn: PeerConnection): void {
    const queue = held.get(conn.fingerprint);
    held.delete(conn.fingerprint);
    for (const command of queue ?? []) if (command.expiresAt > localClock()) conn.sendText(command.text);
  }

  /** Signs `body` once, serializes it once, and seals that text for each target's session. */
  function sendCommand(body: Omit<TaskDispatchMessage, 'sig'> | Omit<TaskCancelMessage, 'sig'>, targets: string[]) {
    const signed = signCommand(body as Omit<TaskDispatchMessage, 'sig'>, identity.privateKey);
    const text = JSON.stringify(signed);
    const conns: PeerConnection[] = [];
    const skipped: { id: string; reason: string }[] = [];
    const heldFor: string[] = [];
    for (const id of targets) {
      const conn = endpoint.connection(id, 'client');
      const state = trust.get(id, 'client')?.state;
      if (conn?.open) conns.push(conn);
      else if (state === 'accepted') {
        hold(id, text, body.expiresAt);
        heldFor.push(id);
      } else skipped.push({ id, reason: state ? `key ${state}` : 'unknown host' });
    }
    const sentAt = localClock();
    const { failed } = endpoint.broadcast(text, conns);
    const failedIds = new Set(failed.map((c) => c.fingerprint));
    for (const id of failedIds) skipped.push({ id, reason: 'send buffer full' });
    return { commandId: body.id, sentAt, sent: conns.filter((c) => !failedIds.has(c.fingerprint)).map((c) => c.fingerprint), held: heldFor, skipped };
  }

  const disposers = [
    trust.onRejected((entry) => endpoint.disconnect(entry.fingerprint, entry.role)),
    bus.provide('transport.dispatch', (data) => {
      const req = data as DispatchRequest;
      if (typeof req?.runId !== 'string' || typeof req.taskId !== 'string' || typeof req.action !== 'string') throw badRequest('runId, taskId and action are required strings');
      const now = localClock();
      const startAt = typeof req.startAt === 'number' ? req.startAt : null;
      const body: Omit<TaskDispatchMessage, 'sig'> = {
        v: WIRE_VERSION,
        type: 'task.dispatch',
        // The scheduler names the command, so a dispatch re-sent after its restart is the same
        // command to the clients' replay guards.
        id: typeof req.commandId === 'string' && COMMAND_ID.test(req.commandId) ? req.commandId : randomUUID(),
        runId: req.runId,
        taskId: req.taskId,
        action: req.action,
        with: req.with ?? {},
        startAt,
        timeoutMs: req.timeoutMs,
        expiresAt: Math.max(now, startAt ?? now) + (req.ttlMs ?? settings.commandTtlMs),
        ...(req.metrics && { metrics: req.metrics }),
      };
      return sendCommand(body, targetsOf(req));
    }),
    bus.provide('transport.cancel', (data) => {
      const req = data as CancelRequest;
      if (typeof req?.runId !== 'string') throw badRequest('runId is a required string');
      const body: Omit<TaskCancelMessage, 'sig'> = {
        v: WIRE_VERSION,
        type: 'task.cancel',
        id: randomUUID(),
        runId: req.runId,
        ...(typeof req.taskId === 'string' && { taskId: req.taskId }),
        expiresAt: localClock() + settings.commandTtlMs,
      };
      return sendCommand(body, targetsOf(req));
    }),
    bus.provide('transport.sessions', () => endpoint.connections().map(hostRecord)),
    bus.provide('transport.stats', () => ({ ...endpoint.stats(), memory: process.memoryUsage() })),
    bus.provide('transport.keys.list', () => trust.list()),
    bus.provide('transport.keys.accept', (data) => {
      const { fingerprint, role } = (data ?? {}) as { fingerprint?: string; role?: TrustRole };
      const entry = trust.accept(String(fingerprint ?? ''), role);
      log.info({ fingerprint: entry.fingerprint, role: entry.role, host: entry.host }, `accepted the key of ${entry.role} ${entry.host}`);
      return entry;
    }),
    bus.provide('transport.keys.reject', (data) => {
      const { fingerprint, role } = (data ?? {}) as { fingerprint?: string; role?: TrustRole };
      const entry = trust.reject(String(fingerprint ?? ''), role);
      log.warn({ fingerprint: entry.fingerprint, role: entry.role, host: entry.host }, `rejected the key of ${entry.role} ${entry.host}`);
      return entry;
    }),
  ];

  log.info({ url: listener.url(), agent: listener.wsUrl('/agent'), fingerprint: identity.fingerprint, autoAccept: trust.autoAccept }, `server listening on ${listener.url()}`);
  return {
    async close() {
      for (const dispose of [...disposers, ...noticeDisposers]) dispose();
      await endpoint.close();
      await listener.close();
    },
  };
}

