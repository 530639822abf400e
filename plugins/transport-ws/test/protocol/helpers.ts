/** Shared pieces of the protocol tests: temp dirs, error assertions, an in-memory handshake, sample messages. */

import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BoltError, type ErrorCode } from '../../../../plugin-sdk/src/errors.ts';
import type { MessageType, WireMessage, WireMessageMap } from '../../../../plugin-sdk/src/schemas/wire.ts';
import { createDecoder, DIRECTION_TYPES, type Direction } from '../../protocol/codec.ts';
import { createClientHandshake, createServerHandshake, type ClientHandshakeOptions, type ServerHandshakeOptions } from '../../protocol/handshake.ts';
import type { Session } from '../../protocol/session.ts';

/** Creates a fresh temp directory and registers its removal after the current suite. */
export function tempDir(prefix = 'bolt-wire-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Asserts that `fn` throws a BoltError with `code`, and returns it. */
export function expectBoltError(fn: () => unknown, code: ErrorCode): BoltError {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(thrown, `expected ${code} to be thrown`).to.be.instanceOf(BoltError);
  expect((thrown as BoltError).code, (thrown as BoltError).message).to.equal(code);
  return thrown as BoltError;
}

/**
 * Passes a handshake message across "the wire": serialized, then decoded by the receiving
 * endpoint's decoder like the transport will, so schema checks apply on the way.
 */
export function acrossWire(direction: Direction, message: WireMessage): WireMessage {
  const handshakeTypes: MessageType[] = ['hello', 'challenge', 'auth', 'welcome', 'error'];
  const carried = handshakeTypes.filter((type) => DIRECTION_TYPES.get(direction)!.has(type));
  const decoder = createDecoder(direction, new Map(carried.map((type) => [type, (m: WireMessage) => m])));
  const result = decoder.decode(JSON.stringify(message));
  if (!result.ok) throw new BoltError(result.code, result.message);
  return result.message;
}

export interface PairOptions {
  client: Omit<ClientHandshakeOptions, 'host'> & { host?: string };
  server: ServerHandshakeOptions;
  /** Directions of the two legs, e.g. ['client->server', 'server->client']. */
  directions?: [Direction, Direction];
}

/** Runs a complete handshake in memory and returns both sessions. Throws what either side throws. */
export function handshakePair(opts: PairOptions): { client: Session; server: Session } {
  const [up, down] = opts.directions ?? ['client->server', 'server->client'];
  const client = createClientHandshake({ host: 'host-1.example', ...opts.client });
  const server = createServerHandshake(opts.server);
  const hello = client.next().send!;
  const challenge = server.next(acrossWire(up, hello)).send!;
  const auth = client.next(acrossWire(down, challenge)).send!;
  const serverDone = server.next(acrossWire(up, auth));
  const clientDone = client.next(acrossWire(down, serverDone.send!));
  return { client: clientDone.session!, server: serverDone.session! };
}

/** One valid message of every type, as a transport would build it. */
export function sampleMessages(): { [T in MessageType]: WireMessageMap[T] } {
  const key = 'A'.repeat(43) + '=';
  const sig = 'B'.repeat(86) + '==';
  return {
    hello: { v: 1, type: 'hello', id: 'm-1', role: 'client', publicKey: key, nonce: key, ephemeralKey: key, host: 'web-01', labels: { role: 'web', 'topology/zone': 'a' }, facts: { cpus: 2, os: { name: 'debian' } }, capabilities: ['action:shell'], agentVersion: '0.1.0' },
    challenge: { v: 1, type: 'challenge', id: 'm-2', role: 'server', publicKey: key, nonce: key, ephemeralKey: key, signature: sig },
    auth: { v: 1, type: 'auth', id: 'm-3', signature: sig },
    welcome: { v: 1, type: 'welcome', id: 'm-4', sessionId: 'abcdefghijklmnopqrstuv', serverTime: 1_700_000_000_000, heartbeatIntervalMs: 5000, sink: { url: 'ws://127.0.0.1:7701/ingest', publicKey: key }, confirm: 'C'.repeat(43) },
    error: { v: 1, type: 'error', id: 'm-5', code: 'BOLT_ERR_WIRE_MALFORMED', message: 'bad', ref: 'm-1' },
    heartbeat: { v: 1, type: 'heartbeat', id: 'm-6', at: 1_700_000_000_000, load1: 0.5, cpuPercent: 12.5, memAvailableBytes: 8e9, diskFreeBytes: 1e11, eventLoopLagMs: 1.2, clockOffsetMs: -3.25 },
    'clock.ping': { v: 1, type: 'clock.ping', id: 'm-7', t0: 1_700_000_000_000.25 },
    'clock.pong': { v: 1, type: 'clock.pong', id: 'm-8', t0: 1_700_000_000_000.25, t1: 1_700_000_000_001, t2: 1_700_000_000_001.5 },
    'task.dispatch': { v: 1, type: 'task.dispatch', id: 'cmd-1', runId: 'run-1', taskId: 'hammer', action: 'http-load', with: { url: 'http://x/', rate: 2000 }, startAt: 1_700_000_005_000, timeoutMs: 60_000, expiresAt: 1_700_000_010_000, sig },
    'task.ack': { v: 1, type: 'task.ack', id: 'm-9', ref: 'cmd-1', runId: 'run-1', taskId: 'hammer', accepted: false, code: 'BOLT_ERR_WIRE_REPLAYED', message: 'seen' },
    'task.cancel': { v: 1, type: 'task.cancel', id: 'cmd-2', runId: 'run-1', expiresAt: 1_700_000_010_000, sig },
    'task.event': { v: 1, type: 'task.event', id: 'm-10', runId: 'run-1', taskId: 'hammer', host: 'web-01', kind: 'finished', at: 1_700_000_065_000, exitCode: 0, durationMs: 60_000, stdoutTail: 'ok\n', stderrTail: '', startedAt: 1_700_000_005_000.4 },
    'metrics.batch': { v: 1, type: 'metrics.batch', id: 'm-11', host: 'web-01', runId: 'run-1', samples: [{ t: 1_700_000_006_000, metric: 'cpu.user', value: 42.5, tags: { core: '0' } }, { t: 1_700_000_006_000, metric: 'mem.used', value: -0 }] },
    'task.status': { v: 1, type: 'task.status', id: 'm-12', runId: 'run-1', taskId: 'hammer', state: 'succeeded', hosts: { total: 50, started: 50, finished: 50, failed: 0, timedout: 0, cancelled: 0 } },
    'sink.info': { v: 1, type: 'sink.info', id: 'm-13', sink: { url: 'ws://sink.example:7701/ingest', publicKey: key } },
    notice: { v: 1, type: 'notice', id: 'm-14', topic: 'host.state', data: { id: 'h1', from: 'missing', to: 'lost' } },
  };
}
