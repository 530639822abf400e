import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { BoltError } from '../../../../plugin-sdk/src/errors.ts';
import { parseExpectedKey, PINS_FILE, PinStore, pinOrigin } from '../../client/pins.ts';
import { generateIdentity } from '../../protocol/index.ts';
import { tempDir } from './helpers.ts';

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(BoltError);
    return (err as BoltError).code;
  }
  throw new Error('expected a BoltError');
}

describe('transport-ws client: pin store', () => {
  const server = generateIdentity();
  const sink = generateIdentity();
  const other = generateIdentity();
  const origin = pinOrigin('ws://10.0.0.1:7700/agent');

  it('keys pins by URL origin', () => {
    expect(origin).to.equal('ws://10.0.0.1:7700');
    expect(pinOrigin('wss://Bolt.Example:443/agent?x=1')).to.equal('wss://bolt.example');
  });

  it('pins on first use, durably, mode 0600, and a reopened store knows the pins', () => {
    const dir = tempDir();
    const pins = PinStore.open(dir);
    expect(pins.get(origin, 'server')).to.equal(undefined);
    expect(pins.pin(origin, 'server', server.publicKeyBase64)).to.equal(true);
    expect(pins.pin(origin, 'server', server.publicKeyBase64), 'the same key again writes nothing').to.equal(false);
    expect(pins.pin(origin, 'sink', sink.publicKeyBase64)).to.equal(true);
    const file = path.join(dir, PINS_FILE);
    expect(fs.statSync(file).mode & 0o777).to.equal(0o600);
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).to.deep.equal({ [origin]: { server: server.publicKeyBase64, sink: sink.publicKeyBase64 } });
    expect(fs.readdirSync(dir), 'no temp file left behind').to.deep.equal([PINS_FILE]);
    const reopened = PinStore.open(dir);
    expect(reopened.entries()).to.deep.equal({ [origin]: { server: server.publicKeyBase64, sink: sink.publicKeyBase64 } });
  });

  it('refuses a changed key and never replaces the pin', () => {
    const dir = tempDir();
    const pins = PinStore.open(dir);
    pins.pin(origin, 'server', server.publicKeyBase64);
    const before = fs.readFileSync(path.join(dir, PINS_FILE), 'utf8');
    expect(codeOf(() => pins.pin(origin, 'server', other.publicKeyBase64))).to.equal('BOLT_ERR_WIRE_SERVER_KEY_CHANGED');
    expect(codeOf(() => pins.check(origin, 'server', other.publicKeyBase64))).to.equal('BOLT_ERR_WIRE_SERVER_KEY_CHANGED');
    pins.check(origin, 'server', server.publicKeyBase64);
    expect(fs.readFileSync(path.join(dir, PINS_FILE), 'utf8')).to.equal(before);
    expect(PinStore.open(dir).get(origin, 'server')).to.equal(server.publicKeyBase64);
  });

  it('checks an up-front key given as base64 or as fingerprint, pinned or not', () => {
    const pins = PinStore.open(tempDir());
    for (const given of [server.publicKeyBase64, server.fingerprint]) {
      const expected = parseExpectedKey(given);
      expect(expected.fingerprint).to.equal(server.fingerprint);
      pins.check(origin, 'server', server.publicKeyBase64, expected);
      expect(codeOf(() => pins.check(origin, 'server', other.publicKeyBase64, expected))).to.equal('BOLT_ERR_WIRE_SERVER_KEY_CHANGED');
    }
    expect(codeOf(() => parseExpectedKey('not a key'))).to.equal('BOLT_ERR_WIRE_BAD_KEY');
  });

  it('refuses a corrupt pins.json and leaves it untouched', () => {
    for (const text of ['{', '[]', '{"ws://a:1": "key"}', '{"ws://a:1": {"server": "short"}}', '{"ws://a:1": {"relay": "x"}}']) {
      const dir = tempDir();
      fs.writeFileSync(path.join(dir, PINS_FILE), text);
      expect(codeOf(() => PinStore.open(dir)), text).to.equal('BOLT_ERR_WIRE_PINS_CORRUPT');
      expect(fs.readFileSync(path.join(dir, PINS_FILE), 'utf8')).to.equal(text);
    }
  });

  it('reports a pin it cannot write and does not trust the key', () => {
    const dir = tempDir();
    const pins = PinStore.open(path.join(dir, 'sub'));
    fs.writeFileSync(path.join(dir, 'sub'), 'a file where the directory should be');
    expect(codeOf(() => pins.pin(origin, 'server', server.publicKeyBase64))).to.equal('BOLT_ERR_WIRE_PINS_IO');
    expect(pins.get(origin, 'server')).to.equal(undefined);
  });
});
