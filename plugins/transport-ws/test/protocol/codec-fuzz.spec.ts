import { assert, expect } from 'chai';
import fc from 'fast-check';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { MESSAGE_TYPES, type MessageType, type WireMessage } from '../../../../plugin-sdk/src/schemas/wire.ts';
import { createDecoder, DIRECTION_TYPES, GarbageMeter, type Decoder, type Direction } from '../../protocol/codec.ts';
import { sampleMessages } from './helpers.ts';

const DECODE_CODES = new Set(['BOLT_ERR_WIRE_TOO_LARGE', 'BOLT_ERR_WIRE_MALFORMED', 'BOLT_ERR_WIRE_UNKNOWN_TYPE', 'BOLT_ERR_WIRE_VERSION']);
const RUNS_PER_SHAPE = 25_000;

/** Forces a full garbage collection, so heap figures compare live data only. */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

describe('transport-ws protocol: decoder under 100,000 random malformed messages', function () {
  this.timeout(60_000);

  const samples = sampleMessages();
  const directions = [...DIRECTION_TYPES.keys()];
  const handledCount = new Map<Direction, number>();
  const decoders = new Map<Direction, Decoder>(
    directions.map((direction) => {
      const handler = () => handledCount.set(direction, (handledCount.get(direction) ?? 0) + 1);
      const handlers = new Map([...DIRECTION_TYPES.get(direction)!].map((t) => [t, handler]));
      // A garbage meter that never trips, to show its memory stays fixed whatever comes in.
      return [direction, createDecoder(direction, handlers, { maxBytes: 64 * 1024, garbage: new GarbageMeter({ maxBad: 1e6, windowMs: 1 }) })];
    }),
  );

  /**
   * The invariant: decode never throws, and returns either a valid message (handled once) or a
   * typed error (handled never). Plain checks rather than chai: this runs 100,000 times.
   */
  function check(direction: Direction, input: string): void {
    const decoder = decoders.get(direction)!;
    const handledBefore = handledCount.get(direction) ?? 0;
    const result = decoder.decode(input);
    const handled = (handledCount.get(direction) ?? 0) - handledBefore;
    if (result.ok) {
      const message = result.message as WireMessage & Record<string, unknown>;
      assert(message.v === 1 && DIRECTION_TYPES.get(direction)!.has(message.type) && handled === 1, `accepted an invalid message on ${direction}: ${input}`);
    } else {
      assert(DECODE_CODES.has(result.code) && typeof result.message === 'string' && result.message.length < 400 && handled === 0, `bad error result ${JSON.stringify(result)}`);
    }
  }

  const direction = fc.constantFrom(...directions);
  const type = fc.oneof(fc.constantFrom<string>(...MESSAGE_TYPES, '__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf'), fc.string({ maxLength: 20 }));
  const anyKey = fc.oneof(fc.constantFrom('__proto__', 'constructor', 'v', 'type', 'id', 'with', 'samples', 'sig', 'hosts'), fc.string({ maxLength: 12 }));

  /** A valid sample message with one or more structural mutations. */
  const mutatedMessage = fc
    .tuple(
      fc.constantFrom<MessageType>(...MESSAGE_TYPES),
      fc.array(
        fc.oneof(
          fc.record({ op: fc.constant('set' as const), key: anyKey, value: fc.jsonValue({ maxDepth: 3 }) }),
          fc.record({ op: fc.constant('delete' as const), index: fc.nat() }),
          fc.record({ op: fc.constant('type' as const), value: type }),
        ),
        { minLength: 1, maxLength: 4 },
      ),
    )
    .map(([t, ops]) => {
      const message: Record<string, unknown> = structuredClone(samples[t]) as unknown as Record<string, unknown>;
      for (const op of ops) {
        if (op.op === 'set') Object.defineProperty(message, op.key, { value: op.value, enumerable: true, configurable: true, writable: true });
        else if (op.op === 'delete') delete message[Object.keys(message)[op.index % Object.keys(message).length]!];
        else message.type = op.value;
      }
      return JSON.stringify(message);
    });

  /** A valid sample message's text with bytes replaced, inserted or cut. */
  const mutatedText = fc
    .tuple(fc.constantFrom<MessageType>(...MESSAGE_TYPES), fc.array(fc.tuple(fc.nat(), fc.string({ minLength: 0, maxLength: 3, unit: 'binary' }), fc.nat({ max: 3 })), { minLength: 1, maxLength: 3 }))
    .map(([t, edits]) => {
      let text = JSON.stringify(samples[t]);
      for (const [at, insert, remove] of edits) {
        const i = at % (text.length + 1);
        text = text.slice(0, i) + insert + text.slice(i + remove);
      }
      return text;
    });

  let heapBefore = 0;
  let cpuBefore: NodeJS.CpuUsage;
  before(() => {
    collectGarbage();
    heapBefore = process.memoryUsage().heapUsed;
    cpuBefore = process.cpuUsage();
  });

  it('random JSON values', () => {
    fc.assert(fc.property(direction, fc.jsonValue({ maxDepth: 4 }), (d, value) => check(d, JSON.stringify(value) ?? 'null')), { numRuns: RUNS_PER_SHAPE });
  });

  it('random strings', () => {
    fc.assert(fc.property(direction, fc.string({ maxLength: 200, unit: 'binary' }), (d, text) => check(d, text)), { numRuns: RUNS_PER_SHAPE });
  });

  it('valid messages with fields set, deleted or retyped', () => {
    fc.assert(fc.property(direction, mutatedMessage, (d, text) => check(d, text)), { numRuns: RUNS_PER_SHAPE });
  });

  it('valid messages with bytes replaced, inserted or cut', () => {
    fc.assert(fc.property(direction, mutatedText, (d, text) => check(d, text)), { numRuns: RUNS_PER_SHAPE });
  });

  it('kept memory bounded and finished in time', () => {
    // CPU time, not wall time: the machine is shared, and wall time measures the neighbours.
    const cpu = process.cpuUsage(cpuBefore);
    const cpuMs = (cpu.user + cpu.system) / 1000;
    collectGarbage();
    const growth = process.memoryUsage().heapUsed - heapBefore;
    const total = [...decoders.values()].reduce((n, d) => n + d.stats.accepted + d.stats.malformed + d.stats.unknownType + d.stats.tooLarge, 0);
    expect(total).to.equal(4 * RUNS_PER_SHAPE);
    expect(growth, `heap grew by ${growth} bytes`).to.be.below(16 * 1024 * 1024);
    expect(cpuMs, `took ${Math.round(cpuMs)} ms of CPU`).to.be.below(20_000);
    // Some mutated messages stay valid; most must not.
    const accepted = [...decoders.values()].reduce((n, d) => n + d.stats.accepted, 0);
    expect(accepted).to.be.above(0).and.below(total / 4);
  });
});
