/** The plugin in a real worker on a real bus: host.* records in, host.state and health.* out. */
import { expect } from 'chai';
import { fileURLToPath } from 'node:url';
import { createTestHost, type TestHost } from '../../../plugin-sdk/src/testing.ts';
import type { HostDetail, HostView, HealthSummary, Transition } from '../monitor.ts';

const PLUGIN_DIR = fileURLToPath(new URL('..', import.meta.url));

/** Short timers so missing and lost happen within a second. */
const FAST = {
  heartbeatIntervalMs: 100,
  missingAfterMs: 300,
  lostAfterMs: 700,
  tickMs: 20,
  recoverAfterBeats: 1,
  thresholds: { cpuPercent: { degraded: 90, unhealthy: 99 } },
};

/** Polls `probe` until it returns something other than undefined, or fails after `timeoutMs`. */
async function eventually<T>(probe: () => Promise<T | undefined>, what: string, timeoutMs = 3000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function connected(id: string, zone: string, sessionId = `${id}-1`) {
  return {
    id, name: `host-${id}`, role: 'client', address: '127.0.0.1:4000', labels: { zone },
    facts: { cpu: { cores: 2 }, memory: { totalBytes: 4 * 2 ** 30 } }, sessionId, connectedAt: Date.now(),
  };
}

function heartbeat(id: string, cpuPercent = 5) {
  return {
    id, receivedAt: Date.now(), at: Date.now(), load1: 0.1, cpuPercent, memAvailableBytes: 2 * 2 ** 30,
    diskFreeBytes: 20 * 2 ** 30, eventLoopLagMs: 2, clockOffsetMs: 0.4,
  };
}

describe('health-monitor plugin', function () {
  let host: TestHost;
  const seen: Transition[] = [];
  const hostState = async (id: string) => (await host.bus.request<HostDetail | null>('health.host', { id }))?.state;
  const until = (id: string, state: string) => eventually(async () => ((await hostState(id)) === state ? true : undefined), `${id} ${state}`);

  before(async () => {
    host = await createTestHost(PLUGIN_DIR, { config: FAST });
    host.bus.subscribe('host.state', (t) => seen.push(t as Transition));
  });

  after(async () => {
    await host?.close();
  });

  it('runs in a worker with its settings', () => {
    expect(host.status()).to.include({ state: 'running', isolation: 'worker' });
  });

  it('lists connected clients with their labels, facts and last health record, filtered by label and state', async () => {
    host.bus.publish('host.connected', connected('a', 'east'));
    host.bus.publish('host.connected', connected('bb', 'west'));
    host.bus.publish('host.connected', { ...connected('sink', 'east'), role: 'sink' });
    host.bus.publish('host.heartbeat', heartbeat('a', 95));
    host.bus.publish('host.heartbeat', heartbeat('bb'));
    await until('a', 'degraded');

    const east = await host.bus.request<HostView[]>('health.hosts', { labels: { zone: 'east' } });
    expect(east).to.have.length(1);
    expect(east[0]).to.include({ id: 'a', name: 'host-a', role: 'client', address: '127.0.0.1:4000', state: 'degraded', connected: true, clockOffsetMs: 0.4 });
    expect(east[0]!.reason).to.equal('cpuPercent 95 >= 90 (degraded)');
    expect(east[0]!.facts).to.deep.equal({ cpu: { cores: 2 }, memory: { totalBytes: 4 * 2 ** 30 } });
    expect(east[0]!.health).to.include({ cpuPercent: 95, diskFreeBytes: 20 * 2 ** 30 });
    expect(east[0]!.lastHeartbeatAt).to.be.a('number');
    expect((await host.bus.request<HostView[]>('health.hosts', { state: 'healthy' })).map((h) => h.id)).to.deep.equal(['bb']);
    expect((await host.bus.request<HostView[]>('health.hosts')).map((h) => h.id)).to.deep.equal(['a', 'bb']);
    expect(await host.bus.request<HealthSummary>('health.summary')).to.deep.equal({ total: 2, healthy: 1, degraded: 1, unhealthy: 0, missing: 0, lost: 0 });
    expect(seen.filter((t) => t.id === 'a').map((t) => [t.from, t.to])).to.deep.equal([[null, 'healthy'], ['healthy', 'degraded']]);
  });

  it('turns a silent host missing, then lost, while a heartbeating one stays healthy', async () => {
    const beats = setInterval(() => host.bus.publish('host.heartbeat', heartbeat('bb')), 50);
    try {
      await until('a', 'lost');
      expect(await hostState('bb')).to.equal('healthy');
    } finally {
      clearInterval(beats);
    }
    const a = seen.filter((t) => t.id === 'a');
    expect(a.map((t) => t.to)).to.deep.equal(['healthy', 'degraded', 'missing', 'lost']);
    const [, degraded, missing, lost] = a;
    // Timeouts count from the last heartbeat (the one that made it degraded), never earlier; the upper bounds allow for a loaded machine.
    expect(missing!.at - degraded!.at).to.be.within(300, 300 + 1000);
    expect(lost!.at - degraded!.at).to.be.within(700, 700 + 1000);
    expect(lost!.reason).to.match(/^no heartbeat for \d+ ms$/);
    expect(seen.filter((t) => t.id === 'bb')).to.have.length(1);
  });

  it('brings a lost host back under the same id as a new life, its history keeping the lost episode', async () => {
    host.bus.publish('host.connected', connected('a', 'east', 'a-2'));
    await until('a', 'healthy');
    const a = await host.bus.request<HostDetail>('health.host', { id: 'a' });
    expect(a).to.include({ life: 2, connected: true });
    expect(a.history.map((e) => [e.to, e.life])).to.deep.equal([['healthy', 1], ['degraded', 1], ['missing', 1], ['lost', 1], ['healthy', 2]]);
    expect((await host.bus.request<HealthSummary>('health.summary')).total).to.equal(2);
  });

  it('makes a disconnected host missing at once', async () => {
    host.bus.publish('host.disconnected', { id: 'bb', sessionId: 'bb-1', reason: 'socket closed', at: Date.now() });
    await until('bb', 'missing');
    expect(seen.at(-1)).to.include({ id: 'bb', from: 'healthy', to: 'missing', reason: 'disconnected: socket closed' });
  });

  it('answers a malformed request with an error naming what is wrong, and null for an unknown host', async () => {
    const err = (await host.bus.request('health.hosts', { state: 'fine' }).catch((e: unknown) => e)) as { code: string; cause: { message: string } };
    expect(err.code).to.equal('BOLT_ERR_BUS_HANDLER_FAILED');
    expect(err.cause.message).to.contain('state must be one of healthy, degraded, unhealthy, missing, lost');
    expect(await host.bus.request('health.host', { id: 'nobody' })).to.equal(null);
  });

  it('refuses settings whose thresholds contradict each other, naming the setting', async () => {
    const bad = await createTestHost(PLUGIN_DIR, {
      config: { thresholds: { diskFreeBytes: { degraded: 2 ** 20, unhealthy: 2 ** 30 } } },
      supervisor: { maxRestarts: 1, backoffInitialMs: 10, backoffMaxMs: 20 },
    });
    try {
      const status = await bad.waitFor('failed', 5000);
      expect(status.lastError?.code).to.equal('BOLT_ERR_PLUGIN_CONFIG_INVALID');
      expect(status.lastError?.message).to.contain('thresholds.diskFreeBytes.unhealthy (1073741824) must be at most thresholds.diskFreeBytes.degraded (1048576)');
    } finally {
      await bad.close();
    }
  });
});
