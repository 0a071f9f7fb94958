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
 * - A permanent failure, or a request older than `retry.max_age` (attempted or not: it is
 *   not sent then, whatever holds sending back), becomes a dead letter,
 *   written in the commit that moves the offset past it.
 * - 401/403 and 3xx pause the target: nothing is dead-lettered; one probe per `retry.max`.
 * - Offsets are committed in batches (the delivery manager writes every consumer's changes
 *   in one transaction). After a crash the consumer resumes from the committed offset:
 *   what was delivered after it is delivered again, at most WINDOW_MAX entries.
 *
 * The parts: the main line (`window.ts`), the retry line (`retry-line.ts`), the pump
 * (`pump.ts`), and the ledger (`ledger.ts`), the one record of who owns each offset. This
 * file moves requests between them, keeps the accounting (accepted = delivered + dead +
 * purged + lag at every moment) and checks the invariants at each transition.
 */
import type { TargetConfig } from '../config/schema';
import { decodeEnvelope, reencodeEnvelope, type Envelope } from '../log/codec';
import type { ConsumerCommit, Held, HeldEntry } from '../log/delivery-store';
import type { LagMeter } from '../log/log';
import type { DeliverySource } from './source';
import { formatBytes } from '../config/units';
import type { Logger } from '../observability/logger';
import { newItem, envelopeBytes, type Item } from './item';
import { Ledger, invariant } from './ledger';
import { Pump, type PumpLines } from './pump';
import { classify, backoffMs, parseRetryAfter, pauseHint, retryDelayMs } from './retry';
import { RetryLine } from './retry-line';
import type { AttemptResult, Sink } from './sinks/sink';
import { MainLine, ReadAheadBudget, WINDOW_MAX } from './window';

export { WINDOW_MAX, READ_BATCH, RETRYING_MAX, ReadAheadBudget } from './window';
export type { Item } from './item';

/** Passed entries not yet committed that make the consumer ask for a commit now. */
const COMMIT_EARLY = WINDOW_MAX / 4;
/** At most one log line about new dead letters per target this often. */
export const DEAD_REPORT_MS = 10_000;
/** An attempt's error that says the TLS handshake or the certificate failed. */
const TLS_ERROR = /CERT|ERR_TLS|ERR_SSL|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|certificate|\b(tls|ssl)\b/i;

export type TargetState = 'starting' | 'ok' | 'backoff' | 'circuit-open' | 'paused' | 'stopped';

export type AttemptOutcome = 'delivered' | 'retry' | 'error' | 'timeout' | 'dead' | 'paused';

/** A consumer's part of a commit, and what to do once it is durable. */
export interface PendingCommit {
  readonly commit: ConsumerCommit;
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
  /** The log this target is delivered from (the local log, or a peer's replica). */
  readonly log: DeliverySource;
  readonly sink: Sink;
  readonly logger: Logger;
  readonly events: ConsumerEvents;
  readonly now?: () => number;
  readonly random?: () => number;
  /** Envelope bytes held by all consumers together (default: this target's bound alone). */
  readonly budget?: ReadAheadBudget;
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
  private readonly budget: ReadAheadBudget;
  private readonly ledger: Ledger;
  private readonly main: MainLine;
  private readonly retry = new RetryLine();
  private readonly pumper: Pump;
  private readonly lines: PumpLines;

  /** The offset stored on disk (as of the last finished commit). */
  private committedOffset = 0;
  private gen = 0;
  /** Envelope bytes this consumer holds (pending and in flight requests). */
  private bytes = 0;

  // Changes for the next commit.
  private park: HeldEntry[] = [];
  private unpark: number[] = [];
  private dead: HeldEntry[] = [];
  /** Retry records of the commit being written (not readable from the store until it is durable). */
  private parkInCommit: readonly HeldEntry[] = [];
  /** Dead letters of the commit being written: not in `dead` any more, not readable from the store yet. */
  private deadInCommit: readonly HeldEntry[] = [];
  /** Envelope bytes of `dead` and of `deadInCommit`: bounded by the target's max_read_ahead_bytes. */
  private deadBytes = 0;
  private deadInCommitBytes = 0;

  // Accounting: accepted = delivered + dead + purged + lag, at every moment.
  accepted = 0;
  delivered = 0;
  deadCount = 0;
  purged = 0;
  readonly attempts: Record<AttemptOutcome, number> = { delivered: 0, retry: 0, error: 0, timeout: 0, dead: 0, paused: 0 };

