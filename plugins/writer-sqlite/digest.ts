/**
 * ValueDigest: the distribution of the values that fell into one aggregate bucket (one metric,
 * task and tag set, across hosts, over one time bucket). It is built up as samples arrive, merged
 * across flushes and restarts through its binary encoding, and answers count, sum, min, max, mean
 * and quantiles.
 *
 * Guarantees:
 * - count, sum, min and max are exact (sum and mean up to floating-point rounding).
 * - Quantiles use the nearest-rank definition: the value of rank ceil(q * count) (1-based) among
 *   the values in ascending order.
 * - Up to EXACT_LIMIT values the digest keeps every value, and quantiles are exact.
 * - Past that it switches to logarithmic bins (the DDSketch construction): a quantile is then
 *   within RELATIVE_ACCURACY (1%) of the exact nearest-rank value, relative to that value; values
 *   whose magnitude is below MIN_MAGNITUDE (1e-9) count as 0. The result is clamped to [min, max].
 * - Merging digests gives the same answer as adding all their values to one digest (the bins
 *   are fixed by RELATIVE_ACCURACY, not by the data), so the order of arrival does not matter.
 */

/** Values kept one by one before the digest switches to bins. */
export const EXACT_LIMIT = 256;
/** Largest relative error of a quantile once the digest uses bins. */
export const RELATIVE_ACCURACY = 0.01;
/** Values of smaller magnitude are counted as 0 by the binned form. */
export const MIN_MAGNITUDE = 1e-9;

const GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY);
const LOG_GAMMA = Math.log(GAMMA);
const FORMAT_EXACT = 1;
const FORMAT_BINNED = 2;
/** format u8, 3 bytes padding, count u32, sum f64, min f64, max f64. */
const HEADER_BYTES = 32;

/** Counts of consecutive bin indexes, stored densely from `offset`. */
class Bins {
  offset = 0;
  counts: number[] = [];

  add(index: number, n: number): void {
    if (this.counts.length === 0) {
      this.offset = index;
      this.counts.push(n);
      return;
    }
    if (index < this.offset) {
      const grow = this.offset - index;
      this.counts = new Array<number>(grow).fill(0).concat(this.counts);
      this.offset = index;
    } else {
      while (index >= this.offset + this.counts.length) this.counts.push(0);
    }
    this.counts[index - this.offset]! += n;
  }

  merge(other: Bins): void {
    for (let i = 0; i < other.counts.length; i++) {
      const n = other.counts[i]!;
      if (n > 0) this.add(other.offset + i, n);
    }
  }
}

/** The bin of a positive value: (GAMMA^(i-1), GAMMA^i]. */
function binOf(magnitude: number): number {
  return Math.ceil(Math.log(magnitude) / LOG_GAMMA);
}

/** The value that stands for bin i: within RELATIVE_ACCURACY of every value in it. */
function valueOfBin(index: number): number {
  return (2 * Math.pow(GAMMA, index)) / (GAMMA + 1);
}

export class ValueDigest {
  count = 0;
  sum = 0;
  min = Infinity;
  max = -Infinity;
  /** Every value while count <= EXACT_LIMIT; null once binned. */
  #values: number[] | null = [];
  #sorted = true;
  #positive = new Bins();
  #negative = new Bins();
  #zero = 0;

  /** True while every value is kept (quantiles exact). */
  get exact(): boolean {
    return this.#values !== null;
  }

