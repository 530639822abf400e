/**
 * The `mark` action: wait for the task's start instant and record when it was reached, nothing
 * else. With no process to spawn, the start skew it shows across hosts is that of the clock
 * offsets and of the wait alone.
 */
import type { ErrorCode } from '../../plugin-sdk/src/errors.ts';
import { waitUntil } from '../../plugin-sdk/src/precise-wait.ts';

export interface MarkResult {
  outcome: 'finished' | 'cancelled';
  /** The instant asked for (the dispatch's startAt), or null for "as soon as possible". */
  targetServerMs: number | null;
  /** The instant the action ran, on the server's clock (ms); null when cancelled first. */
  startedAtServerMs: number | null;
  /** startedAtServerMs minus the target (never negative); null without a target or when cancelled. */
  lateMs: number | null;
  /** Set when cancelled. */
  error?: { code: ErrorCode; message: string };
}

/**
 * Waits until `startAt` on the server's clock (at once when it is null or already past) and
 * resolves with the instant reached. Never rejects for a cancel: an abort of `signal` during the
 * wait resolves with outcome `cancelled`.
 *
 * @throws RangeError when startAt is neither null nor a finite number.
 */
export async function mark(startAt: number | null, serverNow: () => number, signal?: AbortSignal): Promise<MarkResult> {
  if (signal?.aborted) return cancelledResult(startAt);
  if (startAt === null) return { outcome: 'finished', targetServerMs: null, startedAtServerMs: serverNow(), lateMs: null };
  try {
    const reached = await waitUntil(startAt, serverNow, signal);
    return { outcome: 'finished', targetServerMs: startAt, startedAtServerMs: reached.actualServerMs, lateMs: reached.lateMs };
  } catch (err) {
    if ((err as { code?: unknown }).code === 'BOLT_ERR_ACTION_CANCELLED') return cancelledResult(startAt);
    throw err;
  }
}

function cancelledResult(startAt: number | null): MarkResult {
  return {
    outcome: 'cancelled',
    targetServerMs: startAt,
    startedAtServerMs: null,
    lateMs: null,
    error: { code: 'BOLT_ERR_ACTION_CANCELLED', message: 'cancelled before the start instant' },
  };
}
