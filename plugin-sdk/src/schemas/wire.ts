/**
 * Bolt's wire protocol: every message as a JSON Schema (draft-07) and a TypeScript type.
 *
 * Every message is a JSON object `{ v: 1, type, id, ...fields }`. The schemas are strict on
 * purpose, because they are the first thing that touches bytes from the network: every string
 * has a maxLength, every array a maxItems, every number a range (JSON's `1e400` parses to
 * Infinity), and objects refuse unknown properties. The only free-form objects are a task's
 * `with`, a host's `facts` and `labels` (a bounded string map).
 *
 * Transports compile these once (see plugins/transport-ws/protocol/codec.ts) and look message
 * types up in a Map, never by indexing an object with a type read from the wire.
 */

/** The protocol version every envelope carries in `v`. */
export const WIRE_VERSION = 1;

/** Size and count bounds shared by the schemas and the transports. */
export const WIRE_LIMITS = {
  /** Largest frame a peer may send, in bytes (metrics batches are the biggest messages). */
  maxFrameBytes: 1024 * 1024,
  /** Largest number of samples in one metrics.batch. */
  maxSamplesPerBatch: 5000,
  /** Tail of stdout/stderr carried in a task.event, in characters. */
  maxOutputTail: 8192,
  /** Plugins a client's heartbeat may list. */
  maxPluginsReported: 64,
} as const;

/** The role a peer claims in the handshake; it is part of the signed transcript. */
export type PeerRole = 'client' | 'server' | 'sink';

/** Every message type, in the order of this file. */
export const MESSAGE_TYPES = [
  'hello',
  'challenge',
  'auth',
  'welcome',
  'error',
  'heartbeat',
  'clock.ping',
  'clock.pong',
  'task.dispatch',
  'task.ack',
  'task.cancel',
  'task.event',
  'metrics.batch',
  'task.status',
  'sink.info',
  'notice',
] as const;

export type MessageType = (typeof MESSAGE_TYPES)[number];

// ---------------------------------------------------------------------------------------------
// Building blocks

/** Message and command ids: short, printable, no whitespace (they are written to files). */
const idSchema = { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9][A-Za-z0-9_.:-]*$' } as const;
/** Names such as run, task and action ids. */
const nameSchema = { type: 'string', minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9_][A-Za-z0-9_.:/-]*$' } as const;
/** Standard base64 of exactly 32 bytes: Ed25519 and X25519 public keys, nonces. */
const bytes32Schema = { type: 'string', minLength: 44, maxLength: 44, pattern: '^[A-Za-z0-9+/]{43}=$' } as const;
/** Standard base64 of exactly 64 bytes: Ed25519 signatures. */
const signatureSchema = { type: 'string', minLength: 88, maxLength: 88, pattern: '^[A-Za-z0-9+/]{86}==$' } as const;
/** A point in time in milliseconds since the epoch (on the server's clock unless stated). */
const instantSchema = { type: 'number', minimum: 0, maximum: 8.64e15 } as const;
const durationMsSchema = { type: 'number', minimum: 0, maximum: 31 * 24 * 3600 * 1000 } as const;
const countSchema = { type: 'integer', minimum: 0, maximum: 1_000_000_000 } as const;
const bytesCountSchema = { type: 'number', minimum: 0, maximum: Number.MAX_SAFE_INTEGER } as const;
const hostSchema = { type: 'string', minLength: 1, maxLength: 255 } as const;
const labelsSchema = {
  type: 'object',
  maxProperties: 64,
  propertyNames: { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9][A-Za-z0-9_./-]*$' },
  additionalProperties: { type: 'string', maxLength: 256 },
} as const;
/** Free-form objects (`with`, `facts`); their total size is bounded by the frame size. */
const freeFormSchema = { type: 'object', maxProperties: 256 } as const;

function message(type: MessageType, properties: Record<string, object>, required: readonly string[]) {
  return {
    $schema: 'http://json-schema.org/draft-07/schema#',
    $id: `bolt:wire/${type}`,
    type: 'object',
    additionalProperties: false,
    required: ['v', 'type', 'id', ...required],
    properties: {
      v: { const: WIRE_VERSION },
      type: { const: type },
      id: idSchema,
      ...properties,
    },
  } as const;
}

