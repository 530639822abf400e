/** HealthMonitor on an injected clock: every transition, the thresholds, the bounds and the filters. */
import { expect } from 'chai';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readManifest } from '../../../core/manifest/index.ts';
import { pluginSettings } from '../../../core/config/index.ts';
import { BoltError } from '../../../plugin-sdk/src/errors.ts';
import {
  DEFAULT_SETTINGS, HealthMonitor, cpuCountOf, memTotalOf, parseHostFilter,
  type MonitorOptions, type ThresholdMetric, type Transition,
} from '../monitor.ts';

const PLUGIN_DIR = fileURLToPath(new URL('..', import.meta.url));
const GiB = 2 ** 30;
const MiB = 2 ** 20;

/** CPU and load thresholds (off by default) that most cases here use to drive the states. */
const BUSY = { cpuPercent: { degraded: 90, unhealthy: 99 }, loadPerCpu: { degraded: 2, unhealthy: 4 } };

/** A monitor with the BUSY thresholds on a clock the test moves, recording every transition. */
function setup(options: MonitorOptions = {}) {
  const clock = { t: 1_000_000 };
  const transitions: Transition[] = [];
  const monitor = new HealthMonitor({ ...options, thresholds: { ...BUSY, ...options.thresholds } }, { now: () => clock.t, onTransition: (t) => transitions.push(t) });
  const advance = (ms: number) => {
    clock.t += ms;
    monitor.tick(clock.t);
  };
  const states = (id: string) => transitions.filter((t) => t.id === id).map((t) => t.to);
  return { clock, monitor, transitions, advance, states };
}

function connect(id: string, extra: Record<string, unknown> = {}) {
  return {
    id, name: `${id}-name`, role: 'client', address: '10.0.0.1', labels: { zone: 'a' },
    facts: { cpu: { cores: 4 }, memory: { totalBytes: 8 * GiB } }, sessionId: `${id}-s1`, connectedAt: 1, ...extra,
  };
}

/** A heartbeat with comfortable figures, overridden by `figures`. */
function beat(id: string, figures: Record<string, unknown> = {}) {
  return {
    id, receivedAt: 5, at: 5, load1: 0.5, cpuPercent: 10, memAvailableBytes: 4 * GiB, diskFreeBytes: 50 * GiB,
    eventLoopLagMs: 1, clockOffsetMs: 0.2, ...figures,
  };
}

