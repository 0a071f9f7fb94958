/**
 * The consumer of one target: reads the log past its offset (never past the durable
 * watermark), sends the entries of the routes that name the target, and moves its offset
 * over the contiguous prefix of finished entries.
 *
 * - At most `concurrency` requests in flight (1 when `ordered`), at most `rate` per second,
 *   and a circuit breaker: a dead upstream costs one probe per backoff step.
 * - A request that failed and may be retried waits outside the main line: once the offset
 *   passes it, it is parked (a retry record with its envelope and attempt count, written in
 *   the commit that moves the offset), so it never holds back the others, unless the target
 *   is `ordered`: then nothing after it is sent until it is delivered or dead-lettered.
 * - A permanent failure, or a request older than `retry.max_age`, becomes a dead letter,
 *   written in the commit that moves the offset past it.
 * - 401/403 pause the target: nothing is dead-lettered; one probe per `retry.max`.
 * - Offsets are committed in batches (the delivery manager writes every consumer's changes
 *   in one transaction). After a crash the consumer resumes from the committed offset:
 *   what was delivered after it is delivered again, at most WINDOW_MAX entries.
 */
import type { TargetConfig } from '../config/schema';
import { decodeEnvelope, reencodeEnvelope, type Envelope } from '../log/codec';
import type { ConsumerCommit, Held, HeldEntry } from '../log/delivery-store';
import type { Log } from '../log/log';
import type { Logger } from '../observability/logger';
import { Breaker, TokenBucket } from './flow';
import { MinHeap } from './heap';
import { classify, backoffMs, parseRetryAfter, retryDelayMs } from './retry';
import type { AttemptResult, Sink } from './sinks/sink';

/** Log entries between the committed offset and the read position: bounds re-deliveries after a crash. */
export const WINDOW_MAX = 8192;
/** Entries read from the log at a time. */
export const READ_BATCH = 512;
/** Requests waiting for a retry (in memory and parked); past it, no new entries are read. */
export const RETRYING_MAX = 100_000;
/** setTimeout's largest delay; a longer wait wakes up early and sleeps again. */
const TIMER_MAX_MS = 2 ** 31 - 1;
/** Passed entries not yet committed that make the consumer ask for a commit now. */
const COMMIT_EARLY = WINDOW_MAX / 4;

export type TargetState = 'starting' | 'ok' | 'backoff' | 'circuit-open' | 'paused' | 'stopped';

export type AttemptOutcome = 'delivered' | 'retry' | 'error' | 'timeout' | 'dead' | 'paused';

type ItemState = 'pending' | 'inflight' | 'waiting' | 'done' | 'dead';

export interface Item {
  readonly offset: number;
  /** Null while parked on disk (loaded again when due). */
  env: Envelope | null;
  received_at: number;
  /** When a dead letter was replayed (0: never); retry.max_age counts from the later of the two. */
  replayedAt: number;
  attempts: number;
  due: number;
  status: number;
  error: string;
  firstAttemptAt: number;
  state: ItemState;
  /** Still in the window (the offset has not passed it). */
  inWindow: boolean;
  /** A retry record exists (or is being written). */
  parked: boolean;
  gen: number;
}

/** A consumer's part of a commit, and what to do once it is durable. */
export interface PendingCommit {
  readonly commit: ConsumerCommit;
  readonly parked: readonly Item[];
  readonly gen: number;
}

export interface ConsumerEvents {
  /** Records an attempt's duration in seconds. */
  attemptSeconds(seconds: number): void;
  /** Asks the manager for a commit soon (many passed entries are not committed yet). */
  commitSoon(): void;
}

export interface ConsumerDeps {
  readonly target: TargetConfig;
  /** Names of the routes whose requests this target receives. */
  readonly routes: ReadonlySet<string>;
  readonly log: Log;
  readonly sink: Sink;
  readonly logger: Logger;
  readonly events: ConsumerEvents;
  readonly now?: () => number;
  readonly random?: () => number;
}

export interface ConsumerStatus {
  name: string;
  url: string;
  state: TargetState;
  offset: number;
  committed_offset: number;
  lag: number;
  in_flight: number;
  retrying: number;
  dead_letters: number;
  accepted: number;
  delivered: number;
  purged: number;
  attempts: Readonly<Record<AttemptOutcome, number>>;
  last_error: { at: string; status: number | null; message: string; offset: number } | null;
  next_attempt_at: string | null;
}

