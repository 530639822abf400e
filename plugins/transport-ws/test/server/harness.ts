/** A server endpoint on 127.0.0.1 for the server-side tests, with everything it opens closed after each test. */

import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { WireMessage } from '../../../../plugin-sdk/src/schemas/wire.ts';
import { generateIdentity, type Identity } from '../../protocol/identity.ts';
import { clockPongHandler, WireEndpoint, type ConnectionHandler, type WireEndpointOptions } from '../../server/endpoint.ts';
import { Listener, type ListenerOptions } from '../../server/listener.ts';
import { TrustStore, type TrustRole } from '../../server/trust-store.ts';

const cleanups: Array<() => unknown> = [];

/** Runs (in reverse order) everything registered by the tests so far; call from afterEach. */
export async function cleanUp(): Promise<void> {
  while (cleanups.length > 0) await cleanups.pop()!();
}

/** A fresh temp directory, removed after the test. */
export function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bolt-wire-server-'));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export interface TestServer {
  dir: string;
  trust: TrustStore;
  listener: Listener;
  endpoint: WireEndpoint;
  identity: Identity;
  url: string;
  /** 'open <fp8> <sessionId>' and 'close <fp8> <sessionId> <code> <reason>' in order. */
  events: string[];
  /** Messages handed to the handlers, per connection fingerprint. */
  received: Array<{ fingerprint: string; message: WireMessage }>;
  /** Stops endpoint, listener and trust store (also done after the test). */
  stop(): Promise<void>;
}

export interface TestServerOptions extends Partial<Omit<WireEndpointOptions, 'server' | 'trust' | 'identity'>> {
  dir?: string;
  autoAccept?: boolean;
  identity?: Identity;
  tls?: ListenerOptions['tls'];
  /** Peer roles accepted; default ['client']. */
  roles?: TrustRole[];
}

/** Starts listener + trust store + '/agent' endpoint answering clock pings and recording heartbeats. */
export async function startServer(options: TestServerOptions = {}): Promise<TestServer> {
  const { dir: givenDir, autoAccept, identity: givenIdentity, tls, roles, ...endpointOptions } = options;
  const dir = givenDir ?? tempDir();
  const identity = givenIdentity ?? generateIdentity();
  const trust = TrustStore.open(dir, { autoAccept: autoAccept ?? false });
  const listener = await Listener.start({ port: 0, host: '127.0.0.1', dataDir: dir, ...(tls !== undefined && { tls }) });
  const events: string[] = [];
  const received: TestServer['received'] = [];
  const record: ConnectionHandler = (message, conn) => {
    received.push({ fingerprint: conn.fingerprint, message });
  };
  const perRole = new Map<string, ConnectionHandler>([
    ['clock.ping', clockPongHandler()],
    ['heartbeat', record],
  ]);
  const endpoint = new WireEndpoint({
    server: listener.server,
    path: '/agent',
    identity,
    role: 'server',
    trust,
    handlers: new Map((roles ?? ['client']).map((role) => [role, perRole])),
    welcome: () => ({ heartbeatIntervalMs: 1000 }),
    onOpen: (conn) => events.push(`open ${conn.fingerprint.slice(0, 8)} ${conn.sessionId}`),
    onClose: (conn, info) => events.push(`close ${conn.fingerprint.slice(0, 8)} ${conn.sessionId} ${info.code} ${info.reason}`),
    ...endpointOptions,
  });
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await endpoint.close(500);
    await listener.close();
    trust.close();
  };
  cleanups.push(stop);
  return { dir, trust, listener, endpoint, identity, url: listener.wsUrl('/agent'), events, received, stop };
}

/** Polls `predicate` every 10 ms until it holds, failing after `timeoutMs`. */
export async function waitFor(predicate: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Sends a raw HTTP request and returns the first line of the answer (or '' if the socket just closed). */
export function rawRequest(port: number, lines: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(`${lines.join('\r\n')}\r\n\r\n`));
    let answer = '';
    socket.on('data', (chunk) => (answer += chunk.toString('latin1')));
    socket.on('error', (err) => ((err as NodeJS.ErrnoException).code === 'ECONNRESET' ? resolve(answer.split('\r\n')[0] ?? '') : reject(err)));
    socket.on('close', () => resolve(answer.split('\r\n')[0] ?? ''));
  });
}