  private state: 'starting' | 'running' | 'rewinding' | 'stopped' = 'starting';
  private paused = false;
  private lastError: { at: number; status: number | null; message: string; offset: number } | null = null;
  private pumpQueued = false;
  private idleWaiters: (() => void)[] = [];

  // Log lines about trouble: once per change, not per attempt.
  /** The state the last line reported (or the state at start). */
  private reportedState: TargetState = 'ok';
  /** Dead letters not reported yet, and when the last report was. */
  private deadUnreported = 0;
  private deadLastError = '';
  private deadReportedAt = -Infinity;
  private deadFirstAt = 0;
  private deadTimer: NodeJS.Timeout | null = null;
  // targets[].max_lag_bytes: entries of the main line up to `lagCut` (and from `lagFrom`, the
  // position before the last rewind) go to the dead letters unsent.
  private meter: LagMeter | null = null;
  private lagCut = 0;
  private lagFrom = 0;
  /** Entries below this offset are sent again by the rewind at `rewoundAt`: their max_age counts from it. */
  private rewoundBelow = 0;
  private rewoundAt = 0;

  /** The TLS failure reported last (until an attempt gets an answer). */
  private tlsReported: string | null = null;

  constructor(deps: ConsumerDeps) {
    this.d = deps;
    this.t = deps.target;
    this.name = deps.target.name;
    this.now = deps.now ?? Date.now;
    this.random = deps.random ?? Math.random;
    this.permanent = new Set(deps.target.retry.permanent);
    this.budget = deps.budget ?? new ReadAheadBudget(deps.target.max_read_ahead_bytes);
    this.ledger = new Ledger(this.name);
    this.pumper = new Pump(deps.target.ordered ? 1 : deps.target.concurrency, deps.target.rate, this.now, () => this.pump());
    this.main = new MainLine({
      name: this.name,
      log: deps.log,
      routes: deps.routes,
      ledger: this.ledger,
      logger: deps.logger,
      room: () => this.room(),
      hold: (item, env, bytes) => this.hold(item, env, bytes),
      commitSoon: () => this.d.events.commitSoon(),
      notify: () => this.notify(),
      afterRead: () => this.advance(),
      gen: () => this.gen,
      resentAt: (offset) => (offset < this.rewoundBelow ? this.rewoundAt : 0),
    });
    this.lines = {
      peekRetry: () => this.retry.peek(this.gen),
      peekExpiredRetry: (now) => this.retry.peekExpired(now, this.gen, (i) => this.expiresAt(i)),
      peekMain: () => this.main.peek(this.committedOffset, this.retry.size),
      mainHeld: () => this.t.ordered && this.retry.size > 0,
      canHold: (item) => item.env !== null || this.room() > 0,
      send: (item, fromRetry, now) => {
        if (fromRetry) this.retry.pop();
        else this.main.take();
        this.send(item, now);
      },
      expiresAt: (item) => this.expiresAt(item),
      expire: (item, fromRetry, now) => this.expire(item, fromRetry, now),
    };
  }

  /** The breaker of this target's upstream. */
  get breaker() {
    return this.pumper.breaker;
  }

  // --- Envelope bytes -----------------------------------------------------------------------

  /** Bytes this consumer may still take: > 0 whenever it holds nothing (one request always fits). */
  private room(): number {
    if (this.bytes === 0) return Infinity;
    return Math.min(this.t.max_read_ahead_bytes - this.bytes, this.budget.limit - this.budget.used);
  }

  private hold(item: Item, env: Envelope, bytes: number): void {
    invariant(item.env === null && item.bytes === 0, () => `target ${this.name}: offset ${item.offset} holds its envelope already`);
    item.env = env;
    item.bytes = bytes;
    this.bytes += bytes;
    this.budget.used += bytes;
  }

  private release(item: Item): void {
    this.bytes -= item.bytes;
    this.budget.used -= item.bytes;
    item.bytes = 0;
    item.env = null;
  }

  /** Envelope bytes held now (pending and in flight requests). */
  heldBytes(): number {
    return this.bytes;
  }

