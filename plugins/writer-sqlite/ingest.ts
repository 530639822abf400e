/**
 * Group commit for the sink's stream of task events and metrics batches: messages are collected
 * for `flushIntervalMs` (or until `maxBatchMessages` messages or MAX_SAMPLES_PER_WRITE samples are
 * waiting) and stored with one transaction for the events and one for the batches, of at most
 * `maxBatchMessages` messages and MAX_SAMPLES_PER_WRITE samples; a longer queue is stored in
 * several, with the event loop running between them. A batch may wait as the JSON text it arrived
 * in (`addBatchText`): it is parsed only when its transaction is assembled. Taking a message only
 * queues it: no write runs inside a bus handler, so the worker keeps reading its messages (and
 * answering the supervisor's heartbeats) while a backlog is stored. Idempotency stays with the
 * store (message ids).
 *
 * Guarantees:
 * - Messages are stored in arrival order, each once (a resent id is a duplicate in the store).
 * - A message the store refuses as malformed (BOLT_ERR_STORE_BAD_RECORD) is logged and dropped
 *   alone; the others of its group are stored.
 * - When SQLite refuses a write (disk full, I/O error, lock held too long), every message stays
 *   queued and the write is retried after `retryMs`.
 * - Memory stays bounded: past `maxPendingMessages` messages or `maxPendingSamples` samples queued
 *   (writes failing, or more arriving than the disk and CPU can store), the oldest queued messages
 *   are dropped, counted (`stats.dropped`, `stats.droppedSamples`) and logged at error level (at
 *   most every 10 s).
 * - Before that, it asks for less: `onCongestion(true)` once the queued samples reach
 *   `congestedAt`, `onCongestion(false)` once they are down to `relievedAt` (see congestionBounds),
 *   so that the transport can stop reading from clients meanwhile and let them keep their samples.
 */
import { BoltError } from '../../plugin-sdk/src/errors.ts';
import { metricsBatchSamples, type Logger } from '../../plugin-sdk/src/index.ts';
import type { SampleBatch, SampleInput, SinkStore, TaskEventRecord } from './store.ts';

export interface IngestSettings {
  flushIntervalMs: number;
  maxBatchMessages: number;
  maxPendingMessages: number;
  maxPendingSamples: number;
  /** Wait before writing again after SQLite refused a write. */
  retryMs: number;
}

export interface IngestStats {
  events: number;
  batches: number;
  samples: number;
  duplicates: number;
  /** Messages refused as malformed. */
  rejected: number;
  /** Messages dropped because the queue was full (writes failing, or falling behind), and their samples. */
  dropped: number;
  droppedSamples: number;
  /** Transactions that stored a group. */
  flushes: number;
  failedWrites: number;
  /** Milliseconds spent in writes (successful or not; parsing text batches included), in total, and the longest one. */
  writeMs: number;
  maxWriteMs: number;
  /** Times the queue became congested (onCongestion(true)). */
  congestions: number;
}

/**
 * A metrics batch whose samples are still in the JSON text of its `metrics.batch` message, as the
 * transport received (and validated) it.
 */
export interface SampleBatchText {
  batchId: string;
  host: string;
  runId?: string;
  /** The message as JSON text; its `samples` are what is stored. */
  json: string;
  /** How many samples it holds (the queue's bounds count them before the text is parsed). */
  sampleCount: number;
}

type Parsed = { kind: 'event'; record: TaskEventRecord } | { kind: 'batch'; record: SampleBatch };
type Queued = Parsed | { kind: 'text'; record: SampleBatchText };

/**
 * Samples stored in one transaction at most (a message with more still goes alone): 16–28 ms of
 * the writer's CPU at the 0.8–1.4 µs per sample of bench/sink-store, so a backlog is stored in
 * steps short enough for the worker to answer its heartbeats (the supervisor ends a worker silent
 * for 2 s) even when it gets only a fraction of a core on a busy machine (bench/sink-ingest saw
 * 140–430 ms of wall time at most with both cores saturated). Larger transactions cost less per
 * sample: a commit writes each dirty page and each aggregate bucket once.
 */
