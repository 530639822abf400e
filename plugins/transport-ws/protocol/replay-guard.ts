/**
 * Remembers the ids of accepted commands until they expire, on disk, so that a client runs a
 * command at most once, also across its own restarts.
 *
 * The file is a log of lines `<expiresAt> <id>\n`. `remember` appends and fsyncs before it returns,
 * so a command is durably recorded before anyone acts on it; a crash can lose at most a command
 * that was never acted on. Opening the file drops expired and torn lines and rewrites it
 * (atomically, through a temp file and rename); a long-running guard rewrites it the same way when
 * the log has grown to many times the live entries. Memory and file are bounded by the number of
 * unexpired ids, which `maxEntries` caps.
 *
 * One guard per file: two processes sharing a data directory would not see each other's appends.
 */

import fs from 'node:fs';
import path from 'node:path';
import { BoltError } from '../../../plugin-sdk/src/errors.ts';
import { syncDirectory } from './identity.ts';

/** File name of the log inside the data directory. */
export const REPLAY_GUARD_FILE = 'replay-guard.log';

export interface ReplayGuardOptions {
  /** The clock expiries are compared with: the server's clock (commands carry server-clock expiries). */
  now?: () => number;
  /** Most unexpired ids held at once; beyond it new commands are refused. */
  maxEntries?: number;
  /**
   * Ids are kept this long past their expiry. The guard's clock may briefly run ahead of the
   * verifier's (after a restart the client has no clock offset yet), and an id forgotten early is
   * an id that can be replayed.
   */
  retainAfterExpiryMs?: number;
}

const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;
const COMPACT_MIN_LINES = 1024;
const PRUNE_INTERVAL_MS = 60_000;

/** A persistent set of accepted command ids with expiries. See the module comment for guarantees. */
export class ReplayGuard {
  readonly file: string;
  readonly #now: () => number;
  readonly #maxEntries: number;
  readonly #retainMs: number;
  readonly #entries = new Map<string, number>();
  #fd: number;
  #linesInFile = 0;
  #lastPrune = 0;

  /**
   * Opens (or creates) `<dataDir>/replay-guard.log`, keeping the unexpired ids and compacting the
   * file. Throws BOLT_ERR_WIRE_REPLAY_GUARD_IO when the file cannot be read or rewritten.
   */
  static open(dataDir: string, options: ReplayGuardOptions = {}): ReplayGuard {
    return new ReplayGuard(path.join(dataDir, REPLAY_GUARD_FILE), options);
  }

  private constructor(file: string, options: ReplayGuardOptions) {
    this.file = file;
    this.#now = options.now ?? Date.now;
    this.#maxEntries = options.maxEntries ?? 100_000;
    this.#retainMs = options.retainAfterExpiryMs ?? 3_600_000;
    try {
      fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
      this.#load();
      this.#fd = this.#rewrite();
    } catch (cause) {
      throw ioError(`open ${file}`, cause);
    }
  }

  /** Number of ids held (unexpired, plus expired ones not yet pruned). */
  get size(): number {
    return this.#entries.size;
  }

  /** True if `id` was accepted and has not expired (plus the retention margin). */
  has(id: string): boolean {
    const expiresAt = this.#entries.get(id);
    return expiresAt !== undefined && expiresAt + this.#retainMs > this.#now();
  }

  /**
   * Records `id` as accepted until `expiresAt`, durably, before returning.
   * Throws BOLT_ERR_WIRE_REPLAYED if it is already held, BOLT_ERR_WIRE_REPLAY_GUARD_FULL when
   * `maxEntries` unexpired ids are held, BOLT_ERR_WIRE_REPLAY_GUARD_IO when the write or fsync
   * fails (the id is then not recorded, and the command must not be acted on).
   */
  remember(id: string, expiresAt: number): void {
    if (!ID_PATTERN.test(id)) throw new BoltError('BOLT_ERR_WIRE_MALFORMED', 'Command id is not 1-64 characters of [A-Za-z0-9_.:-].');
    if (!Number.isFinite(expiresAt)) throw new BoltError('BOLT_ERR_WIRE_MALFORMED', 'Command expiresAt is not a finite number.');
    if (this.has(id)) throw new BoltError('BOLT_ERR_WIRE_REPLAYED', `Command ${id} was already accepted; it is not run twice.`, { details: { id } });
    const now = this.#now();
    if (this.#entries.size >= this.#maxEntries || now - this.#lastPrune >= PRUNE_INTERVAL_MS) this.#prune(now);
    if (this.#entries.size >= this.#maxEntries) {
      throw new BoltError('BOLT_ERR_WIRE_REPLAY_GUARD_FULL', `The replay guard holds ${this.#entries.size} unexpired command ids.`);
    }
    try {
      fs.writeSync(this.#fd, `${expiresAt} ${id}\n`);
      fs.fsyncSync(this.#fd);
    } catch (cause) {
      throw ioError(`append to ${this.file}`, cause);
    }
    this.#entries.set(id, expiresAt);
    this.#linesInFile++;
    if (this.#linesInFile > Math.max(COMPACT_MIN_LINES, 4 * this.#entries.size)) this.#compact(now);
  }

  /** Closes the file. The guard must not be used afterwards. */
  close(): void {
    fs.closeSync(this.#fd);
  }

  #load(): void {
    let text: string;
    try {
      text = fs.readFileSync(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    const now = this.#now();
    for (const line of text.split('\n')) {
      // A torn last line (crash mid-append) never got its fsync, so its command never ran.
      const space = line.indexOf(' ');
      if (space < 1) continue;
      const expiresAt = Number(line.slice(0, space));
      const id = line.slice(space + 1);
      if (!Number.isFinite(expiresAt) || !ID_PATTERN.test(id) || expiresAt + this.#retainMs <= now) continue;
      this.#entries.set(id, Math.max(expiresAt, this.#entries.get(id) ?? -Infinity));
    }
    this.#lastPrune = now;
  }

  #prune(now: number): void {
    for (const [id, expiresAt] of this.#entries) {
      if (expiresAt + this.#retainMs <= now) this.#entries.delete(id);
    }
    this.#lastPrune = now;
  }

  #compact(now: number): void {
    this.#prune(now);
    try {
      fs.closeSync(this.#fd);
      this.#fd = this.#rewrite();
    } catch (cause) {
      throw ioError(`compact ${this.file}`, cause);
    }
  }

  /** Writes the live entries to a temp file, renames it over the log, and returns an append fd. */
  #rewrite(): number {
    const tmp = `${this.file}.tmp`;
    let text = '';
    for (const [id, expiresAt] of this.#entries) text += `${expiresAt} ${id}\n`;
    const fd = fs.openSync(tmp, 'w', 0o600);
    try {
      fs.writeSync(fd, text);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, this.file);
    syncDirectory(path.dirname(this.file));
    this.#linesInFile = this.#entries.size;
    return fs.openSync(this.file, 'a', 0o600);
  }
}

function ioError(what: string, cause: unknown): BoltError {
  if (cause instanceof BoltError) return cause;
  return new BoltError('BOLT_ERR_WIRE_REPLAY_GUARD_IO', `Replay guard could not ${what}.`, { cause });
}
