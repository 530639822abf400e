/**
 * The bus broker in the main thread. Plugin hosts attach as participants; the core itself is the
 * participant `core`. Topics fan out to every matching subscriber; services route each request to
 * their one provider and the answer back, with a timeout, and fail fast when the provider ends.
 * For a pair of worker plugins, the first routed request also gives them a direct MessageChannel.
 */
import { MessageChannel, type TransferListItem } from 'node:worker_threads';
import { BoltError, fromErrorInfo, toErrorInfo, type ErrorInfo } from '../../plugin-sdk/src/errors.ts';
import type { Bus, BusMeta, Disposer, RequestOptions } from '../../plugin-sdk/src/index.ts';
import type { CoreMessage, HostMessage } from '../host/protocol.ts';
import { topicMatches } from './topics.ts';

export const CORE_PARTICIPANT = 'core';

/** What the broker needs from an attached plugin host. */
export interface Endpoint {
  send(msg: CoreMessage, transfer?: TransferListItem[]): void;
  readonly supportsChannels: boolean;
  /** Called when a routed request to this endpoint timed out (pool hosts end the looping thread). */
  abortCall?(id: number): void;
}

interface Routed {
  from: string;
  fromId: number;
  provider: string;
  service: string;
  timer: NodeJS.Timeout;
  /** Set for requests made by the core itself. */
  local?: { resolve(v: unknown): void; reject(e: Error): void };
}

type LocalHandler = (data: unknown, meta: BusMeta) => void;
type LocalService = (data: unknown, meta: BusMeta) => unknown;

export interface BrokerHooks {
  /** A plugin host sent something that is not a bus message; it was dropped. */
  onBadMessage?(from: string, reason: string): void;
}

export class Broker {
  private readonly endpoints = new Map<string, Endpoint>();
  /** pattern -> participants subscribed to it */
  private readonly subscriptions = new Map<string, Set<string>>();
  private readonly localSubs = new Map<string, Set<LocalHandler>>();
  /** topic -> resolved participants; cleared whenever a subscription changes */
  private readonly fanoutCache = new Map<string, string[]>();
  private readonly providers = new Map<string, string>();
  private readonly localServices = new Map<string, LocalService>();
  private readonly routed = new Map<number, Routed>();
  /** provider -> peers holding a direct channel to it */
  private readonly channels = new Map<string, Set<string>>();
  private nextId = 1;
  private readonly hooks: BrokerHooks;
  /** Counters of what passed through the main thread (direct channels bypass them). */
  readonly stats = { routedRequests: 0, publishes: 0 };

  constructor(hooks: BrokerHooks = {}) {
    this.hooks = hooks;
  }

  attach(name: string, endpoint: Endpoint): void {
    this.endpoints.set(name, endpoint);
  }

  /** Removes a participant: its subscriptions and services go, requests in flight to it fail now. */
  detach(name: string, reason?: ErrorInfo): void {
    if (!this.endpoints.delete(name)) return;
    for (const [pattern, set] of this.subscriptions) {
      if (set.delete(name) && set.size === 0) this.subscriptions.delete(pattern);
    }
    this.fanoutCache.clear();
    for (const [service, provider] of this.providers) if (provider === name) this.providers.delete(service);
    const crashed: ErrorInfo = {
      code: 'BOLT_ERR_BUS_PROVIDER_CRASHED',
      message: `'${name}' ended while the request was in flight${reason ? `: ${reason.message}` : ''}`,
      ...(reason ? { cause: reason } : {}),
    };
    for (const [id, r] of this.routed) {
      if (r.provider === name) this.answer(id, { ok: false, error: crashed });
      else if (r.from === name) this.drop(id);
    }
    for (const peer of this.channels.get(name) ?? []) this.endpoints.get(peer)?.send({ t: 'channel-closed', provider: name });
    this.channels.delete(name);
    for (const peers of this.channels.values()) peers.delete(name);
  }

