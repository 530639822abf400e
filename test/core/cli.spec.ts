/** `bolt-core` as a user runs it: real processes, the admin endpoint, exit codes. */
import { expect } from 'chai';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cp, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PLUGINS, REPO, writePlugin } from '../helpers/core.ts';

const BIN = path.join(REPO, 'bin', 'bolt-core');

function run(args: string[], cwd = REPO): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd, encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function waitForFile(file: string, timeoutMs = 15_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await readFile(file, 'utf8');
    } catch {
      if (Date.now() > deadline) throw new Error(`${file} did not appear within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

describe('bolt-core CLI', function () {
  this.timeout(60_000);
  let dir: string;
  let core: ChildProcess | undefined;
  let output = '';

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'bolt-cli-'));
    await cp(path.join(PLUGINS, 'example-echo'), path.join(dir, 'plugins', 'example-echo'), { recursive: true });
    await writePlugin(path.join(dir, 'plugins', 'tidy'), { name: 'tidy', roles: ['server'] }, `
      import { writeFileSync } from 'node:fs';
      import path from 'node:path';
      export default {
        start() {},
        stop(ctx) { writeFileSync(path.join(ctx.dataDir, 'stopped'), 'clean'); },
      };`);
    await writePlugin(path.join(dir, 'plugins', 'bad'), { name: 'bad', roles: ['server'], isolation: 'nowhere' }, 'export default { start() {} };');
    core = spawn(process.execPath, [BIN, 'start', '--plugins', path.join(dir, 'plugins'), '--data', path.join(dir, 'data')], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    core.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    core.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    await waitForFile(path.join(dir, 'data', 'core.json'));
    const deadline = Date.now() + 15_000;
    while (!output.includes('started') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  });

  after(async () => {
    if (core && core.exitCode === null) core.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  it('writes core.json readable only by its owner, with a loopback admin address', async () => {
    const file = path.join(dir, 'data', 'core.json');
    expect((await stat(file)).mode & 0o777).to.equal(0o600);
    const info = JSON.parse(await readFile(file, 'utf8')) as { pid: number; admin: { url: string; token: string } };
    expect(info.pid).to.equal(core!.pid);
    expect(info.admin.url).to.match(/^http:\/\/127\.0\.0\.1:\d+$/);
    const denied = await fetch(`${info.admin.url}/api/plugins`);
    expect(denied.status).to.equal(401);
    const wrong = await fetch(`${info.admin.url}/api/plugins`, { headers: { authorization: 'Bearer nope' } });
    expect(wrong.status).to.equal(401);
  });

  it('lists the plugin table as JSON', () => {
    const r = run(['plugins', '--json', '--data', path.join(dir, 'data')]);
    expect(r.code, r.stderr).to.equal(0);
    const table = JSON.parse(r.stdout) as Array<{ name: string; state: string; isolation: string | null; lastError: { code: string } | null }>;
    expect(table.map((p) => [p.name, p.state])).to.deep.equal([['bad', 'invalid'], ['example-echo', 'running'], ['tidy', 'running']]);
    expect(table[0]!.lastError!.code).to.equal('BOLT_ERR_MANIFEST_INVALID');
    for (const p of table) expect(p).to.have.keys('name', 'folder', 'version', 'kind', 'isolation', 'state', 'restarts', 'lastError', 'since');
  });

  it('prints the plugin table as text', () => {
    const r = run(['plugins', '--data', path.join(dir, 'data')]);
    expect(r.code, r.stderr).to.equal(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).to.match(/^NAME\s+VERSION\s+KIND\s+ISOLATION\s+STATE\s+RESTARTS\s+SINCE\s+LAST ERROR$/);
    expect(lines.find((l) => l.startsWith('bad'))).to.contain('BOLT_ERR_MANIFEST_INVALID');
  });

  it('restarts a plugin on request and says which one is unknown', () => {
    const ok = run(['plugins', 'restart', 'example-echo', '--json', '--data', path.join(dir, 'data')]);
    expect(ok.code, ok.stderr).to.equal(0);
    expect(JSON.parse(ok.stdout)).to.include({ name: 'example-echo', state: 'running' });
    const missing = run(['plugins', 'restart', 'ghost', '--data', path.join(dir, 'data')]);
    expect(missing.code).to.equal(1);
    expect(missing.stderr).to.contain('BOLT_ERR_PLUGIN_NOT_FOUND');
  });

  it('exits 2 with a coded message for unknown commands, unknown flags, bad roles and a missing core', () => {
    const cases: Array<[string[], string]> = [
      [['frobnicate'], 'BOLT_ERR_CLI_USAGE'],
      [['plugins', '--colour'], 'BOLT_ERR_CLI_USAGE'],
      [['start', '--role', 'overlord'], 'BOLT_ERR_CLI_USAGE'],
      [['plugins', '--data', path.join(dir, 'nowhere')], 'BOLT_ERR_CLI_NOT_RUNNING'],
      [['report', 'r1'], '--out FILE.html is required'],
      [['report', 'r1', 'r2', '--out', 'x.html'], 'report takes one run id'],
      [['report', 'r1', '--out', 'x.html', '--sink', 'ftp://sink'], '--sink must be http://'],
    ];
    for (const [args, code] of cases) {
      const r = run(args);
      expect(r.code, args.join(' ')).to.equal(2);
      expect(r.stderr, args.join(' ')).to.contain(code);
    }
  });

  it('refuses an invalid bolt.yaml with exit 2, naming the file and the field', async () => {
    const configDir = await mkdtemp(path.join(os.tmpdir(), 'bolt-cfg-'));
    const { writeFile } = await import('node:fs/promises');
    await writeFile(path.join(configDir, 'bolt.yaml'), 'supervisor:\n  maxRestart: 3\n');
    const r = run(['start', '--plugins', path.join(configDir, 'none'), '--data', path.join(configDir, 'data')], configDir);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.contain('BOLT_ERR_CONFIG_INVALID');
    expect(r.stderr).to.contain(path.join(configDir, 'bolt.yaml'));
    expect(r.stderr).to.contain('supervisor/maxRestart');
    await rm(configDir, { recursive: true, force: true });
  });

  it('shuts down cleanly on SIGINT: every plugin stopped, core.json removed, exit 0', async () => {
    const exited = new Promise<number | null>((resolve) => core!.once('exit', (code) => resolve(code)));
    core!.kill('SIGINT');
    expect(await exited, output).to.equal(0);
    expect(await readFile(path.join(dir, 'data', 'plugins', 'tidy', 'stopped'), 'utf8')).to.equal('clean');
    const gone = await stat(path.join(dir, 'data', 'core.json')).then(() => false, () => true);
    expect(gone).to.equal(true);
  });
});