  add(value: number): void {
    this.count++;
    this.sum += value;
    if (value < this.min) this.min = value;
    if (value > this.max) this.max = value;
    if (this.#values !== null) {
      if (this.#sorted && this.#values.length > 0 && value < this.#values[this.#values.length - 1]!) this.#sorted = false;
      this.#values.push(value);
      if (this.#values.length > EXACT_LIMIT) this.#toBins();
      return;
    }
    this.#bin(value, 1);
  }

  /** Adds every value of `other` (which is left unchanged). */
  merge(other: ValueDigest): void {
    if (other.count === 0) return;
    const values = other.#values;
    if (values !== null && this.#values !== null && this.#values.length + values.length <= EXACT_LIMIT) {
      for (const v of values) this.add(v);
      return;
    }
    this.count += other.count;
    this.sum += other.sum;
    if (other.min < this.min) this.min = other.min;
    if (other.max > this.max) this.max = other.max;
    if (this.#values !== null) this.#toBins();
    if (values !== null) {
      for (const v of values) this.#bin(v, 1);
    } else {
      this.#positive.merge(other.#positive);
      this.#negative.merge(other.#negative);
      this.#zero += other.#zero;
    }
  }

  get mean(): number {
    return this.count === 0 ? Number.NaN : this.sum / this.count;
  }

  /** The nearest-rank q-quantile (0 < q <= 1); NaN when empty. See the module comment for its error. */
  quantile(q: number): number {
    if (this.count === 0) return Number.NaN;
    const rank = Math.min(this.count, Math.max(1, Math.ceil(q * this.count)));
    if (this.#values !== null) {
      if (!this.#sorted) {
        this.#values.sort((a, b) => a - b);
        this.#sorted = true;
      }
      return this.#values[rank - 1]!;
    }
    if (rank === 1) return this.min;
    if (rank === this.count) return this.max;
    let seen = 0;
    const neg = this.#negative;
    for (let i = neg.counts.length - 1; i >= 0; i--) {
      seen += neg.counts[i]!;
      if (seen >= rank) return this.#clamp(-valueOfBin(neg.offset + i));
    }
    seen += this.#zero;
    if (seen >= rank) return this.#clamp(0);
    const pos = this.#positive;
    for (let i = 0; i < pos.counts.length; i++) {
      seen += pos.counts[i]!;
      if (seen >= rank) return this.#clamp(valueOfBin(pos.offset + i));
    }
    return this.max;
  }

  /** The digest as bytes, for a BLOB column; `ValueDigest.decode` reads it back. */
  encode(): Buffer {
    const values = this.#values;
    const size = values !== null ? HEADER_BYTES + 8 * values.length : HEADER_BYTES + 20 + 4 * (this.#positive.counts.length + this.#negative.counts.length);
    const buf = Buffer.allocUnsafe(size);
    buf.writeUInt8(values !== null ? FORMAT_EXACT : FORMAT_BINNED, 0);
    buf.writeUInt8(0, 1);
    buf.writeUInt16LE(0, 2);
    buf.writeUInt32LE(this.count, 4);
    buf.writeDoubleLE(this.sum, 8);
    buf.writeDoubleLE(this.min, 16);
    buf.writeDoubleLE(this.max, 24);
    let at = HEADER_BYTES;
    if (values !== null) {
      for (const v of values) {
        buf.writeDoubleLE(v, at);
        at += 8;
      }
      return buf;
    }
    buf.writeUInt32LE(this.#zero, at);
    buf.writeInt32LE(this.#positive.offset, at + 4);
    buf.writeUInt32LE(this.#positive.counts.length, at + 8);
    buf.writeInt32LE(this.#negative.offset, at + 12);
    buf.writeUInt32LE(this.#negative.counts.length, at + 16);
    at += 20;
    for (const bins of [this.#positive, this.#negative]) {
      for (const n of bins.counts) {
        buf.writeUInt32LE(n, at);
        at += 4;
      }
    }
    return buf;
  }

  /** Reads what `encode` wrote. Throws a RangeError on bytes that are not a digest. */
  static decode(bytes: Uint8Array): ValueDigest {
    const buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (buf.length < HEADER_BYTES) throw new RangeError(`a value digest has at least ${HEADER_BYTES} bytes (got ${buf.length})`);
    const format = buf.readUInt8(0);
    const d = new ValueDigest();
    d.count = buf.readUInt32LE(4);
    d.sum = buf.readDoubleLE(8);
    d.min = buf.readDoubleLE(16);
    d.max = buf.readDoubleLE(24);
    let at = HEADER_BYTES;
    if (format === FORMAT_EXACT) {
      if (buf.length !== HEADER_BYTES + 8 * d.count) throw new RangeError('value digest: length does not match its count');
      const values = new Array<number>(d.count);
      for (let i = 0; i < d.count; i++, at += 8) values[i] = buf.readDoubleLE(at);
      d.#values = values;
      d.#sorted = false;
      return d;
    }
    if (format !== FORMAT_BINNED) throw new RangeError(`value digest: unknown format ${format}`);
    d.#values = null;
    d.#zero = buf.readUInt32LE(at);
    const posOffset = buf.readInt32LE(at + 4);
    const posLength = buf.readUInt32LE(at + 8);
    const negOffset = buf.readInt32LE(at + 12);
    const negLength = buf.readUInt32LE(at + 16);
    at += 20;
    if (buf.length !== at + 4 * (posLength + negLength)) throw new RangeError('value digest: length does not match its bins');
    const read = (bins: Bins, offset: number, length: number) => {
      bins.offset = offset;
      bins.counts = new Array<number>(length);
      for (let i = 0; i < length; i++, at += 4) bins.counts[i] = buf.readUInt32LE(at);
    };
    read(d.#positive, posOffset, posLength);
    read(d.#negative, negOffset, negLength);
    return d;
  }

  #toBins(): void {
    const values = this.#values;
    if (values === null) return;
    this.#values = null;
    for (const v of values) this.#bin(v, 1);
  }

  #bin(value: number, n: number): void {
    const magnitude = Math.abs(value);
    if (magnitude < MIN_MAGNITUDE) this.#zero += n;
    else if (value > 0) this.#positive.add(binOf(magnitude), n);
    else this.#negative.add(binOf(magnitude), n);
  }

  #clamp(value: number): number {
    return Math.min(this.max, Math.max(this.min, value));
  }
}
