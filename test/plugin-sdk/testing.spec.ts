/** createTestHost runs a plugin alone, in a real host, from a folder anywhere on disk. */
import { expect } from 'chai';
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createTestHost } from '../../plugin-sdk/src/testing.ts';
import { PLUGINS } from '../helpers/core.ts';

describe('plugin-sdk createTestHost', function () {
  it('runs the example echo plugin with its settings and serves its bus service', async () => {
    const host = await createTestHost(path.join(PLUGINS, 'example-echo'), { config: { prefix: '> ' } });
    try {
      expect(host.status().state).to.equal('running');
      expect(host.status().isolation).to.equal('worker');
      expect(await host.bus.request('example.echo', 'hi')).to.equal('> hi');
    } finally {
      await host.close();
    }
  });

  it('runs a plugin that lives outside the repository and imports bolt-plugin-sdk, and collects its logs', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'bolt-outside-'));
    const folder = path.join(dir, 'greeter');
    await mkdir(folder);
    await writeFile(path.join(folder, 'plugin.json'), JSON.stringify({
      name: 'greeter', version: '0.1.0', apiVersion: 1, kind: 'service', roles: ['client'], entry: 'index.ts',
      config: { type: 'object', properties: { who: { type: 'string', default: 'world' } }, additionalProperties: false },
    }));
    await writeFile(path.join(folder, 'index.ts'), `
      import { definePlugin, BoltError } from 'bolt-plugin-sdk';
      export default definePlugin<{ who: string }>({
        start(ctx) {
          ctx.log.info({ who: ctx.config.who }, 'greeting');
          ctx.bus.provide('greeter.hello', () => 'hello ' + ctx.config.who);
          ctx.bus.provide('greeter.fail', () => { throw new BoltError('BOLT_ERR_PLUGIN_DENIED', 'nope'); });
        },
      });
    `);
    const host = await createTestHost(folder);
    try {
      expect(await host.bus.request('greeter.hello')).to.equal('hello world');
      const err = (await host.bus.request('greeter.fail').catch((e: unknown) => e)) as { cause: { code: string } };
      expect(err.cause.code).to.equal('BOLT_ERR_PLUGIN_DENIED');
      expect(host.logs.some((l) => l.plugin === 'greeter' && l.msg === 'greeting' && l.who === 'world')).to.equal(true);
    } finally {
      await host.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('plugin-sdk README example', () => {
  it('the counter plugin and its test from the README work as written', async () => {
    const { readFile } = await import('node:fs/promises');
    const readme = await readFile(path.join(PLUGINS, '..', 'plugin-sdk', 'README.md'), 'utf8');
    const folder = path.join(PLUGINS, '..', 'test', 'plugin-sdk', 'counter');
    // The fixture folder holds the README's two files verbatim.
    expect(readme).to.contain(await readFile(path.join(folder, 'plugin.json'), 'utf8'));
    expect(readme).to.contain(await readFile(path.join(folder, 'index.ts'), 'utf8'));
    const host = await createTestHost(folder, { config: { step: 5 } });
    try {
      const seen: unknown[] = [];
      host.bus.subscribe('counter.changed', (total) => seen.push(total));
      expect(await host.bus.request('counter.add', 2)).to.equal(10);
      expect(await host.bus.request('counter.total')).to.equal(10);
      expect(seen).to.deep.equal([10]);
    } finally {
      await host.close();
    }
  });
});
