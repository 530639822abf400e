/**
 * The client transport's side of the bus contract, for action plugin tests on a createTestHost:
 * `client.clock`, `client.status` and `client.send` served on the host's bus, and dispatches and
 * cancels published as the transport publishes them. (A test host has no transport to connect.)
 */
import { randomUUID } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { taskEventId, type ActionDispatch, type Bus, type TaskEventMessage } from '../../../plugin-sdk/src/index.ts';

/** The host id the fake `client.status` answers with. */
export const FAKE_HOST_ID = 'fake-host-id';

export interface FakeClient {
  /** Every event client.send accepted, in order. */
  readonly events: TaskEventMessage[];
  /** client.send calls refused so far. */
  readonly refusedSends: number;
  /** Now on the fake server clock (this host's clock plus the offset). */
  serverNow(): number;
  /** Publishes a dispatch (defaults: action shell, startAt null, timeout 10 s) and returns it. */
  dispatch(fields: Partial<ActionDispatch>): ActionDispatch;
  cancel(runId: string, taskId?: string): void;
  /** The events of one command, in order. */
  eventsOf(commandId: string): TaskEventMessage[];
  /** Resolves once the command has a final event; rejects after timeoutMs. */
  finalOf(commandId: string, timeoutMs?: number): Promise<TaskEventMessage>;
  dispose(): void;
}

export interface FakeClientOptions {
  /** server − client, what client.clock answers. */
  offsetMs: number;
  name: string;
  /** client.send refuses (throws) this many calls before accepting. */
  refuseFirstSends?: number;
}

const FINAL_KINDS = new Set(['finished', 'failed', 'timedout', 'cancelled']);

export function fakeClient(bus: Bus, options: FakeClientOptions): FakeClient {
  const events: TaskEventMessage[] = [];
  let refused = 0;
  const serverNow = (): number => performance.timeOrigin + performance.now() + options.offsetMs;
  const disposers = [
    bus.provide('client.clock', () => ({ offsetMs: options.offsetMs, errorMs: 0.1, rttMs: 0.2 })),
    bus.provide('client.status', () => ({ id: FAKE_HOST_ID, name: options.name, offsetMs: options.offsetMs })),
    bus.provide('client.send', (data) => {
      if (refused < (options.refuseFirstSends ?? 0)) {
        refused++;
        throw new Error('the outbox is full (test)');
      }
      events.push(data as TaskEventMessage);
      return true;
    }),
  ];
  const eventsOf = (commandId: string): TaskEventMessage[] => events.filter((e) => e.id === taskEventId(commandId, FAKE_HOST_ID, e.kind));
  return {
    events,
    get refusedSends() {
      return refused;
    },
    serverNow,
    dispatch(fields) {
      const task = dispatchMessage(serverNow, 'shell', fields);
      bus.publish('client.task.dispatch', task);
      return task;
    },
    cancel(runId, taskId) {
      bus.publish('client.task.cancel', { v: 1, type: 'task.cancel', id: randomUUID(), runId, ...(taskId !== undefined && { taskId }), expiresAt: serverNow() + 60_000, sig: `${'A'.repeat(86)}==`, receivedAt: serverNow() });
    },
    eventsOf,
    async finalOf(commandId, timeoutMs = 8000) {
      const deadline = performance.now() + timeoutMs;
      for (;;) {
        const final = eventsOf(commandId).find((e) => FINAL_KINDS.has(e.kind));
        if (final) return final;
        if (performance.now() > deadline) throw new Error(`no final event for ${commandId} within ${timeoutMs} ms; got ${JSON.stringify(eventsOf(commandId))}`);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    },
    dispose() {
      for (const dispose of disposers) dispose();
    },
  };
}

/** Live (non-zombie) processes whose command line contains marker. */
export function processesWith(marker: string): Array<{ pid: number; args: string }> {
  const found: Array<{ pid: number; args: string }> = [];
  for (const name of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'latin1');
      if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) continue;
      const args = readFileSync(`/proc/${name}/cmdline`, 'latin1').split('\0').join(' ');
      if (args.includes(marker)) found.push({ pid: Number(name), args });
    } catch {
      // the process ended while we looked
    }
  }
  return found;
}

/** Polls check every 10 ms until it holds; throws after timeoutMs. */
export async function pollUntil(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** A verified dispatch as the transport publishes it on `client.task.dispatch`: of `action`, due at once, with `fields` over the defaults. */
export function dispatchMessage(serverNow: () => number, action: string, fields: Partial<ActionDispatch> = {}): ActionDispatch {
  return {
    v: 1,
    type: 'task.dispatch',
    id: randomUUID(),
    runId: 'run-1',
    taskId: 'task-1',
    action,
    with: {},
    startAt: null,
    timeoutMs: 10_000,
    expiresAt: serverNow() + 60_000,
    sig: `${'A'.repeat(86)}==`,
    receivedAt: serverNow(),
    ...fields,
  };
}
