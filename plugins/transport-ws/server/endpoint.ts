/**
 * The responder side of the WebSocket transport: one WebSocket path ('/agent' on the server,
 * '/ingest' on a sink) on an http(s) server, from the HTTP upgrade to sealed session frames.
 *
 * Per connection, in order: the path and the header count are checked, then the admission gate
 * (handshakes per second, unfinished handshakes) answers HTTP 503 with Retry-After or lets `ws`
 * upgrade; the handshake runs against a deadline and the trust list; after the welcome every
 * frame passes a message-rate bucket, `session.open` (MAC, sequence) and the decoder of the
 * peer's direction before its handler runs. Garbage is answered with a sealed `error` carrying
 * the decode code; a peer that keeps sending it is disconnected. Every send first checks the
 * connection's send buffer and drops a peer that has stopped reading, so no peer can make the
 * server hold more than `maxBufferedBytes` (plus one message) for it. A receiver that cannot keep
 * up can stop reading from every peer for a while (`pauseReading`): TCP then slows the peers down.
 *
 * The endpoint knows nothing of the bus: handlers, onOpen and onClose are the caller's.
 */

import { randomUUID } from 'node:crypto';
import type { IncomingMessage, Server as HttpServer } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import { BoltError } from '../../../plugin-sdk/src/errors.ts';
import { WIRE_LIMITS, WIRE_VERSION, type ErrorMessage, type HelloMessage, type WireMessage } from '../../../plugin-sdk/src/schemas/wire.ts';
import { localClock } from '../protocol/clock.ts';
import { createDecoder, GarbageMeter, type Decoder, type Direction, type GarbageMeterOptions, type Handler } from '../protocol/codec.ts';
import { createServerHandshake, type Handshake } from '../protocol/handshake.ts';
import type { Identity } from '../protocol/identity.ts';
import type { PeerIdentity, Session } from '../protocol/session.ts';
import { Admission, TokenBucket, type AdmissionOptions } from './admission.ts';
import type { TrustRole, TrustState } from './trust-store.ts';

/** WebSocket close codes this endpoint uses (see the wire contract). */
export const WIRE_CLOSE = {
  normal: 1000,
  goingAway: 1001,
  /** Garbage, rate limit, a frame that fails to open, a failed handshake. */
  policy: 1008,
  /** A frame over maxPayload (sent by `ws` itself). */
  tooBig: 1009,
  /** An older connection of an identity that connected again. */
  replaced: 4000,
  /** The key is pending: retry with backoff until an operator accepts it. */
  notAccepted: 4401,
  /** The key is rejected, or the role is not accepted on this endpoint. */
  refused: 4403,
} as const;

/** Largest number of request headers an upgrade may carry. */
export const MAX_REQUEST_HEADERS = 100;

/** A connected, authenticated peer. Everything it sends has passed its session and schema checks. */
export interface PeerConnection {
  readonly sessionId: string;
  readonly role: TrustRole;
  /** base64url SHA-256 of its public key: the host id. */
  readonly fingerprint: string;
  readonly publicKey: string;
  /** Its hello: host name, labels, facts, capabilities (signed into the handshake transcript). */
  readonly hello: HelloMessage;
  /** Remote IP address (IPv4-mapped IPv6 shown as plain IPv4). */
  readonly address: string;
  /** When the welcome was sent, on the endpoint's clock (ms since the epoch). */
  readonly connectedAt: number;
  /** False once the connection is closing or closed; sends then do nothing. */
  readonly open: boolean;
  /**
   * Serializes and seals `message` and queues it. Returns false, sending nothing, when the
   * connection is not open, or when the peer's unsent data exceeds the bound (the peer is then
   * dropped).
   */
  send(message: WireMessage): boolean;
  /** Like `send` for an envelope that is already JSON text (serialize once, seal per peer). */
  sendText(jsonText: string): boolean;
  /** Closes the connection; onClose runs at once with this code and reason. */
  close(code?: number, reason?: string): void;
}

