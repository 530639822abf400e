/**
 * The action-mark plugin in a real worker host: it reaches each task's instant on the server's
 * clock (this host's clock skewed and offset), reports it, and keeps its events through a
 * client.send that refuses at first.
 */
import { expect } from 'chai';
import { performance } from 'node:perf_hooks';
import { createTestHost, type TestHost } from '../../../plugin-sdk/src/testing.ts';
import { taskEventId } from '../../../plugin-sdk/src/index.ts';
import { FAKE_HOST_ID, fakeClient, pollUntil, type FakeClient } from '../../action-shell/test/fake-client.ts';

/** The server's clock runs 5 s ahead of the real one; this host's clock runs 3 s ahead of it too (--clock-skew-ms). */
const SERVER_AHEAD_MS = 5000;
const HOST_SKEW_MS = 3000;

describe('action-mark plugin', function () {
  this.timeout(15_000);
  let host: TestHost;
  let client: FakeClient;

  before(async () => {
    host = await createTestHost(new URL('..', import.meta.url), { options: { clockSkewMs: HOST_SKEW_MS } });
    // What the transport would estimate on this host: server clock minus this host's (skewed) clock.
    client = fakeClient(host.bus, { offsetMs: SERVER_AHEAD_MS - HOST_SKEW_MS, name: 'mark-host', refuseFirstSends: 2 });
  });

  after(async () => {
    client?.dispose();
    await host?.close();
  });

  /** Now on the server's clock, from the real clock. */
  const serverNow = (): number => performance.timeOrigin + performance.now() + SERVER_AHEAD_MS;

  it('retries events client.send refused, with the same ids, in order', async () => {
    const task = client.dispatch({ action: 'mark', startAt: null });
    const final = await client.finalOf(task.id);
    expect(client.refusedSends).to.equal(2);
    expect(client.eventsOf(task.id).map((e) => e.id)).to.deep.equal([taskEventId(task.id, FAKE_HOST_ID, 'started'), taskEventId(task.id, FAKE_HOST_ID, 'finished')]);
    expect(final).to.include({ kind: 'finished', durationMs: 0, host: 'mark-host' });
    expect(host.logs.some((l) => /client\.send refused task event/.test(l.msg))).to.equal(true);
  });

  it('reaches 12 instants on the server clock, none early and none a whole wait late', async () => {
    const tasks = [];
    const base = serverNow() + 300;
    for (let i = 0; i < 12; i++) tasks.push(client.dispatch({ action: 'mark', runId: `run-${i}`, startAt: base + i * 40 }));
    const lateness: number[] = [];
    for (const task of tasks) {
      await pollUntil(`the started event of ${task.runId}`, () => client.eventsOf(task.id).length > 0, 5000);
      // Seen here on the real clock: the worker did not start before the instant.
      expect(serverNow()).to.be.at.least(task.startAt!);
      const final = await client.finalOf(task.id);
      const started = client.eventsOf(task.id)[0]!;
      expect(started.kind).to.equal('started');
      expect(final.startedAt).to.equal(started.startedAt);
      lateness.push(started.startedAt! - task.startAt!);
    }
    lateness.sort((a, b) => a - b);
    expect(lateness[0], `lateness ${lateness.map((l) => l.toFixed(2)).join(' ')} ms`).to.be.at.least(0);
    // How precise the start is, is bench/start-skew's to measure on a quiet machine; here it only
    // has to be the instant asked for and not a scheduling tick or a whole wait later.
    expect(lateness[11], `worst lateness, all: ${lateness.map((l) => l.toFixed(2)).join(' ')} ms`).to.be.below(150);
  });
});
