/**
 * The handshake: both ends prove they hold their static Ed25519 keys, and agree on session keys.
 *
 *   initiator (client or sink)                         responder (server or sink)
 *   hello { role, publicKey, nonce, ephemeralKey, host, labels, ... }  ->
 *          <-  challenge { role, publicKey, nonce, ephemeralKey, signature }
 *   auth { signature }                                 ->
 *          <-  welcome { sessionId, serverTime, ..., confirm }   or   error { code }
 *
 * The transcript is the canonical JSON of the hello and of the challenge without its signature,
 * so it covers both nonces, both ephemeral X25519 keys, both static keys, both claimed roles, the
 * protocol version and the initiator's labels and facts. Each side signs the transcript's SHA-256
 * under its own label ("client" or "server" signature), so one side's signature can never be
 * passed off as the other's, and nothing signed here can ever verify as a command (command.ts uses
 * another label). Fresh nonces on both sides make every signature good for one connection only.
 *
 * Session keys: X25519 of the two ephemeral keys (forward secrecy: recording the traffic and later
 * stealing a static key does not open old sessions), then HKDF-SHA256 salted with the transcript
 * hash into one MAC key per direction, a key for the welcome's `confirm` MAC, and a session id.
 *
 * The welcome completes the handshake on both sides, so a refusal after `auth` (a key not on the
 * accept list) can still travel as a plain `error` that the initiator understands. An `error` is
 * unauthenticated and can only end the handshake, which anyone on the path could do anyway.
 *
 * Both state machines are pure: they do no I/O and keep no timers. The transport sends what they
 * return as JSON, feeds them what it received (already checked by the decoder), and enforces a
 * deadline. Frames after the welcome go through the returned Session.
 */

import { createHash, createHmac, diffieHellman, generateKeyPairSync, hkdfSync, randomBytes, randomUUID, sign, timingSafeEqual, verify, type KeyObject } from 'node:crypto';
import { BoltError } from '../../../plugin-sdk/src/errors.ts';
import {
  WIRE_VERSION,
  type AuthMessage,
  type ChallengeMessage,
  type HelloMessage,
  type WelcomeMessage,
  type WireMessage,
} from '../../../plugin-sdk/src/schemas/wire.ts';
import { canonicalJson } from './canonical-json.ts';
import { decodeKeyBytes, fingerprint, importPublicKey, importRaw, exportPublicKey, type Identity } from './identity.ts';
import { Session, type PeerIdentity } from './session.ts';

/** What one step of a handshake produced: a message to send, and the Session once it is done. */
export interface HandshakeStep {
  send: HelloMessage | ChallengeMessage | AuthMessage | WelcomeMessage | null;
  /** Set on the step that completes the handshake (both sides: when the welcome is sent or received). */
  session: Session | null;
}

/** A handshake state machine. */
export interface Handshake {
  /**
   * Advances with the peer's message (nothing for the initiator's first step). Throws a BoltError
   * on any failure, after which every further call throws BOLT_ERR_WIRE_HANDSHAKE_FAILED.
   */
  next(message?: WireMessage): HandshakeStep;
}

export interface ClientHandshakeOptions {
  identity: Identity;
  /** The role this host connects as. */
  role: 'client' | 'sink';
  /** The role the endpoint must prove: 'server' for the server's /agent, 'sink' for a sink's /ingest. */
  expectRole: 'server' | 'sink';
  /**
   * The endpoint's pinned public key (base64). When set, any other key fails with
   * BOLT_ERR_WIRE_SERVER_KEY_CHANGED. When absent (first contact), the key is trusted and the
   * caller should pin `session.peer.publicKey`.
   */
  pinnedKey?: string;
  /** What this host tells about itself; signed into the transcript with the rest of the hello. */
  host: string;
  labels?: Record<string, string>;
  facts?: Record<string, unknown>;
  capabilities?: string[];
  /** A sink's ingest URL, told to the server so it can pass it on to clients. */
  endpoint?: string;
  agentVersion?: string;
  maxFrameBytes?: number;
}

