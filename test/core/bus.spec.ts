/**
 * The bus between real plugin hosts: fan-out, request/response, timeouts, missing and crashing
 * providers, and the direct worker-to-worker channel.
 */
import { expect } from 'chai';
import path from 'node:path';
import { FAST_SUPERVISOR, startTestCore, writePlugin, type TestCore } from '../helpers/core.ts';

const LISTENER = (id: string) => `
  export default {
    start(ctx) {
      const seen = [];
      ctx.bus.subscribe('fan.*', (data, meta) => seen.push({ data, topic: meta.topic, from: meta.from }));
      ctx.bus.provide('${id}.seen', () => seen);
    },
  };`;

const SLOW = `
  export default {
    start(ctx) {
      ctx.bus.provide('slow.never', () => new Promise(() => {}));
      ctx.bus.provide('slow.fails', () => { const e = new Error('disk full'); e.code = 'E_DISK'; throw e; });
      ctx.bus.provide('slow.crash', () => { setTimeout(() => process.exit(3), 20); return new Promise(() => {}); });
    },
  };`;

/** Asks the echo provider 200 times from inside a worker and reports how many answers came back right. */
const CALLER = `
  export default {
    start(ctx) {
      ctx.bus.provide('caller.run', async (n) => {
        let ok = 0;
        for (let i = 0; i < n; i++) if ((await ctx.bus.request('echo2.echo', i)) === i) ok++;
        return ok;
      });
      ctx.bus.provide('caller.once', () => ctx.bus.request('echo2.echo', 'x', { timeoutMs: 2000 }));
      ctx.bus.provide('caller.hang', async () => {
        await ctx.bus.request('echo2.hang', 'quick');
        const started = Date.now();
        const err = await ctx.bus.request('echo2.hang', 'forever', { timeoutMs: 10000 }).catch((e) => e);
        return { code: err.code, ms: Date.now() - started };
      });
    },
  };`;

const ECHO2 = `
  export default {
    start(ctx) {
      ctx.bus.provide('echo2.echo', (d) => d);
      ctx.bus.provide('echo2.die', () => { setTimeout(() => process.exit(1), 10); return 'bye'; });
      ctx.bus.provide('echo2.hang', (d) => (d === 'quick' ? 'ok' : new Promise(() => {})));
    },
  };`;

