/**
 * A Bolt fleet of real `bolt-core start` processes on loopback for the end-to-end specs: a server
 * (with its sink embedded, or `--role server` and a `--role sink` process), and named clients,
 * each with its own data directory under one temp dir, all with the same bolt.yaml.
 */
import Database from 'better-sqlite3';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { RunView, TaskView } from '../../core/cli/run-view.ts';
import { connectServer, type ServerApi } from '../../core/cli/server-api.ts';
import { eventually, freePort, killCliProcesses, spawnBolt, type BoltProcess } from './processes.ts';

export class ProcessFleet {
  /** Whether the sink runs as its own process (`--role sink`) rather than inside the server. */
  readonly split: boolean;
  readonly #prefix: string;
  dir = '';
  port = 0;
  sinkPort = 0;
  server: BoltProcess | undefined;
  sink: BoltProcess | undefined;
  readonly clients = new Map<string, BoltProcess>();
  /** Every process started, replaced ones included, for the cleanup. */
  readonly #all: BoltProcess[] = [];

  /** `prefix` names the temp dir (`bolt-jobs-` …). */
  constructor(split: boolean, prefix: string) {
    this.split = split;
    this.#prefix = prefix;
  }

  get serverData(): string {
    return path.join(this.dir, 'server');
  }

  get sinkData(): string {
    return path.join(this.dir, this.split ? 'sink' : 'server');
  }

  get sinkFile(): string {
    return path.join(this.sinkData, 'plugins', 'writer-sqlite', 'sink.sqlite');
  }

  clientData(name: string): string {
    return path.join(this.dir, name);
  }

  /** Makes the temp dir with `config` as its bolt.yaml and picks the two ports. */
  async prepare(config: unknown): Promise<void> {
    this.dir = await mkdtemp(path.join(os.tmpdir(), this.#prefix));
    await writeFile(path.join(this.dir, 'bolt.yaml'), JSON.stringify(config));
    this.port = await freePort();
    this.sinkPort = await freePort();
  }

  /** `bolt-core start` with the fleet's config (or another file in its dir) and `env` added. */
  spawn(args: string[], config = 'bolt.yaml', env: NodeJS.ProcessEnv = {}): BoltProcess {
    const p = spawnBolt(['start', '--config', path.join(this.dir, config), ...args], { cwd: this.dir, env: { BOLT_LOG_LEVEL: 'info', ...env } });
    this.#all.push(p);
    return p;
  }

  /** Starts (or starts again, same data dir and ports) the server and waits until it runs. */
  async startServer(): Promise<void> {
    const roleArgs = this.split ? ['--role', 'server'] : ['--sink-port', String(this.sinkPort)];
    this.server = this.spawn(['--data', this.serverData, '--port', String(this.port), ...roleArgs, '--auto-accept', '--listen', '127.0.0.1']);
    await this.server.waitForOutput(/"msg":"bolt-core server[^"]* started/, 40_000);
  }

  /** Starts (or starts again, same data dir and port) the separate sink. */
  startSink(): void {
    this.sink = this.spawn(['--role', 'sink', '--server', `ws://127.0.0.1:${this.port}`, '--data', this.sinkData,
      '--sink-port', String(this.sinkPort), '--listen', '127.0.0.1', '--auto-accept']);
  }

  /** Starts the separate sink and waits until the server knows it. */
  async startSinkAndWait(): Promise<void> {
    this.startSink();
    await this.sink!.waitForOutput(/sink connected to the server/, 40_000);
  }

  /** Starts a client named `name` (its data dir `clientData(name)`). */
  startClient(name: string, labelArgs: string[], config?: string, env: NodeJS.ProcessEnv = {}): BoltProcess {
    const p = this.spawn(['--role', 'client', '--server', `ws://127.0.0.1:${this.port}`, '--data', this.clientData(name), '--name', name, ...labelArgs], config, env);
    this.clients.set(name, p);
    return p;
  }

  /** The server's API; the token is read again each time (the server may have been restarted). */
  async api(): Promise<ServerApi> {
    const token = (await readFile(path.join(this.serverData, 'plugins', 'transport-ws', 'api-token'), 'utf8')).trim();
    return connectServer(`http://127.0.0.1:${this.port}`, token);
  }

  /** The sink's own HTTP API, with the token from the sink's data dir. */
  async sinkApi(): Promise<ServerApi> {
    const token = (await readFile(path.join(this.sinkData, 'plugins', 'transport-ws', 'api-token'), 'utf8')).trim();
    return connectServer(`http://127.0.0.1:${this.sinkPort}`, token);
  }

  /** Waits until every client in `names` is connected and healthy. */
  async waitHealthy(names: readonly string[], timeoutMs = 30_000): Promise<void> {
    await eventually(async () => {
      const hosts = await (await this.api()).get<{ name: string; state: string; connected: boolean }[]>('/api/hosts');
      return names.every((n) => hosts.some((h) => h.name === n && h.state === 'healthy' && h.connected)) ? true : undefined;
    }, timeoutMs, `${names.join(', ')} healthy`);
  }

  /** The id of the newest run of `jobName`, once the server lists it. */
  async runIdOf(jobName: string, timeoutMs = 15_000): Promise<string> {
    return eventually(async () => (await (await this.api()).get<{ runId: string; job: string }[]>('/api/runs')).find((r) => r.job === jobName)?.runId, timeoutMs, `a run of ${jobName}`);
  }

  /** Kills every process it started and removes the temp dir. */
  async stop(): Promise<void> {
    await Promise.all(this.#all.map((p) => p.kill()));
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }
}

/**
 * Starts `fleet` (its `start`) before the enclosing describe's tests and, after them, ends every
 * CLI process and the fleet, then runs `cleanup`. Returns the fleet.
 */
export function fleetForSuite<T extends ProcessFleet & { start(): Promise<void> }>(fleet: T, cleanup?: () => void): T {
  before(async function () {
    this.timeout(90_000);
    await fleet.start();
  });
  after(async () => {
    await killCliProcesses();
    await fleet.stop();
    cleanup?.();
  });
  return fleet;
}

/** Rows of a sink's SQLite file, read through a read-only connection of its own. */
export function sinkRows<T>(file: string, sql: string, ...params: unknown[]): T[] {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return db.prepare(sql).all(...params) as T[];
  } finally {
    db.close();
  }
}

/** A run's task by id; throws naming the run when it has none. */
export function taskOf(run: RunView, taskId: string): TaskView {
  const t = run.tasks.find((x) => x.taskId === taskId);
  if (!t) throw new Error(`run ${run.runId} has no task ${taskId}: ${run.tasks.map((x) => x.taskId).join(', ')}`);
  return t;
}