export const MAX_SAMPLES_PER_WRITE = 20_000;
/**
 * Queued samples at which the queue reports congestion, and at which it reports relief: four
 * transactions' worth (at most half the bound, so that congestion comes well before drops), and a
 * quarter of that.
 */
export function congestionBounds(maxPendingSamples: number): { congestedAt: number; relievedAt: number } {
  const congestedAt = Math.max(1, Math.min(4 * MAX_SAMPLES_PER_WRITE, Math.floor(maxPendingSamples / 2)));
  return { congestedAt, relievedAt: Math.floor(congestedAt / 4) };
}

/** Dropping because the queue is full is logged at most this often. */
const DROP_LOG_EVERY_MS = 10_000;

/** Samples a message carries (an event counts as one). */
function weightOf(item: Queued): number {
  if (item.kind === 'text') return Math.max(1, item.record.sampleCount);
  return item.kind === 'batch' && Array.isArray(item.record.samples) ? item.record.samples.length : 1;
}

export class IngestQueue {
  readonly stats: IngestStats = { events: 0, batches: 0, samples: 0, duplicates: 0, rejected: 0, dropped: 0, droppedSamples: 0, flushes: 0, failedWrites: 0, writeMs: 0, maxWriteMs: 0, congestions: 0 };
  readonly #store: SinkStore;
  readonly #settings: IngestSettings;
  readonly #log: Logger;
  readonly #onCongestion: (congested: boolean) => void;
  readonly #bounds: { congestedAt: number; relievedAt: number };
  #congested = false;
  #queue: Queued[] = [];
  /** Samples in #queue (events count one each). */
  #queuedSamples = 0;
  /** Messages ever queued (the ones stored, dropped or refused are no longer in #queue). */
  #added = 0;
  #timer: NodeJS.Timeout | null = null;
  /** The next step of storing a backlog, when one is under way. */
  #next: NodeJS.Immediate | null = null;
  #blockedUntil = 0;
  #closed = false;
  #dropLoggedAt = 0;
  #droppedSinceLog = 0;

  constructor(store: SinkStore, settings: IngestSettings, log: Logger, onCongestion: (congested: boolean) => void = () => {}) {
    this.#store = store;
    this.#settings = settings;
    this.#log = log;
    this.#onCongestion = onCongestion;
    this.#bounds = congestionBounds(settings.maxPendingSamples);
  }

  /** True from the time the queued samples reached congestedAt until they are down to relievedAt. */
  get congested(): boolean {
    return this.#congested;
  }

  /** Messages waiting to be stored. */
  get pending(): number {
    return this.#queue.length;
  }

  /** Samples waiting to be stored (events count one each). */
  get pendingSamples(): number {
    return this.#queuedSamples;
  }

  addEvent(record: TaskEventRecord): void {
    this.#add({ kind: 'event', record });
  }

  addBatch(record: SampleBatch): void {
    this.#add({ kind: 'batch', record });
  }

  /** Queues a batch whose samples are parsed from `record.json` when it is stored. */
  addBatchText(record: SampleBatchText): void {
    this.#add({ kind: 'text', record });
  }

