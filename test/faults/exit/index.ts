/**
 * Fault zoo: process.exit(1).
 *
 * Under `worker` or `process` isolation the plugin subscribes to the topic `fault.trigger` and
 * faults in that subscriber when a message carries its own name. Under `pool` isolation the same
 * default export is the pool function, and every call faults.
 */
import { definePlugin } from 'bolt-plugin-sdk';

function fault(): never {
  process.exit(1);
}

export default Object.assign((_input: unknown) => fault(), definePlugin({
  start(ctx) {
    ctx.bus.subscribe('fault.trigger', (target) => {
      if (target === ctx.name) fault();
    });
  },
}));