export class Consumer {
  readonly name: string;
  private readonly d: ConsumerDeps;
  private readonly t: TargetConfig;
  private readonly now: () => number;
  private readonly random: () => number;
  private readonly permanent: ReadonlySet<number>;
  private readonly concurrency: number;
  private readonly bucket: TokenBucket;
  readonly breaker = new Breaker();

  /** Offset of the first slot: everything before it is passed (finished or held). */
  private head = 1;
  /** Next offset to read from the log. */
  private next = 1;
  /** The offset stored on disk (as of the last finished commit). */
  private committedOffset = 0;
  /** Window slots from `head`: null when finished or not for this target. */
  private slots: (Item | null)[] = [];
  private slotStart = 0;
  /** Read from the log, not sent yet, in offset order. */
  private queue: Item[] = [];
  private queueStart = 0;
  /** Every request waiting for another attempt or being retried, by offset. */
  private readonly retrying = new Map<number, Item>();
  /** Ordered by due time, then offset (so that equal times keep offset order). */
  private readonly due = new MinHeap<Item>((a, b) => a.due < b.due || (a.due === b.due && a.offset < b.offset));
  /**
   * Offsets past `next` not to send from the log because the target holds them already (a
   * retry record or a dead letter): after a restart or a rewind the main line reads them again.
   */
  private readonly skip = new Set<number>();
  private inFlight = 0;
  private gen = 0;

  // Changes for the next commit.
  private park: HeldEntry[] = [];
  private unpark: number[] = [];
  private dead: HeldEntry[] = [];
  /** Items parked by the commit being written: their envelopes are dropped once it is durable. */
  private parkedInCommit: Item[] = [];

  // Accounting: accepted = delivered + dead + purged + lag, at every moment.
  accepted = 0;
  delivered = 0;
  deadCount = 0;
  purged = 0;
  readonly attempts: Record<AttemptOutcome, number> = { delivered: 0, retry: 0, error: 0, timeout: 0, dead: 0, paused: 0 };

  private state: 'starting' | 'running' | 'rewinding' | 'stopped' = 'starting';
  private paused = false;
  /** The upstream asked (Retry-After) not to be called before this time. */
  private holdUntil = 0;
  private lastError: { at: number; status: number | null; message: string; offset: number } | null = null;
  private timer: NodeJS.Timeout | null = null;
  private timerAt = Infinity;
  private pumpQueued = false;
  private idleWaiters: (() => void)[] = [];

  constructor(deps: ConsumerDeps) {
    this.d = deps;
    this.t = deps.target;
    this.name = deps.target.name;
    this.now = deps.now ?? Date.now;
    this.random = deps.random ?? Math.random;
    this.permanent = new Set(deps.target.retry.permanent);
    this.concurrency = deps.target.ordered ? 1 : deps.target.concurrency;
    this.bucket = new TokenBucket(deps.target.rate, this.now());
  }

  /**
   * Loads the offset, the parked retries and the dead-letter count (synchronously, before
   * ingest starts, so that every later acknowledgement is counted by `acceptedOne`), then
   * counts the backlog and starts sending.
   */
  init(): { backlogFrom: number; backlogThrough: number; store: boolean } {
    const { log } = this.d;
    const store = log.delivery;
    const isNew = !store.hasOffset(this.name);
    if (isNew) {
      // A new target starts after what the log already holds (what a new NSQ channel or a
      // Kafka consumer with auto.offset.reset=latest does); `crowd replay` sends older entries.
      this.committedOffset = log.durableOffset();
      if (this.committedOffset > 0) {
        this.d.logger.info({ event: 'target_new', target: this.name, offset: this.committedOffset }, `target ${this.name} has no offset yet: it starts after offset ${this.committedOffset} (crowd replay --target ${this.name} --from N sends older entries)`);
      }
    } else {
      this.committedOffset = store.offset(this.name);
    }
    let storeOffset = isNew;
    const first = log.firstOffset();
    if (this.committedOffset + 1 < first) {
      // Retention removed entries past this offset while the target was not configured.
      this.d.logger.warn(
        { event: 'target_offset_behind', target: this.name, offset: this.committedOffset, first_offset: first },
        `target ${this.name}: its offset ${this.committedOffset} is below the first entry the log holds (${first}; removed while the target was not configured): it starts at ${first}`,
      );
      this.committedOffset = first - 1;
      storeOffset = true;
    }
    this.head = this.next = this.committedOffset + 1;
    for (const r of store.retryIndex(this.name)) {
      this.addParked(r);
      if (r.offset > this.committedOffset) this.skip.add(r.offset);
    }
    for (const o of store.deadOffsets(this.name, this.committedOffset + 1)) this.skip.add(o);
    this.deadCount = store.deadCount(this.name);
    this.accepted = this.retrying.size + this.deadCount;
    return { backlogFrom: this.head, backlogThrough: log.durableOffset(), store: storeOffset };
  }

