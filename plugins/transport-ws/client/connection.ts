/**
 * The initiating end of a Bolt WebSocket connection: a client (or a sink) connecting to the
 * server's /agent, or a client connecting to a sink's /ingest.
 *
 * One WireClient keeps one logical connection alive until `close()`: it connects, runs the
 * handshake (checking the peer's key against the pin store and an up-front key), then holds a
 * Session; when anything ends the connection (a refused TCP connection, an HTTP 503, a handshake
 * error, a close from either side, a frame that fails to open) it waits a full-jitter backoff
 * delay (after an HTTP 503: its Retry-After plus that delay, so the retries of a whole fleet do
 * not land on the same second) and tries again, forever. On a session with the server it sends heartbeats at the
 * interval the welcome names, keeps a clock offset estimate (8 pings 50 ms apart on connect,
 * then one whenever the estimator asks for a refresh), verifies every task.dispatch and
 * task.cancel (signature with the pinned key, expiry on the server's clock, persistent replay
 * guard) and acknowledges each with task.ack. Only verified commands reach `onDispatch` /
 * `onCancel`; refused ones are logged at warn with their code and id.
 *
 * No bus code here: the plugin entry wires the callbacks to the bus.
 */

import { randomUUID, type KeyObject } from 'node:crypto';
import { WebSocket } from 'ws';
import { BoltError } from '../../../plugin-sdk/src/errors.ts';
import type { Logger } from '../../../plugin-sdk/src/index.ts';
import {
  WIRE_LIMITS,
  WIRE_VERSION,
  type ClockPingMessage,
  type HeartbeatMessage,
  type MessageType,
  type NoticeMessage,
  type SinkInfoMessage,
  type TaskAckMessage,
  type TaskCancelMessage,
  type TaskDispatchMessage,
  type WelcomeMessage,
  type WireMessage,
} from '../../../plugin-sdk/src/schemas/wire.ts';
import {
  ClockEstimator,
  createClientHandshake,
  createDecoder,
  DIRECTION_TYPES,
  importPublicKey,
  localClock,
  ReplayGuard,
  verifyCommand,
  type ClockEstimate,
  type ClockEstimatorOptions,
  type Decoder,
  type DecodeResult,
  type Direction,
  type Handler,
  type Handshake,
  type Identity,
  type Session,
} from '../protocol/index.ts';
import { Backoff, type BackoffOptions } from './backoff.ts';
import type { HostHealth } from './health-record.ts';
import { checkPeerKey, parseExpectedKey, pinOrigin, type ExpectedKey, type PinStore } from './pins.ts';

/** Why a session ended. */
export interface DisconnectInfo {
  /** WebSocket close code (1006 for an abrupt end). */
  code: number;
  /** Close reason, or what ended it on this side. */
  reason: string;
  /** How long the session lasted. */
  sessionMs: number;
}

/** When a verified command arrived. */
export interface CommandArrival {
  /** Arrival instant on the server's clock, as this client estimates it. */
  receivedAt: number;
  /** Arrival instant on this process's real clock, `performance.timeOrigin + performance.now()`. */
  arrivedAt: number;
}

/** Running totals since construction. */
export interface WireClientCounters {
  /** Connection attempts started. */
  attempts: number;
  /** Sessions established (welcome received and checked). */
  connects: number;
  /** Sessions that ended. */
  disconnects: number;
  /** Upgrades answered HTTP 503 (admission control: retry later). */
  busy: number;
  /** Handshakes refused, by code (the peer's code when it sent one). */
  refusals: Record<string, number>;
  commandsAccepted: number;
  /** Commands refused, by code. */
  commandsRefused: Record<string, number>;
  heartbeatsSent: number;
  /** Frames from the peer that failed to open or decode. */
  badFrames: number;
}

