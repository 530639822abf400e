/**
 * A real core playing the server role with the real parser-yaml and scheduler-dag plugins (linked
 * from plugins/), and FakeServer: the bus services and topics of the plugins that need other
 * processes (health-monitor's hosts, transport-ws's dispatch and acks, the sink's task.status and
 * sink.run), provided on the core's bus the way those plugins do, recording what they are asked.
 */
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { Core } from '../../../core/runtime.ts';
import type { Bus, Disposer } from '../../../plugin-sdk/src/index.ts';
import type { HostView } from '../../health-monitor/monitor.ts';
import type { RunView } from '../../writer-sqlite/services.ts';
import { PLUGINS } from '../../../test/helpers/core.ts';

/** The server's clock, as the scheduler reads it. */
export function serverClock(): number {
  return performance.timeOrigin + performance.now();
}

export interface ServerDir {
  dir: string;
  dataDir: string;
  start(): Promise<Core>;
  remove(): Promise<void>;
}

/** A temporary plugins directory linking parser-yaml and scheduler-dag, a bolt.yaml and a data directory that outlives each core. */
export async function serverDir(schedulerConfig: Record<string, unknown> = {}): Promise<ServerDir> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bolt-sched-'));
  const pluginsDir = path.join(dir, 'plugins');
  const dataDir = path.join(dir, 'data');
  const configFile = path.join(dir, 'bolt.yaml');
  await mkdir(pluginsDir);
  for (const name of ['parser-yaml', 'scheduler-dag']) await symlink(path.join(PLUGINS, name), path.join(pluginsDir, name), 'dir');
  await writeFile(configFile, JSON.stringify({ watcher: { settleMs: 100 }, plugins: { 'scheduler-dag': schedulerConfig } }));
  return {
    dir,
    dataDir,
    async start() {
      const core = await Core.start({ roles: ['server'], pluginDirs: [pluginsDir], dataDir, configFile, log: pino({ level: process.env.BOLT_TEST_LOG ?? 'silent' }) });
      const states = core.plugins().map((p) => `${p.name}: ${p.state}`);
      if (!core.plugins().every((p) => p.state === 'running')) {
        await core.stop();
        throw new Error(`plugins did not start: ${states.join(', ')}`);
      }
      return core;
    },
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}

export interface DispatchRequest {
  runId: string;
  taskId: string;
  commandId?: string;
  action: string;
  with: Record<string, unknown>;
  startAt: number | null;
  timeoutMs: number;
  targets: string[];
}

export interface Recorded<T> {
  seq: number;
  at: number;
  data: T;
}

/** A host as health.hosts answers. */
export function host(id: string, name: string, labels: Record<string, string>, state = 'healthy', reason = ''): HostView {
  return {
    id, name, role: 'client', address: `10.0.0.${id.replace(/\D/g, '') || '1'}`, labels, facts: {}, state: state as HostView['state'],
    since: 0, reason, life: 1, lastHeartbeatAt: null, clockOffsetMs: 0, health: null, plugins: null, connected: true,
  };
}

export class FakeServer {
  hosts: HostView[] = [];
  readonly dispatches: Recorded<DispatchRequest>[] = [];
  readonly cancels: Recorded<{ runId: string; taskId?: string; targets: string[] }>[] = [];
  readonly published: Recorded<{ topic: string; data: Record<string, unknown> }>[] = [];
  /** Acks are published this long after a dispatch (null: no acks). */
  ackDelayMs: number | null = null;
  /** Dispatches for which this is true are never answered. */
  hold: (req: DispatchRequest) => boolean = () => false;
  /** Hosts the transport can reach; the others are skipped as not connected. */
  reachable: (id: string) => boolean = () => true;
  readonly #bus: Bus;
  readonly #disposers: Disposer[] = [];
  #seq = 0;

