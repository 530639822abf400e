/**
 * A host's identity: one Ed25519 key pair, created on first start and kept in the data directory.
 *
 * On the wire a public key is the standard base64 of its raw 32 bytes. Decoding is strict (exactly
 * 44 characters that re-encode to themselves) because accept lists and pins compare these strings:
 * Node's lenient base64 decoder would let two different strings name the same key.
 */

import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { BoltError } from '../../../plugin-sdk/src/errors.ts';

/** A host's key pair and the forms of its public key that peers see. */
export interface Identity {
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  /** Base64 of the raw 32-byte public key, as sent in `hello` and `challenge`. */
  readonly publicKeyBase64: string;
  /** base64url SHA-256 of the raw public key (43 characters): what accept lists and pins compare. */
  readonly fingerprint: string;
  /** The first 12 characters of the fingerprint, for tables and logs. */
  readonly shortFingerprint: string;
}

/** File name of the private key (PKCS#8 PEM) inside the identity directory. */
export const PRIVATE_KEY_FILE = 'ed25519.key';
/** Directory under the data directory that holds the key. */
export const IDENTITY_DIR = 'identity';

const RAW_KEY_BASE64 = /^[A-Za-z0-9+/]{43}=$/;

/** Creates a fresh identity in memory (tests, and the first start of a host). */
export function generateIdentity(): Identity {
  const { privateKey } = generateKeyPairSync('ed25519');
  return identityFrom(privateKey);
}

/**
 * Loads the host's identity from `<dataDir>/identity/ed25519.key`, creating it on first use.
 *
 * Guarantees: the directory is mode 0700 and the file 0600; a key file that others can read is
 * refused (BOLT_ERR_WIRE_IDENTITY_INSECURE) rather than silently used; two processes starting at
 * once end up with the same key (the file appears atomically, the loser reads the winner's);
 * an unreadable or foreign file gives BOLT_ERR_WIRE_IDENTITY_UNREADABLE and is never overwritten.
 */
export function loadOrCreateIdentity(dataDir: string): Identity {
  const dir = path.join(dataDir, IDENTITY_DIR);
  const file = path.join(dir, PRIVATE_KEY_FILE);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  // mkdir's mode is filtered by the umask and ignored for an existing directory.
  fs.chmodSync(dir, 0o700);
  if (!fs.existsSync(file)) createKeyFile(file);
  return readKeyFile(file);
}

function createKeyFile(file: string): void {
  const { privateKey } = generateKeyPairSync('ed25519');
  createSecretFile(file, privateKey.export({ format: 'pem', type: 'pkcs8' }).toString());
}

/**
 * Creates `file` (mode 0600) holding `content`, unless it exists. A private temp file is written,
 * flushed and linked into place: link() fails if the file already exists, so a concurrent start
 * never replaces a secret (the first one wins), and a reader never sees half a file.
 */