// ---------------------------------------------------------------------------------------------
// Types

/** Fields every message carries. */
export interface Envelope<T extends MessageType> {
  v: typeof WIRE_VERSION;
  type: T;
  /** Unique per message; for signed commands, the command id the replay guard remembers. */
  id: string;
}

/** Client or sink to server (or client to sink): opens the handshake. All of it is signed into the transcript. */
export interface HelloMessage extends Envelope<'hello'> {
  role: 'client' | 'sink';
  /** The host's static Ed25519 public key, base64 of the raw 32 bytes. */
  publicKey: string;
  /** 32 random bytes, base64. */
  nonce: string;
  /** A fresh X25519 public key for this connection only, base64 of the raw 32 bytes. */
  ephemeralKey: string;
  host: string;
  agentVersion?: string;
  labels?: Record<string, string>;
  facts?: Record<string, unknown>;
  capabilities?: string[];
  /** A sink's own ingest URL (ws:// or wss://), which the server passes on to clients in the welcome. */
  endpoint?: string;
}

/** Server (or sink) to the connecting peer: its identity and its signature over the transcript. */
export interface ChallengeMessage extends Envelope<'challenge'> {
  role: 'server' | 'sink';
  publicKey: string;
  nonce: string;
  ephemeralKey: string;
  /** Ed25519 signature, base64 of 64 bytes. */
  signature: string;
}

/** Connecting peer to server: its signature over the transcript, proving it holds its key. */
export interface AuthMessage extends Envelope<'auth'> {
  signature: string;
}

/**
 * Server to peer, the last handshake message: the peer is accepted. `confirm` is a MAC over the
 * rest of the welcome with a key only the two ends of this handshake can derive, which proves to
 * the peer that the server agreed on the same keys and that nobody altered the welcome.
 */
export interface WelcomeMessage extends Envelope<'welcome'> {
  sessionId: string;
  /** The server's clock when it sent this, for a first rough offset. */
  serverTime: number;
  heartbeatIntervalMs: number;
  /** Where a client streams events and metrics, and the sink key to pin. */
  sink?: { url: string; publicKey: string };
  /** base64url HMAC-SHA256 (43 characters). */
  confirm: string;
}

/** Either direction: a refusal or failure, with a BOLT_ERR_* code. */
export interface ErrorMessage extends Envelope<'error'> {
  code: string;
  message: string;
  /** Id of the message this answers, if any. */
  ref?: string;
}

/** One plugin of a client's core, as its heartbeats report it. */
export interface PluginSummary {
  name: string;
  version?: string;
  /** The supervisor's state: loading, running, crashed, failed, stopped... */
  state: string;
  restarts: number;
  /** The plugin's last error, when it had one. */
  error?: { code: string; message: string };
}

/** Client to server: the host's health record. */
export interface HeartbeatMessage extends Envelope<'heartbeat'> {
  /** When the record was taken, on the server's clock. */
  at: number;
  load1: number;
  cpuPercent: number;
  memAvailableBytes: number;
  diskFreeBytes: number;
  eventLoopLagMs: number;
  /** The client's current estimate of (server clock − client clock). */
  clockOffsetMs: number;
  /** The client's plugin table: in the first heartbeat of a session, after a change, and now and then. */
  plugins?: PluginSummary[];
}

/** Client to server: t0 = client send time (client clock). */
export interface ClockPingMessage extends Envelope<'clock.ping'> {
  t0: number;
}

/** Server to client: t0 echoed, t1 = server receive time, t2 = server send time (server clock). */
export interface ClockPongMessage extends Envelope<'clock.pong'> {
  t0: number;
  t1: number;
  t2: number;
}

/**
 * Server to client: run an action. Signed once by the server's static key over the canonical JSON
 * of every field but `sig` (see protocol/command.ts); `id` is the unique command id.
 */
