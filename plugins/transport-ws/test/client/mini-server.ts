/**
 * A minimal responder for the client tests, built straight from the protocol library: it answers
 * the handshake, opens sealed frames, records heartbeats and acks, answers clock pings on
 * `localClock()`, and sends signed commands. It can refuse upgrades with HTTP 503 + Retry-After
 * like the admission control of the real server. It is not the real server endpoint (that lives
 * in plugins/transport-ws/server/), only enough of one to drive a WireClient on loopback.
 */

import http from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import { BoltError } from '../../../../plugin-sdk/src/errors.ts';
import {
  WIRE_LIMITS,
  type HeartbeatMessage,
  type TaskAckMessage,
  type TaskCancelMessage,
  type TaskDispatchMessage,
  type WireMessage,
} from '../../../../plugin-sdk/src/schemas/wire.ts';
import {
  createDecoder,
  createServerHandshake,
  generateIdentity,
  localClock,
  signCommand,
  type CommandBody,
  type Handler,
  type Identity,
  type PeerIdentity,
  type Session,
} from '../../protocol/index.ts';

export interface MiniServerOptions {
  identity?: Identity;
  /** Port to listen on (0: any free port). */
  port?: number;
  heartbeatIntervalMs?: number;
  /** Which peers to accept; all by default. */
  authorize?: (peer: PeerIdentity) => boolean;
  /** Told to clients in the welcome. */
  sink?: { url: string; publicKey: string };
  /** Answer as the server (default) or as a sink's /ingest (then it records task.event and metrics.batch). */
  role?: 'server' | 'sink';
  /** Serve wss:// with this certificate and key (PEM). */
  tls?: { cert: string | Buffer; key: string | Buffer };
}

/** One connected, handshaken peer. */
export interface MiniPeer {
  socket: WebSocket;
  session: Session;
  fingerprint: string;
  host: string;
  /** Heartbeats with their arrival time (performance.now()). */
  heartbeats: Array<{ at: number; message: HeartbeatMessage }>;
  acks: TaskAckMessage[];
  /** task.event and metrics.batch messages (sink role). */
  ingested: WireMessage[];
  pings: number;
  closed: boolean;
}

/** A loopback WebSocket server at ws://127.0.0.1:PORT/agent (or wss://) speaking the server side of the protocol. */
export class MiniServer {
  readonly identity: Identity;
  readonly url: string;
  readonly port: number;
  /** Every handshaken peer, in connection order (closed ones stay, marked closed). */
  readonly peers: MiniPeer[] = [];
  /** performance.now() of every upgrade request, admitted or not. */
  readonly upgrades: number[] = [];
  /** Frames that failed to open or decode, by code. */
  readonly refused: string[] = [];
  /** Answer this many more upgrades with HTTP 503. */
  busyUpgrades = 0;
  /** The Retry-After (seconds) sent with a 503. */
  retryAfterSeconds = 1;
  readonly #http: http.Server | https.Server;
  readonly #wss: WebSocketServer;
  readonly #options: MiniServerOptions;
  readonly #sockets = new Set<Socket>();

