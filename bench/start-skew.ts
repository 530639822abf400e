/**
 * start-skew: how close to the same instant 1,000 hosts start a `start: together` task.
 *
 *   node --import tsx bench/start-skew.ts [--clients 1000] [--processes 2] [--runs 3]
 *        [--real 8] [--offset-ms 1000] [--settle-s 35]
 *
 * A real `bolt-core start` (server + embedded sink: transport-ws, health-monitor, scheduler-dag,
 * parser-yaml, writer-sqlite, aggregator-results) and `--processes` simulator processes (this
 * script with `--simulator`), each a Fleet of clients/processes hosts speaking the real protocol,
 * each host also connected to the sink its welcome names. The Fleet runs no actions, so each
 * simulated host gets the `mark` behaviour here: on a verified dispatch of `mark` it waits until
 * the dispatch's startAt on the server's clock as the host estimates it (its clock plus its offset
 * estimate), with the SDK's precise wait (`waitUntil`, as serveAction does), records the instant
 * reached, and then sends `task.event` started (with `startedAt`) and finished to the sink. A job
 * with one `mark` task, `start: together`, on every simulated host is run with `bolt-core run
 * --json` `--runs` times; the sink's per-host `startedAt` come back in the run.
 *
 * Figures per run, against the target startAt: `reported` = the hosts' startedAt (the instant
 * each host believed it started, on its estimate of the server's clock: what Bolt shows); `actual`
 * = the instant it really started, read from the simulator process's own clock
 * (performance.timeOrigin + performance.now(), which agrees with the server's across processes of
 * one machine; `clockCheck` shows how well). For each: spread (max − min) and p99 of |instant −
 * startAt|. Then the same with every host's clock offset uniformly in [−offset, +offset] ms.
 * Then `--real` real `bolt-core start --role client` processes (transport-ws and action-mark)
 * run the same job, without and with offsets (`--clock-skew-ms`); only `reported` exists there.
 *
 * Before the runs of a phase: its hosts healthy, `--settle-s` seconds (the clock estimator
 * refreshes after 30 s, and the first estimates were taken during the connection storm), and one
 * warm-up run (the scheduler's lead for a together start is its default until it has measured a
 * dispatch round trip), reported apart.
 *
 * The simulated hosts share this machine's 2 cores (500 per process by default; 2 processes, so
 * that the simulators waking at the instant do not queue for the cores behind one another). The
 * hosts of one simulator due at the same instant share one wait and then start in one spin, each
 * when its own clock estimate reaches startAt (see waitWithGroup), as hosts with their own CPUs
 * would; what the spread shows is then the hosts' clock estimates, the dispatch reaching them in
 * time, and the simulators' scheduling, not 500 timer callbacks queued in one thread. Prints one JSON line per phase and a summary line; progress on stderr; exits non-zero
 * when a run fails. Every process and directory it made is removed at the end, also on failure.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { taskEventId } from '../plugin-sdk/src/action.ts';
import { waitUntil } from '../plugin-sdk/src/precise-wait.ts';
import { WIRE_VERSION, type TaskDispatchMessage, type TaskEventMessage } from '../plugin-sdk/src/schemas/wire.ts';
import { Fleet } from './fleet/fleet.ts';
import { BoltClients } from './lib/bolt-clients.ts';
import { BoltServer, codeVersion, loadavg, removeScratchDir, scratchDir, sleep } from './lib/bolt-server.ts';
import { runTimed } from './lib/ssh-baseline.ts';
import { median, p99 } from './lib/stats.ts';

const SELF = fileURLToPath(import.meta.url);
const REPO = path.resolve(import.meta.dirname, '..');
const BIN = path.join(REPO, 'bin', 'bolt-core');
const SERVER_PLUGINS = ['transport-ws', 'health-monitor', 'scheduler-dag', 'parser-yaml', 'writer-sqlite', 'aggregator-results'] as const;
const REAL_CLIENT_PLUGINS = ['transport-ws', 'action-mark'] as const;
const AIM_MS = 5;
const RUN_TIMEOUT_MS = 180_000;
const CONNECT_TIMEOUT_MS = 180_000;
/** A simulator's hosts of one command wake together this long before its instant, then each starts at its own (ms). */
const GROUP_EARLY_MS = 3;
/** A host whose own instant is further than this past its group's wake-up waits alone (ms). */
const GROUP_SPIN_MAX_MS = 8;
/** Where a simulated host's wait ended: on its estimate of the server's clock, and on the machine's clock. */
interface Reached {
  actualServerMs: number;
  actualMs: number;
}
/** A simulator holds its hosts' reports at most this long for hosts of the same command still waiting. */
const HOLD_REPORTS_MAX_MS = 2000;
const USAGE = 'usage: node --import tsx bench/start-skew.ts [--clients 1000] [--processes 2] [--runs 3] [--real 8] [--offset-ms 1000] [--settle-s 35]';

