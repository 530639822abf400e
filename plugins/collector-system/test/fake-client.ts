/**
 * The client transport's side of the bus contract, for collector plugin tests on a
 * createTestHost: `client.clock`, `client.status` and `client.send` served on the host's bus, and
 * dispatches and task events published as the transport and the actions publish them.
 */
import { performance } from 'node:perf_hooks';
import { BoltError, taskEventId, type ActionDispatch, type Bus, type MetricSample, type MetricsBatchMessage, type TaskEventKind, type TaskEventMessage } from '../../../plugin-sdk/src/index.ts';
import { dispatchMessage, FAKE_HOST_ID } from '../../action-shell/test/fake-client.ts';

export { FAKE_HOST_ID, pollUntil } from '../../action-shell/test/fake-client.ts';
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
      const task = dispatchMessage(serverNow, 'sleep', fields);
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


/** The distinct `t` of some samples, ascending. */
export function instants(samples: readonly MetricSample[]): number[] {
  return [...new Set(samples.map((s) => s.t))].sort((a, b) => a - b);
}
