/**
 * Bolt's side of `bench/shell-fanout`: the same `date +%s%N` on N hosts, through `bolt-core run`.
 *
 * The N hosts are N real `bolt-core start --role client` processes on this machine (transport-ws
 * and action-shell), each with its own data directory, named after its loopback address from
 * {@link loopbackAddresses} (127.0.0.2 …), connected to one `bolt-core start` server with its
 * embedded sink. They are started once per N, before any timing. A measured fan-out is one
 * `bolt-core run JOB --json --no-progress` of a job with one shell task on every host; its wall
 * time is spawn to exit, and each host's instant is the number `date` printed, read from the
 * per-host stdout tail in the run's JSON.
 *
 * The client agent has no option to bind its source address, so every client connects from
 * 127.0.0.1 and the address is only its name; on loopback the address changes nothing that is
 * measured.
 */
import fs from 'node:fs';
import path from 'node:path';
import { BoltClients } from './bolt-clients.ts';
import { BoltServer, removeScratchDir, scratchDir, sleep } from './bolt-server.ts';
import { FANOUT_COMMAND, fanoutResult, loopbackAddresses, runTimed, type FanoutResult, type FanoutSuite } from './ssh-baseline.ts';

const REPO = path.resolve(import.meta.dirname, '..', '..');
const BIN = path.join(REPO, 'bin', 'bolt-core');

/** The server's plugins: transport, health, the job runner and the sink's results path. */
export const FANOUT_SERVER_PLUGINS = ['transport-ws', 'health-monitor', 'scheduler-dag', 'parser-yaml', 'writer-sqlite', 'aggregator-results'] as const;
/** The clients' plugins. */
export const FANOUT_CLIENT_PLUGINS = ['transport-ws', 'action-shell'] as const;
/**
 * V8 flag for the client processes: a 1 MiB young generation instead of 16 MiB cuts a client's
 * RSS from ~195 to ~160 MiB (with its esbuild service), which is what lets 100 of them fit.
 */
export const CLIENT_NODE_FLAGS = ['--max-semi-space-size=1'] as const;

/** Refusals by the health gate tolerated per measured run before the benchmark stops. */
const MAX_GATE_REFUSALS = 3;

/** The tools of the Bolt suite: a `start: together` task, and the same with `start: asap`. */
export const BOLT_TOOLS = ['bolt', 'bolt-asap'] as const;

/** A Bolt fan-out, with what the run itself recorded. */
export interface BoltFanoutResult extends FanoutResult {
  bolt: {
    runId: string;
    /** run createdAt → endedAt on the server's clock: submit to the last task status. */
    serverRunMs: number;
    /** startAt − dispatchedAt for `together`; null for `asap`. */
    leadMs: number | null;
    /** max − min of the instants the action started (the sink's startedAt, before the spawn). */
    startedAtSpreadMs: number;
    /** The part of `wallMs` outside the server's run: CLI start-up, submit, polling (every 250 ms), exit. */
    cliOverheadMs: number;
    /** Submissions the health gate refused before this run (not timed; the hosts were waited for again). */
    gateRefusals: number;
  };
}

export interface BoltFanoutOptions {
  /** Per `bolt-core run`; default 60 s + 1 s per host. */
  runTimeoutMs?: number;
  log?: (line: string) => void;
}

interface HostResult {
  host: string;
  state: string;
  startedAt?: number | null;
  stdoutTail?: string | null;
}

interface RunJson {
  runId: string;
  state: string;
  createdAt: number;
  endedAt: number | null;
  tasks: { startAt?: number | null; dispatchedAt?: number | null; results?: HostResult[] }[];
}

function writeJob(dir: string, start: 'together' | 'asap'): string {
  const file = path.join(dir, `shell-fanout-${start}.yaml`);
  fs.writeFileSync(file, [
    `# shell-fanout: ${FANOUT_COMMAND} once on every connected host, start: ${start}`,
    `name: shell-fanout-${start}`,
    'groups:',
    '  all: {}',
    'tasks:',
    '  - id: date',
    '    hosts: all',
    '    action: shell',
    `    start: ${start}`,
    `    with: { run: "${FANOUT_COMMAND}" }`,
    '    timeout: 60s',
    '',
  ].join('\n'));
  return file;
}

async function waitHealthy(server: BoltServer, n: number, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const hosts = await server.request<{ state: string }[]>('health.hosts');
    const ok = hosts.filter((h) => h.state === 'healthy' || h.state === 'degraded').length;
    if (ok >= n) return;
    if (performance.now() > deadline) throw new Error(`${ok} of ${n} clients healthy after ${timeoutMs / 1000} s`);
    await sleep(500);
  }
}

