/**
 * Fault zoo: a native crash. What a segfault in native code does is have the kernel deliver
 * SIGSEGV to the process; this sends that signal through the OS (`kill -SEGV`), which the
 * worker hardening cannot intercept, just as it cannot intercept a real segfault.
 *
 * Under `worker` or `process` isolation the plugin subscribes to the topic `fault.trigger` and
 * faults in that subscriber when a message carries its own name. Under `pool` isolation the same
 * default export is the pool function, and every call faults.
 */
import { execFileSync } from 'node:child_process';
import { definePlugin } from 'bolt-plugin-sdk';

function fault(): Buffer {
  return execFileSync('kill', ['-SEGV', String(process.pid)]);
}

export default Object.assign((_input: unknown) => fault(), definePlugin({
  start(ctx) {
    ctx.bus.subscribe('fault.trigger', (target) => {
      if (target === ctx.name) fault();
    });
  },
}));
