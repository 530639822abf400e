/** Supervision while a plugin loads: a slow load is not an endless loop. */
import { expect } from 'chai';
import path from 'node:path';
import { FAST_SUPERVISOR, startTestCore, writePlugin, type TestCore } from '../helpers/core.ts';

describe('supervisor: the heartbeat watchdog and loading plugins', function () {
  this.timeout(30_000);
  let t: TestCore | undefined;

  afterEach(async () => {
    await t?.close();
    t = undefined;
  });

  it('lets a plugin whose start holds its thread longer than the watchdog (but within the start deadline) come up', async () => {
    // watchdogTimeoutMs 1000, startTimeoutMs 5000: a 2.5 s busy start is slow, not stuck.
    t = await startTestCore({ config: { supervisor: FAST_SUPERVISOR } });
    await writePlugin(path.join(t.pluginsDir, 'slow-start'), { name: 'slow-start', roles: ['server'] }, `
      export default {
        start() {
          const until = Date.now() + 2500;
          while (Date.now() < until) {}
        },
      };`);
    const status = await t.waitFor('slow-start', (p) => p.state === 'running' || p.state === 'crashed' || p.state === 'failed', 15_000);
    expect(status.state, JSON.stringify(status.lastError)).to.equal('running');
    expect(status.restarts).to.equal(0);
  });

  it('still terminates a plugin that loops forever in start, at the start deadline', async () => {
    t = await startTestCore({ config: { supervisor: FAST_SUPERVISOR } });
    await writePlugin(path.join(t.pluginsDir, 'stuck-start'), { name: 'stuck-start', roles: ['server'] }, `
      export default { start() { for (;;) {} } };`);
    const status = await t.waitFor('stuck-start', (p) => p.lastError !== null, 15_000);
    expect(status.lastError?.code).to.be.oneOf(['BOLT_ERR_PLUGIN_UNRESPONSIVE', 'BOLT_ERR_PLUGIN_START_TIMEOUT']);
  });
});
