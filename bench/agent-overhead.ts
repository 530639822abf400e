/**
 * agent-overhead: what a Bolt client agent costs its host, idle and while it collects the full
 * system metric set every second, next to sysstat's sadc collecting the same at the same interval.
 *
 *   node --import tsx bench/agent-overhead.ts [--seconds 60] [--client-env NAME=VALUE]...
 *
 * 1. A real server (`bolt-core start --auto-accept`, server + embedded sink, loopback) and a real
 *    client (`bolt-core start --role client`, started through bin/bolt-core as a user starts it,
 *    with the launcher's settings) running the client plugins a real agent loads:
 *    transport-ws, action-shell, action-sleep, action-mark, collector-system, collector-process
 *    (no processes configured), each from a snapshot of plugins/ so edits to the working tree
 *    cannot hot-reload them mid-measurement.
 * 2. idle: once the host is healthy and has settled, the client process's CPU (all threads) every
 *    second for --seconds, and its RSS.
 * 3. collecting: a job with one `sleep` task and `metrics: { interval: 1s, collect: [cpu, memory,
 *    network, disk, filesystem, load] }`; once its samples reach the sink's side of client.send,
 *    the same measurement, while `sadc -S DISK,XDISK 1 N` (CPU, memory, swap, paging, load,
 *    network interfaces and errors, disks, partitions, filesystems) runs beside it and is measured
 *    the same way.
 *
 * CPU per second is the growth of the summed per-thread run time (/proc/<pid>/task/<tid>/schedstat,
 * nanoseconds), as a % of one core; the figure is the median of the per-second values, with the
 * mean from utime+stime (/proc/<pid>/stat) over the whole window as a cross-check. RSS is VmRSS.
 * The client's child processes (esbuild's build service while it runs, a task's shell) are not in
 * those figures: their RSS and CPU are reported beside them. Threads are named where the plugin
 * says which is its own (client.status and <collector>.stats report their thread id).
 * Prints one JSON object on stdout; progress on stderr; exits non-zero when a run fails.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { BoltServer, codeVersion, cpuSeconds, loadavg, rssBytes, scratchDir, sleep, snapshotPlugins, threadCpuNs } from './lib/bolt-server.ts';
import { median, percentile } from './lib/stats.ts';

const REPO = path.resolve(import.meta.dirname, '..');
const BIN = path.join(REPO, 'bin', 'bolt-core');
const SADC = '/usr/lib/sysstat/sadc';
const SERVER_PLUGINS = ['transport-ws', 'health-monitor', 'parser-yaml', 'scheduler-dag', 'aggregator-results', 'writer-sqlite'];
const CLIENT_PLUGINS = ['transport-ws', 'action-shell', 'action-sleep', 'action-mark', 'collector-system', 'collector-process'];
const FULL_SET = ['cpu', 'memory', 'network', 'disk', 'filesystem', 'load'];
/** After the host is healthy (or collection started): clock pings done, JIT warm, buffers settled. */
const SETTLE_MS = 5000;
const MiB = 1024 * 1024;

const progress = (msg: string) => process.stderr.write(`[agent-overhead] ${msg}\n`);
const round = (v: number, digits = 2) => Number(v.toFixed(digits));

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '60' }, 'client-env': { type: 'string', multiple: true, default: [] } } });
const SECONDS = Number(values.seconds);
if (!Number.isInteger(SECONDS) || SECONDS < 5) throw new Error('--seconds must be a whole number of at least 5');
/** Extra environment of the client only (--client-env NAME=VALUE), e.g. an agent's service settings; none by default. */
const CLIENT_ENV = Object.fromEntries(values['client-env']!.map((pair) => {
  const eq = pair.indexOf('=');
  if (eq < 1) throw new Error(`--client-env takes NAME=VALUE (got '${pair}')`);
  return [pair.slice(0, eq), pair.slice(eq + 1)];
}));

/** Summed run time of the live threads of a process, in ns. */
function runTimeNs(pid: number): number {
  let total = 0;
  for (const ns of threadCpuNs(pid).values()) total += ns;
  return total;
}