describe('bus', function () {
  let t: TestCore;

  before(async () => {
    t = await startTestCore({ config: { supervisor: { ...FAST_SUPERVISOR, maxRestarts: 50 } } });
    await writePlugin(path.join(t.pluginsDir, 'listener-a'), { name: 'listener-a' }, LISTENER('listener-a'));
    await writePlugin(path.join(t.pluginsDir, 'listener-b'), { name: 'listener-b', isolation: 'process' }, LISTENER('listener-b'));
    await writePlugin(path.join(t.pluginsDir, 'slow'), { name: 'slow' }, SLOW);
    await writePlugin(path.join(t.pluginsDir, 'caller'), { name: 'caller' }, CALLER);
    await writePlugin(path.join(t.pluginsDir, 'echo2'), { name: 'echo2' }, ECHO2);
    await writePlugin(path.join(t.pluginsDir, 'upper'), { name: 'upper', kind: 'parser', isolation: 'pool' }, `
      export default async function upper(text) {
        if (typeof text !== 'string') throw new TypeError('upper takes a string');
        return text.toUpperCase();
      }`);
    for (const name of ['listener-a', 'listener-b', 'slow', 'caller', 'echo2', 'upper']) await t.waitFor(name, 'running');
  });
  after(async () => {
    await t.close();
  });

  it('fans a topic out to every subscriber, worker and child process alike, in publish order', async () => {
    for (let i = 0; i < 20; i++) t.core.bus.publish(i % 2 ? 'fan.odd' : 'fan.even', i);
    t.core.bus.publish('other.topic', 'not for them');
    const expected = Array.from({ length: 20 }, (_, i) => ({ data: i, topic: i % 2 ? 'fan.odd' : 'fan.even', from: 'core' }));
    for (const name of ['listener-a', 'listener-b']) {
      const deadline = Date.now() + 5000;
      let seen: unknown[] = [];
      while (Date.now() < deadline) {
        seen = await t.core.bus.request<unknown[]>(`${name}.seen`);
        if (seen.length >= 20) break;
      }
      expect(seen, name).to.deep.equal(expected);
    }
  });

  it('answers a request with the provider\'s value, and carries a thrown error back with its code as cause', async () => {
    expect(await t.core.bus.request('listener-a.seen')).to.be.an('array');
    const err = (await t.core.bus.request('slow.fails').catch((e: unknown) => e)) as Error & { code: string; cause: { code: string } };
    expect(err.code).to.equal('BOLT_ERR_BUS_HANDLER_FAILED');
    expect(err.message).to.contain('disk full');
    expect(err.cause.code).to.equal('E_DISK');
  });

  it('serves a pool plugin as the service named after it, a thrown error being an answer, not a crash', async () => {
    const answers = await Promise.all(['a', 'bc', 'def', 'ghij'].map((w) => t.core.bus.request('upper', w)));
    expect(answers).to.deep.equal(['A', 'BC', 'DEF', 'GHIJ']);
    const err = (await t.core.bus.request('upper', 42).catch((e: unknown) => e)) as { code: string; cause: { message: string } };
    expect(err.code).to.equal('BOLT_ERR_BUS_HANDLER_FAILED');
    expect(err.cause.message).to.equal('upper takes a string');
    expect(t.status('upper')).to.include({ state: 'running', isolation: 'pool', restarts: 0 });
  });

  it('fails a request with no provider at once', async () => {
    const started = Date.now();
    const err = await t.core.bus.request('nobody.home').catch((e: unknown) => e);
    expect(err).to.have.property('code', 'BOLT_ERR_BUS_NO_PROVIDER');
    expect(Date.now() - started).to.be.below(1000);
  });

  it('times a request out after its timeout', async () => {
    const started = Date.now();
    const err = await t.core.bus.request('slow.never', null, { timeoutMs: 300 }).catch((e: unknown) => e);
    expect(err).to.have.property('code', 'BOLT_ERR_BUS_TIMEOUT');
    expect(Date.now() - started).to.be.within(250, 2000);
  });

  it('fails a request in flight as soon as its provider crashes, instead of waiting for the timeout', async () => {
    const started = Date.now();
    const err = await t.core.bus.request('slow.crash', null, { timeoutMs: 10_000 }).catch((e: unknown) => e);
    expect(err).to.have.property('code', 'BOLT_ERR_BUS_PROVIDER_CRASHED');
    expect(Date.now() - started).to.be.below(5000);
    await t.waitFor('slow', 'running');
  });

  it('gives two worker plugins a direct channel: after the first request, their traffic skips the main thread', async () => {
    const before = t.core.broker.stats.routedRequests;
    expect(await t.core.bus.request('caller.run', 200, { timeoutMs: 20_000 })).to.equal(200);
    // One routed request from the core to caller.run, one routed caller -> echo2 that opened the channel.
    expect(t.core.broker.stats.routedRequests - before).to.equal(2);
  });

  it('fails requests on a direct channel when the provider ends, and routes again once it is back', async () => {
    const restartsBefore = t.status('echo2')!.restarts;
    const hanging = t.core.bus.request<{ code: string; ms: number }>('caller.hang', null, { timeoutMs: 15_000 });
    await new Promise((r) => setTimeout(r, 200));
    const routedBefore = t.core.broker.stats.routedRequests;
    await t.core.bus.request('echo2.die');
    const outcome = await hanging;
    expect(outcome.code).to.equal('BOLT_ERR_BUS_PROVIDER_CRASHED');
    expect(outcome.ms).to.be.below(5000);
    expect(t.core.broker.stats.routedRequests - routedBefore).to.equal(1);
    await t.waitFor('echo2', (p) => p.restarts > restartsBefore && p.state === 'running');
    expect(await t.core.bus.request('caller.once')).to.equal('x');
  });
});
