/**
 * The pump of one target: sends whatever may be sent now, from the retry line (due
 * retries first) or the main line, within `concurrency`, `rate`, the circuit breaker and
 * an upstream's Retry-After; sets a timer for the next moment something may be sent.
 */
import { Breaker, TokenBucket } from './flow';
import type { Item } from './item';

/** With no room for the next request and nothing in flight, look again this often. */
export const BUDGET_POLL_MS = 100;

/** setTimeout's largest delay; a longer wait wakes up early and sleeps again. */
const TIMER_MAX_MS = 2 ** 31 - 1;

/** What the pump takes requests from. */
export interface PumpLines {
  /** The retry due first (or null). */
  peekRetry(): Item | null;
  /** A retry past retry.max_age at `now` (or null), wherever it is in the due order. */
  peekExpiredRetry(now: number): Item | null;
  /** The main line's next entry (or null); not asked while `ordered` retries wait. */
  peekMain(): Item | null;
  /** True when strict order holds the main line back (a retry is waiting). */
  mainHeld(): boolean;
  /** True when the item's envelope may be held now (it is, or the bytes allow reading it). */
  canHold(item: Item): boolean;
  /** Takes `item` off its line and sends it. */
  send(item: Item, fromRetry: boolean, now: number): void;
  /** When `item` becomes older than `retry.max_age` (Infinity: unknown until it is loaded). */
  expiresAt(item: Item): number;
  /**
   * Takes `item` (older than `retry.max_age`) off its line and dead-letters it unsent; false
   * (and nothing taken) while the dead letters not yet committed fill their byte bound.
   */
  expire(item: Item, fromRetry: boolean, now: number): boolean;
}

export class Pump {
  inFlight = 0;
  /** The upstream asked (Retry-After) not to be called before this time. */
  holdUntil = 0;
  readonly breaker = new Breaker();
  private readonly bucket: TokenBucket;
  private timer: NodeJS.Timeout | null = null;
  private timerAt = Infinity;

  constructor(
    private readonly concurrency: number,
    rate: number,
    private readonly now: () => number,
    /** Called when the timer fires. */
    private readonly wake: () => void,
  ) {
    this.bucket = new TokenBucket(rate, now());
  }

  run(lines: PumpLines): void {
    let wakeAt = this.expireFirst(lines);
    if (wakeAt === -Infinity) return; // the commit of the dead letters wakes the pump
    for (;;) {
      const now = this.now();
      let item: Item | null = null;
      let fromRetry = false;
      const top = lines.peekRetry();
      if (top && top.due <= now) {
        item = top;
        fromRetry = true;
      } else {
        if (top) wakeAt = Math.min(wakeAt, top.due);
        if (lines.mainHeld()) break;
        item = lines.peekMain();
      }
      if (item === null) break;
      // retry.max_age holds for every entry, attempted or not: an entry past it becomes a
      // dead letter unsent, whatever holds the sending back (concurrency, breaker, hold, rate).
      const expires = lines.expiresAt(item);
      if (expires <= now) {
        if (lines.expire(item, fromRetry, now)) continue;
        break; // the commit of the dead letters wakes the pump
      }
      wakeAt = Math.min(wakeAt, expires);
      if (this.inFlight >= this.concurrency) break; // an answer wakes the pump
      if (now < this.holdUntil) {
        wakeAt = Math.min(wakeAt, this.holdUntil);
        break;
      }
      // Bytes first: a request that cannot be held now waits for one in flight to finish. A
      // due retry that cannot be loaded lets main-line requests that hold their bytes go first,
      // and with nothing in flight (the budget is shared with other targets) the pump looks
      // again shortly, since no answer of its own will wake it.
      if (!lines.canHold(item)) {
        const main = fromRetry && !lines.mainHeld() ? lines.peekMain() : null;
        if (main !== null && lines.expiresAt(main) <= now) {
          if (lines.expire(main, false, now)) continue;
          break;
        } else if (main !== null && lines.canHold(main)) {
          item = main;
          fromRetry = false;
        } else {
          if (this.inFlight === 0) wakeAt = Math.min(wakeAt, now + BUDGET_POLL_MS);
          break;
        }
      }
      if (!this.breakerLets(now)) {
        // While the probe is out its answer wakes the consumer; else the breaker's time does.
        if (!this.breaker.probing) wakeAt = Math.min(wakeAt, this.breaker.until);
        break;
      }
      const wait = this.bucket.take(now);
      if (wait > 0) {
        wakeAt = Math.min(wakeAt, now + wait);
        break;
      }
      this.breaker.allow(now);
      lines.send(item, fromRetry, now);
    }
    this.schedule(wakeAt);
  }

  /**
   * Dead-letters the entries past retry.max_age (or the target's lag bound) at the front of
   * both lines, whatever holds sending back: a due retry waiting for the breaker must not
   * keep the main line's expired entries in place. Returns when the first entry left expires
   * (-Infinity: stopped at the dead letters' byte bound).
   */
  private expireFirst(lines: PumpLines): number {
    const now = this.now();
    for (;;) {
      const item = lines.peekExpiredRetry(now);
      if (item === null) break;
      if (!lines.expire(item, true, now)) return -Infinity;
    }
    if (lines.mainHeld()) return Infinity;
    for (;;) {
      const item = lines.peekMain();
      if (item === null) return Infinity;
      const at = lines.expiresAt(item);
      if (at > now) return at;
      if (!lines.expire(item, false, now)) return -Infinity;
    }
  }

  /** True when the breaker lets a request through now (without taking the probe). */
  private breakerLets(now: number): boolean {
    const b = this.breaker;
    if (b.state === 'closed') return true;
    return !b.probing && now >= b.until;
  }

  private schedule(at: number): void {
    if (at === Infinity) return;
    if (this.timer && this.timerAt <= at) return;
    if (this.timer) clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(
      () => {
        this.timer = null;
        this.timerAt = Infinity;
        this.wake();
      },
      Math.min(TIMER_MAX_MS, Math.max(0, at - this.now())),
    );
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.timerAt = Infinity;
  }
}