  /** How many offsets of the skip set lie in [from, through]. */
  private skippedIn(from: number, through: number): number {
    let n = 0;
    for (const o of this.skip) if (o >= from && o <= through) n++;
    return n;
  }

  /** The offset a new (or moved-up) target starts from (stored before ingest starts accepting). */
  initialOffset(): number {
    return this.committedOffset;
  }

  /** Counts the backlog found at start, stores a new target's offset, and starts sending. */
  async start(backlog: { backlogFrom: number; backlogThrough: number }): Promise<void> {
    if (backlog.backlogThrough >= backlog.backlogFrom) {
      try {
        const n = await this.d.log.countRoutes(backlog.backlogFrom, backlog.backlogThrough, this.d.routes);
        // Requests held as retrying or dead are counted once (there), not again as backlog.
        this.accepted += n - this.skippedIn(backlog.backlogFrom, backlog.backlogThrough);
      } catch (err) {
        this.d.logger.error({ event: 'backlog_count_failed', target: this.name, err }, `target ${this.name}: counting the backlog failed (${(err as Error).message}); delivery starts, lag and accepted exclude the backlog`);
      }
    }
    if (this.state !== 'starting') return;
    this.state = 'running';
    this.pump();
  }

  /** An acknowledged request of one of this target's routes. */
  acceptedOne(): void {
    this.accepted++;
  }

  /** New durable entries: wake up if waiting for them. */
  notify(): void {
    if (this.pumpQueued || this.state !== 'running') return;
    this.pumpQueued = true;
    setImmediate(this.queuedPump);
  }

  private readonly queuedPump = (): void => {
    this.pumpQueued = false;
    this.pump();
  };

  private newItem(offset: number, env: Envelope | null, receivedAt: number): Item {
    return { offset, env, received_at: receivedAt, replayedAt: 0, attempts: 0, due: 0, status: 0, error: '', firstAttemptAt: 0, state: 'pending', inWindow: true, parked: false, gen: this.gen };
  }

