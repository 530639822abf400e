/**
 * How many simulated hosts the fleet holds, and what each costs in the fleet's process.
 *
 *   npx tsx --expose-gc bench/fleet/fleet-capacity.ts [--n 1000,2000] [--rounds 10]
 *
 * The responder is the client tests' minimal server (plugins/transport-ws/test/client/mini-server.ts)
 * in a child process, so the fleet process holds only the simulated hosts. Per N it prints one
 * JSON line: time for all N to connect, memory per host (RSS and heap, after GC, over the empty
 * fleet), arrival of a broadcast dispatch at all N (median and p99 over the rounds; stamped when
 * the frame reached each host), and the fleet process's CPU per second at 1 s heartbeats.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { once } from 'node:events';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { median, p99 } from '../lib/stats.ts';
import { Fleet } from './fleet.ts';

const SELF = fileURLToPath(import.meta.url);

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
}

function loadavg(): string {
  return fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
}

/** Child mode: run the responder, print its URL, broadcast a dispatch on each "dispatch <id>" line. */
async function serve(): Promise<void> {
  const { MiniServer } = await import('../../plugins/transport-ws/test/client/mini-server.ts');
  const { localClock } = await import('../../plugins/transport-ws/protocol/index.ts');
  const server = await MiniServer.start({ heartbeatIntervalMs: 1000 });
  process.stdout.write(`url ${server.url}\n`);
  for await (const line of readline.createInterface({ input: process.stdin })) {
    const [verb, id] = line.split(' ');
    if (verb === 'dispatch' && id !== undefined) {
      const sentAt = performance.timeOrigin + performance.now();
      server.dispatch({ id, expiresAt: localClock() + 60_000 });
      const loopMs = performance.timeOrigin + performance.now() - sentAt;
      process.stdout.write(`sent ${id} ${sentAt} ${loopMs}\n`);
    } else if (verb === 'count') {
      process.stdout.write(`count ${server.live.length}\n`);
    }
  }
  await server.close();
}

class Responder {
  readonly child: ChildProcess;
  readonly #lines: AsyncIterator<string>;

  constructor() {
    this.child = spawn(process.execPath, [...process.execArgv, SELF, '--serve'], { stdio: ['pipe', 'pipe', 'inherit'] });
    this.#lines = readline.createInterface({ input: this.child.stdout! })[Symbol.asyncIterator]();
  }

  async line(prefix: string): Promise<string[]> {
    for (;;) {
      const { value, done } = await this.#lines.next();
      if (done) throw new Error('responder exited');
      const parts = (value as string).split(' ');
      if (parts[0] === prefix) return parts.slice(1);
    }
  }

  send(line: string): void {
    this.child.stdin!.write(`${line}\n`);
  }

  async stop(): Promise<void> {
    this.child.stdin!.end();
    if (this.child.exitCode === null) await once(this.child, 'exit');
  }
}

function gc(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

async function measure(n: number, rounds: number): Promise<Record<string, unknown>> {
  const responder = new Responder();
  const [url] = await responder.line('url');
  const loadStart = loadavg();
  const fleet = new Fleet({ url: url!, count: n, concurrency: 200 });
  gc();
  const before = process.memoryUsage();
  const started = performance.now();
  await fleet.start();
  await fleet.waitConnected(n, 120_000);
  const connectMs = performance.now() - started;
  // Let the clock bursts finish, then measure memory at rest.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  gc();
  const after = process.memoryUsage();

  const cpuStart = process.cpuUsage();
  const wallStart = performance.now();
  await new Promise((resolve) => setTimeout(resolve, 5000));
  const cpu = process.cpuUsage(cpuStart);
  const idleCpuPercent = ((cpu.user + cpu.system) / 1000 / (performance.now() - wallStart)) * 100;

  const spans: number[] = [];
  const firsts: number[] = [];
  const loops: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const id = `bench-${r}`;
    responder.send(`dispatch ${id}`);
    const [, sentAt, loopMs] = await responder.line('sent');
    await fleet.waitArrivals(id, n, 30_000);
    const arrived = [...fleet.arrivals(id).values()];
    spans.push(Math.max(...arrived) - Number(sentAt));
    firsts.push(Math.min(...arrived) - Number(sentAt));
    loops.push(Number(loopMs));
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const stats = fleet.stats();
  await fleet.close();
  await responder.stop();
  return {
    bench: 'fleet-capacity',
    clients: n,
    connectMs: Math.round(connectMs),
    connectPerSecond: Math.round((n / connectMs) * 1000),
    rssPerClientKiB: Math.round((after.rss - before.rss) / n / 1024),
    heapPerClientKiB: Math.round((after.heapUsed - before.heapUsed) / n / 1024),
    externalPerClientKiB: Math.round((after.external + after.arrayBuffers - before.external - before.arrayBuffers) / n / 1024),
    fleetCpuPercentAt1sHeartbeats: Number(idleCpuPercent.toFixed(1)),
    broadcastAllArrivedMs: { median: Number(median(spans).toFixed(1)), p99: Number(p99(spans).toFixed(1)), rounds },
    broadcastFirstArrivedMs: Number(median(firsts).toFixed(1)),
    responderSendLoopMs: Number(median(loops).toFixed(1)),
    attempts: stats.attempts,
    refusals: stats.refusals,
    gc: typeof (globalThis as { gc?: unknown }).gc === 'function',
    loadavg: { start: loadStart, end: loadavg() },
  };
}

if (process.argv.includes('--serve')) {
  await serve();
} else {
  const sizes = arg('n', '1000').split(',').map(Number);
  const rounds = Number(arg('rounds', '10'));
  for (const n of sizes) process.stdout.write(`${JSON.stringify(await measure(n, rounds))}\n`);
}
