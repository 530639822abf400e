/**
 * Validation of inbound messages. Nothing from the wire reaches a handler before it has passed,
 * in order: a size check (before parsing), JSON.parse, a structural walk (depth, no `__proto__`
 * keys), the envelope check, a lookup of its type in this endpoint's handler Map, and the
 * JSON Schema of that type (ajv, compiled once when this module loads).
 *
 * Types are looked up in a Map, never by indexing an object with a string from the wire: with a
 * plain object, "__proto__", "constructor" or "toString" would find inherited members (Salt's
 * CVE-2020-11651 was a lookup like that), whereas in a Map they are simply unknown.
 */

import { Ajv, type ValidateFunction } from 'ajv';
import type { ErrorCode } from '../../../plugin-sdk/src/errors.ts';
import {
  MESSAGE_TYPES,
  WIRE_LIMITS,
  WIRE_SCHEMAS,
  WIRE_VERSION,
  type MessageType,
  type WireMessage,
} from '../../../plugin-sdk/src/schemas/wire.ts';

/** Who sends to whom. The decoder of an endpoint is created for the direction it receives. */
export type Direction = 'client->server' | 'server->client' | 'client->sink' | 'sink->client' | 'sink->server' | 'server->sink';

const HANDSHAKE_IN: readonly MessageType[] = ['hello', 'auth', 'error'];
const HANDSHAKE_OUT: readonly MessageType[] = ['challenge', 'welcome', 'error'];

/** The message types each direction may ever carry; a decoder accepts at most these. */
export const DIRECTION_TYPES: ReadonlyMap<Direction, ReadonlySet<MessageType>> = new Map<Direction, ReadonlySet<MessageType>>([
  ['client->server', new Set([...HANDSHAKE_IN, 'heartbeat', 'clock.ping', 'task.ack'])],
  ['server->client', new Set([...HANDSHAKE_OUT, 'clock.pong', 'task.dispatch', 'task.cancel', 'sink.info'])],
  ['client->sink', new Set([...HANDSHAKE_IN, 'task.event', 'metrics.batch'])],
  ['sink->client', new Set(HANDSHAKE_OUT)],
  ['sink->server', new Set([...HANDSHAKE_IN, 'heartbeat', 'clock.ping', 'task.status'])],
  ['server->sink', new Set([...HANDSHAKE_OUT, 'clock.pong', 'notice'])],
]);

/** Deepest nesting accepted in any message (free-form `with` and `facts` included). */
export const MAX_MESSAGE_DEPTH = 16;

/** A handler gets a message that has passed its schema; narrow it on `message.type`. */
export type Handler = (message: WireMessage) => unknown;

/** The error codes a decode can produce. */
export type DecodeErrorCode = Extract<ErrorCode, 'BOLT_ERR_WIRE_TOO_LARGE' | 'BOLT_ERR_WIRE_MALFORMED' | 'BOLT_ERR_WIRE_UNKNOWN_TYPE' | 'BOLT_ERR_WIRE_VERSION'>;

export type DecodeResult =
  | { ok: true; message: WireMessage; /** What the handler returned. */ result: unknown }
  | {
      ok: false;
      code: DecodeErrorCode;
      /** Short, bounded description; it quotes at most 64 characters of the input. */
      message: string;
      /** True when the attached GarbageMeter says this peer has sent too much garbage: disconnect it. */
      tooMuchGarbage: boolean;
    };

export interface DecoderStats {
  accepted: number;
  tooLarge: number;
  malformed: number;
  unknownType: number;
}

export interface Decoder {
  readonly direction: Direction;
  /**
   * Decodes one message and, if valid, calls its handler. Never throws for any input: every
   * failure is a result with a code, counted in `stats` and recorded in the GarbageMeter.
   * Exceptions thrown by a handler are the handler's and propagate.
   */
  decode(input: string | Uint8Array): DecodeResult;
  readonly stats: Readonly<DecoderStats>;
}

export interface DecoderOptions {
  /** Inputs larger than this many bytes are refused before parsing. Default WIRE_LIMITS.maxFrameBytes. */
  maxBytes?: number;
  /** Counts this peer's bad messages; see GarbageMeter. */
  garbage?: GarbageMeter;
}

// Compiled once, when the module loads: a decoder per connection costs no compilation.
const ajv = new Ajv({ allErrors: false, strict: true, coerceTypes: false, useDefaults: false, removeAdditional: false });
const VALIDATORS: ReadonlyMap<MessageType, ValidateFunction> = new Map(MESSAGE_TYPES.map((type) => [type, ajv.compile(WIRE_SCHEMAS[type])]));

/**
 * Creates the decoder for one endpoint and direction. `handlers` says which types it accepts; each
 * must be one `direction` may carry (checked here, at start-up). Any other type is unknown.
 */
