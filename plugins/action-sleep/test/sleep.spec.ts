import { expect } from 'chai';
import { performance } from 'node:perf_hooks';
import { sleep, sleepDurationMs } from '../sleep.ts';

describe('action-sleep', () => {
  describe('sleep', () => {
    it('waits at least the duration and reports the actual duration', async () => {
      const before = performance.now();
      const r = await sleep(120);
      const waited = performance.now() - before;
      expect(r.outcome).to.equal('finished');
      expect(r.requestedMs).to.equal(120);
      expect(r.durationMs).to.be.at.least(120).and.at.most(waited);
    });

    it('a cancel ends it at once, reporting the time slept so far', async () => {
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 30);
      const r = await sleep(10_000, ac.signal);
      expect(r.outcome).to.equal('cancelled');
      expect(r.error?.code).to.equal('BOLT_ERR_ACTION_CANCELLED');
      expect(r.durationMs).to.be.at.least(25).and.below(2000);
    });

    it('an already aborted signal returns at once', async () => {
      const ac = new AbortController();
      ac.abort();
      const r = await sleep(10_000, ac.signal);
      expect(r.outcome).to.equal('cancelled');
      expect(r.durationMs).to.be.below(50);
    });

    it('refuses a negative or too long duration', () => {
      expect(() => sleep(-1)).to.throw(RangeError);
      expect(() => sleep(2 ** 31)).to.throw(RangeError);
    });
  });

  describe('sleepDurationMs', () => {
    it('reads the job file\'s duration forms', () => {
      expect(sleepDurationMs({ duration: 250 })).to.equal(250);
      expect(sleepDurationMs({ duration: '500ms' })).to.equal(500);
      expect(sleepDurationMs({ duration: '1.5s' })).to.equal(1500);
      expect(sleepDurationMs({ duration: '1m30s' })).to.equal(90_000);
      expect(sleepDurationMs({ duration: '1h1m1s1ms' })).to.equal(3_661_001);
    });

    it('refuses anything else with BOLT_ERR_ACTION_SPEC, naming the value', () => {
      for (const bad of [{ duration: '5' }, { duration: '1s1m' }, { duration: '-5s' }, { duration: 1.5 }, { duration: '' }, {}, null, { duration: '25d' }]) {
        expect(() => sleepDurationMs(bad), JSON.stringify(bad)).to.throw().with.property('code', 'BOLT_ERR_ACTION_SPEC');
      }
      expect(() => sleepDurationMs({ duration: '600h' })).to.throw(/longer than the 2147483647 ms/);
    });
  });
});
