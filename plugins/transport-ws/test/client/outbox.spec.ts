/**
 * The client's outbox on real files: order, draining before newer messages, restarts (a clean
 * close and a SIGKILL mid-append), resending only what a lost session had not confirmed, the size
 * cap, a busy sender and pacing.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import type { TaskEventMessage } from '../../../../plugin-sdk/src/schemas/wire.ts';
import { Outbox, type OutboxMessage, type OutboxOptions } from '../../client/outbox.ts';
import { recordingLogger, tempDir } from './helpers.ts';

function event(i: number): TaskEventMessage {
  return { v: 1, type: 'task.event', id: `cmd-${i}:finished`, runId: 'run-1', taskId: 'task-1', host: 'web-1', kind: 'finished', at: 1_700_000_000_000 + i, exitCode: 0 };
}

/** A sender that records what it got, by id. */
function recorder(): { ids: string[]; send: (m: OutboxMessage) => boolean } {
  const ids: string[] = [];
  return { ids, send: (m) => (ids.push(m.id), true) };
}

async function until(what: string, check: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

const range = (from: number, to: number): string[] => Array.from({ length: to - from + 1 }, (_, k) => event(from + k).id);

describe('transport-ws client outbox', function () {
  this.timeout(15_000);
  const root = tempDir('bolt-outbox-');
  let n = 0;
  const opened: Outbox[] = [];
  const openOutbox = (options: Partial<OutboxOptions> & { dir?: string } = {}): Outbox => {
    const outbox = Outbox.open({ dir: options.dir ?? path.join(root, `o${++n}`), confirmAfterMs: 100, ...options });
    opened.push(outbox);
    return outbox;
  };
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((o) => o.close()));
  });

  it('sends at once while attached, in order, and keeps each message on disk until confirmed', async () => {
    const outbox = openOutbox();
    const sink = recorder();
    outbox.attach(sink.send);
    await Promise.all(Array.from({ length: 20 }, (_, i) => outbox.push(event(i + 1))));
    expect(sink.ids).to.deep.equal(range(1, 20));
    const segment = fs.readdirSync(outbox.dir).find((f) => f.startsWith('outbox-'))!;
    const lines = fs.readFileSync(path.join(outbox.dir, segment), 'utf8').trimEnd().split('\n');
    expect(lines.map((l) => JSON.parse(l.slice(l.indexOf(' ') + 1)).id)).to.deep.equal(range(1, 20));
    expect(lines.map((l) => Number(l.slice(0, l.indexOf(' '))))).to.deep.equal(Array.from({ length: 20 }, (_, i) => i + 1));
    await until('confirmation', () => outbox.stats.queued === 0);
    expect(outbox.stats).to.include({ confirmedSeq: 20, queuedBytes: 0, sent: 20, resent: 0 });
    await until('the cursor file', () => fs.existsSync(path.join(outbox.dir, 'cursor.json')), 3000);
    expect(JSON.parse(fs.readFileSync(path.join(outbox.dir, 'cursor.json'), 'utf8'))).to.deep.equal({ confirmedSeq: 20 });
  });

  it('queues while detached, then drains in order before messages pushed after the attach', async () => {
    const outbox = openOutbox({ ratePerSec: 1000, burst: 4 });
    await Promise.all(Array.from({ length: 10 }, (_, i) => outbox.push(event(i + 1))));
    expect(outbox.stats).to.include({ queued: 10, unsent: 10, sent: 0 });
    const sink = recorder();
    outbox.attach(sink.send);
    // The burst of 4 went at once; the rest waits for tokens, and new messages queue behind it.
    expect(sink.ids).to.deep.equal(range(1, 4));
    await Promise.all([11, 12, 13].map((i) => outbox.push(event(i))));
    await until('all 13', () => sink.ids.length === 13);
    expect(sink.ids).to.deep.equal(range(1, 13));
  });

  it('a session that ends resends, first, only what it had not confirmed; nothing confirmed is sent twice', async () => {
    const outbox = openOutbox({ confirmAfterMs: 200 });
    const first = recorder();
    const detachFirst = outbox.attach(first.send);
    await Promise.all([1, 2, 3].map((i) => outbox.push(event(i))));
    await until('confirmation of 1-3', () => outbox.stats.confirmedSeq === 3);
    await Promise.all([4, 5].map((i) => outbox.push(event(i))));
    detachFirst();
    await outbox.push(event(6));
    const second = recorder();
    const detachSecond = outbox.attach(second.send);
    // A late detach of the first session (its close event after the new connect) changes nothing.
    detachFirst();
    await outbox.push(event(7));
    expect(first.ids).to.deep.equal(range(1, 5));
    expect(second.ids).to.deep.equal(range(4, 7));
    expect(outbox.stats).to.include({ sent: 9, resent: 2 });
    await until('confirmation of 4-7', () => outbox.stats.confirmedSeq === 7);
    detachSecond();
  });

  it('survives a restart: what was not confirmed is sent after reopening, in order, once', async () => {
    const dir = path.join(root, 'restart');
    const before = openOutbox({ dir });
    const sink = recorder();
    const detach = before.attach(sink.send);
    await Promise.all([1, 2, 3, 4, 5].map((i) => before.push(event(i))));
    await until('confirmation of 1-5', () => before.stats.confirmedSeq === 5);
    detach();
    await Promise.all([6, 7, 8, 9, 10].map((i) => before.push(event(i))));
    await before.close();

    const after = openOutbox({ dir });
    expect(after.stats).to.include({ queued: 5, confirmedSeq: 5, skippedOnOpen: 0 });
    const again = recorder();
    after.attach(again.send);
    await after.push(event(11));
    expect(again.ids).to.deep.equal(range(6, 11));
    await until('confirmation of 6-11', () => after.stats.confirmedSeq === 11);
    await after.close();
    // Segments wholly delivered are removed once the cursor covers them.
    const third = openOutbox({ dir });
    expect(third.stats).to.include({ queued: 0, confirmedSeq: 11 });
    await third.push(event(12));
    const segments = fs.readdirSync(dir).filter((f) => f.startsWith('outbox-'));
    expect(segments.length).to.be.at.most(2);
  });

  it('a process killed while appending loses no acknowledged message and repeats none', async () => {
    const dir = path.join(root, 'killed');
    const script = fileURLToPath(new URL('./outbox-writer.ts', import.meta.url));
    const child = spawn(process.execPath, ['--import', 'tsx', script, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
    let acked = 0;
    let buffered = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      buffered += chunk.toString('utf8');
      const lines = buffered.split('\n');
      buffered = lines.pop()!;
      for (const line of lines) acked = Math.max(acked, Number(line));
    });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    await until('300 acknowledged pushes', () => acked >= 300, 10_000);
    child.kill('SIGKILL');
    await exited;
    const { log, entries } = recordingLogger();
    const outbox = openOutbox({ dir, log, ratePerSec: 100_000, burst: 100_000 });
    const backlog = outbox.stats.queued;
    const sink = recorder();
    outbox.attach(sink.send);
    expect(sink.ids).to.have.length(backlog);
    // Every acknowledged message is there, in order, with none twice; a few more may have been written unacknowledged.
    expect(sink.ids.length).to.be.at.least(acked);
    expect(sink.ids).to.deep.equal(range(1, sink.ids.length));
    expect(outbox.stats.skippedOnOpen).to.equal(0);
    expect(entries.filter((e) => e.level === 'warn' && !/torn last line/.test(e.msg))).to.deep.equal([]);
  });

  it('cuts off a torn last line left by a crash mid-write, and appends after it', async () => {
    const dir = path.join(root, 'torn');
    const first = openOutbox({ dir });
    await Promise.all([1, 2, 3].map((i) => first.push(event(i))));
    await first.close();
    const segment = path.join(dir, fs.readdirSync(dir).find((f) => f.startsWith('outbox-'))!);
    fs.appendFileSync(segment, `4 ${JSON.stringify(event(4)).slice(0, 30)}`);
    const { log, entries } = recordingLogger();
    const second = openOutbox({ dir, log });
    expect(second.stats).to.include({ queued: 3, skippedOnOpen: 0 });
    expect(entries.filter((e) => e.level === 'warn').map((e) => e.msg)).to.deep.equal(['outbox: torn last line cut off']);
    await second.push(event(4));
    await second.close();
    const third = openOutbox({ dir });
    const sink = recorder();
    third.attach(sink.send);
    expect(sink.ids).to.deep.equal(range(1, 4));
    expect(third.stats.skippedOnOpen).to.equal(0);
  });

  it('refuses messages beyond its size cap with BOLT_ERR_WIRE_OUTBOX_FULL, logs it once, and takes them again once drained', async () => {
    const { log, entries } = recordingLogger();
    const lineBytes = Buffer.byteLength(`1 ${JSON.stringify(event(1))}\n`);
    const outbox = openOutbox({ maxBytes: lineBytes * 10 + 5, log });
    for (let i = 1; i <= 10; i++) await outbox.push(event(i));
    const refused: unknown[] = [];
    for (let i = 11; i <= 13; i++) await outbox.push(event(i)).catch((err: unknown) => refused.push(err));
    expect(refused).to.have.length(3);
    expect(refused[0]).to.have.property('code', 'BOLT_ERR_WIRE_OUTBOX_FULL');
    expect(outbox.stats).to.include({ queued: 10, refusedFull: 3 });
    expect(entries.filter((e) => e.level === 'error' && /outbox full/.test(e.msg))).to.have.length(1);
    const sink = recorder();
    outbox.attach(sink.send);
    await until('the backlog to be confirmed', () => outbox.stats.queued === 0);
    expect(entries.some((e) => e.level === 'info' && /room again/.test(e.msg))).to.equal(true);
    await outbox.push(event(14));
    expect(sink.ids).to.deep.equal([...range(1, 10), event(14).id]);
  });

  it('a failed write rejects with BOLT_ERR_WIRE_OUTBOX_IO, keeps the message in memory, and later writes go on', async () => {
    const { log, entries } = recordingLogger();
    const outbox = openOutbox({ log });
    // A directory where the first segment file would go makes its open fail.
    const blocker = path.join(outbox.dir, `outbox-${'1'.padStart(16, '0')}.log`);
    fs.mkdirSync(blocker);
    const err = await outbox.push(event(1)).then(() => null, (e: unknown) => e);
    expect(err).to.have.property('code', 'BOLT_ERR_WIRE_OUTBOX_IO');
    expect(entries.some((e) => e.level === 'error' && /outbox write failed: 1 messages are held in memory only/.test(e.msg))).to.equal(true);
    fs.rmdirSync(blocker);
    await outbox.push(event(2));
    const sink = recorder();
    outbox.attach(sink.send);
    expect(sink.ids).to.deep.equal(range(1, 2));
  });

  it('a sender that cannot take a message now is retried, in order', async () => {
    const outbox = openOutbox();
    const ids: string[] = [];
    let refusals = 3;
    outbox.attach((m) => {
      if (m.id === event(2).id && refusals > 0) return (refusals--, false);
      ids.push(m.id);
      return true;
    });
    await Promise.all([1, 2, 3, 4].map((i) => outbox.push(event(i))));
    await until('all four', () => ids.length === 4);
    expect(ids).to.deep.equal(range(1, 4));
    expect(refusals).to.equal(0);
  });

  it('paces a backlog to its rate', async () => {
    const outbox = openOutbox({ ratePerSec: 200, burst: 10 });
    await Promise.all(Array.from({ length: 50 }, (_, i) => outbox.push(event(i + 1))));
    const times: number[] = [];
    const start = performance.now();
    outbox.attach(() => (times.push(performance.now() - start), true));
    await until('all 50', () => times.length === 50);
    // 10 at once, then 40 more at 200 per second: about 200 ms.
    expect(times[9]).to.be.below(50);
    expect(times[49]).to.be.at.least(180).and.below(1500);
  });
});