/**
 * Handles one decoded message of an accepted type from a connected peer. `text` is the message as
 * the peer sent it (the JSON text that parsed to `message` and passed its checks): a handler that
 * forwards the message to another thread can pass it on as one string instead of an object tree.
 */
export type ConnectionHandler = (message: WireMessage, conn: PeerConnection, text: string) => void;

/** Why a connection ended, as given to onClose. */
export interface CloseInfo {
  /** The WebSocket close code sent or received (1006: the connection was lost or terminated). */
  code: number;
  /** 'peer closed', 'connection lost', 'replaced', 'slow peer', 'rate limited', 'garbage', 'bad frame', 'too big', 'endpoint closing', or the reason given to close(). */
  reason: string;
}

/** What the welcome tells a peer, decided per connection. */
export interface WelcomeParams {
  heartbeatIntervalMs?: number;
  sink?: { url: string; publicKey: string };
}

/** Who may connect: a TrustStore fits. */
export interface PeerAuthorizer {
  /** True to accept `peer` in the role it claims; called once it has proved it holds its key. */
  authorize(peer: PeerIdentity, address: string): boolean;
  /** Used to tell a rejected key (close 4403) from a pending one (close 4401). */
  get?(fingerprint: string, role: TrustRole): { state: TrustState } | undefined;
}

/** Why a connection attempt was refused; keys of `stats().refused`. */
export type RefusalReason = 'headers' | 'rate' | 'in-flight' | 'handshake-timeout' | 'handshake-failed' | 'role-refused' | 'not-accepted' | 'rejected';

export interface EndpointStats {
  /** Handshakes completed (welcome sent). */
  accepted: number;
  refused: Record<RefusalReason, number>;
  /** Session messages that failed to decode and were answered with an error. */
  garbage: number;
  /** Connections closed for sending too much garbage. */
  garbageDisconnects: number;
  /** Connections closed because a frame failed session.open (MAC, sequence, not a frame). */
  badFrames: number;
  /** Connections closed by `ws` for a frame over maxPayload. */
  tooBig: number;
  /** Connections dropped because their send buffer exceeded maxBufferedBytes. */
  droppedSlow: number;
  /** Connections closed for exceeding the message rate. */
  rateLimited: number;
  /** Connections closed because the same identity connected again. */
  replaced: number;
  /** Exceptions thrown by handlers or callbacks (given to onError). */
  handlerErrors: number;
  /** Open sessions now. */
  connections: number;
  /** True while reading is paused (pauseReading). */
  readingPaused: boolean;
  /** Times reading was paused. */
  readPauses: number;
  /** Admitted handshakes not finished yet. */
  handshakesInFlight: number;
}

export interface WireEndpointOptions {
  /** The http or https server whose 'upgrade' events carry this path. */
  server: HttpServer | HttpsServer;
  /** The WebSocket path, e.g. '/agent'. */
  path: string;
  /** This host's key, proved to every peer. */
  identity: Identity;
  /** The role this endpoint answers as. */
  role: 'server' | 'sink';
  /**
   * Per accepted peer role, the handlers of the message types it may send, built once at start-up.
   * The keys are the roles accepted here; each map's types must be ones that direction carries.
   * A well-formed `error` from the peer goes to handlers.get('error') if present, else is ignored.
   */
  handlers: ReadonlyMap<TrustRole, ReadonlyMap<string, ConnectionHandler>>;
  trust: PeerAuthorizer;
  /** The welcome's heartbeat interval and sink, decided when the hello arrives. */
  welcome?: (hello: HelloMessage, request: IncomingMessage) => WelcomeParams;
  /** A peer completed the handshake. For a reconnecting identity, the old connection's onClose runs first. */
  onOpen?: (conn: PeerConnection) => void;
  /** Runs once per opened connection, as soon as it is closing or lost. */
  onClose?: (conn: PeerConnection, info: CloseInfo) => void;
  /** Exceptions from handlers and callbacks; they never end a connection by themselves. Default: a process warning. */
  onError?: (err: unknown, conn: PeerConnection | undefined) => void;
  admission?: AdmissionOptions;
  /** From the upgrade request to the welcome. Default 10 000 ms. */
  handshakeTimeoutMs?: number;
  /** Per-connection message rate. Default 200/s with a burst of 400; over it, close 1008. */
  messagesPerSec?: number;
  messageBurst?: number;
  /** More than maxBad bad messages within windowMs disconnect the peer. Default 20 in 10 s. */
  garbage?: Omit<GarbageMeterOptions, 'now'>;
  /** Unsent bytes a connection may hold before the peer is dropped. Default 4 MiB. */
  maxBufferedBytes?: number;
  /** Largest frame accepted (ws maxPayload). Default WIRE_LIMITS.maxFrameBytes. */
  maxFrameBytes?: number;
  /** Upgrade requests with more headers are refused with 431. Default MAX_REQUEST_HEADERS. */
  maxHeaders?: number;
  /** The endpoint's clock (ms since the epoch) for the welcome's serverTime and connectedAt. Default performance.timeOrigin + performance.now(). */
  now?: () => number;
}

