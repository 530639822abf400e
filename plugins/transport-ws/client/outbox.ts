/**
 * The client's outbox: every message bound for the sink (task events, metrics batches) goes
 * through it, in order, and is kept on disk until it counts as delivered, so a sink that is down or
 * restarting, or a client that restarts, loses nothing.
 *
 * Files, under the outbox directory (`<client data dir>/outbox/`):
 * - `outbox-<first seq, 16 digits>.log`: append-only segments of lines `<seq> <message JSON>\n`.
 *   Appends are group-committed: the lines pushed during one turn of the event loop are written
 *   and fdatasync'd together, and push() resolves after that. A new segment starts when the
 *   current one exceeds `segmentBytes`; a segment whose messages are all delivered is deleted.
 * - `cursor.json`: `{ "confirmedSeq": N }`, every message up to N counts as delivered; written
 *   atomically (temp file, fsync, rename) at most once a second and on close.
 *
 * Delivery is at least once. The wire has no acknowledgement from the sink, so a message counts as
 * delivered once the session it was sent on has stayed up `confirmAfterMs` after sending it. When a
 * session ends, the messages sent on it but not yet confirmed are sent again, first, on the next
 * one; after a restart, everything after the cursor is. Message ids make these repeats harmless at
 * the sink (its store is idempotent by id). A sink that vanishes without closing its connection
 * (power loss, a cut cable) is noticed only when the socket fails, which can be after
 * confirmAfterMs: what was sent into that socket is lost.
 *
 * Bounded: messages not yet confirmed may take at most `maxBytes` (counted as their lines on
 * disk; they are also held in memory); beyond that push() refuses with BOLT_ERR_WIRE_OUTBOX_FULL
 * and an error is logged once until there is room again. Sending is paced by a token bucket
 * (`ratePerSec`, `burst`) so that a long backlog does not trip the sink's per-connection rate limit.
 *
 * One outbox per directory: two processes sharing it would interleave their segments.
 */
import fs from 'node:fs';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { BoltError } from '../../../plugin-sdk/src/errors.ts';
import type { Logger } from '../../../plugin-sdk/src/index.ts';
import type { MetricsBatchMessage, TaskEventMessage } from '../../../plugin-sdk/src/schemas/wire.ts';
import { syncDirectory } from '../protocol/identity.ts';

/** What the outbox carries to the sink. */
export type OutboxMessage = TaskEventMessage | MetricsBatchMessage;

/** Sends one message on the current session; false when it cannot take it now (not connected, send buffer full). */
export type OutboxSender = (message: OutboxMessage) => boolean;

export interface OutboxOptions {
  /** The outbox directory (created, mode 0700). */
  dir: string;
  /** Most bytes of unconfirmed messages held. Default 64 MiB. */
  maxBytes?: number;
  /** A segment file is closed and a new one started beyond this size. Default 4 MiB. */
  segmentBytes?: number;
  /** A message counts as delivered once its session stayed up this long after it was sent. Default 5000 ms. */
  confirmAfterMs?: number;
  /** Messages sent per second at most, on average. Default 500. */
  ratePerSec?: number;
  /** Messages sent at once at most. Default 250. */
  burst?: number;
  log?: Logger;
}

/** Counters and levels; `queued` and `queuedBytes` are the unconfirmed messages. */
export interface OutboxStats {
  queued: number;
  queuedBytes: number;
  /** Queued messages not sent on the current session. */
  unsent: number;
  /** Sends, repeats included. */
  sent: number;
  /** Sends of a message already sent on an earlier session of this process. */
  resent: number;
  confirmedSeq: number;
  /** push() calls refused because the outbox was full. */
  refusedFull: number;
  /** Lines skipped when the segments were read at open (torn or corrupt). */
  skippedOnOpen: number;
}

interface Entry {
  readonly seq: number;
  readonly text: string;
  /** Bytes of its line on disk. */
  readonly bytes: number;
  /** performance.now() of the last send, and the attachment it was sent on. */
  sentAt: number;
  sentOn: number;
  everSent: boolean;
}

interface Segment {
  readonly file: string;
  lastSeq: number;
}

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

const SEGMENT_PATTERN = /^outbox-(\d{16})\.log$/;
const CURSOR_FILE = 'cursor.json';
const CURSOR_WRITE_INTERVAL_MS = 1000;
/** Retry delay after the sender refused a message (send buffer full). */
const SENDER_BUSY_RETRY_MS = 50;
/** After being full, the outbox logs again once it has this share of maxBytes free. */
const ROOM_AGAIN_SHARE = 0.1;
const SILENT: Logger = { debug() {}, info() {}, warn() {}, error() {} };