const progress = (msg: string) => process.stderr.write(`[start-skew] ${msg}\n`);
const round = (v: number, digits = 3) => Number(v.toFixed(digits));

/** What a simulated host recorded when it reached a task's start instant. */
interface MarkRecord {
  name: string;
  startAt: number;
  /** The instant reached, on the host's estimate of the server's clock (the event's startedAt). */
  reportedMs: number;
  /** The same instant on this process's real clock. */
  actualMs: number;
  /** The host's offset estimate minus the true offset (its injected skew undone), at that instant. */
  estimateErrorMs: number;
  /** startAt minus the instant (real clock) the verified dispatch reached the mark behaviour. */
  handedOverAheadMs: number;
}

/** Parent ⇄ simulator messages. */
type ToSimulator = { type: 'records'; runId: string } | { type: 'stop' };
type FromSimulator =
  | { type: 'ready'; hosts: number; clock: ClockCheck }
  | { type: 'records'; runId: string; records: MarkRecord[]; sendFailures: number }
  | { type: 'error'; message: string };

/** How far the simulated hosts' clock estimates were from the truth (offset estimate + injected skew). */
interface ClockCheck {
  hosts: number;
  estimateErrorMs: { median: number; p99Abs: number; maxAbs: number };
  /** The estimates' own error bound (half the best ping's round trip), median. */
  errorBoundMsMedian: number;
}

// ------------------------------------------------------------------ simulator process

