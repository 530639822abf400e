/**
 * Messages between the core (main thread) and a plugin host (worker thread or child process).
 * Both sides speak the same messages; a child process carries them over its IPC channel.
 */
import type { MessagePort } from 'node:worker_threads';
import type { ErrorInfo } from '../../plugin-sdk/src/errors.ts';
import type { ProcessOptions } from '../../plugin-sdk/src/index.ts';

/** What the host needs to load its plugin; passed as workerData, or as the first IPC message to a child. */
export interface HostInit {
  name: string;
  version: string;
  bundleUrl: string;
  pluginDir: string;
  dataDir: string;
  roles: string[];
  config: unknown;
  options: ProcessOptions;
  startTimeoutMs: number;
  /** When true (worker isolation) the host's `process` is hardened before the plugin loads. */
  harden: boolean;
}

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/** Host -> core. */
export type HostMessage =
  | { t: 'started' }
  | { t: 'start-failed'; error: ErrorInfo }
  | { t: 'stopped'; error?: ErrorInfo }
  /** A child process reports its uncaught error before it exits (a worker's arrives as an 'error' event). */
  | { t: 'fatal'; error: ErrorInfo }
  | { t: 'pong'; seq: number }
  | { t: 'log'; level: LogLevel; msg: string; obj?: Record<string, unknown> }
  | { t: 'pub'; topic: string; data: unknown }
  | { t: 'sub'; topic: string }
  | { t: 'unsub'; topic: string }
  | { t: 'provide'; service: string }
  | { t: 'unprovide'; service: string }
  | { t: 'req'; id: number; service: string; data: unknown; timeoutMs: number }
  | { t: 'res'; id: number; ok: true; data: unknown }
  | { t: 'res'; id: number; ok: false; error: ErrorInfo };

/** Core -> host. */
export type CoreMessage =
  | { t: 'init'; init: HostInit }
  | { t: 'stop' }
  | { t: 'ping'; seq: number }
  | { t: 'msg'; topic: string; from: string; data: unknown }
  | { t: 'req'; id: number; service: string; from: string; data: unknown }
  | { t: 'res'; id: number; ok: true; data: unknown }
  | { t: 'res'; id: number; ok: false; error: ErrorInfo }
  /** A direct channel to the provider of `service` (worker hosts only; the port is transferred, or absent when the pair has one already). */
  | { t: 'channel'; service: string; provider: string; port?: MessagePort }
  /** The provider behind a direct channel is gone: fail what is in flight on it, route through the core again. */
  | { t: 'channel-closed'; provider: string }
  /** The provider's end of a direct channel: requests from `peer` arrive on `port`. */
  | { t: 'channel-accept'; peer: string; port: MessagePort };

/** Messages on a direct worker-to-worker channel. */
export type ChannelMessage =
  | { t: 'req'; id: number; service: string; from: string; data: unknown }
  | { t: 'res'; id: number; ok: true; data: unknown }
  | { t: 'res'; id: number; ok: false; error: ErrorInfo };
