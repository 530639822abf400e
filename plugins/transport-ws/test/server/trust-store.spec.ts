import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { BoltError, type ErrorCode } from '../../../../plugin-sdk/src/errors.ts';
import type { HelloMessage } from '../../../../plugin-sdk/src/schemas/wire.ts';
import { generateIdentity, type Identity } from '../../protocol/identity.ts';
import type { PeerIdentity } from '../../protocol/session.ts';
import { TRUST_FILE, TrustStore, type TrustEntry } from '../../server/trust-store.ts';
import { cleanUp, tempDir, waitFor } from './harness.ts';

function peerOf(identity: Identity, role: 'client' | 'sink' = 'client', hello: Partial<HelloMessage> = {}): PeerIdentity {
  return {
    role,
    publicKey: identity.publicKeyBase64,
    fingerprint: identity.fingerprint,
    hello: { v: 1, type: 'hello', id: 'h', role, publicKey: identity.publicKeyBase64, nonce: identity.publicKeyBase64, ephemeralKey: identity.publicKeyBase64, host: 'web-01', ...hello },
  };
}

function expectCode(fn: () => unknown, code: ErrorCode): BoltError {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(BoltError);
    expect((err as BoltError).code, (err as Error).message).to.equal(code);
    return err as BoltError;
  }
  throw new Error(`expected ${code}`);
}

function onDisk(dir: string): TrustEntry[] {
  return JSON.parse(fs.readFileSync(path.join(dir, TRUST_FILE), 'utf8')) as TrustEntry[];
}

const SAMPLE = generateIdentity();

function sampleEntry(): TrustEntry {
  return {
    fingerprint: SAMPLE.fingerprint,
    publicKey: SAMPLE.publicKeyBase64,
    role: 'client',
    state: 'accepted',
    host: 'web-01',
    labels: {},
    facts: {},
    address: '10.0.0.1',
    firstSeen: '2030-01-01T00:00:00.000Z',
    lastSeen: '2030-01-01T00:00:00.000Z',
  };
}

