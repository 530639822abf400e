import { expect } from 'chai';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { fanoutResult, loopbackAddresses, withSshBaseline, type FanoutResult, type TimedRun } from '../../bench/lib/ssh-baseline.ts';
import { median, p95, p99, percentile, spread, spreadBigInt, summarize } from '../../bench/lib/stats.ts';

function nowNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

/** pids of live processes whose command line contains `text` */
function processesNaming(text: string): number[] {
  const found: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(text)) found.push(Number(name));
    } catch {
      // The process ended while we looked.
    }
  }
  return found;
}

describe('bench/lib/stats', () => {
  it('computes median, nearest-rank percentiles and spread without touching the input', () => {
    const values = [5, 1, 4, 2, 3];
    expect(median(values)).to.equal(3);
    expect(median([4, 1, 3, 2])).to.equal(2.5);
    expect(values).to.deep.equal([5, 1, 4, 2, 3]);
    const hundred = Array.from({ length: 100 }, (_, i) => 100 - i);
    expect(p95(hundred)).to.equal(95);
    expect(p99(hundred)).to.equal(99);
    expect(percentile(hundred, 100)).to.equal(100);
    expect(p95([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])).to.equal(10);
    expect(spread([7, 3, 9])).to.equal(6);
    expect(spreadBigInt([1_700_000_000_000_000_123n, 1_700_000_000_000_000_000n])).to.equal(123n);
    expect(summarize([2, 1])).to.deep.equal({ count: 2, min: 1, median: 1.5, p95: 2, p99: 2, max: 2, spread: 1 });
  });

  it('refuses empty samples and impossible percentiles', () => {
    expect(() => median([])).to.throw(RangeError);
    expect(() => spreadBigInt([])).to.throw(RangeError);
    expect(() => percentile([1], 0)).to.throw(RangeError);
    expect(() => median([1, Number.NaN])).to.throw(RangeError);
  });
});

describe('bench/lib/ssh-baseline', function () {
  // Starts a real sshd and runs Ansible: the slowest spec, a few seconds on an idle machine.
  this.timeout(120_000);

  it('numbers hosts 127.0.0.2 upwards', () => {
    expect(loopbackAddresses(3)).to.deep.equal(['127.0.0.2', '127.0.0.3', '127.0.0.4']);
    expect(loopbackAddresses(300)[298]).to.equal('127.0.1.44');
  });

  it('treats a run in which a host did not answer as an error', () => {
    const run: TimedRun = { argv: ['tool'], code: 0, signal: null, stdout: '', stderr: '', wallMs: 5, spawnedAtNs: nowNs() };
    const answered = new Map([['127.0.0.2', nowNs()], ['127.0.0.3', nowNs()]]);
    expect(() => fanoutResult('tool', loopbackAddresses(3), run, answered)).to.throw(/2 of 3 hosts answered; missing: 127\.0\.0\.4/);
    expect(() => fanoutResult('tool', loopbackAddresses(2), { ...run, code: 4 }, answered)).to.throw(/exited with status 4/);
  });

  it('runs date +%s%N on 3 loopback hosts through Ansible and xargs ssh, then leaves nothing behind', async () => {
    let dir = '';
    const before = nowNs();
    const results = await withSshBaseline(3, async (h) => {
      dir = h.dir;
      expect(h.addresses).to.deep.equal(['127.0.0.2', '127.0.0.3', '127.0.0.4']);
      return [await h.runAnsible(), await h.runXargsSsh()];
    });
    const after = nowNs();

    expect(results.map((r) => r.tool)).to.deep.equal(['ansible', 'xargs-ssh']);
    for (const r of results as FanoutResult[]) {
      expect(r.n, r.tool).to.equal(3);
      expect(r.hosts, r.tool).to.deep.equal(['127.0.0.2', '127.0.0.3', '127.0.0.4']);
      expect(r.instantsNs, r.tool).to.have.length(3);
      for (const t of r.instantsNs) {
        // Every host really ran the command, during this test.
        expect(t > before && t < after, `${r.tool}: instant ${t} outside [${before}, ${after}]`).to.equal(true);
        expect(t >= r.spawnedAtNs, `${r.tool}: host ran before the tool was spawned`).to.equal(true);
      }
      expect(r.skewMs, r.tool).to.equal(Number(spreadBigInt(r.instantsNs)) / 1e6);
      expect(r.wallMs, r.tool).to.be.greaterThan(0).and.lessThan(60_000);
      expect(r.skewMs, r.tool).to.be.at.least(0).and.at.most(r.wallMs + 1);
      expect(r.lastStartMs, r.tool).to.be.at.most(r.wallMs + 2);
    }
    expect(existsSync(dir), 'temp dir removed').to.equal(false);
    expect(processesNaming(dir), 'sshd and ssh masters stopped').to.deep.equal([]);
  });
});
