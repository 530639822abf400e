/**
 * Fault zoo: the heap grows in many small allocations, all kept alive, until it is exhausted.
 *
 * Under `worker` or `process` isolation the plugin subscribes to the topic `fault.trigger` and
 * faults in that subscriber when a message carries its own name. Under `pool` isolation the same
 * default export is the pool function, and every call faults.
 */
import { definePlugin } from 'bolt-plugin-sdk';

const hoard: number[][] = [];

function fault(): never {
  for (;;) hoard.push([hoard.length, hoard.length + 1, hoard.length + 2, hoard.length + 3]);
}

export default Object.assign((_input: unknown) => fault(), definePlugin({
  start(ctx) {
    ctx.bus.subscribe('fault.trigger', (target) => {
      if (target === ctx.name) fault();
    });
  },
}));
