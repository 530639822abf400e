import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { createHash, sign, verify } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  decodeKeyBytes,
  exportPublicKey,
  fingerprint,
  generateIdentity,
  IDENTITY_DIR,
  importPublicKey,
  loadOrCreateIdentity,
  PRIVATE_KEY_FILE,
} from '../../protocol/identity.ts';
import { expectBoltError, tempDir } from './helpers.ts';

const run = promisify(execFile);

describe('transport-ws protocol: host identity', () => {
  it('creates the key once, private to its owner, and loads the same key afterwards', () => {
    const data = tempDir();
    const first = loadOrCreateIdentity(data);
    const dir = path.join(data, IDENTITY_DIR);
    expect(fs.statSync(dir).mode & 0o777).to.equal(0o700);
    expect(fs.statSync(path.join(dir, PRIVATE_KEY_FILE)).mode & 0o777).to.equal(0o600);
    expect(fs.readdirSync(dir)).to.deep.equal([PRIVATE_KEY_FILE]);
    const again = loadOrCreateIdentity(data);
    expect(again.publicKeyBase64).to.equal(first.publicKeyBase64);
    const sig = sign(null, Buffer.from('x'), again.privateKey);
    expect(verify(null, Buffer.from('x'), first.publicKey, sig)).to.equal(true);
  });

  it('gives the public key as base64 of 32 raw bytes and a sha256 base64url fingerprint', () => {
    const id = generateIdentity();
    const raw = Buffer.from(id.publicKeyBase64, 'base64');
    expect(raw).to.have.length(32);
    expect(id.fingerprint).to.equal(createHash('sha256').update(raw).digest('base64url')).and.have.length(43);
    expect(id.shortFingerprint).to.equal(id.fingerprint.slice(0, 12));
    expect(fingerprint(id.publicKey)).to.equal(id.fingerprint);
    expect(exportPublicKey(importPublicKey(id.publicKeyBase64))).to.equal(id.publicKeyBase64);
  });

  it('decodes keys strictly: one string per key', () => {
    const key = generateIdentity().publicKeyBase64;
    // Same 32 bytes, other spellings that a lenient base64 decoder accepts.
    const lastChar = key[42]!;
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
    const sameBytes = key.slice(0, 42) + alphabet[alphabet.indexOf(lastChar) ^ 1] + '=';
    expect(Buffer.from(sameBytes, 'base64').equals(Buffer.from(key, 'base64'))).to.equal(true);
    for (const bad of [sameBytes, key.slice(0, 43), `${key.slice(0, 10)}#${key.slice(11)}`, key.replace('=', ''), `${key}=`, ' '.repeat(44), Buffer.alloc(31).toString('base64')]) {
      expectBoltError(() => decodeKeyBytes(bad), 'BOLT_ERR_WIRE_BAD_KEY');
    }
  });

  it('refuses a private key file that other users can read', () => {
    const data = tempDir();
    loadOrCreateIdentity(data);
    const file = path.join(data, IDENTITY_DIR, PRIVATE_KEY_FILE);
    fs.chmodSync(file, 0o644);
    const err = expectBoltError(() => loadOrCreateIdentity(data), 'BOLT_ERR_WIRE_IDENTITY_INSECURE');
    expect(err.message).to.include(`chmod 600 ${file}`);
  });

  it('refuses a key file that is not an Ed25519 private key, and leaves it alone', () => {
    const data = tempDir();
    const dir = path.join(data, IDENTITY_DIR);
    fs.mkdirSync(dir, { mode: 0o700 });
    fs.writeFileSync(path.join(dir, PRIVATE_KEY_FILE), 'garbage', { mode: 0o600 });
    expectBoltError(() => loadOrCreateIdentity(data), 'BOLT_ERR_WIRE_IDENTITY_UNREADABLE');
    expect(fs.readFileSync(path.join(dir, PRIVATE_KEY_FILE), 'utf8')).to.equal('garbage');
  });

  it('processes starting at the same time end up with one and the same key', async () => {
    const data = tempDir();
    const module = new URL('../../protocol/identity.ts', import.meta.url).href;
    const script = `import { loadOrCreateIdentity } from ${JSON.stringify(module)}; console.log(loadOrCreateIdentity(${JSON.stringify(data)}).fingerprint);`;
    const outputs = await Promise.all([1, 2, 3].map(() => run(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { timeout: 15_000 })));
    const prints = outputs.map((o) => o.stdout.trim());
    expect(new Set(prints).size).to.equal(1);
    expect(prints[0]).to.equal(loadOrCreateIdentity(data).fingerprint);
    expect(fs.readdirSync(path.join(data, IDENTITY_DIR))).to.deep.equal([PRIVATE_KEY_FILE]);
  });
});
