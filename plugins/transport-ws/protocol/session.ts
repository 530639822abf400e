/**
 * A session: what the handshake agreed on, used to seal every later frame of one connection.
 *
 * Frame format (a JSON object, one per WebSocket message):
 *
 *   { "sid": <session id>, "seq": <n>, "mac": <base64url HMAC-SHA256>, "body": <envelope JSON text> }
 *
 * The envelope travels as a string so the MAC covers the exact bytes the sender wrote; nothing
 * has to be re-serialized to check it. The MAC is keyed with the key of the frame's direction and
 * covers the session id, the direction and the sequence number as well as the body, so a frame
 * cannot be moved to another connection, reflected back to its sender, replayed, dropped or
 * reordered without the receiver noticing.
 */

import { createHmac, timingSafeEqual } from 'node:crypto';
import { BoltError, type ErrorCode } from '../../../plugin-sdk/src/errors.ts';
import { WIRE_LIMITS, type HelloMessage, type PeerRole, type WelcomeMessage } from '../../../plugin-sdk/src/schemas/wire.ts';

/** Who the other end proved to be during the handshake. */
export interface PeerIdentity {
  /** The role it claimed and signed into the transcript. */
  readonly role: PeerRole;
  /** Its static Ed25519 public key, base64 of the raw 32 bytes. */
  readonly publicKey: string;
  /** base64url SHA-256 of the raw public key. */
  readonly fingerprint: string;
  /** The connecting peer's hello (labels, facts, capabilities); undefined on the connecting side. */
  readonly hello: HelloMessage | undefined;
}

/** Which end of the handshake this session belongs to: the side that sent `hello`, or the one that answered. */
export type SessionSide = 'initiator' | 'responder';

/** Everything a Session needs; produced by the handshake. */
export interface SessionParams {
  id: string;
  side: SessionSide;
  peer: PeerIdentity;
  /** HMAC key for frames initiator → responder. */
  initiatorKey: Buffer;
  /** HMAC key for frames responder → initiator. */
  responderKey: Buffer;
  /** The welcome that completed the handshake. */
  welcome: WelcomeMessage;
  /** Frames larger than this are refused before parsing. */
  maxFrameBytes?: number;
}

const MAC_LABEL = Buffer.from('bolt/1 frame\n');
const DIRECTION_BYTE: Record<SessionSide, number> = { initiator: 1, responder: 2 };
const FRAME_KEYS = ['body', 'mac', 'seq', 'sid'];
const MAC_BASE64URL = /^[A-Za-z0-9_-]{43}$/;

/**
 * Seals outgoing frames and opens incoming ones for one connection.
 *
 * Guarantees: `open` returns a body only if its MAC verifies under this session's key for the
 * peer's direction and its sequence number is exactly the next expected one (0, 1, 2, ...).
 * After the first frame that fails, the session is broken: every later `open` throws
 * BOLT_ERR_WIRE_SESSION_BROKEN, so a peer cannot probe it; the transport should disconnect.
 */
export class Session {
  readonly id: string;
  readonly side: SessionSide;
  readonly peer: PeerIdentity;
  /** The welcome that completed the handshake: heartbeat interval, server time, sink to use. */
  readonly welcome: WelcomeMessage;
  readonly #sendKey: Buffer;
  readonly #recvKey: Buffer;
  readonly #sendDirection: number;
  readonly #recvDirection: number;
  readonly #sid: Buffer;
  readonly #maxFrameBytes: number;
  #sendSeq = 0;
  #recvSeq = 0;
  #broken = false;

  constructor(params: SessionParams) {
    this.id = params.id;
    this.side = params.side;
    this.peer = params.peer;
    this.welcome = params.welcome;
    const peerSide: SessionSide = params.side === 'initiator' ? 'responder' : 'initiator';
    this.#sendKey = params.side === 'initiator' ? params.initiatorKey : params.responderKey;
    this.#recvKey = params.side === 'initiator' ? params.responderKey : params.initiatorKey;
    this.#sendDirection = DIRECTION_BYTE[params.side];
    this.#recvDirection = DIRECTION_BYTE[peerSide];
    this.#sid = Buffer.from(params.id, 'utf8');
    this.#maxFrameBytes = params.maxFrameBytes ?? WIRE_LIMITS.maxFrameBytes;
  }

