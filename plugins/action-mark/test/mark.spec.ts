import { expect } from 'chai';
import { performance } from 'node:perf_hooks';
import { mark } from '../mark.ts';

/** A server clock running offsetMs ahead of this host's clock, with sub-millisecond resolution. */
function serverClock(offsetMs: number): () => number {
  return () => performance.timeOrigin + performance.now() + offsetMs;
}

describe('action-mark mark', () => {
  it('runs at startAt on the server clock and records the instant reached', async () => {
    const serverNow = serverClock(-1000);
    const startAt = serverNow() + 100;
    const r = await mark(startAt, serverNow);
    const after = serverNow();
    expect(r.outcome).to.equal('finished');
    expect(r.targetServerMs).to.equal(startAt);
    expect(r.startedAtServerMs).to.be.at.least(startAt).and.at.most(after);
    expect(r.lateMs).to.equal(r.startedAtServerMs! - startAt);
    expect(r.lateMs).to.be.below(30);
  });

  it('runs at once without a startAt, with no lateness to report', async () => {
    const serverNow = serverClock(1000);
    const before = serverNow();
    const r = await mark(null, serverNow);
    expect(r).to.include({ outcome: 'finished', targetServerMs: null, lateMs: null });
    expect(r.startedAtServerMs).to.be.at.least(before).and.at.most(serverNow());
  });

  it('a startAt already past runs at once and reports how late', async () => {
    const serverNow = serverClock(0);
    const r = await mark(serverNow() - 40, serverNow);
    expect(r.outcome).to.equal('finished');
    expect(r.lateMs).to.be.at.least(40).and.below(70);
  });

  it('a cancel during the wait resolves as cancelled, before startAt', async () => {
    const serverNow = serverClock(0);
    const startAt = serverNow() + 5000;
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 20);
    const r = await mark(startAt, serverNow, ac.signal);
    expect(r).to.include({ outcome: 'cancelled', startedAtServerMs: null, lateMs: null });
    expect(r.error?.code).to.equal('BOLT_ERR_ACTION_CANCELLED');
    expect(serverNow()).to.be.below(startAt);
  });
});
