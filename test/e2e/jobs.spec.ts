/**
 * Jobs end to end with real processes: a server (with its sink, or split from it), three
 * `--role client` agents and `bolt-core run | show | cancel | runs` as separate processes on
 * loopback. Covers the DAG order, failure and `maxFailedHosts`, timeouts and cancels ending whole
 * process trees, a client lost mid-task, a server killed mid-run, a separate sink stopped mid-run,
 * and cron schedules. Job files are in test/e2e/jobs/; every client has BOLT_E2E_HOST=<its name>
 * in its environment, so a command can behave differently on one host.
 */
import { expect } from 'chai';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { serviceRequest } from '../../core/cli/admin-client.ts';
import type { HostResult, RunView, TaskView } from '../../core/cli/run-view.ts';
import { REPO } from '../helpers/core.ts';
import { fleetForSuite, ProcessFleet, sinkRows, taskOf } from '../helpers/e2e-fleet.ts';
import { eventually, runCli, type CliResult } from '../helpers/processes.ts';

const JOBS = path.join(REPO, 'test', 'e2e', 'jobs');
const NAMES = ['c0', 'c1', 'c2'];

/** Short heartbeat and health timers (lost 4 s after the last heartbeat) and a short aggregator grace. */
const FAST_CONFIG = {
  plugins: {
    'transport-ws': { heartbeatIntervalMs: 300 },
    'health-monitor': { missingAfterMs: 1500, lostAfterMs: 4000, tickMs: 100 },
    'aggregator-results': { graceMs: 2000 },
  },
};

/**
 * Digits unique to this test process. The jobs' sleeps get durations such as `300.<UNIQUE><tag>`,
 * so /proc tells exactly which processes a test's commands started.
 */
const UNIQUE = `${String(process.pid).padStart(7, '0')}${String(Date.now() % 1_000_000).padStart(6, '0')}`;
const marker = (tag: number): string => `${UNIQUE}${String(tag).padStart(2, '0')}`;

interface ProcEntry {
  pid: number;
  ppid: number;
  argv: string[];
}

/** State and parent of a process from /proc/PID/stat (comm may hold spaces and parentheses). */
function procStat(pid: number | string): { state: string; ppid: number } | null {
  let line: string;
  try {
    line = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return null;
  }
  const fields = line.slice(line.lastIndexOf(')') + 2).split(' ');
  return { state: fields[0] ?? '', ppid: Number(fields[1]) };
}

/** Live (not zombie) `sh` and `sleep` processes with `text` in their command line. */
function commandsWith(text: string): ProcEntry[] {
  const found: ProcEntry[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').filter((a) => a !== '');
    } catch {
      continue;
    }
    if (!['sh', 'dash', 'bash', 'sleep'].includes(path.basename(argv[0] ?? ''))) continue;
    if (!argv.some((a) => a.includes(text))) continue;
    const stat = procStat(name);
    if (stat && stat.state !== 'Z' && stat.state !== 'X') found.push({ pid: Number(name), ppid: stat.ppid, argv });
  }
  return found;
}

const sleepsWith = (text: string): ProcEntry[] => commandsWith(text).filter((p) => path.basename(p.argv[0]!) === 'sleep');

/** SIGKILLs what the jobs of this test process left running (a killed client cannot end its commands). */
function killLeftovers(text = UNIQUE): void {
  for (const p of commandsWith(text)) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/** A JSON answer of the CLI, with the CLI's stderr in the error when it is not JSON. */
function parseJson<T>(r: CliResult): T {
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`bolt-core exited ${r.code} without JSON on stdout:\n${r.stdout.slice(-2000)}\nstderr:\n${r.stderr.slice(-2000)}`);
  }
}

const job = (name: string): string => path.join(JOBS, `${name}.yaml`);

/** The task's per-host rows, sorted by host name. */
function results(t: TaskView): HostResult[] {
  return [...(t.results ?? [])].sort((a, b) => a.host.localeCompare(b.host));
}

interface RunListEntry {
  runId: string;
  job: string;
  state: string;
  createdAt: number;
  scheduled: { scheduleId: string; schedule: string } | null;
}

const EVENTS_SQL = `SELECT h.name AS host, e.kind AS kind, e.message_id AS id FROM events e
  JOIN tasks t ON t.id = e.task JOIN runs r ON r.id = t.run JOIN hosts h ON h.id = e.host
  WHERE r.run_id = ? AND t.task_id = ? ORDER BY h.name, e.at`;

