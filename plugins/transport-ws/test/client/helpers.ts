/** Shared pieces of the client tests: temp dirs, a recording logger, WireClients that are closed after each test. */

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from '../../../../plugin-sdk/src/index.ts';
import { WireClient, type WireClientOptions } from '../../client/connection.ts';
import { generateIdentity } from '../../protocol/index.ts';

/** Creates a fresh temp directory, removed after the current suite. */
export function tempDir(prefix = 'bolt-client-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export interface LogEntry {
  level: 'debug' | 'info' | 'warn' | 'error';
  fields: Record<string, unknown>;
  msg: string;
}

/** A Logger that keeps every entry. */
export function recordingLogger(): { log: Logger; entries: LogEntry[] } {
  const entries: LogEntry[] = [];
  const at =
    (level: LogEntry['level']) =>
    (a: Record<string, unknown> | string, b?: string): void => {
      entries.push(typeof a === 'string' ? { level, fields: {}, msg: a } : { level, fields: a, msg: b ?? '' });
    };
  return { log: { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') }, entries };
}

/** Makes WireClients with test defaults (fresh identity, replay guard in a temp dir) and closes them after each test. */
export function clientFactory(): (options: Partial<WireClientOptions> & Pick<WireClientOptions, 'url'>) => WireClient {
  const made: WireClient[] = [];
  const root = tempDir('bolt-client-guard-');
  let n = 0;
  afterEach(async () => {
    await Promise.all(made.splice(0).map((c) => c.close()));
  });
  return (options) => {
    n++;
    const client = new WireClient({
      identity: generateIdentity(),
      host: `test-host-${n}`,
      replayGuardDir: path.join(root, `c${n}`),
      ...options,
    });
    made.push(client);
    return client;
  };
}