  /**
   * Stores everything queued now, one bounded transaction after the other without yielding, also
   * while writes are failing (one more try). Returns true when the queue is empty afterwards. For
   * stopping; requests use `settle`.
   */
  flush(): boolean {
    this.#cancelTimer();
    while (this.#queue.length > 0) if (!this.#writeOne()) return false;
    return true;
  }

  /**
   * Stores the messages queued at the time of the call, one bounded transaction at a time, and lets
   * the worker's event loop run between transactions (its heartbeats, other requests, new
   * messages, which queue behind). Resolves true once they are stored (or dropped because the
   * queue overflowed), false when a write failed (they stay queued for the retry).
   */
  async settle(): Promise<boolean> {
    const target = this.#added;
    this.#cancelTimer();
    while (this.#added - this.#queue.length < target) {
      if (!this.#writeOne()) return false;
      if (this.#added - this.#queue.length < target) await new Promise<void>((resolve) => setImmediate(resolve));
    }
    if (this.#queue.length > 0) this.#schedule(this.#settings.flushIntervalMs);
    return true;
  }

  /** Stores what is queued (one last try) and stops the timer. */
  close(): void {
    this.flush();
    this.#closed = true;
    this.#cancelTimer();
  }

  #add(item: Queued): void {
    if (this.#closed) {
      this.stats.dropped++;
      this.#log.warn({ id: item.kind === 'event' ? item.record.id : item.record.batchId }, 'message arrived after the sink store closed; not stored');
      return;
    }
    this.#queue.push(item);
    this.#queuedSamples += weightOf(item);
    this.#added++;
    this.#trim();
    this.#checkCongestion();
    const blocked = Date.now() < this.#blockedUntil;
    if (!blocked && (this.#queue.length >= this.#settings.maxBatchMessages || this.#queuedSamples >= MAX_SAMPLES_PER_WRITE)) {
      // A full group: store it right after the messages waiting now have been read.
      if (this.#next === null) {
        this.#cancelTimer();
        this.#kick();
      }
    } else if (this.#timer === null && this.#next === null) {
      this.#schedule(Math.max(this.#settings.flushIntervalMs, this.#blockedUntil - Date.now()));
    }
  }

  /**
   * Writes one transaction and, while messages remain, the next one after the event loop had its
   * turn: a backlog is worked off at full speed, yet no single write holds the worker for long.
   */
  #drain(): void {
    if (Date.now() < this.#blockedUntil) return this.#schedule(this.#blockedUntil - Date.now());
    if (!this.#writeOne() || this.#queue.length === 0 || this.#timer !== null || this.#next !== null) return;
    this.#kick();
  }

  #kick(): void {
    this.#next = setImmediate(() => {
      this.#next = null;
      this.#drain();
    });
  }

  #schedule(ms: number): void {
    if (this.#timer !== null || this.#next !== null || this.#closed) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#drain();
    }, ms);
  }