/**
 * One server and three clients c0..c2 (label e2e=jobs), in a temp dir. Split: the server without
 * its sink, a client 'early' (label e2e=early) that connects before the sink process does, then
 * the sink, then c0..c2.
 */
class Fleet extends ProcessFleet {
  constructor(split: boolean) {
    super(split, 'bolt-jobs-');
  }

  /** `--server` and `--data` for run, runs, show and cancel. */
  get flags(): string[] {
    return ['--server', `http://127.0.0.1:${this.port}`, '--data', this.serverData];
  }

  async start(): Promise<void> {
    await this.prepare(FAST_CONFIG);
    await this.startServer();
    if (this.split) {
      this.startClient('early', ['--label', 'e2e=early'], undefined, { BOLT_E2E_HOST: 'early' });
      await this.waitHealthy(['early'], 60_000);
      await this.startSinkAndWait();
    }
    for (const [i, name] of NAMES.entries()) this.startClient(name, ['--label', 'e2e=jobs', '--label', `index=${i}`], undefined, { BOLT_E2E_HOST: name });
    await this.waitHealthy(NAMES, 60_000);
  }

  async run(runId: string): Promise<RunView> {
    return (await this.api()).get<RunView>(`/api/runs/${encodeURIComponent(runId)}`);
  }

  /** `bolt-core show RUN --json`. */
  async show(runId: string): Promise<RunView> {
    const r = await runCli(['show', runId, ...this.flags, '--json']).result;
    expect(r.code, r.stderr).to.equal(0);
    return parseJson<RunView>(r);
  }

  /** How many `sleep` processes with `text` in their command line run under each client (by parent chain). */
  sleepsPerHost(text: string): Record<string, number> {
    const names = new Map([...this.clients].map(([name, p]) => [p.proc.pid, name]));
    const counts: Record<string, number> = {};
    for (const sleep of sleepsWith(text)) {
      let host = 'no client';
      for (let pid = sleep.ppid, depth = 0; pid > 1 && depth < 64; pid = procStat(pid)?.ppid ?? 0, depth++) {
        const name = names.get(pid);
        if (name) {
          host = name;
          break;
        }
      }
      counts[host] = (counts[host] ?? 0) + 1;
    }
    return counts;
  }

  /** Waits until the clients run exactly `expected` sleeps with `text` (host name → count). */
  async waitSleeps(text: string, expected: Record<string, number>, what: string): Promise<void> {
    const wanted = JSON.stringify(Object.entries(expected).sort());
    await eventually(() => (JSON.stringify(Object.entries(this.sleepsPerHost(text)).sort()) === wanted ? true : undefined), 15_000, what);
  }
}

/** A fleet started before the describe's tests and stopped (with every CLI and leftover process) after them. */
function fleetFor(separateSink: boolean): Fleet {
  return fleetForSuite(new Fleet(separateSink), () => killLeftovers());
}