function segmentName(firstSeq: number): string {
  return `outbox-${String(firstSeq).padStart(16, '0')}.log`;
}

function ioError(what: string, cause: unknown): BoltError {
  return new BoltError('BOLT_ERR_WIRE_OUTBOX_IO', `The outbox could not ${what}: ${(cause as Error)?.message ?? String(cause)}`, { cause });
}

/** A bounded, persistent, ordered queue of messages to the sink. See the module comment. */
export class Outbox {
  readonly dir: string;
  readonly #maxBytes: number;
  readonly #segmentBytes: number;
  readonly #confirmAfterMs: number;
  readonly #ratePerSec: number;
  readonly #burst: number;
  readonly #log: Logger;
  /** Unconfirmed entries, oldest first, from #head on. */
  #queue: Entry[] = [];
  #head = 0;
  /** Entries from #head up to #head + #sentCount were sent on the current attachment. */
  #sentCount = 0;
  #queuedBytes = 0;
  #nextSeq: number;
  #confirmedSeq: number;
  #segments: Segment[] = [];
  /** The segment appends go to, once opened. */
  #current: { segment: Segment; handle: FileHandle; size: number } | null = null;
  #pendingLines: string[] = [];
  #pendingWaiters: Waiter[] = [];
  #pendingLastSeq = 0;
  #flushScheduled = false;
  #flushing: Promise<void> | null = null;
  #cursorDirty = false;
  #cursorTimer: NodeJS.Timeout | null = null;
  #cursorWrite: Promise<void> = Promise.resolve();
  #sender: OutboxSender | null = null;
  #attachment = 0;
  #tokens: number;
  #tokensAt = performance.now();
  #drainTimer: NodeJS.Timeout | null = null;
  #confirmTimer: NodeJS.Timeout | null = null;
  #full = false;
  #closed = false;
  readonly #stats = { sent: 0, resent: 0, refusedFull: 0, skippedOnOpen: 0 };

  /**
   * Opens the outbox in `options.dir`, reading what a previous life left unconfirmed (it is sent
   * first, in order, once a sender is attached). A torn last line, left by a crash mid-append, is
   * cut off; other unreadable lines are skipped with a warning.
   * @throws BoltError BOLT_ERR_WIRE_OUTBOX_IO when the directory or its files cannot be read.
   */
  static open(options: OutboxOptions): Outbox {
    return new Outbox(options);
  }

  private constructor(options: OutboxOptions) {
    this.dir = options.dir;
    this.#maxBytes = options.maxBytes ?? 64 * 1024 * 1024;
    this.#segmentBytes = options.segmentBytes ?? 4 * 1024 * 1024;
    this.#confirmAfterMs = options.confirmAfterMs ?? 5000;
    this.#ratePerSec = options.ratePerSec ?? 500;
    this.#burst = options.burst ?? 250;
    this.#tokens = this.#burst;
    this.#log = options.log ?? SILENT;
    try {
      fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      this.#confirmedSeq = this.#readCursor();
      this.#nextSeq = this.#load() + 1;
    } catch (cause) {
      throw cause instanceof BoltError ? cause : ioError(`be opened in ${this.dir}`, cause);
    }
    if (this.#queue.length > 0) {
      this.#log.info({ dir: this.dir, queued: this.#queue.length, bytes: this.#queuedBytes }, `outbox holds ${this.#queue.length} messages from before; they go first once the sink is connected`);
    }
  }

  get stats(): OutboxStats {
    return {
      queued: this.#queue.length - this.#head,
      queuedBytes: this.#queuedBytes,
      unsent: this.#queue.length - this.#head - this.#sentCount,
      sent: this.#stats.sent,
      resent: this.#stats.resent,
      confirmedSeq: this.#confirmedSeq,
      refusedFull: this.#stats.refusedFull,
      skippedOnOpen: this.#stats.skippedOnOpen,
    };
  }

