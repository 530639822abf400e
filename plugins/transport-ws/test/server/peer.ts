/**
 * A test peer built straight from the protocol library: it opens a WebSocket, runs the real
 * client handshake, then seals and opens frames with the session it agreed. It also lets tests
 * misbehave on purpose (raw frames, garbage bodies, a paused socket).
 */

import { WebSocket, type RawData } from 'ws';
import type { WelcomeMessage, WireMessage } from '../../../../plugin-sdk/src/schemas/wire.ts';
import { createDecoder, DIRECTION_TYPES, type Decoder, type Direction, type Handler } from '../../protocol/codec.ts';
import { createClientHandshake } from '../../protocol/handshake.ts';
import { generateIdentity, type Identity } from '../../protocol/identity.ts';
import type { Session } from '../../protocol/session.ts';

export interface PeerOptions {
  url: string;
  identity?: Identity;
  role?: 'client' | 'sink';
  expectRole?: 'server' | 'sink';
  pinnedKey?: string;
  host?: string;
  labels?: Record<string, string>;
  facts?: Record<string, unknown>;
  /** CA certificate(s) for wss:// with a self-signed server certificate. */
  ca?: Buffer;
  /** Give up after this long. Default 5000 ms. */
  timeoutMs?: number;
}

/** Why a connection attempt did not end in a session. */
export class PeerRefused extends Error {
  /** The `code` of the plain `error` message the endpoint sent, if any. */
  readonly code: string | undefined;
  /** The WebSocket close code, if the WebSocket was opened. */
  readonly closeCode: number | undefined;
  /** The HTTP status, if the upgrade was answered with something other than 101. */
  readonly status: number | undefined;
  readonly retryAfter: string | undefined;

  constructor(fields: { code?: string; closeCode?: number; status?: number; retryAfter?: string }) {
    super(`refused: ${JSON.stringify(fields)}`);
    this.code = fields.code;
    this.closeCode = fields.closeCode;
    this.status = fields.status;
    this.retryAfter = fields.retryAfter;
  }
}

const passThrough: Handler = (message) => message;

function decoderFor(direction: Direction): Decoder {
  return createDecoder(direction, new Map([...DIRECTION_TYPES.get(direction)!].map((type) => [type, passThrough])));
}

/** A connected peer with its session. */
export class TestPeer {
  readonly ws: WebSocket;
  readonly session: Session;
  readonly identity: Identity;
  readonly welcome: WelcomeMessage;
  /** Decoded messages not yet taken by next(). */
  readonly inbox: WireMessage[] = [];
  /** Frames that failed to open or decode (a correct endpoint never sends one). */
  readonly problems: string[] = [];
  /** Resolves with the close code and reason when the connection ends. */
  readonly closed: Promise<{ code: number; reason: string }>;
  readonly #decoder: Decoder;
  #waiter: (() => void) | undefined;

  private constructor(ws: WebSocket, session: Session, identity: Identity, direction: Direction) {
    this.ws = ws;
    this.session = session;
    this.identity = identity;
    this.welcome = session.welcome;
    this.#decoder = decoderFor(direction);
    this.closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    ws.on('message', (data: RawData) => {
      try {
        const result = this.#decoder.decode(session.open(data as Buffer));
        if (result.ok) this.inbox.push(result.message);
        else this.problems.push(`${result.code}: ${result.message}`);
      } catch (err) {
        this.problems.push((err as Error).message);
      }
      this.#waiter?.();
    });
  }

  /**
   * Connects and runs the handshake. Resolves once the welcome is verified; rejects with
   * PeerRefused for a 503/431/404, a handshake `error` or a close before the welcome.
   */
  static connect(options: PeerOptions): Promise<TestPeer> {
    const identity = options.identity ?? generateIdentity();
    const role = options.role ?? 'client';
    const expectRole = options.expectRole ?? 'server';
    const handshake = createClientHandshake({
      identity,
      role,
      expectRole,
      host: options.host ?? 'test-peer',
      ...(options.pinnedKey !== undefined && { pinnedKey: options.pinnedKey }),
      ...(options.labels !== undefined && { labels: options.labels }),
      ...(options.facts !== undefined && { facts: options.facts }),
    });
    const handshakeDecoder = decoderFor(`${expectRole}->${role}` as Direction);
    const ws = new WebSocket(options.url, { perMessageDeflate: false, ...(options.ca !== undefined && { ca: options.ca }) });
    return new Promise<TestPeer>((resolve, reject) => {
      let errorCode: string | undefined;
      let done = false;
      const fail = (err: Error) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        ws.terminate();
        reject(err);
      };
      const timer = setTimeout(() => fail(new Error(`handshake with ${options.url} timed out`)), options.timeoutMs ?? 5000);
      ws.on('unexpected-response', (req, res) => {
        const retryAfter = res.headers['retry-after'];
        fail(new PeerRefused({ status: res.statusCode ?? 0, ...(retryAfter !== undefined && { retryAfter }) }));
        req.destroy();
      });
      ws.on('error', (err) => fail(err));
      ws.once('close', (code) => fail(new PeerRefused({ closeCode: code, ...(errorCode !== undefined && { code: errorCode }) })));
      ws.on('open', () => ws.send(JSON.stringify(handshake.next().send)));
      const onMessage = (data: RawData) => {
        const result = handshakeDecoder.decode(data as Buffer);
        if (!result.ok) return fail(new Error(`bad handshake message: ${result.code} ${result.message}`));
        if (result.message.type === 'error') {
          errorCode = result.message.code;
          return;
        }
        try {
          const step = handshake.next(result.message);
          if (step.send !== null) ws.send(JSON.stringify(step.send));
          if (step.session !== null) {
            done = true;
            clearTimeout(timer);
            ws.off('message', onMessage);
            ws.removeAllListeners('close');
            ws.removeAllListeners('error');
            ws.on('error', () => {});
            resolve(new TestPeer(ws, step.session, identity, `${expectRole}->${role}` as Direction));
          }
        } catch (err) {
          fail(err as Error);
        }
      };
      ws.on('message', onMessage);
    });
  }

  /** Seals and sends a message. */
  send(message: WireMessage | Record<string, unknown>): void {
    this.ws.send(this.session.seal(message));
  }

  /** Seals and sends any text as the body: garbage that passes the session check. */
  sendBody(text: string): void {
    this.ws.send(this.session.sealText(text));
  }

  /** Waits for the next decoded message matching `type`, skipping others. */
  async next(type: WireMessage['type'], timeoutMs = 3000): Promise<WireMessage> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = this.inbox.findIndex((m) => m.type === type);
      if (index !== -1) return this.inbox.splice(index, 1)[0]!;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${type} within ${timeoutMs} ms; inbox: ${this.inbox.map((m) => m.type).join(', ')}; problems: ${this.problems.join('; ')}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  /** Sends a clock.ping and returns the pong. */
  async ping(): Promise<WireMessage> {
    this.send({ v: 1, type: 'clock.ping', id: `ping-${this.session.sent}`, t0: performance.timeOrigin + performance.now() });
    return this.next('clock.pong');
  }

  close(): void {
    this.ws.close(1000);
  }
}

/** Awaits a connection attempt that must be refused, and returns how. */
export async function refusal(attempt: Promise<TestPeer>): Promise<PeerRefused> {
  try {
    const peer = await attempt;
    peer.ws.terminate();
  } catch (err) {
    if (err instanceof PeerRefused) return err;
    throw err;
  }
  throw new Error('the connection was accepted');
}