describe('jobs end to end: one server with its sink, three client processes, bolt-core run/show/cancel/runs', function () {
  this.timeout(60_000);
  const fleet = fleetFor(false);

  it('runs a three-task DAG on three clients in order, with each host\'s output, exit 0', async () => {
    await fleet.waitHealthy(NAMES);
    const r = await runCli(['run', job('dag'), ...fleet.flags, '--no-progress', '--json']).result;
    expect(r.code, r.stderr).to.equal(0);
    const run = parseJson<RunView>(r);
    expect(run.state).to.equal('succeeded');
    const chain = ['first', 'second', 'third'].map((id) => taskOf(run, id));
    for (const t of chain) {
      expect(t.state, t.taskId).to.equal('succeeded');
      expect(t.hosts, t.taskId).to.include({ total: 3, started: 3, finished: 3, failed: 0, timedout: 0 });
      expect(results(t).map((h) => [h.host, h.state, h.exitCode, h.stdoutTail]), t.taskId)
        .to.deep.equal(NAMES.map((n) => [n, 'finished', 0, `${t.taskId} on ${n}\n`]));
    }
    // Every host of a task started after the previous task ended on every host (server clock).
    for (const [before, next] of [[chain[0]!, chain[1]!], [chain[1]!, chain[2]!]] as const) {
      const ended = Math.max(...results(before).map((h) => h.startedAt! + h.durationMs!));
      const started = Math.min(...results(next).map((h) => h.startedAt!));
      expect(started, `${next.taskId} started before ${before.taskId} ended`).to.be.above(ended);
      expect(next.dispatchedAt!).to.be.at.least(before.endedAt!);
    }
    const shown = await fleet.show(run.runId);
    expect(shown.state).to.equal('succeeded');
    expect(results(taskOf(shown, 'third')).map((h) => h.stdoutTail)).to.deep.equal(NAMES.map((n) => `third on ${n}\n`));
    // The sink keeps the run as the server ran it: job name, the parsed job, and its end.
    const sink = await fleet.sinkApi();
    const stored = await eventually(async () => (await sink.get<{ id: string; jobName: string | null; state: string; finishedAt: number | null }[]>('/api/runs?job=e2e-dag'))
      .find((r) => r.id === run.runId && r.state === 'succeeded'), 10_000, 'the run on the sink');
    expect(stored.jobName).to.equal(run.job);
    expect(stored.finishedAt).to.equal(run.endedAt);
    const storedRun = await sink.get<{ run: { job: { tasks: { id: string }[] } } }>(`/api/runs/${run.runId}`);
    expect(storedRun.run.job.tasks.map((t) => t.id)).to.deep.equal(['first', 'second', 'third']);
  });

  it('fails a task whose command fails and cancels its dependents without dispatching them, exit 1', async () => {
    await fleet.waitHealthy(NAMES);
    const r = await runCli(['run', job('fail'), ...fleet.flags, '--no-progress', '--json']).result;
    expect(r.code, r.stderr).to.equal(1);
    const run = parseJson<RunView>(r);
    expect(run.state).to.equal('failed');
    const boom = taskOf(run, 'boom');
    expect(boom.state).to.equal('failed');
    expect(boom.hosts).to.include({ total: 3, finished: 0, failed: 3 });
    expect(results(boom).map((h) => [h.host, h.state, h.exitCode, h.stdoutTail]))
      .to.deep.equal(NAMES.map((n) => [n, 'failed', 3, `about to fail on ${n}\n`]));
    for (const id of ['after-boom', 'after-after']) {
      const t = taskOf(run, id);
      expect(t.state, id).to.equal('cancelled');
      expect(t.dispatchedAt ?? null, id).to.equal(null);
      expect(t.attempts ?? [], id).to.deep.equal([]);
      expect(t.results ?? [], id).to.deep.equal([]);
    }
    // A task that does not need the failed one still ran.
    expect(taskOf(run, 'aside').state).to.equal('succeeded');
    // The sink never heard of the cancelled tasks: no dispatch, no event.
    const sinkTasks = sinkRows<{ task_id: string }>(fleet.sinkFile, 'SELECT t.task_id FROM tasks t JOIN runs r ON r.id = t.run WHERE r.run_id = ? ORDER BY t.task_id', run.runId);
    expect(sinkTasks.map((t) => t.task_id)).to.deep.equal(['aside', 'boom']);
  });

  it('tolerates one failing host with failure.maxFailedHosts: 1, exit 0', async () => {
    await fleet.waitHealthy(NAMES);
    const r = await runCli(['run', job('tolerate'), ...fleet.flags, '--no-progress', '--json']).result;
    expect(r.code, r.stderr).to.equal(0);
    const run = parseJson<RunView>(r);
    expect(run.state).to.equal('succeeded');
    const flaky = taskOf(run, 'flaky');
    expect(flaky.state).to.equal('succeeded');
    expect(flaky.hosts).to.include({ total: 3, finished: 2, failed: 1 });
    expect(results(flaky).map((h) => [h.host, h.state, h.exitCode])).to.deep.equal([['c0', 'finished', 0], ['c1', 'finished', 0], ['c2', 'failed', 7]]);
    expect(results(flaky)[2]!.stderrTail).to.equal('failing on purpose\n');
    expect(taskOf(run, 'next').state).to.equal('succeeded');
    expect(taskOf(run, 'next').hosts).to.include({ total: 3, finished: 3 });
  });

  it('ends the whole process tree of a command that times out: no orphan left, exit 1', async () => {
    await fleet.waitHealthy(NAMES);
    const mark = marker(1);
    const running = runCli(['run', job('timeout'), ...fleet.flags, '--var', `mark=300.${mark}`, '--no-progress', '--json']);
    // Each host's shell starts two sleeps: one in the background, one in the foreground.
    await fleet.waitSleeps(mark, { c0: 2, c1: 2, c2: 2 }, 'two sleeps on each of three hosts');
    const r = await running.result;
    expect(r.code, r.stderr).to.equal(1);
    expect(commandsWith(mark), 'processes of the timed-out command still running').to.deep.equal([]);
    const run = parseJson<RunView>(r);
    expect(run.state).to.equal('failed');
    const hang = taskOf(run, 'hang');
    expect(hang.state).to.equal('failed');
    expect(hang.hosts).to.include({ total: 3, finished: 0, timedout: 3 });
    expect(results(hang).map((h) => [h.host, h.state])).to.deep.equal(NAMES.map((n) => [n, 'timedout']));
    for (const h of results(hang)) expect(h.durationMs, h.host).to.be.within(1900, 6000);
  });

  it('cancels a run: the commands stop on every host and the waiting task is never sent', async () => {
    await fleet.waitHealthy(NAMES);
    const mark = marker(2);
    const running = runCli(['run', job('cancel'), ...fleet.flags, '--var', `mark=300.${mark}`, '--no-progress', '--json']);
    await fleet.waitSleeps(mark, { c0: 1, c1: 1, c2: 1 }, 'a sleep on each of three hosts');
    const runId = await fleet.runIdOf('e2e-cancel');
    const cancelledAt = Date.now();
    const c = await runCli(['cancel', runId, ...fleet.flags, '--json']).result;
    expect(c.code, c.stderr).to.equal(0);
    expect(parseJson<{ state: string }>(c).state).to.equal('cancelled');
    const r = await running.result;
    expect(r.code, r.stderr).to.equal(1);
    expect(parseJson<RunView>(r).state).to.equal('cancelled');
    await eventually(() => (commandsWith(mark).length === 0 ? true : undefined), 10_000, 'the cancelled commands gone');
    const goneAfterMs = Date.now() - cancelledAt;
    const run = await eventually(async () => {
      const v = await fleet.run(runId);
      return results(taskOf(v, 'long')).filter((h) => h.state === 'cancelled').length === 3 ? v : undefined;
    }, 15_000, 'every host of long reported cancelled');
    expect(results(taskOf(run, 'long')).map((h) => h.host)).to.deep.equal(NAMES);
    expect(taskOf(run, 'never').state).to.equal('cancelled');
    expect(taskOf(run, 'never').attempts ?? []).to.deep.equal([]);
    // SIGTERM ends a sleep at once; the 2 s SIGKILL grace should not be needed.
    expect(goneAfterMs).to.be.below(5000);
  });

  it('starts runs of a cron-scheduled job on schedule (every 2 s) until the schedule is removed', async () => {
    await fleet.waitHealthy(NAMES);
    const r = await runCli(['run', job('cron'), ...fleet.flags, '--json']).result;
    expect(r.code, r.stderr).to.equal(0);
    const scheduled = parseJson<{ scheduleId: string; job: string; schedule: string; nextRunAt: number | null }>(r);
    expect(scheduled).to.include({ job: 'e2e-cron', schedule: '*/2 * * * * *' });
    expect(scheduled.nextRunAt).to.be.a('number');
    try {
      await eventually(async () => {
        const runs = (await (await fleet.api()).get<RunListEntry[]>('/api/runs')).filter((x) => x.job === 'e2e-cron');
        return runs.length >= 2 ? runs : undefined;
      }, 8000, 'two scheduled runs of e2e-cron');
    } finally {
      await serviceRequest(fleet.serverData, 'scheduler.schedules.remove', { job: 'e2e-cron' });
    }
    const schedules = await serviceRequest<{ job: string }[]>(fleet.serverData, 'scheduler.schedules.list', {});
    expect(schedules.map((s) => s.job)).to.not.include('e2e-cron');
    const listed = parseJson<RunListEntry[]>(await runCli(['runs', ...fleet.flags, '--json']).result).filter((x) => x.job === 'e2e-cron');
    expect(listed.length).to.be.at.least(2);
    for (const x of listed) expect(x.scheduled, x.runId).to.deep.include({ scheduleId: scheduled.scheduleId, schedule: '*/2 * * * * *' });
    // Fired on even seconds, 2 s apart (createdAt is the server's clock, ms since the epoch).
    const created = listed.map((x) => x.createdAt).sort((a, b) => a - b);
    for (const t of created) expect(t % 2000, `run created at ${new Date(t).toISOString()}`).to.be.below(600);
    for (let i = 1; i < created.length; i++) expect(Math.round((created[i]! - created[i - 1]!) / 2000)).to.be.at.least(1);
    const ended = await eventually(async () => {
      const runs = (await (await fleet.api()).get<RunListEntry[]>('/api/runs')).filter((x) => x.job === 'e2e-cron');
      return runs.every((x) => x.state !== 'running') ? runs : undefined;
    }, 15_000, 'the scheduled runs ended');
    expect(ended.map((x) => x.state)).to.deep.equal(ended.map(() => 'succeeded'));
  });

  it('finishes a run after the server is killed mid-task and started again; the clients come back by themselves', async () => {
    await fleet.waitHealthy(NAMES);
    const mark = marker(3);
    const running = runCli(['run', job('restart'), ...fleet.flags, '--var', `pause=5.${mark}`, '--no-progress', '--json']);
    await fleet.waitSleeps(mark, { c0: 1, c1: 1, c2: 1 }, 'slow running on three hosts');
    const runId = await fleet.runIdOf('e2e-restart');
    await fleet.server!.kill();
    const killedAt = Date.now();
    // 'slow' ends on every host while the server is down; the clients keep its events until it is back.
    await eventually(() => (sleepsWith(mark).length === 0 ? true : undefined), 15_000, 'slow ended on every host');
    await fleet.startServer();
    // `bolt-core run` follows the run through the API, which was gone for a while; the run is watched from here on.
    running.proc.kill('SIGKILL');
    const run = await eventually(async () => {
      const v = await fleet.run(runId);
      return v.state === 'running' ? undefined : v;
    }, 30_000, `run ${runId} ended`);
    const after = taskOf(run, 'after');
    const transport = (after.attempts as { transport?: { sent: string[]; skipped: { id: string; reason: string }[] } | null }[] | undefined)?.map((a) => a.transport);
    expect(run.state, `tasks: ${JSON.stringify(run.tasks.map((t) => [t.taskId, t.state, t.hosts]))}; transport.dispatch answers for after: ${JSON.stringify(transport)}`).to.equal('succeeded');
    const slow = taskOf(run, 'slow');
    expect(slow.attempts, 'slow was dispatched again').to.have.length(1);
    expect(slow.hosts).to.include({ total: 3, finished: 3 });
    expect(results(slow).map((h) => [h.host, h.state, h.stdoutTail])).to.deep.equal(NAMES.map((n) => [n, 'finished', `slow on ${n}\n`]));
    expect(after.dispatchedAt!).to.be.above(killedAt);
    expect(results(after).map((h) => [h.host, h.state, h.stdoutTail])).to.deep.equal(NAMES.map((n) => [n, 'finished', `after on ${n}\n`]));
    expect((await fleet.show(runId)).state).to.equal('succeeded');
  });

  it('reports a client killed mid-task as lost: the task fails, unless maxFailedHosts allows one', async () => {
    await fleet.waitHealthy(NAMES);
    const mark = marker(4);
    const running = runCli(['run', job('lost'), ...fleet.flags, '--var', `mark=300.${mark}`, '--no-progress', '--json']);
    // Both tasks sleep on c0 only; the other hosts finish them at once.
    await fleet.waitSleeps(mark, { c0: 2 }, 'both tasks running on c0');
    await fleet.clients.get('c0')!.kill();
    const killedAt = Date.now();
    const r = await running.result;
    const endedAfterMs = Date.now() - killedAt;
    killLeftovers(mark);
    expect(r.code, r.stderr).to.equal(1);
    const run = parseJson<RunView>(r);
    expect(run.state).to.equal('failed');
    const strict = taskOf(run, 'strict');
    const tolerant = taskOf(run, 'tolerant');
    expect(strict.state).to.equal('failed');
    expect(tolerant.state).to.equal('succeeded');
    for (const t of [strict, tolerant]) {
      expect(t.hosts, t.taskId).to.include({ total: 3, finished: 2, lost: 1 });
      expect(results(t).map((h) => [h.host, h.state]), t.taskId).to.deep.equal([['c0', 'lost'], ['c1', 'finished'], ['c2', 'finished']]);
    }
    // lostAfterMs is 4 s from the last heartbeat.
    expect(endedAfterMs).to.be.within(3000, 15_000);
  });
});

