/** Real `bolt-core` processes for end-to-end tests: spawn, watch their output, wait, signal. */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { REPO } from './core.ts';

export { freePort } from '../../core/cli/demo.ts';

export const BIN = path.join(REPO, 'bin', 'bolt-core');

export interface BoltProcess {
  readonly proc: ChildProcess;
  /** Everything written to stdout and stderr so far. */
  output(): string;
  /** Resolves with the first match of `pattern` in the output (rejects after `timeoutMs` or on exit). */
  waitForOutput(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Resolves with the exit code (or the signal name). */
  exited(): Promise<number | string>;
  /** SIGKILL if still running, then waits for the exit. */
  kill(): Promise<void>;
}

export interface SpawnOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Run inside this network namespace (`ip netns exec NAME`; needs root). */
  netns?: string;
}

/**
 * Starts `bolt-core ARGS...` through bin/bolt-core as a user does (its launcher's settings
 * included; the pid is node's), with log lines as JSON (no TTY), debug level unless `env` says
 * otherwise.
 */
export function spawnBolt(args: string[], opts: SpawnOptions = {}): BoltProcess {
  const argv = [BIN, ...args];
  const [cmd, ...rest] = opts.netns ? ['ip', 'netns', 'exec', opts.netns, ...argv] : argv;
  const proc = spawn(cmd!, rest, {
    cwd: opts.cwd ?? REPO,
    env: { ...process.env, BOLT_LOG_LEVEL: 'debug', ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const listeners = new Set<() => void>();
  const onData = (d: Buffer) => {
    out += d.toString();
    for (const l of listeners) l();
  };
  proc.stdout!.on('data', onData);
  proc.stderr!.on('data', onData);
  const exit = new Promise<number | string>((resolve) => proc.once('exit', (code, signal) => resolve(code ?? signal ?? -1)));
  return {
    proc,
    output: () => out,
    waitForOutput(pattern, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const m = out.match(pattern);
          if (m) {
            done();
            resolve(m);
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`no ${pattern} in the output within ${timeoutMs} ms:\n${out.slice(-3000)}`));
        }, timeoutMs);
        const done = () => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        void exit.then((code) => {
          if (!listeners.has(check)) return;
          done();
          reject(new Error(`process exited (${code}) before ${pattern} appeared:\n${out.slice(-3000)}`));
        });
        listeners.add(check);
        check();
      });
    },
    exited: () => exit,
    async kill() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await exit;
    },
  };
}

/** Polls `probe` until it returns a value other than undefined (rejects after `timeoutMs` with the last error). */
export async function eventually<T>(probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 20_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${timeoutMs} ms${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Reads `<dataDir>/core.json` once the process has written it. */
export async function coreInfo(dataDir: string, timeoutMs = 20_000): Promise<{ pid: number; admin: { url: string; token: string } }> {
  return eventually(async () => JSON.parse(await readFile(path.join(dataDir, 'core.json'), 'utf8')), timeoutMs, `${dataDir}/core.json`);
}

/** What a `bolt-core` command run by runCli printed and how it ended. */
export interface CliResult {
  code: number | string;
  stdout: string;
  stderr: string;
}

const cliProcesses = new Set<ChildProcess>();

/**
 * `bolt-core ARGS...` through bin/bolt-core from the repository, without $BOLT_API_TOKEN, with
 * stdout and stderr apart; SIGKILLed after `timeoutMs`. `result` settles once the process exited
 * and both pipes ended, so the output is complete.
 */
export function runCli(args: string[], timeoutMs = 60_000): { proc: ChildProcess; result: Promise<CliResult> } {
  const env = { ...process.env };
  delete env.BOLT_API_TOKEN;
  const proc = spawn(BIN, args, { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
  cliProcesses.add(proc);
  let stdout = '';
  let stderr = '';
  proc.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
  const result = new Promise<CliResult>((resolve) => proc.once('close', (code, signal) => {
    clearTimeout(timer);
    cliProcesses.delete(proc);
    resolve({ code: code ?? signal ?? -1, stdout, stderr });
  }));
  return { proc, result };
}

/** SIGKILLs every runCli process still running and waits until they are gone. */
export function killCliProcesses(): Promise<unknown> {
  return Promise.all([...cliProcesses].map((p) => new Promise((resolve) => {
    p.once('close', resolve);
    p.kill('SIGKILL');
  })));
}
