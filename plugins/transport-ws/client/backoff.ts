/**
 * Reconnect delays: exponential backoff with full jitter (the wire contract, section 6).
 *
 *   delay = random(0, min(cap, base * 2^attempt))
 *
 * Full jitter spreads the reconnects of a fleet that lost its server at the same instant evenly
 * over the whole window, so 1,000 clients do not knock on a restarted server in lock-step.
 * The attempt count goes back to zero once a session has lasted `resetAfterMs`: a client that was
 * connected for a while starts over with short delays, one that flaps keeps backing off.
 */

/**
 * Base 500 ms, reset after a 10 s session, and a 10 s cap: with 1,000 clients that is at most ~100
 * refused connects a second while the server is down, and a restarted server sees every client back
 * within about 10 s plus the admission queue (a 30 s cap left a 500-client tail out past 30 s).
 */
export const BACKOFF_DEFAULTS = { baseMs: 500, capMs: 10_000, resetAfterMs: 10_000 } as const;

export interface BackoffOptions {
  baseMs?: number;
  capMs?: number;
  /** A session that lasted at least this long resets the attempt count. */
  resetAfterMs?: number;
  /** Uniform random source in [0, 1); Math.random by default. Tests inject a fixed sequence. */
  random?: () => number;
}

/** The window a delay is drawn from for `attempt` (0-based): min(cap, base * 2^attempt). */
export function backoffWindow(attempt: number, baseMs: number, capMs: number): number {
  // 2^attempt overflows to Infinity long after the cap is reached; Math.min keeps it finite.
  return Math.min(capMs, baseMs * 2 ** Math.min(attempt, 1024));
}

/**
 * One peer's backoff state. Guarantees: every delay lies in [0, window(attempt)], the window never
 * exceeds `capMs`, and consecutive failures double it until the cap.
 */
export class Backoff {
  readonly baseMs: number;
  readonly capMs: number;
  readonly resetAfterMs: number;
  readonly #random: () => number;
  #attempt = 0;

  constructor(options: BackoffOptions = {}) {
    this.baseMs = options.baseMs ?? BACKOFF_DEFAULTS.baseMs;
    this.capMs = options.capMs ?? BACKOFF_DEFAULTS.capMs;
    this.resetAfterMs = options.resetAfterMs ?? BACKOFF_DEFAULTS.resetAfterMs;
    this.#random = options.random ?? Math.random;
    if (!(this.baseMs > 0 && this.capMs >= this.baseMs)) throw new RangeError('Backoff needs 0 < baseMs <= capMs');
  }

  /** Failed attempts since the last reset: the exponent of the next window. */
  get attempt(): number {
    return this.#attempt;
  }

  /** Draws the delay before the next attempt and counts one more failure. */
  next(): number {
    const window = backoffWindow(this.#attempt, this.baseMs, this.capMs);
    this.#attempt++;
    // Clamp: a random source that returns exactly 1 must not exceed the window.
    return Math.min(window, Math.max(0, this.#random() * window));
  }

  /** Tells how long the session that just ended lasted; a long enough one resets the attempts. */
  sessionEnded(durationMs: number): void {
    if (durationMs >= this.resetAfterMs) this.#attempt = 0;
  }

  /** Starts over with the smallest window. */
  reset(): void {
    this.#attempt = 0;
  }
}