export interface WireClientOptions {
  /** ws:// or wss:// URL of the endpoint, path included (e.g. ws://10.0.0.1:7700/agent). */
  url: string;
  /** This host's key pair (loadOrCreateIdentity, or generateIdentity for simulated hosts). */
  identity: Identity;
  /** Host name told in the hello. */
  host: string;
  /** The role this host connects as. Default 'client'. */
  role?: 'client' | 'sink';
  /** The role the endpoint must prove. Default 'server'. */
  expectRole?: 'server' | 'sink';
  labels?: Record<string, string>;
  facts?: Record<string, unknown>;
  capabilities?: string[];
  agentVersion?: string;
  /** A sink's own ingest URL, told to the server in the hello. */
  endpoint?: string;
  /** Trust on first use: the endpoint's key is checked against, and pinned in, this store. */
  pins?: PinStore;
  /** The pin store entry to use. Default: the URL's origin. A client → sink connection passes the server's origin. */
  pinOrigin?: string;
  /** The key the endpoint must present, given up front: base64 key or fingerprint. */
  serverKey?: string;
  /**
   * Directory of the persistent replay guard (replay-guard.log), opened on the first command.
   * Required when the endpoint can send commands (a client connected to the server).
   */
  replayGuardDir?: string;
  /** The host's health, read for every heartbeat. Default: a record of zeros. */
  health?: () => HostHealth;
  /** This host's clock. Default localClock; tests give a client an offset with `() => localClock() + skewMs`. */
  clock?: () => number;
  /** Extra CA certificate(s) to trust for wss:// (self-signed certificates in tests). */
  ca?: string | Buffer | Array<string | Buffer>;
  log?: Logger;
  backoff?: BackoffOptions;
  /** The connection and handshake must complete within this. Default 10 s. */
  handshakeTimeoutMs?: number;
  /** Simulated one-way latency added before handling each inbound frame and before each send. */
  latencyMs?: number;
  /**
   * Stamp each inbound frame's arrival, then handle it later from one queue shared by every
   * WireClient of the process, drained a couple of milliseconds at a time between I/O polls.
   * A process that simulates many hosts then reads (and stamps) frames as soon as they arrive
   * instead of after handling every earlier one, so arrival times show delivery over the network
   * rather than the simulator's own backlog. Frames of one client keep their order. Default false.
   */
  deferFrames?: boolean;
  /** Send heartbeats (to the server). Default true. */
  heartbeats?: boolean;
  /** `send()` returns false while more than this many bytes wait in the socket. Default 8 MiB. */
  maxBufferedBytes?: number;
  clockEstimator?: ClockEstimatorOptions;
  /** Pings sent on connect, and their spacing. Default 8, 50 ms. */
  clockBurst?: { count: number; spacingMs: number };
  onConnected?: (session: Session, welcome: WelcomeMessage) => void;
  onDisconnected?: (info: DisconnectInfo) => void;
  /** A handshake was refused; `code` is the peer's code when it sent one. */
  onRefused?: (code: string, error: Error) => void;
  onDispatch?: (command: TaskDispatchMessage, arrival: CommandArrival) => void;
  onCancel?: (command: TaskCancelMessage, arrival: CommandArrival) => void;
  /** The server named another sink to stream to (a sink that registered after this client connected). */
  onSinkInfo?: (sink: { url: string; publicKey: string }) => void;
  /** A sink connected to the server got one of the server's bus notices (dispatched tasks, lost hosts, runs). */
  onNotice?: (notice: NoticeMessage) => void;
  /** The next attempt was scheduled `delayMs` from now; `cause` says what ended the last one. */
  onReconnectScheduled?: (delayMs: number, cause: string) => void;
}

/** One connection attempt and, once the handshake is done, its session. */
interface Attempt {
  readonly ws: WebSocket;
  readonly handshake: Handshake;
  session: Session | null;
  /** performance.now() when the session was established. */
  connectedAt: number;
  /** Client clock when `auth` was sent: with the welcome's serverTime, a first rough offset. */
  authSentAt: number;
  /** What ended the attempt, set by whichever event saw it first. */
  cause: string | null;
  retryAfterMs: number;
  refused: boolean;
  timers: Set<NodeJS.Timeout>;
}

const SILENT: Logger = { debug() {}, info() {}, warn() {}, error() {} };
const ZERO_HEALTH: HostHealth = { load1: 0, cpuPercent: 0, memAvailableBytes: 0, diskFreeBytes: 0, eventLoopLagMs: 0 };
const COMMAND_TYPES: ReadonlySet<string> = new Set(['task.dispatch', 'task.cancel']);
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$/;
const MAX_OUTSTANDING_PINGS = 32;
/** How long a close handshake may take before the socket is destroyed. */
const CLOSE_GRACE_MS = 1000;
const CLOSE_KEY_CHANGED = 4409;
const CLOSE_POLICY = 1008;

/**
 * A self-reconnecting connection to a Bolt endpoint. See the module comment for what it does;
 * the guarantees callers rely on:
 * - `onDispatch` / `onCancel` see a command only after verifyCommand accepted it (signed by the
 *   pinned key, unexpired on the server's clock, never accepted before, recorded durably), and a
 *   task.ack (accepted or refused with its code) is sent for every command that carries an id.
 * - A key other than the pinned or up-front one is refused on every attempt and never pinned.
 * - After `close()` resolves, no timer, socket or file of this client remains open.
 */
