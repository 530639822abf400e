/**
 * bin/bolt-core as it ships: a sh launcher that starts node on the same file with the agent's
 * memory settings. Real processes started through the bin itself (and through an npm .bin
 * symlink), their /proc entries, and a probe plugin in a real worker.
 */
import { expect } from 'chai';
import { spawn, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, readlink, rm, symlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { REPO, writePlugin } from '../helpers/core.ts';
import { BIN, coreInfo, spawnBolt, type BoltProcess } from '../helpers/processes.ts';
import { HEAP_PROBE_SOURCE, type HeapProbe } from '../helpers/heap-probe.ts';

const VERSION = (JSON.parse(await readFile(path.join(REPO, 'package.json'), 'utf8')) as { version: string }).version;

/** The NUL-separated entries of /proc/<pid>/environ or /proc/<pid>/cmdline. */
async function procList(pid: number, file: 'environ' | 'cmdline'): Promise<string[]> {
  return (await readFile(`/proc/${pid}/${file}`, 'utf8')).split('\0').filter((e) => e !== '');
}

async function probe(dataDir: string): Promise<HeapProbe> {
  const { admin } = await coreInfo(dataDir);
  const res = await fetch(`${admin.url}/api/request/heap-probe.young`, {
    method: 'POST',
    headers: { authorization: `Bearer ${admin.token}`, 'content-type': 'application/json' },
    body: '{}',
  });
  const answer = (await res.json()) as { result: HeapProbe };
  expect(res.status, JSON.stringify(answer)).to.equal(200);
  return answer.result;
}

describe('bin/bolt-core, the launcher', function () {
  this.timeout(60_000);
  let dir: string;
  let proc: BoltProcess | undefined;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'bolt-launcher-'));
    await writePlugin(path.join(dir, 'plugins', 'heap-probe'), { name: 'heap-probe', roles: ['server', 'sink', 'client'] }, HEAP_PROBE_SOURCE);
  });

  afterEach(async () => {
    await proc?.kill();
    proc = undefined;
  });

  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** `bolt-core start` through the bin, on the probe alone; resolves once it is up. */
  async function start(name: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ proc: BoltProcess; dataDir: string }> {
    const dataDir = path.join(dir, name);
    // cwd has no bolt.yaml: the defaults of the role apply.
    const p = spawnBolt(['start', '--plugins', path.join(dir, 'plugins'), '--data', dataDir, ...args], { cwd: dir, env: { MALLOC_ARENA_MAX: undefined, ...env } });
    proc = p;
    await p.waitForOutput(/started: 1 plugin\(s\) running: heap-probe/);
    return { proc: p, dataDir };
  }

  it('passes arguments through untouched and exits with the command\'s code', () => {
    const version = spawnSync(BIN, ['--version'], { encoding: 'utf8', timeout: 30_000 });
    expect(version.status, version.stderr).to.equal(0);
    expect(version.stdout.trim()).to.equal(VERSION);
    const unknown = spawnSync(BIN, ['no-such-command'], { encoding: 'utf8', timeout: 30_000 });
    expect(unknown.status).to.equal(2);
    expect(unknown.stderr).to.include("unknown command 'no-such-command'");
    // One argument with spaces, quotes, a glob and a $: the shell must hand it over as it is.
    const odd = path.join(dir, `a "job" * $HOME 'x'.yaml`);
    const validate = spawnSync(BIN, ['validate', odd], { encoding: 'utf8', timeout: 30_000 });
    expect(validate.status).to.equal(2);
    expect(validate.stderr + validate.stdout).to.include(odd);
  });

  it('runs through an npm .bin symlink from another directory, and as `npx bolt-core`', async () => {
    const project = path.join(dir, 'project');
    await mkdir(path.join(project, 'node_modules', '.bin'), { recursive: true });
    await symlink(REPO, path.join(project, 'node_modules', 'bolt-core'));
    await symlink('../bolt-core/bin/bolt-core', path.join(project, 'node_modules', '.bin', 'bolt-core'));
    expect(await readlink(path.join(project, 'node_modules', '.bin', 'bolt-core'))).to.equal('../bolt-core/bin/bolt-core');
    const linked = spawnSync(path.join(project, 'node_modules', '.bin', 'bolt-core'), ['--version'], { cwd: os.tmpdir(), encoding: 'utf8', timeout: 30_000 });
    expect(linked.status, linked.stderr).to.equal(0);
    expect(linked.stdout.trim()).to.equal(VERSION);
    // --offline: npx finds the local bin and never asks the registry.
    const npx = spawnSync('npx', ['--offline', 'bolt-core', '--version'], { cwd: project, encoding: 'utf8', timeout: 30_000 });
    expect(npx.status, npx.stderr).to.equal(0);
    expect(npx.stdout.trim()).to.equal(VERSION);
  });

  it('becomes node itself: the pid it was started as gets SIGTERM and SIGINT, and node\'s exit code comes back', async () => {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const { proc: p, dataDir } = await start(`signal-${signal}`, []);
      expect((await coreInfo(dataDir)).pid).to.equal(p.proc.pid);
      expect(path.basename(await readlink(`/proc/${p.proc.pid}/exe`))).to.equal('node');
      p.proc.kill(signal);
      await p.waitForOutput(new RegExp(`"signal":"${signal}".*shutting down`));
      expect(await p.exited()).to.equal(0);
    }
  });

  it('starts node with MALLOC_ARENA_MAX=2 and a 1 MiB young generation, and hands neither to the plugins or what they start', async () => {
    const { proc: p, dataDir } = await start('settings', []);
    expect(await procList(p.proc.pid!, 'environ')).to.include('MALLOC_ARENA_MAX=2');
    expect(await procList(p.proc.pid!, 'cmdline')).to.include('--max-semi-space-size=1');
    const seen = await probe(dataDir);
    expect(seen.mallocArenaMax).to.equal(null);
    expect(seen.launcherEnv).to.equal(null);
    // Server and sink: no cap in bolt.yaml, so the plugin's young generation is V8's default, not the launcher's 1 MiB.
    expect(seen.largestNewSpaceMb).to.be.at.least(16);
  });

  it('keeps a MALLOC_ARENA_MAX the user set, for node and for what Bolt starts', async () => {
    const { proc: p, dataDir } = await start('user-arena', [], { MALLOC_ARENA_MAX: '4' });
    expect(await procList(p.proc.pid!, 'environ')).to.include('MALLOC_ARENA_MAX=4');
    expect((await probe(dataDir)).mallocArenaMax).to.equal('4');
  });

  it('gives a client\'s plugins a small young generation (the client\'s default pluginLimits)', async () => {
    // No transport in the plugins folder: nothing dials the server address.
    const { dataDir } = await start('client', ['--role', 'client', '--server', 'ws://127.0.0.1:9']);
    expect((await probe(dataDir)).largestNewSpaceMb).to.be.at.most(4);
  });
});