describe('transport-ws server: TrustStore', () => {
  afterEach(cleanUp);

  it('records an unknown key as pending with what its hello said, and refuses it', () => {
    const dir = tempDir();
    const store = TrustStore.open(dir);
    const id = generateIdentity();
    expect(store.authorize(peerOf(id, 'client', { host: 'db-01', labels: { zone: 'b' }, facts: { cpus: 4 } }), '10.0.0.7')).to.equal(false);
    const [entry] = store.list();
    expect(entry).to.include({ fingerprint: id.fingerprint, publicKey: id.publicKeyBase64, role: 'client', state: 'pending', host: 'db-01', address: '10.0.0.7' });
    expect(entry?.labels).to.deep.equal({ zone: 'b' });
    expect(entry?.facts).to.deep.equal({ cpus: 4 });
    expect(entry?.firstSeen).to.equal(entry?.lastSeen);
    expect(entry?.decidedAt).to.equal(undefined);
    store.close();
  });

  it('writes decisions before returning, coalesces handshake updates, and keeps the file 0600', async () => {
    const dir = tempDir();
    let now = Date.parse('2030-01-01T00:00:00Z');
    const store = TrustStore.open(dir, { now: () => now, flushDelayMs: 50 });
    const id = generateIdentity();
    store.authorize(peerOf(id), '10.0.0.1');
    expect(fs.existsSync(path.join(dir, TRUST_FILE)), 'not written synchronously').to.equal(false);
    await waitFor(() => fs.existsSync(path.join(dir, TRUST_FILE)), 'the coalesced write');
    expect(onDisk(dir)[0]?.state).to.equal('pending');
    expect(fs.statSync(path.join(dir, TRUST_FILE)).mode & 0o777).to.equal(0o600);

    now += 60_000;
    const accepted = store.accept(id.fingerprint.slice(0, 8));
    expect(accepted).to.include({ state: 'accepted', decidedAt: '2030-01-01T00:01:00.000Z' });
    expect(onDisk(dir)[0]).to.include({ state: 'accepted', decidedAt: '2030-01-01T00:01:00.000Z' });

    now += 60_000;
    expect(store.authorize(peerOf(id, 'client', { host: 'renamed' }), '10.0.0.2')).to.equal(true);
    await waitFor(() => onDisk(dir)[0]?.host === 'renamed', 'lastSeen and host on disk');
    expect(onDisk(dir)[0]).to.include({ lastSeen: '2030-01-01T00:02:00.000Z', address: '10.0.0.2', firstSeen: '2030-01-01T00:00:00.000Z' });
    expect(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'))).to.deep.equal([]);
    store.close();
  });

  it('keeps its entries across a reopen', () => {
    const dir = tempDir();
    const a = generateIdentity();
    const b = generateIdentity();
    const store = TrustStore.open(dir);
    store.authorize(peerOf(a), '10.0.0.1');
    store.authorize(peerOf(b, 'sink'), '10.0.0.2');
    store.accept(a.fingerprint);
    store.reject(b.fingerprint);
    store.close();
    const reopened = TrustStore.open(dir);
    expect(reopened.list().map((e) => `${e.role} ${e.state}`)).to.deep.equal(['client accepted', 'sink rejected']);
    expect(reopened.authorize(peerOf(a), '10.0.0.1')).to.equal(true);
    reopened.close();
  });

  it('autoAccept accepts new keys, but not rejected ones and not a known key in another role', () => {
    const store = TrustStore.open(tempDir(), { autoAccept: true });
    const client = generateIdentity();
    expect(store.authorize(peerOf(client), 'a')).to.equal(true);
    expect(store.get(client.fingerprint, 'client')?.decidedAt).to.be.a('string');
    expect(store.authorize(peerOf(client, 'sink'), 'a'), 'a client key claiming sink').to.equal(false);
    expect(store.get(client.fingerprint, 'sink')?.state).to.equal('pending');
    store.reject(client.fingerprint, 'client');
    expect(store.authorize(peerOf(client), 'a')).to.equal(false);
    store.close();
  });

  it('names unknown, too short and ambiguous fingerprints with their codes', () => {
    const store = TrustStore.open(tempDir());
    const id = generateIdentity();
    store.authorize(peerOf(id), 'a');
    store.authorize(peerOf(id, 'sink'), 'a');
    expectCode(() => store.accept('AAAAAAAAAAAA'), 'BOLT_ERR_WIRE_KEY_UNKNOWN');
    expectCode(() => store.accept(id.fingerprint.slice(0, 7)), 'BOLT_ERR_WIRE_KEY_AMBIGUOUS');
    const both = expectCode(() => store.accept(id.fingerprint.slice(0, 12)), 'BOLT_ERR_WIRE_KEY_AMBIGUOUS');
    expect(both.message).to.include('(client)').and.include('(sink)');
    expect(store.accept(id.fingerprint.slice(0, 12), 'sink')).to.include({ role: 'sink', state: 'accepted' });
    expect(store.get(id.fingerprint, 'client')?.state).to.equal('pending');
    expectCode(() => store.reject(generateIdentity().fingerprint, 'client'), 'BOLT_ERR_WIRE_KEY_UNKNOWN');
    store.close();
  });

  it('bounds pending entries and stored facts against a flood of new keys', () => {
    let now = 0;
    const store = TrustStore.open(tempDir(), { maxPending: 3, maxFactsBytes: 100, now: () => (now += 1000) });
    const ids = Array.from({ length: 5 }, () => generateIdentity());
    for (const id of ids) store.authorize(peerOf(id, 'client', { facts: { blob: 'x'.repeat(200) } }), 'a');
    expect(store.list().map((e) => e.fingerprint)).to.deep.equal(ids.slice(2).map((id) => id.fingerprint));
    expect(store.list()[0]?.facts).to.have.property('omitted').that.is.above(200);
    store.close();
  });

  for (const [what, content] of [
    ['not JSON', '{"fingerprint": '],
    ['not a list', '{}'],
    ['an entry with an unknown state', JSON.stringify([{ ...sampleEntry(), state: 'maybe' }])],
    ['a fingerprint that does not belong to its key', JSON.stringify([{ ...sampleEntry(), fingerprint: generateIdentity().fingerprint }])],
    ['the same key twice in one role', JSON.stringify([sampleEntry(), sampleEntry()])],
  ] as const) {
    it(`refuses a trust.json that is ${what}, and leaves it untouched`, () => {
      const dir = tempDir();
      fs.writeFileSync(path.join(dir, TRUST_FILE), content, { mode: 0o600 });
      expectCode(() => TrustStore.open(dir), 'BOLT_ERR_WIRE_TRUST_CORRUPT');
      expect(fs.readFileSync(path.join(dir, TRUST_FILE), 'utf8')).to.equal(content);
    });
  }
});
