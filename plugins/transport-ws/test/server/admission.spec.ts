import { expect } from 'chai';
import { Admission, TokenBucket } from '../../server/admission.ts';

describe('transport-ws server: TokenBucket and Admission', () => {
  it('a bucket gives its burst at once, then tokens at its rate', () => {
    let now = 0;
    const bucket = new TokenBucket({ ratePerSec: 10, burst: 3, now: () => now });
    expect([bucket.take(), bucket.take(), bucket.take(), bucket.take()]).to.deep.equal([true, true, true, false]);
    expect(bucket.waitMs()).to.be.closeTo(100, 1e-9);
    now += 99;
    expect(bucket.take()).to.equal(false);
    now += 1;
    expect(bucket.take()).to.equal(true);
    now += 10_000;
    expect(Array.from({ length: 5 }, () => bucket.take()).filter(Boolean)).to.have.length(3);
  });

  it('admission refuses over the rate with a Retry-After of whole seconds', () => {
    let now = 0;
    const gate = new Admission({ handshakesPerSec: 0.5, burst: 2, now: () => now });
    const first = gate.tryAdmit();
    const second = gate.tryAdmit();
    expect(first.admitted && second.admitted).to.equal(true);
    expect(gate.tryAdmit()).to.deep.equal({ admitted: false, reason: 'rate', retryAfterS: 2 });
    now += 2000;
    expect(gate.tryAdmit().admitted).to.equal(true);
  });

  it('admission caps unreleased handshakes; release is idempotent', () => {
    const gate = new Admission({ maxInFlight: 2 });
    const a = gate.tryAdmit();
    const b = gate.tryAdmit();
    expect(gate.tryAdmit()).to.deep.equal({ admitted: false, reason: 'in-flight', retryAfterS: 1 });
    if (!a.admitted || !b.admitted) throw new Error('expected two admissions');
    a.release();
    a.release();
    expect(gate.inFlight).to.equal(1);
    expect(gate.tryAdmit().admitted).to.equal(true);
    expect(gate.tryAdmit().admitted).to.equal(false);
  });
});