export interface ServerHandshakeOptions {
  identity: Identity;
  /** The role this endpoint answers as. */
  role: 'server' | 'sink';
  /** The roles this endpoint accepts from connecting peers, e.g. ['client'] on /agent. */
  acceptRoles: readonly ('client' | 'sink')[];
  /**
   * Called once the peer has proved it holds its key: true to accept it in the role it claimed.
   * Accept lists should be keyed by fingerprint AND role, so that a client's key is never
   * accepted as a sink. False fails with BOLT_ERR_WIRE_PEER_NOT_ACCEPTED (details: fingerprint,
   * role), which the transport can record as a key waiting for `bolt-core keys accept`.
   */
  authorize(peer: PeerIdentity): boolean;
  /** How often the peer should send heartbeats; told in the welcome. Default 5000. */
  heartbeatIntervalMs?: number;
  /** Where clients stream events and metrics, and the sink's key to pin; told in the welcome. */
  sink?: { url: string; publicKey: string };
  /** The server's clock, for the welcome's serverTime. Default Date.now. */
  now?: () => number;
  maxFrameBytes?: number;
}

const CLIENT_SIGNATURE_LABEL = Buffer.from('bolt/1 handshake client-signature\n');
const SERVER_SIGNATURE_LABEL = Buffer.from('bolt/1 handshake server-signature\n');
const SESSION_KEYS_INFO = Buffer.from('bolt/1 session keys');
const WELCOME_LABEL = Buffer.from('bolt/1 welcome\n');

/** Starts the connecting side (a client or a sink connecting to the server). */
export function createClientHandshake(opts: ClientHandshakeOptions): Handshake {
  const ephemeral = generateKeyPairSync('x25519');
  let state:
    | { name: 'start' }
    | { name: 'await-challenge'; hello: HelloMessage }
    | { name: 'await-welcome'; keys: DerivedKeys; peer: PeerIdentity }
    | { name: 'done' | 'failed' } = { name: 'start' };

  function step(message: WireMessage | undefined): HandshakeStep {
    switch (state.name) {
      case 'start': {
        if (message !== undefined) throw outOfOrder(message, 'nothing (the client speaks first)');
        const hello: HelloMessage = {
          v: WIRE_VERSION,
          type: 'hello',
          id: randomUUID(),
          role: opts.role,
          publicKey: opts.identity.publicKeyBase64,
          nonce: randomBytes(32).toString('base64'),
          ephemeralKey: exportPublicKey(ephemeral.publicKey),
          host: opts.host,
          ...(opts.agentVersion !== undefined && { agentVersion: opts.agentVersion }),
          ...(opts.labels !== undefined && { labels: opts.labels }),
          ...(opts.facts !== undefined && { facts: opts.facts }),
          ...(opts.capabilities !== undefined && { capabilities: opts.capabilities }),
          ...(opts.endpoint !== undefined && { endpoint: opts.endpoint }),
        };
        state = { name: 'await-challenge', hello };
        return { send: hello, session: null };
      }
      case 'await-challenge': {
        if (message?.type !== 'challenge') throw outOfOrder(message, 'challenge');
        checkVersion(message.v);
        decodeKeyBytes(message.nonce);
        if (message.role !== opts.expectRole) {
          throw new BoltError('BOLT_ERR_WIRE_ROLE_REFUSED', `Endpoint answered as '${message.role}', expected '${opts.expectRole}'.`, {
            details: { role: message.role, expected: opts.expectRole },
          });
        }
        if (opts.pinnedKey !== undefined && message.publicKey !== opts.pinnedKey) {
          const presented = fingerprint(message.publicKey);
          const pinned = fingerprint(opts.pinnedKey);
          throw new BoltError('BOLT_ERR_WIRE_SERVER_KEY_CHANGED', `The ${opts.expectRole} presented key ${presented.slice(0, 12)}, but ${pinned.slice(0, 12)} is pinned.`, {
            details: { presented, pinned },
          });
        }
        const { signature, ...unsigned } = message;
        const transcript = transcriptHash(state.hello, unsigned);
        checkSignature(SERVER_SIGNATURE_LABEL, transcript, importPublicKey(message.publicKey), signature, opts.expectRole);
        const keys = deriveKeys(ephemeral.privateKey, message.ephemeralKey, transcript);
        const auth: AuthMessage = {
          v: WIRE_VERSION,
          type: 'auth',
          id: randomUUID(),
          signature: sign(null, Buffer.concat([CLIENT_SIGNATURE_LABEL, transcript]), opts.identity.privateKey).toString('base64'),
        };
        state = { name: 'await-welcome', keys, peer: { role: message.role, publicKey: message.publicKey, fingerprint: fingerprint(message.publicKey), hello: undefined } };
        return { send: auth, session: null };
      }
      case 'await-welcome': {
        if (message?.type !== 'welcome') throw outOfOrder(message, 'welcome');
        checkVersion(message.v);
        const { confirm, ...rest } = message;
        const presented = Buffer.from(confirm, 'base64url');
        const expected = welcomeMac(state.keys.welcomeKey, rest);
        if (presented.length !== expected.length || !timingSafeEqual(presented, expected) || rest.sessionId !== state.keys.id) {
          throw new BoltError('BOLT_ERR_WIRE_HANDSHAKE_FAILED', 'The welcome does not confirm the keys of this handshake (altered, or from another connection).');
        }
        const session = new Session({ ...state.keys, side: 'initiator', peer: state.peer, welcome: message, ...frameLimit(opts.maxFrameBytes) });
        state = { name: 'done' };
        return { send: null, session };
      }
      default:
        throw finished(state.name === 'failed');
    }
  }

  return failOnThrow(step, () => {
    state = { name: 'failed' };
  });
}

