/**
 * The fault zoo: for every fault in test/faults and every isolation, either the fault is contained
 * or it is not, as test/faults/README.md says (a test below keeps the two equal).
 *
 * Contained means, in a core running in this test process next to two healthy plugins: this process
 * lives on; the neighbours keep answering bus requests and publishing beats without a gap over
 * twice their interval; the faulty plugin goes down with the expected error code, is restarted
 * with growing backoff, and after K crashes within T seconds is `failed` and stays down. Faults
 * that end the whole process run in a sacrificial core in a child process, which must die of them.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { readdir, readFile, rm, access } from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import type { PluginState, PluginStatus } from '../../core/supervisor/index.ts';
import { ISOLATIONS, type Bus, type ErrorInfo, type Isolation } from '../../plugin-sdk/src/index.ts';
import { FAST_SUPERVISOR, PLUGINS, REPO, startTestCore, type TestCore } from '../helpers/core.ts';
import { FAULTS_DIR, faultPluginName, installFault, triggerFault } from './zoo.ts';

/**
 * 100 ms beats with a 200 ms bound failed now and then on this 2-core machine shared with other
 * work (gaps up to 276 ms while a faulty plugin spun a core or a child process started); at 200 ms
 * the worst gap seen was 210 ms. A 400 ms bound still catches any stall of the core's main thread
 * or a neighbour caught up in the fault (the watchdog alone takes 1000 ms).
 */
const BEAT_INTERVAL_MS = 200;
/** The healthy neighbour's beats must never arrive further apart than this. */
const MAX_BEAT_GAP_MS = 2 * BEAT_INTERVAL_MS;
const ECHO_EVERY_MS = 50;
const ECHO_TIMEOUT_MS = 2000;
const SUPERVISOR = { ...FAST_SUPERVISOR, backoffInitialMs: 150, backoffMaxMs: 2000, maxRestarts: 3, restartWindowS: 30 };
/** The delays before the restarts that precede the K-th crash: backoffInitialMs * 2^n. */
const BACKOFF_MS = Array.from({ length: SUPERVISOR.maxRestarts - 1 }, (_, n) => SUPERVISOR.backoffInitialMs * 2 ** n);
/** A failed plugin is watched this long for a restart that must not come (another one would have come after 600 ms). */
const STAY_DOWN_MS = 1000;
/** Node may fire a timer up to a millisecond early; measured delays get this much slack below their nominal value. */
const TIMER_SLACK_MS = 2;

const START_FAILED = 'BOLT_ERR_PLUGIN_START_FAILED';
const CRASHED = 'BOLT_ERR_PLUGIN_CRASHED';
const OUT_OF_MEMORY = 'BOLT_ERR_PLUGIN_OUT_OF_MEMORY';
const UNRESPONSIVE = 'BOLT_ERR_PLUGIN_UNRESPONSIVE';
const STOP_TIMEOUT = 'BOLT_ERR_PLUGIN_STOP_TIMEOUT';
const DENIED = 'BOLT_ERR_PLUGIN_DENIED';
const HANDLER_FAILED = 'BOLT_ERR_BUS_HANDLER_FAILED';

type Expectation =
  /**
   * The plugin goes down on every trigger (`onLoad`: on every load) and ends `failed`. Its
   * lastError.code is one of `codes`; with the first of them, its message matches `detail`.
   */
  | { kind: 'crash'; codes: string[]; detail: RegExp; cause?: string; onLoad?: boolean; callTimeoutMs?: number }
  /** Pool only: the call is answered with BOLT_ERR_BUS_HANDLER_FAILED; the plugin keeps running. */
  | { kind: 'error-reply'; detail: RegExp; cause?: string }
  /** Unloading finishes at the stop deadline and records BOLT_ERR_PLUGIN_STOP_TIMEOUT. */
  | { kind: 'stop-timeout' }
  /** Ends the whole process, which dies of `signal`: proven in a sacrificial core. */
  | { kind: 'fatal'; signal: NodeJS.Signals }
  | { kind: 'n/a' };

const crash = (codes: string | string[], detail: RegExp, more: { cause?: string; onLoad?: boolean; callTimeoutMs?: number } = {}): Expectation =>
  ({ kind: 'crash', codes: typeof codes === 'string' ? [codes] : codes, detail, ...more });

