import { expect } from 'chai';
import { Backoff, backoffWindow, BACKOFF_DEFAULTS } from '../../client/backoff.ts';

describe('transport-ws client: full-jitter backoff', () => {
  it('draws each delay from [0, min(cap, base * 2^attempt)] with the contract defaults', () => {
    expect(BACKOFF_DEFAULTS).to.deep.equal({ baseMs: 500, capMs: 10_000, resetAfterMs: 10_000 });
    // random() = 1 - ε gives (nearly) the top of each window: 500, 1000, ... capped at 30 s.
    const top = new Backoff({ random: () => 0.999999 });
    const windows = Array.from({ length: 10 }, () => Math.round(top.next()));
    expect(windows).to.deep.equal([500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000, 10_000, 10_000]);
    const bottom = new Backoff({ random: () => 0 });
    expect(Array.from({ length: 5 }, () => bottom.next())).to.deep.equal([0, 0, 0, 0, 0]);
    const half = new Backoff({ random: () => 0.5 });
    expect([half.next(), half.next(), half.next()]).to.deep.equal([250, 500, 1000]);
    // A source returning exactly 1 stays inside the window; huge attempt counts stay finite.
    expect(new Backoff({ random: () => 1 }).next()).to.equal(500);
    expect(backoffWindow(5000, 500, 30_000)).to.equal(30_000);
  });

  it('spreads the delays of many peers evenly over the window (full jitter, not equal jitter)', () => {
    const delays = Array.from({ length: 2000 }, () => new Backoff().next());
    const buckets = [0, 0, 0, 0, 0];
    for (const d of delays) buckets[Math.min(4, Math.floor(d / 100))]!++;
    // Each 100 ms fifth of [0, 500] gets about 400 of 2000; far from it would mean clumping.
    for (const count of buckets) expect(count).to.be.within(300, 500);
    expect(Math.min(...delays)).to.be.below(10);
  });

  it('resets the attempts only after a session that lasted at least 10 s', () => {
    const backoff = new Backoff({ random: () => 0.999999 });
    for (let i = 0; i < 4; i++) backoff.next();
    expect(backoff.attempt).to.equal(4);
    backoff.sessionEnded(9_999);
    expect(backoff.attempt, 'a short session keeps backing off').to.equal(4);
    expect(Math.round(backoff.next())).to.equal(8000);
    backoff.sessionEnded(10_000);
    expect(backoff.attempt).to.equal(0);
    expect(Math.round(backoff.next())).to.equal(500);
  });

  it('refuses a window that makes no sense', () => {
    expect(() => new Backoff({ baseMs: 0 })).to.throw(RangeError);
    expect(() => new Backoff({ baseMs: 1000, capMs: 500 })).to.throw(RangeError);
  });
});