/** `bolt-core run` against N real client processes, as a {@link FanoutSuite} (tools `bolt`, `bolt-asap`). */
export function boltSuite(options: BoltFanoutOptions = {}): FanoutSuite {
  const log = options.log ?? (() => {});
  return {
    name: 'bolt',
    tools: BOLT_TOOLS,
    async withHosts<T>(n: number, fn: (run: (tool: string) => Promise<FanoutResult>) => Promise<T>): Promise<T> {
      const addresses = loopbackAddresses(n);
      const server = await BoltServer.start({ plugins: FANOUT_SERVER_PLUGINS, logLevel: 'warn' });
      let clients: BoltClients | undefined;
      const jobDir = scratchDir('bolt-bench-shell-fanout-jobs-');
      try {
        log(`bolt: server pid ${server.pid} on port ${server.port}; starting ${n} client processes`);
        const startedAt = performance.now();
        clients = await BoltClients.start({
          server,
          names: addresses,
          labels: () => ({ bench: 'shell-fanout' }),
          plugins: FANOUT_CLIENT_PLUGINS,
          nodeFlags: CLIENT_NODE_FLAGS,
          concurrency: 6,
          minAvailableBytes: 3 * 1024 ** 3,
          progress: (msg) => log(`bolt: ${msg}`),
        });
        await waitHealthy(server, n, 60_000);
        const rss = clients.rssBytes();
        log(`bolt: ${n} clients connected and healthy in ${((performance.now() - startedAt) / 1000).toFixed(1)} s; mean RSS ${(rss.reduce((a, b) => a + b, 0) / rss.length / 2 ** 20).toFixed(0)} MiB per client process`);
        const jobs = { bolt: writeJob(jobDir, 'together'), 'bolt-asap': writeJob(jobDir, 'asap') };
        const timeoutMs = options.runTimeoutMs ?? 60_000 + 1_000 * n;
        const dataDir = path.join(server.dir, 'data');

        const once = async (tool: keyof typeof jobs): Promise<BoltFanoutResult> => {
          const argv = [process.execPath, BIN, 'run', jobs[tool], '--server', `http://127.0.0.1:${server.port}`, '--data', dataDir, '--json', '--no-progress'];
          let run = await runTimed(argv, { timeoutMs });
          // A host whose heartbeat reported a passing spike (event loop lag over 1 s while 100 agents
          // share 2 cores) makes the health gate refuse the job before anything runs: wait, resubmit.
          let gateRefusals = 0;
          while (run.code !== 0 && run.stderr.includes('BOLT_ERR_RUN_UNHEALTHY') && gateRefusals < MAX_GATE_REFUSALS) {
            gateRefusals++;
            log(`${tool}: the health gate refused the job (${run.stderr.trim().split('\n').at(-1)}); waiting for every host to be healthy again`);
            await sleep(2000);
            await waitHealthy(server, n, 60_000);
            run = await runTimed(argv, { timeoutMs });
          }
          if (run.code !== 0) throw new Error(`${tool}: bolt-core run exited ${run.code ?? run.signal}\nstdout (tail): ${run.stdout.slice(-2000)}\nstderr (tail): ${run.stderr.slice(-2000)}`);
          const view = JSON.parse(run.stdout) as RunJson;
          const task = view.tasks[0];
          const results = task?.results ?? [];
          const instants = new Map<string, bigint>();
          for (const r of results) {
            const printed = r.stdoutTail?.trim() ?? '';
            if (r.state === 'finished' && /^\d+$/.test(printed)) instants.set(r.host, BigInt(printed));
          }
          const result = fanoutResult(tool, addresses, run, instants);
          const starts = results.map((r) => r.startedAt).filter((t): t is number => typeof t === 'number');
          const serverRunMs = (view.endedAt ?? view.createdAt) - view.createdAt;
          return {
            ...result,
            bolt: {
              runId: view.runId,
              serverRunMs,
              leadMs: typeof task?.startAt === 'number' && typeof task.dispatchedAt === 'number' ? task.startAt - task.dispatchedAt : null,
              startedAtSpreadMs: starts.length > 0 ? Math.max(...starts) - Math.min(...starts) : NaN,
              cliOverheadMs: result.wallMs - serverRunMs,
              gateRefusals,
            },
          };
        };
        const warm = new Map<string, Promise<unknown>>();
        return await fn(async (tool) => {
          if (tool !== 'bolt' && tool !== 'bolt-asap') throw new Error(`the bolt suite has no tool '${tool}' (it has ${BOLT_TOOLS.join(', ')})`);
          if (!warm.has(tool)) {
            log(`${tool}: warm-up run, N=${n}`);
            warm.set(tool, once(tool));
          }
          await warm.get(tool);
          return once(tool);
        });
      } finally {
        log('bolt: stopping the clients and the server');
        await clients?.stop();
        await server.stop();
        removeScratchDir(jobDir);
      }
    },
  };
}
