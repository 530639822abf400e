/** `bolt-core run JOB`: submits a job to the server, shows progress per task, ends with a summary. */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import cliProgress from 'cli-progress';
import { parsePairs, usageError, type Command } from './command.ts';
import { ApiError, apiBaseUrl, apiToken, connectServer, type ServerApi } from './server-api.ts';
import { FINAL_RUN_STATES, formatDuration, formatJobIssue, hostCounts, taskTable, type JobIssue, type RunView } from './run-view.ts';

const POLL_MS = 250;

/** Connects to the server the flags name (shared by run, runs, show, cancel). */
export async function serverFromFlags(values: Record<string, unknown>, command: Command): Promise<ServerApi> {
  const ca = values['tls-ca'] as string | undefined;
  return connectServer(
    apiBaseUrl(values.server as string | undefined, command),
    await apiToken(values.token as string | undefined, (values.data as string | undefined) ?? '.bolt'),
    ca ? readFileSync(ca) : undefined,
  );
}

export const SERVER_OPTIONS = {
  server: { type: 'string' },
  token: { type: 'string' },
  data: { type: 'string' },
  'tls-ca': { type: 'string' },
} as const;

/** What the server answers to a job with a `schedule:`: it registers a trigger instead of starting a run. */
export interface ScheduledJob {
  scheduleId: string;
  job: string;
  schedule: string;
  nextRunAt: number | null;
}

/** Submits a job: the new run's id, or the schedule it registered. An invalid job prints its issues and throws an exit-2 error. */
export async function submitRun(api: ServerApi, file: string, text: string, vars: Record<string, string>): Promise<{ runId: string } | ScheduledJob> {
  const query = new URLSearchParams({ file: path.basename(file) });
  for (const [k, v] of Object.entries(vars)) query.append('var', `${k}=${v}`);
  try {
    return await api.post<{ runId: string } | ScheduledJob>(`/api/runs?${query}`, text, /\.json$/i.test(file) ? 'application/json' : 'application/yaml');
  } catch (err) {
    if (err instanceof ApiError && Array.isArray(err.details?.issues)) {
      for (const issue of err.details.issues as JobIssue[]) process.stderr.write(`${formatJobIssue({ ...issue, file })}\n`);
    }
    throw err;
  }
}

/** Polls the run until it ends, calling `onUpdate` with each new view. */
export async function followRun(api: ServerApi, runId: string, onUpdate: (run: RunView) => void, signal?: AbortSignal): Promise<RunView> {
  for (;;) {
    const run = await api.get<RunView>(`/api/runs/${encodeURIComponent(runId)}`);
    onUpdate(run);
    if (FINAL_RUN_STATES.has(run.state) || signal?.aborted) return run;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

/** Live progress: bars on a terminal, one line per task state change otherwise. */
export function progressReporter(enabled: boolean): { update(run: RunView): void; stop(): void } {
  if (!enabled) return { update() {}, stop() {} };
  if (process.stderr.isTTY) {
    const bars = new cliProgress.MultiBar({
      format: ' {task} |{bar}| {value}/{total} hosts  {state}',
      hideCursor: true,
      clearOnComplete: false,
      stream: process.stderr,
    }, cliProgress.Presets.shades_classic);
    const byTask = new Map<string, cliProgress.SingleBar>();
    const width = { task: 0 };
    return {
      update(run) {
        width.task = Math.max(width.task, ...run.tasks.map((t) => t.taskId.length));
        for (const t of run.tasks) {
          const c = hostCounts(t);
          const payload = { task: t.taskId.padEnd(width.task), state: `${t.state}${c.failed ? `, ${c.failed} failed` : ''}${c.lost ? `, ${c.lost} lost` : ''}` };
          const bar = byTask.get(t.taskId) ?? bars.create(Math.max(1, c.total), 0, payload);
          byTask.set(t.taskId, bar);
          bar.setTotal(Math.max(1, c.total));
          bar.update(c.ok + c.failed + c.lost, payload);
        }
      },
      stop: () => bars.stop(),
    };
  }
  const seen = new Map<string, string>();
  return {
    update(run) {
      for (const t of run.tasks) {
        const c = hostCounts(t);
        const line = `${t.state} ${c.ok}/${c.total}`;
        if (seen.get(t.taskId) === line) continue;
        seen.set(t.taskId, line);
        process.stderr.write(`task ${t.taskId}: ${t.state}${c.total ? `, ${c.ok}/${c.total} hosts ok` : ''}${c.failed ? `, ${c.failed} failed` : ''}${c.lost ? `, ${c.lost} lost` : ''}\n`);
      }
    },
    stop() {},
  };
}

export const runCommand: Command = {
  usage: 'bolt-core run JOB [--server http://HOST:7700] [--token TOKEN] [--data DIR] [--var NAME=VALUE]... [--no-progress] [--json] [--tls-ca FILE]',
  summary: 'run a job on the server: live progress per task, then a summary (exit 0 succeeded, 1 failed, 2 bad input)',
  options: {
    ...SERVER_OPTIONS,
    var: { type: 'string', multiple: true },
    'no-progress': { type: 'boolean' },
    json: { type: 'boolean' },
  },
  async run({ values, positionals }) {
    const [file, ...extra] = positionals;
    if (!file || extra.length > 0) throw usageError('run takes one job file', runCommand);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      throw usageError(`cannot read ${file}: ${(err as Error).message}`, runCommand);
    }
    const vars = parsePairs((values.var as string[] | undefined) ?? [], 'var', runCommand);
    const api = await serverFromFlags(values, runCommand);
    const started = performance.now();
    const submitted = await submitRun(api, file, text, vars);
    if ('scheduleId' in submitted) {
      const next = submitted.nextRunAt ? new Date(submitted.nextRunAt).toISOString() : 'unknown';
      process.stdout.write(values.json ? `${JSON.stringify(submitted)}\n` : `job '${submitted.job}' scheduled (${submitted.schedule}); next run ${next}. 'bolt-core runs' lists its runs.\n`);
      return 0;
    }
    const { runId } = submitted;
    const progress = progressReporter(!values['no-progress'] && !values.json);
    if (!values.json) process.stderr.write(`run ${runId} started on ${api.url}\n`);
    let interrupts = 0;
    const onSigint = () => {
      interrupts++;
      if (interrupts > 1) process.exit(130);
      process.stderr.write(`\ncancelling run ${runId} on every host (Ctrl-C again to leave it running)\n`);
      void api.post(`/api/runs/${encodeURIComponent(runId)}/cancel`, '').catch((err: Error) => process.stderr.write(`cancel failed: ${err.message}\n`));
    };
    process.on('SIGINT', onSigint);
    let run: RunView;
    try {
      run = await followRun(api, runId, (r) => progress.update(r));
    } finally {
      progress.stop();
      process.off('SIGINT', onSigint);
    }
    if (values.json) {
      process.stdout.write(`${JSON.stringify(run, null, 2)}\n`);
    } else {
      process.stdout.write(`${taskTable(run)}\n\nrun ${runId} ${run.state} in ${formatDuration(performance.now() - started)}${run.error ? `: ${run.error.code}: ${run.error.message}` : ''}\nper host: bolt-core show ${runId}\n`);
    }
    return run.state === 'succeeded' ? 0 : 1;
  },
};
