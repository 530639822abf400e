/**
 * Group commit for the sink's stream of task events and metrics batches: messages are collected
 * for `flushIntervalMs` (or until `maxBatchMessages` are waiting) and stored with one transaction
 * for the events and one for the batches. Idempotency stays with the store (message ids).
 *
 * Guarantees:
 * - Messages are stored in arrival order, each once (a resent id is a duplicate in the store).
 * - A message the store refuses as malformed (BOLT_ERR_STORE_BAD_RECORD) is logged and dropped
 *   alone; the others of its group are stored.
 * - When SQLite refuses a write (disk full, I/O error, lock held too long), every message stays
 *   queued and the write is retried after `retryMs`. Past `maxPendingMessages` the oldest queued
 *   messages are dropped and counted (`stats.dropped`), so memory stays bounded.
 */
import { BoltError } from '../../plugin-sdk/src/errors.ts';
import type { Logger } from '../../plugin-sdk/src/index.ts';
import type { SampleBatch, SinkStore, TaskEventRecord } from './store.ts';

export interface IngestSettings {
  flushIntervalMs: number;
  maxBatchMessages: number;
  maxPendingMessages: number;
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
  /** Messages dropped because the queue was full while writes failed. */
  dropped: number;
  /** Transactions that stored a group. */
  flushes: number;
  failedWrites: number;
}

type Queued = { kind: 'event'; record: TaskEventRecord } | { kind: 'batch'; record: SampleBatch };

export class IngestQueue {
  readonly stats: IngestStats = { events: 0, batches: 0, samples: 0, duplicates: 0, rejected: 0, dropped: 0, flushes: 0, failedWrites: 0 };
  readonly #store: SinkStore;
  readonly #settings: IngestSettings;
  readonly #log: Logger;
  #queue: Queued[] = [];
  #timer: NodeJS.Timeout | null = null;
  #blockedUntil = 0;
  #closed = false;

  constructor(store: SinkStore, settings: IngestSettings, log: Logger) {
    this.#store = store;
    this.#settings = settings;
    this.#log = log;
  }

  /** Messages waiting to be stored. */
  get pending(): number {
    return this.#queue.length;
  }

  addEvent(record: TaskEventRecord): void {
    this.#add({ kind: 'event', record });
  }

  addBatch(record: SampleBatch): void {
    this.#add({ kind: 'batch', record });
  }

  /**
   * Stores everything queued now (unless writes are failing and the retry time has not come,
   * or `force` is set). Returns true when the queue is empty afterwards.
   */
  flush(force = false): boolean {
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    if (this.#queue.length === 0) return true;
    if (!force && Date.now() < this.#blockedUntil) {
      this.#schedule(this.#blockedUntil - Date.now());
      return false;
    }
    const group = this.#queue;
    this.#queue = [];
    try {
      this.#write(group);
      this.#blockedUntil = 0;
      return this.#queue.length === 0;
    } catch (err) {
      // Nothing of the failed transaction was stored: put the group back in front, in order.
      this.#queue = group.concat(this.#queue);
      this.stats.failedWrites++;
      this.#blockedUntil = Date.now() + this.#settings.retryMs;
      this.#log.error({ code: (err as BoltError).code, err: String(err), pending: this.#queue.length, retryMs: this.#settings.retryMs }, 'storing task events and metrics failed; retrying');
      this.#trim();
      this.#schedule(this.#settings.retryMs);
      return false;
    }
  }

  /** Stores what is queued (one last try) and stops the timer. */
  close(): void {
    this.flush(true);
    this.#closed = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #add(item: Queued): void {
    if (this.#closed) {
      this.stats.dropped++;
      this.#log.warn({ id: item.kind === 'event' ? item.record.id : item.record.batchId }, 'message arrived after the sink store closed; not stored');
      return;
    }
    this.#queue.push(item);
    this.#trim();
    if (this.#queue.length >= this.#settings.maxBatchMessages && Date.now() >= this.#blockedUntil) this.flush();
    else if (this.#timer === null) this.#schedule(Math.max(this.#settings.flushIntervalMs, this.#blockedUntil - Date.now()));
  }

  #schedule(ms: number): void {
    if (this.#timer !== null || this.#closed) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.flush();
    }, ms);
  }

  #trim(): void {
    const excess = this.#queue.length - this.#settings.maxPendingMessages;
    if (excess <= 0) return;
    this.#queue.splice(0, excess);
    this.stats.dropped += excess;
    this.#log.error({ dropped: excess, droppedTotal: this.stats.dropped, maxPendingMessages: this.#settings.maxPendingMessages }, 'sink store queue full while writes fail: oldest task events and metrics dropped');
  }

  /** One transaction for the events of the group, one for its batches. Throws on a write failure. */
  #write(group: Queued[]): void {
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
