/**
 * action-shell: runs a shell task on this client host (see README.md). serveAction does the
 * waiting, timeout, cancel and reporting; this entry only checks `with` and runs the command.
 */
import { defineAction, serveAction, type ActionServer } from 'bolt-plugin-sdk';
import { runShell, specProblem, type ShellSpec } from './run.ts';

interface ShellSettings {
  killGraceMs: number;
  outputLimitBytes: number;
}

let server: ActionServer | null = null;

export default defineAction<ShellSettings>({
  start(ctx) {
    const { killGraceMs, outputLimitBytes } = ctx.config;
    server = serveAction(ctx, 'shell', async (task, { signal, waitForStart }) => {
      const spec = task.with as ShellSpec;
      // A with: that cannot run fails before the start instant, so no host reports it started.
      const problem = specProblem(spec);
      if (problem !== null) return { kind: 'failed', error: { code: 'BOLT_ERR_ACTION_SPEC', message: problem } };
      // A start instant ahead: the shell is forked now and released at the instant (see startWhen).
      const startWhen = waitForStart();
      if (task.startAt === null) await startWhen;
      const r = await runShell(spec, { signal, killGraceMs, outputLimitBytes, ...(task.startAt !== null && { startWhen }) });
      return {
        kind: r.outcome === 'spawn-error' ? 'failed' : r.outcome,
        exitCode: r.exitCode,
        durationMs: r.durationMs,
        stdoutTail: r.stdoutTail,
        stderrTail: r.stderrTail,
        ...(r.error && { error: r.error }),
      };
    });
  },
  async stop() {
    await server?.close();
    server = null;
  },
});