export function createSecretFile(file: string, content: string): void {
  const tmp = `${file}.${process.pid}.${Date.now()}.tmp`;
  const fd = fs.openSync(tmp, 'wx', 0o600);
  try {
    fs.writeSync(fd, content);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  try {
    fs.linkSync(tmp, file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  } finally {
    fs.unlinkSync(tmp);
  }
  syncDirectory(path.dirname(file));
}

function readKeyFile(file: string): Identity {
  if (process.platform !== 'win32') {
    const mode = fs.statSync(file).mode & 0o777;
    if ((mode & 0o077) !== 0) {
      throw new BoltError('BOLT_ERR_WIRE_IDENTITY_INSECURE', `Host key ${file} has mode ${mode.toString(8)}; run: chmod 600 ${file}`, {
        details: { file, mode },
      });
    }
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(fs.readFileSync(file));
  } catch (cause) {
    throw new BoltError('BOLT_ERR_WIRE_IDENTITY_UNREADABLE', `Host key ${file} could not be read as a private key.`, { cause, details: { file } });
  }
  if (privateKey.asymmetricKeyType !== 'ed25519') {
    throw new BoltError('BOLT_ERR_WIRE_IDENTITY_UNREADABLE', `Host key ${file} is a ${privateKey.asymmetricKeyType} key, not Ed25519.`, { details: { file } });
  }
  return identityFrom(privateKey);
}

/** Makes a new or renamed directory entry durable; skipped where a directory cannot be fsync'd. */
export function syncDirectory(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // Windows cannot open or fsync a directory; the file itself was already flushed.
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

function identityFrom(privateKey: KeyObject): Identity {
  const publicKey = createPublicKey(privateKey);
  const publicKeyBase64 = exportPublicKey(publicKey);
  const fp = fingerprint(publicKeyBase64);
  return { privateKey, publicKey, publicKeyBase64, fingerprint: fp, shortFingerprint: fp.slice(0, 12) };
}

/** DER SubjectPublicKeyInfo of an Ed25519 or X25519 key: a fixed 12-byte header, then the raw 32 bytes. */
const SPKI_LENGTH = 44;

/**
 * Raw 32 bytes of an Ed25519 or X25519 public key. Read from the DER export: on Node 20 the JWK
 * export of a freshly generated key can deadlock the thread when garbage collection runs during
 * it (seen after a few thousand key pairs), which the DER path does not.
 */
export function rawPublicKey(key: KeyObject): Buffer {
  const der = (key.type === 'private' ? createPublicKey(key) : key).export({ format: 'der', type: 'spki' });
  if (der.length !== SPKI_LENGTH) throw new BoltError('BOLT_ERR_WIRE_BAD_KEY', 'Key is not an Ed25519 or X25519 public key.');
  return Buffer.from(der.subarray(SPKI_LENGTH - 32));
}

/** Base64 of the raw 32-byte public key. */
export function exportPublicKey(key: KeyObject): string {
  return rawPublicKey(key).toString('base64');
}

/**
 * Decodes a base64 raw 32-byte key strictly. Throws BOLT_ERR_WIRE_BAD_KEY for anything that is not
 * the canonical 44-character encoding of exactly 32 bytes.
 */
export function decodeKeyBytes(base64: string): Buffer {
  if (typeof base64 !== 'string' || !RAW_KEY_BASE64.test(base64)) {
    throw new BoltError('BOLT_ERR_WIRE_BAD_KEY', 'Expected the base64 form of exactly 32 bytes (44 characters).');
  }
  const raw = Buffer.from(base64, 'base64');
  // The last character carries 2 unused bits; only the encoding with them zero is accepted.
  if (raw.length !== 32 || raw.toString('base64') !== base64) {
    throw new BoltError('BOLT_ERR_WIRE_BAD_KEY', 'Key is not in canonical base64 (non-zero padding bits).');
  }
  return raw;
}

/** Imports an Ed25519 public key from base64 of its raw 32 bytes (strict, see decodeKeyBytes). */
export function importPublicKey(base64: string): KeyObject {
  return importRaw(decodeKeyBytes(base64), 'Ed25519');
}

/** Imports a key of the given curve from its raw 32 bytes. */
export function importRaw(raw: Buffer, crv: 'Ed25519' | 'X25519'): KeyObject {
  try {
    return createPublicKey({ key: { kty: 'OKP', crv, x: raw.toString('base64url') }, format: 'jwk' });
  } catch (cause) {
    throw new BoltError('BOLT_ERR_WIRE_BAD_KEY', `Not a valid ${crv} public key.`, { cause });
  }
}

/** base64url SHA-256 of the raw public key (43 characters). Accepts a KeyObject or its base64 form. */
export function fingerprint(publicKey: KeyObject | string): string {
  const raw = typeof publicKey === 'string' ? decodeKeyBytes(publicKey) : rawPublicKey(publicKey);
  return createHash('sha256').update(raw).digest('base64url');
}
