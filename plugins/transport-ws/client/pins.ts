/**
 * The client's pin store, `<dataDir>/pins.json`: which key each server (and the sink it names)
 * must present.
 *
 *   { "ws://10.0.0.1:7700": { "server": "<base64 key>", "sink": "<base64 key>" } }
 *
 * Trust on first use: the first key a server proves it holds is pinned, and so is the sink key
 * that server's welcome names. From then on any other key fails with
 * BOLT_ERR_WIRE_SERVER_KEY_CHANGED, and this module never replaces a pin: an operator who expects
 * the change removes the entry (or the file). A key given up front (`--server-key`, the base64
 * key or its fingerprint) must match as well, from the very first contact.
 *
 * The file is mode 0600 and rewritten atomically (temp file, fsync, rename, fsync of the
 * directory), so a crash leaves the old pins or the new ones, never half a file.
 */

import fs from 'node:fs';
import path from 'node:path';
import { BoltError } from '../../../plugin-sdk/src/errors.ts';
import { decodeKeyBytes, fingerprint, syncDirectory } from '../protocol/identity.ts';

/** File name of the pin store inside the data directory. */
export const PINS_FILE = 'pins.json';

/** The roles whose keys a client pins. */
export type PinRole = 'server' | 'sink';

/** Pinned keys of one server origin (base64 of the raw 32-byte Ed25519 keys). */
export interface PinEntry {
  server?: string;
  sink?: string;
}

/** A key the operator gave up front: the base64 key itself, or only its fingerprint. */
export interface ExpectedKey {
  /** Set when the base64 key was given. */
  publicKey: string | undefined;
  fingerprint: string;
}

const FINGERPRINT_PATTERN = /^[A-Za-z0-9_-]{43}$/;
const MAX_ORIGINS = 10_000;

/** The pin-store key of a URL: its origin, e.g. `ws://10.0.0.1:7700` (path and query dropped). */
export function pinOrigin(url: string): string {
  return new URL(url).origin;
}

/**
 * Parses `--server-key`: the base64 form of the raw key (44 characters) or its fingerprint
 * (43 base64url characters). Throws BOLT_ERR_WIRE_BAD_KEY for anything else.
 */
export function parseExpectedKey(value: string): ExpectedKey {
  const text = value.trim();
  if (FINGERPRINT_PATTERN.test(text)) return { publicKey: undefined, fingerprint: text };
  decodeKeyBytes(text);
  return { publicKey: text, fingerprint: fingerprint(text) };
}

/**
 * Throws BOLT_ERR_WIRE_SERVER_KEY_CHANGED unless `presentedKey` is the pinned key (when one is
 * pinned) and matches the up-front expectation (when one is given).
 */
export function checkPeerKey(role: PinRole, presentedKey: string, pinned: string | undefined, expected?: ExpectedKey): void {
  if (pinned !== undefined && presentedKey !== pinned) throw keyChanged(role, presentedKey, fingerprint(pinned), 'pinned');
  if (expected !== undefined && fingerprint(presentedKey) !== expected.fingerprint) {
    throw keyChanged(role, presentedKey, expected.fingerprint, 'expected (--server-key)');
  }
}

/**
 * The pins of one data directory. One store per file: the store keeps the pins in memory and
 * rewrites the whole file on each new pin, so two processes must not share a data directory.
 */
export class PinStore {
  /** Absolute path of pins.json. */
  readonly file: string;
  readonly #pins: Map<string, PinEntry>;

  /**
   * Reads `<dataDir>/pins.json` (a missing file is an empty store). Throws
   * BOLT_ERR_WIRE_PINS_CORRUPT when the file is not a valid pin map (it is left untouched), and
   * BOLT_ERR_WIRE_PINS_IO when it cannot be read.
   */
  static open(dataDir: string): PinStore {
    return new PinStore(path.join(dataDir, PINS_FILE));
  }

  private constructor(file: string) {
    this.file = file;
    this.#pins = readPins(file);
  }

  /** The pinned key of `role` at `origin`, if any. */
  get(origin: string, role: PinRole): string | undefined {
    return this.#pins.get(origin)?.[role];
  }