export class WireClient {
  readonly url: string;
  readonly identity: Identity;
  readonly role: 'client' | 'sink';
  readonly expectRole: 'server' | 'sink';
  /** Direction of the frames this client receives. */
  readonly inbound: Direction;
  /** Direction of the frames this client sends. */
  readonly outbound: Direction;
  readonly #opts: WireClientOptions;
  readonly #log: Logger;
  readonly #clock: () => number;
  readonly #health: () => HostHealth;
  readonly #backoff: Backoff;
  readonly #estimator: ClockEstimator;
  readonly #expected: ExpectedKey | undefined;
  readonly #pinOrigin: string;
  readonly #latencyMs: number;
  readonly #deferFrames: boolean;
  readonly #maxBuffered: number;
  readonly #outboundTypes: ReadonlySet<MessageType>;
  readonly #handshakeDecoder: Decoder;
  readonly #sessionDecoder: Decoder;
  readonly #counters: WireClientCounters = { attempts: 0, connects: 0, disconnects: 0, busy: 0, refusals: {}, commandsAccepted: 0, commandsRefused: {}, heartbeatsSent: 0, badFrames: 0 };
  #attempt: Attempt | null = null;
  #reconnectTimer: NodeJS.Timeout | null = null;
  /** Why the last attempt failed before a session (null after a session), to log each new reason once. */
  #lastFailure: string | null = null;
  #started = false;
  #closed = false;
  #closing: Promise<void> | null = null;
  #heartbeatsPaused = false;
  #guard: ReplayGuard | null = null;
  #peerKey: { base64: string; key: KeyObject } | null = null;
  #roughOffsetMs: number | null = null;
  #outstandingPings = new Set<number>();
  /** When the frame being handled arrived: real clock, and this host's clock (for CommandArrival). */
  #frameArrival = { arrivedAt: 0, localAt: 0 };

