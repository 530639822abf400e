import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { REPLAY_GUARD_FILE, ReplayGuard } from '../../protocol/replay-guard.ts';
import { expectBoltError, tempDir } from './helpers.ts';

describe('transport-ws protocol: replay guard', () => {
  let clock = 1_000_000;
  const now = () => clock;
  const open = (dir: string, opts: Parameters<typeof ReplayGuard.open>[1] = {}) => ReplayGuard.open(dir, { now, retainAfterExpiryMs: 0, ...opts });
  const lines = (dir: string) => fs.readFileSync(path.join(dir, REPLAY_GUARD_FILE), 'utf8').split('\n').filter(Boolean);

  it('remembers ids across a restart, in a private file', () => {
    const dir = tempDir();
    const g = open(dir);
    g.remember('a', clock + 1000);
    g.remember('b', clock + 2000);
    g.close();
    expect(fs.statSync(path.join(dir, REPLAY_GUARD_FILE)).mode & 0o777).to.equal(0o600);
    const reloaded = open(dir);
    expect([reloaded.has('a'), reloaded.has('b'), reloaded.has('c')]).to.deep.equal([true, true, false]);
    expectBoltError(() => reloaded.remember('a', clock + 5000), 'BOLT_ERR_WIRE_REPLAYED');
    reloaded.close();
  });

  it('drops expired ids and torn lines when it loads, and rewrites the file without them', () => {
    const dir = tempDir();
    fs.writeFileSync(path.join(dir, REPLAY_GUARD_FILE), `${clock - 1} old\n${clock + 500} live\nnot a line\n${clock + 9}`);
    const g = open(dir);
    expect([g.has('old'), g.has('live'), g.size]).to.deep.equal([false, true, 1]);
    expect(lines(dir)).to.deep.equal([`${clock + 500} live`]);
    g.close();
  });

  it('forgets ids once they expire, and keeps them for the retention margin past expiry', () => {
    const dir = tempDir();
    const g = open(dir, { retainAfterExpiryMs: 1000 });
    g.remember('x', clock + 100);
    clock += 1050;
    expect(g.has('x')).to.equal(true);
    clock += 100;
    expect(g.has('x')).to.equal(false);
    g.remember('x', clock + 100);
    g.close();
  });

  it('keeps memory and file bounded: refuses when full, prunes and compacts as ids expire', () => {
    const dir = tempDir();
    const g = open(dir, { maxEntries: 50 });
    for (let i = 0; i < 50; i++) g.remember(`id-${i}`, clock + 10);
    expectBoltError(() => g.remember('one-more', clock + 10), 'BOLT_ERR_WIRE_REPLAY_GUARD_FULL');
    // Ids expire and are replaced for many rounds; live ids and file lines stay bounded.
    for (let round = 0; round < 40; round++) {
      clock += 11;
      for (let i = 0; i < 50; i++) g.remember(`r${round}-${i}`, clock + 10);
      expect(g.size).to.be.at.most(50);
    }
    expect(lines(dir).length).to.be.at.most(1024 + 50);
    g.close();
    const reloaded = open(dir, { maxEntries: 50 });
    expect(reloaded.size).to.equal(50);
    expect(reloaded.has('r39-0')).to.equal(true);
    reloaded.close();
  });

  it('refuses ids that would corrupt its file format', () => {
    const g = open(tempDir());
    for (const id of ['', 'a b', 'a\nb', 'x'.repeat(65)]) expectBoltError(() => g.remember(id, clock + 10), 'BOLT_ERR_WIRE_MALFORMED');
    g.close();
  });

  it('reports an unreadable data directory with BOLT_ERR_WIRE_REPLAY_GUARD_IO', () => {
    const dir = tempDir();
    const notADir = path.join(dir, 'file');
    fs.writeFileSync(notADir, '');
    expectBoltError(() => open(notADir), 'BOLT_ERR_WIRE_REPLAY_GUARD_IO');
  });
});
