/**
 * What delivery reads from and writes to: a log of envelopes at offsets, and a store for each
 * consumer's offset, parked retries and dead letters. The local log (`Log`) is one such
 * source; a peer's replica held here (`ReplicaSource`) is another. Consumers and the delivery
 * manager depend on these interfaces only.
 *
 * The contract a source keeps (the local log's guarantees, `log.ts`):
 * - `read` never returns an entry past `durableOffset()`; entries come in offset order, each
 *   an independent copy when `copy` is set (they are held across awaits).
 * - `durableOffset()` only moves forward; `onDurable` listeners run after it moved.
 * - `firstOffset()` is the lowest offset still held (the next offset when nothing is held);
 *   entries below it are gone. A `pin(offset)` keeps `offset` and everything after it until
 *   released.
 * - A failed write to the store fails the node (crash-stop), never retried and acknowledged.
 */
import type { Envelope } from '../log/codec';
import type { ConsumerCommit, Held, HeldEntry } from '../log/delivery-store';
import type { LagMeter } from '../log/log';

/** The delivery store as consumers see it: every key is a consumer name. */
export interface DeliveryStoreView {
  /** The consumer's committed offset (0 when none is stored). */
  offset(target: string): number;
  /** Whether the consumer has an offset already (false: a new target, which starts after the log). */
  hasOffset(target: string): boolean;
  setOffset(target: string, offset: number): Promise<void>;
  /** Every retry record: offset, attempts and due time. */
  retryIndex(target: string): { offset: number; attempts: number; due: number }[];
  retry(target: string, offset: number): Held | undefined;
  /** The lowest offset parked for a retry, or null. */
  firstRetry(target: string): number | null;
  deadCount(target: string): number;
  /** Offsets of dead letters in [from, through]. */
  deadOffsets(target: string, from: number, through?: number): number[];
  /** Dead letters with offset > after, oldest first. */
  deadLetters(target: string, after: number, limit: number): HeldEntry[];
  /** One transaction for all the commits. */
  commit(commits: readonly ConsumerCommit[]): Promise<void>;
  /** Moves dead letters back to the retry records, due at `now`. */
  replayDead(target: string, offsets: readonly number[] | null, limit: number, now: number): Promise<{ offset: number; attempts: number; due: number }[]>;
  purgeDead(target: string, offsets: readonly number[] | null, limit: number): Promise<number>;
}

/** The log as consumers and the delivery manager see it. */
export interface DeliverySource {
  /** Offsets, retry records and dead letters of the consumers of this source. */
  readonly delivery: DeliveryStoreView;
  /** Up to `limit` envelopes with offset >= from, never past the durable offset (nor `through`). */
  read(from: number, limit: number, through?: number, copy?: boolean): Envelope[];
  /** The highest offset readers may read. */
  durableOffset(): number;
  /** The lowest offset still held, or the next offset when nothing is. */
  firstOffset(): number;
  /** Entries in [from, through] whose route is in `routes` (yields to the event loop as it goes). */
  countRoutes(from: number, through: number, routes: ReadonlySet<string>, chunk?: number): Promise<number>;
  /** The first offset received at or after `ms`, or the next offset when every entry is older. */
  offsetAtTime(ms: number): number;
  /** Starts measuring the bytes held after `offset` (targets[].max_lag_bytes). */
  lagMeter(offset: number): LagMeter;
  /** Moves the meter's cut forward until at most `max` bytes follow it; returns the cut. */
  measureLag(m: LagMeter, max: number, scan?: number): number;
  /** Keeps `offset` and what follows from being removed until the returned function runs. */
  pin(offset: number): () => void;
  /** Called whenever the durable offset moved. */
  onDurable(listener: () => void): void;
}

/**
 * Per target, the offset below which everything is finished (delivered or dead-lettered):
 * the committed offset, lowered below the oldest parked retry. A takeover starts there.
 */
export function finishedOffsets(store: Pick<DeliveryStoreView, 'offset' | 'firstRetry'>, targets: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const t of targets) {
    const parked = store.firstRetry(t);
    out[t] = Math.max(0, Math.min(store.offset(t), parked === null ? Infinity : parked - 1));
  }
  return out;
}
