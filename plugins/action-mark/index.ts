/**
 * action-mark: reaches the task's start instant and reports it (the `started` event's startedAt),
 * then finishes at once. serveAction does the precise wait in this worker.
 */
import { defineAction, serveAction, type ActionServer } from 'bolt-plugin-sdk';

let server: ActionServer | null = null;

export default defineAction({
  start(ctx) {
    server = serveAction(ctx, 'mark', async (_task, { waitForStart }) => {
      await waitForStart();
      return { kind: 'finished', durationMs: 0 };
    });
  },
  async stop() {
    await server?.close();
    server = null;
  },
});