  /** Handles one message from an attached host. */
  handle(from: string, msg: HostMessage): void {
    if (!this.endpoints.has(from)) return;
    switch (msg.t) {
      case 'pub':
        if (typeof msg.topic !== 'string') return this.bad(from, 'pub without a topic');
        this.fanout(msg.topic, from, msg.data);
        return;
      case 'sub':
      case 'unsub':
        if (typeof msg.topic !== 'string') return this.bad(from, `${msg.t} without a topic`);
        this.setSubscription(from, msg.topic, msg.t === 'sub');
        return;
      case 'provide':
        if (typeof msg.service !== 'string') return this.bad(from, 'provide without a service');
        if (this.providers.has(msg.service) || this.localServices.has(msg.service)) {
          this.hooks.onBadMessage?.(from, `BOLT_ERR_BUS_DUPLICATE_PROVIDER: '${msg.service}' is already provided by '${this.providers.get(msg.service) ?? CORE_PARTICIPANT}'`);
          return;
        }
        this.providers.set(msg.service, from);
        return;
      case 'unprovide':
        if (this.providers.get(msg.service) === from) this.providers.delete(msg.service);
        return;
      case 'req':
        if (typeof msg.service !== 'string' || typeof msg.id !== 'number') return this.bad(from, 'req without service or id');
        this.route(from, msg.id, msg.service, msg.data, typeof msg.timeoutMs === 'number' ? msg.timeoutMs : 5000);
        return;
      case 'res': {
        const r = this.routed.get(msg.id);
        if (!r || r.provider !== from) return;
        this.answer(msg.id, msg.ok ? { ok: true, data: msg.data } : { ok: false, error: msg.error });
        return;
      }
      default:
        return;
    }
  }

  /** The core's own view of the bus, with the same semantics plugins get. */
  readonly local: Bus = {
    publish: (topic, data) => this.fanout(topic, CORE_PARTICIPANT, data),
    subscribe: (topic, handler) => {
      let set = this.localSubs.get(topic);
      if (!set) this.localSubs.set(topic, (set = new Set()));
      set.add(handler);
      this.fanoutCache.clear();
      return () => {
        set.delete(handler);
        if (set.size === 0) this.localSubs.delete(topic);
        this.fanoutCache.clear();
      };
    },
    provide: (service, handler): Disposer => {
      if (this.providers.has(service) || this.localServices.has(service)) {
        throw new BoltError('BOLT_ERR_BUS_DUPLICATE_PROVIDER', `'${service}' is already provided`);
      }
      this.localServices.set(service, handler);
      return () => {
        if (this.localServices.get(service) === handler) this.localServices.delete(service);
      };
    },
    request: <T>(service: string, data?: unknown, options?: RequestOptions): Promise<T> =>
      new Promise<T>((resolve, reject) => {
        this.route(CORE_PARTICIPANT, 0, service, data, options?.timeoutMs ?? 5000, { resolve: resolve as (v: unknown) => void, reject });
      }),
  };

  /** Which participant provides each service (for the admin view and tests). */
  serviceTable(): Record<string, string> {
    const table: Record<string, string> = {};
    for (const service of this.localServices.keys()) table[service] = CORE_PARTICIPANT;
    for (const [service, provider] of this.providers) table[service] = provider;
    return table;
  }

  private bad(from: string, reason: string): void {
    this.hooks.onBadMessage?.(from, `BOLT_ERR_BUS_BAD_MESSAGE: ${reason}`);
  }

  private setSubscription(name: string, pattern: string, on: boolean): void {
    let set = this.subscriptions.get(pattern);
    if (on) {
      if (!set) this.subscriptions.set(pattern, (set = new Set()));
      set.add(name);
    } else if (set?.delete(name) && set.size === 0) {
      this.subscriptions.delete(pattern);
    }
    this.fanoutCache.clear();
  }