/** What each fault does under each isolation; test/faults/README.md is the same table in prose. */
const FAULTS: Record<string, Record<Isolation, Expectation>> = {
  'throw-on-load': {
    worker: crash(START_FAILED, /thrown at the top level/, { onLoad: true }),
    process: crash(START_FAILED, /thrown at the top level/, { onLoad: true }),
    pool: crash(START_FAILED, /thrown at the top level/, { onLoad: true }),
  },
  'throw-in-handler': {
    worker: crash(CRASHED, /thrown inside a bus handler/),
    process: crash(CRASHED, /thrown inside a bus handler/),
    pool: { kind: 'error-reply', detail: /thrown inside a bus handler/ },
  },
  'unhandled-rejection': {
    worker: crash(CRASHED, /a rejected promise nobody handled/),
    process: crash(CRASHED, /a rejected promise nobody handled/),
    pool: crash(CRASHED, /a rejected promise nobody handled/),
  },
  'stack-overflow': {
    worker: crash(CRASHED, /Maximum call stack size exceeded/),
    process: crash(CRASHED, /Maximum call stack size exceeded/),
    pool: { kind: 'error-reply', detail: /Maximum call stack size exceeded/ },
  },
  exit: {
    worker: crash(CRASHED, /exit code 1/),
    process: crash(CRASHED, /exit code 1/),
    pool: crash(CRASHED, /exited with code: 1/),
  },
  abort: {
    worker: crash(CRASHED, /process\.abort\(\) is not allowed/, { cause: DENIED }),
    process: crash(CRASHED, /signal SIGABRT/),
    pool: { kind: 'error-reply', detail: /process\.abort\(\) is not allowed/, cause: DENIED },
  },
  'kill-self': {
    worker: crash(CRASHED, /process\.kill\(\d+\) is not allowed/, { cause: DENIED }),
    process: crash(CRASHED, /signal SIGKILL/),
    pool: { kind: 'error-reply', detail: /process\.kill\(\d+\) is not allowed/, cause: DENIED },
  },
  'endless-loop': {
    worker: crash(UNRESPONSIVE, /did not answer heartbeats/),
    process: crash(UNRESPONSIVE, /did not answer heartbeats/),
    pool: crash(UNRESPONSIVE, /ran past its timeout/, { callTimeoutMs: 500 }),
  },
  // A host that fills its heap stops answering heartbeats meanwhile: on a busy machine its last
  // garbage collections can outlast the watchdog, which then ends it first.
  'heap-exhaustion': {
    worker: crash([OUT_OF_MEMORY, UNRESPONSIVE], /reached its memory limit/),
    // V8 aborts a process that runs out of heap.
    process: crash([CRASHED, UNRESPONSIVE], /signal SIGABRT/),
    pool: crash(OUT_OF_MEMORY, /reached its memory limit/),
  },
  'huge-allocation': {
    worker: { kind: 'fatal', signal: 'SIGABRT' },
    process: crash([CRASHED, UNRESPONSIVE], /signal SIGABRT/),
    pool: { kind: 'fatal', signal: 'SIGABRT' },
  },
  'hang-in-stop': {
    worker: { kind: 'stop-timeout' },
    process: { kind: 'stop-timeout' },
    pool: { kind: 'n/a' },
  },
  'native-crash': {
    worker: { kind: 'fatal', signal: 'SIGSEGV' },
    process: crash(CRASHED, /signal SIGSEGV/),
    pool: { kind: 'fatal', signal: 'SIGSEGV' },
  },
  'kill-via-shell': {
    worker: { kind: 'fatal', signal: 'SIGKILL' },
    process: crash(CRASHED, /signal SIGKILL/),
    pool: { kind: 'fatal', signal: 'SIGKILL' },
  },
};

interface StateEvent {
  name: string;
  state: PluginState;
  restarts: number;
  error: ErrorInfo | null;
  at: number;
}

interface Health {
  beats: number;
  worstBeatGapMs: number;
  echoes: number;
  echoFailures: string[];
  worstEchoMs: number;
}

/** Watches the healthy neighbours: when each `example.heartbeat` beat arrives, and an `example.echo` request every ECHO_EVERY_MS. */
class Neighbours {
  private readonly beats: number[] = [];
  private readonly echoes: { at: number; ms: number; error?: string }[] = [];
  private readonly inflight = new Set<Promise<void>>();
  private readonly bus: Bus;
  private readonly unsubscribe: () => void;
  private readonly timer: NodeJS.Timeout;
  private seq = 0;

