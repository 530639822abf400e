/**
 * Hot loading as a user sees it: plugin folders copied into a watched directory load, edits reload,
 * removal unloads, half-copied folders wait, invalid manifests are refused and load once fixed,
 * duplicate names are refused.
 */
import { expect } from 'chai';
import { appendFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { PLUGINS, startTestCore, writePlugin, type TestCore } from '../helpers/core.ts';

const ECHO = path.join(PLUGINS, 'example-echo');

describe('watcher: hot loading plugin folders', function () {
  let t: TestCore;

  beforeEach(async () => {
    t = await startTestCore();
  });
  afterEach(async () => {
    await t.close();
  });

  it('loads a folder copied in, without a restart', async () => {
    expect(t.status('example-echo')).to.equal(undefined);
    await t.copyIn(ECHO);
    const p = await t.waitFor('example-echo', 'running');
    expect(p).to.include({ kind: 'example', isolation: 'worker', restarts: 0, lastError: null });
    expect(await t.core.bus.request('example.echo', 'hi')).to.equal('hi');
  });

  it('reloads a plugin when one of its files changes, stopping the old instance first', async () => {
    const dir = path.join(t.pluginsDir, 'counter');
    const source = (n: number) => `
      export default {
        start(ctx) {
          ctx.bus.publish('test.lifecycle', 'start ${n}');
          ctx.bus.provide('counter.version', () => ${n});
        },
        stop(ctx) { ctx.bus.publish('test.lifecycle', 'stop ${n}'); },
      };`;
    const events: string[] = [];
    t.core.bus.subscribe('test.lifecycle', (d) => events.push(String(d)));
    await writePlugin(dir, { name: 'counter' }, source(1));
    await t.waitFor('counter', 'running');
    expect(await t.core.bus.request('counter.version')).to.equal(1);
    await writeFile(path.join(dir, 'index.ts'), source(2));
    await t.waitFor('counter', (p) => p.state === 'running' && events.includes('start 2'));
    expect(await t.core.bus.request('counter.version')).to.equal(2);
    expect(events).to.deep.equal(['start 1', 'stop 1', 'start 2']);
  });

  it('unloads a plugin when its folder is removed', async () => {
    const dest = await t.copyIn(ECHO);
    await t.waitFor('example-echo', 'running');
    await rm(dest, { recursive: true });
    const deadline = Date.now() + 5000;
    while (t.status('example-echo') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(t.status('example-echo')).to.equal(undefined);
    const err = await t.core.bus.request('example.echo', 'x').catch((e: unknown) => e);
    expect(err).to.have.property('code', 'BOLT_ERR_BUS_NO_PROVIDER');
  });

  it('does not load a folder that is still being copied file by file', async () => {
    const dir = path.join(t.pluginsDir, 'slow-copy');
    const starts: string[] = [];
    t.core.bus.subscribe('test.slow', (d) => starts.push(String(d)));
    const states: string[] = [];
    t.core.bus.subscribe('core.plugin.state', (d) => {
      const s = d as { name: string; state: string };
      if (s.name === 'slow-copy') states.push(s.state);
    });
    await mkdir(dir);
    await writeFile(path.join(dir, 'plugin.json'), JSON.stringify({ name: 'slow-copy', version: '1.0.0', apiVersion: 1, kind: 'service', roles: ['server'], entry: 'index.ts' }));
    // The entry arrives in chunks 40 ms apart: any load before the last chunk would run broken code.
    const chunks = ['export default {\n', '  start(ctx) {\n', "    ctx.bus.publish('test.slow', 'complete');\n", '  },\n', '};\n'];
    for (const chunk of chunks) {
      await appendFile(path.join(dir, 'index.ts'), chunk);
      await new Promise((r) => setTimeout(r, 40));
    }
    await t.waitFor('slow-copy', 'running');
    expect(states).to.deep.equal(['running']);
    expect(starts).to.deep.equal(['complete']);
  });

  it('refuses an invalid manifest naming the file and the field, keeps the rest running, and loads it once fixed', async () => {
    await t.copyIn(ECHO);
    await t.waitFor('example-echo', 'running');
    const dir = path.join(t.pluginsDir, 'broken');
    await writePlugin(dir, { name: 'broken', kind: 'bogus' }, 'export default { start() {} };');
    const p = await t.waitFor('broken', 'invalid');
    expect(p.lastError?.code).to.equal('BOLT_ERR_MANIFEST_INVALID');
    expect(p.lastError?.message).to.contain(path.join(dir, 'plugin.json'));
    expect(p.lastError?.message).to.contain('field "kind"');
    expect(p.lastError?.message).to.contain('bogus');
    expect(await t.core.bus.request('example.echo', 'still here')).to.equal('still here');

    const manifest = JSON.parse(await readFile(path.join(dir, 'plugin.json'), 'utf8')) as Record<string, unknown>;
    await writeFile(path.join(dir, 'plugin.json'), JSON.stringify({ ...manifest, kind: 'service' }));
    await t.waitFor('broken', 'running');
  });

  it('refuses a manifest that is not JSON, and an unknown field, by name', async () => {
    const a = path.join(t.pluginsDir, 'not-json');
    await mkdir(a);
    await writeFile(path.join(a, 'plugin.json'), '{ "name": "not-json", ');
    const b = path.join(t.pluginsDir, 'extra-field');
    await writePlugin(b, { name: 'extra-field', colour: 'red' }, 'export default { start() {} };');
    const pa = await t.waitFor('not-json', 'invalid');
    expect(pa.lastError?.code).to.equal('BOLT_ERR_MANIFEST_UNREADABLE');
    expect(pa.lastError?.message).to.contain(path.join(a, 'plugin.json'));
    const pb = await t.waitFor('extra-field', 'invalid');
    expect(pb.lastError?.message).to.contain('unknown field "colour"');
  });

  it('refuses a second plugin with the same name, clearly, and loads it when the first goes', async () => {
    const first = await t.copyIn(ECHO);
    await t.waitFor('example-echo', 'running');
    const second = await t.copyIn(ECHO, 'echo-copy');
    await t.waitFor('example-echo', () => t.core.plugins().filter((p) => p.name === 'example-echo').length === 2);
    const copy = t.core.plugins().find((p) => p.folder === second)!;
    expect(copy.state).to.equal('invalid');
    expect(copy.lastError?.code).to.equal('BOLT_ERR_MANIFEST_DUPLICATE_NAME');
    expect(copy.lastError?.message).to.contain(first);
    expect(t.core.plugins().find((p) => p.folder === first)?.state).to.equal('running');

    await rm(first, { recursive: true });
    await t.waitFor('example-echo', (p) => p.folder === second && p.state === 'running');
  });

  it('refuses settings that do not match the config schema, naming the field', async () => {
    await t.close();
    t = await startTestCore({ config: { plugins: { 'example-echo': { prefix: 42 } } } });
    await t.copyIn(ECHO);
    const p = await t.waitFor('example-echo', 'invalid');
    expect(p.lastError?.code).to.equal('BOLT_ERR_PLUGIN_CONFIG_INVALID');
    expect(p.lastError?.message).to.contain('plugins/example-echo/prefix');
  });

  it('runs plugins not shipped with Bolt in a child process when bolt.yaml says untrustedIsolation: process', async () => {
    await t.close();
    t = await startTestCore({ config: { untrustedIsolation: 'process' } });
    await t.copyIn(ECHO);
    const p = await t.waitFor('example-echo', 'running');
    expect(p.isolation).to.equal('process');
    expect(await t.core.bus.request('example.echo', 'from a child')).to.equal('from a child');
  });

  it('reports a syntax error in the entry as invalid with file and line, and loads once fixed', async () => {
    const dir = path.join(t.pluginsDir, 'typo');
    await writePlugin(dir, { name: 'typo' }, 'export default {\n  start(ctx) {\n    ctx.log.info("x"\n  },\n};\n');
    const p = await t.waitFor('typo', 'invalid');
    expect(p.lastError?.code).to.equal('BOLT_ERR_PLUGIN_BUILD');
    expect(p.lastError?.message).to.match(/typo\/index\.ts:\d+:\d+/);
    await writeFile(path.join(dir, 'index.ts'), 'export default { start(ctx) { ctx.log.info("x"); } };\n');
    await t.waitFor('typo', 'running');
  });
});