  constructor(options: WireClientOptions) {
    this.#opts = options;
    this.url = options.url;
    this.identity = options.identity;
    this.role = options.role ?? 'client';
    this.expectRole = options.expectRole ?? 'server';
    if (this.role === 'sink' && this.expectRole === 'sink') throw new TypeError('A sink connects to the server, not to another sink');
    this.inbound = this.expectRole === 'sink' ? 'sink->client' : this.role === 'sink' ? 'server->sink' : 'server->client';
    this.outbound = this.expectRole === 'sink' ? 'client->sink' : this.role === 'sink' ? 'sink->server' : 'client->server';
    this.#outboundTypes = DIRECTION_TYPES.get(this.outbound)!;
    this.#log = options.log ?? SILENT;
    this.#clock = options.clock ?? localClock;
    this.#health = options.health ?? (() => ZERO_HEALTH);
    this.#backoff = new Backoff(options.backoff);
    this.#estimator = new ClockEstimator(options.clockEstimator);
    this.#expected = options.serverKey === undefined ? undefined : parseExpectedKey(options.serverKey);
    this.#pinOrigin = options.pinOrigin ?? pinOrigin(options.url);
    this.#latencyMs = Math.max(0, options.latencyMs ?? 0);
    this.#deferFrames = options.deferFrames ?? false;
    this.#maxBuffered = options.maxBufferedBytes ?? 8 * 1024 * 1024;
    const onHandshake: Handler = (message) => this.#onHandshakeMessage(message);
    this.#handshakeDecoder = createDecoder(this.inbound, new Map([['challenge', onHandshake], ['welcome', onHandshake], ['error', onHandshake]]));
    const sessionHandlers = new Map<string, Handler>();
    const inboundTypes = DIRECTION_TYPES.get(this.inbound)!;
    if (inboundTypes.has('clock.pong')) sessionHandlers.set('clock.pong', (m) => this.#onPong(m));
    if (inboundTypes.has('sink.info')) sessionHandlers.set('sink.info', (m) => this.#safely('onSinkInfo', () => this.#opts.onSinkInfo?.((m as SinkInfoMessage).sink)));
    if (inboundTypes.has('notice')) sessionHandlers.set('notice', (m) => this.#safely('onNotice', () => this.#opts.onNotice?.(m as NoticeMessage)));
    if (inboundTypes.has('task.dispatch')) {
      if (options.replayGuardDir === undefined) throw new TypeError('replayGuardDir is required when the endpoint can send commands');
      sessionHandlers.set('task.dispatch', (m) => this.#onCommand(m as TaskDispatchMessage));
      sessionHandlers.set('task.cancel', (m) => this.#onCommand(m as TaskCancelMessage));
    }
    this.#sessionDecoder = createDecoder(this.inbound, sessionHandlers);
  }

  /** Starts connecting (at once; later attempts after a backoff delay). Idempotent. */
  start(): void {
    if (this.#started || this.#closed) return;
    this.#started = true;
    this.#connect();
  }

  /** True while a session is established and its socket open. */
  get connected(): boolean {
    const attempt = this.#attempt;
    return attempt !== null && attempt.session !== null && attempt.ws.readyState === WebSocket.OPEN;
  }

  /** The current session, or null between sessions. */
  get session(): Session | null {
    return this.#attempt?.session ?? null;
  }

  /** A snapshot of the counters. */
  get counters(): WireClientCounters {
    const c = this.#counters;
    return { ...c, refusals: { ...c.refusals }, commandsRefused: { ...c.commandsRefused } };
  }

  /** The clock offset estimate (server − client) from ping exchanges, or null before the first pong. */
  estimate(): ClockEstimate | null {
    return this.#estimator.estimate(this.#clock());
  }

  /** The offset in use: the ping estimate, else the rough one from the welcome, else 0. */
  get offsetMs(): number {
    return this.estimate()?.offsetMs ?? this.#roughOffsetMs ?? 0;
  }

  /** Now on the server's clock, as this client estimates it. */
  serverNow(): number {
    return this.#clock() + this.offsetMs;
  }

  /**
   * Seals and sends a message on the current session (task.event, metrics.batch, task.status, ...).
   * Returns false, sending nothing, when not connected or when the socket's send buffer is over
   * its bound. Throws TypeError for a type this direction never carries.
   */
  send(message: WireMessage): boolean {
    if (!this.#outboundTypes.has(message.type)) throw new TypeError(`${this.outbound} never carries '${message.type}'`);
    const attempt = this.#attempt;
    if (attempt === null || attempt.session === null || attempt.ws.readyState !== WebSocket.OPEN) return false;
    if (attempt.ws.bufferedAmount > this.#maxBuffered) return false;
    this.#sendSealed(attempt, JSON.stringify(message));
    return true;
  }

  /** Stops (true) or resumes (false) heartbeats, to simulate a host that hangs. */
  pauseHeartbeats(paused: boolean): void {
    this.#heartbeatsPaused = paused;
  }

  /** Destroys the socket without a close handshake (simulated crash or cable cut); reconnects as usual. */
  dropConnection(): void {
    this.#attempt?.ws.terminate();
  }

  /** Sends `text` as a raw, unsealed frame (simulated garbage). Returns false if no socket is open. */
  sendRaw(text: string): boolean {
    const ws = this.#attempt?.ws;
    if (ws === undefined || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(text);
    return true;
  }

  /** Stops reconnecting, closes the connection and the replay guard. Resolves once the socket is closed. */
  close(): Promise<void> {
    if (this.#closing !== null) return this.#closing;
    this.#closed = true;
    if (this.#reconnectTimer !== null) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    const attempt = this.#attempt;
    this.#closing = (attempt === null ? Promise.resolve() : new Promise<void>((resolve) => {
      attempt.ws.once('close', () => resolve());
      this.#closeSocket(attempt, 1000, 'client closing');
    })).then(() => {
      this.#guard?.close();
      this.#guard = null;
    });
    return this.#closing;
  }

  // --- connection lifecycle

  #connect(): void {
    this.#reconnectTimer = null;
    if (this.#closed) return;
    this.#counters.attempts++;
    const handshakeTimeout = this.#opts.handshakeTimeoutMs ?? 10_000;
    const ws = new WebSocket(this.url, {
      perMessageDeflate: false,
      maxPayload: WIRE_LIMITS.maxFrameBytes,
      handshakeTimeout,
      ...(this.#opts.ca !== undefined && { ca: this.#opts.ca }),
    });
    // checkPeerKey already compares both on the challenge; the handshake checks the pin once more.
    const pinnedKey = this.#pinnedKey() ?? this.#expected?.publicKey;
    const attempt: Attempt = {
      ws,
      handshake: createClientHandshake({
        identity: this.identity,
        role: this.role,
        expectRole: this.expectRole,
        ...(pinnedKey !== undefined && { pinnedKey }),
        host: this.#opts.host,
        ...(this.#opts.labels !== undefined && { labels: this.#opts.labels }),
        ...(this.#opts.facts !== undefined && { facts: this.#opts.facts }),
        ...(this.#opts.capabilities !== undefined && { capabilities: this.#opts.capabilities }),
        ...(this.#opts.agentVersion !== undefined && { agentVersion: this.#opts.agentVersion }),
        ...(this.#opts.endpoint !== undefined && { endpoint: this.#opts.endpoint }),
      }),
      session: null,
      connectedAt: 0,
      authSentAt: 0,
      cause: null,
      retryAfterMs: 0,
      refused: false,
      timers: new Set(),
    };
    this.#attempt = attempt;
    this.#timer(attempt, handshakeTimeout, () => {
      if (attempt.session !== null) return;
      attempt.cause ??= 'handshake timed out';
      ws.terminate();
    });
    ws.on('unexpected-response', (_req, res) => {
      if (res.statusCode === 503) {
        this.#counters.busy++;
        attempt.retryAfterMs = retryAfterMs(res.headers['retry-after']);
      }
      attempt.cause ??= `HTTP ${res.statusCode}`;
      res.resume();
      ws.terminate();
    });
    ws.on('error', (err: NodeJS.ErrnoException) => {
      attempt.cause ??= err.code ?? err.message;
    });
    ws.on('open', () => {
      const step = this.#step(attempt, undefined);
      if (step !== null) this.#sendPlain(attempt, JSON.stringify(step));
    });
    ws.on('message', (raw) => {
      const data = raw as Buffer;
      if (this.#latencyMs > 0) this.#timer(attempt, this.#latencyMs, () => this.#arrived(attempt, data));
      else this.#arrived(attempt, data);
    });
    ws.on('close', (code: number, reason: Buffer) => this.#onClose(attempt, code, reason.toString('utf8')));
  }

  #onClose(attempt: Attempt, code: number, reason: string): void {
    for (const t of attempt.timers) clearTimeout(t);
    attempt.timers.clear();
    if (this.#attempt === attempt) this.#attempt = null;
    this.#outstandingPings.clear();
    const cause = attempt.cause ?? (reason !== '' ? `closed ${code} ${reason}` : `closed ${code}`);
    if (attempt.session !== null) {
      const sessionMs = performance.now() - attempt.connectedAt;
      this.#counters.disconnects++;
      this.#backoff.sessionEnded(sessionMs);
      this.#log.warn({ url: this.url, code, reason: cause, sessionMs: Math.round(sessionMs) }, 'disconnected');
      this.#safely('onDisconnected', () => this.#opts.onDisconnected?.({ code, reason: cause, sessionMs }));
    } else if (!attempt.refused && (code === 4401 || code === 4403)) {
      // The endpoint refused our key by close code alone, without an error message first.
      const refusal = /^BOLT_ERR_[A-Z0-9_]+$/.test(reason) ? reason : 'BOLT_ERR_WIRE_PEER_NOT_ACCEPTED';
      this.#refused(attempt, refusal, new BoltError('BOLT_ERR_WIRE_PEER_NOT_ACCEPTED', `The ${this.expectRole} closed with ${code} ${reason}.`));
    } else if (cause !== this.#lastFailure) {
      // A new reason (refused connection, untrusted certificate, 503...) is worth a warning once;
      // the same reason again on every retry is not.
      this.#log.warn({ url: this.url, cause }, `cannot connect to ${this.url}: ${cause}; retrying`);
    } else {
      this.#log.debug({ url: this.url, cause }, 'connection attempt failed');
    }
    this.#lastFailure = attempt.session === null ? cause : null;
    if (this.#closed) return;
    const delayMs = attempt.retryAfterMs + this.#backoff.next();
    this.#safely('onReconnectScheduled', () => this.#opts.onReconnectScheduled?.(delayMs, cause));
    this.#reconnectTimer = setTimeout(() => this.#connect(), delayMs);
  }

  /** Closes with a code, and destroys the socket if the peer does not complete the close in time. */
  #closeSocket(attempt: Attempt, code: number, reason: string): void {
    const { ws } = attempt;
    if (ws.readyState === WebSocket.CONNECTING) {
      ws.terminate();
      return;
    }
    ws.close(code, reason.slice(0, 120));
    const t = setTimeout(() => ws.terminate(), CLOSE_GRACE_MS);
    ws.once('close', () => clearTimeout(t));
  }

  #timer(attempt: Attempt, ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      attempt.timers.delete(t);
      fn();
    }, ms);
    attempt.timers.add(t);
  }

  #interval(attempt: Attempt, ms: number, fn: () => void): void {
    const t = setInterval(fn, ms);
    attempt.timers.add(t);
  }

  // --- inbound frames

  #arrived(attempt: Attempt, data: Buffer): void {
    const arrival = { arrivedAt: performance.timeOrigin + performance.now(), localAt: this.#clock() };
    // Guarded: a throw inside the shared queue would stall every other client's frames.
    if (this.#deferFrames) defer(() => this.#safely('frame handler', () => this.#onFrame(attempt, data, arrival)));
    else this.#onFrame(attempt, data, arrival);
  }

  #onFrame(attempt: Attempt, data: Buffer, arrival: { arrivedAt: number; localAt: number }): void {
    if (this.#attempt !== attempt || attempt.ws.readyState !== WebSocket.OPEN) return;
    this.#frameArrival = arrival;
    if (attempt.session === null) {
      let result: DecodeResult;
      try {
        result = this.#handshakeDecoder.decode(data);
      } catch (err) {
        this.#handshakeFailed(attempt, err);
        return;
      }
      if (!result.ok) this.#handshakeFailed(attempt, new BoltError(result.code, `Handshake message refused: ${result.message}`));
      return;
    }
    let body: string;
    try {
      body = attempt.session.open(data);
    } catch (err) {
      this.#counters.badFrames++;
      const code = err instanceof BoltError ? err.code : 'BOLT_ERR_WIRE_MALFORMED';
      this.#log.warn({ url: this.url, code, err: (err as Error).message }, 'frame refused; dropping the session');
      attempt.cause = code;
      this.#closeSocket(attempt, CLOSE_POLICY, code);
      return;
    }
    const result = this.#sessionDecoder.decode(body);
    if (!result.ok) this.#onBadMessage(attempt, body, result.code, result.message);
  }

  /** Runs one handshake step; returns what to send, or null after a failure (already handled). */
  #step(attempt: Attempt, message: WireMessage | undefined): WireMessage | null {
    try {
      const { send, session } = attempt.handshake.next(message);
      if (session !== null) this.#onSession(attempt, session);
      return send;
    } catch (err) {
      this.#handshakeFailed(attempt, err);
      return null;
    }
  }

  #onHandshakeMessage(message: WireMessage): void {
    const attempt = this.#attempt!;
    if (message.type === 'challenge') {
      // Checked before answering, so a key that is not ours to trust never gets our signature.
      checkPeerKey(this.expectRole, message.publicKey, this.#pinnedKey(), this.#expected);
    }
    const send = this.#step(attempt, message);
    if (send === null) return;
    if (send.type === 'auth') attempt.authSentAt = this.#clock();
    this.#sendPlain(attempt, JSON.stringify(send));
  }

  #handshakeFailed(attempt: Attempt, err: unknown): void {
    const peerCode = err instanceof BoltError && typeof err.details?.peerCode === 'string' ? err.details.peerCode : undefined;
    const code = peerCode ?? (err instanceof BoltError ? err.code : 'BOLT_ERR_WIRE_HANDSHAKE_FAILED');
    this.#refused(attempt, code, err instanceof Error ? err : new Error(String(err)));
    this.#closeSocket(attempt, code === 'BOLT_ERR_WIRE_SERVER_KEY_CHANGED' ? CLOSE_KEY_CHANGED : CLOSE_POLICY, code);
  }

  #refused(attempt: Attempt, code: string, err: Error): void {
    attempt.refused = true;
    attempt.cause = code;
    this.#counters.refusals[code] = (this.#counters.refusals[code] ?? 0) + 1;
    const entry = { url: this.url, code, err: err.message, ...(err instanceof BoltError && err.details !== undefined && { details: err.details }) };
    // A changed key is what an impostor looks like: loud on every attempt.
    if (code === 'BOLT_ERR_WIRE_SERVER_KEY_CHANGED') this.#log.error(entry, `${this.expectRole} key refused`);
    else this.#log.warn(entry, 'handshake refused');
    this.#safely('onRefused', () => this.#opts.onRefused?.(code, err));
  }

  #onSession(attempt: Attempt, session: Session): void {
    const welcome = session.welcome;
    const peerKey = session.peer.publicKey;
    // Trust on first use, recorded before anything of this session is believed.
    this.#opts.pins?.pin(this.#pinOrigin, this.expectRole, peerKey);
    if (this.#peerKey?.base64 !== peerKey) this.#peerKey = { base64: peerKey, key: importPublicKey(peerKey) };
    if (welcome.sink !== undefined && this.#opts.pins !== undefined && this.expectRole === 'server') this.#pinSink(welcome.sink.publicKey);
    attempt.session = session;
    attempt.connectedAt = performance.now();
    this.#counters.connects++;
    const welcomeAt = this.#clock();
    // serverTime was taken between our auth and the welcome's arrival: a first offset within half that span.
    this.#roughOffsetMs = welcome.serverTime - (attempt.authSentAt + welcomeAt) / 2;
    this.#log.info({ url: this.url, sessionId: session.id, peer: session.peer.fingerprint.slice(0, 12) }, 'connected');
    if (this.expectRole === 'server') {
      if (this.#opts.heartbeats ?? true) {
        // Queued, so the first heartbeat follows the handshake's last step rather than racing it.
        this.#timer(attempt, 0, () => this.#heartbeat(attempt));
        this.#interval(attempt, welcome.heartbeatIntervalMs, () => this.#heartbeat(attempt));
      }
      this.#startClockSync(attempt);
    }
    this.#safely('onConnected', () => this.#opts.onConnected?.(session, welcome));
  }

  #pinSink(sinkKey: string): void {
    try {
      this.#opts.pins!.pin(this.#pinOrigin, 'sink', sinkKey);
    } catch (err) {
      // The server vouches for the sink, but a changed pin is never replaced automatically.
      const code = err instanceof BoltError ? err.code : 'BOLT_ERR_WIRE_PINS_IO';
      this.#log.error({ url: this.url, code, err: (err as Error).message }, 'sink key from the welcome not pinned');
    }
  }

  #pinnedKey(): string | undefined {
    return this.#opts.pins?.get(this.#pinOrigin, this.expectRole);
  }

  // --- heartbeats and clock

  #heartbeat(attempt: Attempt): void {
    if (this.#heartbeatsPaused || attempt.session === null) return;
    let health: HostHealth;
    try {
      health = this.#health();
    } catch (err) {
      this.#log.warn({ err: (err as Error).message }, 'health record failed; sending zeros');
      health = ZERO_HEALTH;
    }
    const heartbeat: HeartbeatMessage = {
      v: WIRE_VERSION,
      type: 'heartbeat',
      id: randomUUID(),
      at: Math.max(0, this.serverNow()),
      load1: health.load1,
      cpuPercent: health.cpuPercent,
      memAvailableBytes: health.memAvailableBytes,
      diskFreeBytes: health.diskFreeBytes,
      eventLoopLagMs: health.eventLoopLagMs,
      clockOffsetMs: this.offsetMs,
      ...(health.plugins !== undefined && { plugins: health.plugins }),
    };
    this.#counters.heartbeatsSent++;
    this.#sendSealed(attempt, JSON.stringify(heartbeat));
  }

  #startClockSync(attempt: Attempt): void {
    const { count, spacingMs } = this.#opts.clockBurst ?? { count: 8, spacingMs: 50 };
    for (let i = 0; i < count; i++) this.#timer(attempt, i * spacingMs, () => this.#ping(attempt));
    const refreshAfter = this.#opts.clockEstimator?.refreshAfterMs ?? 30_000;
    this.#timer(attempt, count * spacingMs, () => {
      this.#interval(attempt, Math.min(1000, refreshAfter), () => {
        if (this.#estimator.needsRefresh(this.#clock())) this.#ping(attempt);
      });
    });
  }

  #ping(attempt: Attempt): void {
    if (attempt.session === null) return;
    const t0 = this.#clock();
    if (this.#outstandingPings.size >= MAX_OUTSTANDING_PINGS) this.#outstandingPings.clear();
    this.#outstandingPings.add(t0);
    const ping: ClockPingMessage = { v: WIRE_VERSION, type: 'clock.ping', id: randomUUID(), t0 };
    this.#sendSealed(attempt, JSON.stringify(ping));
  }

  #onPong(message: WireMessage): void {
    if (message.type !== 'clock.pong' || !this.#outstandingPings.delete(message.t0)) return;
    // t3 is when the pong's frame arrived, not when its turn in a simulator's queue came.
    this.#estimator.add({ t0: message.t0, t1: message.t1, t2: message.t2, t3: this.#frameArrival.localAt });
  }

  // --- commands

  #onCommand(command: TaskDispatchMessage | TaskCancelMessage): void {
    const attempt = this.#attempt!;
    const arrival: CommandArrival = { receivedAt: this.#frameArrival.localAt + this.offsetMs, arrivedAt: this.#frameArrival.arrivedAt };
    try {
      verifyCommand(command, this.#peerKey!.key, { now: this.serverNow(), replayGuard: this.#replayGuard() });
    } catch (err) {
      const code = err instanceof BoltError ? err.code : 'BOLT_ERR_WIRE_MALFORMED';
      this.#refuseCommand(attempt, command, code, (err as Error).message);
      return;
    }
    this.#counters.commandsAccepted++;
    this.#ack(attempt, command, true);
    if (command.type === 'task.dispatch') this.#safely('onDispatch', () => this.#opts.onDispatch?.(command, arrival));
    else this.#safely('onCancel', () => this.#opts.onCancel?.(command, arrival));
  }

  #replayGuard(): ReplayGuard {
    this.#guard ??= ReplayGuard.open(this.#opts.replayGuardDir!, { now: () => this.serverNow() });
    return this.#guard;
  }

  /** A session message that did not decode. A command among them is still answered with a refusal. */
  #onBadMessage(attempt: Attempt, body: string, code: string, message: string): void {
    this.#counters.badFrames++;
    const command = commandLike(body);
    if (command !== null && COMMAND_TYPES.has(command.type) && DIRECTION_TYPES.get(this.inbound)!.has(command.type as MessageType)) {
      const unsigned = command.sig === undefined || command.sig === null || command.sig === '';
      this.#refuseCommand(attempt, command, unsigned ? 'BOLT_ERR_WIRE_UNSIGNED' : code, message);
      return;
    }
    this.#log.warn({ url: this.url, code, err: message }, 'message from the peer refused');
  }

  #refuseCommand(attempt: Attempt, command: { id: string; type: string; runId: string; taskId?: string }, code: string, message: string): void {
    this.#counters.commandsRefused[code] = (this.#counters.commandsRefused[code] ?? 0) + 1;
    this.#log.warn({ url: this.url, code, id: command.id, type: command.type, runId: command.runId, taskId: command.taskId }, `command ${command.id} refused: ${code}`);
    this.#ack(attempt, command, false, code, message);
  }

  #ack(attempt: Attempt, command: { id: string; runId: string; taskId?: string }, accepted: boolean, code?: string, message?: string): void {
    const ack: TaskAckMessage = {
      v: WIRE_VERSION,
      type: 'task.ack',
      id: randomUUID(),
      ref: command.id,
      runId: command.runId,
      // The ack schema requires a taskId; a cancel of a whole run has none, so it names the run.
      taskId: command.taskId ?? command.runId,
      accepted,
      ...(code !== undefined && { code }),
      ...(message !== undefined && { message: message.slice(0, 1024) }),
    };
    this.#sendSealed(attempt, JSON.stringify(ack));
  }

