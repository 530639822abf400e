import { expect } from 'chai';
import fc from 'fast-check';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { runShell, TailBuffer } from '../run.ts';
import { processesWith } from './fake-client.ts';

/** A unique sleep length ("30.<random digits>") that marks the processes of one test in /proc. */
function uniqueSleep(): string {
  return `30.${randomBytes(4).readUInt32BE(0)}`;
}

async function pollUntil(what: string, check: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * A tree whose leader waits on: a plain `sleep` in the background, a shell that ignores SIGTERM
 * (its sleep inherits the ignored signal), and a double-forked sleep whose parent exits at once so
 * it is re-parented to init while staying in the group. Each sleep carries the marker.
 */
function treeScript(marker: string, readyFile: string): string {
  return [
    `sleep ${marker} &`,
    `sh -c "trap '' TERM; sleep ${marker}" &`,
    `(sleep ${marker} &)`,
    `touch ${readyFile}`,
    'wait',
  ].join('\n');
}

describe('action-shell runShell', function () {
  this.timeout(15_000);
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'bolt-shell-'));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  describe('exit status', () => {
    it('exit code 0 is finished, with stdout and stderr', async () => {
      const r = await runShell({ run: 'echo out; echo err >&2' });
      expect(r).to.include({ outcome: 'finished', exitCode: 0, signal: null, stdoutTail: 'out\n', stderrTail: 'err\n' });
      expect(r.stdoutTruncated).to.equal(false);
      expect(r.error).to.equal(undefined);
      expect(r.durationMs).to.be.greaterThan(0);
    });

    it('a non-zero exit code is failed, with BOLT_ERR_ACTION_FAILED', async () => {
      const r = await runShell({ run: 'exit 3' });
      expect(r).to.include({ outcome: 'failed', exitCode: 3, signal: null });
      expect(r.error?.code).to.equal('BOLT_ERR_ACTION_FAILED');
      expect(r.error?.message).to.contain('code 3');
    });

    it('a command killed by a signal it got elsewhere is failed, with the signal', async () => {
      const r = await runShell({ run: 'kill -KILL $$' });
      expect(r).to.include({ outcome: 'failed', exitCode: null, signal: 'SIGKILL' });
      expect(r.error?.message).to.contain('SIGKILL');
    });

    it('the duration is measured from spawn to exit', async () => {
      const r = await runShell({ argv: ['sleep', '0.2'] });
      expect(r.outcome).to.equal('finished');
      expect(r.durationMs).to.be.at.least(195).and.below(5000);
    });

    it('a missing command inside run is the shell\'s exit code 127, explained', async () => {
      const r = await runShell({ run: 'bolt-no-such-command-xyz' });
      expect(r).to.include({ outcome: 'failed', exitCode: 127 });
      expect(r.stderrTail).to.contain('bolt-no-such-command-xyz');
      expect(r.error?.message).to.contain('not found');
    });
  });

  describe('env, cwd, argv, stdin', () => {
    it('merges env over the agent\'s environment', async () => {
      const r = await runShell({ run: 'printf "%s|%s" "$BOLT_TEST_VAR" "$PATH"', env: { BOLT_TEST_VAR: 'x y' } });
      expect(r.stdoutTail).to.equal(`x y|${process.env.PATH}`);
    });

    it('runs in cwd', async () => {
      const r = await runShell({ argv: ['pwd'], cwd: dir });
      expect(r.stdoutTail.trim()).to.equal(realpathSync(dir));
    });

    it('passes argv without a shell: spaces, quotes, $ and globs reach the program as written', async () => {
      const args = ['a b', '"q"', "it's", '$HOME', '*', '; echo no', '`id`'];
      const r = await runShell({ argv: ['printf', '%s|', ...args], cwd: dir });
      expect(r.outcome).to.equal('finished');
      expect(r.stdoutTail).to.equal(args.map((a) => `${a}|`).join(''));
    });

    it('writes stdin and closes it', async () => {
      const r = await runShell({ argv: ['cat'], stdin: 'hello\nwörld\n' });
      expect(r).to.include({ outcome: 'finished', stdoutTail: 'hello\nwörld\n' });
    });

    it('gives /dev/null as stdin when none is set (a reader does not hang)', async () => {
      const r = await runShell({ argv: ['cat'] }, { timeoutMs: 5000 });
      expect(r).to.include({ outcome: 'finished', stdoutTail: '' });
    });

    it('a command that does not read a large stdin still finishes normally', async () => {
      const r = await runShell({ run: 'exit 0', stdin: 'x'.repeat(4 * 1024 * 1024) });
      expect(r.outcome).to.equal('finished');
    });
  });

  describe('output tail', () => {
    it('keeps the last outputLimitBytes of stdout and stderr separately, and flags truncation', async () => {
      const r = await runShell(
        { run: 'i=0; while [ $i -lt 100 ]; do printf "%04d\\n" $i; i=$((i+1)); done; echo small >&2' },
        { outputLimitBytes: 12 },
      );
      expect(r.stdoutTail).to.equal('7\n0098\n0099\n');
      expect(r.stdoutTruncated).to.equal(true);
      expect(r.stderrTail).to.equal('small\n');
      expect(r.stderrTruncated).to.equal(false);
    });

    it('output exactly at the limit is not truncated', async () => {
      const r = await runShell({ argv: ['printf', '0123456789'] }, { outputLimitBytes: 10 });
      expect(r).to.include({ stdoutTail: '0123456789', stdoutTruncated: false });
    });

    it('drops a UTF-8 character cut at the start of the tail instead of garbling it', async () => {
      const r = await runShell({ argv: ['printf', 'ééééé'] }, { outputLimitBytes: 5 });
      expect(r.stdoutTail).to.equal('éé');
      expect(r.stdoutTruncated).to.equal(true);
    });

    it('holds only the tail of 200 MB of output in memory', async () => {
      const before = process.memoryUsage().arrayBuffers;
      let peak = 0;
      const sampler = setInterval(() => {
        peak = Math.max(peak, process.memoryUsage().arrayBuffers - before);
      }, 2);
      const r = await runShell({ run: 'yes | head -c 200000000' }, { outputLimitBytes: 64 * 1024, timeoutMs: 10_000 });
      clearInterval(sampler);
      expect(r.outcome).to.equal('finished');
      expect(r.stdoutTruncated).to.equal(true);
      expect(r.stdoutTail).to.equal('y\n'.repeat(32 * 1024));
      // Keeping everything would take 200 MB; read chunks waiting for GC stay far below that.
      expect(peak, `peak ArrayBuffer growth ${(peak / 1e6).toFixed(1)} MB`).to.be.below(100e6);
    });

    it('TailBuffer keeps exactly the last capacity bytes for any chunking', () => {
      fc.assert(
        fc.property(fc.integer({ min: 0, max: 40 }), fc.array(fc.uint8Array({ maxLength: 60 }), { maxLength: 20 }), (cap, chunks) => {
          const tail = new TailBuffer(cap);
          for (const c of chunks) tail.push(Buffer.from(c));
          const all = Buffer.concat(chunks.map((c) => Buffer.from(c)));
          expect(tail.bytes().equals(all.subarray(Math.max(0, all.length - cap)))).to.equal(true);
          expect(tail.truncated).to.equal(all.length > cap);
          expect(tail.totalBytes).to.equal(all.length);
        }),
      );
    });
  });

  describe('ending the process tree', () => {
    it('a timeout ends the whole group, including a child ignoring SIGTERM and a daemonized grandchild', async () => {
      const marker = uniqueSleep();
      const ready = join(dir, 'ready');
      const started = performance.now();
      const r = await runShell({ run: treeScript(marker, ready) }, { timeoutMs: 1000, killGraceMs: 300 });
      const elapsed = performance.now() - started;
      expect(existsSync(ready), 'the tree was up before the timeout').to.equal(true);
      expect(r.outcome).to.equal('timedout');
      expect(r.error?.code).to.equal('BOLT_ERR_ACTION_TIMEOUT');
      expect(r.signal).to.equal('SIGTERM');
      expect(r.durationMs).to.be.at.least(995);
      // The TERM-ignoring sleep survives until SIGKILL, after the grace period.
      expect(elapsed).to.be.at.least(1000 + 300);
      expect(processesWith(marker)).to.deep.equal([]);
    });

    it('cancelling through the AbortSignal ends the whole group the same way', async () => {
      const marker = uniqueSleep();
      const ready = join(dir, 'ready');
      const ac = new AbortController();
      const running = runShell({ run: treeScript(marker, ready) }, { signal: ac.signal, killGraceMs: 300 });
      await pollUntil('the tree to start', () => existsSync(ready) && processesWith(marker).filter((p) => p.args.startsWith('sleep ')).length === 3, 5000);
      ac.abort();
      const r = await running;
      expect(r.outcome).to.equal('cancelled');
      expect(r.error?.code).to.equal('BOLT_ERR_ACTION_CANCELLED');
      expect(processesWith(marker)).to.deep.equal([]);
    });

    it('processes a command started and left running survive it; their open stdout delays the result by at most 1 s', async () => {
      const marker = uniqueSleep();
      const started = performance.now();
      const r = await runShell({ run: `sleep ${marker} & echo started` }, { killGraceMs: 300 });
      const elapsed = performance.now() - started;
      const left = processesWith(marker);
      for (const p of left) process.kill(p.pid, 'SIGKILL');
      expect(r).to.include({ outcome: 'finished', exitCode: 0, stdoutTail: 'started\n' });
      expect(left).to.have.length(1);
      expect(elapsed).to.be.within(950, 3000);
    });

    it('startWhen: the shell is ready before the instant, runs the script only when released, with the same $0, stdin and group rules', async () => {
      const marker = uniqueSleep();
      let release!: () => void;
      const startWhen = new Promise<void>((resolve) => (release = resolve));
      const running = runShell({ run: `date +%s%N; echo "$0"; cat; echo ${marker} >/dev/null`, stdin: 'piped in\n' }, { startWhen, killGraceMs: 300 });
      await pollUntil('the gate shell to be ready', () => processesWith(marker).length === 1, 5000);
      await new Promise((r) => setTimeout(r, 100));
      const releasedAtNs = BigInt(Date.now()) * 1_000_000n;
      release();
      const r = await running;
      expect(r.outcome, JSON.stringify(r)).to.equal('finished');
      const [instant, zero, piped] = r.stdoutTail.trim().split('\n');
      const afterReleaseMs = Number(BigInt(instant!) - releasedAtNs) / 1e6;
      expect(afterReleaseMs, 'the script ran after the release, not when the shell was forked').to.be.within(-1, 250);
      expect(zero).to.equal('/bin/sh');
      expect(piped).to.equal('piped in');
      expect(r.durationMs, 'measured from the release').to.be.below(250);
    });

    it('startWhen rejecting (cancelled before the instant) ends the waiting shell and never runs the script', async () => {
      const marker = uniqueSleep();
      const flag = join(dir, 'ran-too-early');
      let cancel!: (err: Error) => void;
      const startWhen = new Promise<void>((_resolve, reject) => (cancel = reject));
      const running = runShell({ run: `touch ${flag}; sleep ${marker}` }, { startWhen, killGraceMs: 300 });
      await pollUntil('the gate shell to be ready', () => processesWith(marker).length === 1, 5000);
      cancel(new Error('cancelled'));
      const r = await running;
      expect(r.outcome).to.equal('cancelled');
      expect(r.error?.code).to.equal('BOLT_ERR_ACTION_CANCELLED');
      expect(existsSync(flag)).to.equal(false);
      expect(processesWith(marker)).to.deep.equal([]);
    });

    it('startWhen rejecting after runShell returned early (already cancelled) is handled, not an unhandled rejection', async () => {
      const unhandled: unknown[] = [];
      const onUnhandled = (reason: unknown): void => {
        unhandled.push(reason);
      };
      process.on('unhandledRejection', onUnhandled);
      try {
        const ac = new AbortController();
        ac.abort();
        let cancel!: (err: Error) => void;
        const startWhen = new Promise<void>((_resolve, reject) => (cancel = reject));
        const r = await runShell({ run: 'true' }, { signal: ac.signal, startWhen });
        expect(r.outcome).to.equal('cancelled');
        cancel(new Error('cancelled at the instant'));
        await new Promise((resolve) => setTimeout(resolve, 50));
        expect(unhandled).to.deep.equal([]);
      } finally {
        process.off('unhandledRejection', onUnhandled);
      }
    });

    it('an already aborted signal starts nothing', async () => {
      const ac = new AbortController();
      ac.abort();
      const flag = join(dir, 'ran');
      const r = await runShell({ run: `touch ${flag}` }, { signal: ac.signal });
      expect(r.outcome).to.equal('cancelled');
      expect(existsSync(flag)).to.equal(false);
    });
  });

  describe('spawn errors', () => {
    it('a program that does not exist', async () => {
      const r = await runShell({ argv: ['bolt-no-such-program-xyz', 'a'] });
      expect(r).to.include({ outcome: 'spawn-error', exitCode: null });
      expect(r.error?.code).to.equal('BOLT_ERR_ACTION_SPAWN');
      expect(r.error?.message).to.contain('command not found: bolt-no-such-program-xyz');
    });

    it('a program that is not executable', async () => {
      const file = join(dir, 'script.sh');
      writeFileSync(file, '#!/bin/sh\necho hi\n');
      chmodSync(file, 0o644);
      const r = await runShell({ argv: [file] });
      expect(r.outcome).to.equal('spawn-error');
      expect(r.error?.message).to.contain('not executable');
    });

    it('a cwd that does not exist, or is a file', async () => {
      const missing = await runShell({ run: 'true', cwd: join(dir, 'nope') });
      expect(missing.outcome).to.equal('spawn-error');
      expect(missing.error?.message).to.equal(`cwd does not exist: ${join(dir, 'nope')}`);
      const file = join(dir, 'f');
      writeFileSync(file, '');
      const notDir = await runShell({ run: 'true', cwd: file });
      expect(notDir.error?.message).to.equal(`cwd is not a directory: ${file}`);
    });

    it('a malformed spec', async () => {
      const both = await runShell({ run: 'true', argv: ['true'] });
      expect(both.outcome).to.equal('spawn-error');
      expect(both.error?.code).to.equal('BOLT_ERR_ACTION_SPEC');
      const badEnv = await runShell({ run: 'true', env: { N: 1 as unknown as string } });
      expect(badEnv.error?.message).to.equal('with.env.N must be a string');
      const emptyArgv = await runShell({ argv: [] });
      expect(emptyArgv.error?.message).to.contain('non-empty list');
    });
  });
});
