/**
 * `bolt-core demo`: the whole system on this machine. Starts a server (with its sink) and N client
 * agents as separate processes on loopback, waits until every client is accepted and healthy,
 * runs a job (default tasks/quickstart.yaml) with live progress, prints the summary and where to
 * look, saves the run's report, and stops everything (with --keep, after Ctrl-C, so the dashboard
 * can be looked at).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { usageError, type Command } from './command.ts';
import { followRun, progressReporter, submitRun } from './run.ts';
import { saveReport } from './report.ts';
import { formatDuration, taskTable } from './run-view.ts';
import { connectServer, type ServerApi } from './server-api.ts';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const BIN = path.join(REPO, 'bin', 'bolt-core');
const DEFAULT_JOB = path.join(REPO, 'tasks', 'quickstart.yaml');

/** A TCP port that was free a moment ago on 127.0.0.1. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** A `bolt-core start` child through bin/bolt-core (its launcher's settings, as a user starts one), its log to a file. */
function startProcess(args: string[], logFile: string): ChildProcess {
  const log = createWriteStream(logFile, { flags: 'a' });
  const child = spawn(BIN, ['start', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, BOLT_LOG_LEVEL: process.env.BOLT_LOG_LEVEL ?? 'info' } });
  child.stdout!.pipe(log);
  child.stderr!.pipe(log);
  return child;
}

async function stopAll(children: ChildProcess[]): Promise<void> {
  await Promise.all(children.map((child) => new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  })));
}

async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>, children: ChildProcess[]): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const dead = children.find((c) => c.exitCode !== null);
    if (dead) throw new Error(`a demo process exited (code ${dead.exitCode}) while waiting for ${what}`);
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

export const demoCommand: Command = {
  usage: 'bolt-core demo [--clients N] [--data DIR] [--no-progress] [--keep] [JOB]',
  summary: 'run a job on a local server, sink and N client processes (default 4, tasks/quickstart.yaml), save its report, then stop them (--keep: leave them up for the dashboard until Ctrl-C)',
  options: {
    clients: { type: 'string' },
    keep: { type: 'boolean' },
    data: { type: 'string' },
    'no-progress': { type: 'boolean' },
  },
  async run({ values, positionals }) {
    const [jobArg, ...extra] = positionals;
    if (extra.length > 0) throw usageError('demo takes at most one job file', demoCommand);
    const clients = Number(values.clients ?? 4);
    if (!Number.isInteger(clients) || clients < 1 || clients > 64) throw usageError(`--clients must be a whole number from 1 to 64 (got '${values.clients}')`, demoCommand);
    const job = path.resolve(jobArg ?? DEFAULT_JOB);
    let text: string;
    try {
      text = await readFile(job, 'utf8');
    } catch (err) {
      throw usageError(`cannot read ${job}: ${(err as Error).message}`, demoCommand);
    }
    const root = path.resolve((values.data as string | undefined) ?? path.join('.bolt', 'demo'));
    await mkdir(root, { recursive: true, mode: 0o700 });
    const [port, sinkPort] = [await freePort(), await freePort()];
    const say = (line: string) => process.stderr.write(`${line}\n`);
    say(`demo: server and sink on 127.0.0.1:${port} and :${sinkPort}, ${clients} clients; logs and state in ${root}`);

    const children: ChildProcess[] = [];
    const serverDir = path.join(root, 'server');
    children.push(startProcess(['--data', serverDir, '--port', String(port), '--sink-port', String(sinkPort), '--listen', '127.0.0.1', '--auto-accept'], path.join(root, 'server.log')));
    const onSigint = () => {
      say('\ndemo: interrupted; stopping every process');
      void stopAll(children).then(() => process.exit(130));
    };
    process.once('SIGINT', onSigint);
    try {
      const token = await waitFor('the server to start', 30_000, async () => (await readFile(path.join(serverDir, 'plugins', 'transport-ws', 'api-token'), 'utf8')).trim() || undefined, children);
      const api: ServerApi = connectServer(`http://127.0.0.1:${port}`, token);
      for (let i = 1; i <= clients; i++) {
        children.push(startProcess([
          '--role', 'client', '--server', `ws://127.0.0.1:${port}`, '--data', path.join(root, `client-${i}`),
          '--name', `demo-${i}`, '--label', 'demo=true', '--label', `index=${i}`,
        ], path.join(root, `client-${i}.log`)));
      }
      let shown = -1;
      await waitFor(`${clients} healthy clients`, 60_000, async () => {
        const hosts = await api.get<{ state: string }[]>('/api/hosts');
        const healthy = hosts.filter((h) => h.state === 'healthy').length;
        if (healthy !== shown) say(`demo: ${healthy}/${clients} clients connected and healthy`);
        shown = healthy;
        return healthy >= clients ? true : undefined;
      }, children);

      const started = performance.now();
      const submitted = await submitRun(api, job, text, {});
      if ('scheduleId' in submitted) throw usageError(`${job} has a schedule: the demo runs a job once; remove 'schedule:' or use 'bolt-core run'`, demoCommand);
      const { runId } = submitted;
      say(`demo: run ${runId} of ${path.relative(process.cwd(), job) || job}`);
      const progress = progressReporter(!values['no-progress']);
      const run = await followRun(api, runId, (r) => progress.update(r)).finally(() => progress.stop());
      process.stdout.write(`\n${taskTable(run)}\n\nrun ${runId} ${run.state} in ${formatDuration(performance.now() - started)}\n`);
      const sinkUrl = `http://127.0.0.1:${sinkPort}`;
      const reportFile = path.join(root, `report-${runId}.html`);
      const report = await saveReport(connectServer(sinkUrl, token), runId, reportFile).then(() => reportFile, (err: Error) => {
        say(`demo: could not save the run's report: ${err.message}`);
        return null;
      });
      process.stdout.write([
        '',
        'Where to look:',
        ...(values.keep ? [`  dashboard         ${sinkUrl}/?token=${token}#/runs/${runId}`] : []),
        ...(report ? [`  report            ${report}  (one HTML file, opens offline)`] : []),
        `  logs              ${root}/server.log, ${root}/client-N.log`,
        `  results (SQLite)  ${path.join(serverDir, 'plugins', 'writer-sqlite', 'sink.sqlite')}`,
        `  again, by hand    bolt-core start --data ${serverDir} --auto-accept`,
        `                    bolt-core show ${runId} --data ${serverDir}`,
        ...(values.keep ? [] : ['  the dashboard     bolt-core demo --keep (npm start -- --keep) leaves everything up to look at it']),
        '',
      ].join('\n'));
      if (values.keep) {
        process.off('SIGINT', onSigint);
        say('demo: server, sink and clients stay up for the dashboard; Ctrl-C stops them');
        await new Promise<void>((resolve) => {
          process.once('SIGINT', () => resolve());
          process.once('SIGTERM', () => resolve());
        });
      }
      return run.state === 'succeeded' ? 0 : 1;
    } finally {
      process.off('SIGINT', onSigint);
      await stopAll(children);
      say('demo: stopped every process');
    }
  },
};
