/**
 * Test helper: a real `bolt-core start` (server and sink in one process, on loopback, with
 * `--auto-accept`) running the transport, the health monitor, writer-sqlite and
 * exporter-prometheus from this repository, and probe hosts that connect to it over the real
 * protocol: to the server first, then to the sink its welcome names, as a client agent does.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { MetricSample } from '../../../plugin-sdk/src/schemas/wire.ts';
import { WireClient } from '../../transport-ws/client/connection.ts';
import { PinStore } from '../../transport-ws/client/pins.ts';
import { generateIdentity } from '../../transport-ws/protocol/index.ts';
import { REPO } from '../../../test/helpers/core.ts';
import { coreInfo, eventually, freePort, spawnBolt, type BoltProcess } from '../../../test/helpers/processes.ts';

export const SINK_PLUGINS = ['transport-ws', 'health-monitor', 'writer-sqlite', 'exporter-prometheus'];

export interface HttpAnswer {
  status: number;
  contentType: string;
  text: string;
}

/** A host connected to the server and to the sink, sending metrics batches like a client agent. */
export interface ProbeHost {
  readonly name: string;
  /** Sends one metrics.batch to the sink; returns its message id. Throws when the socket refused it. */
  sendBatch(samples: MetricSample[], runId?: string, id?: string): string;
  close(): Promise<void>;
}

export interface SinkProcess {
  readonly proc: BoltProcess;
  readonly dataDir: string;
  /** http://127.0.0.1:<server port> and http://127.0.0.1:<sink port>. */
  readonly serverUrl: string;
  readonly sinkUrl: string;
  /** The API token (the same file serves the server's and the embedded sink's API). */
  readonly token: string;
  /** GET on the sink's port, with the token unless `withToken` is false. */
  get(route: string, withToken?: boolean): Promise<HttpAnswer>;
  connectHost(name: string): Promise<ProbeHost>;
  close(): Promise<void>;
}

export async function startSinkProcess(plugins = SINK_PLUGINS, config: Record<string, unknown> = {}): Promise<SinkProcess> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bolt-sink-proc-'));
  const pluginsDir = path.join(dir, 'plugins');
  await mkdir(pluginsDir);
  for (const name of plugins) await symlink(path.join(REPO, 'plugins', name), path.join(pluginsDir, name), 'dir');
  const configFile = path.join(dir, 'bolt.yaml');
  await writeFile(configFile, JSON.stringify({ plugins: config }));
  const dataDir = path.join(dir, 'data');
  const [port, sinkPort] = [await freePort(), await freePort()];
  const proc = spawnBolt(
    ['start', '--data', dataDir, '--plugins', pluginsDir, '--config', configFile, '--port', String(port), '--sink-port', String(sinkPort), '--listen', '127.0.0.1', '--auto-accept'],
    { env: { BOLT_LOG_LEVEL: 'warn' } },
  );
  const hosts: ProbeHost[] = [];
  const close = async () => {
    await Promise.all(hosts.map((h) => h.close()));
    await proc.kill();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await coreInfo(dataDir, 30_000);
    const token = await eventually(async () => (await readFile(path.join(dataDir, 'plugins', 'transport-ws', 'api-token'), 'utf8')).trim() || undefined, 30_000, 'the API token');
    const sinkUrl = `http://127.0.0.1:${sinkPort}`;
    const get = async (route: string, withToken = true): Promise<HttpAnswer> => {
      const res = await fetch(`${sinkUrl}${route}`, { headers: withToken ? { authorization: `Bearer ${token}` } : {}, signal: AbortSignal.timeout(30_000) });
      return { status: res.status, contentType: res.headers.get('content-type') ?? '', text: await res.text() };
    };
    // Up once the sink answers and its writer (and exporter, when loaded) serve.
    await eventually(async () => {
      if ((await get('/api/runs')).status !== 200) return undefined;
      return !plugins.includes('exporter-prometheus') || (await get('/metrics')).status === 200 ? true : undefined;
    }, 30_000, 'the sink API');
    return {
      proc,
      dataDir,
      serverUrl: `http://127.0.0.1:${port}`,
      sinkUrl,
      token,
      get,
      async connectHost(name) {
        const host = await connectProbe(dir, `ws://127.0.0.1:${port}/agent`, name);
        hosts.push(host);
        return host;
      },
      close,
    };
  } catch (err) {
    await close();
    throw new Error(`${(err as Error).message}\n--- bolt-core output ---\n${proc.output().slice(-3000)}`);
  }
}

async function connectProbe(dir: string, agentUrl: string, name: string): Promise<ProbeHost> {
  const identity = generateIdentity();
  const home = path.join(dir, 'hosts', name);
  await mkdir(home, { recursive: true });
  let sink: WireClient | null = null;
  let sinkUp = false;
  const agent = new WireClient({
    url: agentUrl,
    identity,
    host: name,
    pins: PinStore.open(home),
    replayGuardDir: home,
    onConnected: (_session, welcome) => {
      if (sink !== null || welcome.sink === undefined) return;
      sink = new WireClient({
        url: welcome.sink.url,
        identity,
        host: name,
        expectRole: 'sink',
        serverKey: welcome.sink.publicKey,
        onConnected: () => (sinkUp = true),
        onDisconnected: () => (sinkUp = false),
      });
      sink.start();
    },
  });
  agent.start();
  const close = async () => {
    await Promise.all([agent.close(), (sink as WireClient | null)?.close()]);
  };
  try {
    await eventually(() => (sinkUp ? true : undefined), 20_000, `${name} connected to the sink`);
  } catch (err) {
    await close();
    throw err;
  }
  return {
    name,
    sendBatch(samples, runId, id = randomUUID()) {
      const sent = sink!.send({ v: 1, type: 'metrics.batch', id, host: name, ...(runId !== undefined && { runId }), samples });
      if (!sent) throw new Error(`${name}: the sink connection did not take the batch`);
      return id;
    },
    close,
  };
}