  // --- outbound

  #sendPlain(attempt: Attempt, text: string): void {
    this.#afterLatency(attempt, () => attempt.ws.send(text));
  }

  /** Seals at send time, so frames delayed by the simulated latency keep their order and sequence numbers. */
  #sendSealed(attempt: Attempt, body: string): void {
    this.#afterLatency(attempt, () => {
      if (attempt.session !== null) attempt.ws.send(attempt.session.sealText(body));
    });
  }

  #afterLatency(attempt: Attempt, send: () => void): void {
    const guarded = () => {
      if (this.#attempt === attempt && attempt.ws.readyState === WebSocket.OPEN) send();
    };
    if (this.#latencyMs > 0) this.#timer(attempt, this.#latencyMs, guarded);
    else guarded();
  }

  #safely(what: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.#log.error({ url: this.url, err: (err as Error).message }, `${what} callback threw`);
    }
  }
}

/** Deferred frame handlers of every WireClient in the process, oldest first (see `deferFrames`). */
const deferredFrames: Array<() => void> = [];
let deferredHead = 0;
let draining = false;
/** Handling time per drain; the event loop polls sockets between drains. */
const DEFER_BUDGET_MS = 2;

function defer(handle: () => void): void {
  deferredFrames.push(handle);
  if (!draining) {
    draining = true;
    setImmediate(drainDeferred);
  }
}

