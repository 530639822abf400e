/**
 * Runs one command of a `shell` task: `sh -c run` or an argv without a shell, in its own process
 * group, with a timeout and cancellation that end the whole process tree, and bounded output
 * capture (the last N bytes of stdout and of stderr).
 *
 * Process-tree rule: the command owns its process group. On timeout or cancel, every process in
 * that group gets SIGTERM, then SIGKILL after the grace period, and runShell resolves only once none
 * of them is left (zombies waiting for init to reap them are already dead and do not count). When
 * the command exits by itself, processes it left running (a daemon it started, `cmd &`) are left
 * alone: a classic daemon forks and calls setsid only after its parent has exited, and ending the
 * group at that moment would kill it. A process that leaves the group (setsid) is never followed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { constants as fsConstants, readdirSync, readFileSync } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import type { ErrorCode } from '../../plugin-sdk/src/errors.ts';

/** A shell task's `with`. Exactly one of run and argv. */
export interface ShellSpec {
  /** A script run by `/bin/sh -c`. */
  run?: string;
  /** Program and arguments, started without a shell (nothing is expanded or split). */
  argv?: string[];
  /** Variables merged over the agent's environment. */
  env?: Record<string, string>;
  /** Working directory; must exist. Default: the agent's working directory. */
  cwd?: string;
  /** Text written to the command's stdin, which is then closed. Without it stdin is /dev/null. */
  stdin?: string;
}

export interface RunShellOptions {
  /** Longest the command may run (ms); then its process tree is ended and the outcome is `timedout`. */
  timeoutMs?: number;
  /** Aborting it ends the process tree; the outcome is `cancelled`. */
  signal?: AbortSignal;
  /** How many bytes of the end of stdout, and of stderr, are kept. Default 64 KiB. */
  outputLimitBytes?: number;
  /** Time between SIGTERM and SIGKILL to the process group (ms). Default 2000. */
  killGraceMs?: number;
  /**
   * Starts the command when this resolves, from a process made ready before (`run` scripts only;
   * an argv starts when it resolves, as without it). Forking a large agent process costs
   * milliseconds of its thread, which on a busy host lands on the start instant; a gate shell
   * forked early and released through a pipe starts in tens of microseconds. A rejection (the
   * task was cancelled before its instant) ends the waiting process: the outcome is `cancelled`.
   */
  startWhen?: Promise<unknown>;
}

/**
 * The gate: waits for one line on fd 3, closes it, and becomes `/bin/sh -c RUN`, so the command
 * sees the same stdin, environment, process group and $0 as when it is spawned directly.
 */
const GATE_SCRIPT = 'read -r _ <&3; exec 3<&-; exec /bin/sh -c "$1"';

export type ShellOutcome = 'finished' | 'failed' | 'timedout' | 'cancelled' | 'spawn-error';

export interface ShellResult {
  /** finished: exit code 0; failed: non-zero exit or killed by a signal Bolt did not send. */
  outcome: ShellOutcome;
  /** The command's exit code; null when it was ended by a signal or never started. */
  exitCode: number | null;
  /** The signal that ended the command (e.g. `SIGTERM`), or null. */
  signal: string | null;
  /** From spawn to the command's exit, on the monotonic clock (ms). */
  durationMs: number;
  /** The last outputLimitBytes of stdout, decoded as UTF-8. */
  stdoutTail: string;
  stderrTail: string;
  /** True when more than outputLimitBytes were written, so the tail misses the beginning. */
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  /** Set for every outcome except finished. */
  error?: { code: ErrorCode; message: string };
}

const DEFAULT_OUTPUT_LIMIT_BYTES = 64 * 1024;
const DEFAULT_KILL_GRACE_MS = 2000;
/** How often the process group is checked while it is being ended. */
const GROUP_POLL_MS = 20;
/** How long to wait for the group to vanish after SIGKILL (a process in uninterruptible sleep can take a while). */
const AFTER_KILL_WAIT_MS = 1000;
/** How long to wait, after the command exits, for pipes still held by processes it left running. */
const OUTPUT_DRAIN_MS = 1000;

/**
 * Keeps the last `capacity` bytes pushed into it, in one buffer allocated once: memory stays at
 * `capacity` however much is pushed.
 */
export class TailBuffer {
  readonly capacity: number;
  #buf: Buffer;
  #write = 0;
  #length = 0;
  #total = 0;

  constructor(capacity: number) {
    this.capacity = capacity;
    this.#buf = Buffer.alloc(capacity);
  }