describe('health-monitor: HealthMonitor', () => {
  it('a connecting host appears healthy, with what host.connected said about it', () => {
    const { monitor, transitions } = setup();
    expect(monitor.connected(connect('h1'))).to.equal(true);
    expect(transitions).to.deep.equal([{ id: 'h1', name: 'h1-name', from: null, to: 'healthy', at: 1_000_000, reason: 'connected' }]);
    expect(monitor.list()).to.deep.equal([{
      id: 'h1', name: 'h1-name', role: 'client', address: '10.0.0.1', labels: { zone: 'a' },
      facts: { cpu: { cores: 4 }, memory: { totalBytes: 8 * GiB } }, state: 'healthy', since: 1_000_000, reason: 'connected', life: 1,
      lastHeartbeatAt: null, clockOffsetMs: null, health: null, plugins: null, connected: true,
    }]);
  });

  it('keeps the last heartbeat record, its arrival time and the clock offset', () => {
    const { monitor, clock } = setup();
    monitor.connected(connect('h1'));
    clock.t += 400;
    monitor.heartbeat(beat('h1', { clockOffsetMs: -12.5, extra: 'dropped' }));
    const h = monitor.host('h1')!;
    expect(h.lastHeartbeatAt).to.equal(1_000_400);
    expect(h.clockOffsetMs).to.equal(-12.5);
    expect(h.health).to.deep.equal({ at: 5, receivedAt: 5, load1: 0.5, cpuPercent: 10, memAvailableBytes: 4 * GiB, diskFreeBytes: 50 * GiB, eventLoopLagMs: 1, clockOffsetMs: -12.5 });
  });

  it('keeps the plugin table a heartbeat reports until a later one reports another', () => {
    const { monitor } = setup();
    monitor.connected(connect('h1'));
    const table = [
      { name: 'collector-system', version: '1.0.0', state: 'failed', restarts: 5, error: { code: 'BOLT_ERR_PLUGIN_CRASHED', message: 'boom' } },
      { name: 'transport-ws', state: 'running', restarts: 0 },
    ];
    monitor.heartbeat(beat('h1', { plugins: table }));
    expect(monitor.host('h1')!.plugins).to.deep.equal(table);
    monitor.heartbeat(beat('h1'));
    expect(monitor.host('h1')!.plugins, 'a heartbeat without a table changes nothing').to.deep.equal(table);
    monitor.heartbeat(beat('h1', { plugins: [table[1]] }));
    expect(monitor.list()[0]!.plugins).to.deep.equal([table[1]]);
  });

  describe('thresholds (BUSY, the rest default; 4 CPUs and 8 GiB in the facts)', () => {
    const cases: [ThresholdMetric, Record<string, number>, 'healthy' | 'degraded' | 'unhealthy'][] = [
      ['cpuPercent', { cpuPercent: 89.9 }, 'healthy'],
      ['cpuPercent', { cpuPercent: 90 }, 'degraded'],
      ['cpuPercent', { cpuPercent: 99 }, 'unhealthy'],
      ['loadPerCpu', { load1: 7.9 }, 'healthy'],
      ['loadPerCpu', { load1: 8 }, 'degraded'],
      ['loadPerCpu', { load1: 16 }, 'unhealthy'],
      ['memAvailableBytes', { memAvailableBytes: 256 * MiB }, 'degraded'],
      ['memAvailableBytes', { memAvailableBytes: 64 * MiB }, 'unhealthy'],
      ['memAvailablePercent', { memAvailableBytes: 0.11 * 8 * GiB }, 'healthy'],
      ['memAvailablePercent', { memAvailableBytes: 0.1 * 8 * GiB }, 'degraded'],
      ['memAvailablePercent', { memAvailableBytes: 0.03 * 8 * GiB }, 'unhealthy'],
      ['diskFreeBytes', { diskFreeBytes: GiB + 1 }, 'healthy'],
      ['diskFreeBytes', { diskFreeBytes: GiB }, 'degraded'],
      ['diskFreeBytes', { diskFreeBytes: 100 * MiB }, 'unhealthy'],
      ['eventLoopLagMs', { eventLoopLagMs: 200 }, 'degraded'],
      ['eventLoopLagMs', { eventLoopLagMs: 1000 }, 'unhealthy'],
      ['clockOffsetMs', { clockOffsetMs: -4999 }, 'healthy'],
      ['clockOffsetMs', { clockOffsetMs: -5000 }, 'degraded'],
      ['clockOffsetMs', { clockOffsetMs: 60_000 }, 'unhealthy'],
    ];
    for (const [metric, figures, expected] of cases) {
      it(`${metric} ${JSON.stringify(figures)} gives ${expected}`, () => {
        const { monitor } = setup();
        monitor.connected(connect('h1'));
        monitor.heartbeat(beat('h1', figures));
        const h = monitor.host('h1')!;
        expect(h.state).to.equal(expected);
        if (expected !== 'healthy') expect(h.reason).to.match(new RegExp(`(^|, )${metric} \\S+ [<>]= \\S+ \\(${expected}\\)`));
      });
    }

    it('names every metric over a threshold, the unhealthy ones first', () => {
      const { monitor } = setup();
      monitor.connected(connect('h1'));
      monitor.heartbeat(beat('h1', { cpuPercent: 95, diskFreeBytes: 10 * MiB }));
      expect(monitor.host('h1')!.reason).to.equal(`diskFreeBytes 10485760 <= 104857600 (unhealthy), cpuPercent 95 >= 90 (degraded)`);
    });

    it('by default leave CPU use and load alone: a host under test is busy by design', () => {
      const monitor = new HealthMonitor({}, { now: () => 0 });
      monitor.connected(connect('h1'));
      monitor.heartbeat(beat('h1', { cpuPercent: 100, load1: 64 }));
      expect(monitor.host('h1')!.state).to.equal('healthy');
      monitor.heartbeat(beat('h1', { cpuPercent: 100, load1: 64, eventLoopLagMs: 250 }));
      expect(monitor.host('h1')!.state).to.equal('degraded');
    });

    it('are set per metric, and null turns a level off', () => {
      const { monitor } = setup({ thresholds: { cpuPercent: { degraded: 50, unhealthy: null } } });
      monitor.connected(connect('h1'));
      monitor.heartbeat(beat('h1', { cpuPercent: 100 }));
      expect(monitor.host('h1')!.state).to.equal('degraded');
      expect(monitor.settings.thresholds.diskFreeBytes).to.deep.equal(DEFAULT_SETTINGS.thresholds.diskFreeBytes);
    });

    it('leave out what the record or the facts do not give', () => {
      const { monitor } = setup();
      monitor.connected(connect('h1', { facts: {} }));
      // load 100 and 1 byte available would be unhealthy per CPU and in percent, but the facts give neither count nor total.
      monitor.heartbeat({ id: 'h1', load1: 100, memAvailableBytes: 300 * MiB, cpuPercent: 'busy' });
      expect(monitor.host('h1')!.state).to.equal('healthy');
      expect(monitor.host('h1')!.health).to.deep.equal({ load1: 100, memAvailableBytes: 300 * MiB });
    });

    it('refuse settings whose unhealthy threshold is on the healthy side of degraded', () => {
      expect(() => setup({ thresholds: { cpuPercent: { degraded: 90, unhealthy: 80 } } })).to.throw(BoltError, 'thresholds.cpuPercent.unhealthy (80) must be at least thresholds.cpuPercent.degraded (90)');
      expect(() => setup({ thresholds: { diskFreeBytes: { degraded: 10, unhealthy: 20 } } })).to.throw(BoltError, 'at most');
      expect(() => setup({ heartbeatIntervalMs: 1000, lostAfterMs: 3000 })).to.throw(BoltError, 'lostAfterMs (3000) must be longer than missingAfterMs (3000)');
    });
  });

  it('gets worse at once and better only after recoverAfterBeats records in a row, to the worst level among them', () => {
    const { monitor, states } = setup({ recoverAfterBeats: 3 });
    monitor.connected(connect('h1'));
    monitor.heartbeat(beat('h1', { cpuPercent: 99.5 }));
    expect(monitor.host('h1')!.state).to.equal('unhealthy');
    monitor.heartbeat(beat('h1'));
    monitor.heartbeat(beat('h1'));
    monitor.heartbeat(beat('h1', { cpuPercent: 99.5 })); // breaks the streak
    monitor.heartbeat(beat('h1'));
    monitor.heartbeat(beat('h1', { cpuPercent: 95 }));
    expect(monitor.host('h1')!.state).to.equal('unhealthy');
    monitor.heartbeat(beat('h1'));
    expect(monitor.host('h1')!.state).to.equal('degraded');
    expect(monitor.host('h1')!.reason).to.equal('cpuPercent 95 >= 90 (degraded); better for 3 heartbeat(s) in a row');
    monitor.heartbeat(beat('h1'));
    monitor.heartbeat(beat('h1'));
    monitor.heartbeat(beat('h1'));
    expect(monitor.host('h1')!.reason).to.equal('every metric within its thresholds for 3 heartbeat(s) in a row');
    expect(states('h1')).to.deep.equal(['healthy', 'unhealthy', 'degraded', 'healthy']);
  });

  it('turns missing after 3 heartbeat intervals of silence, then lost after lostAfterMs', () => {
    const { monitor, advance, transitions } = setup({ heartbeatIntervalMs: 1000, lostAfterMs: 10_000 });
    expect(monitor.settings.missingAfterMs).to.equal(3000);
    monitor.connected(connect('h1'));
    advance(500);
    monitor.heartbeat(beat('h1'));
    advance(2999);
    expect(monitor.host('h1')!.state).to.equal('healthy');
    advance(1);
    expect(monitor.host('h1')).to.include({ state: 'missing', reason: 'no heartbeat for 3000 ms', since: 1_003_500, connected: true });
    advance(6999);
    expect(monitor.host('h1')!.state).to.equal('missing');
    advance(1);
    expect(monitor.host('h1')).to.include({ state: 'lost', reason: 'no heartbeat for 10000 ms' });
    expect(transitions.map((t) => [t.from, t.to, t.at - 1_000_000])).to.deep.equal([[null, 'healthy', 0], ['healthy', 'missing', 3500], ['missing', 'lost', 10_500]]);
  });

  it('passes through missing when one tick crosses both timeouts', () => {
    const { monitor, advance, states } = setup({ missingAfterMs: 1000, lostAfterMs: 2000 });
    monitor.connected(connect('h1'));
    advance(5000);
    expect(states('h1')).to.deep.equal(['healthy', 'missing', 'lost']);
  });

  it('a disconnect makes the host missing at once; a close of an older session is ignored', () => {
    const { monitor, clock, transitions } = setup();
    monitor.connected(connect('h1', { sessionId: 's1' }));
    monitor.connected(connect('h1', { sessionId: 's2' }));
    expect(monitor.disconnected({ id: 'h1', sessionId: 's1', reason: 'replaced', at: 1 })).to.equal(false);
    expect(monitor.host('h1')!.state).to.equal('healthy');
    clock.t += 10;
    expect(monitor.disconnected({ id: 'h1', sessionId: 's2', reason: 'socket closed', at: 1 })).to.equal(true);
    expect(monitor.host('h1')).to.include({ state: 'missing', reason: 'disconnected: socket closed', connected: false, since: 1_000_010 });
    expect(transitions).to.have.length(2);
  });

  it('a host that reconnects while missing comes back under the same id, at its last level', () => {
    const { monitor, clock, advance, states } = setup({ missingAfterMs: 1000, lostAfterMs: 5000 });
    monitor.connected(connect('h1'));
    monitor.heartbeat(beat('h1', { cpuPercent: 95 }));
    monitor.disconnected({ id: 'h1', sessionId: 'h1-s1', reason: 'gone' });
    advance(2000);
    clock.t += 100;
    monitor.connected(connect('h1', { sessionId: 'h1-s2', address: '10.0.0.9' }));
    expect(monitor.host('h1')).to.include({ state: 'degraded', reason: 'reconnected', life: 1, connected: true, address: '10.0.0.9' });
    expect(monitor.summary()).to.deep.equal({ total: 1, healthy: 0, degraded: 1, unhealthy: 0, missing: 0, lost: 0 });
    monitor.heartbeat(beat('h1'));
    expect(states('h1')).to.deep.equal(['healthy', 'degraded', 'missing', 'degraded']);
  });

  it('a silent host whose heartbeats resume (stopped and continued) comes back without a reconnect', () => {
    const { monitor, clock, advance } = setup({ missingAfterMs: 1000, lostAfterMs: 5000 });
    monitor.connected(connect('h1'));
    advance(1500);
    expect(monitor.host('h1')!.state).to.equal('missing');
    clock.t += 1;
    monitor.heartbeat(beat('h1'));
    expect(monitor.host('h1')).to.include({ state: 'healthy', reason: 'heartbeat resumed', life: 1 });
    advance(900);
    expect(monitor.host('h1')!.state).to.equal('healthy');
  });

  it('a lost host that connects again starts a new life, healthy, and its history keeps the lost episode', () => {
    const { monitor, advance, clock } = setup({ missingAfterMs: 1000, lostAfterMs: 5000 });
    monitor.connected(connect('h1'));
    monitor.heartbeat(beat('h1', { cpuPercent: 99.5 }));
    advance(6000);
    expect(monitor.host('h1')!.state).to.equal('lost');
    clock.t += 1;
    monitor.connected(connect('h1', { sessionId: 'h1-s9' }));
    const h = monitor.host('h1')!;
    expect(h).to.include({ state: 'healthy', life: 2, reason: 'reconnected after being lost; life 2 begins' });
    expect(h.history.map((e) => [e.from, e.to, e.life])).to.deep.equal([
      [null, 'healthy', 1], ['healthy', 'unhealthy', 1], ['unhealthy', 'missing', 1], ['missing', 'lost', 1], ['lost', 'healthy', 2],
    ]);
    expect(monitor.summary().total).to.equal(1);
  });

  it('a lost host that heartbeats again starts a new life at the level its record gives', () => {
    const { monitor, advance } = setup({ missingAfterMs: 1000, lostAfterMs: 5000 });
    monitor.connected(connect('h1'));
    advance(6000);
    monitor.heartbeat(beat('h1', { eventLoopLagMs: 250 }));
    expect(monitor.host('h1')).to.include({ state: 'degraded', life: 2 });
    expect(monitor.host('h1')!.reason).to.equal('heartbeat after being lost; life 2 begins; eventLoopLagMs 250 >= 200 (degraded)');
  });

  it('keeps at most historyLimit transitions per host, the newest', () => {
    const { monitor } = setup({ historyLimit: 5, recoverAfterBeats: 1 });
    monitor.connected(connect('h1'));
    for (let i = 0; i < 20; i++) monitor.heartbeat(beat('h1', { cpuPercent: i % 2 === 0 ? 95 : 10 }));
    const history = monitor.host('h1')!.history;
    expect(history).to.have.length(5);
    expect(history.map((e) => [e.from, e.to])).to.deep.equal([
      ['degraded', 'healthy'], ['healthy', 'degraded'], ['degraded', 'healthy'], ['healthy', 'degraded'], ['degraded', 'healthy'],
    ]);
  });

  it('forgets lost hosts after lostRetentionMs', () => {
    const { monitor, advance } = setup({ missingAfterMs: 1000, lostAfterMs: 2000, lostRetentionMs: 10_000 });
    monitor.connected(connect('h1'));
    advance(2000);
    expect(monitor.host('h1')!.state).to.equal('lost');
    advance(9999);
    expect(monitor.host('h1')).to.not.equal(null);
    advance(1);
    expect(monitor.host('h1')).to.equal(null);
    expect(monitor.summary().total).to.equal(0);
  });

  it('tracks at most maxHosts: the longest-lost host makes room, and without a lost one a new host is refused', () => {
    const { monitor, advance, clock } = setup({ maxHosts: 3, missingAfterMs: 1000, lostAfterMs: 2000 });
    monitor.connected(connect('a'));
    advance(500);
    monitor.connected(connect('b'));
    advance(2000); // a and b lost, a first
    monitor.connected(connect('c'));
    expect(monitor.connected(connect('d'))).to.equal(true);
    expect(monitor.host('a')).to.equal(null);
    expect(monitor.list().map((h) => h.id)).to.deep.equal(['b', 'c', 'd']);
    clock.t += 1;
    monitor.connected(connect('b')); // b comes back: nobody is lost now
    expect(monitor.connected(connect('e'))).to.equal(false);
    expect(monitor.heartbeat(beat('f'))).to.equal(false);
    expect(monitor.refusedHosts).to.equal(2);
    expect(monitor.summary().total).to.equal(3);
  });

  it('lists by label and by state, sorted by name', () => {
    const { monitor } = setup();
    monitor.connected(connect('h3', { name: 'web-2', labels: { role: 'web', zone: 'b' } }));
    monitor.connected(connect('h1', { name: 'web-1', labels: { role: 'web', zone: 'a' } }));
    monitor.connected(connect('h2', { name: 'db-1', labels: { role: 'db', zone: 'a' } }));
    monitor.heartbeat(beat('h1', { cpuPercent: 95 }));
    const ids = (filter: unknown) => monitor.list(parseHostFilter(filter)).map((h) => h.id);
    expect(ids(undefined)).to.deep.equal(['h2', 'h1', 'h3']);
    expect(ids({ labels: { role: 'web' } })).to.deep.equal(['h1', 'h3']);
    expect(ids({ labels: { role: 'web', zone: 'a' } })).to.deep.equal(['h1']);
    expect(ids({ labels: { role: 'cache' } })).to.deep.equal([]);
    expect(ids({ labels: { toString: '' } })).to.deep.equal([]);
    expect(ids(JSON.parse('{ "labels": { "__proto__": "x" } }'))).to.deep.equal([]);
    expect(ids({ state: 'degraded' })).to.deep.equal(['h1']);
    expect(ids({ labels: { zone: 'a' }, state: 'healthy' })).to.deep.equal(['h2']);
    expect(() => parseHostFilter({ state: 'fine' })).to.throw(TypeError, 'state must be one of healthy, degraded, unhealthy, missing, lost');
    expect(() => parseHostFilter({ labels: { zone: 1 } })).to.throw(TypeError, 'label "zone" must be a string');
    expect(() => parseHostFilter('web')).to.throw(TypeError);
  });

  it('learns a host from its heartbeat when it connected before the monitor started', () => {
    const { monitor, transitions } = setup();
    expect(monitor.heartbeat(beat('h7', { cpuPercent: 92 }))).to.equal(true);
    expect(monitor.host('h7')).to.include({ name: 'h7', state: 'degraded', connected: true });
    expect(transitions[0]).to.include({ from: null, to: 'degraded' });
    monitor.connected(connect('h7'));
    expect(monitor.host('h7')).to.include({ name: 'h7-name', state: 'degraded' });
  });

  it('does not monitor peers of other roles (sinks do not heartbeat)', () => {
    const { monitor } = setup();
    expect(monitor.connected(connect('s1', { role: 'sink' }))).to.equal(false);
    expect(monitor.heartbeat(beat('s1'))).to.equal(false);
    expect(monitor.summary().total).to.equal(0);
  });

  it('ignores records without a usable id', () => {
    const { monitor, transitions } = setup();
    for (const bad of [null, 'h1', [], {}, { id: 7 }, { id: '' }, { id: 'x'.repeat(257) }]) {
      expect(monitor.connected(bad)).to.equal(false);
      expect(monitor.heartbeat(bad)).to.equal(false);
      expect(monitor.disconnected(bad)).to.equal(false);
    }
    expect(monitor.disconnected({ id: 'never-seen' })).to.equal(false);
    expect(transitions).to.deep.equal([]);
  });

  it('reads the CPU count and the memory total from the facts', () => {
    expect(cpuCountOf({ cpu: { cores: 8, physicalCores: 4 } })).to.equal(8);
    expect(cpuCountOf({ cpus: 2 })).to.equal(2);
    expect(cpuCountOf({ cpus: [{}, {}, {}] })).to.equal(3);
    expect(cpuCountOf({ cpuCount: 16 })).to.equal(16);
    expect(cpuCountOf({ cpu: { cores: 0 }, cpus: 'many' })).to.equal(null);
    expect(memTotalOf({ memory: { totalBytes: 512 } })).to.equal(512);
    expect(memTotalOf({ mem: { total: 1024 } })).to.equal(1024);
    expect(memTotalOf({ memory: { total: 2048 } })).to.equal(2048);
    expect(memTotalOf({ memory: 4096 })).to.equal(4096);
    expect(memTotalOf({ memTotalBytes: 8192 })).to.equal(8192);
    expect(memTotalOf({ mem: 'lots' })).to.equal(null);
  });

  it('plugin.json gives the same defaults as DEFAULT_SETTINGS, through the config loader', async () => {
    const manifest = await readManifest(PLUGIN_DIR);
    const settings = pluginSettings(manifest, { plugins: {} } as never, path.join(PLUGIN_DIR, 'bolt.yaml')) as Record<string, unknown>;
    const { tickMs, ...rest } = settings;
    expect(tickMs).to.equal(250);
    expect(rest).to.deep.equal({ ...DEFAULT_SETTINGS });
  });
});