function drainDeferred(): void {
  const end = performance.now() + DEFER_BUDGET_MS;
  do {
    const handle = deferredFrames[deferredHead]!;
    deferredFrames[deferredHead++] = noop;
    handle();
  } while (deferredHead < deferredFrames.length && performance.now() < end);
  if (deferredHead === deferredFrames.length) {
    deferredFrames.length = 0;
    deferredHead = 0;
    draining = false;
  } else {
    setImmediate(drainDeferred);
  }
}

function noop(): void {}

/** Seconds (or an HTTP date) of a Retry-After header, in ms; 0 when absent or unreadable. Capped at 5 minutes. */
function retryAfterMs(header: string | string[] | undefined): number {
  const value = Array.isArray(header) ? header[0] : header;
  if (value === undefined) return 0;
  const seconds = Number(value);
  const ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(value) - Date.now();
  return Number.isFinite(ms) ? Math.min(300_000, Math.max(0, ms)) : 0;
}

/** The fields of a command that failed its schema, if there are enough of them to answer it. */
function commandLike(body: string): { type: string; id: string; runId: string; taskId?: string; sig?: unknown } | null {
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const m = value as Record<string, unknown>;
  const own = (key: string): unknown => (Object.hasOwn(m, key) ? m[key] : undefined);
  const type = own('type');
  const id = own('id');
  const runId = own('runId');
  const taskId = own('taskId');
  if (typeof type !== 'string' || typeof id !== 'string' || !ID_PATTERN.test(id) || typeof runId !== 'string' || !NAME_PATTERN.test(runId)) return null;
  if (taskId !== undefined && (typeof taskId !== 'string' || !NAME_PATTERN.test(taskId))) return null;
  return { type, id, runId, ...(taskId !== undefined && { taskId }), sig: own('sig') };
}
