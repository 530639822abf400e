/**
 * serveAction's guarantees that the bundled actions do not reach: a run that throws, a run that
 * ignores its abort, command ids too long to carry a kind, and output cut inside a surrogate pair.
 * The probe action runs in a real worker host; client.* services are served on the test bus.
 */
import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { taskEventId, WIRE_LIMITS } from '../../plugin-sdk/src/index.ts';
import { createTestHost, type TestHost } from '../../plugin-sdk/src/testing.ts';
import { FAKE_HOST_ID, fakeClient, pollUntil, type FakeClient } from '../../plugins/action-shell/test/fake-client.ts';

const PROBE = `
import { defineAction, serveAction } from 'bolt-plugin-sdk';

export default defineAction({
  start(ctx) {
    serveAction(ctx, 'probe', async (task, { waitForStart }) => {
      const mode = task.with.mode;
      if (mode === 'throw-before') throw new Error('probe broke');
      await waitForStart();
      if (mode === 'throw-after') throw new TypeError('probe broke after starting');
      if (mode === 'ignore-abort') {
        await new Promise((resolve) => setTimeout(resolve, 800));
        ctx.bus.publish('probe.ignored-abort-done', task.id);
        return { kind: 'finished', stdoutTail: 'too late' };
      }
      if (mode === 'emoji') return { kind: 'finished', stdoutTail: '\\u{1F600}'.repeat(5000) + 'b' };
      return { kind: 'finished', exitCode: 0 };
    }, { stopGraceMs: 300 });
  },
});
`;

describe('sdk serveAction', function () {
  this.timeout(15_000);
  let dir: string;
  let host: TestHost;
  let client: FakeClient;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'bolt-probe-action-'));
    await writeFile(path.join(dir, 'plugin.json'), JSON.stringify({ name: 'action-probe', version: '1.0.0', apiVersion: 1, kind: 'action', roles: ['client'], entry: 'index.ts' }));
    await writeFile(path.join(dir, 'index.ts'), PROBE);
    host = await createTestHost(dir);
    expect(host.status().state).to.equal('running');
    client = fakeClient(host.bus, { offsetMs: 250, name: 'probe-host' });
  });

  after(async () => {
    client?.dispose();
    await host?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('runs a task sent without a timeout (the longest timer delay) to completion instead of timing it out at once', async () => {
    const task = client.dispatch({ action: 'probe', with: {}, timeoutMs: 2_147_483_647, startAt: client.serverNow() + 50 });
    const final = await client.finalOf(task.id);
    expect(client.eventsOf(task.id).map((e) => e.kind)).to.deep.equal(['started', 'finished']);
    expect(final.kind).to.equal('finished');
  });

  it('a run that throws before starting reports only failed, with the error in stderrTail', async () => {
    const task = client.dispatch({ action: 'probe', with: { mode: 'throw-before' } });
    const final = await client.finalOf(task.id);
    expect(client.eventsOf(task.id)).to.deep.equal([final]);
    expect(final).to.include({ kind: 'failed', stderrTail: '[bolt] BOLT_ERR_ACTION_FAILED: probe broke' });
    expect(host.logs.some((l) => l.level === 50 && l.msg === 'action probe threw')).to.equal(true);
  });

  it('a run that throws after starting reports started, then failed', async () => {
    const task = client.dispatch({ action: 'probe', with: { mode: 'throw-after' } });
    const final = await client.finalOf(task.id);
    expect(client.eventsOf(task.id).map((e) => e.kind)).to.deep.equal(['started', 'failed']);
    expect(final.stderrTail).to.equal('[bolt] BOLT_ERR_ACTION_FAILED: probe broke after starting');
  });

  it('a run that ignores its timeout is reported timedout after the grace, and its late result is dropped', async () => {
    const done: unknown[] = [];
    const unsubscribe = host.bus.subscribe('probe.ignored-abort-done', (id) => done.push(id));
    try {
      const task = client.dispatch({ action: 'probe', with: { mode: 'ignore-abort' }, timeoutMs: 100 });
      const final = await client.finalOf(task.id);
      expect(final.kind).to.equal('timedout');
      expect(final.stdoutTail).to.equal(undefined);
      expect(host.logs.some((l) => l.level === 50 && /did not end within 300 ms of being timedout/.test(l.msg))).to.equal(true);
      await pollUntil('the ignoring run to end', () => done.includes(task.id), 5000);
      // Events of one plugin reach client.send in order: once a later task's final is in, any late one would be too.
      await client.finalOf(client.dispatch({ action: 'probe', with: {} }).id);
      expect(client.eventsOf(task.id).map((e) => e.kind)).to.deep.equal(['started', 'timedout']);
    } finally {
      unsubscribe();
    }
  });

  it('names events by a digest of the command and host ids, so hosts of one broadcast never share an id', async () => {
    const id = `c${'0123456789abcdef'.repeat(4)}`.slice(0, 64);
    const digest = createHash('sha256').update(`${id}\n${FAKE_HOST_ID}`).digest('hex').slice(0, 40);
    client.dispatch({ id, action: 'probe', with: {} });
    const final = await client.finalOf(id);
    expect(client.eventsOf(id).map((e) => e.id)).to.deep.equal([`${digest}:started`, `${digest}:finished`]);
    expect(taskEventId(id, 'another-host', 'finished')).to.not.equal(`${digest}:finished`);
    expect(final.kind).to.equal('finished');
  });

  it('cuts output to the last 8192 characters without splitting a surrogate pair', async () => {
    const task = client.dispatch({ action: 'probe', with: { mode: 'emoji' } });
    const final = await client.finalOf(task.id);
    expect(final.stdoutTail).to.have.length(WIRE_LIMITS.maxOutputTail - 1);
    expect(final.stdoutTail!.codePointAt(0)).to.equal(0x1f600);
    expect(final.stdoutTail!.endsWith('\u{1F600}b')).to.equal(true);
  });
});
