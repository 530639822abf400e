/**
 * Small order statistics shared by every benchmark. All functions leave their input untouched and
 * throw a RangeError on an empty array, so a benchmark that collected nothing fails loudly instead
 * of printing NaN.
 */

function sortedCopy(values: readonly number[], what: string): number[] {
  if (values.length === 0) throw new RangeError(`${what} of an empty array`);
  for (const v of values) {
    if (!Number.isFinite(v)) throw new RangeError(`${what}: ${v} is not a finite number`);
  }
  return [...values].sort((a, b) => a - b);
}

/** The median: the middle value, or the mean of the two middle values for an even count. */
export function median(values: readonly number[]): number {
  const s = sortedCopy(values, 'median');
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/**
 * The p-th percentile by the nearest-rank method: the smallest value such that at least p% of
 * the values are less than or equal to it. Always one of the input values; `percentile(v, 100)`
 * is the maximum. `p` must be in (0, 100].
 */
export function percentile(values: readonly number[], p: number): number {
  if (!(p > 0 && p <= 100)) throw new RangeError(`percentile: p must be in (0, 100], got ${p}`);
  const s = sortedCopy(values, `p${p}`);
  return s[Math.ceil((p / 100) * s.length) - 1]!;
}

/** 95th percentile (nearest rank). */
export function p95(values: readonly number[]): number {
  return percentile(values, 95);
}

/** 99th percentile (nearest rank). */
export function p99(values: readonly number[]): number {
  return percentile(values, 99);
}

/** max − min of the values (0 for a single value). */
export function spread(values: readonly number[]): number {
  const s = sortedCopy(values, 'spread');
  return s[s.length - 1]! - s[0]!;
}

/** max − min of bigint values, e.g. nanosecond instants that a number cannot hold exactly. */
export function spreadBigInt(values: readonly bigint[]): bigint {
  if (values.length === 0) throw new RangeError('spread of an empty array');
  let min = values[0]!;
  let max = min;
  for (const v of values) {
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return max - min;
}

/** The usual figures of one sample, for printing as JSON. */
export interface Summary {
  count: number;
  min: number;
  median: number;
  p95: number;
  p99: number;
  max: number;
  /** max − min */
  spread: number;
}

/** count, min, median, p95, p99, max and spread of the values. */
export function summarize(values: readonly number[]): Summary {
  const s = sortedCopy(values, 'summary');
  return {
    count: s.length,
    min: s[0]!,
    median: median(s),
    p95: percentile(s, 95),
    p99: percentile(s, 99),
    max: s[s.length - 1]!,
    spread: s[s.length - 1]! - s[0]!,
  };
}
