import { expect } from 'chai';
import { MESSAGE_TYPES, type MessageType, type WireMessage } from '../../../../plugin-sdk/src/schemas/wire.ts';
import { createDecoder, DIRECTION_TYPES, GarbageMeter, type DecodeResult, type Direction, type Handler } from '../../protocol/codec.ts';
import { sampleMessages } from './helpers.ts';

/** A decoder that accepts every type its direction carries, recording what reached a handler. */
function decoderFor(direction: Direction, options: Parameters<typeof createDecoder>[2] = {}) {
  const handled: WireMessage[] = [];
  const handler: Handler = (m) => (handled.push(m), `handled ${m.type}`);
  const decoder = createDecoder(direction, new Map([...DIRECTION_TYPES.get(direction)!].map((t) => [t, handler])), options);
  return { decoder, handled };
}

function expectRefused(result: DecodeResult, code: string): void {
  expect(result.ok, JSON.stringify(result)).to.equal(false);
  if (!result.ok) expect(result.code, result.message).to.equal(code);
}

describe('transport-ws protocol: decoder', () => {
  const samples = sampleMessages();

  it('accepts a valid message of every type on each direction that carries it, and calls its handler', () => {
    const reached = new Set<MessageType>();
    for (const [direction, types] of DIRECTION_TYPES) {
      const { decoder, handled } = decoderFor(direction);
      for (const type of types) {
        const result = decoder.decode(JSON.stringify(samples[type]));
        expect(result, `${type} on ${direction}`).to.deep.include({ ok: true, result: `handled ${type}` });
        reached.add(type);
      }
      expect(handled.map((m) => m.type)).to.deep.equal([...types]);
      expect(decoder.stats).to.deep.equal({ accepted: types.size, tooLarge: 0, malformed: 0, unknownType: 0 });
    }
    expect([...reached].sort()).to.deep.equal([...MESSAGE_TYPES].sort());
  });

  it('treats inherited member names as unknown types, never as handlers', () => {
    const { decoder, handled } = decoderFor('client->server');
    for (const type of ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf', '__defineGetter__', 'prototype', 'HELLO', 'hello ', '']) {
      expectRefused(decoder.decode(JSON.stringify({ v: 1, type, id: 'x' })), 'BOLT_ERR_WIRE_UNKNOWN_TYPE');
    }
    expect(handled).to.deep.equal([]);
    expect(decoder.stats.unknownType).to.equal(10);
  });

  it('refuses types the peer role never sends on this direction, and types without a handler', () => {
    const { decoder } = decoderFor('client->server');
    // A client can not send commands, nor pose as a sink reporting task status.
    for (const type of ['task.dispatch', 'task.cancel', 'task.status', 'challenge', 'welcome'] as const) {
      expectRefused(decoder.decode(JSON.stringify(samples[type])), 'BOLT_ERR_WIRE_UNKNOWN_TYPE');
    }
    const onlyHello = createDecoder('client->server', new Map([['hello', (m: WireMessage) => m]]));
    expectRefused(onlyHello.decode(JSON.stringify(samples.heartbeat)), 'BOLT_ERR_WIRE_UNKNOWN_TYPE');
  });

  it('refuses at start-up a handler for a type the direction never carries', () => {
    expect(() => createDecoder('client->server', new Map([['task.dispatch', () => 1]]))).to.throw(TypeError, /never carries 'task.dispatch'/);
    expect(() => createDecoder('client->server', new Map([['__proto__', () => 1]]))).to.throw(TypeError);
  });

  it('refuses oversized input before parsing it, counting bytes rather than characters', () => {
    const { decoder } = decoderFor('client->sink', { maxBytes: 1000 });
    // Not JSON at all: only a size check that runs first can report TOO_LARGE.
    expectRefused(decoder.decode('{'.repeat(1001)), 'BOLT_ERR_WIRE_TOO_LARGE');
    expectRefused(decoder.decode(Buffer.alloc(1001, 0x7b)), 'BOLT_ERR_WIRE_TOO_LARGE');
    // 400 characters, 1200 bytes.
    expectRefused(decoder.decode(JSON.stringify({ ...samples['task.event'], stdoutTail: '€'.repeat(400) })), 'BOLT_ERR_WIRE_TOO_LARGE');
    expect(decoder.decode(JSON.stringify({ ...samples['task.event'], stdoutTail: '€'.repeat(100) })).ok).to.equal(true);
    expect(decoder.stats.tooLarge).to.equal(3);
  });

  it('refuses messages that violate their schema', () => {
    const { decoder, handled } = decoderFor('server->client');
    const d = samples['task.dispatch'];
    const bad: unknown[] = [
      { ...d, extra: 1 },
      { ...d, runId: undefined },
      { ...d, timeoutMs: -1 },
      { ...d, timeoutMs: 1.5 },
      { ...d, startAt: 'now' },
      { ...d, with: [] },
      { ...d, with: null },
      { ...d, action: 'a'.repeat(129) },
      { ...d, id: 'has space' },
      { ...d, sig: 'A'.repeat(88) },
      { ...d, v: '1' },
      { ...d, id: 7 },
    ];
    for (const message of bad) expectRefused(decoder.decode(JSON.stringify(message)), 'BOLT_ERR_WIRE_MALFORMED');
    // JSON's 1e400 parses to Infinity; every number has a range.
    expectRefused(decoder.decode(JSON.stringify(d).replace('"expiresAt":1700000010000', '"expiresAt":1e400')), 'BOLT_ERR_WIRE_MALFORMED');
    expect(handled).to.deep.equal([]);

    const sink = decoderFor('client->sink').decoder;
    const batch = samples['metrics.batch'];
    const sample = batch.samples[0]!;
    for (const message of [
      { ...batch, samples: Array.from({ length: 5001 }, () => sample) },
      { ...batch, samples: [{ ...sample, value: 'high' }] },
      { ...batch, samples: [{ ...sample, tags: { core: 0 } }] },
      { ...batch, samples: [{ ...sample, tags: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v'])) }] },
    ]) {
      expectRefused(sink.decode(JSON.stringify(message)), 'BOLT_ERR_WIRE_MALFORMED');
    }
    expect(sink.decode(JSON.stringify({ ...batch, samples: Array.from({ length: 5000 }, () => sample) })).ok).to.equal(true);

    const server = decoderFor('client->server').decoder;
    const plugin = { name: 'collector-system', version: '1.0.0', state: 'failed', restarts: 5, error: { code: 'BOLT_ERR_PLUGIN_CRASHED', message: 'boom' } };
    expect(server.decode(JSON.stringify({ ...samples.heartbeat, plugins: [plugin, { name: 'transport-ws', state: 'running', restarts: 0 }] })).ok).to.equal(true);
    for (const plugins of [
      Array.from({ length: 65 }, (_, i) => ({ ...plugin, name: `p${i}` })),
      [{ ...plugin, state: 'Running!' }],
      [{ ...plugin, name: '../x' }],
      [{ ...plugin, restarts: -1 }],
      [{ ...plugin, error: { code: 'x y', message: '' } }],
      [{ ...plugin, error: { ...plugin.error, message: 'm'.repeat(513) } }],
      [{ ...plugin, extra: true }],
    ]) {
      expectRefused(server.decode(JSON.stringify({ ...samples.heartbeat, plugins })), 'BOLT_ERR_WIRE_MALFORMED');
    }
  });

  it('names the offending field without echoing large input', () => {
    const { decoder } = decoderFor('server->client');
    const result = decoder.decode(JSON.stringify({ ...samples['task.dispatch'], ['x'.repeat(5000)]: 1 }));
    expectRefused(result, 'BOLT_ERR_WIRE_MALFORMED');
    if (!result.ok) expect(result.message.length).to.be.below(300);
    const missing = decoder.decode(JSON.stringify({ ...samples['task.dispatch'], timeoutMs: undefined }));
    if (!missing.ok) expect(missing.message).to.include('timeoutMs');
  });

  it('refuses "__proto__" keys and deep nesting anywhere, also inside free-form `with`', () => {
    const { decoder } = decoderFor('server->client');
    const text = JSON.stringify(samples['task.dispatch']).replace('"with":{', '"with":{"__proto__":{"polluted":true},');
    expectRefused(decoder.decode(text), 'BOLT_ERR_WIRE_MALFORMED');
    expect(({} as Record<string, unknown>).polluted).to.equal(undefined);
    let deep: unknown = 1;
    for (let i = 0; i < 20; i++) deep = { a: deep };
    expectRefused(decoder.decode(JSON.stringify({ ...samples['task.dispatch'], with: deep })), 'BOLT_ERR_WIRE_MALFORMED');
    expectRefused(decoder.decode(`${'['.repeat(100_000)}${']'.repeat(100_000)}`), 'BOLT_ERR_WIRE_MALFORMED');
  });

  it('refuses what is not an envelope, and reports another protocol version as such', () => {
    const { decoder } = decoderFor('client->server');
    for (const text of ['', 'null', '[]', '"hello"', '42', '{"type":"hello"}', '{"v":1,"id":"x"}', '{"v":1,"type":"heartbeat"}', '{"v":1,"type":7,"id":"x"}', '{bad json']) {
      expectRefused(decoder.decode(text), 'BOLT_ERR_WIRE_MALFORMED');
    }
    expectRefused(decoder.decode(JSON.stringify({ ...samples.hello, v: 2 })), 'BOLT_ERR_WIRE_VERSION');
  });

  it('a GarbageMeter trips when a peer sends more than N bad messages within T', () => {
    let now = 0;
    const garbage = new GarbageMeter({ maxBad: 3, windowMs: 1000, now: () => now });
    const { decoder } = decoderFor('client->server', { garbage });
    const verdicts: boolean[] = [];
    for (let i = 0; i < 4; i++) {
      const r = decoder.decode('nope');
      verdicts.push(!r.ok && r.tooMuchGarbage);
    }
    expect(verdicts).to.deep.equal([false, false, false, true]);
    // Spread out over time, the same number of bad messages is tolerated.
    const slow = new GarbageMeter({ maxBad: 3, windowMs: 1000, now: () => now });
    const spread: boolean[] = [];
    for (let i = 0; i < 20; i++) {
      now += 400;
      spread.push(slow.record());
    }
    expect(spread.every((v) => v === false)).to.equal(true);
    // Good messages do not count.
    expect(decoder.decode(JSON.stringify(samples.heartbeat)).ok).to.equal(true);
  });
});