/**
 * Serves one WebSocket path. Guarantees: at most one open connection per identity (fingerprint
 * and role); onClose runs exactly once for every connection onOpen ran for, before onOpen of the
 * connection that replaced it; a handler only ever sees a message that passed its session's MAC
 * and sequence check and its schema; nothing a peer sends can throw out of the endpoint.
 */
export class WireEndpoint {
  readonly path: string;
  readonly #opts: WireEndpointOptions;
  readonly #wss: WebSocketServer;
  readonly #admission: Admission;
  readonly #roles: TrustRole[];
  readonly #handshakeDecoder: Decoder;
  readonly #routes = new Map<TrustRole, { decoder: Decoder; handlers: ReadonlyMap<string, ConnectionHandler> }>();
  readonly #handshaking = new Set<Duplex>();
  readonly #byIdentity = new Map<string, Connection>();
  readonly #stats: Omit<EndpointStats, 'connections' | 'handshakesInFlight' | 'refused' | 'readingPaused'> = {
    accepted: 0,
    garbage: 0,
    garbageDisconnects: 0,
    badFrames: 0,
    tooBig: 0,
    droppedSlow: 0,
    rateLimited: 0,
    replaced: 0,
    handlerErrors: 0,
    readPauses: 0,
  };
  readonly #refused: Record<RefusalReason, number> = {
    headers: 0,
    rate: 0,
    'in-flight': 0,
    'handshake-timeout': 0,
    'handshake-failed': 0,
    'role-refused': 0,
    'not-accepted': 0,
    rejected: 0,
  };
  readonly #now: () => number;
  #closing = false;
  /** Ends a pause when it is not renewed in time; null while reading. */
  #pauseHold: NodeJS.Timeout | null = null;

  /** Starts serving `options.path` on `options.server` (listening or not). Throws TypeError for an impossible role/handler combination or a path served twice. */
  constructor(options: WireEndpointOptions) {
    this.path = options.path;
    this.#opts = options;
    this.#now = options.now ?? localClock;
    this.#roles = [...options.handlers.keys()];
    if (this.#roles.length === 0) throw new TypeError('A WireEndpoint needs handlers for at least one peer role.');
    for (const [role, handlers] of options.handlers) {
      const direction = `${role}->${options.role}` as Direction;
      if (role === options.role) throw new TypeError(`A ${options.role} endpoint cannot accept ${role} peers.`);
      const routed = new Map<string, Handler>([...handlers.keys()].map((type) => [type, passThrough]));
      routed.set('error', passThrough);
      const withError = handlers.has('error') ? handlers : new Map([...handlers, ['error', ignore]]);
      this.#routes.set(role, { decoder: createDecoder(direction, routed, this.#decoderLimit()), handlers: withError });
    }
    // hello, auth and error are carried by every inbound direction: any accepted role's will do.
    this.#handshakeDecoder = createDecoder(`${this.#roles[0]!}->${options.role}` as Direction, new Map([['hello', passThrough], ['auth', passThrough], ['error', passThrough]]), this.#decoderLimit());
    this.#admission = new Admission(options.admission);
    this.#wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      perMessageDeflate: false,
      maxPayload: options.maxFrameBytes ?? WIRE_LIMITS.maxFrameBytes,
    });
    attachUpgrade(options.server, options.path, (req, socket, head) => this.#upgrade(req, socket, head));
  }

  /** Open connections. */
  connections(): PeerConnection[] {
    return [...this.#byIdentity.values()];
  }

  /** The open connection of this identity, if any. */
  connection(fingerprint: string, role: TrustRole): PeerConnection | undefined {
    return this.#byIdentity.get(identityKey(fingerprint, role));
  }

  /** Closes the connection of this identity (for example after its key was rejected). Returns whether one was open. */
  disconnect(fingerprint: string, role: TrustRole, code: number = WIRE_CLOSE.refused, reason = 'key rejected'): boolean {
    const conn = this.#byIdentity.get(identityKey(fingerprint, role));
    conn?.close(code, reason);
    return conn !== undefined;
  }

  /**
   * Sends the same envelope text to each connection, sealed per session (one HMAC each, no
   * per-peer serialization). Returns how many got it and the connections that did not (closed,
   * or dropped as slow).
   */
  broadcast(jsonText: string, conns: Iterable<PeerConnection>): { sent: number; failed: PeerConnection[] } {
    let sent = 0;
    const failed: PeerConnection[] = [];
    for (const conn of conns) {
      if (conn.sendText(jsonText)) sent++;
      else failed.push(conn);
    }
    return { sent, failed };
  }

  /** Counters since start, and the current connections and handshakes. */
  stats(): EndpointStats {
    return { ...this.#stats, refused: { ...this.#refused }, connections: this.#byIdentity.size, handshakesInFlight: this.#admission.inFlight, readingPaused: this.#pauseHold !== null };
  }

  /**
   * Stops reading what peers send, on every open connection and on those that open during the
   * pause: their frames wait in the sockets' kernel buffers and then in the peers' own (a Bolt
   * client keeps its messages in its outbox meanwhile), so a consumer that cannot keep up slows
   * the senders down instead of queueing without bound or dropping. Sending and handshakes go on.
   * The pause ends after `holdMs` unless renewed by another call, or at resumeReading: a consumer
   * that ends without resuming cannot leave the endpoint deaf.
   */
  pauseReading(holdMs: number): void {
    if (this.#closing) return;
    if (this.#pauseHold === null) {
      this.#stats.readPauses++;
      for (const conn of this.#byIdentity.values()) conn.pause();
    } else clearTimeout(this.#pauseHold);
    this.#pauseHold = setTimeout(() => this.resumeReading(), Math.max(1, holdMs));
    this.#pauseHold.unref();
  }

  /** Reads from every connection again (nothing happens when reading is not paused). */
  resumeReading(): void {
    if (this.#pauseHold === null) return;
    clearTimeout(this.#pauseHold);
    this.#pauseHold = null;
    for (const conn of this.#byIdentity.values()) conn.resume();
  }

  /**
   * Stops serving the path: unfinished handshakes are aborted, open connections closed with 1001
   * (onClose runs for each) and terminated if they have not closed within `graceMs`. Resolves when
   * every socket is closed. The http server itself is the caller's to close.
   */
  async close(graceMs = 2000): Promise<void> {
    if (this.#closing) return;
    this.resumeReading();
    this.#closing = true;
    for (const socket of this.#handshaking) socket.destroy();
    const conns = [...this.#byIdentity.values()];
    for (const conn of conns) conn.end(WIRE_CLOSE.goingAway, 'endpoint closing', graceMs);
    await Promise.all(conns.map((conn) => conn.closed));
    // Only now: until here, upgrades are told to retry later (503) rather than "no such path".
    detachUpgrade(this.#opts.server, this.path);
  }

  #decoderLimit(): { maxBytes: number } {
    return { maxBytes: this.#opts.maxFrameBytes ?? WIRE_LIMITS.maxFrameBytes };
  }

  #upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    if (this.#closing) return refuseUpgrade(socket, 503, { 'Retry-After': '1' });
    if (req.rawHeaders.length / 2 > (this.#opts.maxHeaders ?? MAX_REQUEST_HEADERS)) {
      this.#refused.headers++;
      return refuseUpgrade(socket, 431);
    }
    const admission = this.#admission.tryAdmit();
    if (!admission.admitted) {
      this.#refused[admission.reason]++;
      return refuseUpgrade(socket, 503, { 'Retry-After': String(admission.retryAfterS) });
    }
    const address = normalizeAddress(req.socket.remoteAddress);
    let ws: WebSocket | undefined;
    const deadline = setTimeout(() => {
      this.#refused['handshake-timeout']++;
      if (ws === undefined) socket.destroy();
      else ws.terminate();
    }, this.#opts.handshakeTimeoutMs ?? 10_000);
    const finished = () => {
      clearTimeout(deadline);
      admission.release();
      this.#handshaking.delete(socket);
    };
    this.#handshaking.add(socket);
    socket.once('close', finished);
    if ('setKeepAlive' in socket && typeof socket.setKeepAlive === 'function') socket.setKeepAlive(true, 30_000);
    this.#wss.handleUpgrade(req, socket, head, (upgraded) => {
      ws = upgraded;
      this.#handshake(upgraded, req, address, () => {
        socket.off('close', finished);
        finished();
      });
    });
  }

  #handshake(ws: WebSocket, req: IncomingMessage, address: string, finished: () => void): void {
    let handshake: Handshake | undefined;
    let stage: 'handshake' | 'ended' = 'handshake';
    const end = (reason: RefusalReason) => {
      stage = 'ended';
      this.#refused[reason]++;
      ws.off('message', onMessage);
      finished();
    };
    // ws closes the connection itself after a receive error (1009 for a frame over maxPayload).
    // A refused connection keeps this listener to its end: an 'error' without one would be thrown.
    const onError = () => {
      if (stage === 'handshake') end('handshake-failed');
    };
    ws.on('error', onError);
    const refuse = (code: string, message: string, closeCode: number, reason: RefusalReason) => {
      end(reason);
      sendPlainError(ws, code, message);
      closeGently(ws, closeCode, reason, 2000);
    };
    const onMessage = (data: RawData) => {
      const decoded = this.#handshakeDecoder.decode(asBytes(data));
      if (!decoded.ok) return refuse(decoded.code, decoded.message, WIRE_CLOSE.policy, 'handshake-failed');
      const message = decoded.message;
      if (message.type === 'error') return refuse('BOLT_ERR_WIRE_HANDSHAKE_FAILED', 'The peer gave up the handshake.', WIRE_CLOSE.normal, 'handshake-failed');
      try {
        handshake ??= this.#newHandshake(message, req, address);
        const step = handshake.next(message);
        if (step.send !== null) ws.send(JSON.stringify(step.send));
        if (step.session !== null) {
          stage = 'ended';
          ws.off('message', onMessage);
          finished();
          // The Connection registers its own 'error' listener before this one goes.
          this.#open(ws, step.session, address);
          ws.off('error', onError);
        }
      } catch (err) {
        const code: string = err instanceof BoltError ? err.code : 'BOLT_ERR_WIRE_HANDSHAKE_FAILED';
        const text = err instanceof Error ? err.message : String(err);
        if (code === 'BOLT_ERR_WIRE_ROLE_REFUSED') return refuse(code, text, WIRE_CLOSE.refused, 'role-refused');
        if (code === 'BOLT_ERR_WIRE_PEER_NOT_ACCEPTED') {
          const details = (err as BoltError).details ?? {};
          const state = this.#opts.trust.get?.(String(details.fingerprint), details.role as TrustRole)?.state;
          return state === 'rejected'
            ? refuse(code, text, WIRE_CLOSE.refused, 'rejected')
            : refuse(code, text, WIRE_CLOSE.notAccepted, 'not-accepted');
        }
        refuse(code, text, WIRE_CLOSE.policy, 'handshake-failed');
      }
    };
    ws.on('message', onMessage);
  }

  #newHandshake(first: WireMessage, req: IncomingMessage, address: string): Handshake {
    let params: WelcomeParams = {};
    try {
      if (first.type === 'hello' && this.#opts.welcome !== undefined) params = this.#opts.welcome(first, req);
    } catch (err) {
      this.#error(err, undefined);
      throw new BoltError('BOLT_ERR_WIRE_HANDSHAKE_FAILED', 'The endpoint could not prepare its welcome; try again later.');
    }
    const authorize = (peer: PeerIdentity) => {
      try {
        return this.#opts.trust.authorize(peer, address);
      } catch (err) {
        // A failing trust list refuses (the peer retries as if pending) and is reported, never leaked to the peer.
        this.#error(err, undefined);
        return false;
      }
    };
    return createServerHandshake({
      identity: this.#opts.identity,
      role: this.#opts.role,
      acceptRoles: this.#roles,
      authorize,
      now: this.#now,
      ...(params.heartbeatIntervalMs !== undefined && { heartbeatIntervalMs: params.heartbeatIntervalMs }),
      ...(params.sink !== undefined && { sink: params.sink }),
      ...(this.#opts.maxFrameBytes !== undefined && { maxFrameBytes: this.#opts.maxFrameBytes }),
    });
  }

  #open(ws: WebSocket, session: Session, address: string): void {
    if (this.#closing) return ws.terminate();
    const role = session.peer.role as TrustRole;
    const route = this.#routes.get(role)!;
    const key = identityKey(session.peer.fingerprint, role);
    const conn = new Connection({
      ws,
      session,
      address,
      connectedAt: this.#now(),
      decoder: route.decoder,
      handlers: route.handlers,
      bucket: new TokenBucket({ ratePerSec: this.#opts.messagesPerSec ?? 200, burst: this.#opts.messageBurst ?? 400 }),
      garbage: new GarbageMeter(this.#opts.garbage ?? { maxBad: 20, windowMs: 10_000 }),
      maxBufferedBytes: this.#opts.maxBufferedBytes ?? 4 * 1024 * 1024,
      count: (what) => this.#stats[what]++,
      closed: (c, info) => this.#closed(c, key, info),
      error: (err, c) => this.#error(err, c),
    });
    this.#stats.accepted++;
    const old = this.#byIdentity.get(key);
    if (old !== undefined) {
      this.#stats.replaced++;
      old.end(WIRE_CLOSE.replaced, 'replaced');
    }
    this.#byIdentity.set(key, conn);
    if (this.#pauseHold !== null) conn.pause();
    this.#callback(() => this.#opts.onOpen?.(conn), conn);
  }

  #closed(conn: Connection, key: string, info: CloseInfo): void {
    if (this.#byIdentity.get(key) === conn) this.#byIdentity.delete(key);
    this.#callback(() => this.#opts.onClose?.(conn, info), conn);
  }

  #callback(fn: () => void, conn: PeerConnection): void {
    try {
      fn();
    } catch (err) {
      this.#error(err, conn);
    }
  }

  #error(err: unknown, conn: PeerConnection | undefined): void {
    this.#stats.handlerErrors++;
    try {
      if (this.#opts.onError !== undefined) this.#opts.onError(err, conn);
      else process.emitWarning(`transport-ws ${this.path}: ${err instanceof Error ? err.message : String(err)}`);
    } catch {
      // A failing error reporter must not take the endpoint down with it.
    }
  }
}

/**
 * A handler for `clock.ping` that answers `clock.pong`: t0 echoed, t1 when the handler ran (the
 * message's arrival), t2 just before the pong is sealed and sent, both on `now` (default
 * performance.timeOrigin + performance.now(), the server clock of the contract).
 */
export function clockPongHandler(now: () => number = localClock): ConnectionHandler {
  return (message, conn) => {
    if (message.type !== 'clock.ping') return;
    const t1 = now();
    conn.send({ v: WIRE_VERSION, type: 'clock.pong', id: randomUUID(), t0: message.t0, t1, t2: now() });
  };
}

type Counter = 'garbage' | 'garbageDisconnects' | 'badFrames' | 'tooBig' | 'droppedSlow' | 'rateLimited';

interface ConnectionParams {
  ws: WebSocket;
  session: Session;
  address: string;
  connectedAt: number;
  decoder: Decoder;
  handlers: ReadonlyMap<string, ConnectionHandler>;
  bucket: TokenBucket;
  garbage: GarbageMeter;
  maxBufferedBytes: number;
  count(what: Counter): void;
  closed(conn: Connection, info: CloseInfo): void;
  error(err: unknown, conn: Connection): void;
}

/** One open session. Internal: callers see it as a PeerConnection. */
class Connection implements PeerConnection {
  readonly sessionId: string;
  readonly role: TrustRole;
  readonly fingerprint: string;
  readonly publicKey: string;
  readonly hello: HelloMessage;
  readonly address: string;
  readonly connectedAt: number;
  /** Resolves when the socket has closed. */
  readonly closed: Promise<void>;
  readonly #p: ConnectionParams;
  #open = true;

  constructor(params: ConnectionParams) {
    const { session, ws } = params;
    this.#p = params;
    this.sessionId = session.id;
    this.role = session.peer.role as TrustRole;
    this.fingerprint = session.peer.fingerprint;
    this.publicKey = session.peer.publicKey;
    this.hello = session.peer.hello!;
    this.address = params.address;
    this.connectedAt = params.connectedAt;
    this.closed = new Promise((resolve) => ws.once('close', () => resolve()));
    ws.on('message', (data) => this.#receive(asBytes(data)));
    // WebSocket pings cost the peer's message budget too.
    ws.on('ping', () => {
      if (this.#open && !params.bucket.take()) this.#limit();
    });
    ws.on('error', (err: Error & { code?: string }) => {
      // ws closes the connection itself after a receive error; record why, once.
      if (err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') {
        params.count('tooBig');
        this.#finish(WIRE_CLOSE.tooBig, 'too big');
      }
    });
    ws.once('close', (code) => this.#finish(code, code === 1006 ? 'connection lost' : 'peer closed'));
  }

  get open(): boolean {
    return this.#open;
  }

  send(message: WireMessage): boolean {
    return this.sendText(JSON.stringify(message));
  }

  sendText(jsonText: string): boolean {
    if (!this.#open) return false;
    const { ws } = this.#p;
    if (ws.bufferedAmount > this.#p.maxBufferedBytes) {
      this.#p.count('droppedSlow');
      this.#finish(1006, 'slow peer');
      ws.terminate();
      return false;
    }
    ws.send(this.#p.session.sealText(jsonText));
    return true;
  }

  close(code: number = WIRE_CLOSE.normal, reason = 'closed by server'): void {
    this.end(code, reason);
  }

  /** Stops reading from the socket (see WireEndpoint.pauseReading). */
  pause(): void {
    if (this.#open) this.#p.ws.pause();
  }

  resume(): void {
    this.#p.ws.resume();
  }

  /** Closes with a close frame, terminating the socket if the peer has not closed within graceMs. */
  end(code: number, reason: string, graceMs = 2000): void {
    if (!this.#open) return;
    this.#finish(code, reason);
    // A paused socket would not read the peer's answer to the close frame.
    this.#p.ws.resume();
    closeGently(this.#p.ws, code, reason, graceMs);
  }

  #receive(data: Uint8Array): void {
    if (!this.#open) return;
    const p = this.#p;
    if (!p.bucket.take()) return this.#limit();
    let body: string;
    try {
      body = p.session.open(data);
    } catch {
      p.count('badFrames');
      return this.end(WIRE_CLOSE.policy, 'bad frame');
    }
    const decoded = p.decoder.decode(body);
    if (!decoded.ok) {
      p.count('garbage');
      if (p.garbage.record()) {
        p.count('garbageDisconnects');
        return this.end(WIRE_CLOSE.policy, 'garbage');
      }
      const error: ErrorMessage = { v: WIRE_VERSION, type: 'error', id: randomUUID(), code: decoded.code, message: decoded.message.slice(0, 1024) };
      this.send(error);
      return;
    }
    try {
      // The decoder routes only types that are in this map.
      p.handlers.get(decoded.message.type)!(decoded.message, this, body);
    } catch (err) {
      p.error(err, this);
    }
  }

  #limit(): void {
    this.#p.count('rateLimited');
    this.end(WIRE_CLOSE.policy, 'rate limited');
  }

  #finish(code: number, reason: string): void {
    if (!this.#open) return;
    this.#open = false;
    this.#p.closed(this, { code, reason });
  }
}

const passThrough: Handler = (message) => message;
const ignore: ConnectionHandler = () => {};

function identityKey(fingerprint: string, role: TrustRole): string {
  return `${role} ${fingerprint}`;
}

function asBytes(data: RawData): Uint8Array {
  if (Array.isArray(data)) return Buffer.concat(data);
  return data instanceof ArrayBuffer ? new Uint8Array(data) : data;
}

function normalizeAddress(address: string | undefined): string {
  if (address === undefined) return 'unknown';
  return address.startsWith('::ffff:') ? address.slice(7) : address;
}

function sendPlainError(ws: WebSocket, code: string, message: string): void {
  const error: ErrorMessage = { v: WIRE_VERSION, type: 'error', id: randomUUID(), code: code.slice(0, 64), message: message.slice(0, 1024) };
  ws.send(JSON.stringify(error));
}

/** Sends a close frame; a peer that does not answer it within graceMs loses the socket. */
function closeGently(ws: WebSocket, code: number, reason: string, graceMs: number): void {
  // A close reason is at most 123 bytes; ours are short ASCII.
  ws.close(code, reason.slice(0, 120));
  const kill = setTimeout(() => ws.terminate(), graceMs);
  kill.unref();
  ws.once('close', () => clearTimeout(kill));
}

const STATUS_TEXT = new Map<number, string>([
  [404, 'Not Found'],
  [431, 'Request Header Fields Too Large'],
  [503, 'Service Unavailable'],
]);

/** Answers an upgrade request with a plain HTTP error and closes the socket: no WebSocket is created. */
function refuseUpgrade(socket: Duplex, status: number, headers: Record<string, string> = {}): void {
  const lines = [`HTTP/1.1 ${status} ${STATUS_TEXT.get(status) ?? 'Error'}`, 'Connection: close', 'Content-Length: 0', ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)];
  socket.once('finish', () => socket.destroy());
  socket.end(`${lines.join('\r\n')}\r\n\r\n`);
}

type UpgradeHandler = (req: IncomingMessage, socket: Duplex, head: Buffer) => void;
const upgradeRoutes = new WeakMap<HttpServer | HttpsServer, Map<string, UpgradeHandler>>();

/** One 'upgrade' listener per server routes by path, and answers 404 for paths nobody serves. */
function attachUpgrade(server: HttpServer | HttpsServer, path: string, handler: UpgradeHandler): void {
  let routes = upgradeRoutes.get(server);
  if (routes === undefined) {
    const created = new Map<string, UpgradeHandler>();
    routes = created;
    upgradeRoutes.set(server, created);
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      // A reset during the upgrade must not become an uncaught 'error'.
      socket.on('error', () => {});
      const route = created.get(pathOf(req.url));
      if (route === undefined) refuseUpgrade(socket, 404);
      else route(req, socket, head);
    });
  }
  if (routes.has(path)) throw new TypeError(`WebSocket path ${path} is already served on this server.`);
  routes.set(path, handler);
}

function detachUpgrade(server: HttpServer | HttpsServer, path: string): void {
  upgradeRoutes.get(server)?.delete(path);
}

function pathOf(url: string | undefined): string {
  const q = url?.indexOf('?') ?? -1;
  return url === undefined ? '/' : q === -1 ? url : url.slice(0, q);
}