export interface TaskDispatchMessage extends Envelope<'task.dispatch'> {
  runId: string;
  taskId: string;
  action: string;
  with: Record<string, unknown>;
  /** The instant to start on the server's clock, or null for "as soon as possible". */
  startAt: number | null;
  timeoutMs: number;
  /** After this instant (server clock) the command must not be acted on. */
  expiresAt: number;
  /** The host metrics to sample while the task runs (the job's `metrics`, or the task's override). */
  metrics?: { intervalMs: number; collect: string[] };
  sig: string;
}

/** Client to server: a dispatch or cancel was received and accepted, or refused with a code. */
export interface TaskAckMessage extends Envelope<'task.ack'> {
  /** The command id acknowledged. */
  ref: string;
  runId: string;
  taskId: string;
  accepted: boolean;
  code?: string;
  message?: string;
}

/** Server to client: stop a task (or every task of a run when taskId is absent). Signed like a dispatch. */
export interface TaskCancelMessage extends Envelope<'task.cancel'> {
  runId: string;
  taskId?: string;
  expiresAt: number;
  sig: string;
}

export type TaskEventKind = 'started' | 'finished' | 'failed' | 'timedout' | 'cancelled';

/** Client to sink: a task changed state on this host. Instants are on the server's clock. */
export interface TaskEventMessage extends Envelope<'task.event'> {
  runId: string;
  taskId: string;
  host: string;
  kind: TaskEventKind;
  at: number;
  exitCode?: number;
  durationMs?: number;
  stdoutTail?: string;
  stderrTail?: string;
  /** The instant the action actually started, to show start skew. */
  startedAt?: number;
}

/** One metric sample. */
export interface MetricSample {
  /** Instant on the server's clock. */
  t: number;
  metric: string;
  value: number;
  tags?: Record<string, string>;
}

/** Client to sink: metric samples. */
export interface MetricsBatchMessage extends Envelope<'metrics.batch'> {
  host: string;
  runId?: string;
  samples: MetricSample[];
}

/** Host counts of one task, as the sink saw them. */
export interface TaskHostCounts {
  total: number;
  started: number;
  finished: number;
  failed: number;
  timedout: number;
  cancelled: number;
}

/** Sink to server: the final state of a task on all its hosts; dependents are scheduled on it. */
export interface TaskStatusMessage extends Envelope<'task.status'> {
  runId: string;
  taskId: string;
  state: 'succeeded' | 'failed' | 'cancelled';
  hosts: TaskHostCounts;
  /** Targets the health monitor declared lost before they reported (counted against maxFailedHosts). */
  lost?: number;
}

/** Server to client: the sink to stream to changed (a separate sink registered after this client connected). */
export interface SinkInfoMessage extends Envelope<'sink.info'> {
  sink: { url: string; publicKey: string };
}

/** The server's bus topics a separate sink needs to decide and store tasks. */
export const NOTICE_TOPICS = ['run.task.dispatched', 'run.updated', 'run.cancelled', 'host.state'] as const;

/** Server to a separate sink: one of NOTICE_TOPICS, published on the sink's bus as it was on the server's. */
export interface NoticeMessage extends Envelope<'notice'> {
  topic: (typeof NOTICE_TOPICS)[number];
  data: Record<string, unknown>;
}

/** Message type → message. */
export interface WireMessageMap {
  hello: HelloMessage;
  challenge: ChallengeMessage;
  auth: AuthMessage;
  welcome: WelcomeMessage;
  error: ErrorMessage;
  heartbeat: HeartbeatMessage;
  'clock.ping': ClockPingMessage;
  'clock.pong': ClockPongMessage;
  'task.dispatch': TaskDispatchMessage;
  'task.ack': TaskAckMessage;
  'task.cancel': TaskCancelMessage;
  'task.event': TaskEventMessage;
  'metrics.batch': MetricsBatchMessage;
  'task.status': TaskStatusMessage;
  'sink.info': SinkInfoMessage;
  notice: NoticeMessage;
}

export type WireMessage = WireMessageMap[MessageType];

// ---------------------------------------------------------------------------------------------
// Schemas

const publicKeyFields = { publicKey: bytes32Schema, nonce: bytes32Schema, ephemeralKey: bytes32Schema } as const;

