/** The decision rules of ResultsTracker, with the clock passed in. */
import { expect } from 'chai';
import { allowedFailures, ResultsTracker, type Dispatch, type HostEvent, type Target } from '../tracker.ts';

const T0 = 1_000_000;
const SETTINGS = { graceMs: 5_000, orphanTtlMs: 60_000, maxOrphanEvents: 100, maxDoneTasks: 1_000 };

function targets(n: number): Target[] {
  return Array.from({ length: n }, (_, i) => ({ id: `key-${i}`, name: `host-${i}` }));
}

function dispatch(taskId: string, to: Target[], extra: Partial<Dispatch> = {}): Dispatch {
  return { runId: 'run-1', taskId, commandId: `cmd-${taskId}`, targets: to, startAt: null, timeoutMs: 10_000, failure: { maxFailedHosts: { count: 0 } }, dispatchedAt: T0, ...extra };
}

function event(taskId: string, target: Target, kind: HostEvent['kind'], extra: Partial<HostEvent> = {}): HostEvent {
  return { id: `${taskId}:${target.id}:${kind}`, runId: 'run-1', taskId, host: target.name, hostId: target.id, kind, at: T0 + 100, ...extra };
}

describe('aggregator-results ResultsTracker', () => {
  let tracker: ResultsTracker;
  beforeEach(() => {
    tracker = new ResultsTracker(SETTINGS);
  });

  it('decides succeeded once every target finished, with counts and timing', () => {
    const to = targets(3);
    expect(tracker.dispatched(dispatch('t', to))).to.equal(null);
    expect(tracker.event(event('t', to[0]!, 'started', { startedAt: T0 + 10 }), T0)).to.equal(null);
    expect(tracker.event(event('t', to[0]!, 'finished', { durationMs: 50 }), T0)).to.equal(null);
    expect(tracker.event(event('t', to[1]!, 'finished', { startedAt: T0 + 12, durationMs: 40 }), T0)).to.equal(null);
    const decision = tracker.event(event('t', to[2]!, 'finished', { durationMs: 1 }), T0);
    expect(decision).to.deep.equal({
      runId: 'run-1',
      taskId: 't',
      state: 'succeeded',
      hosts: { total: 3, started: 3, finished: 3, failed: 0, timedout: 0, cancelled: 0 },
      startedAt: T0 + 10,
      startSkewMs: 2,
      finishedAt: T0 + 60,
    });
    expect(tracker.phase('run-1', 't')).to.equal('deciding');
    // Later events and the same dispatch again change nothing.
    expect(tracker.event(event('t', to[2]!, 'failed', { id: 'late' }), T0)).to.equal(null);
    expect(tracker.dispatched(dispatch('t', to))).to.equal(null);
    tracker.settled('run-1', 't');
    expect(tracker.phase('run-1', 't')).to.equal('done');
    expect(tracker.event(event('t', to[0]!, 'failed', { id: 'later' }), T0)).to.equal(null);
  });

  it('fails a task on one failed host when no failure is allowed', () => {
    const to = targets(2);
    tracker.dispatched(dispatch('t', to, { failure: null }));
    tracker.event(event('t', to[0]!, 'failed'), T0);
    expect(tracker.event(event('t', to[1]!, 'finished'), T0)).to.deep.include({ state: 'failed', hosts: { total: 2, started: 1, finished: 1, failed: 1, timedout: 0, cancelled: 0 } });
  });

  it('computes the allowance from a count or a percent of the targets, rounded down', () => {
    expect(allowedFailures({ count: 2 }, 10)).to.equal(2);
    expect(allowedFailures({ percent: 10 }, 10)).to.equal(1);
    expect(allowedFailures({ percent: 10 }, 19)).to.equal(1);
    expect(allowedFailures({ percent: 10 }, 9)).to.equal(0);
    expect(allowedFailures({ percent: 100 }, 7)).to.equal(7);
  });

  for (const [policy, failing, expected] of [
    [{ count: 1 }, 1, 'succeeded'],
    [{ count: 1 }, 2, 'failed'],
    [{ percent: 50 }, 2, 'succeeded'],
    [{ percent: 50 }, 3, 'failed'],
  ] as const) {
    it(`maxFailedHosts ${JSON.stringify(policy)} with ${failing} of 4 hosts failing: ${expected}`, () => {
      const to = targets(4);
      tracker.dispatched(dispatch('t', to, { failure: { maxFailedHosts: policy } }));
      let decision = null;
      for (const [i, target] of to.entries()) decision = tracker.event(event('t', target, i < failing ? 'failed' : 'finished'), T0);
      expect(decision?.state).to.equal(expected);
    });
  }

  it('counts timed out, failed and lost hosts together against the allowance', () => {
    const to = targets(4);
    tracker.dispatched(dispatch('t', to, { failure: { maxFailedHosts: { count: 2 } }, timeoutMs: 1_000 }));
    tracker.event(event('t', to[0]!, 'finished'), T0);
    tracker.event(event('t', to[1]!, 'failed'), T0);
    expect(tracker.hostLost(to[2]!.id)).to.deep.equal([]);
    // Deadline: dispatchedAt + timeoutMs + graceMs.
    expect(tracker.tick(T0 + 1_000 + 5_000 - 1)).to.deep.equal([]);
    const [decision] = tracker.tick(T0 + 1_000 + 5_000);
    expect(decision).to.deep.include({ state: 'failed', hosts: { total: 4, started: 1, finished: 1, failed: 1, timedout: 1, cancelled: 0 }, lost: 1 });
    expect(decision!.unreported).to.deep.equal([
      { host: 'host-2', state: 'lost' },
      { host: 'host-3', state: 'timedout' },
    ]);
  });

  it('measures the deadline from startAt when the task starts together', () => {
    const to = targets(1);
    tracker.dispatched(dispatch('t', to, { startAt: T0 + 3_000, timeoutMs: 1_000 }));
    expect(tracker.tick(T0 + 8_999)).to.deep.equal([]);
    expect(tracker.tick(T0 + 9_000)[0]).to.deep.include({ state: 'failed', hosts: { total: 1, started: 0, finished: 0, failed: 0, timedout: 1, cancelled: 0 } });
  });

  it('cancels a task whose hosts were all cancelled, or that has a cancelled host and no failures over the allowance', () => {
    const to = targets(2);
    tracker.dispatched(dispatch('a', to));
    tracker.event(event('a', to[0]!, 'cancelled'), T0);
    expect(tracker.event(event('a', to[1]!, 'cancelled'), T0)).to.deep.include({ state: 'cancelled', hosts: { total: 2, started: 0, finished: 0, failed: 0, timedout: 0, cancelled: 2 } });
    tracker.dispatched(dispatch('b', to));
    tracker.event(event('b', to[0]!, 'finished'), T0);
    expect(tracker.event(event('b', to[1]!, 'cancelled'), T0)?.state).to.equal('cancelled');
    tracker.dispatched(dispatch('c', to));
    tracker.event(event('c', to[0]!, 'failed'), T0);
    expect(tracker.event(event('c', to[1]!, 'cancelled'), T0)?.state, 'failures over the allowance win').to.equal('failed');
  });

  it('counts an event id once and keeps a host\'s first final event', () => {
    const to = targets(3);
    tracker.dispatched(dispatch('t', to, { failure: { maxFailedHosts: { count: 1 } } }));
    const failed = event('t', to[0]!, 'failed');
    tracker.event(failed, T0);
    tracker.event(failed, T0);
    tracker.event(event('t', to[0]!, 'finished'), T0);
    tracker.event(event('t', to[1]!, 'finished'), T0);
    expect(tracker.snapshot().tasks).to.deep.equal([{ runId: 'run-1', taskId: 't', phase: 'collecting', total: 3, open: 1, nextDeadline: T0 + 15_000 }]);
    expect(tracker.event(event('t', to[2]!, 'finished'), T0)).to.deep.include({ state: 'succeeded', hosts: { total: 3, started: 2, finished: 2, failed: 1, timedout: 0, cancelled: 0 } });
  });

  it('matches events by host id, and by name only when the event has no id and the name is unique', () => {
    const to = [{ id: 'k1', name: 'same' }, { id: 'k2', name: 'same' }, { id: 'k3', name: 'other' }];
    tracker.dispatched(dispatch('t', to));
    tracker.event({ ...event('t', to[0]!, 'finished'), hostId: 'stranger' }, T0);
    tracker.event({ ...event('t', to[0]!, 'finished'), id: 'no-id-same', hostId: undefined }, T0);
    tracker.event({ ...event('t', to[2]!, 'finished'), hostId: undefined }, T0);
    expect(tracker.snapshot().tasks[0]?.open, 'only the unique name matched').to.equal(2);
    tracker.event(event('t', to[0]!, 'finished', { id: 'a' }), T0);
    expect(tracker.event(event('t', to[1]!, 'finished', { id: 'b' }), T0)?.state).to.equal('succeeded');
  });

  it('keeps events that arrive before their dispatch and applies them when it comes', () => {
    const to = targets(2);
    expect(tracker.event(event('t', to[0]!, 'finished'), T0)).to.equal(null);
    expect(tracker.event(event('t', to[1]!, 'failed'), T0)).to.equal(null);
    expect(tracker.snapshot().orphanEvents).to.equal(2);
    expect(tracker.dispatched(dispatch('t', to))).to.deep.include({ state: 'failed' });
    expect(tracker.snapshot().orphanEvents).to.equal(0);
  });

  it('drops orphan events after their time to live and past the limit', () => {
    const small = new ResultsTracker({ ...SETTINGS, maxOrphanEvents: 2 });
    const to = targets(1);
    small.event(event('a', to[0]!, 'started'), T0);
    small.event(event('b', to[0]!, 'started'), T0 + 1);
    small.event(event('c', to[0]!, 'started'), T0 + 2);
    expect(small.snapshot()).to.include({ orphanEvents: 2, droppedOrphans: 1 });
    small.tick(T0 + 1 + SETTINGS.orphanTtlMs);
    expect(small.snapshot()).to.include({ orphanEvents: 1, droppedOrphans: 2 });
  });

  it('adds the targets of a second dispatch and restarts the ones it names', () => {
    const to = targets(3);
    tracker.dispatched(dispatch('t', to.slice(0, 2)));
    tracker.event(event('t', to[0]!, 'failed'), T0);
    tracker.dispatched(dispatch('t', [to[0]!, to[2]!], { commandId: 'retry' }));
    // The first attempt's event delivered again does not count for the second attempt.
    tracker.event(event('t', to[0]!, 'failed'), T0);
    tracker.event(event('t', to[0]!, 'finished', { id: 'retry:0' }), T0);
    tracker.event(event('t', to[1]!, 'finished'), T0);
    expect(tracker.event(event('t', to[2]!, 'finished'), T0)).to.deep.include({ state: 'succeeded', hosts: { total: 3, started: 3, finished: 3, failed: 0, timedout: 0, cancelled: 0 } });
  });

  it('decides a task without targets at once, and ignores a task marked done elsewhere', () => {
    expect(tracker.dispatched(dispatch('empty', []))).to.deep.include({ state: 'succeeded', hosts: { total: 0, started: 0, finished: 0, failed: 0, timedout: 0, cancelled: 0 } });
    tracker.markDone('run-1', 'known');
    expect(tracker.dispatched(dispatch('known', targets(1)))).to.equal(null);
    expect(tracker.phase('run-1', 'known')).to.equal('done');
  });
});
