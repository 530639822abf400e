/**
 * The server's list of peer keys: which client and sink keys it has seen, and which an operator
 * (or `--auto-accept`) accepted or rejected. Kept in `<dataDir>/trust.json`.
 *
 * An entry is keyed by fingerprint AND role: accepting a key as a client says nothing about the
 * same key presenting itself as a sink, which is a separate entry with its own decision. So a
 * client key is never accepted as a sink unless an operator accepts it as one.
 *
 * The file is a JSON list of entries, mode 0600, replaced atomically (temp file, fsync, rename,
 * fsync of the directory). Decisions (accept, reject) are on disk before the call returns; what
 * handshakes record (new pending keys, lastSeen, host, labels, facts, address) is written at most
 * every `flushDelayMs`, coalesced, so a reconnect storm of thousands of clients costs a handful of
 * writes. A file that cannot be parsed is refused at open and never overwritten.
 */

import { Ajv } from 'ajv';
import fs from 'node:fs';
import path from 'node:path';
import { BoltError } from '../../../plugin-sdk/src/errors.ts';
import { fingerprint as fingerprintOf, syncDirectory } from '../protocol/identity.ts';
import type { PeerIdentity } from '../protocol/session.ts';

/** File name of the trust list inside the data directory. */
export const TRUST_FILE = 'trust.json';

/** The roles a connecting peer can have; each (fingerprint, role) pair is its own entry. */
export type TrustRole = 'client' | 'sink';
export type TrustState = 'pending' | 'accepted' | 'rejected';

/** One key in one role. Times are ISO 8601 strings (UTC). */
export interface TrustEntry {
  /** base64url SHA-256 of the raw public key (43 characters). */
  fingerprint: string;
  /** Base64 of the raw 32-byte Ed25519 public key. */
  publicKey: string;
  role: TrustRole;
  state: TrustState;
  /** What the peer said about itself in its latest hello. */
  host: string;
  labels: Record<string, string>;
  facts: Record<string, unknown>;
  /** Remote address of its latest handshake. */
  address: string;
  firstSeen: string;
  lastSeen: string;
  /** When it was last accepted or rejected (by an operator or by auto-accept). */
  decidedAt?: string;
}

export interface TrustStoreOptions {
  /** Accept every new key in the role it claims, unless the key is already known in another role. Rejected keys stay rejected. */
  autoAccept?: boolean;
  /** Coalescing delay for writes caused by handshakes. Default 200 ms. */
  flushDelayMs?: number;
  /**
   * Most pending entries kept; a new unknown key beyond it evicts the pending entry seen longest
   * ago (a real peer retries and reappears). Bounds memory and file size against key floods. Default 2000.
   */
  maxPending?: number;
  /** Facts larger than this (as JSON) are replaced by `{ omitted: <bytes> }`. Default 8192. */
  maxFactsBytes?: number;
  /** Wall clock for the entries' times. Default Date.now. */
  now?: () => number;
  /** Called when a coalesced write fails (it is retried on the next change). */
  onError?: (err: BoltError) => void;
}

/** The smallest fingerprint prefix `accept` and `reject` take. */
export const MIN_FINGERPRINT_PREFIX = 8;

const ENTRY_SCHEMA = {
  type: 'array',
  items: {
    type: 'object',
    additionalProperties: false,
    required: ['fingerprint', 'publicKey', 'role', 'state', 'host', 'labels', 'facts', 'address', 'firstSeen', 'lastSeen'],
    properties: {
      fingerprint: { type: 'string', pattern: '^[A-Za-z0-9_-]{43}$' },
      publicKey: { type: 'string', pattern: '^[A-Za-z0-9+/]{43}=$' },
      role: { enum: ['client', 'sink'] },
      state: { enum: ['pending', 'accepted', 'rejected'] },
      host: { type: 'string' },
      labels: { type: 'object', additionalProperties: { type: 'string' } },
      facts: { type: 'object' },
      address: { type: 'string' },
      firstSeen: { type: 'string' },
      lastSeen: { type: 'string' },
      decidedAt: { type: 'string' },
    },
  },
} as const;
const validateFile = new Ajv({ allErrors: false, strict: true }).compile<TrustEntry[]>(ENTRY_SCHEMA);

/**
 * The trust list. One store per data directory and process: it holds the file's content in
 * memory and is the only writer.
 */
export class TrustStore {
  readonly file: string;
  readonly autoAccept: boolean;
  /** `${role} ${fingerprint}` → entry. */
  readonly #entries = new Map<string, TrustEntry>();
  readonly #flushDelayMs: number;
  readonly #maxPending: number;
  readonly #maxFactsBytes: number;
  readonly #now: () => number;
  readonly #onError: (err: BoltError) => void;
  readonly #rejectListeners = new Set<(entry: TrustEntry) => void>();
  #flushTimer: NodeJS.Timeout | undefined;
  #dirty = false;
  #closed = false;

