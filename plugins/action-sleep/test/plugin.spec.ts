/**
 * The action-sleep plugin in a real worker host: it sleeps from its start instant, and ends on
 * cancel, on its timeout and when the plugin stops, with exactly one final event each time.
 */
import { expect } from 'chai';
import { createTestHost, type TestHost } from '../../../plugin-sdk/src/testing.ts';
import { fakeClient, pollUntil, type FakeClient } from '../../action-shell/test/fake-client.ts';

describe('action-sleep plugin', function () {
  this.timeout(15_000);
  let host: TestHost;
  let client: FakeClient;

  before(async () => {
    host = await createTestHost(new URL('..', import.meta.url));
    client = fakeClient(host.bus, { offsetMs: -2000, name: 'sleeper' });
  });

  after(async () => {
    client?.dispose();
    await host?.close();
  });

  it('sleeps the duration from its start instant', async () => {
    const startAt = client.serverNow() + 100;
    const task = client.dispatch({ action: 'sleep', startAt, with: { duration: '250ms' } });
    const final = await client.finalOf(task.id);
    expect(client.eventsOf(task.id).map((e) => e.kind)).to.deep.equal(['started', 'finished']);
    expect(final.durationMs).to.be.at.least(250).and.below(1500);
    expect(final.at - startAt).to.be.at.least(250);
  });

  it('a cancel of its run ends it at once; a timeout ends another as timedout', async () => {
    const cancelled = client.dispatch({ action: 'sleep', runId: 'run-c', with: { duration: '10s' } });
    const timed = client.dispatch({ action: 'sleep', runId: 'run-t', with: { duration: 10_000 }, timeoutMs: 300 });
    await pollUntil('both to start', () => client.eventsOf(cancelled.id).length > 0 && client.eventsOf(timed.id).length > 0, 5000);
    client.cancel('run-c');
    const c = await client.finalOf(cancelled.id);
    expect(c.kind).to.equal('cancelled');
    expect(c.durationMs).to.be.below(2000);
    const t = await client.finalOf(timed.id);
    expect(t.kind).to.equal('timedout');
    expect(t.durationMs).to.be.at.least(295).and.below(2000);
    expect(client.eventsOf(timed.id).map((e) => e.kind)).to.deep.equal(['started', 'timedout']);
  });

  it('a bad duration fails without starting', async () => {
    const task = client.dispatch({ action: 'sleep', with: { duration: '5 parsecs' } });
    const final = await client.finalOf(task.id);
    expect(client.eventsOf(task.id)).to.have.length(1);
    expect(final.kind).to.equal('failed');
    expect(final.stderrTail).to.match(/^\[bolt\] BOLT_ERR_ACTION_SPEC: with\.duration must be a duration/);
  });

  it('stopping the plugin cancels a running sleep and still reports it', async () => {
    const other = await createTestHost(new URL('..', import.meta.url));
    const otherClient = fakeClient(other.bus, { offsetMs: 0, name: 'stopping' });
    try {
      const task = otherClient.dispatch({ action: 'sleep', with: { duration: '1m' } });
      await pollUntil('the sleep to start', () => otherClient.eventsOf(task.id).length > 0, 5000);
      await other.close();
      expect(otherClient.eventsOf(task.id).map((e) => e.kind)).to.deep.equal(['started', 'cancelled']);
    } finally {
      otherClient.dispose();
    }
  });
});