/** A small seeded PRNG (mulberry32), so the injected offsets are the same from run to run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function absStats(values: number[]): { median: number; p99Abs: number; maxAbs: number } {
  const abs = values.map(Math.abs);
  return { median: round(median(values)), p99Abs: round(p99(abs)), maxAbs: round(Math.max(...abs)) };
}

async function runSimulator(args: { url: string; count: number; prefix: string; phase: string; offsetMs: number; seed: number; dataRoot: string }): Promise<void> {
  const send = (m: FromSimulator) => process.send?.(m);
  const random = prng(args.seed);
  const skews = Array.from({ length: args.count }, () => (args.offsetMs === 0 ? 0 : (random() * 2 - 1) * args.offsetMs));
  const records = new Map<string, MarkRecord[]>();
  let sendFailures = 0;
  let fleet: Fleet | undefined;

  /** Sends one event from host `index`, retrying while its sink session is down or its buffer full. */
  const deliver = async (index: number, event: TaskEventMessage): Promise<void> => {
    const giveUpAt = performance.now() + 60_000;
    while (!fleet!.sendToSink(index, event)) {
      if (performance.now() > giveUpAt) {
        sendFailures++;
        return;
      }
      await sleep(100);
    }
  };

  /**
   * Per command: how many hosts of this process got it, how many reached its instant, and the
   * reports held until all of them did. One process plays many hosts: a host sending its events
   * (sealing and writing two frames) would delay the hosts due after it by the same instant,
   * which on real hosts, each with its own CPU, does not happen.
   */
  const barriers = new Map<string, { expected: number; reached: number; held: Array<() => void>; timer: NodeJS.Timeout | undefined }>();
  const barrier = (commandId: string) => {
    let b = barriers.get(commandId);
    if (b === undefined) barriers.set(commandId, (b = { expected: 0, reached: 0, held: [], timer: undefined }));
    return b;
  };
  const release = (b: ReturnType<typeof barrier>) => {
    clearTimeout(b.timer);
    b.timer = undefined;
    for (const resolve of b.held.splice(0)) resolve();
  };

  /**
   * The hosts of this process due at one command's instant wait together: one precise wait until
   * GROUP_EARLY_MS before the instant (on the first host's estimate of the server's clock), then
   * each host starts when its own estimate reaches startAt, in that order, in one short spin. On
   * real hosts each waits on its own CPU; 500 separate waits in one thread would instead start
   * one after another behind each other's timer callbacks and promise continuations, measuring
   * the simulator. A host whose dispatch arrives after its group woke, or whose estimate puts its
   * instant more than GROUP_SPIN_MAX_MS past the group's, waits alone with waitUntil.
   */
  const groups = new Map<string, { woke: boolean; hosts: Array<{ serverNow: () => number; done: (reached: Reached) => void }> }>();
  const waitWithGroup = (commandId: string, startAt: number, serverNow: () => number): Promise<Reached> => {
    let group = groups.get(commandId);
    if (group?.woke) return waitUntil(startAt, serverNow).then((r) => ({ actualServerMs: r.actualServerMs, actualMs: performance.timeOrigin + performance.now() }));
    if (group === undefined) {
      const created = { woke: false, hosts: [] as Array<{ serverNow: () => number; done: (reached: Reached) => void }> };
      groups.set(commandId, (group = created));
      void waitUntil(startAt - GROUP_EARLY_MS, serverNow).then(() => {
        created.woke = true;
        const now = performance.now();
        const due = created.hosts.map((h) => ({ h, at: now + (startAt - h.serverNow()) })).sort((a, b) => a.at - b.at);
        for (const { h, at } of due) {
          if (at - now > GROUP_SPIN_MAX_MS) {
            void waitUntil(startAt, h.serverNow).then((r) => h.done({ actualServerMs: r.actualServerMs, actualMs: performance.timeOrigin + performance.now() }));
            continue;
          }
          while (performance.now() < at);
          h.done({ actualServerMs: h.serverNow(), actualMs: performance.timeOrigin + performance.now() });
        }
        setTimeout(() => groups.delete(commandId), 60_000);
      });
    }
    const joined = group;
    return new Promise<Reached>((done) => joined.hosts.push({ serverNow, done }));
  };

  /** The mark behaviour: the precise wait, the record, then (once every host here has recorded) the two events. */
  const mark = async (index: number, command: TaskDispatchMessage): Promise<void> => {
    const handedOverAt = performance.timeOrigin + performance.now();
    const client = fleet!.client(index);
    const serverNow = () => client.serverNow();
    const reached: Reached = command.startAt === null
      ? { actualServerMs: serverNow(), actualMs: performance.timeOrigin + performance.now() }
      : await waitWithGroup(command.id, command.startAt, serverNow);
    const actualMs = reached.actualMs;
    const name = `${args.prefix}-${index}`;
    const list = records.get(command.runId) ?? [];
    records.set(command.runId, list);
    list.push({ name, startAt: command.startAt ?? reached.actualServerMs, reportedMs: reached.actualServerMs, actualMs, estimateErrorMs: client.offsetMs + skews[index]!, handedOverAheadMs: (command.startAt ?? handedOverAt) - handedOverAt });
    const b = barrier(command.id);
    b.reached++;
    await new Promise<void>((resolve) => {
      b.held.push(resolve);
      if (b.reached >= b.expected) release(b);
      else b.timer ??= setTimeout(() => release(b), HOLD_REPORTS_MAX_MS);
    });
    const hostId = client.identity.fingerprint;
    const base: Omit<TaskEventMessage, 'id' | 'kind' | 'at'> = { v: WIRE_VERSION, type: 'task.event', runId: command.runId, taskId: command.taskId, host: name, startedAt: reached.actualServerMs };
    await deliver(index, { ...base, id: taskEventId(command.id, hostId, 'started'), kind: 'started', at: reached.actualServerMs });
    await deliver(index, { ...base, id: taskEventId(command.id, hostId, 'finished'), kind: 'finished', at: Math.max(0, serverNow()), durationMs: 0 });
  };

  fleet = new Fleet({
    url: args.url,
    count: args.count,
    namePrefix: args.prefix,
    labels: { phase: args.phase },
    clockSkewMs: (i) => skews[i]!,
    sink: true,
    concurrency: 100,
    dataRoot: args.dataRoot,
    onDispatch: (index, command) => {
      if (command.action !== 'mark') return;
      barrier(command.id).expected++;
      mark(index, command).catch((err: unknown) => send({ type: 'error', message: `host ${index}: ${(err as Error).stack ?? String(err)}` }));
    },
  });
  const stop = async (code: number) => {
    await fleet?.close();
    process.exit(code);
  };
  process.on('disconnect', () => void stop(1));
  process.on('message', (m: ToSimulator) => {
    if (m.type === 'stop') void stop(0);
    else if (m.type === 'records') send({ type: 'records', runId: m.runId, records: records.get(m.runId) ?? [], sendFailures });
  });
  await fleet.start();
  await fleet.waitConnected(args.count, CONNECT_TIMEOUT_MS);
  await fleet.waitSinkConnected(args.count, CONNECT_TIMEOUT_MS);
  // The 8 clock pings of a fresh connection take 400 ms; wait for every host's estimate.
  const deadline = performance.now() + 30_000;
  for (;;) {
    const estimates = fleet.estimates();
    if (estimates.every((e) => e.estimate !== null && e.estimate.samples >= 8)) {
      send({
        type: 'ready',
        hosts: args.count,
        clock: {
          hosts: estimates.length,
          estimateErrorMs: absStats(estimates.map((e) => e.estimate!.offsetMs + e.skewMs)),
          errorBoundMsMedian: round(median(estimates.map((e) => e.estimate!.errorMs))),
        },
      });
      return;
    }
    if (performance.now() > deadline) throw new Error(`clock estimates incomplete after 30 s: ${estimates.filter((e) => e.estimate === null).length} hosts without one`);
    await sleep(200);
  }
}