  private constructor(options: MiniServerOptions, httpServer: http.Server | https.Server, wss: WebSocketServer) {
    this.#options = options;
    this.identity = options.identity ?? generateIdentity();
    this.#http = httpServer;
    this.#wss = wss;
    this.port = (httpServer.address() as AddressInfo).port;
    this.url = `${options.tls === undefined ? 'ws' : 'wss'}://127.0.0.1:${this.port}/agent`;
    httpServer.on('connection', (socket: Socket) => {
      this.#sockets.add(socket);
      socket.on('close', () => this.#sockets.delete(socket));
    });
    httpServer.on('upgrade', (req, socket, head) => {
      this.upgrades.push(performance.now());
      if (this.busyUpgrades > 0) {
        this.busyUpgrades--;
        socket.end(`HTTP/1.1 503 Service Unavailable\r\nRetry-After: ${this.retryAfterSeconds}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
        return;
      }
      wss.handleUpgrade(req, socket, head, (ws) => this.#serve(ws));
    });
  }

  static async start(options: MiniServerOptions = {}): Promise<MiniServer> {
    const notFound: http.RequestListener = (_req, res) => res.writeHead(404).end();
    const httpServer = options.tls === undefined ? http.createServer(notFound) : https.createServer({ cert: options.tls.cert, key: options.tls.key }, notFound);
    const wss = new WebSocketServer({ noServer: true, maxPayload: WIRE_LIMITS.maxFrameBytes, perMessageDeflate: false });
    await new Promise<void>((resolve, reject) => {
      httpServer.once('error', reject);
      httpServer.listen(options.port ?? 0, '127.0.0.1', () => resolve());
    });
    return new MiniServer(options, httpServer, wss);
  }

  /** Peers whose connection is open. */
  get live(): MiniPeer[] {
    return this.peers.filter((p) => !p.closed);
  }

  /** Signs a command once and sends it to every live peer (or `to`); returns the signed command. */
  dispatch(overrides: Partial<CommandBody<TaskDispatchMessage>> = {}, to: MiniPeer[] = this.live): TaskDispatchMessage {
    const body: CommandBody<TaskDispatchMessage> = {
      v: 1,
      type: 'task.dispatch',
      id: `cmd-${Math.random().toString(36).slice(2, 12)}`,
      runId: 'run-1',
      taskId: 'task-1',
      action: 'shell',
      with: { run: 'true' },
      startAt: null,
      timeoutMs: 10_000,
      expiresAt: localClock() + 60_000,
      ...overrides,
    };
    const command = signCommand(body, this.identity.privateKey);
    this.sendText(JSON.stringify(command), to);
    return command;
  }

  /** Signs and sends a cancel to every live peer (or `to`). */
  cancel(overrides: Partial<CommandBody<TaskCancelMessage>> = {}, to: MiniPeer[] = this.live): TaskCancelMessage {
    const body: CommandBody<TaskCancelMessage> = { v: 1, type: 'task.cancel', id: `cancel-${Math.random().toString(36).slice(2, 12)}`, runId: 'run-1', expiresAt: localClock() + 60_000, ...overrides };
    const command = signCommand(body, this.identity.privateKey);
    this.sendText(JSON.stringify(command), to);
    return command;
  }

  /** Seals an envelope given as JSON text (anything, valid or not) for each peer and sends it. */
  sendText(body: string, to: MiniPeer[] = this.live): void {
    for (const peer of to) if (!peer.closed) peer.socket.send(peer.session.sealText(body));
  }

  /** Destroys every open connection abruptly; the listener stays up. */
  dropAll(): void {
    for (const peer of this.peers) peer.socket.terminate();
    for (const socket of this.#sockets) socket.destroy();
  }

  /** Stops listening and destroys every connection. */
  async close(): Promise<void> {
    this.dropAll();
    this.#wss.close();
    await new Promise<void>((resolve) => this.#http.close(() => resolve()));
  }

  #serve(socket: WebSocket): void {
    const role = this.#options.role ?? 'server';
    const direction = role === 'sink' ? 'client->sink' : 'client->server';
    const handshake = createServerHandshake({
      identity: this.identity,
      role,
      acceptRoles: role === 'sink' ? ['client'] : ['client', 'sink'],
      authorize: this.#options.authorize ?? (() => true),
      heartbeatIntervalMs: this.#options.heartbeatIntervalMs ?? 1000,
      now: localClock,
      ...(this.#options.sink !== undefined && { sink: this.#options.sink }),
    });
    let peer: MiniPeer | null = null;
    const step: Handler = (message) => {
      const { send, session } = handshake.next(message);
      socket.send(JSON.stringify(send));
      if (session !== null) {
        peer = { socket, session, fingerprint: session.peer.fingerprint, host: session.peer.hello?.host ?? '', heartbeats: [], acks: [], ingested: [], pings: 0, closed: false };
        this.peers.push(peer);
      }
    };
    const handshakeDecoder = createDecoder(direction, new Map([['hello', step], ['auth', step]]));
    const ingest: Handler = (m) => peer!.ingested.push(m);
    const sessionDecoder = createDecoder(
      direction,
      role === 'sink' ? new Map<string, Handler>([['task.event', ingest], ['metrics.batch', ingest]]) : new Map<string, Handler>([
        ['heartbeat', (m: WireMessage) => peer!.heartbeats.push({ at: performance.now(), message: m as HeartbeatMessage })],
        ['task.ack', (m: WireMessage) => peer!.acks.push(m as TaskAckMessage)],
        ['clock.ping', (m: WireMessage) => {
          if (m.type !== 'clock.ping') return;
          const t1 = localClock();
          peer!.pings++;
          socket.send(peer!.session.seal({ v: 1, type: 'clock.pong', id: `pong-${m.id}`, t0: m.t0, t1, t2: localClock() }));
        }],
      ]),
    );
    socket.on('message', (data: Buffer) => {
      try {
        const result = peer === null ? handshakeDecoder.decode(data) : sessionDecoder.decode(peer.session.open(data));
        if (!result.ok) throw new BoltError(result.code, result.message);
      } catch (err) {
        const code = err instanceof BoltError ? err.code : 'BOLT_ERR_WIRE_MALFORMED';
        this.refused.push(code);
        if (peer === null) socket.send(JSON.stringify({ v: 1, type: 'error', id: 'refusal', code, message: (err as Error).message.slice(0, 1000) }));
        socket.close(code === 'BOLT_ERR_WIRE_PEER_NOT_ACCEPTED' ? 4401 : 1008, code);
      }
    });
    socket.on('close', () => {
      if (peer !== null) peer.closed = true;
    });
  }
}

/** Polls `predicate` every 5 ms until it holds, or throws after `timeoutMs` with `what` and `detail()`. */
export async function waitFor(predicate: () => boolean, what: string, timeoutMs = 5000, detail: () => string = () => ''): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail() ? `: ${detail()}` : ''}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
