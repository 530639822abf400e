import { definePlugin } from 'bolt-plugin-sdk';

interface Config {
  intervalMs: number;
}

/** Publishes `{ seq, at }` on `example.heartbeat` every `intervalMs`, and answers `example.heartbeat.count`. */
export default definePlugin<Config>({
  start(ctx) {
    let seq = 0;
    const timer = setInterval(() => ctx.bus.publish('example.heartbeat', { seq: seq++, at: Date.now() }), ctx.config.intervalMs);
    ctx.signal.addEventListener('abort', () => clearInterval(timer));
    ctx.bus.provide('example.heartbeat.count', () => seq);
    ctx.log.info({ intervalMs: ctx.config.intervalMs }, 'beating');
  },
});
