/**
 * The collectors' road to the sink: samples wait in a bounded in-memory buffer, one queue per run,
 * and leave as `metrics.batch` messages through the client transport's `client.send` service
 * (which puts them in its on-disk outbox). When the buffer is full, because `client.send` keeps
 * refusing (outbox full) or is not there (transport restarting), the oldest samples are dropped,
 * counted, logged at warn and reported to the sink as a `bolt.dropped_samples` sample.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from '../../plugin-sdk/src/index.ts';
import { WIRE_LIMITS, WIRE_VERSION, type MetricSample, type MetricsBatchMessage } from '../../plugin-sdk/src/schemas/wire.ts';

/** The metric that reports samples a collector dropped: the count since the previous report. */
export const DROPPED_SAMPLES_METRIC = 'bolt.dropped_samples';

/** A batch's samples are cut so its JSON stays well under WIRE_LIMITS.maxFrameBytes. */
const MAX_BATCH_BYTES = 768 * 1024;
/** A tag value longer than the wire allows is cut to this length. */
const MAX_TAG_VALUE = 256;
/** Waits after a refused send: the first, then doubled up to the last. */
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 5000;
/** At most one warn log about drops in this period; the counts add up in between. */
const DROP_WARN_EVERY_MS = 10_000;
/** Longest wait for client.send to answer. */
const SEND_TIMEOUT_MS = 10_000;

export interface StreamSettings {
  /** Samples the buffer holds at most, all runs together; beyond it the oldest are dropped. */
  bufferSamples: number;
  /** Most samples in one batch (at most WIRE_LIMITS.maxSamplesPerBatch). */
  batchSamples: number;
  /** Longest a sample waits for its batch while client.send accepts, in ms. */
  flushMs: number;
}

export interface StreamStats {
  /** Samples taken into the buffer since start (values that are not finite numbers not counted). */
  added: number;
  /** Samples waiting in the buffer. */
  queued: number;
  /** Batches and samples client.send accepted (bolt.dropped_samples reports included). */
  sentBatches: number;
  sentSamples: number;
  /** Samples dropped since start (oldest first, when the buffer was full). */
  dropped: number;
  /** client.send calls that failed (refused, timed out, no provider). */
  refused: number;
}

export interface SampleStreamOptions {
  /** Hands one batch to the transport within `timeoutMs`; resolves when it took it, rejects when it refused. */
  send(batch: MetricsBatchMessage, timeoutMs: number): Promise<unknown>;
  /** This host's name as the sink knows it (the `host` of every batch). */
  host(): Promise<string>;
  /** Now on the server's clock (the `t` of bolt.dropped_samples). */
  serverNow(): number;
  log: Logger;
  settings: StreamSettings;
}

interface Entry {
  /** Global arrival order, to find the oldest sample across runs. */
  seq: number;
  sample: MetricSample;
}

/** Queue key of samples without a run (the background set). */
const NO_RUN = '';

/** A rough upper bound of a sample's JSON length, cheap enough to take for every sample. */
function estimateBytes(sample: MetricSample): number {
  let bytes = 64 + sample.metric.length;
  if (sample.tags) for (const key in sample.tags) bytes += key.length + sample.tags[key]!.length + 8;
  return bytes;
}

function cleanTags(tags: Record<string, string>): Record<string, string> {
  let out: Record<string, string> | undefined;
  for (const key in tags) {
    const value = tags[key]!;
    if (value.length > MAX_TAG_VALUE) {
      out ??= { ...tags };
      out[key] = value.slice(0, MAX_TAG_VALUE);
    }
  }
  return out ?? tags;
}

/**
 * Guarantees:
 * - At most `bufferSamples` samples are held; when more arrive, the oldest (across all runs) are
 *   dropped, never the newest. Every drop is counted in `stats.dropped`, logged at warn (at most
 *   every 10 s, with the count since the last log) and reported in the run's next batch as one
 *   `bolt.dropped_samples` sample whose value is the count since the previous report that was sent.
 * - A batch holds samples of one run only (`runId` on the batch; none for the background set), in
 *   the order they were added, at most `batchSamples` and about 768 KiB of JSON.
 * - One `client.send` at a time. A refused batch goes back to the head of its queue and is tried
 *   again after a back-off (0.5 s doubling to 5 s); samples keep being added meanwhile.
 * - Samples whose value is not a finite number are left out (the sink would refuse the batch).
 * - No timer runs while the buffer is empty.
 */