interface Window {
  /** Per-second CPU, % of one core. */
  perSecond: number[];
  /** Mean over the window from utime + stime, % of one core (1/CLK_TCK resolution). */
  meanFromStat: number;
  rssBytes: number[];
  /** CPU of each thread over the whole window, % of one core, busiest first. */
  threads: Array<{ tid: number; percent: number }>;
  /** The process's children over the window: their summed RSS each second, their CPU, what they were. */
  children: { rssBytes: number[]; cpuNs: number; commands: Set<string> };
}

/** The direct children of a process (/proc/<pid>/task/<tid>/children). */
function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      for (const child of fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').split(' ')) if (child.trim() !== '') out.push(Number(child));
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return out;
}

/** A child's command line (program and first argument), its RSS and its summed run time; null once it is gone. */
function childNow(pid: number): { command: string; rss: number; cpuNs: number } | null {
  try {
    const command = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(0, 2).map((a) => path.basename(a)).join(' ');
    return { command, rss: rssBytes(pid), cpuNs: runTimeNs(pid) };
  } catch {
    return null;
  }
}

/** Samples the CPU and RSS of each process every second for `seconds`. */
async function measure(pids: number[], seconds: number): Promise<Window[]> {
  const windows = pids.map((): Window => ({ perSecond: [], meanFromStat: 0, rssBytes: [], threads: [], children: { rssBytes: [], cpuNs: 0, commands: new Set() } }));
  const statStart = pids.map(cpuSeconds);
  const threadsStart = pids.map(threadCpuNs);
  // Run time of each child when first seen (or at the start), so that only the window's share counts.
  const childCpu = pids.map(() => new Map<number, number>());
  const sampleChildren = (i: number, pid: number, first: boolean): void => {
    let rss = 0;
    for (const child of childPids(pid)) {
      const now = childNow(child);
      if (now === null) continue;
      const before = childCpu[i]!.get(child);
      if (before === undefined) childCpu[i]!.set(child, first ? now.cpuNs : 0);
      if (!first) {
        windows[i]!.children.cpuNs += now.cpuNs - (before ?? 0);
        childCpu[i]!.set(child, now.cpuNs);
        windows[i]!.children.commands.add(now.command);
        rss += now.rss;
      }
    }
    if (!first) windows[i]!.children.rssBytes.push(rss);
  };
  pids.forEach((pid, i) => sampleChildren(i, pid, true));
  let last = pids.map(runTimeNs);
  let lastAt = performance.now();
  const startedAt = lastAt;
  for (let s = 0; s < seconds; s++) {
    await sleep(startedAt + (s + 1) * 1000 - performance.now());
    const now = performance.now();
    const runTime = pids.map(runTimeNs);
    pids.forEach((pid, i) => {
      windows[i]!.perSecond.push(((runTime[i]! - last[i]!) / 1e6 / (now - lastAt)) * 100);
      windows[i]!.rssBytes.push(rssBytes(pid));
      sampleChildren(i, pid, false);
    });
    last = runTime;
    lastAt = now;
  }
  const elapsedS = (performance.now() - startedAt) / 1000;
  pids.forEach((pid, i) => {
    windows[i]!.meanFromStat = ((cpuSeconds(pid) - statStart[i]!) / elapsedS) * 100;
    windows[i]!.threads = [...threadCpuNs(pid)]
      .map(([tid, ns]) => ({ tid, percent: ((ns - (threadsStart[i]!.get(tid) ?? 0)) / 1e9 / elapsedS) * 100 }))
      .sort((a, b) => b.percent - a.percent);
  });
  return windows;
}

function summary(w: Window) {
  return {
    cpuPercentMedian: round(median(w.perSecond), 3),
    cpuPercentP90: round(percentile(w.perSecond, 90), 3),
    cpuPercentMeanFromStat: round(w.meanFromStat, 3),
    rssMiB: round(median(w.rssBytes) / MiB, 1),
    rssMaxMiB: round(Math.max(...w.rssBytes) / MiB, 1),
  };
}

/** The child processes' share of a window: most RSS they held at once, their CPU as a % of one core over the window. */
function childSummary(w: Window, seconds: number) {
  return {
    commands: [...w.children.commands].sort(),
    rssMaxMiB: round(Math.max(0, ...w.children.rssBytes) / MiB, 1),
    cpuPercent: round((w.children.cpuNs / 1e9 / seconds) * 100, 3),
  };
}