  /**
   * Queues a message behind every earlier one and resolves once it is durably on disk. When a
   * sender is attached and nothing is waiting before it, the message is sent at once (before the
   * disk write completes).
   * Rejects with BOLT_ERR_WIRE_OUTBOX_FULL (at once, nothing queued) when it does not fit in
   * maxBytes, and with BOLT_ERR_WIRE_OUTBOX_IO when the write or fsync failed (the message is then
   * still sent while this process runs, but would not survive a restart).
   */
  push(message: OutboxMessage): Promise<void> {
    if (this.#closed) return Promise.reject(new BoltError('BOLT_ERR_WIRE_OUTBOX_IO', 'The outbox is closed.'));
    const text = JSON.stringify(message);
    const seq = this.#nextSeq;
    const line = `${seq} ${text}\n`;
    const bytes = Buffer.byteLength(line);
    if (this.#queuedBytes + bytes > this.#maxBytes) {
      this.#stats.refusedFull++;
      if (!this.#full) {
        this.#full = true;
        this.#log.error(
          { dir: this.dir, queued: this.stats.queued, queuedBytes: this.#queuedBytes, maxBytes: this.#maxBytes },
          `outbox full: ${this.stats.queued} messages (${this.#queuedBytes} bytes) wait for the sink; new messages are refused until it takes some`,
        );
      }
      return Promise.reject(new BoltError('BOLT_ERR_WIRE_OUTBOX_FULL', `The outbox holds ${this.#queuedBytes} of at most ${this.#maxBytes} bytes of messages the sink has not taken; this ${bytes}-byte message does not fit.`, { details: { dir: this.dir, type: message.type, id: message.id } }));
    }
    this.#nextSeq++;
    this.#queue.push({ seq, text, bytes, sentAt: 0, sentOn: 0, everSent: false });
    this.#queuedBytes += bytes;
    const written = new Promise<void>((resolve, reject) => this.#pendingWaiters.push({ resolve, reject }));
    this.#pendingLines.push(line);
    this.#pendingLastSeq = seq;
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      setImmediate(() => {
        this.#flushScheduled = false;
        void this.#flush();
      });
    }
    this.#drain();
    return written;
  }

  /**
   * A session is up: send through `sender`, starting with every unconfirmed message (those sent on
   * an earlier session again). Returns the detach function of this attachment; calling it after
   * another attach is harmless.
   */
  attach(sender: OutboxSender): () => void {
    const attachment = ++this.#attachment;
    this.#sender = sender;
    this.#sentCount = 0;
    this.#clearTimer('drain');
    this.#clearTimer('confirm');
    this.#drain();
    return () => {
      if (this.#attachment !== attachment || this.#sender === null) return;
      this.#sender = null;
      this.#sentCount = 0;
      this.#clearTimer('drain');
      this.#clearTimer('confirm');
    };
  }

  /** Stops sending, waits for pending writes, records the cursor and closes the files. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#sender = null;
    this.#clearTimer('drain');
    this.#clearTimer('confirm');
    if (this.#cursorTimer !== null) clearTimeout(this.#cursorTimer);
    while (this.#flushing !== null || this.#pendingLines.length > 0) await this.#flush();
    if (this.#cursorDirty) this.#cursorWrite = this.#cursorWrite.then(() => this.#writeCursor());
    await this.#cursorWrite;
    await this.#current?.handle.close().catch(() => {});
    this.#current = null;
  }

  // --- sending

  #drain(): void {
    const sender = this.#sender;
    if (sender === null || this.#drainTimer !== null) return;
    const now = performance.now();
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#tokensAt) * this.#ratePerSec) / 1000);
    this.#tokensAt = now;
    while (this.#head + this.#sentCount < this.#queue.length && this.#tokens >= 1) {
      const entry = this.#queue[this.#head + this.#sentCount]!;
      let taken: boolean;
      try {
        taken = sender(JSON.parse(entry.text) as OutboxMessage);
      } catch (err) {
        // Not a message this connection carries: it can never be sent, so it is passed over.
        this.#log.error({ seq: entry.seq, err: (err as Error).message }, 'outbox message refused by the connection; dropped');
        taken = true;
      }
      if (!taken) {
        this.#setTimer('drain', SENDER_BUSY_RETRY_MS, () => this.#drain());
        return;
      }
      this.#tokens--;
      this.#stats.sent++;
      if (entry.everSent) this.#stats.resent++;
      entry.everSent = true;
      entry.sentAt = now;
      entry.sentOn = this.#attachment;
      this.#sentCount++;
    }
    if (this.#head + this.#sentCount < this.#queue.length) {
      this.#setTimer('drain', Math.ceil(((1 - this.#tokens) * 1000) / this.#ratePerSec), () => this.#drain());
    }
    if (this.#sentCount > 0 && this.#confirmTimer === null) this.#scheduleConfirm();
  }

  #scheduleConfirm(): void {
    const oldest = this.#queue[this.#head];
    if (oldest === undefined || this.#sentCount === 0) return;
    const due = Math.max(0, oldest.sentAt + this.#confirmAfterMs - performance.now());
    this.#setTimer('confirm', Math.ceil(due) + 1, () => this.#confirm());
  }

  /** Confirms, from the oldest on, the entries sent on this attachment at least confirmAfterMs ago. */
  #confirm(): void {
    if (this.#sender === null) return;
    const limit = performance.now() - this.#confirmAfterMs;
    let confirmed = 0;
    while (confirmed < this.#sentCount) {
      const entry = this.#queue[this.#head]!;
      if (entry.sentOn !== this.#attachment || entry.sentAt > limit) break;
      this.#queuedBytes -= entry.bytes;
      this.#confirmedSeq = entry.seq;
      this.#head++;
      confirmed++;
    }
    this.#sentCount -= confirmed;
    if (confirmed > 0) {
      if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
        this.#queue = this.#queue.slice(this.#head);
        this.#head = 0;
      }
      if (this.#full && this.#queuedBytes <= this.#maxBytes * (1 - ROOM_AGAIN_SHARE)) {
        this.#full = false;
        this.#log.info({ dir: this.dir, queuedBytes: this.#queuedBytes }, 'outbox has room again');
      }
      this.#markCursorDirty();
    }
    this.#scheduleConfirm();
  }

  #setTimer(which: 'drain' | 'confirm', ms: number, fn: () => void): void {
    this.#clearTimer(which);
    const timer = setTimeout(() => {
      if (which === 'drain') this.#drainTimer = null;
      else this.#confirmTimer = null;
      fn();
    }, ms);
    if (which === 'drain') this.#drainTimer = timer;
    else this.#confirmTimer = timer;
  }

  #clearTimer(which: 'drain' | 'confirm'): void {
    const timer = which === 'drain' ? this.#drainTimer : this.#confirmTimer;
    if (timer !== null) clearTimeout(timer);
    if (which === 'drain') this.#drainTimer = null;
    else this.#confirmTimer = null;
  }

