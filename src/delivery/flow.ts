/**
 * Flow control of one target: a token bucket for `rate` and a circuit breaker.
 */

/**
 * `rate` requests per second with a burst of a tenth of a second's worth (at least one),
 * so that the rate measured over a few seconds stays within a few percent of `rate`.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;
  readonly capacity: number;

  constructor(
    readonly rate: number,
    now: number,
  ) {
    this.capacity = Math.max(1, rate / 10);
    this.tokens = this.capacity;
    this.last = now;
  }

  /** Takes a token and returns 0, or returns the milliseconds until one is available. */
  take(now: number): number {
    if (this.rate <= 0) return 0;
    // A wall clock stepping back must not drain the bucket.
    this.tokens = Math.min(this.capacity, this.tokens + (Math.max(0, now - this.last) * this.rate) / 1000);
    this.last = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - this.tokens) * 1000) / this.rate);
  }
}

/** Consecutive failed attempts that open the circuit. */
export const BREAKER_FAILURES = 5;

export type BreakerState = 'closed' | 'open' | 'half-open';

/**
 * Closed: requests flow. After BREAKER_FAILURES consecutive failures it opens: nothing is
 * sent until `until`, then one probe goes out (half-open). The probe's success closes it;
 * its failure opens it again with the next, longer wait. A dead upstream costs one probe
 * per backoff step, not one attempt per waiting request.
 */
export class Breaker {
  state: BreakerState = 'closed';
  failures = 0;
  /** Times opened in a row; sets the wait before the next probe. */
  opens = 0;
  until = 0;
  probing = false;

  /** Whether a request may be sent now; in half-open, true once (the probe). */
  allow(now: number): boolean {
    if (this.state === 'closed') return true;
    if (this.probing) return false;
    if (now < this.until) return false;
    this.state = 'half-open';
    this.probing = true;
    return true;
  }

  success(): void {
    this.state = 'closed';
    this.failures = 0;
    this.opens = 0;
    this.probing = false;
  }

  /** A failed attempt; `waitMs(opens)` gives the wait before the next probe. Returns true when it opened. */
  failure(now: number, waitMs: (opens: number) => number): boolean {
    this.failures++;
    if (this.state === 'half-open' || (this.state === 'closed' && this.failures >= BREAKER_FAILURES)) {
      this.opens++;
      this.state = 'open';
      this.probing = false;
      this.until = now + waitMs(this.opens);
      return true;
    }
    return false;
  }

  /** Opens now until `until` whatever the count (a paused target). */
  trip(until: number): void {
    this.failures++;
    this.state = 'open';
    this.probing = false;
    this.until = until;
  }

  /** A probe that ended without telling anything (the target was rewound or stopped). */
  release(): void {
    if (this.state === 'half-open') {
      this.state = 'open';
      this.probing = false;
    }
  }
}