const children = new Set<ChildProcess>();
function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    process.kill(-child.pid!, signal);
  } catch {
    // Already gone.
  }
}
process.on('exit', () => {
  for (const child of children) killGroup(child, 'SIGKILL');
});

function startGroup(command: string, args: string[], logFile: string, env: Record<string, string> = {}): ChildProcess {
  const fd = fs.openSync(logFile, 'a');
  const child = spawn(command, args, { detached: true, stdio: ['ignore', fd, fd], env: { ...process.env, ...env } });
  fs.closeSync(fd);
  if (child.pid === undefined) throw new Error(`${command} did not start`);
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

async function stopGroup(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  killGroup(child, 'SIGTERM');
  const timer = setTimeout(() => killGroup(child, 'SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  let lastError: unknown;
  while (performance.now() < deadline) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      lastError = err;
    }
    await sleep(250);
  }
  throw new Error(`timed out waiting for ${what}${lastError ? `: ${(lastError as Error).message}` : ''}`);
}

interface Stats {
  open: number;
  loops: Array<{ groups: string[] }>;
  stream: { sentSamples: number; dropped: number };
  thread: { tid: number; cpuMs: number } | null;
}

async function main(): Promise<void> {
  if (!fs.existsSync(SADC)) throw new Error(`${SADC} is missing: apt-get install sysstat`);
  const load0 = loadavg();
  const server = await BoltServer.start({ plugins: SERVER_PLUGINS, logLevel: 'warn' });
  const token = fs.readFileSync(path.join(server.dir, 'data', 'plugins', 'transport-ws', 'api-token'), 'utf8').trim();
  const api = async <T>(method: string, route: string, body?: string): Promise<T> => {
    const res = await fetch(`http://127.0.0.1:${server.port}${route}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined && { 'content-type': 'application/yaml' }) },
      ...(body !== undefined && { body }),
      signal: AbortSignal.timeout(30_000),
    });
    const answer = (await res.json()) as T;
    if (!res.ok) throw new Error(`${method} ${route} answered ${res.status}: ${JSON.stringify(answer)}`);
    return answer;
  };

  const clientDir = scratchDir('bolt-bench-agent-');
  const clientPlugins = snapshotPlugins(clientDir, CLIENT_PLUGINS);
  fs.writeFileSync(path.join(clientDir, 'bolt.yaml'), '{}\n');
  const client = startGroup(BIN, [
    'start', '--role', 'client', '--server', `ws://127.0.0.1:${server.port}`, '--data', path.join(clientDir, 'data'),
    '--plugins', clientPlugins, '--config', path.join(clientDir, 'bolt.yaml'), '--name', 'bench-agent', '--log-level', 'info',
  ], path.join(clientDir, 'client.log'), CLIENT_ENV);
  const clientPid = client.pid!;
  progress(`server pid ${server.pid} on 127.0.0.1:${server.port}, client pid ${clientPid}`);
  const clientAdmin = async <T>(service: string): Promise<T> => {
    const { admin } = JSON.parse(fs.readFileSync(path.join(clientDir, 'data', 'core.json'), 'utf8')) as { admin: { url: string; token: string } };
    const res = await fetch(`${admin.url}/api/request/${service}`, { method: 'POST', headers: { authorization: `Bearer ${admin.token}`, 'content-type': 'application/json' }, body: '{}', signal: AbortSignal.timeout(10_000) });
    const answer = (await res.json()) as { result?: T };
    if (!res.ok) throw new Error(`${service} answered ${res.status}`);
    return answer.result as T;
  };

  await until('the client to be healthy', 60_000, async () => {
    const hosts = await api<Array<{ state: string }>>('GET', '/api/hosts');
    return hosts.some((h) => h.state === 'healthy') ? true : undefined;
  });
  await sleep(SETTLE_MS);
  // The threads of the transport and the collectors, which report their own ids, to tell their CPU from the rest of the agent's.
  const pluginThreads = new Map<number, string>();
  for (const name of ['collector-system', 'collector-process']) {
    const stats = await clientAdmin<Stats>(`${name}.stats`);
    if (stats.thread) pluginThreads.set(stats.thread.tid, name);
  }
  const transportThread = (await clientAdmin<{ thread?: { tid: number } | null }>('client.status')).thread;
  if (transportThread) pluginThreads.set(transportThread.tid, 'transport-ws');
  const label = (tid: number): string => (tid === clientPid ? 'main' : (pluginThreads.get(tid) ?? 'other'));
  const threadTable = (w: Window) => w.threads.slice(0, 6).map((t) => ({ thread: label(t.tid), tid: t.tid, cpuPercent: round(t.percent, 3) }));
  progress(`idle: measuring the client for ${SECONDS} s`);
  const [idle] = await measure([clientPid], SECONDS);

  const job = [
    'name: agent-overhead',
    'groups: { all: {} }',
    `metrics: { interval: 1s, collect: [${FULL_SET.join(', ')}] }`,
    'tasks:',
    '  - id: hold',
    '    hosts: all',
    '    action: sleep',
    `    with: { duration: ${SECONDS + 15}s }`,
    '',
  ].join('\n');
  const { runId } = await api<{ runId: string }>('POST', '/api/runs?file=agent-overhead.yaml', job);
  progress(`run ${runId}: waiting for samples to flow`);
  await until('the collector to stream samples', 30_000, async () => {
    const s = await clientAdmin<Stats>('collector-system.stats');
    return s.open > 0 && s.stream.sentSamples > 0 ? true : undefined;
  });
  await sleep(SETTLE_MS);
  const before = await clientAdmin<Stats>('collector-system.stats');
  const collectStart = performance.now();
  const sadcFile = path.join(clientDir, 'sadc.data');
  const sadc = startGroup(SADC, ['-S', 'DISK,XDISK', '1', String(SECONDS + 5), sadcFile], path.join(clientDir, 'sadc.log'));
  progress(`collecting: measuring the client and sadc (pid ${sadc.pid}) for ${SECONDS} s`);
  const [collecting, sadcWindow] = await measure([clientPid, sadc.pid!], SECONDS);
  const after = await clientAdmin<Stats>('collector-system.stats');
  const collectingSeconds = (performance.now() - collectStart) / 1000;
  const load1 = loadavg();

  await api('POST', `/api/runs/${runId}/cancel`).catch(() => undefined);
  await stopGroup(sadc);
  await stopGroup(client);
  await server.stop();

  const idleS = summary(idle!);
  const collectingS = summary(collecting!);
  const sadcS = summary(sadcWindow!);
  const result = {
    benchmark: 'agent-overhead',
    date: new Date().toISOString(),
    node: process.version,
    cores: (await import('node:os')).cpus().length,
    code: codeVersion(['bin', 'core', 'plugin-sdk/src', 'bench/agent-overhead.ts', ...CLIENT_PLUGINS.map((p) => `plugins/${p}`)]),
    windowSeconds: SECONDS,
    clientEnv: CLIENT_ENV,
    interval: '1s',
    collected: FULL_SET,
    groupsSampled: after.loops.flatMap((l) => l.groups).sort(),
    samplesPerSecond: round((after.stream.sentSamples - before.stream.sentSamples) / SECONDS, 1),
    droppedSamples: after.stream.dropped,
    client: {
      idle: { ...idleS, busiestThreads: threadTable(idle!), childProcesses: childSummary(idle!, SECONDS) },
      collecting: { ...collectingS, busiestThreads: threadTable(collecting!), childProcesses: childSummary(collecting!, SECONDS) },
    },
    collectorSystemThreadCpuPercent: before.thread && after.thread ? round(((after.thread.cpuMs - before.thread.cpuMs) / 1000 / collectingSeconds) * 100, 3) : null,
    sadc: { command: `sadc -S DISK,XDISK 1 ${SECONDS + 5} FILE`, ...sadcS },
    ratios: {
      collectingOverSadc: round(collectingS.cpuPercentMedian / sadcS.cpuPercentMedian, 1),
      collectingMinusIdleOverSadc: round((collectingS.cpuPercentMedian - idleS.cpuPercentMedian) / sadcS.cpuPercentMedian, 1),
      rssClientOverSadc: round(collectingS.rssMiB / sadcS.rssMiB, 1),
    },
    aims: { cpuPercentMax: 1, rssMiBMax: 120, met: collectingS.cpuPercentMedian <= 1 && collectingS.rssMaxMiB <= 120 },
    loadavg: { start: load0, end: load1 },
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((err) => {
  progress(`failed: ${(err as Error).stack ?? err}`);
  process.exitCode = 1;
});
