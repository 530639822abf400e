/**
 * bolt.yaml's pluginLimits and the defaults of a process's roles: the young generation each plugin
 * thread really gets, seen from inside the thread.
 */
import { expect } from 'chai';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '../../core/config/index.ts';
import { startTestCore, writePlugin, type TestCore } from '../helpers/core.ts';
import { HEAP_PROBE_POOL_SOURCE, HEAP_PROBE_SOURCE, type HeapProbe } from '../helpers/heap-probe.ts';

/** V8's default lets a new space grow to 32 MiB; a 3 MiB young generation keeps it at 2 (4 on Node 24). */
const SMALL_MB = 4;
const DEFAULT_AT_LEAST_MB = 16;

describe('pluginLimits: caps on the plugins\' resourceLimits', function () {
  this.timeout(30_000);

  describe('loading bolt.yaml', () => {
    let dir: string;

    before(async () => {
      dir = await mkdtemp(path.join(os.tmpdir(), 'bolt-limits-'));
    });

    after(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    async function load(yaml: string | undefined, roles: string[]) {
      if (yaml === undefined) return loadConfig(path.join(dir, 'missing.yaml'), roles);
      const file = path.join(dir, 'bolt.yaml');
      await writeFile(file, yaml);
      return loadConfig(file, roles);
    }

    it('gives a client a 3 MiB young generation cap and a server or sink none, also when they share a process with a client', async () => {
      expect((await load(undefined, ['client'])).pluginLimits).to.deep.equal({ maxYoungGenerationSizeMb: 3 });
      expect((await load(undefined, ['server', 'sink'])).pluginLimits).to.deep.equal({});
      expect((await load(undefined, ['sink'])).pluginLimits).to.deep.equal({});
      expect((await load(undefined, ['server', 'client'])).pluginLimits).to.deep.equal({});
    });

    it('lets bolt.yaml set the cap over the role\'s default', async () => {
      expect((await load('pluginLimits: { maxYoungGenerationSizeMb: 16 }\n', ['client'])).pluginLimits).to.deep.equal({ maxYoungGenerationSizeMb: 16 });
      expect((await load('pluginLimits: { maxYoungGenerationSizeMb: 8 }\n', ['server', 'sink'])).pluginLimits).to.deep.equal({ maxYoungGenerationSizeMb: 8 });
    });

    it('refuses a cap that is not a whole number of MiB, naming the field', async () => {
      for (const bad of ['pluginLimits: { maxYoungGenerationSizeMb: 0 }\n', 'pluginLimits: { maxYoungGenerationSizeMb: 2.5 }\n', 'pluginLimits: { heapMb: 3 }\n']) {
        const err = await load(bad, ['client']).then(() => null, (e: unknown) => e as { code: string; message: string });
        expect(err?.code, bad).to.equal('BOLT_ERR_CONFIG_INVALID');
        expect(err?.message).to.include('pluginLimits');
      }
    });
  });

  describe('in the plugin threads', () => {
    let t: TestCore | undefined;

    afterEach(async () => {
      await t?.close();
      t = undefined;
    });

    async function probes(core: TestCore): Promise<Record<'worker' | 'asksMore' | 'asksLess' | 'pool', HeapProbe>> {
      await writePlugin(path.join(core.pluginsDir, 'heap-probe'), { name: 'heap-probe', roles: ['server'] }, HEAP_PROBE_SOURCE);
      await writePlugin(path.join(core.pluginsDir, 'asks-more'), { name: 'asks-more', roles: ['server'], resourceLimits: { maxYoungGenerationSizeMb: 64 } },
        HEAP_PROBE_SOURCE.replace("'heap-probe.young'", "'asks-more.young'"));
      await writePlugin(path.join(core.pluginsDir, 'asks-less'), { name: 'asks-less', roles: ['server'], resourceLimits: { maxYoungGenerationSizeMb: 3 } },
        HEAP_PROBE_SOURCE.replace("'heap-probe.young'", "'asks-less.young'"));
      await writePlugin(path.join(core.pluginsDir, 'heap-probe-pool'), { name: 'heap-probe-pool', roles: ['server'], kind: 'parser', isolation: 'pool' }, HEAP_PROBE_POOL_SOURCE);
      for (const name of ['heap-probe', 'asks-more', 'asks-less', 'heap-probe-pool']) {
        const status = await core.waitFor(name, (p) => p.state !== 'loading', 15_000);
        expect(status.state, `${name}: ${JSON.stringify(status.lastError)}`).to.equal('running');
      }
      const bus = core.core.bus;
      return {
        worker: await bus.request<HeapProbe>('heap-probe.young'),
        asksMore: await bus.request<HeapProbe>('asks-more.young'),
        asksLess: await bus.request<HeapProbe>('asks-less.young'),
        pool: await bus.request<HeapProbe>('heap-probe-pool', {}),
      };
    }

    it('without a cap, a worker or pool thread gets its manifest\'s young generation, else V8\'s default', async () => {
      t = await startTestCore({ roles: ['server'] });
      const seen = await probes(t);
      expect(seen.worker.largestNewSpaceMb).to.be.at.least(DEFAULT_AT_LEAST_MB);
      expect(seen.asksMore.largestNewSpaceMb).to.be.at.least(DEFAULT_AT_LEAST_MB);
      expect(seen.asksLess.largestNewSpaceMb).to.be.at.most(SMALL_MB);
      expect(seen.pool.largestNewSpaceMb).to.be.at.least(DEFAULT_AT_LEAST_MB);
    });

    it('with pluginLimits.maxYoungGenerationSizeMb: 3, no worker or pool thread grows past it, whatever its manifest asks', async () => {
      t = await startTestCore({ roles: ['server'], config: { pluginLimits: { maxYoungGenerationSizeMb: 3 } } });
      const seen = await probes(t);
      expect(seen.worker.largestNewSpaceMb).to.be.at.most(SMALL_MB);
      expect(seen.asksMore.largestNewSpaceMb).to.be.at.most(SMALL_MB);
      expect(seen.asksLess.largestNewSpaceMb).to.be.at.most(SMALL_MB);
      expect(seen.pool.largestNewSpaceMb).to.be.at.most(SMALL_MB);
    });

    it('caps a client\'s plugins by the client\'s default', async () => {
      t = await startTestCore({ roles: ['client'] });
      await writePlugin(path.join(t.pluginsDir, 'heap-probe'), { name: 'heap-probe', roles: ['client'] }, HEAP_PROBE_SOURCE);
      expect((await t.waitFor('heap-probe', (p) => p.state !== 'loading', 15_000)).state).to.equal('running');
      expect((await t.core.bus.request<HeapProbe>('heap-probe.young')).largestNewSpaceMb).to.be.at.most(SMALL_MB);
    });
  });
});
