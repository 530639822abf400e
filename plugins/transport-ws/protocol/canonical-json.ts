/**
 * Canonical JSON: object keys sorted (by UTF-16 code units, as `Array.prototype.sort` does and as
 * RFC 8785 prescribes), no whitespace, strings and numbers exactly as `JSON.stringify` writes them.
 *
 * Why it exists: a signed command travels as an ordinary JSON object, so any hop (a relay, a
 * broker, a logger that re-encodes) may reorder its keys. Signer and verifier therefore sign and
 * check the canonical form of the parsed value, not the bytes that happened to be on the wire.
 * `JSON.parse(canonicalJson(x))` re-canonicalizes to the same string, which is what makes that work.
 */

import { BoltError } from '../../../plugin-sdk/src/errors.ts';

/** Deeper values are refused; wire messages are shallow, and this keeps recursion off the stack limit. */
export const CANONICAL_MAX_DEPTH = 32;

/**
 * Returns the canonical JSON text of `value`.
 *
 * Guarantees: the same JSON value always gives the same string, whatever its key order; object
 * properties whose value is undefined are left out (as JSON.stringify does); throws
 * BOLT_ERR_WIRE_MALFORMED for anything else that would not survive a JSON round trip unchanged
 * (undefined in an array or at the top, functions, symbols, bigint, NaN, ±Infinity, non-plain objects such as Date or Map,
 * sparse arrays) and for nesting deeper than CANONICAL_MAX_DEPTH, so a signer can never sign a
 * value the verifier would see differently.
 */
export function canonicalJson(value: unknown): string {
  return write(value, 0);
}

function write(value: unknown, depth: number): string {
  if (depth > CANONICAL_MAX_DEPTH) throw refuse(`nested deeper than ${CANONICAL_MAX_DEPTH} levels`);
  if (value === null) return 'null';
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value);
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(value)) throw refuse(`number ${value} has no JSON form`);
      return JSON.stringify(value);
    case 'object': {
      if (Array.isArray(value)) {
        const parts: string[] = [];
        for (let i = 0; i < value.length; i++) {
          if (!(i in value)) throw refuse('sparse array');
          parts.push(write(value[i], depth + 1));
        }
        return `[${parts.join(',')}]`;
      }
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) throw refuse(`non-plain object (${proto?.constructor?.name ?? 'unknown'})`);
      const record = value as Record<string, unknown>;
      const parts: string[] = [];
      for (const key of Object.keys(record).sort()) {
        // Skipped like JSON.stringify skips it, so the signed form equals what is sent.
        if (record[key] === undefined) continue;
        parts.push(`${JSON.stringify(key)}:${write(record[key], depth + 1)}`);
      }
      return `{${parts.join(',')}}`;
    }
    default:
      throw refuse(`${typeof value} has no JSON form`);
  }
}

function refuse(why: string): BoltError {
  return new BoltError('BOLT_ERR_WIRE_MALFORMED', `Value cannot be written as canonical JSON: ${why}.`);
}