// ------------------------------------------------------------------ parent: simulators

class Simulator {
  readonly child: ChildProcess;
  readonly ready: Promise<ClockCheck>;
  readonly #pending = new Map<string, (m: Extract<FromSimulator, { type: 'records' }>) => void>();
  readonly #exited: Promise<void>;
  error: string | null = null;

  constructor(args: string[]) {
    this.child = spawn(process.execPath, [...process.execArgv, SELF, '--simulator', ...args], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.#exited = new Promise((resolve) => this.child.once('exit', () => resolve()));
    this.ready = new Promise((resolve, reject) => {
      this.child.on('message', (m: FromSimulator) => {
        if (m.type === 'ready') resolve(m.clock);
        else if (m.type === 'records') this.#pending.get(m.runId)?.(m);
        else if (m.type === 'error') {
          this.error ??= m.message;
          progress(`simulator ${this.child.pid}: ${m.message}`);
        }
      });
      this.child.once('exit', (code, signal) => reject(new Error(`simulator exited (${code ?? signal}) before it was ready`)));
    });
    this.ready.catch(() => {});
  }

  records(runId: string): Promise<Extract<FromSimulator, { type: 'records' }>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('simulator did not answer with its records in 30 s')), 30_000);
      this.#pending.set(runId, (m) => {
        clearTimeout(timer);
        this.#pending.delete(runId);
        resolve(m);
      });
      this.child.send({ type: 'records', runId } satisfies ToSimulator);
    });
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      if (this.child.connected) this.child.send({ type: 'stop' } satisfies ToSimulator);
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 15_000);
      await this.#exited;
      clearTimeout(timer);
    }
  }
}

const liveSimulators = new Set<Simulator>();
process.on('exit', () => {
  for (const s of liveSimulators) s.child.kill('SIGKILL');
});

// ------------------------------------------------------------------ parent: runs

interface HostResult {
  host: string;
  state: string;
  startedAt?: number | null;
}

interface RunJson {
  runId: string;
  state: string;
  error?: { code: string; message: string } | null;
  tasks: { taskId: string; state: string; startAt?: number | null; dispatchedAt?: number | null; results?: HostResult[] }[];
}

/** Spread and the distribution of |instant − target| for one set of instants, in ms. */
interface Figures {
  spreadMs: number;
  p99AbsMs: number;
  maxAbsMs: number;
  medianMs: number;
  minMs: number;
  maxMs: number;
}

function figures(offsets: number[]): Figures {
  const abs = offsets.map(Math.abs);
  return {
    spreadMs: round(Math.max(...offsets) - Math.min(...offsets)),
    p99AbsMs: round(p99(abs)),
    maxAbsMs: round(Math.max(...abs)),
    medianMs: round(median(offsets)),
    minMs: round(Math.min(...offsets)),
    maxMs: round(Math.max(...offsets)),
  };
}

