import { definePlugin } from 'bolt-plugin-sdk';
import { HealthMonitor, parseHostFilter, type MonitorSettings } from './monitor.ts';

interface Config extends MonitorSettings {
  tickMs: number;
}

/** The server's clock: wall-clock based like the transport's, but monotonic, so a clock step does not mark every host missing. */
function serverClock(): number {
  return performance.timeOrigin + performance.now();
}

/**
 * Watches every client host: subscribes to `host.connected`, `host.heartbeat` and
 * `host.disconnected`, applies the timeouts every `tickMs`, publishes `host.state` on every
 * transition and provides `health.hosts`, `health.host` and `health.summary` (see README.md).
 */
export default definePlugin<Config>({
  start(ctx) {
    const { tickMs, ...settings } = ctx.config;
    const monitor = new HealthMonitor(settings, {
      now: serverClock,
      onTransition(t) {
        ctx.bus.publish('host.state', t);
        const fields = { id: t.id, name: t.name, from: t.from, to: t.to, reason: t.reason };
        if (t.to === 'lost') ctx.log.warn(fields, 'host lost');
        else if (t.to === 'missing') ctx.log.info(fields, 'host missing');
        else ctx.log.debug(fields, 'host state');
      },
    });

    ctx.bus.subscribe('host.connected', (data) => monitor.connected(data));
    ctx.bus.subscribe('host.heartbeat', (data) => monitor.heartbeat(data));
    ctx.bus.subscribe('host.disconnected', (data) => monitor.disconnected(data));

    let refusedLogged = 0;
    const timer = setInterval(() => {
      monitor.tick(serverClock());
      if (monitor.refusedHosts > refusedLogged) {
        ctx.log.warn({ refused: monitor.refusedHosts - refusedLogged, maxHosts: monitor.settings.maxHosts }, 'hosts not monitored: maxHosts reached and none is lost');
        refusedLogged = monitor.refusedHosts;
      }
    }, tickMs);
    ctx.signal.addEventListener('abort', () => clearInterval(timer));

    ctx.bus.provide('health.hosts', (data) => monitor.list(parseHostFilter(data)));
    ctx.bus.provide('health.host', (data) => {
      const id = (data as { id?: unknown } | null | undefined)?.id;
      if (typeof id !== 'string') throw new TypeError('health.host takes { id: string }');
      return monitor.host(id);
    });
    ctx.bus.provide('health.summary', () => monitor.summary());

    // After a restart of this plugin, hosts already connected send heartbeats but no host.connected:
    // learn their names, labels and facts from the transport when it is running.
    ctx.bus.request('transport.sessions', undefined, { timeoutMs: 5000 }).then(
      (sessions) => {
        if (!Array.isArray(sessions)) return;
        const known = sessions.filter((s) => monitor.connected(s)).length;
        ctx.log.info({ known }, 'learned connected hosts from transport.sessions');
      },
      (err: unknown) => ctx.log.debug({ code: (err as { code?: unknown }).code }, 'transport.sessions not available; hosts are learned as they connect'),
    );
    ctx.log.info({ missingAfterMs: monitor.settings.missingAfterMs, lostAfterMs: monitor.settings.lostAfterMs, tickMs }, 'monitoring hosts');
  },
});
