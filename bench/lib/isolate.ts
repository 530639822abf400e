/**
 * Runs one measurement of a benchmark in a child process of its own script, watched by the parent.
 *
 * Why: the fleet simulator runs thousands of hosts in the benchmark process, and a deadlock there
 * (on Node 20, node:crypto hung when a freshly generated key was exported as JWK while a GC ran;
 * see BENCHMARKS.md, section "fleet-connect") leaves a main thread that can neither measure nor
 * clean up. The child sends the parent a heartbeat every second over IPC and reports
 * each server process group and scratch directory it creates; a child that falls silent for
 * `stallMs` (or runs past `timeoutMs`) is killed, what it reported is stopped and removed, and the
 * measurement is run again in a fresh child, up to `attempts` times. A child that fails in any
 * other way fails the benchmark (it is not retried).
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import readline from 'node:readline';

/** What a child reports to its parent over IPC. */
export type ChildReport = { type: 'alive' } | { type: 'group'; pid: number; marker: string } | { type: 'dir'; path: string };

/** True in a child started by `runIsolated`. */
export const isIsolatedChild = process.argv.includes('--isolated-child');

/** The attempt number given to this child (1 for the first), or null outside one. */
export function isolatedAttempt(): number | null {
  const i = process.argv.indexOf('--attempt');
  return isIsolatedChild && i >= 0 ? Number(process.argv[i + 1]) : null;
}

/** Child side: tells the parent (if any) about a resource or that the main thread still runs. */
export function report(message: ChildReport): void {
  if (isIsolatedChild && process.send !== undefined && process.connected) process.send(message);
}

if (isIsolatedChild) setInterval(() => report({ type: 'alive' }), 1000).unref();

export interface IsolatedRun {
  /** Names the measurement in progress messages and errors. */
  label: string;
  /** The benchmark script (its own path). */
  script: string;
  /** Arguments for this one measurement. */
  args: string[];
  /** A child silent this long is taken as deadlocked. */
  stallMs: number;
  /** A child running this long is killed (counted like a stall). */
  timeoutMs: number;
  attempts: number;
  progress: (msg: string) => void;
}

export interface IsolatedResult {
  /** Lines the successful child printed on stdout. */
  lines: string[];
  /** Attempts killed as stalled or timed out before the one that succeeded. */
  discarded: { attempt: number; reason: string }[];
}

/** Kills a reported process group, only if its leader still is the process that was reported. */
function killGroup(pid: number, marker: string): void {
  try {
    const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (!cmdline.includes(marker)) return;
    process.kill(-pid, 'SIGKILL');
  } catch {
    // Gone already.
  }
}

/** Parent side: runs the measurement in a child with the same Node flags, retrying stalled children. */
export async function runIsolated(run: IsolatedRun): Promise<IsolatedResult> {
  const discarded: { attempt: number; reason: string }[] = [];
  for (let attempt = 1; attempt <= run.attempts; attempt++) {
    const child = spawn(process.execPath, [...process.execArgv, run.script, ...run.args, '--isolated-child', '--attempt', String(attempt)], {
      stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
    });
    const lines: string[] = [];
    readline.createInterface({ input: child.stdout! }).on('line', (line) => lines.push(line));
    const groups = new Map<number, string>();
    const dirs = new Set<string>();
    let lastAlive = performance.now();
    const started = performance.now();
    child.on('message', (m: ChildReport) => {
      lastAlive = performance.now();
      if (m.type === 'group') groups.set(m.pid, m.marker);
      else if (m.type === 'dir') dirs.add(m.path);
    });
    // Stopped from outside (Ctrl-C, timeout): take the child and what it reported down too.
    const onSignal = (signal: NodeJS.Signals) => {
      child.kill('SIGKILL');
      for (const [pid, marker] of groups) killGroup(pid, marker);
      for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
      process.exit(signal === 'SIGINT' ? 130 : 143);
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    let killedFor: string | null = null;
    const watchdog = setInterval(() => {
      const now = performance.now();
      if (now - lastAlive > run.stallMs) killedFor = `no heartbeat for ${Math.round((now - lastAlive) / 1000)} s (deadlocked)`;
      else if (now - started > run.timeoutMs) killedFor = `still running after ${Math.round(run.timeoutMs / 1000)} s`;
      if (killedFor !== null) {
        clearInterval(watchdog);
        child.kill('SIGKILL');
      }
    }, 1000);
    const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    clearInterval(watchdog);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (exit.code === 0) return { lines, discarded };
    // A child that did not finish cleanly may have left its server and directories behind.
    for (const [pid, marker] of groups) killGroup(pid, marker);
    for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
    if (killedFor === null) throw new Error(`${run.label} failed (exit ${exit.code ?? exit.signal})`);
    run.progress(`${run.label}, attempt ${attempt}: killed, ${killedFor}; its server and directories removed`);
    discarded.push({ attempt, reason: killedFor });
  }
  throw new Error(`${run.label} stalled in all ${run.attempts} attempts`);
}

/** `argv` with every `--n X` / `--n=X` replaced by `--n <n>`. */
function withSize(argv: readonly string[], n: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--n') i++;
    else if (!argv[i]!.startsWith('--n=')) out.push(argv[i]!);
  }
  return [...out, '--n', String(n)];
}

/**
 * How a fleet benchmark's child is watched: one that stops sending heartbeats for 30 s is
 * deadlocked, each is given 8 minutes, and a size is tried at most 3 times.
 */
const FLEET_CHILD = { stallMs: 30_000, timeoutMs: 8 * 60_000, attempts: 3 };

/**
 * Parent side of a benchmark over several sizes: runs the script once per size in a watched child
 * (`runIsolated`, with the same arguments and `--n <size>`) and prints each child's JSON lines on
 * stdout with `discardedAttempts` added (the attempts killed as deadlocked before it succeeded).
 */
export async function runSizesIsolated(opts: { script: string; sizes: number[]; progress: (msg: string) => void }): Promise<void> {
  for (const n of opts.sizes) {
    const { lines, discarded } = await runIsolated({ ...opts, ...FLEET_CHILD, label: `N=${n}`, args: withSize(process.argv.slice(2), n) });
    for (const line of lines) process.stdout.write(`${JSON.stringify({ ...(JSON.parse(line) as object), discardedAttempts: discarded })}\n`);
  }
}