interface RunFigures {
  runId: string;
  hosts: number;
  /** startAt − dispatchedAt: how far ahead the scheduler set the start. */
  leadMs: number;
  /** `bolt-core run` spawn to exit. */
  wallMs: number;
  reported: Figures;
  actual?: Figures;
  /** Hosts whose actual instant came before the target (their clock estimate ran ahead). */
  actualEarly?: number;
  /** Spread of the actual instants within each simulator process. */
  actualSpreadByProcessMs?: number[];
  /** Each host's offset estimate minus the truth when it reached the instant. */
  estimateErrorMs?: { median: number; p99Abs: number; maxAbs: number };
  /** The least time any host had the verified dispatch in hand before startAt (negative: it came too late). */
  dispatchInHandMinMs?: number;
  loadavg: number[];
}

function writeJob(dir: string, phase: string): string {
  const file = path.join(dir, `start-skew-${phase}.yaml`);
  fs.writeFileSync(file, [
    '# start-skew: one mark task, started together on every host of this phase',
    'name: start-skew',
    'groups:',
    `  hosts: { labels: { phase: "${phase}" } }`,
    'tasks:',
    '  - id: mark',
    '    hosts: hosts',
    '    action: mark',
    '    start: together',
    '    timeout: 60s',
    '',
  ].join('\n'));
  return file;
}

/** Runs the job once with `bolt-core run --json` and checks that every host started and finished. */
async function runJob(server: BoltServer, jobFile: string, hosts: number): Promise<{ run: RunJson; wallMs: number; task: RunJson['tasks'][number]; startAt: number; results: (HostResult & { startedAt: number })[] }> {
  const timed = await runTimed([process.execPath, BIN, 'run', jobFile, '--server', `http://127.0.0.1:${server.port}`, '--data', path.join(server.dir, 'data'), '--json', '--no-progress'], { timeoutMs: RUN_TIMEOUT_MS });
  if (timed.code !== 0) throw new Error(`bolt-core run exited ${timed.code ?? timed.signal}\nstdout: ${timed.stdout.slice(-3000)}\nstderr: ${timed.stderr.slice(-3000)}`);
  const run = JSON.parse(timed.stdout) as RunJson;
  const task = run.tasks[0];
  if (run.state !== 'succeeded' || task === undefined || typeof task.startAt !== 'number') throw new Error(`run ${run.runId} ${run.state}: ${JSON.stringify(run.error ?? task)}`);
  const results = (task.results ?? []).filter((r): r is HostResult & { startedAt: number } => r.state === 'finished' && typeof r.startedAt === 'number');
  if (results.length !== hosts) throw new Error(`run ${run.runId}: ${results.length} of ${hosts} hosts finished with a startedAt`);
  return { run, wallMs: timed.wallMs, task, startAt: task.startAt, results };
}

async function waitHealthy(server: BoltServer, phase: string, hosts: number): Promise<void> {
  const deadline = performance.now() + 60_000;
  for (;;) {
    const list = await server.request<{ state: string }[]>('health.hosts', { labels: { phase } });
    const ok = list.filter((h) => h.state === 'healthy' || h.state === 'degraded').length;
    if (ok >= hosts) return;
    if (performance.now() > deadline) throw new Error(`${ok} of ${hosts} hosts of phase ${phase} healthy after 60 s`);
    await sleep(500);
  }
}

interface PhaseLine {
  bench: 'start-skew';
  hosts: 'simulated' | 'real';
  clients: number;
  processes: number;
  offsetsMs: string;
  /** Seconds waited after the hosts were healthy, before the warm-up run. */
  settleS: number;
  /** The first run, not counted: the scheduler has no dispatch round trip measured yet and uses its default lead. */
  warmup: RunFigures;
  runs: RunFigures[];
  median: { reportedSpreadMs: number; reportedP99AbsMs: number; actualSpreadMs?: number; actualP99AbsMs?: number; leadMs: number; wallMs: number };
  aim: { spreadMs: number; met: boolean };
  clockCheck?: ClockCheck[];
  loadavgStart: number[];
  loadavgEnd: number[];
  note: string;
}

