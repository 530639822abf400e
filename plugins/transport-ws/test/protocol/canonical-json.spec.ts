import { expect } from 'chai';
import fc from 'fast-check';
import { CANONICAL_MAX_DEPTH, canonicalJson } from '../../protocol/canonical-json.ts';
import { expectBoltError } from './helpers.ts';

describe('transport-ws protocol: canonical JSON', () => {
  it('sorts keys at every level and writes no whitespace', () => {
    expect(canonicalJson({ b: 1, a: { d: [3, { z: true, y: null }], c: 'x y' } })).to.equal('{"a":{"c":"x y","d":[3,{"y":null,"z":true}]},"b":1}');
    expect(canonicalJson([])).to.equal('[]');
    expect(canonicalJson({})).to.equal('{}');
  });

  it('sorts by UTF-16 code units and escapes strings as JSON.stringify does', () => {
    expect(canonicalJson({ é: 1, z: 2, Z: 3, '\u{1F600}': 4, '': 5 })).to.equal('{"":5,"Z":3,"z":2,"é":1,"\u{1F600}":4}');
    expect(canonicalJson('line\nbreak "q" \u2028 \ud800')).to.equal(JSON.stringify('line\nbreak "q" \u2028 \ud800'));
  });

  it('writes numbers in their shortest round-trip form', () => {
    expect(canonicalJson([1.0, -0, 1e21, 0.1 + 0.2, 5e-324])).to.equal('[1,0,1e+21,0.30000000000000004,5e-324]');
  });

  it('treats a "__proto__" key parsed from JSON as a plain key', () => {
    expect(canonicalJson(JSON.parse('{"b":1,"__proto__":{"x":1}}'))).to.equal('{"__proto__":{"x":1},"b":1}');
  });

  it('leaves out undefined properties, like JSON.stringify', () => {
    expect(canonicalJson({ a: undefined, b: 1 })).to.equal('{"b":1}');
  });

  it('refuses values that do not survive a JSON round trip, and too deep nesting', () => {
    for (const bad of [NaN, Infinity, 1n, () => 1, Symbol('s'), new Date(0), new Map(), [undefined], [, 1], undefined]) {
      expectBoltError(() => canonicalJson(bad), 'BOLT_ERR_WIRE_MALFORMED');
    }
    let deep: unknown = 1;
    for (let i = 0; i <= CANONICAL_MAX_DEPTH; i++) deep = [deep];
    expectBoltError(() => canonicalJson(deep), 'BOLT_ERR_WIRE_MALFORMED');
    expect(canonicalJson((deep as unknown[])[0])).to.match(/^\[+1\]+$/);
  });

  it('is stable: parsing the canonical form and writing it again gives the same text, whatever the key order', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 6 }), (value) => {
        const text = canonicalJson(value);
        expect(canonicalJson(JSON.parse(text))).to.equal(text);
        expect(canonicalJson(reverseKeys(value))).to.equal(text);
        expect(JSON.parse(text)).to.deep.equal(JSON.parse(JSON.stringify(value)));
      }),
      { numRuns: 2000 },
    );
  });
});

/** The same JSON value with every object's keys inserted in reverse order. */
function reverseKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(reverseKeys);
  if (typeof value !== 'object' || value === null) return value;
  return Object.fromEntries(Object.entries(value).reverse().map(([k, v]) => [k, reverseKeys(v)]));
}