/** Starts the answering side (the server's /agent, or a sink's /ingest). */
export function createServerHandshake(opts: ServerHandshakeOptions): Handshake {
  let state:
    | { name: 'await-hello' }
    | { name: 'await-auth'; hello: HelloMessage; transcript: Buffer; peerKey: KeyObject; keys: DerivedKeys }
    | { name: 'done' | 'failed' } = { name: 'await-hello' };

  function step(message: WireMessage | undefined): HandshakeStep {
    switch (state.name) {
      case 'await-hello': {
        if (message?.type !== 'hello') throw outOfOrder(message, 'hello');
        checkVersion(message.v);
        // The role check comes before any work, and the role is in the signed transcript, so a
        // client key can neither claim another role nor have it changed on the way.
        if (!opts.acceptRoles.includes(message.role)) {
          throw new BoltError('BOLT_ERR_WIRE_ROLE_REFUSED', `This endpoint accepts ${opts.acceptRoles.join(', ')}; the peer claims '${message.role}'.`, {
            details: { role: message.role, accepted: [...opts.acceptRoles] },
          });
        }
        const peerKey = importPublicKey(message.publicKey);
        decodeKeyBytes(message.nonce);
        const ephemeral = generateKeyPairSync('x25519');
        const unsigned: Omit<ChallengeMessage, 'signature'> = {
          v: WIRE_VERSION,
          type: 'challenge',
          id: randomUUID(),
          role: opts.role,
          publicKey: opts.identity.publicKeyBase64,
          nonce: randomBytes(32).toString('base64'),
          ephemeralKey: exportPublicKey(ephemeral.publicKey),
        };
        const transcript = transcriptHash(message, unsigned);
        const keys = deriveKeys(ephemeral.privateKey, message.ephemeralKey, transcript);
        const signature = sign(null, Buffer.concat([SERVER_SIGNATURE_LABEL, transcript]), opts.identity.privateKey).toString('base64');
        state = { name: 'await-auth', hello: message, transcript, peerKey, keys };
        return { send: { ...unsigned, signature }, session: null };
      }
      case 'await-auth': {
        if (message?.type !== 'auth') throw outOfOrder(message, 'auth');
        checkVersion(message.v);
        const { hello, transcript, peerKey, keys } = state;
        checkSignature(CLIENT_SIGNATURE_LABEL, transcript, peerKey, message.signature, hello.role);
        const peer: PeerIdentity = { role: hello.role, publicKey: hello.publicKey, fingerprint: fingerprint(hello.publicKey), hello };
        if (!opts.authorize(peer)) {
          throw new BoltError('BOLT_ERR_WIRE_PEER_NOT_ACCEPTED', `Key ${peer.fingerprint.slice(0, 12)} is not accepted as a ${peer.role}.`, {
            details: { fingerprint: peer.fingerprint, role: peer.role, host: hello.host },
          });
        }
        const unconfirmed: Omit<WelcomeMessage, 'confirm'> = {
          v: WIRE_VERSION,
          type: 'welcome',
          id: randomUUID(),
          sessionId: keys.id,
          serverTime: (opts.now ?? Date.now)(),
          heartbeatIntervalMs: opts.heartbeatIntervalMs ?? 5000,
          ...(opts.sink !== undefined && { sink: opts.sink }),
        };
        const welcome: WelcomeMessage = { ...unconfirmed, confirm: welcomeMac(keys.welcomeKey, unconfirmed).toString('base64url') };
        state = { name: 'done' };
        return { send: welcome, session: new Session({ ...keys, side: 'responder', peer, welcome, ...frameLimit(opts.maxFrameBytes) }) };
      }
      default:
        throw finished(state.name === 'failed');
    }
  }

  return failOnThrow(step, () => {
    state = { name: 'failed' };
  });
}

