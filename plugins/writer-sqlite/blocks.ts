/**
 * Sample blocks: how the store keeps raw samples. One block holds the samples one write took in
 * for one run and one host within one aligned time window of BLOCK_SPAN_MS, packed as columns:
 *
 *   value  float64 x n | metric uint32 x n | tags uint32 x n | task uint32 x n | dt uint32 x n
 *
 * (ids of the store's dimension rows; task 0: none; a sample's time is the block's t0 + dt).
 * A row per sample with its two indexes cost ~100 bytes and most of the writer's time per sample
 * (bench/sink-ingest: 4.6 µs of CPU, half of it inserting); a block row carries hundreds of
 * samples at 24 bytes each.
 */

/** Width of the aligned time windows blocks are cut at, ms: a block's samples lie in [t0, t0 + span). */
export const BLOCK_SPAN_MS = 5000;

const BYTES_PER_SAMPLE = 24;

/** The start of the window a (whole ms) time falls in. */
export function blockStart(t: number): number {
  return Math.floor(t / BLOCK_SPAN_MS) * BLOCK_SPAN_MS;
}

/** Samples on their way into one block, in arrival order. */
export class BlockBuilder {
  readonly run: number | null;
  readonly t0: number;
  readonly values: number[] = [];
  readonly metrics: number[] = [];
  readonly tags: number[] = [];
  readonly tasks: number[] = [];
  readonly dts: number[] = [];

  constructor(run: number | null, t0: number) {
    this.run = run;
    this.t0 = t0;
  }

  /** `t`: whole ms within [t0, t0 + BLOCK_SPAN_MS); `task` 0 for none. */
  add(metric: number, tags: number, task: number, t: number, value: number): void {
    this.values.push(value);
    this.metrics.push(metric);
    this.tags.push(tags);
    this.tasks.push(task);
    this.dts.push(t - this.t0);
  }

  get count(): number {
    return this.values.length;
  }

  encode(): Buffer {
    const n = this.values.length;
    const bytes = new ArrayBuffer(n * BYTES_PER_SAMPLE);
    new Float64Array(bytes, 0, n).set(this.values);
    new Uint32Array(bytes, 8 * n, n).set(this.metrics);
    new Uint32Array(bytes, 12 * n, n).set(this.tags);
    new Uint32Array(bytes, 16 * n, n).set(this.tasks);
    new Uint32Array(bytes, 20 * n, n).set(this.dts);
    return Buffer.from(bytes);
  }
}

/** A stored block, decoded: column i of each array is sample i. */
export interface SampleBlock {
  t0: number;
  count: number;
  values: Float64Array;
  metrics: Uint32Array;
  tags: Uint32Array;
  tasks: Uint32Array;
  dts: Uint32Array;
}

/** Decodes a stored block; throws when its length does not match its sample count. */
export function decodeBlock(t0: number, count: number, data: Uint8Array): SampleBlock {
  if (data.byteLength !== count * BYTES_PER_SAMPLE) {
    throw new RangeError(`a sample block at t0 ${t0} holds ${data.byteLength} bytes for ${count} samples (expected ${count * BYTES_PER_SAMPLE})`);
  }
  // A copy: the typed-array views below need 8-byte alignment, which SQLite's buffer lacks.
  const bytes = new Uint8Array(data).buffer;
  return {
    t0,
    count,
    values: new Float64Array(bytes, 0, count),
    metrics: new Uint32Array(bytes, 8 * count, count),
    tags: new Uint32Array(bytes, 12 * count, count),
    tasks: new Uint32Array(bytes, 16 * count, count),
    dts: new Uint32Array(bytes, 20 * count, count),
  };
}
