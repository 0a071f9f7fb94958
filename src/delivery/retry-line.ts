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

  /** Waits for `item.due`. */
  wait(item: Item): void {
    this.items.set(item.offset, item);
    this.due.push(item);
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
