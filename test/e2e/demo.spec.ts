/** `bolt-core demo` (what `npm start` runs) as a newcomer runs it: real processes, the saved report, `--keep` and the dashboard. */
import { expect } from 'chai';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { spawnBolt } from '../helpers/processes.ts';

/** The pids of running `bolt-core start` processes whose data directory is under `root`. */
async function startedUnder(root: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes('\0start\0') && cmdline.includes(root)) pids.push(Number(entry));
  }
  return pids;
}

describe('bolt-core demo', function () {
  this.timeout(180_000);
  let root: string;

  beforeEach(async () => {
    root = await mkdtemp(path.join(os.tmpdir(), 'bolt-demo-'));
  });

  afterEach(async () => {
    for (const pid of await startedUnder(root)) process.kill(pid, 'SIGKILL');
    await rm(root, { recursive: true, force: true });
  });

  it('runs the quickstart job to completion, saves its one-file report, and leaves no process behind', async () => {
    const demo = spawnBolt(['demo', '--clients', '2', '--data', root, '--no-progress']);
    expect(await demo.exited(), demo.output()).to.equal(0);
    const out = demo.output();
    const runId = /run (run-[\w-]+) succeeded/.exec(out)?.[1];
    expect(runId, out).to.be.a('string');
    for (const task of ['hello', 'pause', 'line-up']) expect(out).to.match(new RegExp(`^${task}\\s+\\w+\\s+succeeded\\s+2/2`, 'm'));
    const reportFile = path.join(root, `report-${runId}.html`);
    expect(out).to.include(reportFile);
    const report = await readFile(reportFile, 'utf8');
    expect(report).to.match(/^<!doctype html>/i);
    expect(report).to.include(runId);
    expect(report, 'the report loads nothing from a network').not.to.match(/\b(?:https?|wss?):\/\//);
    expect(await startedUnder(root)).to.deep.equal([]);
  });

  it('--keep leaves server, sink and clients up with the dashboard at the printed address until Ctrl-C', async () => {
    const demo = spawnBolt(['demo', '--clients', '2', '--data', root, '--no-progress', '--keep']);
    const [, url] = await demo.waitForOutput(/dashboard\s+(http:\/\/127\.0\.0\.1:\d+\/\?token=\S+)/, 120_000);
    await demo.waitForOutput(/Ctrl-C stops them/, 10_000);
    const runId = /#\/runs\/(run-[\w-]+)$/.exec(url!)?.[1];
    expect(runId, url).to.be.a('string');
    expect(await startedUnder(root)).to.have.length(3);

    const login = await fetch(url!, { redirect: 'manual' });
    expect(login.status).to.equal(303);
    const cookie = (login.headers.get('set-cookie') ?? '').split(';')[0]!;
    const origin = new URL(url!).origin;
    const page = await fetch(`${origin}/`, { headers: { cookie } });
    expect(page.status).to.equal(200);
    expect(await page.text()).to.match(/<script[^>]+src="ui\/app\.js"/);
    const run = await (await fetch(`${origin}/api/ui/run?runId=${runId}`, { headers: { cookie } })).json() as { run: { state: string } };
    expect(run.run.state).to.equal('succeeded');

    demo.proc.kill('SIGINT');
    expect(await demo.exited(), demo.output()).to.equal(0);
    expect(demo.output()).to.include('demo: stopped every process');
    expect(await startedUnder(root)).to.deep.equal([]);
  });
});