describe('jobs end to end with a separate sink process (--role server, --role sink)', function () {
  this.timeout(60_000);
  const fleet = fleetFor(true);

  it('has the events of a client that connected before the sink registered with the server', async () => {
    const r = runCli(['run', job('early'), ...fleet.flags, '--no-progress', '--json']);
    const runId = await fleet.runIdOf('e2e-early');
    try {
      const stored = await eventually(() => {
        const e = sinkRows<{ host: string; kind: string }>(fleet.sinkFile, EVENTS_SQL, runId, 'hello');
        return e.length === 2 ? e : undefined;
      }, 10_000, 'the early client\'s two events in the sink');
      expect(stored.map((e) => `${e.host} ${e.kind}`)).to.deep.equal(['early started', 'early finished']);
    } finally {
      r.proc.kill('SIGKILL');
    }
  });

  it('loses no event and counts none twice when the sink is killed mid-task and started again', async () => {
    const mark = marker(5);
    const running = runCli(['run', job('sink'), ...fleet.flags, '--var', `pause=2.${mark}`, '--no-progress', '--json']);
    await fleet.waitSleeps(mark, { c0: 1, c1: 1, c2: 1 }, 'work running on three hosts');
    const runId = await fleet.runIdOf('e2e-sink');
    const events = () => sinkRows<{ host: string; kind: string; id: string }>(fleet.sinkFile, EVENTS_SQL, runId, 'work');
    await eventually(() => (events().filter((e) => e.kind === 'started').length === 3 ? true : undefined), 10_000, 'three started events in the sink');
    await fleet.sink!.kill();
    // 'work' ends on every host while the sink is down: the final events wait in the clients' outboxes.
    await eventually(() => (sleepsWith(mark).length === 0 ? true : undefined), 15_000, 'work ended on every host');
    fleet.startSink();
    const stored = await eventually(() => {
      const e = events();
      return e.filter((x) => x.kind === 'finished').length === 3 ? e : undefined;
    }, 20_000, 'three finished events in the sink after its restart');
    expect(stored.map((e) => `${e.host} ${e.kind}`)).to.deep.equal(NAMES.flatMap((n) => [`${n} started`, `${n} finished`]));
    // The sink decides a task from its dispatch, which the server announces (jobs contract: run.task.dispatched).
    const dispatches = sinkRows<{ command_id: string }>(fleet.sinkFile,
      'SELECT d.command_id FROM dispatches d JOIN tasks t ON t.id = d.task JOIN runs r ON r.id = t.run WHERE r.run_id = ? AND t.task_id = ?', runId, 'work');
    expect(dispatches, `the separate sink has no dispatch of run ${runId} task work, so it can never decide it`).to.have.length(1);
    const r = await running.result;
    expect(r.code, r.stderr).to.equal(0);
    const run = parseJson<RunView>(r);
    expect(run.state).to.equal('succeeded');
    expect(taskOf(run, 'work').hosts).to.include({ total: 3, started: 3, finished: 3, failed: 0 });
    expect(taskOf(run, 'check').state).to.equal('succeeded');
    const rows = sinkRows<{ host: string; state: string; exit_code: number; stdout_tail: string }>(fleet.sinkFile,
      `SELECT h.name AS host, hr.state, hr.exit_code, hr.stdout_tail FROM host_results hr JOIN tasks t ON t.id = hr.task
       JOIN runs r ON r.id = t.run JOIN hosts h ON h.id = hr.host WHERE r.run_id = ? AND t.task_id = ? ORDER BY h.name`, runId, 'work');
    expect(rows.map((x) => [x.host, x.state, x.exit_code, x.stdout_tail])).to.deep.equal(NAMES.map((n) => [n, 'finished', 0, `work on ${n}\n`]));
    const counts = sinkRows<Record<string, number | string>>(fleet.sinkFile,
      'SELECT t.state, t.hosts_total, t.hosts_started, t.hosts_ok, t.hosts_failed, t.hosts_lost FROM tasks t JOIN runs r ON r.id = t.run WHERE r.run_id = ? AND t.task_id = ?', runId, 'work');
    expect(counts).to.deep.equal([{ state: 'succeeded', hosts_total: 3, hosts_started: 3, hosts_ok: 3, hosts_failed: 0, hosts_lost: 0 }]);
  });
});
