/**
 * The HTTP(S) listener of a server or sink port: a node:http or node:https server hardened for
 * the open network, a small JSON router for the HTTP API, and the API's bearer token. WebSocket
 * paths are added on `listener.server` with WireEndpoint.
 *
 * Hardening: at most MAX_REQUEST_HEADERS headers per request (more are refused with 431, also on
 * upgrades, by WireEndpoint), 16 KiB of headers, headers within `headersTimeoutMs` and the whole
 * request within `requestTimeoutMs`, request bodies up to 1 MiB (more: 413, unread).
 *
 * The token lives in `<dataDir>/api-token` (mode 0600), created on first start and kept across
 * restarts; every route except the public ones (default: /api/health) needs
 * `Authorization: Bearer <token>`, compared in constant time.
 *
 * Browsers (`browserLogin`): `GET <path>?token=<token>` answers 303 to the same path without the
 * token and sets a session cookie (HttpOnly, SameSite=Strict) derived from the token; the cookie
 * then authenticates GET and HEAD requests only, so a page can read but never start or cancel
 * anything, and no other site can make a browser send it.
 */

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import { createServer as createHttpServer, type IncomingHttpHeaders, type IncomingMessage, type Server as HttpServer, type ServerOptions, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { BoltError, toErrorInfo, type ErrorInfo } from '../../../plugin-sdk/src/errors.ts';
import { createSecretFile } from '../protocol/identity.ts';
import { MAX_REQUEST_HEADERS } from './endpoint.ts';

/** File name of the API token inside the data directory. */
export const API_TOKEN_FILE = 'api-token';

/** Largest request body accepted, in bytes. */
export const MAX_BODY_BYTES = 1024 * 1024;

/** What a route handler gets. */
export interface ApiRequest {
  method: string;
  /** The path without the query string. */
  path: string;
  /** Values of the route's `:name` segments, URL-decoded. */
  params: Record<string, string>;
  query: URLSearchParams;
  headers: IncomingHttpHeaders;
  /** The request body (at most maxBodyBytes); empty for most GETs. */
  body: Buffer;
}

/** A 200 answer that is not JSON (the Prometheus text format, a dashboard page), with extra headers such as a Content-Security-Policy. */
export class TextResponse {
  readonly contentType: string;
  readonly body: string | Buffer;
  readonly headers: Readonly<Record<string, string>>;
  constructor(contentType: string, body: string | Buffer, headers: Record<string, string> = {}) {
    this.contentType = contentType;
    this.body = body;
    this.headers = headers;
  }
}

/** Writes server-sent events to one open stream. */
export interface EventSink {
  /** Queues `event: <event>` with `data` as JSON; false (and the stream closed) when the reader fell more than maxEventStreamBytes behind. */
  send(event: string, data: unknown): boolean;
}

/**
 * A `text/event-stream` answer that stays open: `open` is called once the headers are out and
 * returns what to call when the stream ends (the browser went away, fell behind, or the listener closed).
 */
export class EventStreamResponse {
  readonly open: (sink: EventSink) => () => void;
  constructor(open: (sink: EventSink) => () => void) {
    this.open = open;
  }
}

/** Open event streams a listener keeps at most; more are answered 503. */
export const MAX_EVENT_STREAMS = 100;
/** Unsent bytes an event stream may hold before its reader is dropped. */
export const MAX_EVENT_STREAM_BYTES = 1024 * 1024;
/** A comment line this often keeps proxies and browsers from closing an idle stream. */
const EVENT_STREAM_KEEPALIVE_MS = 15_000;

/** The cookie a browser gets for `?token=` (see `browserLogin`). */
export const SESSION_COOKIE = 'bolt_session';

/** Returns the JSON body of a 200 answer, a TextResponse or an EventStreamResponse; a thrown error becomes a JSON error answer. */
export type RouteHandler = (request: ApiRequest) => unknown;

export interface ListenerOptions {
  /** TCP port; 0 picks a free one. */
  port: number;
  /** Bind address. Default '0.0.0.0'. */
  host?: string;
  /** HTTPS (and wss://) when given: PEM files. */
  tls?: { certFile: string; keyFile: string };
  /** Where the API token file lives. */
  dataDir: string;
  /**
   * Routes by `METHOD /path`, where a path segment `:name` matches one segment and lands in
   * `request.params.name` (e.g. `POST /api/runs/:id/cancel`). A key without a method is a GET.
   * HEAD is served by the GET route.
   */
  routes?: ReadonlyMap<string, RouteHandler>;
  /** Routes served without the token. Default: '/api/health'. */
  publicPaths?: ReadonlySet<string>;
  /** Lets browsers log in with `?token=` and a session cookie (see the file comment). Default false. */
  browserLogin?: boolean;
  maxHeaders?: number;
  /** Default 10 000 ms. */
  headersTimeoutMs?: number;
  /** Default 30 000 ms. */
  requestTimeoutMs?: number;
  maxBodyBytes?: number;
  /** Errors thrown by handlers that are not BoltErrors (bugs), after the 500 answer went out. */
  onError?: (err: unknown, request: ApiRequest) => void;
}

/** A listening http(s) server with the API router. */
export class Listener {
  readonly server: HttpServer | HttpsServer;
  /** True for https / wss. */
  readonly secure: boolean;
  /** The bearer token the API expects. */
  readonly token: string;
  readonly tokenFile: string;
  readonly #opts: ListenerOptions;
  readonly #tokenHash: Buffer;
  readonly #sessionHash: Buffer;
  readonly #session: string;
  readonly #router: Router;
  readonly #streams = new Set<() => void>();

  /** Creates the server, loads or creates the token, and listens. Rejects if the port is taken or a TLS file is unreadable. */
  static async start(options: ListenerOptions): Promise<Listener> {
    const listener = new Listener(options);
    await new Promise<void>((resolve, reject) => {
      listener.server.once('error', reject);
      listener.server.listen(options.port, options.host ?? '0.0.0.0', () => {
        listener.server.off('error', reject);
        resolve();
      });
    });
    return listener;
  }

  private constructor(options: ListenerOptions) {
    this.#opts = options;
    this.#router = new Router(options.routes);
    this.tokenFile = path.join(options.dataDir, API_TOKEN_FILE);
    this.token = loadOrCreateToken(this.tokenFile);
    this.#tokenHash = sha256(`Bearer ${this.token}`);
    this.#session = createHash('sha256').update(`bolt dashboard session\n${this.token}`).digest('base64url');
    this.#sessionHash = sha256(this.#session);
    const maxHeaders = options.maxHeaders ?? MAX_REQUEST_HEADERS;
    const serverOptions: ServerOptions = {
      maxHeaderSize: 16 * 1024,
      headersTimeout: options.headersTimeoutMs ?? 10_000,
      requestTimeout: options.requestTimeoutMs ?? 30_000,
      // Node checks the two timeouts on this interval (default 30 s).
      connectionsCheckingInterval: 1000,
    };
    const onRequest = (req: IncomingMessage, res: ServerResponse) => {
      // Only reading the body can reject (the client aborted): nothing is left to answer.
      this.#handle(req, res, maxHeaders).catch(() => res.destroy());
    };
    this.secure = options.tls !== undefined;
    this.server = options.tls
      ? createHttpsServer({ ...serverOptions, cert: fs.readFileSync(options.tls.certFile), key: fs.readFileSync(options.tls.keyFile) }, onRequest)
      : createHttpServer(serverOptions, onRequest);
    // Node keeps the first maxHeadersCount headers and drops the rest silently: one more than the
    // limit lets the request and upgrade handlers see that a request went over it.
    this.server.maxHeadersCount = maxHeaders + 1;
  }

  /** The port listened on. */
  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** `http(s)://<address>:<port><path>` for local use (a wildcard bind address becomes loopback). */
  url(pathname = ''): string {
    return `${this.secure ? 'https' : 'http'}://${this.#localHost()}:${this.port}${pathname}`;
  }

  /** `ws(s)://<address>:<port><path>` for local use. */
  wsUrl(pathname: string): string {
    return `${this.secure ? 'wss' : 'ws'}://${this.#localHost()}:${this.port}${pathname}`;
  }

  /**
   * Stops listening and closes idle and in-progress HTTP connections. Resolves once every
   * connection of the server has closed, upgraded WebSockets included: close WireEndpoints first.
   */
  async close(): Promise<void> {
    for (const end of [...this.#streams]) end();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
  }

  #localHost(): string {
    const address = (this.server.address() as AddressInfo).address;
    if (address === '0.0.0.0') return '127.0.0.1';
    if (address === '::') return '[::1]';
    return address.includes(':') ? `[${address}]` : address;
  }

  async #handle(req: IncomingMessage, res: ServerResponse, maxHeaders: number): Promise<void> {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const request: ApiRequest = {
      method: req.method ?? 'GET',
      path: q === -1 ? url : url.slice(0, q),
      params: {},
      query: new URLSearchParams(q === -1 ? '' : url.slice(q + 1)),
      headers: req.headers,
      body: Buffer.alloc(0),
    };
    if (req.rawHeaders.length / 2 > maxHeaders) return reply(res, 431, apiError('BOLT_ERR_WIRE_API_TOO_LARGE', `More than ${maxHeaders} request headers.`), true);
    const method = request.method === 'HEAD' ? 'GET' : request.method;
    const match = this.#router.match(method, request.path);
    if (match.handler === undefined) {
      return reply(res, match.pathKnown ? 405 : 404, apiError('BOLT_ERR_WIRE_API_NOT_FOUND', `No route ${request.method} ${request.path.slice(0, 200)}.`), true);
    }
    const handler = match.handler;
    request.params = match.params;
    if (this.#opts.browserLogin && method === 'GET' && request.query.has('token')) return this.#login(request, res);
    if (!(this.#opts.publicPaths ?? DEFAULT_PUBLIC).has(request.path) && !this.#authorized(req, method)) {
      if (this.#opts.browserLogin && !request.path.startsWith('/api/') && method === 'GET') return replyText(res, loginPage(this.url('/')), 401);
      return reply(res, 401, apiError('BOLT_ERR_WIRE_API_UNAUTHORIZED', `Missing or wrong bearer token (see ${API_TOKEN_FILE} in the data directory).`), true);
    }
    const body = await readBody(req, this.#opts.maxBodyBytes ?? MAX_BODY_BYTES);
    if (body === null) return reply(res, 413, apiError('BOLT_ERR_WIRE_API_TOO_LARGE', `Request body over ${this.#opts.maxBodyBytes ?? MAX_BODY_BYTES} bytes.`), true);
    request.body = body;
    try {
      const answer = await handler(request);
      if (answer instanceof TextResponse) replyText(res, answer);
      else if (answer instanceof EventStreamResponse) this.#stream(res, answer);
      else reply(res, 200, answer, false);
    } catch (err) {
      const info = handlerFailure(toErrorInfo(err));
      reply(res, statusFor(info.code), apiError(info.code, info.message, info.details), false);
      if (!(err instanceof BoltError)) this.#opts.onError?.(err, request);
    }
  }

  #authorized(req: IncomingMessage, method: string): boolean {
    // Hashing both sides makes the comparison constant-time whatever the length given.
    if (timingSafeEqual(sha256(req.headers.authorization ?? ''), this.#tokenHash)) return true;
    if (!this.#opts.browserLogin || method !== 'GET') return false;
    return timingSafeEqual(sha256(cookieValue(req.headers.cookie, SESSION_COOKIE) ?? ''), this.#sessionHash);
  }

  /** `?token=`: the session cookie and a redirect to the same address without the token, or 401. */
  #login(request: ApiRequest, res: ServerResponse): void {
    if (!timingSafeEqual(sha256(`Bearer ${request.query.get('token')}`), this.#tokenHash)) {
      return replyText(res, loginPage(this.url('/')), 401);
    }
    const rest = new URLSearchParams(request.query);
    rest.delete('token');
    const location = `${request.path}${rest.size > 0 ? `?${rest}` : ''}`;
    res.writeHead(303, {
      location,
      'set-cookie': `${SESSION_COOKIE}=${this.#session}; Path=/; HttpOnly; SameSite=Strict${this.secure ? '; Secure' : ''}`,
      'cache-control': 'no-store',
      'content-length': 0,
    });
    res.end();
  }

  #stream(res: ServerResponse, answer: EventStreamResponse): void {
    if (this.#streams.size >= MAX_EVENT_STREAMS) {
      return reply(res, 503, apiError('BOLT_ERR_WIRE_API_BUSY', `${MAX_EVENT_STREAMS} event streams are open already; close a dashboard tab or try again later.`), false);
    }
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no' });
    res.write(': bolt\n\n');
    let ended = false;
    let stop = () => {};
    const keepalive = setInterval(() => res.write(': keepalive\n\n'), EVENT_STREAM_KEEPALIVE_MS);
    const end = () => {
      if (ended) return;
      ended = true;
      clearInterval(keepalive);
      this.#streams.delete(end);
      stop();
      res.end();
    };
    this.#streams.add(end);
    res.on('close', end);
    stop = answer.open({
      send(event, data) {
        if (ended) return false;
        if (res.writableLength > MAX_EVENT_STREAM_BYTES) {
          end();
          res.destroy();
          return false;
        }
        res.write(`event: ${event.replace(/[\r\n]/g, '')}\ndata: ${JSON.stringify(data)}\n\n`);
        return true;
      },
    });
    if (ended) stop();
  }
}

/** The value of cookie `name` in a Cookie header, or undefined. */
function cookieValue(header: string | undefined, name: string): string | undefined {
  for (const part of (header ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq !== -1 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

/** What a browser without a session sees (401). */
function loginPage(url: string): TextResponse {
  return new TextResponse('text/html; charset=utf-8', [
    '<!doctype html><meta charset="utf-8"><title>Bolt: sign in</title>',
    '<body style="font:15px system-ui,sans-serif;max-width:40em;margin:3em auto;line-height:1.5">',
    '<h1>Bolt</h1><p>This page needs the sink\'s API token. Open the address that <code>bolt-core start</code> or',
    ` <code>bolt-core demo --keep</code> printed, or add the token yourself: <code>${url}?token=TOKEN</code>, where TOKEN is in`,
    ` <code>DATA/plugins/transport-ws/${API_TOKEN_FILE}</code> on the sink's machine.</p>`,
  ].join(''), { 'content-security-policy': "default-src 'none'" });
}

const DEFAULT_PUBLIC: ReadonlySet<string> = new Set(['/api/health']);

interface CompiledRoute {
  method: string;
  segments: string[];
  handler: RouteHandler;
}

/**
 * Matches `METHOD /a/:b/c` routes segment by segment; route keys are ours, the path is the peer's,
 * so nothing from the request is used as an object key.
 */
class Router {
  readonly #routes: CompiledRoute[] = [];

  constructor(routes: ReadonlyMap<string, RouteHandler> | undefined) {
    for (const [key, handler] of routes ?? []) {
      const space = key.indexOf(' ');
      const method = space === -1 ? 'GET' : key.slice(0, space);
      const pattern = space === -1 ? key : key.slice(space + 1);
      this.#routes.push({ method, segments: pattern.split('/'), handler });
    }
  }

  match(method: string, path: string): { handler?: RouteHandler; params: Record<string, string>; pathKnown: boolean } {
    const segments = path.split('/');
    let pathKnown = false;
    for (const route of this.#routes) {
      if (route.segments.length !== segments.length) continue;
      const params = new Map<string, string>();
      const fits = route.segments.every((part, i) => {
        if (!part.startsWith(':')) return part === segments[i];
        let value: string;
        try {
          value = decodeURIComponent(segments[i]!);
        } catch {
          return false;
        }
        params.set(part.slice(1), value);
        return value.length > 0;
      });
      if (!fits) continue;
      pathKnown = true;
      if (route.method === method) return { handler: route.handler, params: Object.fromEntries(params), pathKnown };
    }
    return { params: {}, pathKnown };
  }
}

/**
 * A plugin's coded error reaches the route wrapped in BOLT_ERR_BUS_HANDLER_FAILED (the bus says
 * where it failed); the caller wants the plugin's own code, message and details.
 */
function handlerFailure(info: ErrorInfo): ErrorInfo {
  const cause = info.cause;
  return info.code === 'BOLT_ERR_BUS_HANDLER_FAILED' && cause && /^BOLT_ERR_/.test(cause.code) ? cause : info;
}

/**
 * Bus failures mean "try again" (503); an unknown thing is 404; bad input from the caller (a job
 * file, a run that cannot be cancelled) is 400; anything else the handler threw is a server error.
 */
function statusFor(code: string): number {
  if (code === 'BOLT_ERR_BUS_NO_PROVIDER' || code === 'BOLT_ERR_BUS_TIMEOUT' || code === 'BOLT_ERR_BUS_PROVIDER_CRASHED') return 503;
  if (code.endsWith('_NOT_FOUND')) return 404;
  if (code.startsWith('BOLT_ERR_JOB_') || code.startsWith('BOLT_ERR_RUN_') || code === 'BOLT_ERR_METRICS_BAD_QUERY') return 400;
  return 500;
}

function apiError(code: string, message: string, details?: Record<string, unknown>): { error: { code: string; message: string; details?: Record<string, unknown> } } {
  return { error: { code, message, ...(details && { details }) } };
}

function reply(res: ServerResponse, status: number, body: unknown, close: boolean): void {
  if (res.headersSent) return;
  const text = JSON.stringify(body ?? null);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    // An unread request body must not be parsed as the next request.
    ...(close && { connection: 'close' }),
  });
  res.end(res.req.method === 'HEAD' ? undefined : text);
}

function replyText(res: ServerResponse, answer: TextResponse, status = 200): void {
  if (res.headersSent) return;
  res.writeHead(status, {
    ...answer.headers,
    'content-type': answer.contentType,
    'content-length': Buffer.byteLength(answer.body),
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
  });
  res.end(res.req.method === 'HEAD' ? undefined : answer.body);
}

/** Reads the body, or returns null (and stops reading) once it exceeds `max` bytes. */
async function readBody(req: IncomingMessage, max: number): Promise<Buffer | null> {
  if (Number(req.headers['content-length'] ?? 0) > max) return null;
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > max) return null;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** Reads the token, or creates it (0600) so that two processes starting at once agree on one. */
function loadOrCreateToken(file: string): string {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  if (!fs.existsSync(file)) createSecretFile(file, `${randomBytes(32).toString('base64url')}\n`);
  const token = fs.readFileSync(file, 'utf8').trim();
  // An empty token would let `Authorization: Bearer ` through.
  if (token.length < 16) throw new BoltError('BOLT_ERR_WIRE_API_UNAUTHORIZED', `API token file ${file} holds fewer than 16 characters; remove it to have a new token created.`, { details: { file } });
  return token;
}