  // --- disk

  /** Writes pending lines in batches until none is left; one flush runs at a time. */
  #flush(): Promise<void> {
    if (this.#flushing !== null) return this.#flushing;
    if (this.#pendingLines.length === 0) return Promise.resolve();
    this.#flushing = this.#writePending().finally(() => {
      this.#flushing = null;
      if (this.#pendingLines.length > 0) void this.#flush();
    });
    return this.#flushing;
  }

  async #writePending(): Promise<void> {
    while (this.#pendingLines.length > 0) {
      const lines = this.#pendingLines;
      const waiters = this.#pendingWaiters;
      const firstSeq = this.#pendingLastSeq - lines.length + 1;
      const lastSeq = this.#pendingLastSeq;
      this.#pendingLines = [];
      this.#pendingWaiters = [];
      try {
        await this.#append(Buffer.from(lines.join('')), firstSeq, lastSeq);
        for (const w of waiters) w.resolve();
      } catch (err) {
        const error = err instanceof BoltError ? err : ioError('append to its segment file', err);
        this.#log.error({ dir: this.dir, messages: lines.length, err: error.message }, `outbox write failed: ${lines.length} messages are held in memory only`);
        for (const w of waiters) w.reject(error);
      }
    }
  }

  async #append(data: Buffer, firstSeq: number, lastSeq: number): Promise<void> {
    if (this.#current === null || this.#current.size >= this.#segmentBytes) await this.#startSegment(firstSeq);
    const current = this.#current!;
    try {
      let written = 0;
      while (written < data.length) written += (await current.handle.write(data, written, data.length - written)).bytesWritten;
      await current.handle.datasync();
    } catch (err) {
      // Cut a partial write off, so the next append starts on a line of its own.
      await current.handle.truncate(current.size).catch(() => {});
      throw err;
    }
    current.size += data.length;
    current.segment.lastSeq = lastSeq;
  }

  async #startSegment(firstSeq: number): Promise<void> {
    await this.#current?.handle.close().catch(() => {});
    this.#current = null;
    const segment: Segment = { file: path.join(this.dir, segmentName(firstSeq)), lastSeq: firstSeq - 1 };
    const handle = await open(segment.file, 'a', 0o600);
    syncDirectory(this.dir);
    this.#segments.push(segment);
    this.#current = { segment, handle, size: 0 };
  }

  #markCursorDirty(): void {
    this.#cursorDirty = true;
    if (this.#cursorTimer !== null || this.#closed) return;
    this.#cursorTimer = setTimeout(() => {
      this.#cursorTimer = null;
      this.#cursorWrite = this.#cursorWrite.then(() => this.#writeCursor());
    }, CURSOR_WRITE_INTERVAL_MS);
  }

  /** Records the cursor durably, then deletes the segments it covers. Failures are logged: the cursor only gets more repeats. */
  async #writeCursor(): Promise<void> {
    this.#cursorDirty = false;
    const confirmedSeq = this.#confirmedSeq;
    const file = path.join(this.dir, CURSOR_FILE);
    const tmp = `${file}.tmp`;
    try {
      const handle = await open(tmp, 'w', 0o600);
      try {
        await handle.writeFile(`${JSON.stringify({ confirmedSeq })}\n`);
        await handle.datasync();
      } finally {
        await handle.close();
      }
      await rename(tmp, file);
      syncDirectory(this.dir);
    } catch (err) {
      this.#log.warn({ dir: this.dir, err: (err as Error).message }, 'outbox cursor not written; delivered messages may be sent again after a restart');
      return;
    }
    const keep: Segment[] = [];
    for (const segment of this.#segments) {
      if (segment.lastSeq <= confirmedSeq && segment !== this.#current?.segment) {
        await unlink(segment.file).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== 'ENOENT') this.#log.warn({ file: segment.file, err: err.message }, 'delivered outbox segment not removed');
        });
      } else {
        keep.push(segment);
      }
    }
    this.#segments = keep;
  }

  #readCursor(): number {
    let text: string;
    try {
      text = fs.readFileSync(path.join(this.dir, CURSOR_FILE), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw err;
    }
    try {
      const seq = (JSON.parse(text) as { confirmedSeq?: unknown }).confirmedSeq;
      if (Number.isSafeInteger(seq) && (seq as number) >= 0) return seq as number;
    } catch {
      // handled below
    }
    this.#log.warn({ dir: this.dir }, 'outbox cursor unreadable; every message kept on disk is sent again');
    return 0;
  }

  /** Reads the segments, queues what is after the cursor and returns the highest seq seen (at least the cursor). */
  #load(): number {
    const names = fs.readdirSync(this.dir).filter((n) => SEGMENT_PATTERN.test(n)).sort();
    let lastSeq = 0;
    names.forEach((name, index) => {
      const file = path.join(this.dir, name);
      const text = fs.readFileSync(file, 'utf8');
      const segment: Segment = { file, lastSeq: Number(SEGMENT_PATTERN.exec(name)![1]) - 1 };
      let offset = 0;
      while (offset < text.length) {
        const end = text.indexOf('\n', offset);
        if (end === -1) {
          // A line without its newline never finished its write (nor its fsync): its push never resolved.
          if (index === names.length - 1) {
            fs.truncateSync(file, Buffer.byteLength(text.slice(0, offset)));
            this.#log.warn({ file, bytes: Buffer.byteLength(text.slice(offset)) }, 'outbox: torn last line cut off');
          } else {
            this.#skipped(file, 'unterminated line');
          }
          break;
        }
        const line = text.slice(offset, end);
        offset = end + 1;
        const space = line.indexOf(' ');
        const seq = Number(line.slice(0, space));
        const json = line.slice(space + 1);
        if (space < 1 || !Number.isSafeInteger(seq) || seq <= lastSeq || !isMessage(json)) {
          this.#skipped(file, 'unreadable or out-of-order line');
          continue;
        }
        lastSeq = seq;
        segment.lastSeq = seq;
        if (seq <= this.#confirmedSeq) continue;
        const bytes = Buffer.byteLength(line) + 1;
        this.#queue.push({ seq, text: json, bytes, sentAt: 0, sentOn: 0, everSent: false });
        this.#queuedBytes += bytes;
      }
      if (segment.lastSeq <= this.#confirmedSeq && index < names.length - 1) fs.unlinkSync(file);
      else this.#segments.push(segment);
    });
    return Math.max(lastSeq, this.#confirmedSeq);
  }

  #skipped(file: string, why: string): void {
    this.#stats.skippedOnOpen++;
    this.#log.warn({ file, why }, `outbox: ${why} skipped`);
  }
}

/** Whether text is the JSON of a message the outbox carries. */
function isMessage(text: string): boolean {
  try {
    const value = JSON.parse(text) as { type?: unknown; id?: unknown };
    return (value?.type === 'task.event' || value?.type === 'metrics.batch') && typeof value.id === 'string';
  } catch {
    return false;
  }
}