/** One JSON Schema (draft-07) per message type. Keys are MESSAGE_TYPES. */
export const WIRE_SCHEMAS: { readonly [T in MessageType]: object } = {
  hello: message(
    'hello',
    {
      role: { enum: ['client', 'sink'] },
      ...publicKeyFields,
      host: hostSchema,
      agentVersion: { type: 'string', maxLength: 64 },
      labels: labelsSchema,
      facts: freeFormSchema,
      capabilities: { type: 'array', maxItems: 128, items: { type: 'string', minLength: 1, maxLength: 64 } },
      endpoint: { type: 'string', minLength: 1, maxLength: 2048, pattern: '^wss?://' },
    },
    ['role', 'publicKey', 'nonce', 'ephemeralKey', 'host'],
  ),
  challenge: message(
    'challenge',
    { role: { enum: ['server', 'sink'] }, ...publicKeyFields, signature: signatureSchema },
    ['role', 'publicKey', 'nonce', 'ephemeralKey', 'signature'],
  ),
  auth: message('auth', { signature: signatureSchema }, ['signature']),
  welcome: message(
    'welcome',
    {
      sessionId: { type: 'string', minLength: 22, maxLength: 22, pattern: '^[A-Za-z0-9_-]{22}$' },
      serverTime: instantSchema,
      heartbeatIntervalMs: { type: 'integer', minimum: 100, maximum: 3_600_000 },
      sink: {
        type: 'object',
        additionalProperties: false,
        required: ['url', 'publicKey'],
        properties: { url: { type: 'string', minLength: 1, maxLength: 2048, pattern: '^wss?://' }, publicKey: bytes32Schema },
      },
      confirm: { type: 'string', minLength: 43, maxLength: 43, pattern: '^[A-Za-z0-9_-]{43}$' },
    },
    ['sessionId', 'serverTime', 'heartbeatIntervalMs', 'confirm'],
  ),
  error: message(
    'error',
    {
      code: { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Z][A-Z0-9_]*$' },
      message: { type: 'string', maxLength: 1024 },
      ref: idSchema,
    },
    ['code', 'message'],
  ),
  heartbeat: message(
    'heartbeat',
    {
      at: instantSchema,
      load1: { type: 'number', minimum: 0, maximum: 1e6 },
      cpuPercent: { type: 'number', minimum: 0, maximum: 100 },
      memAvailableBytes: bytesCountSchema,
      diskFreeBytes: bytesCountSchema,
      eventLoopLagMs: { type: 'number', minimum: 0, maximum: 3_600_000 },
      clockOffsetMs: { type: 'number', minimum: -8.64e15, maximum: 8.64e15 },
      plugins: {
        type: 'array',
        maxItems: WIRE_LIMITS.maxPluginsReported,
        items: {
          type: 'object',
          additionalProperties: false,
          required: ['name', 'state', 'restarts'],
          properties: {
            name: { type: 'string', minLength: 1, maxLength: 64, pattern: '^[a-z0-9][a-z0-9._-]*$' },
            version: { type: 'string', maxLength: 32 },
            state: { type: 'string', minLength: 1, maxLength: 16, pattern: '^[a-z]+$' },
            restarts: { type: 'integer', minimum: 0, maximum: 1e9 },
            error: {
              type: 'object',
              additionalProperties: false,
              required: ['code', 'message'],
              properties: {
                code: { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Za-z][A-Za-z0-9_]*$' },
                message: { type: 'string', maxLength: 512 },
              },
            },
          },
        },
      },
    },
    ['at', 'load1', 'cpuPercent', 'memAvailableBytes', 'diskFreeBytes', 'eventLoopLagMs', 'clockOffsetMs'],
  ),
  'clock.ping': message('clock.ping', { t0: instantSchema }, ['t0']),
  'clock.pong': message('clock.pong', { t0: instantSchema, t1: instantSchema, t2: instantSchema }, ['t0', 't1', 't2']),
  'task.dispatch': message(
    'task.dispatch',
    {
      runId: nameSchema,
      taskId: nameSchema,
      action: nameSchema,
      with: freeFormSchema,
      startAt: { anyOf: [instantSchema, { type: 'null' }] },
      timeoutMs: { type: 'integer', minimum: 1, maximum: durationMsSchema.maximum },
      expiresAt: instantSchema,
      metrics: {
        type: 'object',
        additionalProperties: false,
        required: ['intervalMs', 'collect'],
        properties: {
          intervalMs: { type: 'integer', minimum: 100, maximum: 3_600_000 },
          collect: { type: 'array', maxItems: 32, uniqueItems: true, items: { type: 'string', minLength: 1, maxLength: 32, pattern: '^[a-z][a-z0-9_-]*$' } },
        },
      },
      sig: signatureSchema,
    },
    ['runId', 'taskId', 'action', 'with', 'startAt', 'timeoutMs', 'expiresAt', 'sig'],
  ),
  'task.ack': message(
    'task.ack',
    {
      ref: idSchema,
      runId: nameSchema,
      taskId: nameSchema,
      accepted: { type: 'boolean' },
      code: { type: 'string', minLength: 1, maxLength: 64, pattern: '^[A-Z][A-Z0-9_]*$' },
      message: { type: 'string', maxLength: 1024 },
    },
    ['ref', 'runId', 'taskId', 'accepted'],
  ),
  'task.cancel': message(
    'task.cancel',
    { runId: nameSchema, taskId: nameSchema, expiresAt: instantSchema, sig: signatureSchema },
    ['runId', 'expiresAt', 'sig'],
  ),
  'task.event': message(
    'task.event',
    {
      runId: nameSchema,
      taskId: nameSchema,
      host: hostSchema,
      kind: { enum: ['started', 'finished', 'failed', 'timedout', 'cancelled'] },
      at: instantSchema,
      exitCode: { type: 'integer', minimum: -2147483648, maximum: 2147483647 },
      durationMs: durationMsSchema,
      stdoutTail: { type: 'string', maxLength: WIRE_LIMITS.maxOutputTail },
      stderrTail: { type: 'string', maxLength: WIRE_LIMITS.maxOutputTail },
      startedAt: instantSchema,
    },
    ['runId', 'taskId', 'host', 'kind', 'at'],
  ),
  'metrics.batch': message(
    'metrics.batch',
    {
      host: hostSchema,
      runId: nameSchema,
      samples: {
        type: 'array',
        maxItems: WIRE_LIMITS.maxSamplesPerBatch,
        items: {
          type: 'object',
          additionalProperties: false,
          required: ['t', 'metric', 'value'],
          properties: {
            t: instantSchema,
            metric: { type: 'string', minLength: 1, maxLength: 128, pattern: '^[A-Za-z_][A-Za-z0-9_.:]*$' },
            value: { type: 'number', minimum: -Number.MAX_VALUE, maximum: Number.MAX_VALUE },
            tags: labelsSchema,
          },
        },
      },
    },
    ['host', 'samples'],
  ),
  'task.status': message(
    'task.status',
    {
      runId: nameSchema,
      taskId: nameSchema,
      state: { enum: ['succeeded', 'failed', 'cancelled'] },
      hosts: {
        type: 'object',
        additionalProperties: false,
        required: ['total', 'started', 'finished', 'failed', 'timedout', 'cancelled'],
        properties: {
          total: countSchema,
          started: countSchema,
          finished: countSchema,
          failed: countSchema,
          timedout: countSchema,
          cancelled: countSchema,
        },
      },
      lost: countSchema,
    },
    ['runId', 'taskId', 'state', 'hosts'],
  ),
  'sink.info': message(
    'sink.info',
    {
      sink: {
        type: 'object',
        additionalProperties: false,
        required: ['url', 'publicKey'],
        properties: { url: { type: 'string', minLength: 1, maxLength: 2048, pattern: '^wss?://' }, publicKey: bytes32Schema },
      },
    },
    ['sink'],
  ),
  notice: message('notice', { topic: { enum: [...NOTICE_TOPICS] }, data: freeFormSchema }, ['topic', 'data']),
};
