import { expect } from 'chai';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { argv0Basename, matchLabel, nameMatches, parsePidStat, ProcessSampler } from '../procstat.ts';
import type { ProcessSample } from '../procstat.ts';

// /proc/<pid>/stat of a node process on a 6.18 kernel.
const NODE_STAT = '30304 (node) R 30300 30300 5614 0 -1 4194304 2179 0 0 0 5 2 0 0 20 0 7 0 67846 745713664 10098 18446744073709551615 11988992 39846385 140726115761008 0 0 0 0 16781312 17922 0 0 0 17 0 0 0 0 0 0 90418888 90555584 869601280 140726115769003 140726115769077 140726115769077 140726115770346 0\n';

function value(sample: ProcessSample, metric: string, name: string): number | undefined {
  return sample.metrics.find((m) => m.metric === metric && m.tags?.process === name)?.value;
}

function exitOf(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
}

/** Samples until `done` holds for a sample, or fails at the deadline. */
async function sampleUntil(sampler: ProcessSampler, done: (s: ProcessSample) => boolean, what: string, deadlineMs = 5000): Promise<ProcessSample> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    const sample = await sampler.sample();
    if (done(sample)) return sample;
    if (Date.now() > deadline) expect.fail(`${what}; last sample: ${JSON.stringify(sample.metrics)}`);
  }
}

describe('collector-process parsers', () => {
  it('reads pid, comm, state, CPU ticks, start time and rss from a stat line', () => {
    expect(parsePidStat(NODE_STAT)).to.deep.equal({ pid: 30304, comm: 'node', state: 'R', utimeTicks: 5, stimeTicks: 2, startTimeTicks: 67846, rssPages: 10098 });
  });

  it('takes comm from the first "(" to the last ")", so spaces and parentheses in the name do not shift fields', () => {
    const weird = NODE_STAT.replace('(node)', '(my (odd) proc) 1 2)');
    expect(parsePidStat(weird)).to.include({ comm: 'my (odd) proc) 1 2', utimeTicks: 5, startTimeTicks: 67846, rssPages: 10098 });
  });

  it('returns undefined for text that is not a stat line', () => {
    expect(parsePidStat('')).to.equal(undefined);
    expect(parsePidStat('12 (short) S 1 2')).to.equal(undefined);
  });

  it('takes the basename of argv[0] from a NUL-separated cmdline', () => {
    expect(argv0Basename('/usr/bin/python3\0-m\0http.server\0')).to.equal('python3');
    expect(argv0Basename('nginx: worker process')).to.equal('nginx: worker process');
    expect(argv0Basename('')).to.equal('');
  });

  it('matches a name against comm or argv[0] and labels matches', () => {
    expect(nameMatches('postgres', 'postgres', '')).to.equal(true);
    expect(nameMatches('my-long-daemon-name', 'my-long-daemon-', 'my-long-daemon-name')).to.equal(true);
    expect(nameMatches('my-long-daemon-name', 'my-long-daemon-', 'other')).to.equal(false);
    expect(matchLabel({ name: 'nginx' })).to.equal('nginx');
    expect(matchLabel({ pid: 42 })).to.equal('42');
    expect(matchLabel({ pid: 42, label: 'db' })).to.equal('db');
  });

  it('refuses no matches and two matches with one label', () => {
    expect(() => new ProcessSampler({ matches: [] })).to.throw(RangeError);
    expect(() => new ProcessSampler({ matches: [{ name: 'x' }, { pid: 1, label: 'x' }] })).to.throw(RangeError, /"x"/);
  });
});

