/**
 * The code that runs inside a plugin host (worker thread or child process) before and around the
 * plugin: hardening, the heartbeat answer, the bus client behind `ctx.bus`, and the plugin's
 * start/stop lifecycle. The core bundles this file once with esbuild, so it runs as plain
 * JavaScript in the host without a TypeScript loader.
 */
import { isMainThread, parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { BoltError, toErrorInfo, fromErrorInfo, type ErrorInfo } from '../../plugin-sdk/src/errors.ts';
import type { Bus, BusMeta, Disposer, Logger, Plugin, PluginContext } from '../../plugin-sdk/src/index.ts';
import type { ChannelMessage, CoreMessage, HostInit, HostMessage, LogLevel } from './protocol.ts';
import { topicMatches } from '../bus/topics.ts';
import { hardenProcess } from './harden.ts';

interface Link {
  send(msg: HostMessage): void;
  onMessage(handler: (msg: CoreMessage) => void): void;
}

function workerLink(): Link {
  const port = parentPort!;
  return {
    send: (msg) => port.postMessage(msg),
    onMessage: (handler) => port.on('message', handler),
  };
}

function childLink(): Link {
  return {
    send: (msg) => {
      if (process.connected) process.send!(msg);
    },
    onMessage: (handler) => process.on('message', (m) => handler(m as CoreMessage)),
  };
}

class HostBus implements Bus {
  private readonly subs = new Map<string, Set<(data: unknown, meta: BusMeta) => void>>();
  private readonly services = new Map<string, (data: unknown, meta: BusMeta) => unknown>();
  private readonly pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void; timer: NodeJS.Timeout; via?: string }>();
  /** Provider plugin name -> direct port, and service -> provider plugin name. */
  private readonly channels = new Map<string, MessagePort>();
  private readonly channelServices = new Map<string, string>();
  private nextId = 1;
  private readonly link: Link;
  private readonly self: string;

  constructor(link: Link, self: string) {
    this.link = link;
    this.self = self;
  }

  publish(topic: string, data?: unknown): void {
    this.link.send({ t: 'pub', topic, data });
  }

  subscribe(topic: string, handler: (data: unknown, meta: BusMeta) => void): Disposer {
    let set = this.subs.get(topic);
    if (!set) {
      set = new Set();
      this.subs.set(topic, set);
      this.link.send({ t: 'sub', topic });
    }
    set.add(handler);
    return () => {
      const s = this.subs.get(topic);
      if (!s?.delete(handler) || s.size > 0) return;
      this.subs.delete(topic);
      this.link.send({ t: 'unsub', topic });
    };
  }

  provide(service: string, handler: (data: unknown, meta: BusMeta) => unknown): Disposer {
    if (this.services.has(service)) {
      throw new BoltError('BOLT_ERR_BUS_DUPLICATE_PROVIDER', `this plugin already provides '${service}'`);
    }
    this.services.set(service, handler);
    this.link.send({ t: 'provide', service });
    return () => {
      if (this.services.get(service) !== handler) return;
      this.services.delete(service);
      this.link.send({ t: 'unprovide', service });
    };
  }

  request<T = unknown>(service: string, data?: unknown, options?: { timeoutMs?: number }): Promise<T> {
    const timeoutMs = options?.timeoutMs ?? 5000;
    const id = this.nextId++;
    const provider = this.channelServices.get(service);
    const port = provider === undefined ? undefined : this.channels.get(provider);
    return new Promise<T>((resolve, reject) => {
      // Routed requests are timed out by the core; this timer is the backstop, and the only one on a direct channel.
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new BoltError('BOLT_ERR_BUS_TIMEOUT', `request to '${service}' got no answer within ${timeoutMs} ms`));
      }, port ? timeoutMs : timeoutMs + 1000);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer, via: port ? provider : undefined });
      if (port) {
        const msg: ChannelMessage = { t: 'req', id, service, from: this.self, data };
        port.postMessage(msg);
      } else {
        this.link.send({ t: 'req', id, service, data, timeoutMs });
      }
    });
  }

  settle(msg: { id: number; ok: boolean; data?: unknown; error?: ErrorInfo }): void {
    const p = this.pending.get(msg.id);
    if (!p) return;
    this.pending.delete(msg.id);
    clearTimeout(p.timer);
    if (msg.ok) p.resolve(msg.data);
    else p.reject(fromErrorInfo(msg.error!));
  }

  deliver(topic: string, from: string, data: unknown): void {
    for (const [pattern, handlers] of this.subs) {
      if (!topicMatches(pattern, topic)) continue;
      for (const handler of handlers) handler(data, { from, topic });
    }
  }

  /** Serves one request, from the core or from a direct channel; `reply` sends the answer back the same way. */
  async serve(service: string, from: string, data: unknown, reply: (m: Extract<ChannelMessage, { t: 'res' }>) => void, id: number): Promise<void> {
    const handler = this.services.get(service);
    if (!handler) {
      reply({ t: 'res', id, ok: false, error: { code: 'BOLT_ERR_BUS_NO_PROVIDER', message: `'${this.self}' does not provide '${service}'` } });
      return;
    }
    try {
      reply({ t: 'res', id, ok: true, data: await handler(data, { from }) });
    } catch (err) {
      const cause = toErrorInfo(err);
      reply({ t: 'res', id, ok: false, error: { code: 'BOLT_ERR_BUS_HANDLER_FAILED', message: `'${service}' failed in '${this.self}': ${cause.message}`, cause } });
    }
  }

  openChannel(service: string, provider: string, port: MessagePort | undefined): void {
    this.channelServices.set(service, provider);
    if (!port) return;
    this.channels.get(provider)?.close();
    this.channels.set(provider, port);
    port.on('message', (msg: ChannelMessage) => {
      if (msg.t === 'res') this.settle(msg);
    });
  }

  acceptChannel(peer: string, port: MessagePort): void {
    port.on('message', (msg: ChannelMessage) => {
      if (msg.t === 'req') void this.serve(msg.service, peer, msg.data, (m) => port.postMessage(m), msg.id);
    });
  }

  closeChannel(provider: string): void {
    this.channels.get(provider)?.close();
    this.channels.delete(provider);
    for (const [service, p] of this.channelServices) if (p === provider) this.channelServices.delete(service);
    for (const [id, p] of this.pending) {
      if (p.via !== provider) continue;
      this.settle({ id, ok: false, error: { code: 'BOLT_ERR_BUS_PROVIDER_CRASHED', message: `'${provider}' ended while the request was in flight` } });
    }
  }
}

