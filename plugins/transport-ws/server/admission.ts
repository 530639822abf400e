/**
 * Rate limits for the responder: a token bucket (handshakes per second, messages per second per
 * connection) and the admission gate that combines a bucket with a cap on unfinished handshakes,
 * so a thousand clients reconnecting at once are told to come back later instead of queueing up
 * CPU-heavy handshakes.
 */

export interface TokenBucketOptions {
  /** Tokens added per second. */
  ratePerSec: number;
  /** Most tokens held; also the starting amount. */
  burst: number;
  /** Monotonic clock in milliseconds. Default performance.now. */
  now?: () => number;
}

/** A token bucket: `take()` succeeds while tokens last; tokens refill continuously at `ratePerSec`, up to `burst`. */
export class TokenBucket {
  readonly #rate: number;
  readonly #burst: number;
  readonly #now: () => number;
  #tokens: number;
  #last: number;

  constructor(options: TokenBucketOptions) {
    if (!(options.ratePerSec > 0) || !(options.burst >= 1)) throw new RangeError('TokenBucket needs ratePerSec > 0 and burst >= 1');
    this.#rate = options.ratePerSec / 1000;
    this.#burst = options.burst;
    this.#now = options.now ?? (() => performance.now());
    this.#tokens = options.burst;
    this.#last = this.#now();
  }

  /** Takes one token if there is one. */
  take(): boolean {
    this.#refill();
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }

  /** Milliseconds until the next token is available (0 if one is). */
  waitMs(): number {
    this.#refill();
    return this.#tokens >= 1 ? 0 : (1 - this.#tokens) / this.#rate;
  }

  #refill(): void {
    const now = this.#now();
    this.#tokens = Math.min(this.#burst, this.#tokens + (now - this.#last) * this.#rate);
    this.#last = now;
  }
}

export interface AdmissionOptions {
  /** Handshakes started per second. Default 200. */
  handshakesPerSec?: number;
  /** Handshakes that may start at once after a quiet period. Default 200. */
  burst?: number;
  /** Most handshakes in progress (upgrade received, welcome not yet sent). Default 1000. */
  maxInFlight?: number;
  now?: () => number;
}

/** Why a handshake was not admitted. */
export type AdmissionRefusal = 'rate' | 'in-flight';

export type AdmissionResult =
  | { admitted: true; /** Frees the slot; call once the handshake ended either way. Idempotent. */ release: () => void }
  | { admitted: false; reason: AdmissionRefusal; /** Whole seconds, for a Retry-After header (at least 1). */ retryAfterS: number };

/**
 * The admission gate for handshakes. Guarantees: at most `maxInFlight` admitted handshakes are
 * unreleased at any time, and admissions over any interval of t seconds number at most
 * burst + rate × t.
 */
export class Admission {
  readonly #bucket: TokenBucket;
  readonly #maxInFlight: number;
  #inFlight = 0;

  constructor(options: AdmissionOptions = {}) {
    const rate = options.handshakesPerSec ?? 200;
    this.#bucket = new TokenBucket({ ratePerSec: rate, burst: options.burst ?? rate, ...(options.now !== undefined && { now: options.now }) });
    this.#maxInFlight = options.maxInFlight ?? 1000;
  }

  /** Handshakes admitted and not yet released. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Admits one handshake, or says why not and when to retry. */
  tryAdmit(): AdmissionResult {
    if (this.#inFlight >= this.#maxInFlight) return { admitted: false, reason: 'in-flight', retryAfterS: 1 };
    if (!this.#bucket.take()) return { admitted: false, reason: 'rate', retryAfterS: Math.max(1, Math.ceil(this.#bucket.waitMs() / 1000)) };
    this.#inFlight++;
    let released = false;
    return {
      admitted: true,
      release: () => {
        if (released) return;
        released = true;
        this.#inFlight--;
      },
    };
  }
}
