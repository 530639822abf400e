/**
 * client.send through the real transport: a client core and a server+sink core on loopback. Events
 * sent while the sink is down wait in the client's outbox and reach the restarted sink, in order,
 * before newer ones; nothing is lost, and only events the sink may have missed are repeated.
 */
import { expect } from 'chai';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { Core } from '../../../../core/runtime.ts';
import type { ProcessOptions } from '../../../../plugin-sdk/src/index.ts';
import type { TaskEventMessage } from '../../../../plugin-sdk/src/schemas/wire.ts';
import { freePort } from '../../../../test/helpers/processes.ts';

const TRANSPORT = fileURLToPath(new URL('../..', import.meta.url));

function event(i: number): TaskEventMessage {
  return { v: 1, type: 'task.event', id: `cmd-${i}:finished`, runId: 'run-1', taskId: 'task-1', host: 'c1', kind: 'finished', at: 1_700_000_000_000 + i, exitCode: 0 };
}

async function until<T>(what: string, probe: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs: number): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe('transport-ws client.send and the outbox, end to end', function () {
  this.timeout(30_000);
  let dir: string;
  let pluginsDir: string;
  let configFile: string;
  let server: Core | null = null;
  let client: Core | null = null;
  const received: string[] = [];

  async function startCore(roles: string[], dataDir: string, options: ProcessOptions): Promise<Core> {
    const core = await Core.start({ roles, pluginDirs: [pluginsDir], dataDir, configFile, log: pino({ level: 'silent' }), options });
    await core.supervisor.waitFor('transport-ws', (p) => p.state === 'running', 10_000);
    return core;
  }

  async function startServer(port: number, sinkPort: number): Promise<Core> {
    const core = await startCore(['server', 'sink'], path.join(dir, 'server'), { port, sinkPort, listen: '127.0.0.1', autoAccept: true });
    core.bus.subscribe('sink.task.event', (data) => received.push((data as { id: string }).id));
    return core;
  }

  const sinkConnected = async (): Promise<boolean> => {
    const status = await client!.bus.request<{ sink: { connected: boolean } | null }>('client.status');
    return status.sink?.connected === true;
  };

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'bolt-outbox-e2e-'));
    pluginsDir = path.join(dir, 'plugins');
    await mkdir(pluginsDir);
    await symlink(TRANSPORT, path.join(pluginsDir, 'transport-ws'), 'dir');
    configFile = path.join(dir, 'bolt.yaml');
    await writeFile(configFile, JSON.stringify({ plugins: { 'transport-ws': { heartbeatIntervalMs: 500 } } }));
  });

  after(async () => {
    await client?.stop();
    await server?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('delivers what was sent while the sink was down once it is back, in order, losing nothing', async () => {
    const port = await freePort();
    const sinkPort = await freePort();
    server = await startServer(port, sinkPort);
    client = await startCore(['client'], path.join(dir, 'client'), { server: `ws://127.0.0.1:${port}`, name: 'c1' });
    await until('the client to reach the sink', sinkConnected, 10_000);

    for (let i = 1; i <= 5; i++) expect(await client.bus.request('client.send', event(i))).to.equal(true);
    await until('events 1-5 at the sink', () => received.length >= 5, 5000);
    expect(received).to.deep.equal([1, 2, 3, 4, 5].map((i) => event(i).id));

    await server.stop();
    server = null;
    await until('the client to see the sink gone', async () => !(await sinkConnected()), 5000);
    for (let i = 6; i <= 10; i++) expect(await client.bus.request('client.send', event(i))).to.equal(true);

    received.length = 0;
    server = await startServer(port, sinkPort);
    await until('the client to reach the restarted sink', sinkConnected, 20_000);
    for (let i = 11; i <= 12; i++) await client.bus.request('client.send', event(i));
    await until('events 6-12 at the sink', () => received.includes(event(12).id), 5000);
    // Events 1-5 went out less than 5 s before the sink stopped, so they may come again (ids make it
    // harmless); everything else comes once, in order, the backlog before the newer events.
    const repeats = received.filter((id) => [1, 2, 3, 4, 5].some((i) => event(i).id === id));
    expect(repeats).to.deep.equal(received.slice(0, repeats.length));
    expect(received.slice(repeats.length)).to.deep.equal([6, 7, 8, 9, 10, 11, 12].map((i) => event(i).id));
  });
});
