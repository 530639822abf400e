/**
 * bench/shell-fanout, peer side: runs `date +%s%N` on N loopback hosts through Ansible and
 * through `xargs -P N ssh`, and prints JSON lines (see bench/README.md).
 *
 *   npx tsx bench/ssh-baseline.ts --n 10,50,100 --runs 3 [--tools ansible,xargs-ssh]
 *
 * Must run as root (private sshd, root login by key). Progress goes to stderr, results to stdout.
 */
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { loadAverage, runTimed, sshBaselineSuite, type FanoutResult, type FanoutSuite } from './lib/ssh-baseline.ts';
import { median } from './lib/stats.ts';

const USAGE = 'usage: npx tsx bench/ssh-baseline.ts [--n 10,50,100] [--runs 3] [--tools ansible,xargs-ssh] [--quiet]';

function positiveIntegers(text: string, flag: string): number[] {
  const values = text.split(',').map((s) => Number(s.trim()));
  if (values.length === 0 || values.some((v) => !Number.isInteger(v) || v < 1)) {
    throw new Error(`${flag} wants positive integers separated by commas, got '${text}'\n${USAGE}`);
  }
  return values;
}

/** One decimal is plenty for milliseconds measured around process spawns. */
function ms(value: number): number {
  return Math.round(value * 10) / 10;
}

async function versions(): Promise<Record<string, string>> {
  const ansible = await runTimed(['ansible', '--version'], { timeoutMs: 60_000 });
  const ssh = await runTimed(['ssh', '-V'], { timeoutMs: 10_000 });
  return {
    node: process.version,
    ansible: ansible.stdout.split('\n')[0]?.trim() ?? '',
    openssh: ssh.stderr.trim(),
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      n: { type: 'string', default: '10' },
      runs: { type: 'string', default: '3' },
      tools: { type: 'string' },
      quiet: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const ns = positiveIntegers(values.n, '--n');
  const runs = positiveIntegers(values.runs, '--runs')[0] ?? 1;
  const log = values.quiet ? () => {} : (line: string) => process.stderr.write(`[ssh-baseline] ${line}\n`);

  // Bolt's side of the benchmark joins here as one more FanoutSuite.
  const suites: FanoutSuite[] = [sshBaselineSuite({ log })];
  const known = suites.flatMap((s) => s.tools);
  const wanted = values.tools === undefined ? known : values.tools.split(',').map((t) => t.trim());
  const unknown = wanted.filter((t) => !known.includes(t));
  if (unknown.length > 0) throw new Error(`unknown tool(s) ${unknown.join(', ')}; known: ${known.join(', ')}\n${USAGE}`);

  const startedAt = new Date();
  const t0 = process.hrtime.bigint();
  const loadavgStart = loadAverage();
  const summary: Record<string, unknown>[] = [];

  for (const suite of suites) {
    const tools = suite.tools.filter((t) => wanted.includes(t));
    if (tools.length === 0) continue;
    for (const n of ns) {
      const loadavgBefore = loadAverage();
      const results = await suite.withHosts(n, async (run) => {
        const byTool = new Map<string, FanoutResult[]>(tools.map((t) => [t, []]));
        // Interleave the tools so a change in the machine's load hits them alike.
        for (let r = 1; r <= runs; r++) {
          for (const tool of tools) {
            const result = await run(tool);
            log(`${tool} N=${n} run ${r}/${runs}: wall ${ms(result.wallMs)} ms, skew ${ms(result.skewMs)} ms`);
            byTool.get(tool)!.push(result);
          }
        }
        return byTool;
      });
      const loadavgAfter = loadAverage();
      for (const [tool, list] of results) {
        const line = {
          bench: 'shell-fanout',
          suite: suite.name,
          tool,
          n,
          runs: list.length,
          wallMsMedian: ms(median(list.map((r) => r.wallMs))),
          skewMsMedian: ms(median(list.map((r) => r.skewMs))),
          firstStartMsMedian: ms(median(list.map((r) => r.firstStartMs))),
          lastStartMsMedian: ms(median(list.map((r) => r.lastStartMs))),
          wallMs: list.map((r) => ms(r.wallMs)),
          skewMs: list.map((r) => ms(r.skewMs)),
          loadavgStart: loadavgBefore,
          loadavgEnd: loadavgAfter,
        };
        console.log(JSON.stringify(line));
        summary.push({ tool, n, wallMsMedian: line.wallMsMedian, skewMsMedian: line.skewMsMedian });
      }
    }
  }

  console.log(
    JSON.stringify({
      bench: 'shell-fanout',
      summary: true,
      startedAt: startedAt.toISOString(),
      durationS: Math.round(Number(process.hrtime.bigint() - t0) / 1e8) / 10,
      runs,
      cpus: cpus().length,
      versions: await versions(),
      loadavgStart,
      loadavgEnd: loadAverage(),
      results: summary,
    }),
  );
}

// Leave through process.exit so the exit hook stops sshd and the ssh masters.
process.once('SIGINT', () => process.exit(130));
process.once('SIGTERM', () => process.exit(143));

main().catch((error: unknown) => {
  process.stderr.write(`ssh-baseline failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