  /** Sends whatever may be sent now; sets a timer for the next moment something may. */
  pump(): void {
    if (this.state !== 'running') return;
    let wakeAt = Infinity;
    while (this.inFlight < this.concurrency) {
      const now = this.now();
      if (now < this.holdUntil) {
        wakeAt = this.holdUntil;
        break;
      }
      let item: Item | null = null;
      let fromRetry = false;
      const top = this.peekDue();
      if (top && top.due <= now) {
        item = top;
        fromRetry = true;
      } else {
        if (top) wakeAt = Math.min(wakeAt, top.due);
        if (this.t.ordered && this.retrying.size > 0) break;
        item = this.peekQueue();
      }
      if (item === null) break;
      if (!this.breakerOpenUntil(now)) {
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
      if (fromRetry) this.due.pop();
      else this.queueStart++;
      this.send(item, now);
    }
    this.schedule(wakeAt);
  }

  /** True when the breaker lets a request through now (without taking the probe). */
  private breakerOpenUntil(now: number): boolean {
    const b = this.breaker;
    if (b.state === 'closed') return true;
    return !b.probing && now >= b.until;
  }

  private peekDue(): Item | null {
    for (;;) {
      const top = this.due.peek();
      if (!top) return null;
      if (top.state === 'waiting' && top.gen === this.gen && this.retrying.get(top.offset) === top) return top;
      this.due.pop(); // stale: delivered, dead-lettered or dropped by a rewind
    }
  }

  /** The next entry of the main line, reading from the log when the queue is empty. */
  private peekQueue(): Item | null {
    if (this.queueStart < this.queue.length) return this.queue[this.queueStart]!;
    this.queue = [];
    this.queueStart = 0;
    const { log } = this.d;
    // Bounded reads per pump; an idle consumer is woken by `notify`.
    for (let reads = 0; reads < 8; reads++) {
      const durable = log.durableOffset();
      if (this.next > durable) return null;
      const first = log.firstOffset();
      if (this.next < first) {
        // Entries this target had not passed are gone (removed while it was not configured):
        // once nothing before them is pending, move on to what the log holds.
        if (this.slotStart < this.slots.length) return null;
        this.d.logger.warn({ event: 'target_offset_behind', target: this.name, offset: this.next - 1, first_offset: first }, `target ${this.name}: entries ${this.next}-${first - 1} are no longer in the log; it goes on at ${first}`);
        this.head = this.next = first;
      }
      if (this.next - this.committedOffset > WINDOW_MAX || this.retrying.size >= RETRYING_MAX) {
        this.d.events.commitSoon();
        return null;
      }
      const through = Math.min(durable, this.committedOffset + WINDOW_MAX);
      const entries = log.read(this.next, READ_BATCH, through, true);
      if (entries.length === 0) return null;
      for (const e of entries) {
        for (let o = this.next; o < e.offset; o++) this.slots.push(null); // a gap (bounded by the window)
        this.next = e.offset + 1;
        if (this.skip.size > 0 && this.skip.delete(e.offset)) {
          this.slots.push(null);
        } else if (this.d.routes.has(e.route)) {
          const item = this.newItem(e.offset, e, e.received_at);
          this.slots.push(item);
          this.queue.push(item);
        } else {
          this.slots.push(null);
        }
      }
      this.advanceHead();
      if (this.queue.length > 0) return this.queue[0]!;
    }
    this.notify();
    return null;
  }

  private send(item: Item, now: number): void {
    let env = item.env;
    if (env === null) {
      const held = this.d.log.delivery.retry(this.name, item.offset);
      if (held === undefined) {
        // Only a rewind or a purge race can get here; nothing to send.
        this.retrying.delete(item.offset);
        item.state = 'done';
        this.purged++; // it left without being delivered or dead-lettered
        this.d.logger.error({ event: 'retry_missing', target: this.name, offset: item.offset }, `target ${this.name}: the retry record of offset ${item.offset} is gone; counted as purged`);
        this.breaker.release();
        return;
      }
      env = item.env = decodeEnvelope(held.envelope);
      item.received_at = env.received_at;
      item.replayedAt = held.replayed_at;
      item.status = held.status;
      item.error = held.error;
      item.firstAttemptAt = held.first_attempt_at;
    }
    item.state = 'inflight';
    item.attempts++;
    if (item.firstAttemptAt === 0) item.firstAttemptAt = now;
    this.inFlight++;
    const gen = this.gen;
    const started = performance.now();
    this.d.sink.send(env, item.attempts).then(
      (r) => this.finished(item, r, gen, started),
      (err: Error) => this.finished(item, { status: null, retryAfter: null, error: `sink failed: ${err.message}`, timedOut: false, unsendable: false }, gen, started),
    );
  }

  private finished(item: Item, r: AttemptResult, gen: number, started: number): void {
    this.inFlight--;
    const now = this.now();
    const verdict = r.unsendable ? 'dead' : classify(r.status, this.permanent);
    const outcome: AttemptOutcome = verdict === 'retry' ? (r.status === null ? (r.timedOut ? 'timeout' : 'error') : 'retry') : verdict === 'pause' ? 'paused' : verdict;
    this.attempts[outcome]++;
    this.d.events.attemptSeconds((performance.now() - started) / 1000);
    if (gen !== this.gen && !item.parked) {
      // Rewound meanwhile: this entry is read again from the log and sent again.
      this.breaker.release();
      this.idle();
      return;
    }
    item.status = r.status ?? 0;
    item.error = r.error;
    if (verdict !== 'delivered') this.lastError = { at: now, status: r.status, message: r.error, offset: item.offset };
    switch (verdict) {
      case 'delivered':
        this.breaker.success();
        if (this.paused) {
          this.paused = false;
          this.d.logger.info({ event: 'target_resumed', target: this.name }, `target ${this.name} answered ${r.status} again: resumed`);
        }
        this.delivered++;
        item.state = 'done';
        item.env = null;
        if (this.retrying.get(item.offset) === item) this.retrying.delete(item.offset);
        if (item.parked) this.unpark.push(item.offset);
        break;
      case 'dead':
        this.breaker.success(); // the upstream works; it refused this request
        this.toDead(item, now);
        break;
      case 'pause':
        this.breaker.trip(now + this.t.retry.max);
        if (!this.paused) {
          this.paused = true;
          this.d.logger.error(
            { event: 'target_paused', target: this.name, status: r.status, offset: item.offset },
            `target ${this.name} answered ${r.status}: paused (check its credentials); one probe every ${Math.round(this.t.retry.max / 1000)} s, nothing is dead-lettered`,
          );
        }
        this.toRetry(item, now + this.t.retry.max);
        break;
      case 'retry': {
        const ra = r.status === null ? null : parseRetryAfter(r.retryAfter, now);
        // An upstream that says when to come back is waited for (holdUntil), not counted as broken.
        if (ra === null) this.breaker.failure(now, (opens) => Math.max(this.t.retry.base, backoffMs(opens + 1, this.t.retry.base, this.t.retry.max, this.random)));
        else {
          this.holdUntil = Math.max(this.holdUntil, now + retryDelayMs(item.attempts, ra, this.t.retry.base, this.t.retry.max));
          // A probe answered with Retry-After ends the probe; the next one waits that long.
          if (this.breaker.state === 'half-open') this.breaker.trip(this.holdUntil);
        }
        if (now - Math.max(item.received_at, item.replayedAt) >= this.t.retry.max_age) {
          item.error = `older than retry.max_age (${Math.round(this.t.retry.max_age / 1000)} s) after ${item.attempts} attempts; last: ${r.error}`;
          this.toDead(item, now);
          break;
        }
        this.toRetry(item, now + retryDelayMs(item.attempts, ra, this.t.retry.base, this.t.retry.max, this.random));
        break;
      }
    }
    this.advanceHead();
    this.idle();
    this.pump();
  }

  private toRetry(item: Item, due: number): void {
    item.state = 'waiting';
    item.due = due;
    this.retrying.set(item.offset, item);
    this.due.push(item);
    // A parked request's record gets its new attempt count.
    if (item.parked) {
      this.park.push({ offset: item.offset, held: this.heldOf(item, due) });
      this.parkedInCommit.push(item);
    }
  }

  private toDead(item: Item, now: number): void {
    item.state = 'dead';
    item.due = now;
    this.deadCount++;
    if (this.retrying.get(item.offset) === item) this.retrying.delete(item.offset);
    if (!item.inWindow) {
      // Parked: the offset passed it long ago; move it from the retries to the dead letters.
      this.dead.push({ offset: item.offset, held: this.heldOf(item, now) });
      if (item.parked) this.unpark.push(item.offset);
      item.env = null;
    }
  }

  private heldOf(item: Item, at: number): Held {
    return { envelope: reencodeEnvelope(item.env!), attempts: item.attempts, status: item.status, error: item.error, first_attempt_at: item.firstAttemptAt, at, replayed_at: item.replayedAt };
  }

  /** Moves `head` over finished, dead and waiting entries; the latter two are written by the next commit. */
  private advanceHead(): void {
    const slots = this.slots;
    let i = this.slotStart;
    while (i < slots.length) {
      const s = slots[i];
      if (s) {
        if (s.state === 'inflight' || s.state === 'pending') break;
        s.inWindow = false;
        if (s.state === 'waiting') {
          s.parked = true;
          this.park.push({ offset: s.offset, held: this.heldOf(s, s.due) });
          this.parkedInCommit.push(s);
        } else if (s.state === 'dead') {
          this.dead.push({ offset: s.offset, held: this.heldOf(s, s.due) });
          s.env = null;
        }
        slots[i] = null;
      }
      i++;
    }
    this.head += i - this.slotStart;
    this.slotStart = i;
    if (this.slotStart > 4096 || this.slotStart === slots.length) {
      this.slots = slots.slice(this.slotStart);
      this.slotStart = 0;
    }
    if (this.head - 1 - this.committedOffset >= COMMIT_EARLY) this.d.events.commitSoon();
  }

  /** The changes since the last commit, or null when there are none. */
  takeCommit(): PendingCommit | null {
    const offset = this.head - 1;
    if (offset === this.committedOffset && this.park.length === 0 && this.unpark.length === 0 && this.dead.length === 0) return null;
    const commit: ConsumerCommit = { target: this.name, offset, park: this.park, unpark: this.unpark, dead: this.dead };
    const p: PendingCommit = { commit, parked: this.parkedInCommit, gen: this.gen };
    this.park = [];
    this.unpark = [];
    this.dead = [];
    this.parkedInCommit = [];
    return p;
  }

  /** The transaction holding `p` is durable. */
  committed(p: PendingCommit): void {
    if (p.commit.offset !== undefined && p.gen === this.gen) this.committedOffset = Math.min(this.head - 1, Math.max(this.committedOffset, p.commit.offset));
    // Parked envelopes are on disk now: memory holds only the index of retrying requests.
    for (const item of p.parked) if (item.state === 'waiting') item.env = null;
    this.pump();
  }

  private schedule(at: number): void {
    if (at === Infinity || this.state !== 'running') return;
    if (this.timer && this.timerAt <= at) return;
    if (this.timer) clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(
      () => {
        this.timer = null;
        this.timerAt = Infinity;
        this.pump();
      },
      Math.min(TIMER_MAX_MS, Math.max(0, at - this.now())),
    );
    this.timer.unref();
  }

  private idle(): void {
    if (this.inFlight > 0) return;
    const w = this.idleWaiters;
    this.idleWaiters = [];
    for (const f of w) f();
  }

  /** Resolves true once nothing is in flight, false if that took longer than `timeoutMs`. */
  private waitIdle(timeoutMs: number): Promise<boolean> {
    if (this.inFlight === 0) return Promise.resolve(true);
    return new Promise((res) => {
      const t = setTimeout(() => res(this.inFlight === 0), timeoutMs);
      this.idleWaiters.push(() => {
        clearTimeout(t);
        res(true);
      });
    });
  }

  /** Lifts a pause now (instead of at the next probe). */
  resume(): boolean {
    const was = this.paused || this.breaker.state !== 'closed' || this.holdUntil > this.now();
    this.paused = false;
    this.breaker.success();
    this.holdUntil = 0;
    // Everything waiting is due now.
    const now = this.now();
    const items = [...this.retrying.values()].filter((i) => i.state === 'waiting');
    this.due.clear();
    for (const i of items) {
      i.due = Math.min(i.due, now);
      this.due.push(i);
    }
    this.pump();
    return was;
  }

  /**
   * Rewinds to `from`: waits for the requests in flight, then re-reads the log from `from`.
   * `persist` stores the new offset (the manager serialises it with the commits).
   */
  async rewind(from: number, persist: (offset: number) => Promise<void>): Promise<{ from: number; previous: number; resent: number }> {
    if (this.state !== 'running') throw new Error(`target ${this.name} is ${this.state}`);
    const { log } = this.d;
    const first = log.firstOffset();
    this.advanceHead();
    if (from < first) throw new Error(`offset ${from} is no longer in the log (retention removed it); the first offset held is ${first}`);
    if (from > this.head) throw new Error(`offset ${from} is past target ${this.name}'s position (${this.head}); replay rewinds, it does not skip`);
    // Retention must not remove entries from `from` on before the new offset is stored.
    const unpin = log.pin(from);
    this.state = 'rewinding';
    try {
      if (!(await this.waitIdle(this.t.timeout + 1000))) throw new Error(`target ${this.name} still has requests in flight after ${this.t.timeout + 1000} ms; try again`);
      this.advanceHead();
      const previous = this.head;
      const n = await log.countRoutes(from, previous - 1, this.d.routes);
      if (this.state !== 'rewinding') throw new Error(`target ${this.name} stopped during the rewind`);
      this.gen++;
      // What the target holds as retrying or dead is not sent again from the log.
      for (const o of this.skip) if (o < from) this.skip.delete(o);
      for (const [o, item] of this.retrying) if (item.parked && o >= from && o < previous) this.skip.add(o);
      for (const o of this.d.log.delivery.deadOffsets(this.name, from, previous - 1)) this.skip.add(o);
      for (const d of this.dead) if (d.offset >= from && d.offset < previous) this.skip.add(d.offset);
      const resent = n - this.skippedIn(from, previous - 1);
      // Entries read but not passed are read again: dead ones not written yet leave the dead count.
      for (const s of this.slots.slice(this.slotStart)) if (s && s.state === 'dead') this.deadCount--;
      for (const [o, item] of this.retrying) {
        if (!item.parked) this.retrying.delete(o);
        else item.gen = this.gen;
      }
      // Parked requests (also those whose record the next commit writes) stay in the retry line.
      this.due.clear();
      for (const item of this.retrying.values()) this.due.push(item);
      this.accepted += resent;
      this.slots = [];
      this.slotStart = 0;
      this.queue = [];
      this.queueStart = 0;
      this.head = this.next = from;
      this.committedOffset = from - 1;
      this.park = this.park.filter((p) => this.retrying.has(p.offset));
      await persist(from - 1);
      this.d.logger.info({ event: 'target_rewound', target: this.name, from, previous, resent }, `target ${this.name} rewound to offset ${from} (was at ${previous}): ${resent} requests will be sent again`);
      return { from, previous, resent };
    } finally {
      unpin();
      if (this.state === 'rewinding') this.state = 'running';
      this.pump();
    }
  }

  /** Dead letters moved back into the retry line (by `crowd dlq replay`). */
  replayed(moved: readonly { offset: number; attempts: number; due: number }[]): void {
    for (const m of moved) {
      this.addParked(m);
      this.deadCount--;
    }
    this.pump();
  }

  /** A request with a retry record on disk, waiting for `due` (its envelope is loaded then). */
  private addParked(r: { offset: number; attempts: number; due: number }): void {
    const item = this.newItem(r.offset, null, 0);
    this.skip.delete(r.offset);
    item.attempts = r.attempts;
    item.due = r.due;
    item.state = 'waiting';
    item.inWindow = false;
    item.parked = true;
    this.retrying.set(r.offset, item);
    this.due.push(item);
  }

  purgedSome(n: number): void {
    this.deadCount -= n;
    this.purged += n;
  }

  lag(): number {
    return this.accepted - this.delivered - this.deadCount - this.purged;
  }

  targetState(): TargetState {
    if (this.state === 'starting') return 'starting';
    if (this.state === 'stopped') return 'stopped';
    if (this.paused) return 'paused';
    if (this.breaker.state !== 'closed') return 'circuit-open';
    if (this.holdUntil > this.now() || this.retrying.size > 0) return 'backoff';
    return 'ok';
  }

  status(): ConsumerStatus {
    const state = this.targetState();
    const top = this.peekDue();
    let nextAt: number | null = null;
    if (state === 'paused' || state === 'circuit-open') nextAt = this.breaker.until;
    else if (state === 'backoff') nextAt = Math.max(top?.due ?? 0, this.holdUntil) || null;
    return {
      name: this.name,
      url: this.t.url,
      state,
      offset: this.head - 1,
      committed_offset: this.committedOffset,
      lag: this.lag(),
      in_flight: this.inFlight,
      retrying: this.retrying.size,
      dead_letters: this.deadCount,
      accepted: this.accepted,
      delivered: this.delivered,
      purged: this.purged,
      attempts: { ...this.attempts },
      last_error: this.lastError ? { at: new Date(this.lastError.at).toISOString(), status: this.lastError.status, message: this.lastError.message, offset: this.lastError.offset } : null,
      next_attempt_at: nextAt === null ? null : new Date(nextAt).toISOString(),
    };
  }

  /** Stops sending; waits (bounded) for the requests in flight. The manager commits afterwards. */
  async stop(graceMs: number): Promise<void> {
    const wasRunning = this.state === 'running' || this.state === 'rewinding';
    this.state = 'stopped';
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (wasRunning) await this.waitIdle(graceMs);
    // Finished entries passed meanwhile go into the last commit.
    this.advanceHead();
  }

  async closeSink(): Promise<void> {
    await this.d.sink.close();
  }
}