  /** A copy of every pin, origin → entry. */
  entries(): Record<string, PinEntry> {
    return Object.fromEntries([...this.#pins].map(([origin, entry]) => [origin, { ...entry }]));
  }

  /** Throws BOLT_ERR_WIRE_SERVER_KEY_CHANGED unless `presentedKey` fits the pin and `expected`. Writes nothing. */
  check(origin: string, role: PinRole, presentedKey: string, expected?: ExpectedKey): void {
    checkPeerKey(role, presentedKey, this.get(origin, role), expected);
  }

  /**
   * Pins `publicKey` for `role` at `origin` if nothing is pinned there yet, durably before it
   * returns. Returns true if it wrote a new pin, false if that very key was already pinned.
   * Throws BOLT_ERR_WIRE_SERVER_KEY_CHANGED if another key is pinned (the pin stays as it is),
   * BOLT_ERR_WIRE_BAD_KEY for a malformed key, BOLT_ERR_WIRE_PINS_IO if the file cannot be
   * written (the key is then not pinned).
   */
  pin(origin: string, role: PinRole, publicKey: string): boolean {
    decodeKeyBytes(publicKey);
    const current = this.get(origin, role);
    if (current === publicKey) return false;
    if (current !== undefined) throw keyChanged(role, publicKey, fingerprint(current), 'pinned');
    if (!this.#pins.has(origin) && this.#pins.size >= MAX_ORIGINS) {
      throw new BoltError('BOLT_ERR_WIRE_PINS_IO', `pins.json already holds ${MAX_ORIGINS} origins; not pinning ${origin}.`);
    }
    const next = new Map(this.#pins);
    next.set(origin, { ...next.get(origin), [role]: publicKey });
    writePins(this.file, next);
    this.#pins.set(origin, next.get(origin)!);
    return true;
  }
}

function keyChanged(role: PinRole, presentedKey: string, pinnedFingerprint: string, what: string): BoltError {
  const presented = fingerprint(presentedKey);
  return new BoltError(
    'BOLT_ERR_WIRE_SERVER_KEY_CHANGED',
    `The ${role} presented key ${presented.slice(0, 12)}, but ${pinnedFingerprint.slice(0, 12)} is ${what}; refusing it.`,
    { details: { role, presented, pinned: pinnedFingerprint } },
  );
}

function readPins(file: string): Map<string, PinEntry> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
    throw new BoltError('BOLT_ERR_WIRE_PINS_IO', `Could not read ${file}.`, { cause: err, details: { file } });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (cause) {
    throw corrupt(file, 'it is not JSON', cause);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw corrupt(file, 'it is not a JSON object');
  const pins = new Map<string, PinEntry>();
  for (const [origin, entry] of Object.entries(parsed)) {
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw corrupt(file, `the entry of ${JSON.stringify(origin.slice(0, 100))} is not an object`);
    const clean: PinEntry = {};
    for (const [role, key] of Object.entries(entry as Record<string, unknown>)) {
      if (role !== 'server' && role !== 'sink') throw corrupt(file, `${JSON.stringify(origin.slice(0, 100))} has an unknown role ${JSON.stringify(role.slice(0, 20))}`);
      if (typeof key !== 'string') throw corrupt(file, `the ${role} key of ${JSON.stringify(origin.slice(0, 100))} is not a string`);
      try {
        decodeKeyBytes(key);
      } catch (cause) {
        throw corrupt(file, `the ${role} key of ${JSON.stringify(origin.slice(0, 100))} is not a base64 32-byte key`, cause);
      }
      clean[role] = key;
    }
    pins.set(origin, clean);
  }
  return pins;
}

function corrupt(file: string, why: string, cause?: unknown): BoltError {
  return new BoltError('BOLT_ERR_WIRE_PINS_CORRUPT', `${file} is not a valid pin store: ${why}.`, { cause, details: { file } });
}

function writePins(file: string, pins: Map<string, PinEntry>): void {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    const fd = fs.openSync(tmp, 'w', 0o600);
    try {
      fs.writeSync(fd, `${JSON.stringify(Object.fromEntries(pins), null, 2)}\n`);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    // The mode argument of open() is filtered by the umask; make it exact.
    fs.chmodSync(tmp, 0o600);
    fs.renameSync(tmp, file);
    syncDirectory(path.dirname(file));
  } catch (cause) {
    try {
      fs.rmSync(tmp, { force: true });
    } catch {
      // The directory itself is unusable; there is no temp file to remove.
    }
    throw new BoltError('BOLT_ERR_WIRE_PINS_IO', `Could not write ${file}.`, { cause, details: { file } });
  }
}
