/**
 * The client transport's side of the bus contract, for collector plugin tests on a
 * createTestHost: `client.clock`, `client.status` and `client.send` served on the host's bus, and
 * dispatches and task events published as the transport and the actions publish them.
 */
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { BoltError, taskEventId, type ActionDispatch, type Bus, type MetricSample, type MetricsBatchMessage, type TaskEventKind, type TaskEventMessage } from '../../../plugin-sdk/src/index.ts';

export const FAKE_HOST_ID = 'fake-host-id';
export const FAKE_HOST_NAME = 'web-1';

/** A sample as the sink would store it: the batch's runId next to it. */
export interface ReceivedSample extends MetricSample {
  runId?: string;
}

export interface FakeClient {
  /** Every batch client.send accepted, in order. */
  readonly batches: MetricsBatchMessage[];
  /** Every batch client.send refused, in order. */
  readonly refused: MetricsBatchMessage[];
  /** While true, client.send refuses with BOLT_ERR_WIRE_OUTBOX_FULL. */
  refusing: boolean;
  /** Now on the fake server clock (this host's clock plus the offset). */
  serverNow(): number;
  /** Publishes a dispatch (defaults: startAt null, timeout 10 s, no metrics) and returns it. */
  dispatch(fields: Partial<ActionDispatch>): ActionDispatch;
  /** Publishes the task event an action would send for `task`. */
  event(task: ActionDispatch, kind: TaskEventKind, at?: number): TaskEventMessage;
  /** Every accepted sample, flattened, with its batch's runId. */
  samples(): ReceivedSample[];
  /** Accepted samples tagged with this task. */
  samplesOf(taskId: string): ReceivedSample[];
  dispose(): void;
}

export function fakeClient(bus: Bus, options: { offsetMs: number }): FakeClient {
  const batches: MetricsBatchMessage[] = [];
  const refused: MetricsBatchMessage[] = [];
  const serverNow = (): number => performance.timeOrigin + performance.now() + options.offsetMs;
  const client: FakeClient = {
    batches,
    refused,
    refusing: false,
    serverNow,
    dispatch(fields) {
      const task: ActionDispatch = {
        v: 1,
        type: 'task.dispatch',
        id: randomUUID(),
        runId: 'run-1',
        taskId: 'task-1',
        action: 'sleep',
        with: {},
        startAt: null,
        timeoutMs: 10_000,
        expiresAt: serverNow() + 60_000,
        sig: `${'A'.repeat(86)}==`,
        receivedAt: serverNow(),
        ...fields,
      };
      bus.publish('client.task.dispatch', task);
      return task;
    },
    event(task, kind, at = serverNow()) {
      const event: TaskEventMessage = { v: 1, type: 'task.event', id: taskEventId(task.id, FAKE_HOST_ID, kind), runId: task.runId, taskId: task.taskId, host: FAKE_HOST_NAME, kind, at };
      bus.publish('client.task.event', event);
      return event;
    },
    samples() {
      return batches.flatMap((b) => b.samples.map((s) => (b.runId === undefined ? s : { ...s, runId: b.runId })));
    },
    samplesOf(taskId) {
      return client.samples().filter((s) => s.tags?.task === taskId);
    },
    dispose() {
      for (const dispose of disposers) dispose();
    },
  };
  const disposers = [
    bus.provide('client.clock', () => ({ offsetMs: options.offsetMs, errorMs: 0.1, rttMs: 0.2 })),
    bus.provide('client.status', () => ({ id: FAKE_HOST_ID, name: FAKE_HOST_NAME, offsetMs: options.offsetMs })),
    bus.provide('client.send', (data) => {
      const batch = data as MetricsBatchMessage;
      if (client.refusing) {
        refused.push(batch);
        throw new BoltError('BOLT_ERR_WIRE_OUTBOX_FULL', 'the outbox is full (test)');
      }
      batches.push(batch);
      return true;
    }),
  ];
  return client;
}

/** Polls check every 10 ms until it holds; throws after timeoutMs. */
export async function pollUntil(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** The distinct `t` of some samples, ascending. */
export function instants(samples: readonly MetricSample[]): number[] {
  return [...new Set(samples.map((s) => s.t))].sort((a, b) => a - b);
}