export class SampleStream {
  readonly #options: SampleStreamOptions;
  readonly #settings: StreamSettings;
  readonly #queues = new Map<string, Entry[]>();
  /** Drops not yet reported to the sink, per run key. */
  readonly #unreported = new Map<string, number>();
  #seq = 0;
  #queued = 0;
  #timer: NodeJS.Timeout | null = null;
  #sending: Promise<void> | null = null;
  #retryMs = RETRY_FIRST_MS;
  #retryAt = 0;
  #lastRefusal: { code?: string; message: string } | null = null;
  #unlogged = 0;
  #lastWarnAt = -Infinity;
  #closed = false;
  readonly #stats = { added: 0, sentBatches: 0, sentSamples: 0, dropped: 0, refused: 0 };

  constructor(options: SampleStreamOptions) {
    const { settings } = options;
    if (!(settings.batchSamples >= 2 && settings.batchSamples <= WIRE_LIMITS.maxSamplesPerBatch)) {
      throw new RangeError(`batchSamples must be between 2 and ${WIRE_LIMITS.maxSamplesPerBatch} (got ${settings.batchSamples})`);
    }
    if (!(settings.bufferSamples >= 1)) throw new RangeError(`bufferSamples must be at least 1 (got ${settings.bufferSamples})`);
    this.#options = options;
    this.#settings = settings;
  }

  get stats(): StreamStats {
    return { ...this.#stats, queued: this.#queued };
  }

  /** Queues samples of one run (or of none: the background set) for sending. */
  add(runId: string | undefined, samples: readonly MetricSample[]): void {
    if (this.#closed || samples.length === 0) return;
    const key = runId ?? NO_RUN;
    let queue = this.#queues.get(key);
    if (!queue) this.#queues.set(key, (queue = []));
    for (const sample of samples) {
      if (!Number.isFinite(sample.value) || !Number.isFinite(sample.t)) continue;
      queue.push({ seq: this.#seq++, sample: sample.tags ? { ...sample, tags: cleanTags(sample.tags) } : sample });
      this.#queued++;
      this.#stats.added++;
    }
    this.#dropOverflow();
    if (this.#sending) return;
    const backingOff = performance.now() < this.#retryAt;
    if (!backingOff && queue.length >= this.#settings.batchSamples) this.#pumpNow();
    else this.#arm(backingOff ? this.#retryAt - performance.now() : this.#settings.flushMs);
  }

  /**
   * Stops taking samples and tries once to hand over what is queued, giving up at `deadlineMs`
   * (monotonic, performance.now()). Logs what stayed unsent and any drops not logged yet.
   */
  async close(deadlineMs: number): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#sending) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.#sending, new Promise((resolve) => (timer = setTimeout(resolve, Math.max(0, deadlineMs - performance.now()))))]);
      clearTimeout(timer);
    }
    if (this.#sending === null && performance.now() < deadlineMs && this.#hasWork()) await this.#pump(deadlineMs);
    this.#warnDrops(true);
    if (this.#queued > 0) this.#options.log.warn({ unsent: this.#queued }, `${this.#queued} metric samples were not handed to the transport before the collector stopped`);
  }

  #hasWork(): boolean {
    return this.#queued > 0 || this.#unreported.size > 0;
  }

  /** Sets the flush timer to fire in `delayMs` unless it is already due sooner. */
  #arm(delayMs: number): void {
    if (this.#timer || this.#closed || !this.#hasWork()) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#pumpNow();
    }, Math.max(0, delayMs));
  }

  #pumpNow(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#sending || this.#closed) return;
    this.#sending = this.#pump(Infinity).finally(() => {
      this.#sending = null;
      const backingOff = performance.now() < this.#retryAt;
      this.#arm(backingOff ? this.#retryAt - performance.now() : this.#settings.flushMs);
    });
  }