interface DerivedKeys {
  id: string;
  initiatorKey: Buffer;
  responderKey: Buffer;
  welcomeKey: Buffer;
}

function transcriptHash(hello: HelloMessage, challengeWithoutSignature: Omit<ChallengeMessage, 'signature'>): Buffer {
  // Canonical JSON has no raw newlines, so "\n" separates the parts unambiguously.
  return createHash('sha256')
    .update('bolt/1 handshake transcript\n')
    .update(canonicalJson(hello))
    .update('\n')
    .update(canonicalJson(challengeWithoutSignature))
    .digest();
}

function deriveKeys(ephemeralPrivate: KeyObject, peerEphemeralBase64: string, transcript: Buffer): DerivedKeys {
  let shared: Buffer;
  try {
    shared = diffieHellman({ privateKey: ephemeralPrivate, publicKey: importRaw(decodeKeyBytes(peerEphemeralBase64), 'X25519') });
  } catch (cause) {
    // OpenSSL refuses low-order points (an all-zero shared secret) here.
    throw new BoltError('BOLT_ERR_WIRE_HANDSHAKE_FAILED', 'The peer\'s ephemeral key is unusable for key agreement.', { cause });
  }
  const okm = Buffer.from(hkdfSync('sha256', shared, transcript, SESSION_KEYS_INFO, 112));
  return {
    initiatorKey: okm.subarray(0, 32),
    responderKey: okm.subarray(32, 64),
    welcomeKey: okm.subarray(64, 96),
    id: okm.subarray(96, 112).toString('base64url'),
  };
}

function welcomeMac(key: Buffer, welcomeWithoutConfirm: Omit<WelcomeMessage, 'confirm'>): Buffer {
  return createHmac('sha256', key).update(WELCOME_LABEL).update(canonicalJson(welcomeWithoutConfirm)).digest();
}

function frameLimit(maxFrameBytes: number | undefined): { maxFrameBytes?: number } {
  return maxFrameBytes === undefined ? {} : { maxFrameBytes };
}

function checkSignature(label: Buffer, transcript: Buffer, key: KeyObject, signatureBase64: string, who: string): void {
  const sig = Buffer.from(signatureBase64, 'base64');
  if (sig.length !== 64 || !verify(null, Buffer.concat([label, transcript]), key, sig)) {
    throw new BoltError('BOLT_ERR_WIRE_HANDSHAKE_FAILED', `The ${who}'s transcript signature does not verify with the key it presented.`);
  }
}

function checkVersion(v: unknown): void {
  if (v !== WIRE_VERSION) throw new BoltError('BOLT_ERR_WIRE_VERSION', `Peer speaks wire version ${String(v)}; this side speaks ${WIRE_VERSION}.`);
}

function outOfOrder(message: WireMessage | undefined, expected: string): BoltError {
  if (message?.type === 'error') {
    // The peer gave up (for example it does not accept our key): keep its code for the operator.
    return new BoltError('BOLT_ERR_WIRE_HANDSHAKE_FAILED', `The peer refused the handshake: ${message.code}: ${message.message}`, {
      details: { peerCode: message.code },
    });
  }
  return new BoltError('BOLT_ERR_WIRE_HANDSHAKE_FAILED', `Expected ${expected} but got ${message === undefined ? 'nothing' : `'${message.type}'`}.`);
}

/** A handshake whose state becomes `failed` on the first error, so it can never be resumed. */
function failOnThrow(step: (message: WireMessage | undefined) => HandshakeStep, markFailed: () => void): Handshake {
  return {
    next(message) {
      try {
        return step(message);
      } catch (err) {
        markFailed();
        throw err;
      }
    },
  };
}

function finished(failed: boolean): BoltError {
  return new BoltError('BOLT_ERR_WIRE_HANDSHAKE_FAILED', failed ? 'The handshake already failed; start a new one.' : 'The handshake is already complete.');
}