  private fanout(topic: string, from: string, data: unknown): void {
    this.stats.publishes++;
    let targets = this.fanoutCache.get(topic);
    if (!targets) {
      const found = new Set<string>();
      for (const [pattern, set] of this.subscriptions) if (topicMatches(pattern, topic)) for (const n of set) found.add(n);
      for (const pattern of this.localSubs.keys()) if (topicMatches(pattern, topic)) found.add(CORE_PARTICIPANT);
      targets = [...found];
      this.fanoutCache.set(topic, targets);
    }
    for (const name of targets) {
      if (name === CORE_PARTICIPANT) {
        for (const [pattern, handlers] of this.localSubs) {
          if (!topicMatches(pattern, topic)) continue;
          for (const h of handlers) {
            try {
              h(data, { from, topic });
            } catch (err) {
              this.hooks.onBadMessage?.(CORE_PARTICIPANT, `a core subscriber of '${topic}' threw: ${toErrorInfo(err).message}`);
            }
          }
        }
      } else {
        this.endpoints.get(name)?.send({ t: 'msg', topic, from, data });
      }
    }
  }

  private route(from: string, fromId: number, service: string, data: unknown, timeoutMs: number, local?: Routed['local']): void {
    const localService = this.localServices.get(service);
    if (localService) {
      Promise.resolve()
        .then(() => localService(data, { from }))
        .then(
          (value) => this.reply(from, fromId, { ok: true, data: value }, local),
          (err: unknown) => {
            const cause = toErrorInfo(err);
            this.reply(from, fromId, { ok: false, error: { code: 'BOLT_ERR_BUS_HANDLER_FAILED', message: `'${service}' failed in the core: ${cause.message}`, cause } }, local);
          },
        );
      return;
    }
    const provider = this.providers.get(service);
    const endpoint = provider === undefined ? undefined : this.endpoints.get(provider);
    if (provider === undefined || !endpoint) {
      this.reply(from, fromId, { ok: false, error: { code: 'BOLT_ERR_BUS_NO_PROVIDER', message: `no running plugin provides '${service}'` } }, local);
      return;
    }
    const id = this.nextId++;
    this.stats.routedRequests++;
    const timer = setTimeout(() => {
      endpoint.abortCall?.(id);
      this.answer(id, { ok: false, error: { code: 'BOLT_ERR_BUS_TIMEOUT', message: `'${provider}' did not answer '${service}' within ${timeoutMs} ms` } });
    }, timeoutMs);
    this.routed.set(id, { from, fromId, provider, service, timer, ...(local ? { local } : {}) });
    endpoint.send({ t: 'req', id, service, from, data });
    this.maybeOpenChannel(from, provider, service);
  }

  private maybeOpenChannel(from: string, provider: string, service: string): void {
    const a = this.endpoints.get(from);
    const b = this.endpoints.get(provider);
    if (!a?.supportsChannels || !b?.supportsChannels || from === provider) return;
    let peers = this.channels.get(provider);
    if (!peers) this.channels.set(provider, (peers = new Set()));
    if (peers.has(from)) {
      // The pair has a channel already: this is another service of the same provider.
      a.send({ t: 'channel', service, provider });
      return;
    }
    peers.add(from);
    const { port1, port2 } = new MessageChannel();
    b.send({ t: 'channel-accept', peer: from, port: port2 }, [port2]);
    a.send({ t: 'channel', service, provider, port: port1 }, [port1]);
  }

  private answer(id: number, outcome: { ok: true; data: unknown } | { ok: false; error: ErrorInfo }): void {
    const r = this.routed.get(id);
    if (!r) return;
    this.drop(id);
    this.reply(r.from, r.fromId, outcome, r.local);
  }

  private drop(id: number): void {
    const r = this.routed.get(id);
    if (!r) return;
    clearTimeout(r.timer);
    this.routed.delete(id);
  }

  private reply(to: string, id: number, outcome: { ok: true; data: unknown } | { ok: false; error: ErrorInfo }, local?: Routed['local']): void {
    if (local) {
      if (outcome.ok) local.resolve(outcome.data);
      else local.reject(fromErrorInfo(outcome.error));
      return;
    }
    this.endpoints.get(to)?.send(outcome.ok ? { t: 'res', id, ok: true, data: outcome.data } : { t: 'res', id, ok: false, error: outcome.error });
  }
}
