/**
 * The main-thread side of the three plugin hosts. Each one starts the plugin, carries bus messages
 * to and from it, answers `terminate()`, and reports exactly one `exit` with the reason it ended.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';
import { Worker, type TransferListItem } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { toErrorInfo, type ErrorInfo } from '../../plugin-sdk/src/errors.ts';
import type { Isolation, PluginManifest } from '../../plugin-sdk/src/schemas/manifest.ts';
import type { PluginLimits } from '../config/index.ts';
import type { CoreMessage, HostInit, HostMessage } from './protocol.ts';
import type { PoolOutcome } from './pool-entry.ts';

/** Why a host ended; `error` is absent for a requested, clean stop. */
export interface HostExit {
  code: number | null;
  signal?: string | null;
  error?: ErrorInfo;
}

export interface PluginHost {
  readonly isolation: Isolation;
  /** Worker hosts can take a transferred MessagePort for a direct channel to another worker. */
  readonly supportsChannels: boolean;
  send(msg: CoreMessage, transfer?: TransferListItem[]): void;
  on(event: 'message', listener: (msg: HostMessage) => void): this;
  on(event: 'exit', listener: (exit: HostExit) => void): this;
  /** Ends the host now; resolves when it is gone. */
  terminate(): Promise<void>;
}

export interface HostOptions {
  init: HostInit;
  manifest: PluginManifest;
  /** URL of the bundled runtime (core/host/runtime.ts) for worker and child hosts. */
  runtimeUrl: string;
  /** URL of the bundled pool entry (core/host/pool-entry.ts) for pool hosts. */
  poolEntryUrl: string;
  /** bolt.yaml's caps on the manifest's resourceLimits. */
  pluginLimits: PluginLimits;
}

const DEFAULT_HEAP_MB = 256;

/**
 * The heap limits of a plugin thread (worker or pool): the manifest's, the young generation capped
 * by bolt.yaml's pluginLimits (left out: V8's default). Clears node's semi-space flag first, which
 * would override them (see clearSemiSpaceFlag).
 */
function threadHeapLimits(opts: HostOptions): { maxOldGenerationSizeMb: number; maxYoungGenerationSizeMb?: number } {
  clearSemiSpaceFlag();
  const limits = opts.manifest.resourceLimits ?? {};
  const asked = limits.maxYoungGenerationSizeMb;
  const cap = opts.pluginLimits.maxYoungGenerationSizeMb;
  const young = cap === undefined ? asked : Math.min(asked ?? cap, cap);
  return { maxOldGenerationSizeMb: limits.maxOldGenerationSizeMb ?? DEFAULT_HEAP_MB, ...(young ? { maxYoungGenerationSizeMb: young } : {}) };
}

let semiSpaceFlagCleared = false;

/**
 * V8 lets a `--max-semi-space-size` given to node override the young generation of every thread
 * started after it, a worker's resourceLimits included. bin/bolt-core gives one to keep the core's
 * own threads small (main, tsx's loader); a plugin thread's young generation follows its manifest
 * and bolt.yaml instead, so the flag is cleared before the first one starts. Threads already
 * running keep the size they were given.
 */
function clearSemiSpaceFlag(): void {
  if (semiSpaceFlagCleared) return;
  v8.setFlagsFromString('--max-semi-space-size=0');
  semiSpaceFlagCleared = true;
}

export function createHost(isolation: Isolation, opts: HostOptions): PluginHost {
  switch (isolation) {
    case 'worker':
      return new WorkerHost(opts);
    case 'process':
      return new ChildHost(opts);
    case 'pool':
      return new PoolHost(opts);
  }
}

class WorkerHost extends EventEmitter implements PluginHost {
  readonly isolation = 'worker' as const;
  readonly supportsChannels = true;
  private readonly worker: Worker;
  private lastError: ErrorInfo | undefined;
  private exited = false;
  /** The worker's event loop idle time (ms) at the last heartbeat. */
  private lastIdleMs = 0;

