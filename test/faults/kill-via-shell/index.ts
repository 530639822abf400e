/**
 * Fault zoo: kills its own process through child_process (`kill -9 <own pid>`), which the worker
 * hardening does not intercept.
 *
 * Under `worker` or `process` isolation the plugin subscribes to the topic `fault.trigger` and
 * faults in that subscriber when a message carries its own name. Under `pool` isolation the same
 * default export is the pool function, and every call faults.
 */
import { execSync } from 'node:child_process';
import { definePlugin } from 'bolt-plugin-sdk';

function fault(): Buffer {
  return execSync(`kill -9 ${process.pid}`);
}

export default Object.assign((_input: unknown) => fault(), definePlugin({
  start(ctx) {
    ctx.bus.subscribe('fault.trigger', (target) => {
      if (target === ctx.name) fault();
    });
  },
}));
