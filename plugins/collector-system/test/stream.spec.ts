/**
 * SampleStream on its own: batches per run and size, drop-oldest across runs, drop reports.
 * `send` is what client.send would do: take the batch, or refuse it.
 */
import { expect } from 'chai';
import type { Logger, MetricSample, MetricsBatchMessage } from '../../../plugin-sdk/src/index.ts';
import { SampleStream, type StreamSettings } from '../stream.ts';
import { pollUntil } from './fake-client.ts';

interface Harness {
  stream: SampleStream;
  sent: MetricsBatchMessage[];
  warnings: Array<Record<string, unknown>>;
  refuse: { on: boolean };
}

function harness(settings: Partial<StreamSettings> = {}): Harness {
  const sent: MetricsBatchMessage[] = [];
  const warnings: Array<Record<string, unknown>> = [];
  const refuse = { on: false };
  const ignore = (): void => undefined;
  const log = { debug: ignore, info: ignore, error: ignore, warn: (obj: unknown) => warnings.push(obj as Record<string, unknown>) } as unknown as Logger;
  const stream = new SampleStream({
    send: async (batch) => {
      if (refuse.on) throw Object.assign(new Error('the outbox is full (test)'), { code: 'BOLT_ERR_WIRE_OUTBOX_FULL' });
      sent.push(structuredClone(batch));
    },
    host: async () => 'web-1',
    serverNow: () => 1_000_000,
    log,
    settings: { bufferSamples: 1000, batchSamples: 100, flushMs: 10, ...settings },
  });
  return { stream, sent, warnings, refuse };
}

const samples = (from: number, n: number, metric = 'cpu.busy'): MetricSample[] => Array.from({ length: n }, (_, i) => ({ t: from + i, metric, value: i, tags: { task: 't' } }));

describe('SampleStream', () => {
  it('sends batches of one run each, at most batchSamples long, in the order added', async () => {
    const { stream, sent } = harness({ batchSamples: 100 });
    stream.add('run-a', samples(0, 250));
    stream.add('run-b', samples(1000, 30));
    stream.add(undefined, samples(2000, 5, 'load.1'));
    await pollUntil('everything sent', () => stream.stats.queued === 0 && sent.reduce((n, b) => n + b.samples.length, 0) === 285);
    expect(sent.map((b) => [b.runId, b.samples.length])).to.deep.equal([['run-a', 100], ['run-a', 100], ['run-a', 50], ['run-b', 30], [undefined, 5]]);
    expect(sent.flatMap((b) => (b.runId === 'run-a' ? b.samples.map((s) => s.t) : []))).to.deep.equal(samples(0, 250).map((s) => s.t));
    expect(sent.every((b) => b.v === 1 && b.type === 'metrics.batch' && b.host === 'web-1')).to.equal(true);
    expect(new Set(sent.map((b) => b.id)).size).to.equal(sent.length);
    expect(sent.find((b) => b.runId === undefined)).to.not.have.property('runId');
  });

  it('leaves out values that are not finite numbers and cuts tag values to the wire limit', async () => {
    const { stream, sent } = harness();
    stream.add('run-a', [{ t: 1, metric: 'x', value: NaN }, { t: 2, metric: 'x', value: Infinity }, { t: 3, metric: 'x', value: 3, tags: { mount: 'm'.repeat(300) } }]);
    await pollUntil('the batch', () => sent.length === 1);
    expect(sent[0]!.samples).to.have.length(1);
    expect(sent[0]!.samples[0]!.tags!.mount).to.have.length(256);
    expect(stream.stats.added).to.equal(1);
  });

  it('drops the oldest samples across runs when full, and reports each run\'s drops in its next batch', async () => {
    const { stream, sent, warnings, refuse } = harness({ bufferSamples: 50, batchSamples: 100 });
    refuse.on = true;
    stream.add('run-a', samples(0, 40));
    stream.add('run-b', samples(100, 40));
    // 80 held in a buffer of 50: the 30 oldest go, all of them run-a's.
    expect(stream.stats).to.include({ queued: 50, dropped: 30, added: 80 });
    await pollUntil('a refused send', () => stream.stats.refused >= 1);
    refuse.on = false;
    await pollUntil('everything sent', () => stream.stats.queued === 0 && sent.length >= 2, 5000);
    const a = sent.filter((b) => b.runId === 'run-a').flatMap((b) => b.samples);
    const b = sent.filter((x) => x.runId === 'run-b').flatMap((x) => x.samples);
    expect(a.filter((s) => s.metric === 'cpu.busy').map((s) => s.t)).to.deep.equal(samples(30, 10).map((s) => s.t));
    expect(a.filter((s) => s.metric === 'bolt.dropped_samples').map((s) => s.value)).to.deep.equal([30]);
    expect(b.map((s) => s.metric)).to.not.include('bolt.dropped_samples');
    expect(b).to.have.length(40);
    expect(warnings.some((w) => w.code === 'BOLT_ERR_METRICS_SAMPLES_DROPPED' && w.dropped === 30 && w.sendCode === 'BOLT_ERR_WIRE_OUTBOX_FULL')).to.equal(true);
    await stream.close(performance.now() + 1000);
  });

  it('reports drops of a run whose samples were all dropped, in a batch of its own', async () => {
    const { stream, sent, refuse } = harness({ bufferSamples: 10, batchSamples: 100 });
    refuse.on = true;
    stream.add('run-a', samples(0, 5));
    stream.add('run-b', samples(100, 10));
    await pollUntil('a refused send', () => stream.stats.refused >= 1);
    refuse.on = false;
    await pollUntil('both runs sent', () => stream.stats.queued === 0 && sent.some((b) => b.runId === 'run-a'), 5000);
    expect(sent.find((b) => b.runId === 'run-a')!.samples).to.deep.equal([{ t: 1_000_000, metric: 'bolt.dropped_samples', value: 5 }]);
    expect(sent.filter((b) => b.runId === 'run-b').flatMap((b) => b.samples)).to.have.length(10);
  });
});
