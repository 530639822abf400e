/**
 * Fault zoo: stop(ctx) never finishes (it returns a promise that never settles), so unloading the
 * plugin must rely on the core's stop deadline. There is no stop() under pool isolation, so this
 * fault is for `worker` and `process` only.
 */
import { definePlugin } from 'bolt-plugin-sdk';

export default definePlugin({
  start() {},
  stop() {
    return new Promise<void>(() => {});
  },
});