  constructor(bus: Bus) {
    this.#bus = bus;
    this.#disposers.push(
      bus.provide('health.hosts', () => this.hosts),
      bus.provide('transport.dispatch', (data) => {
        const req = data as DispatchRequest;
        this.dispatches.push({ seq: ++this.#seq, at: serverClock(), data: req });
        if (this.hold(req)) return new Promise(() => undefined);
        const sent = req.targets.filter((id) => this.reachable(id));
        const commandId = req.commandId ?? `cmd-${this.#seq}`;
        if (this.ackDelayMs !== null) {
          setTimeout(() => {
            for (const hostId of sent) bus.publish('task.ack', { hostId, ref: commandId, runId: req.runId, taskId: req.taskId, accepted: true });
          }, this.ackDelayMs);
        }
        return { commandId, sentAt: serverClock(), sent, skipped: req.targets.filter((id) => !sent.includes(id)).map((id) => ({ id, reason: 'not connected' })) };
      }),
      bus.provide('transport.cancel', (data) => {
        const req = data as { runId: string; taskId?: string; targets: string[] };
        this.cancels.push({ seq: ++this.#seq, at: serverClock(), data: req });
        return { commandId: `cancel-${this.#seq}`, sentAt: serverClock(), sent: req.targets, skipped: [] };
      }),
    );
    for (const topic of ['run.task.dispatched', 'run.updated', 'run.cancelled']) {
      this.#disposers.push(bus.subscribe(topic, (data) => this.published.push({ seq: ++this.#seq, at: serverClock(), data: { topic, data: data as Record<string, unknown> } })));
    }
  }

  /** Serves `sink.run` (the sink's per-host results) until the returned disposer is called. */
  serveSinkRun(answer: (runId: string) => RunView | null): Disposer {
    const dispose = this.#bus.provide('sink.run', (data) => answer((data as { runId: string }).runId));
    this.#disposers.push(dispose);
    return dispose;
  }

  /** Publishes the sink's final status of a task (all hosts finished unless `hosts` says otherwise). */
  status(runId: string, taskId: string, state: 'succeeded' | 'failed' | 'cancelled', hosts: Partial<Record<'total' | 'started' | 'finished' | 'failed' | 'timedout' | 'cancelled', number>> = {}): void {
    const total = hosts.total ?? this.dispatchOf(runId, taskId)?.data.targets.length ?? 0;
    this.#bus.publish('task.status', {
      runId, taskId, state,
      hosts: { total, started: total, finished: state === 'succeeded' ? total : 0, failed: state === 'failed' ? total : 0, timedout: 0, cancelled: state === 'cancelled' ? total : 0, ...hosts },
    });
  }

  /** Task ids dispatched for a run, in order. */
  dispatchedTasks(runId: string): string[] {
    return this.dispatches.filter((d) => d.data.runId === runId).map((d) => d.data.taskId);
  }

  dispatchOf(runId: string, taskId: string): Recorded<DispatchRequest> | undefined {
    return this.dispatches.find((d) => d.data.runId === runId && d.data.taskId === taskId);
  }

  announcementOf(runId: string, taskId: string): Recorded<{ topic: string; data: Record<string, unknown> }> | undefined {
    return this.published.find((p) => p.data.topic === 'run.task.dispatched' && p.data.data.runId === runId && p.data.data.taskId === taskId);
  }

  close(): void {
    for (const dispose of this.#disposers.splice(0)) dispose();
  }
}

/** Polls `probe` every 20 ms until it returns something truthy; fails after `timeoutMs` naming `what`. */
export async function waitFor<T>(what: string, probe: () => T | Promise<T>, timeoutMs = 5000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** The code, message and details of a failed bus request, unwrapped from the bus's HANDLER_FAILED. */
export async function failureOf(request: Promise<unknown>): Promise<{ code: string; message: string; details?: Record<string, unknown> }> {
  let err: unknown;
  try {
    await request;
  } catch (e) {
    err = e;
  }
  if (err === undefined) throw new Error('the request succeeded; a failure was expected');
  let e = err as { code: string; message: string; details?: Record<string, unknown>; cause?: unknown };
  while (e.code === 'BOLT_ERR_BUS_HANDLER_FAILED' && e.cause) e = e.cause as typeof e;
  return { code: e.code, message: e.message, ...(e.details && { details: e.details }) };
}
