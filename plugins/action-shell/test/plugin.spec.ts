/**
 * The action-shell plugin in a real worker host: dispatches from the bus run at their instant on
 * the server's clock, report started and exactly one final event through client.send, end their
 * process tree on timeout and cancel, and never run twice.
 */
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { taskEventId, WIRE_LIMITS } from '../../../plugin-sdk/src/index.ts';
import { createTestHost, type TestHost } from '../../../plugin-sdk/src/testing.ts';
import { FAKE_HOST_ID, fakeClient, pollUntil, processesWith, type FakeClient } from './fake-client.ts';

/** The server's clock runs 5 s ahead of this host's. */
const OFFSET_MS = 5000;

/** A unique sleep length that marks one test's processes in /proc. */
function uniqueSleep(): string {
  return `30.${randomBytes(4).readUInt32BE(0)}`;
}

describe('action-shell plugin', function () {
  this.timeout(15_000);
  let host: TestHost;
  let client: FakeClient;
  let dir: string;

  before(async () => {
    host = await createTestHost(new URL('..', import.meta.url), { config: { killGraceMs: 200 } });
    expect(host.status().state).to.equal('running');
    client = fakeClient(host.bus, { offsetMs: OFFSET_MS, name: 'web-1' });
    dir = mkdtempSync(join(tmpdir(), 'bolt-action-shell-'));
  });

  after(async () => {
    client?.dispose();
    await host?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('starts at startAt on the server clock and reports started, then failed with exit code and tails', async () => {
    const startAt = client.serverNow() + 400;
    const task = client.dispatch({ startAt, with: { run: 'echo out; echo err >&2; exit 3' } });
    await pollUntil('the started event', () => client.eventsOf(task.id).length > 0, 5000);
    // Seen on this host's clock: not before the instant.
    expect(client.serverNow()).to.be.at.least(startAt);
    const final = await client.finalOf(task.id);
    const [started, ...rest] = client.eventsOf(task.id);
    expect(rest).to.deep.equal([final]);
    expect(started).to.include({ v: 1, type: 'task.event', id: taskEventId(task.id, FAKE_HOST_ID, 'started'), runId: 'run-1', taskId: 'task-1', host: 'web-1', kind: 'started' });
    // Precision is action-mark's test; here, the right instant (a shared 2-core machine can deschedule the process for tens of ms).
    // Precision is bench/start-skew's business; here: not early, and not a whole wait late.
    expect(started!.startedAt! - startAt, 'lateness of the start (ms)').to.be.at.least(0).and.below(250);
    expect(final).to.include({ id: taskEventId(task.id, FAKE_HOST_ID, 'failed'), kind: 'failed', exitCode: 3, stdoutTail: 'out\n', stderrTail: 'err\n', startedAt: started!.startedAt });
    expect(final.durationMs).to.be.above(0).and.below(2000);
    expect(final.at).to.be.at.least(started!.startedAt!);
  });

  it('runs an argv with env and cwd, and keeps only the last 8192 characters of a long output', async () => {
    const task = client.dispatch({ with: { argv: ['/bin/sh', '-c', 'printf "%s|" "$GREETING" "$PWD"; head -c 20000 /dev/zero | tr "\\0" x; echo END'], env: { GREETING: 'a b' }, cwd: dir } });
    const final = await client.finalOf(task.id);
    expect(final.kind).to.equal('finished');
    expect(final.exitCode).to.equal(0);
    expect(final.stdoutTail).to.have.length(WIRE_LIMITS.maxOutputTail);
    expect(final.stdoutTail!.endsWith('xxxEND\n')).to.equal(true);
    const whole = await client.finalOf(client.dispatch({ with: { argv: ['/bin/sh', '-c', 'printf "%s|" "$GREETING" "$PWD"'], env: { GREETING: 'a b' }, cwd: dir } }).id);
    expect(whole.stdoutTail).to.equal(`a b|${dir}|`);
  });

  it('a timeout ends the whole process tree, a TERM-ignoring child included, and reports timedout', async () => {
    const marker = uniqueSleep();
    const ready = join(dir, `ready-${marker}`);
    const script = [`sleep ${marker} &`, `sh -c "trap '' TERM; sleep ${marker}" &`, `(sleep ${marker} &)`, `touch ${ready}`, 'wait'].join('\n');
    const before = performance.now();
    const task = client.dispatch({ with: { run: script }, timeoutMs: 800 });
    const final = await client.finalOf(task.id);
    expect(existsSync(ready), 'the tree was up before the timeout').to.equal(true);
    expect(final.kind).to.equal('timedout');
    expect(final.id).to.equal(taskEventId(task.id, FAKE_HOST_ID, 'timedout'));
    expect(performance.now() - before).to.be.at.least(800);
    expect(final.durationMs).to.be.at.least(795);
    expect(processesWith(marker), 'processes left after the timeout').to.deep.equal([]);
  });

  it('a cancel for its run and task ends it and its tree; another run keeps going', async () => {
    const marker = uniqueSleep();
    const ready = join(dir, `ready-${marker}`);
    const cancelled = client.dispatch({ runId: 'run-c', taskId: 'load', with: { run: `sleep ${marker} & touch ${ready}; wait` } });
    const other = client.dispatch({ runId: 'run-d', taskId: 'load', with: { run: 'sleep 0.4; echo done' } });
    await pollUntil('the command to start', () => existsSync(ready) && processesWith(marker).length > 0, 5000);
    client.cancel('run-c', 'other-task');
    client.cancel('run-c', 'load');
    const final = await client.finalOf(cancelled.id);
    expect(final.kind).to.equal('cancelled');
    expect(processesWith(marker)).to.deep.equal([]);
    expect(client.eventsOf(cancelled.id).map((e) => e.kind)).to.deep.equal(['started', 'cancelled']);
    const otherFinal = await client.finalOf(other.id);
    expect(otherFinal).to.include({ kind: 'finished', stdoutTail: 'done\n' });
  });

  it('a cancel during the wait for the instant reports only cancelled, and nothing runs', async () => {
    const file = join(dir, 'never');
    const task = client.dispatch({ runId: 'run-w', startAt: client.serverNow() + 3000, with: { run: `touch ${file}` } });
    await new Promise((resolve) => setImmediate(resolve));
    client.cancel('run-w');
    const final = await client.finalOf(task.id);
    expect(final.kind).to.equal('cancelled');
    expect(final.startedAt).to.equal(undefined);
    expect(client.eventsOf(task.id)).to.have.length(1);
    expect(existsSync(file)).to.equal(false);
  });

  it('runs a command id once, ignores other actions, and fails a bad with: before starting', async () => {
    const file = join(dir, 'count');
    const task = client.dispatch({ with: { run: `echo x >> ${file}` } });
    await client.finalOf(task.id);
    client.dispatch({ ...task });
    const sleepTask = client.dispatch({ action: 'sleep', with: { duration: 10 } });
    const bad = client.dispatch({ with: { run: 'true', argv: ['true'] } });
    const badFinal = await client.finalOf(bad.id);
    expect(client.eventsOf(bad.id)).to.have.length(1);
    expect(badFinal.kind).to.equal('failed');
    expect(badFinal.stderrTail).to.match(/^\[bolt\] BOLT_ERR_ACTION_SPEC: with: needs exactly one of run/);
    // The repeat was published before the bad one, so it has been handled (and ignored) by now.
    expect(readFileSync(file, 'utf8')).to.equal('x\n');
    expect(client.eventsOf(task.id).map((e) => e.kind)).to.deep.equal(['started', 'finished']);
    expect(client.eventsOf(sleepTask.id)).to.deep.equal([]);
    expect(host.logs.some((l) => /was already run; ignored/.test(l.msg))).to.equal(true);
  });
});
