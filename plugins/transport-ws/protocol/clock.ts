/**
 * NTP-style estimate of the offset between this host's clock and the server's.
 *
 * One exchange: the client sends clock.ping at t0 (its clock), the server receives it at t1 and
 * answers at t2 (server clock), the client receives the pong at t3. Then
 *
 *   round trip  rtt    = (t3 - t0) - (t2 - t1)
 *   offset      offset = ((t1 - t0) + (t2 - t3)) / 2        (server clock − client clock)
 *
 * and the true offset lies within ±rtt/2 of the estimate, whatever the split of the delay between
 * the two directions. So the sample with the lowest round trip is the most precise; older samples
 * lose precision as the two clocks drift apart, which the error bound accounts for.
 */

/** One ping exchange. t0 and t3 on the client's clock, t1 and t2 on the server's. */
export interface ClockExchange {
  t0: number;
  t1: number;
  t2: number;
  t3: number;
}

export interface ClockSample {
  offsetMs: number;
  rttMs: number;
  /** When the sample was taken (t3, client clock). */
  at: number;
}

export interface ClockEstimate {
  /** Server clock − client clock. */
  offsetMs: number;
  /** The true offset lies within offsetMs ± errorMs (round trip / 2, plus drift since the sample). */
  errorMs: number;
  rttMs: number;
  /** Fresh samples the estimate was chosen from. */
  samples: number;
}

export interface ClockEstimatorOptions {
  /** Samples kept (the newest). Default 16. */
  maxSamples?: number;
  /** Samples older than this are dropped. Default 5 minutes. */
  maxAgeMs?: number;
  /** With fewer fresh samples than this, refresh at once. Default 4. */
  minSamples?: number;
  /** Take a new sample when the newest is older than this. Default 30 s. */
  refreshAfterMs?: number;
  /** Assumed worst relative drift of the two clocks, in parts per million. Default 20. */
  driftPpm?: number;
}

/** The client's clock for t0, t3 and serverNow: wall-clock based, but sub-millisecond and monotonic. */
export function localClock(): number {
  return performance.timeOrigin + performance.now();
}

/** The server's clock now, given an offset estimate. `local` defaults to localClock(). */
export function serverNow(offsetMs: number, local: number = localClock()): number {
  return local + offsetMs;
}

/** Offset and round trip of one exchange; null if it is unusable (a non-finite time, or t3 before t0). */
export function sampleFromExchange(x: ClockExchange): ClockSample | null {
  if (![x.t0, x.t1, x.t2, x.t3].every(Number.isFinite) || x.t3 < x.t0) return null;
  // The server's processing time can exceed the client's measured interval by rounding; never below 0.
  const rttMs = Math.max(0, x.t3 - x.t0 - (x.t2 - x.t1));
  return { offsetMs: (x.t1 - x.t0 + (x.t2 - x.t3)) / 2, rttMs, at: x.t3 };
}

/**
 * Accumulates samples and picks the best estimate: the sample with the smallest error bound,
 * rtt/2 + drift × age, which is the lowest-round-trip sample among samples of similar age.
 * Memory is bounded by maxSamples.
 */
export class ClockEstimator {
  readonly #samples: ClockSample[] = [];
  readonly #maxSamples: number;
  readonly #maxAgeMs: number;
  readonly #minSamples: number;
  readonly #refreshAfterMs: number;
  readonly #drift: number;

  constructor(options: ClockEstimatorOptions = {}) {
    this.#maxSamples = options.maxSamples ?? 16;
    this.#maxAgeMs = options.maxAgeMs ?? 300_000;
    this.#minSamples = Math.min(options.minSamples ?? 4, this.#maxSamples);
    this.#refreshAfterMs = options.refreshAfterMs ?? 30_000;
    this.#drift = (options.driftPpm ?? 20) / 1e6;
  }

  /** Adds one exchange; returns its sample, or null if it was unusable and ignored. */
  add(exchange: ClockExchange): ClockSample | null {
    const sample = sampleFromExchange(exchange);
    if (sample === null) return null;
    this.#samples.push(sample);
    if (this.#samples.length > this.#maxSamples) this.#samples.shift();
    return sample;
  }

  /** The best estimate from samples younger than maxAgeMs at `now` (client clock), or null if there are none. */
  estimate(now: number = localClock()): ClockEstimate | null {
    this.#ageOut(now);
    let best: ClockEstimate | null = null;
    for (const s of this.#samples) {
      const errorMs = s.rttMs / 2 + this.#drift * Math.max(0, now - s.at);
      if (best === null || errorMs < best.errorMs) best = { offsetMs: s.offsetMs, errorMs, rttMs: s.rttMs, samples: this.#samples.length };
    }
    return best;
  }

  /** True when a new exchange should be made: too few fresh samples, or the newest is getting old. */
  needsRefresh(now: number = localClock()): boolean {
    this.#ageOut(now);
    const newest = this.#samples.at(-1);
    return this.#samples.length < this.#minSamples || newest === undefined || now - newest.at >= this.#refreshAfterMs;
  }

  #ageOut(now: number): void {
    while (this.#samples.length > 0 && now - this.#samples[0]!.at > this.#maxAgeMs) this.#samples.shift();
  }
}
