/**
 * The main line of one target: reads the log past the target's position (never past the
 * durable watermark), keeps the entries read in a window of slots from `head`, queues the
 * ones to send, and moves `head` over the contiguous prefix of passed entries.
 *
 * Bounds: at most WINDOW_MAX offsets between the committed offset and the read position (the
 * most a crash can send again), and envelopes held within the target's byte bound and the
 * bound over all targets (`ReadAheadBudget`): an entry read past them keeps only its offset
 * and is read again when it is sent. Reads are sized by the largest envelope seen lately.
 */
import type { Envelope } from '../log/codec';
import type { DeliverySource } from './source';
import type { Logger } from '../observability/logger';
import { envelopeBytes, newItem, type Item } from './item';
import type { Ledger } from './ledger';

/** Log entries between the committed offset and the read position: bounds re-deliveries after a crash. */
export const WINDOW_MAX = 8192;
/** Entries read from the log at a time, at most. */
export const READ_BATCH = 512;
/** Requests waiting for a retry (in memory and parked); past it, no new entries are read. */
export const RETRYING_MAX = 100_000;

/** Envelope bytes held by every consumer together. */
export class ReadAheadBudget {
  used = 0;
  constructor(readonly limit: number) {}
}

export interface MainLineDeps {
  readonly name: string;
  readonly log: DeliverySource;
  readonly routes: ReadonlySet<string>;
  readonly ledger: Ledger;
  readonly logger: Logger;
  /** Bytes the consumer may still hold; > 0 whenever it holds nothing. */
  room(): number;
  /** The consumer holds `env` for `item` (counted against the bounds). */
  hold(item: Item, env: Envelope, bytes: number): void;
  commitSoon(): void;
  notify(): void;
  /** When a rewind sent `offset` again (its retry.max_age counts from then), or 0. */
  resentAt(offset: number): number;
  /** The consumer's generation (changed by each rewind). */
  gen(): number;
  /** Entries were read: the consumer moves the head over those it does not send. */
  afterRead(): void;
}

export class MainLine {
  /** Offset of the first slot: everything before it is passed (finished or held). */
  head = 1;
  /** Next offset to read from the log. */
  next = 1;
  /** Window slots from `head`: null when finished or not for this target. */
  private slots: (Item | null)[] = [];
  private slotStart = 0;
  /** Read from the log, not sent yet, in offset order. */
  private queue: Item[] = [];
  private queueStart = 0;
  /** Bytes of the largest envelope read lately (0: none read yet): sizes the next read. */
  private estimate = 0;

  constructor(private readonly d: MainLineDeps) {}

  /** Starts (or starts again) at `offset`, with nothing read. */
  reset(offset: number): void {
    this.slots = [];
    this.slotStart = 0;
    this.queue = [];
    this.queueStart = 0;
    this.head = this.next = offset;
  }

  /** Entries read and not passed (for a rewind, which drops them). */
  unpassed(): Item[] {
    const out: Item[] = [];
    for (let i = this.slotStart; i < this.slots.length; i++) {
      const s = this.slots[i];
      if (s) out.push(s);
    }
    return out;
  }

  /** Takes the item `peek` returned. */
  take(): void {
    this.queueStart++;
  }

  /** The next entry to send, reading from the log when the queue is empty. */
  peek(committedOffset: number, retrying: number): Item | null {
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
        this.d.logger.warn({ event: 'target_offset_behind', target: this.d.name, offset: this.next - 1, first_offset: first }, `target ${this.d.name}: entries ${this.next}-${first - 1} are no longer in the log; it goes on at ${first}`);
        this.head = this.next = first;
      }
      if (this.next - committedOffset > WINDOW_MAX || retrying >= RETRYING_MAX) {
        this.d.commitSoon();
        return null;
      }
      const room = this.d.room();
      if (room <= 0) return null; // the consumer is woken when envelopes are released
      const limit = this.estimate === 0 ? 1 : Math.max(1, Math.min(READ_BATCH, Math.floor(room / this.estimate)));
      const through = Math.min(durable, committedOffset + WINDOW_MAX);
      const entries = log.read(this.next, limit, through, true);
      if (entries.length === 0) return null;
      let largest = 0;
      // Envelopes are held for a prefix of the queue only: a request that could not be held
      // is not overtaken by later ones (whatever is held then is in flight and comes back).
      let holding = true;
      for (const e of entries) {
        for (let o = this.next; o < e.offset; o++) this.slots.push(null); // a gap (bounded by the window)
        this.next = e.offset + 1;
        const bytes = envelopeBytes(e);
        if (bytes > largest) largest = bytes;
        const owner = this.d.ledger.owner(e.offset);
        if (owner === 'retry') {
          this.slots.push(null); // the retry line holds it
        } else if (owner === 'dead' || owner === 'done') {
          // A dead letter, or finished by the retry line: skipped. The mark stays until the head
          // passes it, so that a rewind before the head gets there skips it again.
          this.slots.push(null);
        } else if (this.d.routes.has(e.route)) {
          this.d.ledger.move(e.offset, undefined, 'window');
          const item = newItem(e.offset, null, e.received_at, this.d.gen());
          item.replayedAt = this.d.resentAt(e.offset);
          if (holding && bytes <= this.d.room()) this.d.hold(item, e, bytes);
          else holding = false;
          this.slots.push(item);
          this.queue.push(item);
        } else {
          this.slots.push(null);
        }
      }
      this.estimate = Math.max(largest, Math.floor(this.estimate / 2));
      this.d.afterRead();
      if (this.queue.length > 0) return this.queue[0]!;
    }
    this.d.notify();
    return null;
  }

  /**
   * Moves `head` over finished, dead and waiting entries; `passed` gets each item it passes
   * (the consumer parks the waiting ones and writes the dead ones in the next commit), and
   * may answer false to stop there (the item stays in the window).
   */
  advance(passed: (item: Item) => boolean): void {
    const slots = this.slots;
    let i = this.slotStart;
    while (i < slots.length) {
      const s = slots[i];
      if (s) {
        if (s.state === 'inflight' || s.state === 'pending') break;
        if (!passed(s)) break; // not now (the dead letters waiting for a commit are at their byte bound)
        s.inWindow = false;
        slots[i] = null;
      } else {
        // A skipped offset: a dead letter's or a done one's mark ends here (a retry keeps its own).
        const offset = this.head + (i - this.slotStart);
        const owner = this.d.ledger.owner(offset);
        if (owner === 'dead' || owner === 'done') this.d.ledger.move(offset, owner, undefined);
      }
      i++;
    }
    this.head += i - this.slotStart;
    this.slotStart = i;
    if (this.slotStart > 4096 || this.slotStart === slots.length) {
      this.slots = slots.slice(this.slotStart);
      this.slotStart = 0;
    }
  }
}
