/**
 * action-sleep: waits `with.duration` on this client host (see README.md); serveAction does the
 * start instant, timeout, cancel and reporting.
 */
import { BoltError, defineAction, serveAction, type ActionServer } from 'bolt-plugin-sdk';
import { sleep, sleepDurationMs } from './sleep.ts';

let server: ActionServer | null = null;

export default defineAction({
  start(ctx) {
    server = serveAction(ctx, 'sleep', async (task, { signal, waitForStart }) => {
      let durationMs: number;
      try {
        durationMs = sleepDurationMs(task.with);
      } catch (err) {
        if (err instanceof BoltError) return { kind: 'failed', error: { code: err.code, message: err.message } };
        throw err;
      }
      await waitForStart();
      const r = await sleep(durationMs, signal);
      return { kind: r.outcome, durationMs: r.durationMs, ...(r.error && { error: r.error }) };
    });
  },
  async stop() {
    await server?.close();
    server = null;
  },
});