describe('collector-process ProcessSampler on real processes', function () {
  this.timeout(20_000);
  let dir: string;
  const children: ChildProcess[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bolt-procstat-'));
  });

  afterEach(async () => {
    const running = children.splice(0).filter((c) => c.exitCode === null && c.signalCode === null);
    for (const child of running) child.kill('SIGKILL');
    await Promise.all(running.map(exitOf));
  });

  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** A `sleep 30` whose executable is a symlink called `linkName`, so its comm is that name. */
  async function sleeper(linkName: string, argv0?: string): Promise<ChildProcess> {
    const link = join(dir, linkName);
    await symlink('/bin/sleep', link).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'EEXIST') throw err; });
    const child = spawn(link, ['30'], { stdio: 'ignore', ...(argv0 === undefined ? {} : { argv0 }) });
    children.push(child);
    return child;
  }

  it('counts processes as they appear and disappear, matched by a long argv[0] the 15-character comm cuts short', async () => {
    const name = `bolt-sleeper-${process.pid}-long`;
    const sampler = new ProcessSampler({ matches: [{ name }] });
    const first = await sampler.sample();
    expect(value(first, 'proc.count', name)).to.equal(0);
    expect(value(first, 'proc.rss_bytes', name)).to.equal(0);
    expect(value(first, 'proc.cpu_percent', name), 'no CPU rate on the first sample').to.equal(undefined);

    const three = await Promise.all([sleeper(name), sleeper(name), sleeper(name)]);
    const up = await sampleUntil(sampler, (s) => value(s, 'proc.count', name) === 3, 'three sleepers counted');
    expect(value(up, 'proc.rss_bytes', name)).to.be.above(3 * 100 * 1024);
    expect(value(up, 'proc.cpu_percent', name)).to.be.at.least(0);

    const [gone] = three;
    gone?.kill('SIGKILL');
    if (gone) await exitOf(gone);
    await sampleUntil(sampler, (s) => value(s, 'proc.count', name) === 2, 'one sleeper fewer');

    for (const child of children) child.kill('SIGKILL');
    await Promise.all(children.map(exitOf));
    const none = await sampler.sample();
    expect(value(none, 'proc.count', name)).to.equal(0);
    expect(value(none, 'proc.rss_bytes', name)).to.equal(0);
    expect(value(none, 'proc.cpu_percent', name)).to.equal(0);
  });

  it('matches by comm when argv[0] says something else', async () => {
    const name = `bz${process.pid}`;
    await sleeper(name, 'unrelated-argv0');
    const sampler = new ProcessSampler({ matches: [{ name }, { name: 'unrelated-argv0', label: 'by-argv0' }] });
    const sample = await sampleUntil(sampler, (s) => value(s, 'proc.count', name) === 1, 'the sleeper found by comm');
    expect(value(sample, 'proc.count', 'by-argv0')).to.be.at.least(1);
  });

  it('finds a process that execs into a match under its old pid: at once with full scans every sample, else at the next full scan', async () => {
    const name = `bx${process.pid}`;
    const link = join(dir, name);
    await symlink('/bin/sleep', link);
    // A shell that waits for a line, then becomes the sleeper without changing its pid.
    const shell = spawn('/bin/sh', ['-c', `read line; exec ${link} 30`], { stdio: ['pipe', 'ignore', 'ignore'] });
    children.push(shell);
    const everySample = new ProcessSampler({ matches: [{ name }], fullScanIntervalMs: 0 });
    const everyHalfSecond = new ProcessSampler({ matches: [{ name }], fullScanIntervalMs: 500 });
    expect(value(await everySample.sample(), 'proc.count', name)).to.equal(0);
    const started = Date.now();
    expect(value(await everyHalfSecond.sample(), 'proc.count', name)).to.equal(0);
    shell.stdin!.write('go\n');
    await sampleUntil(everySample, (s) => value(s, 'proc.count', name) === 1, 'the exec seen by a sampler that scans fully');
    await sampleUntil(everyHalfSecond, (s) => value(s, 'proc.count', name) === 1, 'the exec seen at the next full scan');
    expect(Date.now() - started).to.be.at.least(450);
  });

  it('measures CPU % and RSS of a busy process as the process itself reports them, and follows a pid until it exits', async () => {
    const name = `bolt-burn-${process.pid}`;
    // Idle until told, then busy for 1 s (bounded by time and iterations) holding 64 MiB, then
    // report its own CPU time (getrusage) over the busy part and its RSS, and wait to be ended.
    const script = `
      const rl = require('node:readline').createInterface({ input: process.stdin });
      const hold = Buffer.alloc(64 * 1024 * 1024, 1);
      console.log('ready');
      rl.once('line', () => {
        const c0 = process.cpuUsage();
        const end = Date.now() + 1000;
        let i = 0, x = 0;
        while (Date.now() < end && i < 2e9) x += Math.sqrt(i++);
        const c = process.cpuUsage(c0);
        console.log(JSON.stringify({ cpuMs: (c.user + c.system) / 1000, rss: process.memoryUsage().rss, held: hold.length, x: x > 0 }));
      });
      setTimeout(() => process.exit(0), 15000).unref();
    `;
    const child = spawn(process.execPath, ['-e', script], { argv0: name, stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(child);
    const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    expect((await lines.next()).value).to.equal('ready');

    const pid = child.pid ?? expect.fail('the child has a pid');
    const sampler = new ProcessSampler({ matches: [{ name }, { pid, label: 'by-pid' }] });
    const before = await sampler.sample();
    expect(value(before, 'proc.count', name)).to.equal(1);
    child.stdin!.write('go\n');
    const report = JSON.parse(String((await lines.next()).value)) as { cpuMs: number; rss: number };
    const after = await sampler.sample();

    const seconds = (after.intervalMs ?? NaN) / 1000;
    const ourCpuMs = ((value(after, 'proc.cpu_percent', name) ?? NaN) / 100) * seconds * 1000;
    // Both come from the same scheduler accounting; /proc counts whole 10 ms ticks.
    expect(Math.abs(ourCpuMs - report.cpuMs), `bolt ${ourCpuMs.toFixed(1)} ms, process ${report.cpuMs.toFixed(1)} ms`).to.be.at.most(40);
    expect(value(after, 'proc.cpu_percent', 'by-pid')).to.equal(value(after, 'proc.cpu_percent', name));
    expect(Math.abs((value(after, 'proc.rss_bytes', name) ?? 0) - report.rss) / report.rss).to.be.below(0.02);
    expect(report.rss).to.be.above(64 * 1024 * 1024);

    child.kill('SIGKILL');
    await exitOf(child);
    const ended = await sampler.sample();
    expect(value(ended, 'proc.count', 'by-pid')).to.equal(0);
    expect(value(ended, 'proc.rss_bytes', 'by-pid')).to.equal(0);
    expect(value(ended, 'proc.cpu_percent', 'by-pid')).to.equal(0);
  });

  it('stays far under 1 % of a core at 1 Hz while matching every node and bash process on this host', async () => {
    const sampler = new ProcessSampler({ matches: [{ name: 'node' }, { name: 'bash' }] });
    await sampler.sample();
    const start = process.cpuUsage();
    const rounds = 20;
    for (let i = 0; i < rounds; i++) await sampler.sample();
    const used = process.cpuUsage(start);
    const msPerSample = (used.user + used.system) / 1000 / rounds;
    // 10 ms per sample would be 1 % of a core at 1 Hz; half of it leaves room for the timer and the
    // full scan of every process that runs every 10 s.
    expect(msPerSample).to.be.below(5);
  });
});