  constructor(bus: Bus) {
    this.bus = bus;
    this.unsubscribe = bus.subscribe('example.heartbeat', () => this.beats.push(performance.now()));
    this.timer = setInterval(() => this.echo(), ECHO_EVERY_MS);
  }

  private echo(): void {
    const sent = this.seq++;
    const at = performance.now();
    const done = this.bus.request('example.echo', sent, { timeoutMs: ECHO_TIMEOUT_MS }).then(
      (value) => {
        this.echoes.push({ at, ms: performance.now() - at, ...(value === sent ? {} : { error: `echo ${sent} came back as ${JSON.stringify(value)}` }) });
      },
      (err: unknown) => {
        const e = err as Error & { code?: string };
        this.echoes.push({ at, ms: performance.now() - at, error: `${e.code ?? 'ERR_UNKNOWN'}: ${e.message}` });
      },
    );
    this.inflight.add(done);
    void done.then(() => this.inflight.delete(done));
  }

  /** Resolves once a beat has arrived (so every later window has one before it). */
  async firstBeat(timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (this.beats.length === 0) {
      if (performance.now() > deadline) throw new Error(`no example.heartbeat beat within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const off = this.bus.subscribe('example.heartbeat', () => {
          off();
          clearTimeout(timer);
          resolve();
        });
        const timer = setTimeout(() => {
          off();
          resolve();
        }, 50);
      });
    }
  }

  /**
   * Health from `from` until now: one more echo request is made and every one in flight settled
   * first, so each window holds at least one. The worst gap runs up to now, so a window shorter
   * than a beat interval still proves that beats keep coming.
   */
  async since(from: number): Promise<Health> {
    this.echo();
    await Promise.all([...this.inflight]);
    const to = performance.now();
    const before = this.beats.filter((t) => t < from).at(-1) ?? from;
    const inWindow = this.beats.filter((t) => t >= from);
    const points = [before, ...inWindow, to];
    let worstBeatGapMs = 0;
    for (let i = 1; i < points.length; i++) worstBeatGapMs = Math.max(worstBeatGapMs, points[i]! - points[i - 1]!);
    const echoes = this.echoes.filter((e) => e.at >= from);
    return {
      beats: inWindow.length,
      worstBeatGapMs: Math.round(worstBeatGapMs),
      echoes: echoes.length,
      echoFailures: echoes.flatMap((e) => (e.error ? [e.error] : [])),
      worstEchoMs: Math.round(Math.max(0, ...echoes.map((e) => e.ms))),
    };
  }

  stop(): void {
    clearInterval(this.timer);
    this.unsubscribe();
  }
}

interface ReportRow {
  isolation: Isolation;
  fault: string;
  outcome: string;
  backoffMs: string;
  health: Health;
}

function printReport(rows: ReportRow[]): void {
  if (rows.length === 0) return;
  const lines = rows.map((r) => `  ${`${r.fault} / ${r.isolation}`.padEnd(32)} ${r.outcome.padEnd(32)} ${r.backoffMs.padEnd(11)} ${String(r.health.worstBeatGapMs).padStart(5)} ms ${String(r.health.beats).padStart(4)} ${String(r.health.echoes).padStart(5)} ${String(r.health.worstEchoMs).padStart(5)} ms`);
  const worst = Math.max(...rows.map((r) => r.health.worstBeatGapMs));
  console.log([
    `\n  Fault zoo (beat interval ${BEAT_INTERVAL_MS} ms, gap bound ${MAX_BEAT_GAP_MS} ms; worst gap seen: ${worst} ms)`,
    `  ${'fault / isolation'.padEnd(32)} ${'faulty plugin'.padEnd(32)} ${'backoff'.padEnd(11)} ${'worst gap'.padStart(8)} beats echoes worst echo`,
    ...lines,
  ].join('\n'));
}

function assertHealthy(tc: TestCore, health: Health): void {
  expect(health.echoFailures, 'example.echo requests that failed').to.deep.equal([]);
  expect(health.echoes, 'example.echo requests answered').to.be.greaterThan(0);
  expect(health.worstBeatGapMs, `worst gap between example.heartbeat beats (bound ${MAX_BEAT_GAP_MS} ms)`).to.be.at.most(MAX_BEAT_GAP_MS);
  for (const name of ['example-heartbeat', 'example-echo']) {
    const s = tc.status(name);
    expect(s, name).to.include({ state: 'running', restarts: 0 });
    expect(s?.lastError, `${name} lastError`).to.equal(null);
  }
}

/** Resolves once the supervisor has no record named `name` any more. */
function waitUntilGone(tc: TestCore, name: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (tc.status(name)) return;
      cleanup();
      resolve();
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`plugin '${name}' was still loaded after ${timeoutMs} ms: ${JSON.stringify(tc.status(name))}`));
    }, timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      tc.core.supervisor.off('change', check);
    };
    tc.core.supervisor.on('change', check);
    check();
  });
}

function describeExpectation(e: Expectation): string {
  switch (e.kind) {
    case 'crash':
      return `contained: ${e.codes.join(' or ')}${e.cause ? ` (cause ${e.cause})` : ''}, backoff, then failed`;
    case 'error-reply':
      return `contained: ${HANDLER_FAILED} reply${e.cause ? ` (cause ${e.cause})` : ''}, keeps running`;
    case 'stop-timeout':
      return `contained: unload ends at the stop deadline with ${STOP_TIMEOUT}`;
    case 'fatal':
      return `NOT contained: the whole process dies of ${e.signal}`;
    case 'n/a':
      return 'not applicable';
  }
}

describe('fault zoo: which faults each isolation contains', function () {
  const report: ReportRow[] = [];
  after(() => printReport(report));

  for (const isolation of ISOLATIONS) {
    describe(`${isolation} isolation, in this process, next to healthy example-heartbeat and example-echo`, function () {
      let tc: TestCore;
      let neighbours: Neighbours;
      let watchedFrom = 0;
      const log: StateEvent[] = [];
      /** Plugins that reached `failed`, with the time and restart count they had then. */
      const failed = new Map<string, { at: number; restarts: number }>();

      before(async function () {
        this.timeout(60_000);
        tc = await startTestCore({
          plugins: [path.join(PLUGINS, 'example-heartbeat'), path.join(PLUGINS, 'example-echo')],
          config: { supervisor: SUPERVISOR, plugins: { 'example-heartbeat': { intervalMs: BEAT_INTERVAL_MS } } },
        });
        tc.core.bus.subscribe('core.plugin.state', (data) => {
          const s = data as PluginStatus;
          log.push({ name: s.name, state: s.state, restarts: s.restarts, error: s.lastError, at: performance.now() });
        });
        await tc.waitFor('example-heartbeat', 'running', 20_000);
        await tc.waitFor('example-echo', 'running', 20_000);
        neighbours = new Neighbours(tc.core.bus);
        await neighbours.firstBeat(10_000);
        watchedFrom = performance.now();
      });

      after(async function () {
        this.timeout(30_000);
        neighbours?.stop();
        await tc?.close();
      });

      for (const [fault, expectations] of Object.entries(FAULTS)) {
        const expected = expectations[isolation];
        if (expected.kind === 'fatal' || expected.kind === 'n/a') continue;
        const name = faultPluginName(fault, isolation);

        it(`${fault}: ${describeExpectation(expected)}`, async function () {
          this.timeout(60_000);
          const from = performance.now();
          let outcome = '';
          let backoffMs = '';

          if (expected.kind === 'crash') {
            await installFault(tc, fault, isolation);
            if (!expected.onLoad) {
              for (let round = 0; round < SUPERVISOR.maxRestarts; round++) {
                await tc.waitFor(name, 'running', 20_000);
                const call = triggerFault(tc.core.bus, name, isolation, expected.callTimeoutMs ?? 20_000);
                await tc.waitFor(name, (p) => p.state !== 'running', 20_000);
                await call;
              }
            }
            const final = await tc.waitFor(name, 'failed', 20_000);
            const events = log.filter((e) => e.name === name && e.at >= from);
            const downs = events.filter((e) => e.state === 'crashed' || e.state === 'failed');
            expect(downs.map((e) => e.state), 'states after each fault').to.deep.equal([...BACKOFF_MS.map(() => 'crashed'), 'failed']);
            for (const down of downs) {
              expect(expected.codes, `lastError.code (${down.error?.message})`).to.include(down.error?.code);
              if (down.error && down.error.code === expected.codes[0]) expect(down.error.message).to.match(expected.detail);
              if (expected.cause) expect(down.error?.cause?.code, 'lastError.cause.code').to.equal(expected.cause);
            }
            expect(downs.at(-1)!.at - downs[0]!.at, 'K crashes fell within the restart window').to.be.below(SUPERVISOR.restartWindowS * 1000);
            // Backoff: each restart ('loading' with one more restart) comes no sooner than its delay, and the delays grow.
            const delays = downs.slice(0, -1).map((down, i) => {
              const restart = events.find((e) => e.at >= down.at && e.state === 'loading' && e.restarts === i + 1);
              expect(restart, `restart #${i + 1}`).to.not.equal(undefined);
              return restart!.at - down.at;
            });
            delays.forEach((delay, i) => expect(delay, `delay before restart #${i + 1}`).to.be.at.least(BACKOFF_MS[i]! - TIMER_SLACK_MS));
            for (let i = 1; i < delays.length; i++) expect(delays[i], 'backoff grows').to.be.greaterThan(delays[i - 1]!);
            expect(final.restarts).to.equal(SUPERVISOR.maxRestarts - 1);
            failed.set(name, { at: downs.at(-1)!.at, restarts: final.restarts });
            outcome = [...new Set(downs.map((e) => e.error?.code.replace('BOLT_ERR_', '')))].join('/');
            backoffMs = delays.map((d) => Math.round(d)).join(', ');
          } else if (expected.kind === 'error-reply') {
            await installFault(tc, fault, isolation);
            await tc.waitFor(name, 'running', 20_000);
            for (let call = 0; call < SUPERVISOR.maxRestarts + 1; call++) {
              const result = await triggerFault(tc.core.bus, name, isolation, 20_000);
              if (result.ok) expect.fail(`the call to '${name}' succeeded: ${JSON.stringify(result.value)}`);
              expect(result.error.code).to.equal(HANDLER_FAILED);
              expect(result.error.message).to.match(expected.detail);
              if (expected.cause) expect((result.error.cause as { code?: string } | undefined)?.code).to.equal(expected.cause);
            }
            expect(tc.status(name)).to.include({ state: 'running', restarts: 0, lastError: null });
            expect(log.filter((e) => e.name === name && e.at >= from && e.state !== 'loading' && e.state !== 'running')).to.deep.equal([]);
            outcome = 'BUS_HANDLER_FAILED reply';
          } else {
            const folder = await installFault(tc, fault, isolation);
            await tc.waitFor(name, 'running', 20_000);
            const removedAt = performance.now();
            await rm(folder, { recursive: true, force: true });
            await waitUntilGone(tc, name, 20_000);
            const goneMs = performance.now() - removedAt;
            const stopping = log.find((e) => e.name === name && e.at >= removedAt && e.state === 'stopping');
            const stopped = log.find((e) => e.name === name && e.at >= removedAt && e.state === 'stopped');
            expect(stopping, "'stopping' event").to.not.equal(undefined);
            expect(stopped?.error?.code, 'lastError.code when stopped').to.equal(STOP_TIMEOUT);
            const stopMs = stopped!.at - stopping!.at;
            expect(stopMs, 'stopping -> stopped').to.be.within(SUPERVISOR.stopTimeoutMs - TIMER_SLACK_MS, SUPERVISOR.stopTimeoutMs + 1000);
            expect(goneMs, 'removal to unloaded').to.be.below(SUPERVISOR.stopTimeoutMs + 3000);
            outcome = `STOP_TIMEOUT after ${Math.round(stopMs)} ms`;
          }