function summarizeRuns(runs: RunFigures[]): PhaseLine['median'] {
  const m = (f: (r: RunFigures) => number) => round(median(runs.map(f)));
  const withActual = runs.every((r) => r.actual !== undefined);
  return {
    reportedSpreadMs: m((r) => r.reported.spreadMs),
    reportedP99AbsMs: m((r) => r.reported.p99AbsMs),
    ...(withActual && { actualSpreadMs: m((r) => r.actual!.spreadMs), actualP99AbsMs: m((r) => r.actual!.p99AbsMs) }),
    leadMs: m((r) => r.leadMs),
    wallMs: round(median(runs.map((r) => r.wallMs)), 1),
  };
}

/**
 * Waits before measuring: clients estimate their clock offset with 8 pings when they connect, and
 * refresh it every 30 s (the estimator keeps the sample with the smallest round trip). Right after
 * 1,000 hosts connected, those first pings queued behind the connection storm.
 */
async function settle(seconds: number, phase: string): Promise<void> {
  if (seconds <= 0) return;
  progress(`${phase}: settling ${seconds} s (clock estimates refresh after 30 s)`);
  await sleep(seconds * 1000);
}

async function simulatedPhase(server: BoltServer, jobDir: string, opts: { clients: number; processes: number; runs: number; offsetMs: number; settleS: number }): Promise<PhaseLine> {
  const loadavgStart = loadavg();
  const phase = `sim-${opts.offsetMs}`;
  const perProcess = Math.ceil(opts.clients / opts.processes);
  const sims: Simulator[] = [];
  const roots: string[] = [];
  try {
    for (let p = 0; p * perProcess < opts.clients; p++) {
      const count = Math.min(perProcess, opts.clients - p * perProcess);
      const root = scratchDir('bolt-bench-start-skew-fleet-', true);
      roots.push(root);
      const sim = new Simulator(['--url', server.agentUrl, '--count', String(count), '--prefix', `${phase}-p${p}`, '--phase', phase, '--offset-ms', String(opts.offsetMs), '--seed', String(1000 * (opts.offsetMs + 1) + p), '--data-root', root]);
      liveSimulators.add(sim);
      sims.push(sim);
    }
    progress(`${phase}: ${sims.length} simulator processes, ${opts.clients} hosts connecting (server and sink)`);
    const clockCheck = await Promise.all(sims.map((s) => s.ready));
    await waitHealthy(server, phase, opts.clients);
    progress(`${phase}: ${opts.clients} hosts connected, clocks estimated, healthy`);
    await settle(opts.settleS, phase);
    const jobFile = writeJob(jobDir, phase);
    const runs: RunFigures[] = [];
    let warmup: RunFigures | undefined;
    for (let r = 0; r <= opts.runs; r++) {
      const { run, wallMs, task, startAt, results } = await runJob(server, jobFile, opts.clients);
      const answers = await Promise.all(sims.map((s) => s.records(run.runId)));
      const records = answers.flatMap((a) => a.records);
      const failures = answers.reduce((n, a) => n + a.sendFailures, 0);
      const error = sims.find((s) => s.error !== null)?.error;
      if (error !== undefined) throw new Error(`a simulated host failed: ${error}`);
      if (records.length !== opts.clients || failures > 0) throw new Error(`run ${run.runId}: ${records.length} of ${opts.clients} hosts recorded a start, ${failures} events not delivered`);
      // The sink must have stored exactly the instants the hosts reported.
      const stored = new Map(results.map((x) => [x.host, x.startedAt]));
      const mismatched = records.filter((x) => {
        const startedAt = stored.get(x.name);
        return startedAt === undefined || Math.abs(startedAt - x.reportedMs) > 1e-6;
      });
      if (mismatched.length > 0) throw new Error(`run ${run.runId}: the sink's startedAt differs from what ${mismatched.length} hosts sent, e.g. ${mismatched[0]!.name}`);
      const actual = records.map((x) => x.actualMs - startAt);
      const figuresOfRun: RunFigures = {
        runId: run.runId,
        hosts: results.length,
        leadMs: round(startAt - (task.dispatchedAt ?? startAt), 1),
        wallMs: round(wallMs, 1),
        reported: figures(results.map((x) => x.startedAt - startAt)),
        actual: figures(actual),
        actualEarly: actual.filter((d) => d < 0).length,
        actualSpreadByProcessMs: answers.map((a) => figures(a.records.map((x) => x.actualMs - startAt)).spreadMs),
        estimateErrorMs: absStats(records.map((x) => x.estimateErrorMs)),
        dispatchInHandMinMs: round(Math.min(...records.map((x) => x.handedOverAheadMs)), 1),
        loadavg: loadavg(),
      };
      if (r === 0) warmup = figuresOfRun;
      else runs.push(figuresOfRun);
      progress(`${phase} ${r === 0 ? 'warm-up run' : `run ${r}/${opts.runs}`}: reported spread ${figuresOfRun.reported.spreadMs} ms (p99 |Δ| ${figuresOfRun.reported.p99AbsMs}), actual spread ${figuresOfRun.actual!.spreadMs} ms (p99 |Δ| ${figuresOfRun.actual!.p99AbsMs}), lead ${figuresOfRun.leadMs} ms, dispatch in hand ≥ ${figuresOfRun.dispatchInHandMinMs} ms ahead, per process ${JSON.stringify(figuresOfRun.actualSpreadByProcessMs)}`);
    }
    const med = summarizeRuns(runs);
    return {
      bench: 'start-skew',
      hosts: 'simulated',
      clients: opts.clients,
      processes: sims.length,
      settleS: opts.settleS,
      warmup: warmup!,
      offsetsMs: opts.offsetMs === 0 ? 'none' : `uniform in [-${opts.offsetMs}, +${opts.offsetMs}] per host`,
      runs,
      median: med,
      aim: { spreadMs: AIM_MS, met: (med.actualSpreadMs ?? med.reportedSpreadMs) < AIM_MS },
      clockCheck,
      loadavgStart,
      loadavgEnd: loadavg(),
      note: `${sims.length} simulator processes of ~${perProcess} hosts share the machine's ${os.cpus().length} cores with the server: the spread includes each simulator waking its hosts one after another`,
    };
  } finally {
    await Promise.all(sims.map((s) => s.stop()));
    for (const s of sims) liveSimulators.delete(s);
    for (const root of roots) removeScratchDir(root);
  }
}

