/**
 * Fault zoo: one huge allocation, `new Array(1e8).fill(0)`. Inside a worker thread this
 * aborts the whole Node 20 process even under resourceLimits (MEASURED.md, section 3).
 *
 * Under `worker` or `process` isolation the plugin subscribes to the topic `fault.trigger` and
 * faults in that subscriber when a message carries its own name. Under `pool` isolation the same
 * default export is the pool function, and every call faults.
 */
import { definePlugin } from 'bolt-plugin-sdk';

function fault(): number {
  return new Array(1e8).fill(0).length;
}

export default Object.assign((_input: unknown) => fault(), definePlugin({
  start(ctx) {
    ctx.bus.subscribe('fault.trigger', (target) => {
      if (target === ctx.name) fault();
    });
  },
}));