  /**
   * Opens `<dir>/trust.json` (a missing file is an empty list). Throws BOLT_ERR_WIRE_TRUST_CORRUPT
   * if the file is not a valid trust list, leaving it untouched.
   */
  static open(dir: string, options: TrustStoreOptions = {}): TrustStore {
    return new TrustStore(path.join(dir, TRUST_FILE), options);
  }

  private constructor(file: string, options: TrustStoreOptions) {
    this.file = file;
    this.autoAccept = options.autoAccept ?? false;
    this.#flushDelayMs = options.flushDelayMs ?? 200;
    this.#maxPending = options.maxPending ?? 2000;
    this.#maxFactsBytes = options.maxFactsBytes ?? 8192;
    this.#now = options.now ?? Date.now;
    this.#onError = options.onError ?? (() => {});
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    for (const entry of readFile(file)) this.#entries.set(keyOf(entry.fingerprint, entry.role), entry);
  }

  /**
   * The handshake's authorize callback: true if `peer`'s key is accepted in the role it claims.
   * Records what the peer said about itself (host, labels, facts, address, lastSeen); an unknown
   * key becomes a pending entry, or an accepted one under autoAccept. A rejected key stays
   * rejected, and autoAccept never accepts a key already known in another role.
   */
  authorize(peer: PeerIdentity, address: string): boolean {
    if (peer.role === 'server') return false;
    const now = this.#iso();
    const key = keyOf(peer.fingerprint, peer.role);
    let entry = this.#entries.get(key);
    if (entry === undefined) {
      const knownInOtherRole = this.#entries.has(keyOf(peer.fingerprint, peer.role === 'client' ? 'sink' : 'client'));
      const accept = this.autoAccept && !knownInOtherRole;
      if (!accept) this.#makeRoomForPending();
      entry = {
        fingerprint: peer.fingerprint,
        publicKey: peer.publicKey,
        role: peer.role,
        state: accept ? 'accepted' : 'pending',
        host: '',
        labels: {},
        facts: {},
        address,
        firstSeen: now,
        lastSeen: now,
        ...(accept && { decidedAt: now }),
      };
      this.#entries.set(key, entry);
    }
    entry.lastSeen = now;
    entry.address = address;
    if (peer.hello !== undefined) {
      entry.host = peer.hello.host;
      entry.labels = { ...peer.hello.labels };
      entry.facts = this.#boundedFacts(peer.hello.facts);
    }
    this.#scheduleFlush();
    return entry.state === 'accepted';
  }

  /** The entry of this key in this role, as a copy. */
  get(fingerprint: string, role: TrustRole): TrustEntry | undefined {
    const entry = this.#entries.get(keyOf(fingerprint, role));
    return entry === undefined ? undefined : copy(entry);
  }