async function realPhase(server: BoltServer, jobDir: string, opts: { real: number; runs: number; offsetMs: number; settleS: number }): Promise<PhaseLine> {
  const loadavgStart = loadavg();
  const phase = `real-${opts.offsetMs}`;
  const random = prng(7 + opts.offsetMs);
  const skews = Array.from({ length: opts.real }, () => (opts.offsetMs === 0 ? 0 : Math.round((random() * 2 - 1) * opts.offsetMs)));
  progress(`${phase}: starting ${opts.real} client processes`);
  const clients = await BoltClients.start({
    server,
    names: Array.from({ length: opts.real }, (_, i) => `${phase}-${i}`),
    labels: () => ({ phase }),
    ...(opts.offsetMs !== 0 && { clockSkewMs: (i: number) => skews[i]! }),
    plugins: REAL_CLIENT_PLUGINS,
    progress,
  });
  try {
    await waitHealthy(server, phase, opts.real);
    await settle(opts.settleS, phase);
    const jobFile = writeJob(jobDir, phase);
    const runs: RunFigures[] = [];
    let warmup: RunFigures | undefined;
    for (let r = 0; r <= opts.runs; r++) {
      const { run, wallMs, task, startAt, results } = await runJob(server, jobFile, opts.real);
      const f: RunFigures = {
        runId: run.runId,
        hosts: results.length,
        leadMs: round(startAt - (task.dispatchedAt ?? startAt), 1),
        wallMs: round(wallMs, 1),
        reported: figures(results.map((x) => x.startedAt - startAt)),
        loadavg: loadavg(),
      };
      if (r === 0) warmup = f;
      else runs.push(f);
      progress(`${phase} ${r === 0 ? 'warm-up run' : `run ${r}/${opts.runs}`}: reported spread ${f.reported.spreadMs} ms (p99 |Δ| ${f.reported.p99AbsMs}), lead ${f.leadMs} ms`);
    }
    const med = summarizeRuns(runs);
    return {
      bench: 'start-skew',
      hosts: 'real',
      clients: opts.real,
      processes: opts.real,
      settleS: opts.settleS,
      warmup: warmup!,
      offsetsMs: opts.offsetMs === 0 ? 'none' : `--clock-skew-ms ${JSON.stringify(skews)}`,
      runs,
      median: med,
      aim: { spreadMs: AIM_MS, met: med.reportedSpreadMs < AIM_MS },
      loadavgStart,
      loadavgEnd: loadavg(),
      note: 'real bolt-core client processes (transport-ws, action-mark): startedAt as each host reported it on its estimate of the server clock; the true instants are not observable from outside',
    };
  } finally {
    await clients.stop();
  }
}