  /**
   * Reads an envelope again: from the retry record once the main line passed the request,
   * else from the log (which keeps it: the committed offset is below it). Null when gone.
   */
  private reload(item: Item): Envelope | null {
    if (item.parked) {
      const held = this.pendingRecord(item.offset) ?? this.d.log.delivery.retry(this.name, item.offset);
      if (held === undefined) return null;
      const env = decodeEnvelope(held.envelope);
      if (!item.loaded) {
        item.loaded = true;
        item.received_at = env.received_at;
        item.replayedAt = held.replayed_at;
        item.status = held.status;
        item.error = held.error;
        item.firstAttemptAt = held.first_attempt_at;
      }
      return env;
    }
    const [env] = this.d.log.read(item.offset, 1, item.offset, true);
    return env !== undefined && env.offset === item.offset ? env : null;
  }

  /** The retry record of `offset` that the next commit, or the one being written, stores. */
  private pendingRecord(offset: number): Held | undefined {
    for (const list of [this.park, this.parkInCommit]) {
      for (let i = list.length - 1; i >= 0; i--) if (list[i]!.offset === offset) return list[i]!.held;
    }
    return undefined;
  }

  // --- Start --------------------------------------------------------------------------------

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
    this.main.reset(this.committedOffset + 1);
    for (const r of store.retryIndex(this.name)) this.addParked(r, undefined);
    for (const o of store.deadOffsets(this.name, this.committedOffset + 1)) this.ledger.move(o, undefined, 'dead');
    this.deadCount = store.deadCount(this.name);
    this.accepted = this.retry.size + this.deadCount;
    return { backlogFrom: this.main.head, backlogThrough: log.durableOffset(), store: storeOffset };
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
        this.accepted += n - this.ledger.heldOutsideIn(backlog.backlogFrom, backlog.backlogThrough);
      } catch (err) {
        // Stopped meanwhile (the log closed under the count): nothing to start.
        if (this.state !== 'starting') return;
        // The log could not be read: without the count the accounting would be wrong (and
        // its invariants would stop the node later, less clearly); the caller crash-stops.
        throw new Error(`target ${this.name}: counting the backlog failed: ${(err as Error).message}`, { cause: err });
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

  /** Sends whatever may be sent now; sets a timer for the next moment something may. */
  pump(): void {
    if (this.state !== 'running') return;
    this.pumper.run(this.lines);
    this.reportState();
    this.reportDead();
  }

  // --- Log lines about trouble --------------------------------------------------------------

  /** One line per state change (backoff, circuit-open, recovered); paused has its own lines. */
  private reportState(): void {
    const state = this.targetState();
    const was = this.reportedState;
    if (state === was || state === 'starting' || state === 'stopped') return;
    this.reportedState = state;
    if (state === 'paused' || was === 'paused') return; // target_paused / target_resumed
    const last = this.lastError ? `; last: ${this.lastError.message}` : '';
    const fields = { event: 'target_state', target: this.name, state, previous: was, retrying: this.retry.size, lag: this.lag() };
    if (state === 'circuit-open') {
      this.d.logger.warn(fields, `target ${this.name}: circuit open after ${this.pumper.breaker.failures} failed attempts in a row${last}; one probe per backoff step (at most ${Math.round(this.t.retry.max / 1000)} s)`);
    } else if (state === 'backoff') {
      this.d.logger.info(fields, `target ${this.name}: backing off (${this.retry.size} requests waiting for a retry)${last}`);
    } else {
      this.d.logger.info(fields, `target ${this.name} recovered (was ${was}); lag ${this.lag()}`);
    }
  }

  /**
   * Counts a new dead letter. The line comes at the end of the turn (so that one line covers
   * a burst) and at most once per DEAD_REPORT_MS, with the count since the last line.
   */
  private noteDead(error: string): void {
    if (this.deadUnreported === 0) this.deadFirstAt = this.now();
    this.deadUnreported++;
    this.deadLastError = error;
    this.armDeadReport();
  }

  private armDeadReport(): void {
    if (this.deadTimer !== null || this.state === 'stopped') return;
    const wait = Math.max(0, Math.min(DEAD_REPORT_MS, this.deadReportedAt + DEAD_REPORT_MS - this.now()));
    this.deadTimer = setTimeout(() => {
      this.deadTimer = null;
      this.reportDead(true);
    }, wait);
    this.deadTimer.unref();
  }

  /** Reports the dead letters counted since the last line, if it is time (`timer`: the end of their turn has passed). */
  private reportDead(timer = false): void {
    if (this.deadUnreported === 0) return;
    const now = this.now();
    if (now < this.deadReportedAt + DEAD_REPORT_MS || (!timer && now <= this.deadFirstAt)) {
      this.armDeadReport();
      return;
    }
    const count = this.deadUnreported;
    this.deadUnreported = 0;
    this.deadReportedAt = now;
    this.d.logger.warn(
      { event: 'dead_letters', target: this.name, count, total: this.deadCount },
      `target ${this.name}: ${count} new dead letters (${this.deadCount} in the store); last: ${this.deadLastError} (crowd dlq list --target ${this.name})`,
    );
  }

  /** One line per TLS failure (again only after an attempt got an answer, or the error changed). */
  private reportTls(r: AttemptResult): void {
    if (r.status !== null) {
      this.tlsReported = null;
      return;
    }
    if (!TLS_ERROR.test(r.error) || this.tlsReported === r.error) return;
    this.tlsReported = r.error;
    this.d.logger.error({ event: 'target_tls_failed', target: this.name, url: this.t.url, error: r.error }, `target ${this.name}: TLS failure: ${r.error} (${this.t.url}); requests are retried`);
  }

  // --- Attempts -----------------------------------------------------------------------------

  private send(item: Item, now: number): void {
    let env = item.env;
    if (env === null) {
      env = this.reload(item);
      if (env === null) {
        // Only a rewind or a purge race can get here; nothing to send.
        this.gone(item);
        this.pumper.breaker.release();
        return;
      }
      this.hold(item, env, envelopeBytes(env));
    }
    item.state = 'inflight';
    item.attempts++;
    if (item.firstAttemptAt === 0) item.firstAttemptAt = now;
    this.pumper.inFlight++;
    const gen = this.gen;
    const started = performance.now();
    this.d.sink.send(env, item.attempts).then(
      (r) => this.finished(item, r, gen, started),
      (err: Error) => this.finished(item, { status: null, retryAfter: null, error: `sink failed: ${err.message}`, timedOut: false, unsendable: false }, gen, started),
    );
  }

  // --- retry.max_age and max_lag_bytes: dead letters without an attempt --------------------

  /**
   * targets[].max_lag_bytes: measures the bytes of the log after this target's position; the
   * entries before the cut (the oldest beyond the bound) are dead-lettered by the pump.
   */
  checkLag(): void {
    if (this.t.max_lag_bytes <= 0 || this.state !== 'running') return;
    this.meter ??= this.d.log.lagMeter(this.committedOffset);
    const cut = this.d.log.measureLag(this.meter, this.t.max_lag_bytes);
    if (cut <= this.lagCut) return;
    this.lagCut = cut;
    if (cut >= this.main.head) this.pump();
  }

  /** An entry of the main line the target holds beyond targets[].max_lag_bytes. */
  private overLag(item: Item): boolean {
    return item.inWindow && item.offset <= this.lagCut && item.offset >= this.lagFrom;
  }

  /**
   * Where retry.max_age counts from: the entry's receipt, or its replay (from the dead
   * letters, or by the rewind that reads it again: `crowd replay` of old entries resends
   * them, it does not dead-letter them for their age; the main line sets it, and a retry
   * record keeps it).
   */
  private ageFrom(item: Item): number {
    return Math.max(item.received_at, item.replayedAt);
  }

  /** When `item` becomes older than retry.max_age (see ageFrom). */
  private expiresAt(item: Item): number {
    if (this.overLag(item)) return -Infinity;
    if (item.parked && !item.loaded && this.reload(item) === null) return Infinity; // gone: `send` counts it
    return this.ageFrom(item) + this.t.retry.max_age;
  }

  /** Dead letters waiting for a commit hold this many envelope bytes at most (then the commit comes first). */
  private deadRoom(): boolean {
    if (this.deadBytes + this.deadInCommitBytes < this.t.max_read_ahead_bytes) return true;
    this.d.events.commitSoon();
    return false;
  }

  /** An entry older than retry.max_age, attempted or not, becomes a dead letter without being sent. */
  private expire(item: Item, fromRetry: boolean, now: number): boolean {
    if (!this.deadRoom()) return false;
    // A retry leaves its line through toDead (its heap entries are dropped as stale).
    if (!fromRetry) this.main.take();
    if (item.env !== null) this.release(item);
    const why = this.overLag(item)
      ? `over targets[].max_lag_bytes (${formatBytes(this.t.max_lag_bytes)}): the oldest entry this target held back in the log`
      : `older than retry.max_age (${Math.round(this.t.retry.max_age / 1000)} s)`;
    item.error = item.attempts === 0 ? `${why}: never attempted` : `${why} after ${item.attempts} attempts; last: ${item.error}`;
    this.toDead(item, now);
    if (item.inWindow) this.advance();
    this.check();
    return true;
  }

  private pushDead(entry: HeldEntry): void {
    this.dead.push(entry);
    this.deadBytes += entry.held.envelope.byteLength;
  }

  /** A request whose envelope is gone (its retry record was removed): counted as purged. */
  private gone(item: Item): void {
    this.d.logger.error({ event: 'retry_missing', target: this.name, offset: item.offset }, `target ${this.name}: the stored request of offset ${item.offset} is gone; counted as purged`);
    this.retry.remove(item);
    item.state = 'done';
    this.purged++; // it left without being delivered or dead-lettered
    if (!item.inWindow) this.leaveRetry(item, 'done');
  }

  /** A request of the retry line outside the window finished: ahead of the main line, it is marked so that the main line skips it. */
  private leaveRetry(item: Item, as: 'done' | 'dead'): void {
    // At or past the head: the main line reads it (again, after a rewind) before passing it,
    // and skips it while the mark lasts; the mark ends when the head passes it.
    this.ledger.move(item.offset, 'retry', item.offset >= this.main.head ? as : undefined);
  }

  private finished(item: Item, r: AttemptResult, gen: number, started: number): void {
    this.pumper.inFlight--;
    this.release(item);
    const now = this.now();
    const verdict = r.unsendable ? 'dead' : classify(r.status, this.permanent);
    const outcome: AttemptOutcome = verdict === 'retry' ? (r.status === null ? (r.timedOut ? 'timeout' : 'error') : 'retry') : verdict === 'pause' ? 'paused' : verdict;
    this.attempts[outcome]++;
    this.d.events.attemptSeconds((performance.now() - started) / 1000);
    if (gen !== this.gen && !item.parked) {
      // Rewound meanwhile: this entry is read again from the log and sent again.
      this.pumper.breaker.release();
      this.idle();
      return;
    }
    item.status = r.status ?? 0;
    item.error = r.error;
    this.reportTls(r);
    if (verdict !== 'delivered') this.lastError = { at: now, status: r.status, message: r.error, offset: item.offset };
    const b = this.pumper.breaker;
    switch (verdict) {
      case 'delivered':
        b.success();
        if (this.paused) {
          this.paused = false;
          this.d.logger.info({ event: 'target_resumed', target: this.name }, `target ${this.name} answered ${r.status} again: resumed`);
        }
        this.delivered++;
        item.state = 'done';
        this.retry.remove(item);
        if (!item.inWindow) this.leaveRetry(item, 'done');
        if (item.parked) this.unpark.push(item.offset);
        break;
      case 'dead':
        b.success(); // the upstream works; it refused this request
        this.toDead(item, now);
        break;
      case 'pause':
        b.trip(now + this.t.retry.max);
        if (!this.paused) {
          this.paused = true;
          this.d.logger.error(
            { event: 'target_paused', target: this.name, status: r.status, error: r.error, offset: item.offset },
            `target ${this.name}: ${r.error}: paused (${pauseHint(r.status)}); one probe every ${Math.round(this.t.retry.max / 1000)} s, nothing is dead-lettered`,
          );
        }
        this.toRetry(item, now + this.t.retry.max);
        break;
      case 'retry': {
        const ra = r.status === null ? null : parseRetryAfter(r.retryAfter, now);
        // An upstream that says when to come back is waited for (holdUntil), not counted as broken.
        if (ra === null) b.failure(now, (opens) => Math.max(this.t.retry.base, backoffMs(opens + 1, this.t.retry.base, this.t.retry.max, this.random)));
        else {
          this.pumper.holdUntil = Math.max(this.pumper.holdUntil, now + retryDelayMs(item.attempts, ra, this.t.retry.base, this.t.retry.max));
          // A probe answered with Retry-After ends the probe; the next one waits that long.
          if (b.state === 'half-open') b.trip(this.pumper.holdUntil);
        }
        if (now - this.ageFrom(item) >= this.t.retry.max_age) {
          item.error = `older than retry.max_age (${Math.round(this.t.retry.max_age / 1000)} s) after ${item.attempts} attempts; last: ${r.error}`;
          this.toDead(item, now);
          break;
        }
        this.toRetry(item, now + retryDelayMs(item.attempts, ra, this.t.retry.base, this.t.retry.max, this.random));
        break;
      }
    }
    this.advance();
    this.check();
    this.idle();
    this.pump();
  }

  private toRetry(item: Item, due: number): void {
    item.state = 'waiting';
    // Due at the latest when it becomes older than retry.max_age: then it is dead-lettered unsent.
    const expires = this.ageFrom(item) + this.t.retry.max_age;
    item.due = Math.min(due, expires);
    this.retry.wait(item, expires);
    // A parked request's record gets its new attempt count (the envelope comes from the old record).
    if (item.parked) this.parkRecord(item, item.due);
  }

  private toDead(item: Item, now: number): void {
    item.state = 'dead';
    item.due = now;
    this.deadCount++;
    this.noteDead(item.error);
    this.retry.remove(item);
    if (!item.inWindow) {
      // Parked: the offset passed it long ago; move it from the retries to the dead letters.
      const env = this.reload(item);
      if (env) this.pushDead({ offset: item.offset, held: this.heldOf(item, env, now) });
      if (item.parked) this.unpark.push(item.offset);
      this.leaveRetry(item, 'dead');
    }
  }

  private heldOf(item: Item, env: Envelope, at: number): Held {
    return { envelope: reencodeEnvelope(env), attempts: item.attempts, status: item.status, error: item.error, first_attempt_at: item.firstAttemptAt, at, replayed_at: item.replayedAt };
  }

  /** Writes (in the next commit) the retry record of `item`, due at `due`. */
  private parkRecord(item: Item, due: number): void {
    const env = this.reload(item);
    if (env === null) {
      // Neither in the log nor in a record: nothing left to retry with.
      this.retry.remove(item);
      item.state = 'done';
      this.purged++;
      if (item.inWindow) this.ledger.move(item.offset, 'window', undefined);
      else this.leaveRetry(item, 'done');
      this.d.logger.error({ event: 'retry_missing', target: this.name, offset: item.offset }, `target ${this.name}: the stored request of offset ${item.offset} is gone; counted as purged`);
      return;
    }
    item.parked = true;
    this.park.push({ offset: item.offset, held: this.heldOf(item, env, due) });
  }

  /** Moves the main line's head over finished, dead and waiting entries; the latter two are written by the next commit. */
  private advance(): void {
    this.main.advance(this.passed);
    if (this.main.head - 1 - this.committedOffset >= COMMIT_EARLY) this.d.events.commitSoon();
  }

  private readonly passed = (s: Item): boolean => {
    if (s.state === 'waiting') {
      // Read from the log before the window releases it: the record holds the envelope.
      this.parkRecord(s, s.due);
      if (s.parked) this.ledger.move(s.offset, 'window', 'retry');
    } else if (s.state === 'dead') {
      if (!this.deadRoom()) return false;
      const env = this.reload(s);
      invariant(env !== null, () => `target ${this.name}: the dead letter at offset ${s.offset} is not in the log`);
      this.pushDead({ offset: s.offset, held: this.heldOf(s, env, s.due) });
      this.ledger.move(s.offset, 'window', undefined);
    } else {
      this.ledger.move(s.offset, 'window', undefined);
    }
    return true;
  };

  /** accepted = delivered + dead + purged + lag with lag >= 0; committed <= passed < read <= durable + 1. */
  private check(): void {
    const lag = this.lag();
    invariant(lag >= 0, () => `target ${this.name}: lag ${lag} < 0 (accepted ${this.accepted}, delivered ${this.delivered}, dead ${this.deadCount}, purged ${this.purged})`);
    invariant(this.committedOffset <= this.main.head - 1, () => `target ${this.name}: committed offset ${this.committedOffset} past the head ${this.main.head}`);
    invariant(this.main.head <= this.main.next && this.main.next <= this.d.log.durableOffset() + 1, () => `target ${this.name}: head ${this.main.head}, next ${this.main.next}, durable ${this.d.log.durableOffset()}`);
    invariant(this.bytes >= 0 && this.pumper.inFlight >= 0, () => `target ${this.name}: ${this.bytes} bytes held, ${this.pumper.inFlight} in flight`);
  }

  // --- Commits ------------------------------------------------------------------------------

  /** The changes since the last commit, or null when there are none. */
  takeCommit(): PendingCommit | null {
    const offset = this.main.head - 1;
    if (offset === this.committedOffset && this.park.length === 0 && this.unpark.length === 0 && this.dead.length === 0) return null;
    const commit: ConsumerCommit = { target: this.name, offset, park: this.park, unpark: this.unpark, dead: this.dead };
    const p: PendingCommit = { commit, gen: this.gen };
    this.parkInCommit = this.park;
    this.deadInCommit = this.dead;
    this.deadInCommitBytes = this.deadBytes;
    this.deadBytes = 0;
    this.park = [];
    this.unpark = [];
    this.dead = [];
    return p;
  }

  /** The transaction holding `p` is durable. */
  committed(p: PendingCommit): void {
    if (p.commit.offset !== undefined && p.gen === this.gen) this.committedOffset = Math.min(this.main.head - 1, Math.max(this.committedOffset, p.commit.offset));
    if (this.parkInCommit === p.commit.park) this.parkInCommit = [];
    if (this.deadInCommit === p.commit.dead) {
      this.deadInCommit = [];
      this.deadInCommitBytes = 0;
    }
    // Dead letters held back by their byte bound can be passed now.
    if (this.state === 'running') this.advance();
    this.check();
    this.pump();
  }

  // --- Waiting for requests in flight -------------------------------------------------------

  private idle(): void {
    if (this.pumper.inFlight > 0) return;
    const w = this.idleWaiters;
    this.idleWaiters = [];
    for (const f of w) f();
  }

  /** Resolves true once nothing is in flight, false if that took longer than `timeoutMs`. */
  private waitIdle(timeoutMs: number): Promise<boolean> {
    if (this.pumper.inFlight === 0) return Promise.resolve(true);
    return new Promise((res) => {
      const t = setTimeout(() => res(this.pumper.inFlight === 0), timeoutMs);
      this.idleWaiters.push(() => {
        clearTimeout(t);
        res(true);
      });
    });
  }

  // --- Operator actions ---------------------------------------------------------------------

  /** Lifts a pause now (instead of at the next probe). */
  resume(): boolean {
    const p = this.pumper;
    const was = this.paused || p.breaker.state !== 'closed' || p.holdUntil > this.now();
    this.paused = false;
    p.breaker.success();
    p.holdUntil = 0;
    // Everything waiting is due now.
    const now = this.now();
    this.retry.reorder((i) => (i.due = Math.min(i.due, now)));
    this.pump();
    return was;
  }

  /**
   * Rewinds to `from`: waits for the requests in flight, then re-reads the log from `from`.
   * `persist` stores the new offset (the manager serialises it with the commits).
   */
  async rewind(
    from: number,
    exclusive: <T>(op: () => Promise<T>) => Promise<T>,
    persist: (offset: number) => Promise<void>,
  ): Promise<{ from: number; previous: number; resent: number }> {
    if (this.state !== 'running') throw new Error(`target ${this.name} is ${this.state}`);
    const { log } = this.d;
    const first = log.firstOffset();
    this.advance();
    if (from < first) throw new Error(`offset ${from} is no longer in the log (retention removed it); the first offset held is ${first}`);
    if (from > this.main.head) throw new Error(`offset ${from} is past target ${this.name}'s position (${this.main.head}); replay rewinds, it does not skip`);
    // Retention must not remove entries from `from` on before the new offset is stored.
    const unpin = log.pin(from);
    this.state = 'rewinding';
    try {
      if (!(await this.waitIdle(this.t.timeout + 1000))) throw new Error(`target ${this.name} still has requests in flight after ${this.t.timeout + 1000} ms; try again`);
      // The rest runs between delivery commits (`exclusive`), never while one is being written:
      // a commit in flight holds dead letters and retry records that are neither in memory nor
      // readable from the store yet.
      return await exclusive(() => this.rewound(from, persist));
    } finally {
      unpin();
      if (this.state === 'rewinding') this.state = 'running';
      this.pump();
    }
  }

  /** The rewind itself (see rewind): nothing in flight, no delivery commit being written. */
  private async rewound(from: number, persist: (offset: number) => Promise<void>): Promise<{ from: number; previous: number; resent: number }> {
    const { log } = this.d;
    this.advance();
    const previous = this.main.head;
    const n = await log.countRoutes(from, previous - 1, this.d.routes);
    if (this.state !== 'rewinding') throw new Error(`target ${this.name} stopped during the rewind`);
    this.gen++;
    // Entries read but not passed are read again: they leave the window (and the retry line);
    // dead ones not written yet leave the dead count.
    for (const s of this.main.unpassed()) {
      if (s.state === 'dead') this.deadCount--;
      if (s.env !== null) this.release(s);
      this.ledger.move(s.offset, 'window', undefined);
    }
    this.retry.dropUnparked();
    // Dead letters the main line will reach again are not sent from the log.
    this.ledger.forgetBelow(from);
    for (const o of log.delivery.deadOffsets(this.name, from, previous - 1)) this.ledger.move(o, [undefined, 'dead'], 'dead');
    // Also those written by a commit still in flight (taken from `dead`, not yet in the store).
    for (const list of [this.dead, this.deadInCommit]) {
      for (const d of list) if (d.offset >= from && d.offset < previous) this.ledger.move(d.offset, [undefined, 'dead'], 'dead');
    }
    // Parked requests (also those whose record the next commit writes) stay in the retry line.
    for (const item of this.retry.values()) item.gen = this.gen;
    this.retry.reorder();
    const resent = n - this.ledger.heldOutsideIn(from, previous - 1);
    this.accepted += resent;
    this.main.reset(from);
    this.committedOffset = from - 1;
    // What the rewind sends again is not dead-lettered by max_lag_bytes, nor for its age.
    this.lagFrom = Math.max(this.lagFrom, previous);
    this.rewoundBelow = Math.max(this.rewoundBelow, previous);
    this.rewoundAt = this.now();
    this.park = this.park.filter((p) => this.retry.has(p.offset));
    this.check();
    await persist(from - 1);
    this.d.logger.info({ event: 'target_rewound', target: this.name, from, previous, resent }, `target ${this.name} rewound to offset ${from} (was at ${previous}): ${resent} requests will be sent again`);
    return { from, previous, resent };
  }

  /** The first offset the main line has not passed. */
  position(): number {
    if (this.state === 'running') this.advance();
    return this.main.head;
  }

  /** Dead letters moved back into the retry line (by `crowd dlq replay`). */
  replayed(moved: readonly { offset: number; attempts: number; due: number }[]): void {
    for (const m of moved) {
      // Behind the main line (no owner), or ahead of it after a rewind (dead): either way the
      // retry line sends it now, and the main line skips it when it gets there.
      this.addParked(m, [undefined, 'dead']);
      this.deadCount--;
    }
    this.check();
    this.pump();
  }

  /** A request with a retry record on disk, waiting for `due` (its envelope is loaded then). */
  private addParked(r: { offset: number; attempts: number; due: number }, from: undefined | readonly (undefined | 'dead')[]): void {
    this.ledger.move(r.offset, from, 'retry');
    const item = newItem(r.offset, null, 0, this.gen);
    item.attempts = r.attempts;
    item.due = r.due;
    item.state = 'waiting';
    item.inWindow = false;
    item.parked = true;
    item.loaded = false;
    // Its record's due time is at most its max_age (a lower bound until the record is loaded).
    this.retry.wait(item, r.due);
  }

  purgedSome(n: number): void {
    this.deadCount -= n;
    this.purged += n;
  }

  lag(): number {
    return this.accepted - this.delivered - this.deadCount - this.purged;
  }

  // --- Status -------------------------------------------------------------------------------

  targetState(): TargetState {
    if (this.state === 'starting') return 'starting';
    if (this.state === 'stopped') return 'stopped';
    if (this.paused) return 'paused';
    if (this.pumper.breaker.state !== 'closed') return 'circuit-open';
    if (this.pumper.holdUntil > this.now() || this.retry.size > 0) return 'backoff';
    return 'ok';
  }

  status(): ConsumerStatus {
    const state = this.targetState();
    const top = this.retry.peek(this.gen);
    let nextAt: number | null = null;
    if (state === 'paused' || state === 'circuit-open') nextAt = this.pumper.breaker.until;
    else if (state === 'backoff') nextAt = Math.max(top?.due ?? 0, this.pumper.holdUntil) || null;
    return {
      name: this.name,
      url: this.t.url,
      state,
      offset: this.main.head - 1,
      committed_offset: this.committedOffset,
      lag: this.lag(),
      in_flight: this.pumper.inFlight,
      retrying: this.retry.size,
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
    this.pumper.stop();
    if (this.deadTimer) clearTimeout(this.deadTimer);
    this.deadTimer = null;
    if (wasRunning) await this.waitIdle(graceMs);
    // Finished entries passed meanwhile go into the last commit.
    this.advance();
  }

  async closeSink(): Promise<void> {
    await this.d.sink.close();
  }
}