  constructor(opts: HostOptions) {
    super();
    const stackSizeMb = opts.manifest.resourceLimits?.stackSizeMb;
    this.worker = new Worker(fileURLToPath(opts.runtimeUrl), {
      workerData: { init: opts.init },
      name: `plugin:${opts.init.name}`,
      execArgv: ['--enable-source-maps'],
      resourceLimits: { ...threadHeapLimits(opts), ...(stackSizeMb ? { stackSizeMb } : {}) },
    });
    this.worker.on('message', (msg: HostMessage) => this.emit('message', msg));
    // Without an 'error' listener the first uncaught error in the worker would end the whole process.
    this.worker.on('error', (err) => {
      const info = toErrorInfo(err);
      this.lastError = info.code === 'ERR_WORKER_OUT_OF_MEMORY'
        ? { code: 'BOLT_ERR_PLUGIN_OUT_OF_MEMORY', message: `'${opts.init.name}' reached its memory limit: ${info.message}`, cause: info }
        : { code: 'BOLT_ERR_PLUGIN_CRASHED', message: `'${opts.init.name}' crashed: ${info.message}`, stack: info.stack, cause: info };
    });
    this.worker.on('exit', (code) => {
      this.exited = true;
      this.emit('exit', { code, error: this.lastError } satisfies HostExit);
    });
  }

  send(msg: CoreMessage, transfer?: TransferListItem[]): void {
    if (this.exited) return;
    if (msg.t === 'ping' && this.loopTurned()) {
      this.emit('message', { t: 'pong', seq: msg.seq } satisfies HostMessage);
      return;
    }
    this.worker.postMessage(msg, transfer);
  }

  /**
   * True when the worker's event loop has waited for events (idle time grew) since the last call:
   * a loop that polls also takes its messages, so it would answer the ping. Read from the main
   * thread without waking the worker; only a loop that never got back to polling (an endless
   * loop, a long synchronous call, still loading) gets the ping for real.
   */
  private loopTurned(): boolean {
    const idle = this.worker.performance.eventLoopUtilization().idle;
    const turned = idle > this.lastIdleMs;
    this.lastIdleMs = idle;
    return turned;
  }

  async terminate(): Promise<void> {
    if (this.exited) return;
    await this.worker.terminate();
  }
}

class ChildHost extends EventEmitter implements PluginHost {
  readonly isolation = 'process' as const;
  readonly supportsChannels = false;
  private readonly child: ChildProcess;
  private lastError: ErrorInfo | undefined;
  private exited = false;
  private readonly gone: Promise<void>;