          const health = await neighbours.since(from);
          report.push({ isolation, fault, outcome, backoffMs, health });
          assertHealthy(tc, health);
        });
      }

      it(`every plugin that reached 'failed' stays down (watched for ${STAY_DOWN_MS} ms after the last one failed)`, async function () {
        this.timeout(10_000);
        expect(failed.size, 'plugins that reached failed').to.be.greaterThan(0);
        const lastFailedAt = Math.max(...[...failed.values()].map((f) => f.at));
        const rest = lastFailedAt + STAY_DOWN_MS - performance.now();
        // An observation window: a restart that must not happen would have come within 600 ms.
        if (rest > 0) await new Promise((resolve) => setTimeout(resolve, rest));
        for (const [name, { at, restarts }] of failed) {
          expect(log.filter((e) => e.name === name && e.at > at), `state changes of ${name} after it failed`).to.deep.equal([]);
          expect(tc.status(name), name).to.include({ state: 'failed', restarts });
        }
        assertHealthy(tc, await neighbours.since(watchedFrom));
      });
    });
  }

  describe('faults that end the whole process, each in a sacrificial core (a child process)', function () {
    const DOOMED = path.join(FAULTS_DIR, 'doomed-core.ts');
    const fatal = Object.entries(FAULTS).flatMap(([fault, byIsolation]) =>
      ISOLATIONS.flatMap((isolation) => {
        const e = byIsolation[isolation];
        return e.kind === 'fatal' ? [{ fault, isolation, signal: e.signal }] : [];
      }));
    const runs = new Map<string, Promise<DoomedRun>>();

    interface DoomedRun {
      code: number | null;
      signal: NodeJS.Signals | null;
      events: Array<{ event: string; dir?: string; status?: PluginStatus; message?: string }>;
      stderr: string;
    }

    /** Runs doomed-core.ts for one fault; never rejects. Removes the temporary directory the sacrificial core left. */
    function runDoomed(fault: string, isolation: Isolation): Promise<DoomedRun> {
      return new Promise((resolve) => {
        const child = spawn(process.execPath, ['--import', 'tsx', DOOMED, fault, isolation], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
        child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4000)));
        const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
        child.on('close', (code, signal) => {
          clearTimeout(timer);
          const events = stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as DoomedRun['events'][number]);
          const dir = events.find((e) => e.dir)?.dir;
          void (dir ? rm(dir, { recursive: true, force: true }) : Promise.resolve()).then(() => resolve({ code, signal, events, stderr }));
        });
      });
    }

    before(function () {
      // The runs are independent processes: start them all now, each test awaits its own.
      for (const { fault, isolation } of fatal) runs.set(`${fault}/${isolation}`, runDoomed(fault, isolation));
      runs.set('control', runDoomed('huge-allocation', 'process'));
    });

    it('control: the same harness reports a contained fault (huge-allocation under process) as survived', async function () {
      this.timeout(90_000);
      const run = await runs.get('control')!;
      expect(run.events.map((e) => e.event), run.stderr).to.deep.equal(['ready', 'survived']);
      expect(run.events[1]?.status?.state).to.be.oneOf(['crashed', 'failed']);
      expect(run.code).to.equal(0);
    });

    for (const { fault, isolation, signal } of fatal) {
      it(`${fault} under ${isolation}: NOT contained, the whole process dies of ${signal}`, async function () {
        this.timeout(90_000);
        const run = await runs.get(`${fault}/${isolation}`)!;
        expect(run.events.map((e) => e.event), `events before the process ended; stderr: ${run.stderr}`).to.deep.equal(['ready']);
        expect(run.signal, `how the process ended (exit code ${run.code})`).to.equal(signal);
      });
    }
  });

  it('test/faults/README.md states exactly these expectations, and every fault folder is in the table', async () => {
    const folders = [];
    for (const entry of await readdir(FAULTS_DIR, { withFileTypes: true })) {
      if (entry.isDirectory() && (await access(path.join(FAULTS_DIR, entry.name, 'plugin.json')).then(() => true, () => false))) folders.push(entry.name);
    }
    expect(folders.sort()).to.deep.equal(Object.keys(FAULTS).sort());
    const readme = await readFile(path.join(FAULTS_DIR, 'README.md'), 'utf8');
    const rows = new Map<string, string[]>();
    for (const line of readme.split('\n')) {
      const id = /^\|.*?\[`([a-z-]+)`\]/.exec(line)?.[1];
      if (id) rows.set(id, line.split('|').slice(2, -1).map((cell) => cell.trim()));
    }
    expect([...rows.keys()].sort(), 'README rows').to.deep.equal(Object.keys(FAULTS).sort());
    for (const [fault, byIsolation] of Object.entries(FAULTS)) {
      ISOLATIONS.forEach((isolation, column) => {
        const e = byIsolation[isolation];
        const cell = rows.get(fault)![column] ?? '';
        const expectedStart = e.kind === 'crash' ? `contained (${e.codes[0]}`
          : e.kind === 'error-reply' ? `contained (${HANDLER_FAILED}`
          : e.kind === 'stop-timeout' ? `contained (${STOP_TIMEOUT}`
          : e.kind === 'fatal' ? 'NOT contained:'
          : 'n/a';
        expect(cell.startsWith(expectedStart), `README cell for ${fault} under ${isolation}: "${cell}" should start with "${expectedStart}"`).to.equal(true);
      });
    }
  });
});
