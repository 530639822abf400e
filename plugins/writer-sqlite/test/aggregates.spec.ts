/** Aggregates across hosts: the value digest's accuracy, and the bucket rows the store keeps as samples arrive. */
import { expect } from 'chai';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { BoltError } from '../../../plugin-sdk/src/errors.ts';
import { EXACT_LIMIT, RELATIVE_ACCURACY, ValueDigest } from '../digest.ts';
import { SinkStore, type BucketSeries, type SampleBatch } from '../store.ts';

/** Nearest-rank quantile of a list, computed the plain way. */
function nearestRank(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length, Math.max(1, Math.ceil(q * sorted.length))) - 1]!;
}

function codePoints(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** A tiny deterministic generator, so a failing case can be replayed. */
function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1_664_525) + 1_013_904_223) >>> 0;
    return s / 2 ** 32;
  };
}

const finite = fc.double({ min: -1e12, max: 1e12, noNaN: true, noDefaultInfinity: true });

describe('writer-sqlite aggregates', () => {
  describe('ValueDigest', () => {
    it('gives exact nearest-rank quantiles, count, sum, min and max up to EXACT_LIMIT values', () => {
      fc.assert(
        fc.property(fc.array(finite, { minLength: 1, maxLength: EXACT_LIMIT }), fc.constantFrom(0.5, 0.95, 0.01, 1), (values, q) => {
          const d = new ValueDigest();
          for (const v of values) d.add(v);
          const back = ValueDigest.decode(d.encode());
          for (const digest of [d, back]) {
            expect(digest.exact).to.equal(true);
            expect(digest.count).to.equal(values.length);
            expect(digest.min).to.equal(Math.min(...values));
            expect(digest.max).to.equal(Math.max(...values));
            expect(digest.quantile(q)).to.equal(nearestRank(values, q));
          }
        }),
        { numRuns: 200 },
      );
    });

    it('keeps quantiles within 1% of the exact value once binned, whatever the order and merging', () => {
      const magnitude = fc.oneof(fc.double({ min: 1e-6, max: 1e12, noNaN: true }), fc.double({ min: 0.5, max: 100, noNaN: true }), fc.constant(0));
      const value = fc.tuple(magnitude, fc.boolean()).map(([m, negative]) => (negative ? -m : m));
      fc.assert(
        fc.property(fc.array(value, { minLength: EXACT_LIMIT + 1, maxLength: 3000 }), fc.integer({ min: 1, max: 7 }), (values, parts) => {
          // One digest fed every value, and `parts` digests merged after an encode/decode round trip.
          const whole = new ValueDigest();
          for (const v of values) whole.add(v);
          const merged = new ValueDigest();
          for (let p = 0; p < parts; p++) {
            const part = new ValueDigest();
            for (let i = p; i < values.length; i += parts) part.add(values[i]!);
            merged.merge(ValueDigest.decode(part.encode()));
          }
          for (const digest of [whole, merged]) {
            expect(digest.exact).to.equal(false);
            expect(digest.count).to.equal(values.length);
            for (const q of [0.5, 0.95]) {
              const exact = nearestRank(values, q);
              const got = digest.quantile(q);
              expect(Math.abs(got - exact), `q=${q}: ${got} against ${exact}`).to.be.at.most(RELATIVE_ACCURACY * Math.abs(exact) + 1e-9);
            }
          }
          expect(merged.quantile(0.5)).to.equal(whole.quantile(0.5));
          expect(merged.quantile(0.95)).to.equal(whole.quantile(0.95));
        }),
        { numRuns: 60 },
      );
    });

    it('refuses bytes that are not a digest', () => {
      expect(() => ValueDigest.decode(Buffer.from('not a digest'))).to.throw(RangeError);
      const bytes = new ValueDigest().encode();
      bytes.writeUInt8(9, 0);
      expect(() => ValueDigest.decode(bytes)).to.throw(RangeError, /unknown format 9/);
    });
  });

  describe('SinkStore buckets', () => {
    let dir: string;
    let file: string;
    let store: SinkStore | undefined;
    const open = (bucketMs?: number) => {
      store?.close();
      store = new SinkStore(file, bucketMs === undefined ? {} : { bucketMs });
      return store;
    };

    beforeEach(() => {
      dir = mkdtempSync(path.join(tmpdir(), 'bolt-aggregates-'));
      file = path.join(dir, 'sink.sqlite');
    });

    afterEach(() => {
      store?.close();
      store = undefined;
      rmSync(dir, { recursive: true, force: true });
    });

    /** What the buckets must hold, recomputed from the raw samples the store returns. */
    function expected(s: SinkStore, runId: string, metric: string, bucketMs: number): BucketSeries[] {
      const groups = new Map<string, { task: string | null; tags: Record<string, string>; byBucket: Map<number, number[]> }>();
      for (const series of s.querySamples({ runId, metric })) {
        const key = `${series.task}|${JSON.stringify(series.tags)}`;
        let g = groups.get(key);
        if (g === undefined) groups.set(key, (g = { task: series.task, tags: series.tags, byBucket: new Map() }));
        series.t.forEach((t, i) => {
          const start = Math.floor(t / bucketMs) * bucketMs;
          const list = g.byBucket.get(start) ?? [];
          list.push(series.values[i]!);
          g.byBucket.set(start, list);
        });
      }
      return [...groups.values()]
        .sort((a, b) => codePoints(a.task ?? '', b.task ?? '') || codePoints(JSON.stringify(a.tags), JSON.stringify(b.tags)))
        .map((g) => {
          const starts = [...g.byBucket.keys()].sort((a, b) => a - b);
          const lists = starts.map((t) => g.byBucket.get(t)!);
          const sums = lists.map((l) => l.reduce((a, b) => a + b, 0));
          return {
            task: g.task, tags: g.tags, bucketMs, t: starts,
            count: lists.map((l) => l.length), sum: sums, min: lists.map((l) => Math.min(...l)),
            mean: lists.map((l, i) => sums[i]! / l.length), p50: lists.map((l) => nearestRank(l, 0.5)),
            p95: lists.map((l) => nearestRank(l, 0.95)), max: lists.map((l) => Math.max(...l)),
          };
        });
    }

    /** Rounds sums and means, which depend on the order of addition. */
    function rounded(series: BucketSeries[]): BucketSeries[] {
      const r = (xs: number[]) => xs.map((x) => Math.round(x * 1e6) / 1e6);
      return series.map((s) => ({ ...s, sum: r(s.sum), mean: r(s.mean) }));
    }

    it('matches the raw samples after batches from many hosts arrive out of order, some of them twice', () => {
      const s = open();
      const next = random(7);
      const sent: SampleBatch[] = [];
      for (let round = 0; round < 12; round++) {
        const group: SampleBatch[] = [];
        for (let h = 0; h < 30; h++) {
          // Each host's clock and sending are a little off; some send late, for earlier seconds.
          const second = Math.max(0, round - Math.floor(next() * 3));
          const samples = [];
          for (let k = 0; k < 3; k++) {
            const t = 100_000 + second * 1000 + Math.floor(next() * 1000);
            samples.push({ t, metric: 'cpu.busy', value: Math.round(next() * 10_000) / 100, tags: { task: round < 6 ? 'warmup' : 'load' } });
            samples.push({ t, metric: 'cpu.busy', value: next() * 100, tags: { task: 'load', core: String(k) } });
          }
          group.push({ batchId: `r${round}-h${h}`, host: `h${h}`, runId: 'run-1', samples });
        }
        // Resends: a few batches of earlier rounds come again in this group.
        for (let i = 0; i < 5 && sent.length > 0; i++) group.push(sent[Math.floor(next() * sent.length)]!);
        const results = s.ingestBatches(group);
        expect(results.filter((r) => r.duplicate)).to.have.length(Math.min(5, sent.length));
        sent.push(...group.slice(0, 30));
      }
      const buckets = s.queryBuckets({ runId: 'run-1', metric: 'cpu.busy' });
      expect(rounded(buckets)).to.deep.equal(rounded(expected(s, 'run-1', 'cpu.busy', 1000)));
      expect(buckets.map((b) => [b.task, b.tags])).to.deep.equal([['load', { core: '0' }], ['load', { core: '1' }], ['load', { core: '2' }], ['load', {}], ['warmup', {}]]);
      expect(buckets[3]!.count.reduce((a, b) => a + b, 0) + buckets[4]!.count.reduce((a, b) => a + b, 0)).to.equal(12 * 30 * 3);
    });

    it('answers from the bucket rows alone, without reading samples', () => {
      const s = open();
      s.ingestBatches([
        { batchId: 'a', host: 'h1', runId: 'run-1', samples: [{ t: 1_100, metric: 'm', value: 1 }, { t: 2_100, metric: 'm', value: 5 }] },
        { batchId: 'b', host: 'h2', runId: 'run-1', samples: [{ t: 1_900, metric: 'm', value: 3 }] },
      ]);
      const before = s.queryBuckets({ runId: 'run-1', metric: 'm' });
      const db = new Database(file);
      db.prepare('DELETE FROM sample_blocks').run();
      db.close();
      expect(s.queryBuckets({ runId: 'run-1', metric: 'm' })).to.deep.equal(before);
      expect(before).to.deep.equal([{ task: null, tags: {}, bucketMs: 1000, t: [1_000, 2_000], count: [2, 1], sum: [4, 5], min: [1, 5], mean: [2, 5], p50: [1, 5], p95: [3, 5], max: [3, 5] }]);
      expect(s.queryBuckets({ runId: 'run-1', metric: 'm', from: 2_500 }).map((b) => b.t)).to.deep.equal([[2_000]]);
      expect(s.queryBuckets({ runId: 'run-1', metric: 'm', to: 1_999 }).map((b) => b.t)).to.deep.equal([[1_000]]);
      expect(s.queryBuckets({ runId: 'run-1', metric: 'm', taskId: 'nothing' })).to.deep.equal([]);
      expect(s.queryBuckets({ runId: 'run-1', metric: 'm', taskId: null })).to.have.length(1);
      expect(s.queryBuckets({ runId: 'no-run', metric: 'm' })).to.deep.equal([]);
    });

    it('adds nothing to the buckets when a write fails, and counts the batch once it is stored', () => {
      const s = open();
      s.ingestBatches([{ batchId: 'a', host: 'h1', runId: 'run-1', samples: [{ t: 1_000, metric: 'm', value: 1 }] }]);
      let thrown: unknown;
      try {
        s.ingestBatches([
          { batchId: 'b', host: 'h2', runId: 'run-1', samples: [{ t: 1_100, metric: 'm', value: 2 }] },
          { batchId: 'c', host: 'h3', runId: 'run-1', samples: [{ t: 1_200, metric: 'm', value: Number.NaN }] },
        ]);
      } catch (err) {
        thrown = err;
      }
      expect(thrown).to.be.instanceOf(BoltError).with.property('code', 'BOLT_ERR_STORE_BAD_RECORD');
      expect(s.queryBuckets({ runId: 'run-1', metric: 'm' })[0]!.count).to.deep.equal([1]);
      s.ingestBatches([{ batchId: 'b', host: 'h2', runId: 'run-1', samples: [{ t: 1_100, metric: 'm', value: 2 }] }]);
      s.ingestBatches([{ batchId: 'b', host: 'h2', runId: 'run-1', samples: [{ t: 1_100, metric: 'm', value: 2 }] }]);
      expect(s.queryBuckets({ runId: 'run-1', metric: 'm' })[0]).to.deep.include({ count: [2], sum: [3], max: [2] });

      // SQLite refuses the second bucket row of a write, after the first was written and the
      // digests took the values: the rollback must take the values out of both.
      const db = new Database(file);
      db.exec(`CREATE TRIGGER refuse_third BEFORE UPDATE ON sample_buckets WHEN NEW.count > 2 BEGIN SELECT RAISE(ABORT, 'disk trouble'); END`);
      thrown = undefined;
      try {
        s.ingestBatches([{ batchId: 'd', host: 'h4', runId: 'run-1', samples: [{ t: 2_100, metric: 'm', value: 50 }, { t: 1_300, metric: 'm', value: 100 }] }]);
      } catch (err) {
        thrown = err;
      }
      expect(thrown).to.be.instanceOf(BoltError).with.property('code', 'BOLT_ERR_STORE_WRITE_FAILED');
      db.exec('DROP TRIGGER refuse_third');
      db.close();
      s.ingestBatches([{ batchId: 'e', host: 'h5', runId: 'run-1', samples: [{ t: 1_400, metric: 'm', value: 4 }, { t: 2_200, metric: 'm', value: 6 }] }]);
      expect(s.queryBuckets({ runId: 'run-1', metric: 'm' })[0]).to.deep.include({ t: [1_000, 2_000], count: [3, 1], sum: [7, 6], max: [4, 6] });
    });

    it('merges samples that arrive after a reopen into the stored buckets, binned ones included', () => {
      const values = Array.from({ length: 2_000 }, (_, i) => 1 + ((i * 7919) % 1000) / 10);
      const ingest = (s: SinkStore, from: number, to: number) => {
        for (let i = from; i < to; i += 100) {
          s.ingestBatches([{ batchId: `b${i}`, host: `h${i}`, runId: 'run-1', samples: values.slice(i, Math.min(to, i + 100)).map((value) => ({ t: 5_000, metric: 'm', value })) }]);
        }
      };
      ingest(open(), 0, 1_200);
      // A sink restart; the rest of the fleet resends what it buffered, plus two batches again.
      const s = open();
      ingest(s, 1_000, 2_000);
      const [bucket] = s.queryBuckets({ runId: 'run-1', metric: 'm' });
      expect(bucket!.count).to.deep.equal([2_000]);
      expect(bucket!.min).to.deep.equal([Math.min(...values)]);
      expect(bucket!.max).to.deep.equal([Math.max(...values)]);
      for (const [q, got] of [[0.5, bucket!.p50[0]!], [0.95, bucket!.p95[0]!]] as const) {
        const exact = nearestRank(values, q);
        expect(Math.abs(got - exact)).to.be.at.most(RELATIVE_ACCURACY * exact);
      }
    });

    it('keeps the bucket width a run started with when the setting changes', () => {
      open(1000).ingestSamples('a', 'h1', [{ t: 1_500, metric: 'm', value: 1 }], 'run-1');
      const s = open(5000);
      s.ingestSamples('b', 'h1', [{ t: 2_500, metric: 'm', value: 2 }], 'run-1');
      s.ingestSamples('c', 'h1', [{ t: 2_500, metric: 'm', value: 2 }, { t: 4_000, metric: 'm', value: 3 }], 'run-2');
      expect(s.queryBuckets({ runId: 'run-1', metric: 'm' })[0]).to.deep.include({ bucketMs: 1000, t: [1_000, 2_000] });
      expect(s.queryBuckets({ runId: 'run-2', metric: 'm' })[0]).to.deep.include({ bucketMs: 5000, t: [0], count: [2] });
    });

    it('summarizes a run per task: across hosts from the buckets, per host from the samples', () => {
      const s = open();
      s.ingestBatches([
        { batchId: 'a', host: 'h1', runId: 'run-1', samples: [1, 2, 3, 4].map((v, i) => ({ t: 1_000 * i, metric: 'cpu.busy', value: v, tags: { task: 'load' } })) },
        { batchId: 'b', host: 'h2', runId: 'run-1', samples: [10, 20].map((v, i) => ({ t: 1_000 * i, metric: 'cpu.busy', value: v, tags: { task: 'load' } })) },
        { batchId: 'c', host: 'h2', runId: 'run-1', samples: [{ t: 9_000, metric: 'cpu.busy', value: 7 }] },
        { batchId: 'd', host: 'h1', runId: 'run-2', samples: [{ t: 9_000, metric: 'cpu.busy', value: 99, tags: { task: 'load' } }] },
      ]);
      const summary = s.summarizeRun('run-1');
      expect(summary.bucketMs).to.equal(1000);
      expect(summary.rows.map((r) => [r.task, r.host, r.count, r.min, r.mean, r.p50, r.p95, r.max, r.sum, r.from, r.to])).to.deep.equal([
        [null, null, 1, 7, 7, 7, 7, 7, 7, 9_000, 9_000],
        [null, 'h2', 1, 7, 7, 7, 7, 7, 7, 9_000, 9_000],
        ['load', null, 6, 1, 40 / 6, 3, 20, 20, 40, 0, 3_000],
        ['load', 'h1', 4, 1, 2.5, 2, 4, 4, 10, 0, 3_000],
        ['load', 'h2', 2, 10, 15, 10, 20, 20, 30, 0, 1_000],
      ]);
      expect(s.summarizeRun('no-run')).to.deep.equal({ runId: 'no-run', bucketMs: null, rows: [] });
      expect(s.listRunHosts('run-1')).to.deep.equal(['h1', 'h2']);
      expect(s.listRunHosts('run-2')).to.deep.equal(['h1']);
      expect(s.summarizeHost('run-1', 'nobody')).to.deep.equal([]);
    });

    it('refuses a raw query that matches more samples than its limit', () => {
      const s = open();
      s.ingestSamples('a', 'h1', Array.from({ length: 10 }, (_, i) => ({ t: i, metric: 'm', value: i })), 'run-1');
      expect(s.querySamples({ runId: 'run-1', metric: 'm', limit: 10 })[0]!.values).to.have.length(10);
      let thrown: unknown;
      try {
        s.querySamples({ runId: 'run-1', metric: 'm', limit: 9 });
      } catch (err) {
        thrown = err;
      }
      expect(thrown).to.be.instanceOf(BoltError).with.property('code', 'BOLT_ERR_METRICS_BAD_QUERY');
      expect(s.querySamples({ runId: 'run-1', metric: 'm', from: 5, limit: 9 })[0]!.values).to.deep.equal([5, 6, 7, 8, 9]);
    });
  });
});
