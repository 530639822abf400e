/**
 * The client role: the agent's connection to the server (heartbeats, clock sync, verified
 * commands) and, once the server's welcome names it, to the sink (events and metrics).
 * Verified commands go on the bus for the action runner; nothing here runs them.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { PluginContext } from '../../../plugin-sdk/src/index.ts';
import type { MetricsBatchMessage, TaskEventMessage } from '../../../plugin-sdk/src/schemas/wire.ts';
import { ownThread } from '../../../plugin-sdk/src/thread.ts';
import { WireClient } from '../client/connection.ts';
import { HealthSampler } from '../client/health-record.ts';
import { Outbox } from '../client/outbox.ts';
import { PinStore } from '../client/pins.ts';
import { PluginTableReporter } from '../client/plugin-table.ts';
import { gatherFacts } from '../facts.ts';
import { localClock, type Identity } from '../protocol/index.ts';
import { agentUrl, type RunningRole, type TransportSettings } from './settings.ts';

const STREAM_TYPES = new Set(['task.event', 'metrics.batch']);

export async function startClientRole(ctx: PluginContext<TransportSettings>, identity: Identity): Promise<RunningRole> {
  const { options, bus, log } = ctx;
  const server = agentUrl(options.server!);
  const skew = options.clockSkewMs ?? 0;
  const clock = skew === 0 ? localClock : () => localClock() + skew;
  const ca = options.tlsCa !== undefined ? readFileSync(options.tlsCa) : undefined;
  const host = options.name ?? os.hostname();
  const facts = await gatherFacts();
  const sampler = new HealthSampler({ dataDir: ctx.dataDir, clockOffsetMs: () => agent.offsetMs });
  const pluginTable = new PluginTableReporter(bus, log);
  // Everything for the sink goes through the outbox: sent while a sink session is up, kept on disk otherwise.
  const outbox = Outbox.open({ dir: path.join(ctx.dataDir, 'outbox'), log });
  let sink: WireClient | null = null;
  let sinkKey: string | null = null;

  /**
   * Follows the sink the server names, in its welcome or later in a sink.info: a new URL or key
   * replaces the connection. A welcome that names none (a separate sink is away) keeps the current
   * connection, which goes on retrying.
   */
  function followSink(target: { url: string; publicKey: string } | undefined): void {
    if (!target || (sink && sink.url === target.url && sinkKey === target.publicKey)) return;
    if (sink) void sink.close();
    sinkKey = target.publicKey;
    let detachOutbox: (() => void) | null = null;
    const link: WireClient = new WireClient({
      url: target.url,
      identity,
      host,
      role: 'client',
      expectRole: 'sink',
      // The server vouched for this key in the authenticated welcome; nothing to pin on first use.
      serverKey: target.publicKey,
      labels: options.labels ?? {},
      ...(ca && { ca }),
      clock,
      log,
      onConnected: () => {
        detachOutbox = outbox.attach((message) => link.send(message));
      },
      onDisconnected: () => {
        detachOutbox?.();
        detachOutbox = null;
      },
    });
    sink = link;
    link.start();
  }

  const agent: WireClient = new WireClient({
    url: server,
    identity,
    host,
    role: 'client',
    expectRole: 'server',
    labels: options.labels ?? {},
    facts: facts as unknown as Record<string, unknown>,
    capabilities: ['transport:ws'],
    agentVersion: ctx.version,
    pins: PinStore.open(ctx.dataDir),
    ...(options.serverKey !== undefined && { serverKey: options.serverKey }),
    replayGuardDir: ctx.dataDir,
    health: () => {
      const plugins = pluginTable.take();
      return { ...sampler.sample(), ...(plugins && { plugins }) };
    },
    clock,
    ...(ca && { ca }),
    log,
    onConnected: (_session, welcome) => {
      pluginTable.sessionStarted();
      log.info({ server, id: identity.fingerprint, heartbeatIntervalMs: welcome.heartbeatIntervalMs }, `connected to the server as ${host}`);
      followSink(welcome.sink);
    },
    // WireClient logs connects, disconnects and refusals itself; this adds what the operator should do.
    onRefused: (code) => {
      if (code === 'BOLT_ERR_WIRE_PEER_NOT_ACCEPTED') log.warn({ fingerprint: identity.fingerprint }, `waiting for the server to accept this key: bolt-core keys accept ${identity.fingerprint}`);
    },
    onSinkInfo: (target) => followSink(target),
    onDispatch: (command, arrival) => bus.publish('client.task.dispatch', { ...command, receivedAt: arrival.receivedAt }),
    onCancel: (command, arrival) => bus.publish('client.task.cancel', { ...command, receivedAt: arrival.receivedAt }),
  });
  agent.start();
  log.info({ server, name: host, fingerprint: identity.fingerprint, labels: options.labels ?? {} }, `client ${host} connecting to ${server}`);

  const disposers = [
    bus.provide('client.clock', () => {
      const e = agent.estimate();
      return e && { offsetMs: e.offsetMs, errorMs: e.errorMs, rttMs: e.rttMs };
    }),
    bus.provide('client.status', () => ({
      id: identity.fingerprint,
      name: host,
      server: { url: server, connected: agent.connected, counters: agent.counters },
      sink: sink && { url: sink.url, connected: sink.connected, counters: sink.counters },
      offsetMs: agent.offsetMs,
      thread: ownThread(),
    })),
    // Resolves true once the message is on disk (or already sent); refused with BOLT_ERR_WIRE_OUTBOX_FULL when the outbox is full.
    bus.provide('client.send', async (data) => {
      const message = data as TaskEventMessage | MetricsBatchMessage;
      if (!STREAM_TYPES.has(message?.type)) throw new TypeError('client.send carries task.event or metrics.batch messages');
      await outbox.push(message);
      return true;
    }),
  ];

  return {
    async close() {
      for (const dispose of disposers) dispose();
      await Promise.all([agent.close(), sink?.close()]);
      await outbox.close();
      sampler.close();
      pluginTable.close();
    },
  };
}