  #cancelTimer(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    if (this.#next !== null) clearImmediate(this.#next);
    this.#timer = null;
    this.#next = null;
  }

  /**
   * Stores the oldest queued messages, at most maxBatchMessages of them and MAX_SAMPLES_PER_WRITE
   * samples (at least one message), in one transaction per kind. Returns false when SQLite
   * refused the write: the messages are back in front of the queue and a retry is scheduled.
   */
  #writeOne(): boolean {
    if (this.#queue.length === 0) return true;
    let count = 0;
    let weight = 0;
    while (count < this.#queue.length && count < this.#settings.maxBatchMessages) {
      const w = weightOf(this.#queue[count]!);
      if (count > 0 && weight + w > MAX_SAMPLES_PER_WRITE) break;
      weight += w;
      count++;
    }
    this.#queuedSamples -= weight;
    const began = performance.now();
    const group = this.#parseTexts(this.#queue.splice(0, count));
    try {
      if (group.length > 0) this.#write(group);
      this.#blockedUntil = 0;
      this.#checkCongestion();
      return true;
    } catch (err) {
      // Nothing of the failed transaction was stored: put the group back in front, in order
      // (texts parsed now, so a malformed one is refused once).
      this.#queue = (group as Queued[]).concat(this.#queue);
      this.#queuedSamples += group.reduce((n, item) => n + weightOf(item), 0);
      this.stats.failedWrites++;
      this.#blockedUntil = Date.now() + this.#settings.retryMs;
      this.#log.error({ code: (err as BoltError).code, err: String(err), pending: this.#queue.length, retryMs: this.#settings.retryMs }, 'storing task events and metrics failed; retrying');
      this.#trim();
      this.#cancelTimer();
      this.#schedule(this.#settings.retryMs);
      return false;
    } finally {
      const ms = performance.now() - began;
      this.stats.writeMs += ms;
      if (ms > this.stats.maxWriteMs) this.stats.maxWriteMs = ms;
    }
  }

  #checkCongestion(): void {
    if (this.#congested ? this.#queuedSamples > this.#bounds.relievedAt : this.#queuedSamples < this.#bounds.congestedAt) return;
    this.#congested = !this.#congested;
    if (this.#congested) this.stats.congestions++;
    this.#onCongestion(this.#congested);
  }

  /** Drops the oldest queued messages while the queue holds more than its bounds. */
  #trim(): void {
    const { maxPendingMessages, maxPendingSamples } = this.#settings;
    let drop = 0;
    let samples = 0;
    while (drop < this.#queue.length - 1 && (this.#queue.length - drop > maxPendingMessages || this.#queuedSamples - samples > maxPendingSamples)) {
      samples += weightOf(this.#queue[drop]!);
      drop++;
    }
    if (drop === 0) return;
    this.#queue.splice(0, drop);
    this.#queuedSamples -= samples;
    this.stats.dropped += drop;
    this.stats.droppedSamples += samples;
    this.#droppedSinceLog += drop;
    const now = Date.now();
    if (now - this.#dropLoggedAt < DROP_LOG_EVERY_MS) return;
    this.#log.error(
      { dropped: this.#droppedSinceLog, droppedTotal: this.stats.dropped, droppedSamplesTotal: this.stats.droppedSamples, pending: this.#queue.length, pendingSamples: this.#queuedSamples, maxPendingMessages, maxPendingSamples, failingWrites: now < this.#blockedUntil },
      'sink store queue full (writes failing, or more arriving than can be stored): oldest task events and metrics dropped',
    );
    this.#dropLoggedAt = now;
    this.#droppedSinceLog = 0;
  }

  /** The group with its text batches parsed; those whose text holds no samples are refused (counted, logged) and left out. */
  #parseTexts(group: Queued[]): Parsed[] {
    const parsed: Parsed[] = [];
    for (const item of group) {
      if (item.kind !== 'text') parsed.push(item);
      else {
        const record = this.#parse(item.record);
        if (record !== null) parsed.push({ kind: 'batch', record });
      }
    }
    return parsed;
  }

  /** One transaction for the events of the group, one for its batches. Throws on a write failure. */
  #write(group: Parsed[]): void {
    const events: TaskEventRecord[] = [];
    const batches: SampleBatch[] = [];
    for (const item of group) {
      if (item.kind === 'event') events.push(item.record);
      else batches.push(item.record);
    }
    if (events.length > 0) {
      this.#storeAll(events, (all) => this.#store.recordEvents(all).duplicates.length, (one) => (this.#store.recordEvent(one).duplicate ? 1 : 0), 'task event');
      this.stats.events += events.length;
    }
    if (batches.length > 0) {
      const count = (results: Array<{ duplicate: boolean; stored: number }>) => {
        for (const r of results) this.stats.samples += r.stored;
        return results.filter((r) => r.duplicate).length;
      };
      this.#storeAll(batches, (all) => count(this.#store.ingestBatches(all)), (one) => count(this.#store.ingestBatches([one])), 'metrics batch');
      this.stats.batches += batches.length;
    }
    this.stats.flushes++;
  }

  /** The batch of a text record, or null (counted as refused and logged) when its text holds no samples. */
  #parse(record: SampleBatchText): SampleBatch | null {
    const samples = metricsBatchSamples({ json: record.json });
    if (samples === undefined) {
      this.stats.rejected++;
      this.#log.warn({ id: record.batchId }, 'metrics batch text without a samples array refused by the sink store and dropped');
      return null;
    }
    return { batchId: record.batchId, host: record.host, ...(record.runId !== undefined && { runId: record.runId }), samples: samples as SampleInput[] };
  }

  /**
   * Stores `records` in one transaction; when one of them is malformed, stores them one by one and
   * drops the malformed ones. Write failures propagate (the caller keeps the group queued); the
   * records stored one by one before such a failure are duplicates when the group is retried.
   */
  #storeAll<T extends { id?: string; batchId?: string }>(records: T[], all: (r: T[]) => number, one: (r: T) => number, what: string): void {
    try {
      this.stats.duplicates += all(records);
      return;
    } catch (err) {
      if (!(err instanceof BoltError) || err.code !== 'BOLT_ERR_STORE_BAD_RECORD') throw err;
    }
    for (const record of records) {
      try {
        this.stats.duplicates += one(record);
      } catch (err) {
        if (!(err instanceof BoltError) || err.code !== 'BOLT_ERR_STORE_BAD_RECORD') throw err;
        this.stats.rejected++;
        this.#log.warn({ id: record.id ?? record.batchId, err: err.message }, `${what} refused by the sink store and dropped`);
      }
    }
  }
}
