/**
 * The retry line of one target: requests that failed and wait for another attempt, by
 * offset and by due time. A request waiting here holds no envelope (only its offset and a
 * few numbers); the envelope is read again (from the log, or from its retry record once
 * the main line passed it) when it is due.
 */
import { MinHeap } from './heap';
import type { Item } from './item';

export class RetryLine {
  /** Every request waiting for another attempt or being retried, by offset. */
  private readonly items = new Map<number, Item>();
  /** Ordered by due time, then offset (so that equal times keep offset order). */
  private readonly due = new MinHeap<Item>((a, b) => a.due < b.due || (a.due === b.due && a.offset < b.offset));
  /**
   * Ordered by when each becomes older than retry.max_age (a lower bound until its record is
   * loaded): one due earlier but not expired must not hide an expired one behind it.
   */
  private readonly expiry = new MinHeap<{ item: Item; at: number }>((a, b) => a.at < b.at || (a.at === b.at && a.item.offset < b.item.offset));

  get size(): number {
    return this.items.size;
  }

  get(offset: number): Item | undefined {
    return this.items.get(offset);
  }

  has(offset: number): boolean {
    return this.items.has(offset);
  }

  values(): IterableIterator<Item> {
    return this.items.values();
  }

  /** Waits for `item.due`; `expiresAt` (or a lower bound of it) is when it becomes older than retry.max_age. */
  wait(item: Item, expiresAt: number): void {
    this.items.set(item.offset, item);
    this.due.push(item);
    if (item.expiryKey === 0) {
      item.expiryKey = expiresAt;
      this.expiry.push({ item, at: expiresAt });
      // Entries of requests that left are dropped when they come up; compact when they pile up.
      if (this.expiry.size > 2 * this.items.size + 1024) this.compactExpiry();
    }
  }

  /**
   * A waiting request older than retry.max_age at `now` (its real time from `expiresAt`, which
   * may load it), or null. It stays in the line until it is removed.
   */
  peekExpired(now: number, gen: number, expiresAt: (item: Item) => number): Item | null {
    for (;;) {
      const top = this.expiry.peek();
      if (!top || top.at > now) return null;
      const item = top.item;
      if (item.state !== 'waiting' || item.gen !== gen || this.items.get(item.offset) !== item) {
        this.expiry.pop(); // stale: delivered, dead-lettered, in flight, or dropped by a rewind
        if (top.at === item.expiryKey) item.expiryKey = 0;
        continue;
      }
      const at = expiresAt(item);
      if (at <= now) return item;
      this.expiry.pop();
      item.expiryKey = 0;
      if (at !== Infinity) {
        // A lower bound: queued again under its real time.
        item.expiryKey = at;
        this.expiry.push({ item, at });
      }
    }
  }

  private compactExpiry(): void {
    this.expiry.clear();
    for (const i of this.items.values()) {
      if (i.expiryKey !== 0) this.expiry.push({ item: i, at: i.expiryKey });
    }
  }

  /** It left the line (delivered, dead-lettered, dropped). */
  remove(item: Item): void {
    if (this.items.get(item.offset) === item) this.items.delete(item.offset);
  }

  /** The waiting request due first (stale heap entries are dropped on the way). */
  peek(gen: number): Item | null {
    for (;;) {
      const top = this.due.peek();
      if (!top) return null;
      if (top.state === 'waiting' && top.gen === gen && this.items.get(top.offset) === top) return top;
      this.due.pop(); // stale: delivered, dead-lettered or dropped by a rewind
    }
  }

  /** Takes the item `peek` returned. */
  pop(): void {
    this.due.pop();
  }

  /** Rebuilds the due order after items were dropped or their due times changed. */
  reorder(change?: (item: Item) => void): void {
    this.due.clear();
    for (const i of this.items.values()) {
      if (i.state !== 'waiting') continue;
      change?.(i);
      this.due.push(i);
    }
  }

  /** Drops every request that has no retry record (a rewind reads them again from the log). */
  dropUnparked(): Item[] {
    const dropped: Item[] = [];
    for (const [o, item] of this.items) {
      if (!item.parked) {
        this.items.delete(o);
        dropped.push(item);
      }
    }
    return dropped;
  }
}
