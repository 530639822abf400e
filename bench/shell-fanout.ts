/**
 * bench/shell-fanout: `date +%s%N` on N hosts through `bolt-core run`, side by side with Ansible
 * and `xargs -P N ssh` (the baseline of lib/ssh-baseline.ts), with Bolt's ratios.
 *
 *   node --import tsx bench/shell-fanout.ts [--n 10,50,100] [--runs 3]
 *        [--tools bolt,bolt-asap,ansible,xargs-ssh] [--quiet]
 *
 * Per N: the Bolt suite (lib/bolt-fanout.ts: one server, N client processes started before any
 * timing, one warm-up run per tool, then `--runs` measured runs of `bolt` and `bolt-asap`
 * interleaved), then the SSH baseline on the same N loopback addresses (private sshd, masters
 * opened and one warm-up per tool, measured runs interleaved). The suites run one after the
 * other, not nested: 100 client agents and 100 Ansible forks at once would not fit in memory.
 *
 * Must run as root (the baseline's private sshd logs in as root by key). One JSON line per
 * (tool, N), one line of ratios per N, a summary line; progress on stderr; exits non-zero when a
 * run fails. Every process and directory it made is removed at the end, also on failure.
 */
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { BOLT_TOOLS, boltSuite, type BoltFanoutResult } from './lib/bolt-fanout.ts';
import { loadAverage, runTimed, sshBaselineSuite, type FanoutResult, type FanoutSuite } from './lib/ssh-baseline.ts';
import { median } from './lib/stats.ts';

const USAGE = 'usage: node --import tsx bench/shell-fanout.ts [--n 10,50,100] [--runs 3] [--tools bolt,bolt-asap,ansible,xargs-ssh] [--quiet]';
/** What the issue asks of Bolt against Ansible, in wall time and in skew. */
const AIM_RATIO = 100;

function positiveIntegers(text: string, flag: string): number[] {
  const values = text.split(',').map((s) => Number(s.trim()));
  if (values.length === 0 || values.some((v) => !Number.isInteger(v) || v < 1)) throw new Error(`${flag} wants positive integers separated by commas, got '${text}'\n${USAGE}`);
  return values;
}

const ms = (value: number): number => Math.round(value * 10) / 10;
const ratio = (a: number | undefined, b: number | undefined): number | null => (a === undefined || b === undefined || b <= 0 ? null : Math.round((a / b) * 100) / 100);

async function versions(): Promise<Record<string, string>> {
  const ansible = await runTimed(['ansible', '--version'], { timeoutMs: 60_000 });
  const ssh = await runTimed(['ssh', '-V'], { timeoutMs: 10_000 });
  return { node: process.version, ansible: ansible.stdout.split('\n')[0]?.trim() ?? '', openssh: ssh.stderr.trim() };
}

/** The Bolt-only figures of a list of runs, medians. */
function boltDetail(list: FanoutResult[]): Record<string, unknown> | undefined {
  const bolt = list.filter((r): r is BoltFanoutResult => 'bolt' in r);
  if (bolt.length === 0) return undefined;
  const leads = bolt.map((r) => r.bolt.leadMs).filter((v): v is number => v !== null);
  return {
    serverRunMsMedian: ms(median(bolt.map((r) => r.bolt.serverRunMs))),
    cliOverheadMsMedian: ms(median(bolt.map((r) => r.bolt.cliOverheadMs))),
    startedAtSpreadMsMedian: ms(median(bolt.map((r) => r.bolt.startedAtSpreadMs))),
    ...(leads.length > 0 && { leadMsMedian: ms(median(leads)) }),
    gateRefusals: bolt.reduce((sum, r) => sum + r.bolt.gateRefusals, 0),
    runIds: bolt.map((r) => r.bolt.runId),
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      n: { type: 'string', default: '10,50,100' },
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
  const log = values.quiet ? () => {} : (line: string) => process.stderr.write(`[shell-fanout] ${line}\n`);
  const suites: FanoutSuite[] = [boltSuite({ log }), sshBaselineSuite({ log })];
  const known = suites.flatMap((s) => s.tools);
  const wanted = values.tools === undefined ? known : values.tools.split(',').map((t) => t.trim());
  const unknown = wanted.filter((t) => !known.includes(t));
  if (unknown.length > 0) throw new Error(`unknown tool(s) ${unknown.join(', ')}; known: ${known.join(', ')}\n${USAGE}`);

  const startedAt = new Date();
  const t0 = process.hrtime.bigint();
  const loadavgStart = loadAverage();
  const summary: { tool: string; n: number; wallMsMedian: number; skewMsMedian: number }[] = [];
  const ratios: Record<string, unknown>[] = [];

  for (const n of ns) {
    const medians = new Map<string, { wall: number; skew: number }>();
    for (const suite of suites) {
      const tools = suite.tools.filter((t) => wanted.includes(t));
      if (tools.length === 0) continue;
      const loadavgBefore = loadAverage();
      const results = await suite.withHosts(n, async (run) => {
        const byTool = new Map<string, FanoutResult[]>(tools.map((t) => [t, []]));
        // Interleaved, so a change in the machine's load hits the tools of a suite alike.
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
          ...(boltDetail(list) !== undefined && { bolt: boltDetail(list) }),
          loadavgStart: loadavgBefore,
          loadavgEnd: loadavgAfter,
        };
        console.log(JSON.stringify(line));
        medians.set(tool, { wall: line.wallMsMedian, skew: line.skewMsMedian });
        summary.push({ tool, n, wallMsMedian: line.wallMsMedian, skewMsMedian: line.skewMsMedian });
      }
    }
    for (const boltTool of BOLT_TOOLS) {
      const bolt = medians.get(boltTool);
      if (bolt === undefined) continue;
      const against = (tool: string) => ({ wall: ratio(medians.get(tool)?.wall, bolt.wall), skew: ratio(medians.get(tool)?.skew, bolt.skew) });
      const ansible = against('ansible');
      const line = {
        bench: 'shell-fanout',
        ratios: true,
        n,
        bolt: boltTool,
        ansibleOverBolt: ansible,
        sshOverBolt: against('xargs-ssh'),
        aim: { ansibleOverBolt: AIM_RATIO, met: { wall: ansible.wall === null ? null : ansible.wall >= AIM_RATIO, skew: ansible.skew === null ? null : ansible.skew >= AIM_RATIO } },
      };
      console.log(JSON.stringify(line));
      ratios.push(line);
    }
  }

  console.log(JSON.stringify({
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
    ratios: ratios.map(({ n, bolt, ansibleOverBolt, sshOverBolt }) => ({ n, bolt, ansibleOverBolt, sshOverBolt })),
  }));
}

// Leave through process.exit so the exit hooks stop the clients, the servers, sshd and the ssh masters.
process.once('SIGINT', () => process.exit(130));
process.once('SIGTERM', () => process.exit(143));

main().then(
  () => process.exit(0),
  (error: unknown) => {
    process.stderr.write(`shell-fanout failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  },
);