  /** Frames sealed so far (the sequence number of the next one). */
  get sent(): number {
    return this.#sendSeq;
  }

  /** Frames opened so far (the sequence number expected next). */
  get received(): number {
    return this.#recvSeq;
  }

  /** True once a frame failed to open; the session then refuses everything. */
  get broken(): boolean {
    return this.#broken;
  }

  /** Serializes `message` and seals it into a frame for the peer. Each call uses the next sequence number. */
  seal(message: object): string {
    return this.sealText(JSON.stringify(message));
  }

  /**
   * Seals an envelope that is already JSON text. A broadcast serializes its message once and seals
   * the same text for every session: one HMAC per peer, no per-peer JSON.stringify.
   */
  sealText(body: string): string {
    const seq = this.#sendSeq++;
    const mac = this.#mac(this.#sendKey, this.#sendDirection, seq, body).toString('base64url');
    return JSON.stringify({ sid: this.id, seq, mac, body });
  }

  /**
   * Verifies a frame from the peer and returns its body (envelope JSON text, for the decoder).
   * Throws BOLT_ERR_WIRE_TOO_LARGE, _MALFORMED, _WRONG_SESSION, _BAD_MAC, _OUT_OF_SEQUENCE or
   * _SESSION_BROKEN; after any of them the session is broken.
   */
  open(frame: string | Uint8Array): string {
    if (this.#broken) throw new BoltError('BOLT_ERR_WIRE_SESSION_BROKEN', `Session ${this.id} refused a frame after an earlier one failed.`);
    try {
      return this.#open(frame);
    } catch (err) {
      this.#broken = true;
      throw err;
    }
  }

  #open(frame: string | Uint8Array): string {
    const size = typeof frame === 'string' ? Buffer.byteLength(frame) : frame.byteLength;
    if (size > this.#maxFrameBytes) fail('BOLT_ERR_WIRE_TOO_LARGE', `Frame of ${size} bytes exceeds the limit of ${this.#maxFrameBytes}.`);
    const text = typeof frame === 'string' ? frame : Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength).toString('utf8');
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      fail('BOLT_ERR_WIRE_MALFORMED', 'Frame is not JSON.');
    }
    if (!isFrame(parsed)) fail('BOLT_ERR_WIRE_MALFORMED', 'Frame is not { sid, seq, mac, body }.');
    if (parsed.sid !== this.id) fail('BOLT_ERR_WIRE_WRONG_SESSION', `Frame belongs to another session than ${this.id}.`);
    // Authenticate first, then judge the sequence number: only a frame that really came from the
    // peer (a replay or reorder) is reported as out of sequence.
    const expected = this.#mac(this.#recvKey, this.#recvDirection, parsed.seq, parsed.body);
    if (!timingSafeEqual(expected, Buffer.from(parsed.mac, 'base64url'))) fail('BOLT_ERR_WIRE_BAD_MAC', `Frame ${parsed.seq} failed its MAC check.`);
    if (parsed.seq !== this.#recvSeq) fail('BOLT_ERR_WIRE_OUT_OF_SEQUENCE', `Frame ${parsed.seq} arrived where ${this.#recvSeq} was expected.`);
    this.#recvSeq++;
    return parsed.body;
  }

  #mac(key: Buffer, direction: number, seq: number, body: string): Buffer {
    // Every field before the body has a fixed length, so the concatenation is unambiguous.
    const header = Buffer.alloc(9);
    header[0] = direction;
    header.writeBigUInt64BE(BigInt(seq), 1);
    return createHmac('sha256', key).update(MAC_LABEL).update(this.#sid).update(header).update(body, 'utf8').digest();
  }
}

interface Frame {
  sid: string;
  seq: number;
  mac: string;
  body: string;
}

function isFrame(value: unknown): value is Frame {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const keys = Object.keys(value).sort();
  if (keys.length !== FRAME_KEYS.length || keys.some((k, i) => k !== FRAME_KEYS[i])) return false;
  const f = value as Record<string, unknown>;
  return (
    typeof f.sid === 'string' &&
    f.sid.length <= 64 &&
    Number.isSafeInteger(f.seq) &&
    (f.seq as number) >= 0 &&
    typeof f.mac === 'string' &&
    MAC_BASE64URL.test(f.mac) &&
    typeof f.body === 'string'
  );
}

function fail(code: ErrorCode, message: string): never {
  throw new BoltError(code, message);
}
