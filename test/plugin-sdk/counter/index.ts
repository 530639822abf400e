import { definePlugin } from 'bolt-plugin-sdk';

export default definePlugin<{ step: number }>({
  start(ctx) {
    let total = 0;
    ctx.bus.provide('counter.add', (times) => {
      total += ctx.config.step * Number(times ?? 1);
      ctx.bus.publish('counter.changed', total);
      return total;
    });
    ctx.bus.provide('counter.total', () => total);
    ctx.log.info({ step: ctx.config.step }, 'counting');
  },
  stop(ctx) {
    ctx.log.info('stopped');
  },
});