export function createDecoder(direction: Direction, handlers: ReadonlyMap<string, Handler>, options: DecoderOptions = {}): Decoder {
  const allowed = DIRECTION_TYPES.get(direction);
  if (allowed === undefined) throw new TypeError(`Unknown direction ${String(direction)}`);
  const routes = new Map<string, { validate: ValidateFunction; handler: Handler }>();
  for (const [type, handler] of handlers) {
    if (!allowed.has(type as MessageType)) throw new TypeError(`Direction ${direction} never carries '${type}'; no handler can be registered for it.`);
    routes.set(type, { validate: VALIDATORS.get(type as MessageType)!, handler });
  }
  const maxBytes = options.maxBytes ?? WIRE_LIMITS.maxFrameBytes;
  const stats: DecoderStats = { accepted: 0, tooLarge: 0, malformed: 0, unknownType: 0 };

  function refuse(code: DecodeErrorCode, message: string): DecodeResult {
    if (code === 'BOLT_ERR_WIRE_TOO_LARGE') stats.tooLarge++;
    else if (code === 'BOLT_ERR_WIRE_UNKNOWN_TYPE') stats.unknownType++;
    else stats.malformed++;
    return { ok: false, code, message, tooMuchGarbage: options.garbage?.record() ?? false };
  }

  return {
    direction,
    stats,
    decode(input) {
      const size = typeof input === 'string' ? utf8Length(input, maxBytes) : input.byteLength;
      if (size > maxBytes) return refuse('BOLT_ERR_WIRE_TOO_LARGE', `Message of more than ${maxBytes} bytes refused.`);
      let value: unknown;
      try {
        value = JSON.parse(typeof input === 'string' ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength).toString('utf8'));
      } catch {
        return refuse('BOLT_ERR_WIRE_MALFORMED', 'Message is not JSON.');
      }
      if (typeof value !== 'object' || value === null || Array.isArray(value)) return refuse('BOLT_ERR_WIRE_MALFORMED', 'Message is not a JSON object.');
      const structure = checkStructure(value);
      if (structure !== null) return refuse('BOLT_ERR_WIRE_MALFORMED', structure);
      const envelope = value as Record<string, unknown>;
      // Own properties only: nothing is read from Object.prototype.
      const v = Object.hasOwn(envelope, 'v') ? envelope.v : undefined;
      const type = Object.hasOwn(envelope, 'type') ? envelope.type : undefined;
      if (typeof v === 'number' && v !== WIRE_VERSION) return refuse('BOLT_ERR_WIRE_VERSION', `Wire version ${v} is not spoken here (${WIRE_VERSION} is).`);
      if (v !== WIRE_VERSION || typeof type !== 'string' || !Object.hasOwn(envelope, 'id')) {
        return refuse('BOLT_ERR_WIRE_MALFORMED', 'Message lacks the { v, type, id } envelope.');
      }
      const route = routes.get(type);
      if (route === undefined) return refuse('BOLT_ERR_WIRE_UNKNOWN_TYPE', `Type ${quote(type)} is not accepted on ${direction}.`);
      if (!route.validate(value)) {
        const first = route.validate.errors?.[0];
        const where = first ? `${first.instancePath || '/'} ${first.message ?? 'is invalid'}` : 'is invalid';
        return refuse('BOLT_ERR_WIRE_MALFORMED', `${quote(type)}: ${where.slice(0, 200)}.`);
      }
      stats.accepted++;
      const message = value as WireMessage;
      return { ok: true, message, result: route.handler(message) };
    },
  };
}

/** UTF-8 length of a string, short-cut once it is certainly over `limit` (each UTF-16 unit is ≥ 1 byte). */
function utf8Length(text: string, limit: number): number {
  return text.length > limit ? text.length : Buffer.byteLength(text, 'utf8');
}

/**
 * Walks the parsed value. Refuses nesting deeper than MAX_MESSAGE_DEPTH (later code such as
 * canonical JSON recurses) and any `__proto__` key: JSON.parse makes it an own property, but code
 * that copies the object with assignment would turn it into a prototype. Recursive, but never
 * deeper than MAX_MESSAGE_DEPTH + 1 calls whatever the input: a deeper object is refused before
 * its members are visited. (Every inbound message passes here; recursion with a depth argument
 * allocates nothing per node, unlike an explicit stack of [node, depth] pairs.)
 */
function checkStructure(node: object, depth = 1): string | null {
  if (depth > MAX_MESSAGE_DEPTH) return `Message is nested deeper than ${MAX_MESSAGE_DEPTH} levels.`;
  if (Array.isArray(node)) {
    for (let i = 0; i < node.length; i++) {
      const item: unknown = node[i];
      if (typeof item !== 'object' || item === null) continue;
      const found = checkStructure(item, depth + 1);
      if (found !== null) return found;
    }
    return null;
  }
  for (const key of Object.keys(node)) {
    if (key === '__proto__') return 'Message contains a "__proto__" key.';
    const value = (node as Record<string, unknown>)[key];
    if (typeof value !== 'object' || value === null) continue;
    const found = checkStructure(value, depth + 1);
    if (found !== null) return found;
  }
  return null;
}

function quote(text: string): string {
  return JSON.stringify(text.length > 64 ? `${text.slice(0, 64)}…` : text);
}

export interface GarbageMeterOptions {
  /** More than this many bad messages ... */
  maxBad: number;
  /** ... within this many milliseconds means "too much garbage". */
  windowMs: number;
  now?: () => number;
}

/**
 * Says when a peer has sent too much garbage: more than `maxBad` bad messages within `windowMs`.
 * Memory is fixed (a ring of maxBad + 1 timestamps), whatever the peer sends.
 */
export class GarbageMeter {
  readonly #times: number[];
  readonly #windowMs: number;
  readonly #now: () => number;
  #next = 0;
  #count = 0;

  constructor(options: GarbageMeterOptions) {
    if (!(Number.isInteger(options.maxBad) && options.maxBad >= 0)) throw new RangeError('maxBad must be a non-negative integer');
    this.#times = new Array<number>(options.maxBad + 1).fill(0);
    this.#windowMs = options.windowMs;
    this.#now = options.now ?? Date.now;
  }

  /** Records one bad message; returns true if more than maxBad fell within the window. */
  record(): boolean {
    const now = this.#now();
    this.#times[this.#next] = now;
    this.#next = (this.#next + 1) % this.#times.length;
    this.#count = Math.min(this.#count + 1, this.#times.length);
    // Once the ring is full, the slot about to be overwritten holds the oldest of the last maxBad + 1.
    return this.#count === this.#times.length && now - this.#times[this.#next]! < this.#windowMs;
  }
}
