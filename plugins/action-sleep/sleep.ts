/**
 * The `sleep` action: wait a duration, cancellable, and report how long the wait really took.
 */
import { performance } from 'node:perf_hooks';
import { BoltError, type ErrorCode } from '../../plugin-sdk/src/errors.ts';
import { parseDuration } from '../../plugin-sdk/src/schemas/job.ts';

/** A sleep task's `with`. */
export interface SleepSpec {
  /** Whole milliseconds, or a string like `500ms`, `30s`, `1m30s`, `1.5s` (the job file's duration form). */
  duration: string | number;
}

export interface SleepResult {
  outcome: 'finished' | 'cancelled';
  requestedMs: number;
  /** How long the wait took on the monotonic clock (ms); at least requestedMs when finished. */
  durationMs: number;
  /** Set when cancelled. */
  error?: { code: ErrorCode; message: string };
}

/** Longest delay a Node.js timer supports. */
const MAX_DURATION_MS = 2_147_483_647;

/**
 * Milliseconds of a sleep task's `with.duration`, in the job file's duration form, rounded to the
 * nearest millisecond.
 *
 * @throws BoltError BOLT_ERR_ACTION_SPEC when `with` has no valid duration or it is above 2147483647 ms.
 */
export function sleepDurationMs(spec: unknown): number {
  const value = spec !== null && typeof spec === 'object' ? (spec as { duration?: unknown }).duration : undefined;
  const ms = parseDuration(value);
  if (ms === null) {
    throw new BoltError('BOLT_ERR_ACTION_SPEC', `with.duration must be a duration like '500ms', '30s', '1m30s' or whole milliseconds, found ${JSON.stringify(value)}`);
  }
  if (ms > MAX_DURATION_MS) throw new BoltError('BOLT_ERR_ACTION_SPEC', `with.duration is ${ms} ms, longer than the ${MAX_DURATION_MS} ms a timer can wait`);
  return ms;
}

/**
 * Waits durationMs on the monotonic clock. Never rejects for a cancel: an abort of `signal`
 * resolves at once with outcome `cancelled` and the time waited so far.
 *
 * @throws RangeError when durationMs is not between 0 and 2147483647.
 */
export function sleep(durationMs: number, signal?: AbortSignal): Promise<SleepResult> {
  if (!(durationMs >= 0 && durationMs <= MAX_DURATION_MS)) throw new RangeError(`durationMs must be between 0 and ${MAX_DURATION_MS}, got ${durationMs}`);
  const started = performance.now();
  const cancelled = (): SleepResult => ({
    outcome: 'cancelled',
    requestedMs: durationMs,
    durationMs: performance.now() - started,
    error: { code: 'BOLT_ERR_ACTION_CANCELLED', message: 'the sleep was cancelled' },
  });
  if (signal?.aborted) return Promise.resolve(cancelled());
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout;
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve(cancelled());
    };
    // Timers run on a millisecond clock and can fire a fraction early; re-arm until the time is up.
    const arm = (): void => {
      const remaining = durationMs - (performance.now() - started);
      if (remaining <= 0) {
        signal?.removeEventListener('abort', onAbort);
        resolve({ outcome: 'finished', requestedMs: durationMs, durationMs: performance.now() - started });
        return;
      }
      timer = setTimeout(arm, Math.ceil(remaining));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    arm();
  });
}