function makeLogger(link: Link): Logger {
  const emit = (level: LogLevel) => (a: string | Record<string, unknown>, b?: string) => {
    if (typeof a === 'string') link.send({ t: 'log', level, msg: a });
    else link.send({ t: 'log', level, msg: b ?? '', obj: JSON.parse(JSON.stringify(a, errorReplacer)) as Record<string, unknown> });
  };
  return { debug: emit('debug'), info: emit('info'), warn: emit('warn'), error: emit('error') } as Logger;
}

function errorReplacer(_key: string, value: unknown): unknown {
  return value instanceof Error ? toErrorInfo(value) : value;
}

function withDeadline<T>(work: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), ms);
  });
  return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
}

async function run(link: Link, init: HostInit): Promise<void> {
  if (init.harden) hardenProcess();
  const abort = new AbortController();
  const bus = new HostBus(link, init.name);
  const ctx: PluginContext = {
    name: init.name,
    version: init.version,
    roles: init.roles,
    config: init.config as Record<string, unknown>,
    options: init.options,
    log: makeLogger(link),
    signal: abort.signal,
    bus,
    dataDir: init.dataDir,
    pluginDir: init.pluginDir,
  };
  let plugin: Plugin | undefined;
  let stopping = false;

  link.onMessage((msg) => {
    switch (msg.t) {
      case 'ping':
        link.send({ t: 'pong', seq: msg.seq });
        break;
      case 'msg':
        bus.deliver(msg.topic, msg.from, msg.data);
        break;
      case 'req':
        void bus.serve(msg.service, msg.from, msg.data, (m) => link.send(m), msg.id);
        break;
      case 'res':
        bus.settle(msg);
        break;
      case 'channel':
        bus.openChannel(msg.service, msg.provider, msg.port);
        break;
      case 'channel-accept':
        bus.acceptChannel(msg.peer, msg.port);
        break;
      case 'channel-closed':
        bus.closeChannel(msg.provider);
        break;
      case 'stop':
        if (stopping) return;
        stopping = true;
        abort.abort();
        void Promise.resolve()
          .then(() => plugin?.stop?.(ctx))
          .then(
            () => link.send({ t: 'stopped' }),
            (err: unknown) => link.send({ t: 'stopped', error: toErrorInfo(err) }),
          );
        break;
    }
  });

  try {
    const mod = (await import(init.bundleUrl)) as { default?: unknown };
    const candidate = mod.default as Plugin | undefined;
    if (!candidate || typeof candidate.start !== 'function') {
      throw new BoltError('BOLT_ERR_PLUGIN_NO_START', `the default export of ${init.name}'s entry has no start(ctx) function`);
    }
    plugin = candidate;
    await withDeadline(Promise.resolve(plugin.start(ctx)), init.startTimeoutMs, () =>
      new BoltError('BOLT_ERR_PLUGIN_START_TIMEOUT', `start(ctx) of '${init.name}' did not finish within ${init.startTimeoutMs} ms`));
    link.send({ t: 'started' });
  } catch (err) {
    const info = toErrorInfo(err);
    link.send({ t: 'start-failed', error: info.code === 'ERR_UNKNOWN' || !info.code.startsWith('BOLT_ERR_') ? { code: 'BOLT_ERR_PLUGIN_START_FAILED', message: `'${init.name}' failed to start: ${info.message}`, stack: info.stack, cause: info } : info });
  }
}

if (!isMainThread) {
  const init = (workerData as { init: HostInit }).init;
  await run(workerLink(), init);
} else if (process.send) {
  // A child process: report the uncaught error, then exit, so the core records why it ended.
  const link = childLink();
  process.on('uncaughtException', (err) => {
    const fallback = setTimeout(() => process.exit(1), 200);
    process.send!({ t: 'fatal', error: toErrorInfo(err) } satisfies HostMessage, () => {
      clearTimeout(fallback);
      process.exit(1);
    });
  });
  process.on('disconnect', () => process.exit(0));
  process.once('message', (first: CoreMessage) => {
    if (first.t === 'init') void run(link, first.init);
  });
}
