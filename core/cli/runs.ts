/** `bolt-core runs`, `bolt-core show RUN`, `bolt-core cancel RUN`: the server's runs. */
import { usageError, type Command } from './command.ts';
import { serverFromFlags, SERVER_OPTIONS } from './run.ts';
import { formatDuration, hostTable, taskTable, type RunView } from './run-view.ts';
import { ago, formatTable } from './table.ts';

interface RunListEntry {
  runId: string;
  job: string;
  state: string;
  createdAt: number | string;
  startedAt?: number | null;
  endedAt?: number | null;
  scheduled?: boolean;
  tasks?: Record<string, number>;
}

export const runsCommand: Command = {
  usage: 'bolt-core runs [--server URL] [--token TOKEN] [--data DIR] [--json]',
  summary: 'list the runs on the server, newest first (scheduled ones included)',
  options: { ...SERVER_OPTIONS, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    if (positionals.length > 0) throw usageError(`unknown argument '${positionals[0]}'`, runsCommand);
    const api = await serverFromFlags(values, runsCommand);
    const runs = await api.get<RunListEntry[]>('/api/runs');
    if (values.json) {
      process.stdout.write(`${JSON.stringify(runs, null, 2)}\n`);
      return 0;
    }
    const rows = runs.map((r) => [
      r.runId, r.job, r.state, ago(r.createdAt),
      r.startedAt && r.endedAt ? formatDuration(r.endedAt - r.startedAt) : '-',
      Object.entries(r.tasks ?? {}).filter(([, n]) => n > 0).map(([s, n]) => `${n} ${s}`).join(', ') || '-',
      r.scheduled ? 'cron' : '',
    ]);
    process.stdout.write(`${formatTable(['RUN', 'JOB', 'STATE', 'CREATED', 'DURATION', 'TASKS', ''], rows)}\n`);
    return 0;
  },
};

export const showCommand: Command = {
  usage: 'bolt-core show RUN [--server URL] [--token TOKEN] [--data DIR] [--json]',
  summary: 'one run per task and per host: state, exit code, start instant, duration, output',
  options: { ...SERVER_OPTIONS, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const [runId, ...extra] = positionals;
    if (!runId || extra.length > 0) throw usageError('show takes one run id', showCommand);
    const api = await serverFromFlags(values, showCommand);
    const run = await api.get<RunView>(`/api/runs/${encodeURIComponent(runId)}`);
    if (values.json) {
      process.stdout.write(`${JSON.stringify(run, null, 2)}\n`);
      return 0;
    }
    process.stdout.write(`run ${run.runId} (${run.job}): ${run.state}${run.error ? ` — ${run.error.code}: ${run.error.message}` : ''}\n\n${taskTable(run)}\n\n${hostTable(run)}\n`);
    return 0;
  },
};

export const cancelCommand: Command = {
  usage: 'bolt-core cancel RUN [--server URL] [--token TOKEN] [--data DIR] [--json]',
  summary: 'stop a run: cancels what runs on every host, dispatches nothing more',
  options: { ...SERVER_OPTIONS, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const [runId, ...extra] = positionals;
    if (!runId || extra.length > 0) throw usageError('cancel takes one run id', cancelCommand);
    const api = await serverFromFlags(values, cancelCommand);
    const run = await api.post<RunView>(`/api/runs/${encodeURIComponent(runId)}/cancel`, '');
    process.stdout.write(values.json ? `${JSON.stringify(run)}\n` : `run ${runId}: ${run.state}\n`);
    return 0;
  },
};