  push(chunk: Buffer): void {
    this.#total += chunk.length;
    const cap = this.capacity;
    if (cap === 0) return;
    if (chunk.length >= cap) {
      chunk.copy(this.#buf, 0, chunk.length - cap);
      this.#write = 0;
      this.#length = cap;
      return;
    }
    const first = Math.min(chunk.length, cap - this.#write);
    chunk.copy(this.#buf, this.#write, 0, first);
    if (first < chunk.length) chunk.copy(this.#buf, 0, first);
    this.#write = (this.#write + chunk.length) % cap;
    this.#length = Math.min(cap, this.#length + chunk.length);
  }

  /** Bytes pushed in total. */
  get totalBytes(): number {
    return this.#total;
  }

  get truncated(): boolean {
    return this.#total > this.#length;
  }

  /** The kept bytes, oldest first. */
  bytes(): Buffer {
    if (this.#length < this.capacity) return Buffer.from(this.#buf.subarray(0, this.#length));
    return Buffer.concat([this.#buf.subarray(this.#write), this.#buf.subarray(0, this.#write)]);
  }

  /** The kept bytes as UTF-8; when truncated, a character cut at the start is dropped rather than garbled. */
  text(): string {
    let bytes = this.bytes();
    if (this.truncated) {
      let skip = 0;
      while (skip < 3 && skip < bytes.length && (bytes[skip]! & 0xc0) === 0x80) skip++;
      bytes = bytes.subarray(skip);
    }
    return bytes.toString('utf8');
  }
}

/** Why a shell task's `with` cannot run (naming the field), or null when it can. */
export function specProblem(spec: ShellSpec): string | null {
  if (spec === null || typeof spec !== 'object') return 'with: must be an object with run or argv';
  const hasRun = spec.run !== undefined;
  const hasArgv = spec.argv !== undefined;
  if (hasRun === hasArgv) return 'with: needs exactly one of run (a string) or argv (a list of strings)';
  if (hasRun && (typeof spec.run !== 'string' || spec.run.length === 0)) return 'with.run must be a non-empty string';
  if (hasArgv) {
    if (!Array.isArray(spec.argv) || spec.argv.length === 0) return 'with.argv must be a non-empty list of strings';
    const bad = spec.argv.findIndex((a) => typeof a !== 'string');
    if (bad >= 0) return `with.argv[${bad}] must be a string`;
    if (spec.argv[0] === '') return 'with.argv[0] (the program) must not be empty';
  }
  if (spec.env !== undefined) {
    if (spec.env === null || typeof spec.env !== 'object' || Array.isArray(spec.env)) return 'with.env must be a map of names to strings';
    for (const [k, v] of Object.entries(spec.env)) if (typeof v !== 'string') return `with.env.${k} must be a string`;
  }
  if (spec.cwd !== undefined && (typeof spec.cwd !== 'string' || spec.cwd.length === 0)) return 'with.cwd must be a non-empty string';
  if (spec.stdin !== undefined && typeof spec.stdin !== 'string') return 'with.stdin must be a string';
  return null;
}

/** Why the cwd cannot be used, or null. */
async function cwdProblem(cwd: string): Promise<string | null> {
  try {
    const s = await stat(cwd);
    if (!s.isDirectory()) return `cwd is not a directory: ${cwd}`;
    await access(cwd, fsConstants.X_OK);
    return null;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return `cwd does not exist: ${cwd}`;
    if (code === 'EACCES') return `cwd is not accessible (permission denied): ${cwd}`;
    return `cwd cannot be used: ${cwd}: ${(err as Error).message}`;
  }
}

function spawnProblem(err: NodeJS.ErrnoException, program: string): string {
  if (err.code === 'ENOENT') return `command not found: ${program} (not a path that exists, nor found in PATH)`;
  if (err.code === 'EACCES') return `permission denied starting ${program}: it is not executable (or a directory)`;
  return `could not start ${program}: ${err.message}`;
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // ESRCH: the group is already gone; EPERM: a member changed user and cannot be signalled.
  }
}

/** Whether the process group has a member that is not a zombie. */
function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
  }
  // kill(2) also finds zombies, which a container's init may never reap; look for a live member.
  let pids: string[];
  try {
    pids = readdirSync('/proc');
  } catch {
    return true;
  }
  const wanted = String(pgid);
  for (const pid of pids) {
    if (pid.charCodeAt(0) < 48 || pid.charCodeAt(0) > 57) continue;
    let line: string;
    try {
      line = readFileSync(`/proc/${pid}/stat`, 'latin1');
    } catch {
      continue;
    }
    // Fields after "pid (comm) ": state ppid pgrp ...; comm may hold spaces and parentheses.
    const fields = line.slice(line.lastIndexOf(')') + 2).split(' ');
    if (fields[2] === wanted && fields[0] !== 'Z' && fields[0] !== 'X') return true;
  }
  return false;
}

const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** SIGTERM to the group, SIGKILL after graceMs if a member is left; resolves once none is left (bounded). */
async function endGroup(pgid: number, graceMs: number): Promise<void> {
  if (!groupAlive(pgid)) return;
  signalGroup(pgid, 'SIGTERM');
  const termDeadline = performance.now() + graceMs;
  while (groupAlive(pgid)) {
    if (performance.now() >= termDeadline) {
      signalGroup(pgid, 'SIGKILL');
      const killDeadline = performance.now() + AFTER_KILL_WAIT_MS;
      while (groupAlive(pgid) && performance.now() < killDeadline) await pause(GROUP_POLL_MS / 2);
      return;
    }
    await pause(Math.min(GROUP_POLL_MS, Math.max(1, termDeadline - performance.now())));
  }
}

/** Resolves when the stream has ended or closed, or after ms. */
function streamDone(stream: NodeJS.ReadableStream & { readableEnded?: boolean; closed?: boolean }, ms: number): Promise<void> {
  if (stream.readableEnded || stream.closed) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    const done = (): void => {
      clearTimeout(timer);
      resolve();
    };
    stream.once('end', done);
    stream.once('close', done);
  });
}

function result(outcome: ShellOutcome, fields: Partial<ShellResult>, error?: ShellResult['error']): ShellResult {
  const r: ShellResult = {
    outcome,
    exitCode: fields.exitCode ?? null,
    signal: fields.signal ?? null,
    durationMs: fields.durationMs ?? 0,
    stdoutTail: fields.stdoutTail ?? '',
    stderrTail: fields.stderrTail ?? '',
    stdoutTruncated: fields.stdoutTruncated ?? false,
    stderrTruncated: fields.stderrTruncated ?? false,
  };
  if (error) r.error = error;
  return r;
}

/**
 * Runs the command and resolves with its outcome; never rejects for anything the command or the
 * spec does (a missing program or cwd, or a malformed spec, is `spawn-error`).
 *
 * Guarantees: the child runs in its own process group; after a timeout or a cancel, no process of
 * that group is left when the promise resolves (SIGTERM, then SIGKILL after `killGraceMs`); at
 * most `outputLimitBytes` of stdout and of stderr are held in memory. After the command exits,
 * output from processes it left running is read for at most 1 s more, then the pipes are closed.
 */
export async function runShell(spec: ShellSpec, opts: RunShellOptions = {}): Promise<ShellResult> {
  // A rejected startWhen (a cancel) is an answer on every path, also the early returns below.
  opts.startWhen?.catch(() => {});
  const limit = opts.outputLimitBytes ?? DEFAULT_OUTPUT_LIMIT_BYTES;
  const graceMs = opts.killGraceMs ?? DEFAULT_KILL_GRACE_MS;
  const { signal, timeoutMs } = opts;
  if (!Number.isInteger(limit) || limit < 0) throw new RangeError(`outputLimitBytes must be a whole number >= 0, got ${limit}`);
  if (!(graceMs >= 0)) throw new RangeError(`killGraceMs must be >= 0, got ${graceMs}`);
  if (timeoutMs !== undefined && !(timeoutMs > 0)) throw new RangeError(`timeoutMs must be > 0, got ${timeoutMs}`);

  const problem = specProblem(spec);
  if (problem) return result('spawn-error', { durationMs: 0 }, { code: 'BOLT_ERR_ACTION_SPEC', message: problem });
  if (signal?.aborted) {
    return result('cancelled', { durationMs: 0 }, { code: 'BOLT_ERR_ACTION_CANCELLED', message: 'cancelled before the command started' });
  }
  if (spec.cwd !== undefined) {
    const cwdError = await cwdProblem(spec.cwd);
    if (cwdError) return result('spawn-error', { durationMs: 0 }, { code: 'BOLT_ERR_ACTION_SPAWN', message: cwdError });
  }

  if (opts.startWhen !== undefined && spec.run === undefined) {
    try {
      await opts.startWhen;
    } catch {
      return result('cancelled', { durationMs: 0 }, { code: 'BOLT_ERR_ACTION_CANCELLED', message: 'cancelled before the command started' });
    }
  }
  const gated = opts.startWhen !== undefined && spec.run !== undefined;
  const [program, ...args] = spec.run !== undefined
    ? (gated ? ['/bin/sh', '-c', GATE_SCRIPT, 'sh', spec.run] : ['/bin/sh', '-c', spec.run])
    : (spec.argv as [string, ...string[]]);
  const stdout = new TailBuffer(limit);
  const stderr = new TailBuffer(limit);
  let started = performance.now();
  let child: ChildProcess;
  try {
    child = spawn(program, args, {
      cwd: spec.cwd,
      env: spec.env ? { ...process.env, ...spec.env } : process.env,
      detached: true,
      stdio: [spec.stdin !== undefined ? 'pipe' : 'ignore', 'pipe', 'pipe', ...(gated ? ['pipe' as const] : [])],
    });
  } catch (err) {
    return result('spawn-error', { durationMs: performance.now() - started }, { code: 'BOLT_ERR_ACTION_SPAWN', message: `could not start ${program}: ${(err as Error).message}` });
  }

  const pid = child.pid;
  if (pid === undefined) {
    const err = await new Promise<NodeJS.ErrnoException>((resolve) => child.once('error', resolve));
    child.stdout?.destroy();
    child.stderr?.destroy();
    child.stdin?.destroy();
    return result('spawn-error', { durationMs: performance.now() - started }, { code: 'BOLT_ERR_ACTION_SPAWN', message: spawnProblem(err, program) });
  }

  child.stdout!.on('data', (chunk: Buffer) => stdout.push(chunk));
  child.stderr!.on('data', (chunk: Buffer) => stderr.push(chunk));
  if (child.stdin) {
    child.stdin.on('error', () => {
      // EPIPE when the command exits without reading all of stdin: not the command's failure.
    });
    child.stdin.end(spec.stdin);
  }

  let stopReason: 'timedout' | 'cancelled' | null = null;
  let ending: Promise<void> | null = null;
  const stop = (reason: 'timedout' | 'cancelled'): void => {
    if (stopReason) return;
    stopReason = reason;
    ending = endGroup(pid, graceMs);
  };
  const onAbort = (): void => stop('cancelled');
  signal?.addEventListener('abort', onAbort, { once: true });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, sig) => resolve({ code, signal: sig }));
  });

  if (gated) {
    const gate = child.stdio[3] as NodeJS.WritableStream & { on(event: 'error', listener: () => void): unknown };
    gate.on('error', () => {
      // EPIPE: the gate shell is gone (cancelled, or killed from outside); its exit says what happened.
    });
    const next = await Promise.race([opts.startWhen!.then(() => 'start' as const, () => 'cancel' as const), exited.then(() => 'exited' as const)]);
    if (next === 'start' && !stopReason) {
      started = performance.now();
      gate.end('\n');
    } else if (next === 'cancel') {
      stop('cancelled');
    }
    // 'exited': the gate shell died before the instant (killed from outside); its exit is reported.
  }
  const timer = timeoutMs !== undefined ? setTimeout(() => stop('timedout'), timeoutMs) : undefined;

  const exit = await exited;
  const durationMs = performance.now() - started;
  clearTimeout(timer);
  signal?.removeEventListener('abort', onAbort);

  if (ending) await ending;
  await Promise.all([streamDone(child.stdout!, OUTPUT_DRAIN_MS), streamDone(child.stderr!, OUTPUT_DRAIN_MS)]);
  child.stdout!.destroy();
  child.stderr!.destroy();

  const fields = {
    exitCode: exit.code,
    signal: exit.signal,
    durationMs,
    stdoutTail: stdout.text(),
    stderrTail: stderr.text(),
    stdoutTruncated: stdout.truncated,
    stderrTruncated: stderr.truncated,
  };
  const ran = spec.run !== undefined ? 'the shell' : program;
  if (stopReason === 'timedout') {
    return result('timedout', fields, { code: 'BOLT_ERR_ACTION_TIMEOUT', message: `${ran} ran longer than the timeout of ${timeoutMs} ms; its process group was ended` });
  }
  if (stopReason === 'cancelled') {
    return result('cancelled', fields, { code: 'BOLT_ERR_ACTION_CANCELLED', message: `cancelled after ${Math.round(durationMs)} ms; the process group was ended` });
  }
  if (exit.code === 0) return result('finished', fields);
  let message: string;
  if (exit.signal) message = `${ran} was killed by ${exit.signal}`;
  else if (exit.code === 127 && spec.run !== undefined) message = 'the shell exited with code 127: a command in run was not found (see stderrTail)';
  else if (exit.code === 126 && spec.run !== undefined) message = 'the shell exited with code 126: a command in run is not executable (see stderrTail)';
  else message = `${ran} exited with code ${exit.code}`;
  return result('failed', fields, { code: 'BOLT_ERR_ACTION_FAILED', message });
}