function integer(text: string, flag: string, min: number): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) throw new Error(`${flag} wants an integer ≥ ${min}, got '${text}'\n${USAGE}`);
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      clients: { type: 'string', default: '1000' },
      processes: { type: 'string', default: '2' },
      runs: { type: 'string', default: '3' },
      real: { type: 'string', default: '8' },
      'offset-ms': { type: 'string', default: '1000' },
      'settle-s': { type: 'string', default: '35' },
      simulator: { type: 'boolean', default: false },
      url: { type: 'string' },
      count: { type: 'string' },
      prefix: { type: 'string' },
      phase: { type: 'string' },
      seed: { type: 'string' },
      'data-root': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (values.simulator) {
    await runSimulator({
      url: values.url!,
      count: integer(values.count ?? '', '--count', 1),
      prefix: values.prefix!,
      phase: values.phase!,
      offsetMs: integer(values['offset-ms'], '--offset-ms', 0),
      seed: integer(values.seed ?? '1', '--seed', 0),
      dataRoot: values['data-root']!,
    });
    return;
  }
  const clients = integer(values.clients, '--clients', 1);
  const processes = integer(values.processes, '--processes', 1);
  const runs = integer(values.runs, '--runs', 1);
  const real = integer(values.real, '--real', 0);
  const offsetMs = integer(values['offset-ms'], '--offset-ms', 1);
  const settleS = integer(values['settle-s'], '--settle-s', 0);

  const startedAt = new Date();
  const t0 = performance.now();
  const loadavgStart = loadavg();
  const code = codeVersion(['core', 'plugin-sdk/src', 'bench', ...SERVER_PLUGINS.map((p) => `plugins/${p}`), 'plugins/action-mark']);
  const server = await BoltServer.start({
    plugins: SERVER_PLUGINS,
    logLevel: 'warn',
    // Raised only so that 1,000 hosts connect (to the server, then the sink) in seconds.
    config: { plugins: { 'transport-ws': { handshakesPerSec: 5000, handshakeBurst: 5000 } } },
  });
  const jobDir = scratchDir('bolt-bench-start-skew-jobs-');
  const lines: PhaseLine[] = [];
  try {
    progress(`server up (pid ${server.pid}, port ${server.port})`);
    for (const offset of [0, offsetMs]) {
      const line = await simulatedPhase(server, jobDir, { clients, processes, runs, offsetMs: offset, settleS });
      console.log(JSON.stringify({ ...line, code }));
      lines.push(line);
    }
    if (real > 0) {
      for (const offset of [0, offsetMs]) {
        const line = await realPhase(server, jobDir, { real, runs, offsetMs: offset, settleS });
        console.log(JSON.stringify({ ...line, code }));
        lines.push(line);
      }
    }
  } finally {
    await server.stop();
    removeScratchDir(jobDir);
  }
  console.log(JSON.stringify({
    bench: 'start-skew',
    summary: true,
    startedAt: startedAt.toISOString(),
    durationS: round((performance.now() - t0) / 1000, 1),
    node: process.version,
    cpus: os.cpus().length,
    runs,
    aimMs: AIM_MS,
    results: lines.map((l) => ({ hosts: l.hosts, clients: l.clients, offsetsMs: l.offsetsMs === 'none' ? 'none' : `±${offsetMs}`, ...l.median, aimMet: l.aim.met })),
    loadavgStart,
    loadavgEnd: loadavg(),
  }));
}

main().then(
  () => {
    if (!process.argv.includes('--simulator')) process.exit(0);
  },
  (err: unknown) => {
    const message = (err as Error).stack ?? String(err);
    if (process.argv.includes('--simulator')) {
      process.send?.({ type: 'error', message } satisfies FromSimulator);
      process.stderr.write(`[start-skew simulator] ${message}\n`);
    } else {
      progress(`failed: ${message}`);
    }
    process.exit(1);
  },
);