  /** Every entry, oldest first, as copies. */
  list(): TrustEntry[] {
    return [...this.#entries.values()].sort((a, b) => a.firstSeen.localeCompare(b.firstSeen)).map(copy);
  }

  /**
   * Accepts the key whose fingerprint is `fingerprintOrPrefix` (or starts with it, at least 8
   * characters), in `role` if given. Written to disk before it returns. Throws
   * BOLT_ERR_WIRE_KEY_UNKNOWN when nothing matches, BOLT_ERR_WIRE_KEY_AMBIGUOUS when more than one
   * entry does (or the prefix is too short), BOLT_ERR_WIRE_TRUST_IO when the write fails.
   */
  accept(fingerprintOrPrefix: string, role?: TrustRole): TrustEntry {
    return this.#decide(fingerprintOrPrefix, role, 'accepted');
  }

  /** Rejects a key like `accept` accepts it; a rejected key is refused even under autoAccept. */
  reject(fingerprintOrPrefix: string, role?: TrustRole): TrustEntry {
    return this.#decide(fingerprintOrPrefix, role, 'rejected');
  }

  /** Writes pending changes now. Throws BOLT_ERR_WIRE_TRUST_IO if the write fails. */
  flush(): void {
    clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    if (!this.#dirty) return;
    writeFile(this.file, [...this.#entries.values()]);
    this.#dirty = false;
  }

  /** Writes pending changes and stops the write timer. Later handshakes still update memory only. */
  close(): void {
    this.flush();
    this.#closed = true;
  }

  /**
   * Calls `listener` after a key is rejected (and written). Every endpoint that authorizes peers
   * with this store listens, so a rejected key loses its open sessions everywhere, not only where
   * the operator's request arrived. Returns the function that stops listening.
   */
  onRejected(listener: (entry: TrustEntry) => void): () => void {
    this.#rejectListeners.add(listener);
    return () => this.#rejectListeners.delete(listener);
  }

  #decide(fingerprintOrPrefix: string, role: TrustRole | undefined, state: 'accepted' | 'rejected'): TrustEntry {
    const entry = this.#find(fingerprintOrPrefix, role);
    entry.state = state;
    entry.decidedAt = this.#iso();
    this.#dirty = true;
    this.flush();
    if (state === 'rejected') for (const listener of this.#rejectListeners) listener(copy(entry));
    return copy(entry);
  }

  #find(fingerprintOrPrefix: string, role: TrustRole | undefined): TrustEntry {
    const roles: TrustRole[] = role === undefined ? ['client', 'sink'] : [role];
    const exact = roles.map((r) => this.#entries.get(keyOf(fingerprintOrPrefix, r))).filter((e) => e !== undefined);
    let matches = exact;
    if (matches.length === 0) {
      if (fingerprintOrPrefix.length < MIN_FINGERPRINT_PREFIX) {
        throw new BoltError('BOLT_ERR_WIRE_KEY_AMBIGUOUS', `Fingerprint prefix '${fingerprintOrPrefix}' is too short; give at least ${MIN_FINGERPRINT_PREFIX} characters.`, {
          details: { prefix: fingerprintOrPrefix },
        });
      }
      matches = [...this.#entries.values()].filter((e) => e.fingerprint.startsWith(fingerprintOrPrefix) && roles.includes(e.role));
    }
    const [first, ...others] = matches;
    if (first === undefined) {
      throw new BoltError('BOLT_ERR_WIRE_KEY_UNKNOWN', `No ${role ?? 'client or sink'} key has a fingerprint starting with '${fingerprintOrPrefix}'.`, {
        details: { prefix: fingerprintOrPrefix, ...(role !== undefined && { role }) },
      });
    }
    if (others.length > 0) {
      const candidates = matches.map((e) => `${e.fingerprint.slice(0, 12)} (${e.role})`);
      throw new BoltError('BOLT_ERR_WIRE_KEY_AMBIGUOUS', `'${fingerprintOrPrefix}' matches ${matches.length} keys: ${candidates.slice(0, 5).join(', ')}; give more characters or the role.`, {
        details: { prefix: fingerprintOrPrefix, candidates },
      });
    }
    return first;
  }

  #makeRoomForPending(): void {
    let count = 0;
    let oldest: TrustEntry | undefined;
    for (const entry of this.#entries.values()) {
      if (entry.state !== 'pending') continue;
      count++;
      if (oldest === undefined || entry.lastSeen < oldest.lastSeen) oldest = entry;
    }
    if (count >= this.#maxPending && oldest !== undefined) this.#entries.delete(keyOf(oldest.fingerprint, oldest.role));
  }

  #boundedFacts(facts: Record<string, unknown> | undefined): Record<string, unknown> {
    if (facts === undefined) return {};
    const bytes = Buffer.byteLength(JSON.stringify(facts));
    return bytes > this.#maxFactsBytes ? { omitted: bytes } : facts;
  }

  #scheduleFlush(): void {
    this.#dirty = true;
    if (this.#flushTimer !== undefined || this.#closed) return;
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = undefined;
      try {
        this.flush();
      } catch (err) {
        this.#onError(err as BoltError);
      }
    }, this.#flushDelayMs);
    this.#flushTimer.unref();
  }

  #iso(): string {
    return new Date(this.#now()).toISOString();
  }
}

function keyOf(fingerprint: string, role: TrustRole): string {
  return `${role} ${fingerprint}`;
}

function copy(entry: TrustEntry): TrustEntry {
  return { ...entry, labels: { ...entry.labels } };
}

function readFile(file: string): TrustEntry[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new BoltError('BOLT_ERR_WIRE_TRUST_CORRUPT', `Trust list ${file} could not be read: ${(err as Error).message}`, { cause: err, details: { file } });
  }
  const corrupt = (why: string) => new BoltError('BOLT_ERR_WIRE_TRUST_CORRUPT', `Trust list ${file} is corrupt (${why}); it was left as it is.`, { details: { file } });
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw corrupt('not JSON');
  }
  if (!validateFile(parsed)) {
    const first = validateFile.errors?.[0];
    throw corrupt(`${first?.instancePath || '/'} ${first?.message ?? 'is invalid'}`);
  }
  const seen = new Set<string>();
  for (const [i, entry] of parsed.entries()) {
    let actual: string;
    try {
      actual = fingerprintOf(entry.publicKey);
    } catch {
      throw corrupt(`entry ${i} has an invalid publicKey`);
    }
    if (actual !== entry.fingerprint) throw corrupt(`entry ${i}'s fingerprint does not belong to its publicKey`);
    const key = keyOf(entry.fingerprint, entry.role);
    if (seen.has(key)) throw corrupt(`entry ${i} repeats ${entry.fingerprint.slice(0, 12)} as ${entry.role}`);
    seen.add(key);
  }
  return parsed;
}

function writeFile(file: string, entries: TrustEntry[]): void {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    const fd = fs.openSync(tmp, 'w', 0o600);
    try {
      // A temp file left by an earlier crash keeps its mode; make sure it is private.
      fs.fchmodSync(fd, 0o600);
      fs.writeSync(fd, `${JSON.stringify(entries, null, 2)}\n`);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
    syncDirectory(path.dirname(file));
  } catch (cause) {
    throw new BoltError('BOLT_ERR_WIRE_TRUST_IO', `Could not write trust list ${file}: ${(cause as Error).message}`, { cause, details: { file } });
  }
}