  /** Sends batches, oldest run first, until the buffer is empty, a send is refused or the deadline passes. */
  async #pump(deadlineMs: number): Promise<void> {
    const host = await this.#options.host();
    while (this.#hasWork() && performance.now() < deadlineMs) {
      const key = this.#oldestKey();
      const queue = this.#queues.get(key) ?? [];
      const reported = this.#unreported.get(key) ?? 0;
      const room = this.#settings.batchSamples - (reported > 0 ? 1 : 0);
      let count = 0;
      let bytes = 0;
      while (count < queue.length && count < room) {
        bytes += estimateBytes(queue[count]!.sample);
        if (bytes > MAX_BATCH_BYTES && count > 0) break;
        count++;
      }
      const taken = queue.splice(0, count);
      this.#queued -= taken.length;
      const samples = taken.map((e) => e.sample);
      if (reported > 0) samples.push({ t: this.#options.serverNow(), metric: DROPPED_SAMPLES_METRIC, value: reported });
      const batch: MetricsBatchMessage = { v: WIRE_VERSION, type: 'metrics.batch', id: randomUUID(), host, ...(key !== NO_RUN && { runId: key }), samples };
      try {
        await this.#options.send(batch, Math.max(1, Math.min(SEND_TIMEOUT_MS, deadlineMs - performance.now())));
      } catch (err) {
        this.#stats.refused++;
        this.#lastRefusal = { code: (err as { code?: string }).code, message: (err as Error).message };
        // Back to the head of its queue (samples added meanwhile went behind them), then trim.
        const current = this.#queues.get(key);
        if (current) current.unshift(...taken);
        else this.#queues.set(key, taken);
        this.#queued += taken.length;
        this.#dropOverflow();
        this.#retryAt = performance.now() + this.#retryMs;
        this.#retryMs = Math.min(RETRY_MAX_MS, this.#retryMs * 2);
        this.#warnDrops(false);
        return;
      }
      this.#retryMs = RETRY_FIRST_MS;
      this.#retryAt = 0;
      this.#stats.sentBatches++;
      this.#stats.sentSamples += samples.length;
      if (reported > 0) {
        const left = (this.#unreported.get(key) ?? 0) - reported;
        if (left > 0) this.#unreported.set(key, left);
        else this.#unreported.delete(key);
      }
      if (this.#queues.get(key)?.length === 0) this.#queues.delete(key);
      this.#warnDrops(false);
    }
  }

  /** The run key whose queue holds the oldest sample; keys with only drops to report come last. */
  #oldestKey(): string {
    let best: string | undefined;
    let bestSeq = Infinity;
    for (const [key, queue] of this.#queues) {
      const head = queue[0];
      if (head && head.seq < bestSeq) {
        best = key;
        bestSeq = head.seq;
      }
    }
    return best ?? this.#unreported.keys().next().value ?? NO_RUN;
  }

  #dropOverflow(): void {
    while (this.#queued > this.#settings.bufferSamples) {
      const key = this.#oldestKey();
      const queue = this.#queues.get(key)!;
      // Drop from this queue everything older than the next-oldest queue's head, within the excess.
      let nextSeq = Infinity;
      for (const [other, q] of this.#queues) if (other !== key && q[0] && q[0].seq < nextSeq) nextSeq = q[0].seq;
      let n = 0;
      const excess = this.#queued - this.#settings.bufferSamples;
      while (n < excess && n < queue.length && queue[n]!.seq < nextSeq) n++;
      queue.splice(0, n);
      if (queue.length === 0) this.#queues.delete(key);
      this.#queued -= n;
      this.#stats.dropped += n;
      this.#unlogged += n;
      this.#unreported.set(key, (this.#unreported.get(key) ?? 0) + n);
    }
  }

  #warnDrops(force: boolean): void {
    if (this.#unlogged === 0) return;
    const now = performance.now();
    if (!force && now - this.#lastWarnAt < DROP_WARN_EVERY_MS) return;
    this.#lastWarnAt = now;
    const refusal = this.#lastRefusal;
    this.#options.log.warn(
      { code: 'BOLT_ERR_METRICS_SAMPLES_DROPPED', dropped: this.#unlogged, droppedTotal: this.#stats.dropped, bufferSamples: this.#settings.bufferSamples, ...(refusal && { sendCode: refusal.code, sendError: refusal.message }) },
      `dropped the ${this.#unlogged} oldest metric samples: the buffer of ${this.#settings.bufferSamples} samples was full` +
        (refusal ? ` while client.send refused batches (${refusal.code ?? refusal.message})` : ''),
    );
    this.#unlogged = 0;
  }
}