  constructor(opts: HostOptions) {
    super();
    const heap = opts.manifest.resourceLimits?.maxOldGenerationSizeMb ?? DEFAULT_HEAP_MB;
    const stack = opts.manifest.resourceLimits?.stackSizeMb;
    this.child = fork(fileURLToPath(opts.runtimeUrl), [], {
      execArgv: ['--enable-source-maps', `--max-old-space-size=${heap}`, ...(stack ? [`--stack-size=${stack * 1024}`] : [])],
      // 'advanced' carries the same values across the IPC channel as postMessage does to a worker.
      serialization: 'advanced',
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.gone = new Promise((resolve) => this.child.once('exit', () => resolve()));
    this.child.on('message', (msg: HostMessage) => {
      if (msg.t === 'fatal') {
        this.lastError = { code: 'BOLT_ERR_PLUGIN_CRASHED', message: `'${opts.init.name}' crashed: ${msg.error.message}`, stack: msg.error.stack, cause: msg.error };
      } else {
        this.emit('message', msg);
      }
    });
    this.child.on('error', (err) => {
      this.lastError ??= { code: 'BOLT_ERR_PLUGIN_CRASHED', message: `'${opts.init.name}' child process failed: ${err.message}` };
    });
    this.child.on('exit', (code, signal) => {
      this.exited = true;
      const error = this.lastError ?? (signal || code !== 0
        ? { code: 'BOLT_ERR_PLUGIN_CRASHED', message: `'${opts.init.name}' child process ended with ${signal ? `signal ${signal}` : `exit code ${code}`}` }
        : undefined);
      this.emit('exit', { code, signal, error } satisfies HostExit);
    });
    this.child.send({ t: 'init', init: opts.init } satisfies CoreMessage);
  }

  send(msg: CoreMessage): void {
    if (!this.exited && this.child.connected) this.child.send(msg);
  }

  async terminate(): Promise<void> {
    if (this.exited) return;
    this.child.kill('SIGKILL');
    await this.gone;
  }
}

/**
 * A piscina pool behind the plugin's service (named after the plugin). Requests become pool tasks;
 * a task that rejects means a thread died, which ends this host as a crash.
 */
class PoolHost extends EventEmitter implements PluginHost {
  readonly isolation = 'pool' as const;
  readonly supportsChannels = false;
  private readonly pool: Piscina;
  private readonly name: string;
  private readonly inflight = new Map<number, AbortController>();
  private exited = false;

  constructor(opts: HostOptions) {
    super();
    this.name = opts.init.name;
    this.pool = new Piscina({
      filename: fileURLToPath(opts.poolEntryUrl),
      workerData: { init: opts.init },
      minThreads: opts.manifest.pool?.minThreads ?? 1,
      maxThreads: opts.manifest.pool?.maxThreads ?? 2,
      idleTimeout: 30_000,
      resourceLimits: threadHeapLimits(opts),
      // Idle threads keep their event loop turning instead of blocking in Atomics.wait, so an error
      // or rejection that a call leaves behind ends its thread (a crash) rather than going unnoticed.
      atomics: 'disabled',
    });
    // An unhandled pool 'error' event ends the process (MEASURED.md, section 2). Piscina emits it
    // when a thread dies with no call in flight.
    this.pool.on('error', (err: unknown) => this.crash(threadDied(this.name, toErrorInfo(err), 'between calls')));
    this.pool.run(null, { name: 'ready' }).then(
      () => {
        if (this.exited) return;
        this.emit('message', { t: 'provide', service: this.name } satisfies HostMessage);
        this.emit('message', { t: 'started' } satisfies HostMessage);
      },
      (err: unknown) => {
        const info = toErrorInfo(err);
        this.emit('message', { t: 'start-failed', error: info.code.startsWith('BOLT_ERR_') ? info : { code: 'BOLT_ERR_PLUGIN_START_FAILED', message: `'${this.name}' failed to load: ${info.message}`, cause: info } } satisfies HostMessage);
      },
    );
  }

  send(msg: CoreMessage): void {
    if (this.exited) return;
    if (msg.t === 'stop') {
      this.emit('message', { t: 'stopped' } satisfies HostMessage);
    } else if (msg.t === 'ping') {
      this.emit('message', { t: 'pong', seq: msg.seq } satisfies HostMessage);
    } else if (msg.t === 'req') {
      void this.call(msg.id, msg.data);
    }
  }

  private async call(id: number, data: unknown): Promise<void> {
    const abort = new AbortController();
    this.inflight.set(id, abort);
    try {
      const outcome = (await this.pool.run(data, { signal: abort.signal })) as PoolOutcome;
      const reply: HostMessage = outcome.ok
        ? { t: 'res', id, ok: true, data: outcome.value }
        : { t: 'res', id, ok: false, error: { code: 'BOLT_ERR_BUS_HANDLER_FAILED', message: `'${this.name}' failed: ${outcome.error.message}`, cause: outcome.error } };
      this.emit('message', reply);
    } catch (err) {
      if (!this.exited) {
        const info = toErrorInfo(err);
        this.crash(abort.signal.aborted
          ? { code: 'BOLT_ERR_PLUGIN_UNRESPONSIVE', message: `a call to '${this.name}' ran past its timeout; its thread was terminated`, cause: info }
          : threadDied(this.name, info, 'during a call'));
      }
    } finally {
      this.inflight.delete(id);
    }
  }

  /** The core calls this when a routed request to the pool times out, so a looping thread is ended. */
  abortCall(id: number): void {
    this.inflight.get(id)?.abort();
  }

  private crash(error: ErrorInfo): void {
    if (this.exited) return;
    this.exited = true;
    void this.pool.destroy().catch(() => undefined);
    this.emit('exit', { code: 1, error } satisfies HostExit);
  }

  async terminate(): Promise<void> {
    if (this.exited) return;
    this.exited = true;
    await this.pool.destroy().catch(() => undefined);
    this.emit('exit', { code: 0 } satisfies HostExit);
  }
}

/** Why a pool thread died, as the plugin's crash: out of memory, or any other end of the thread. */
function threadDied(name: string, info: ErrorInfo, when: string): ErrorInfo {
  return info.code === 'ERR_WORKER_OUT_OF_MEMORY'
    ? { code: 'BOLT_ERR_PLUGIN_OUT_OF_MEMORY', message: `a thread of '${name}' reached its memory limit ${when}: ${info.message}`, cause: info }
    : { code: 'BOLT_ERR_PLUGIN_CRASHED', message: `a thread of '${name}' died ${when}: ${info.message}`, cause: info };
}

export function isPoolHost(host: PluginHost): host is PluginHost & { abortCall(id: number): void } {
  return host instanceof PoolHost;
}
