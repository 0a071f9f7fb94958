/**
 * A replica: a peer's log held here at the same offsets, as the same record bytes, in this
 * node's LMDB environment (one `replicas` database keyed [origin, incarnation, offset], so a
 * replica can later be read and delivered exactly like a local log). Writes go through the
 * log's write path: the group commit, its fdatasync, and its failure handling (a failed
 * commit fails the node, never retried).
 *
 * A replica only grows at its end: a record must start right after the last one written
 * (or anywhere at or after the leader's first offset, when the replica is empty or behind
 * the leader's retention: a gap, counted).
 */
import type { Database } from 'lmdb';
import { CrowdError } from '../errors';
import { decodeCheckedEnvelope, decodeEnvelope, type Envelope } from './codec';
import { durable, putNew } from './lmdb';
import { advanceCut, countRoutesIn, meterRecord, offsetAtTimeIn, readRun, type LagMeter, type RecordRun } from './range';
import { envelopeAt, recordCount } from './record';

export type ReplicaKey = [string, string, number];

/** Records counted per event-loop turn, and removed per trim transaction. */
const COUNT_CHUNK = 5000;
const TRIM_CHUNK = 1000;

export interface ReplicaMeta {
  origin: string;
  incarnation: string;
  created_at: number;
  /** Ranges skipped because the leader's retention had removed them. */
  gaps: number;
  /** Per target: the offset below which everything is delivered or dead-lettered (from the leader). */
  finished: Record<string, number>;
}

export interface ReplicaInfo {
  origin: string;
  incarnation: string;
  first_offset: number;
  last_offset: number;
  flushed_offset: number;
  /** null while being counted (after a start). */
  bytes: number | null;
  gaps: number;
  finished: Record<string, number>;
}

/**
 * Checks a record from a peer before anything of it is written: whole (its count, then each
 * envelope's length within its bytes, and nothing after the last), every envelope decodes
 * with fields of the right types, at its offset, and the last offset is below 2^53.
 * Returns that last offset; throws an Error naming the record and what is wrong.
 */
export function checkRecord(key: number, record: Buffer): number {
  const fail = (what: string): never => {
    throw new Error(`record ${key}: ${what}`);
  };
  if (record.length < 4) fail(`${record.length} bytes, shorter than its header`);
  const count = recordCount(record);
  if (count === 0) fail('holds no envelope');
  const last = key + (count - 1); // (key + count) - 1 could round down to a safe integer
  if (!Number.isSafeInteger(last)) fail(`its ${count} envelopes would end past offset 2^53 - 1`);
  let p = 4;
  for (let i = 0; i < count; i++) {
    if (p + 4 > record.length) fail(`truncated: envelope ${i} of ${count} is missing`);
    const len = record.readUInt32BE(p);
    if (p + 4 + len > record.length) fail(`truncated: envelope ${i} of ${count} has ${len} bytes, ${record.length - p - 4} are left`);
    let e: Envelope | undefined;
    try {
      e = decodeCheckedEnvelope(record.subarray(p + 4, p + 4 + len));
    } catch (err) {
      fail(`envelope ${i} does not decode: ${(err as Error).message}`);
    }
    if (e!.offset !== key + i) fail(`envelope ${i} has offset ${e!.offset}, not ${key + i}`);
    p += 4 + len;
  }
  if (p !== record.length) fail(`${record.length - p} bytes after its ${count} envelopes`);
  return last;
}

export class Replica {
  /** The last offset written (its commit may still be flushing). */
  private written: number;
  /** The last offset whose commit is flushed. */
  private flushedOffset: number;
  /** Stored bytes: null until counted (in the background, on the first info()). */
  private bytes: number | null = null;
  private counting = false;
  private chain: Promise<void> = Promise.resolve();
  private trimming: Promise<number> | null = null;
  /** This replica's records as a run (range.ts): keys [origin, incarnation, offset]. */
  private readonly run: RecordRun = {
    keyAtOrBefore: (offset) => {
      for (const key of this.db.getKeys({ start: [this.origin, this.incarnation, offset], end: [this.origin, this.incarnation, 0], reverse: true, limit: 1 })) return key[2];
      return null;
    },
    records: (start, end, stream) =>
      this.db.getRange({ start: [this.origin, this.incarnation, start], end: [this.origin, this.incarnation, end], ...(stream ? { snapshot: false } : {}) }).map(({ key, value }) => ({ key: key[2], value })),
  };
  /** The last offset a trim removed (its write ran; maybe not yet committed). */
  private removedThrough = 0;
  /** Offsets a trim must keep (with everything after them), e.g. during a rewind. */
  private readonly pins = new Map<number, number>();
  /** Deliveries of this replica here: each says the lowest offset it still needs. */
  private readonly holders = new Set<() => number>();
  private readonly flushListeners = new Set<() => void>();

  constructor(
    readonly origin: string,
    readonly incarnation: string,
    private readonly db: Database<Buffer, ReplicaKey>,
    private readonly metaDb: Database<unknown, string>,
    private meta: ReplicaMeta,
    private readonly write: <T>(op: () => Promise<T>) => Promise<T>,
  ) {
    this.written = this.lastStored();
    this.flushedOffset = this.written;
  }

  /**
   * Counts the stored bytes a chunk per event-loop turn (a replica may hold gigabytes: one
   * pass would stall the node). Appends and trims meanwhile adjust the count as they go.
   */
  private countBytes(): void {
    if (this.counting || this.bytes !== null) return;
    this.counting = true;
    let total = 0;
    let after = -1;
    // Records at or below this key existed when counting began; later ones are added by append().
    this.countThrough = this.lastKey();
    const step = (): void => {
      let n = 0;
      for (const { key, value } of this.db.getRange({ start: [this.origin, this.incarnation, after + 1], end: [this.origin, this.incarnation, this.countThrough + 1] })) {
        total += value.length;
        after = key[2];
        if (++n >= COUNT_CHUNK) break;
      }
      this.countedBelow = after;
      if (n >= COUNT_CHUNK) {
        setImmediate(step);
        return;
      }
      this.bytes = total + this.bytesAdded - this.bytesTrimmedCounted;
      this.counting = false;
    };
    step();
  }

  /** While counting: the highest key counted so far, the last key when counting began, and what changed meanwhile. */
  private countedBelow = -1;
  private countThrough = -1;
  private bytesAdded = 0;
  private bytesTrimmedCounted = 0;

  private lastKey(): number {
    for (const key of this.db.getKeys({ start: [this.origin, this.incarnation, Number.MAX_SAFE_INTEGER], end: [this.origin, this.incarnation, 0], reverse: true, limit: 1 })) return key[2];
    return -1;
  }

  static metaKey(origin: string, incarnation: string): string {
    return `replica:${origin}:${incarnation}`;
  }

  private lastStored(): number {
    for (const { key, value } of this.db.getRange({ start: [this.origin, this.incarnation, Number.MAX_SAFE_INTEGER], end: [this.origin, this.incarnation, 0], reverse: true, limit: 1 })) {
      return key[2] + recordCount(value) - 1;
    }
    return 0;
  }

  /** The first offset held (0 when the replica is empty). */
  firstOffset(): number {
    for (const key of this.db.getKeys({ start: [this.origin, this.incarnation, 0], end: [this.origin, this.incarnation, Number.MAX_SAFE_INTEGER], limit: 1 })) {
      // A trim whose write ran has removed these, committed or not.
      return Math.max(key[2], this.removedThrough + 1);
    }
    return 0;
  }

  /** Per target: the offset below which the origin had everything delivered or dead-lettered (as last reported). */
  finished(): Readonly<Record<string, number>> {
    return this.meta.finished;
  }

  createdAt(): number {
    return this.meta.created_at;
  }

  lastWritten(): number {
    return this.written;
  }

  flushed(): number {
    return this.flushedOffset;
  }

  info(): ReplicaInfo {
    this.countBytes();
    return {
      origin: this.origin,
      incarnation: this.incarnation,
      first_offset: this.firstOffset(),
      last_offset: this.written,
      flushed_offset: this.flushedOffset,
      bytes: this.bytes,
      gaps: this.meta.gaps,
      finished: { ...this.meta.finished },
    };
  }

  /**
   * Appends a checked record. `leaderFirst`: the leader's first offset, which allows a gap
   * when this replica is behind it. Resolves when the record's commit is flushed; `flushed()`
   * moves in order.
   */
  append(key: number, record: Buffer, leaderFirst: number): Promise<void> {
    const last = checkRecord(key, record);
    if (key !== this.written + 1) {
      const gapAllowed = key > this.written + 1 && key <= Math.max(leaderFirst, 1);
      if (!gapAllowed) throw new Error(`record ${key} is not the next one (the replica of ${this.origin}/${this.incarnation} ends at ${this.written})`);
      this.meta.gaps++;
      // A failed commit fails the log (and the node) through its own path; nothing to add here.
      this.write(() => durable(this.metaDb.put(Replica.metaKey(this.origin, this.incarnation), this.meta))).catch(() => {});
    }
    this.written = last;
    if (this.bytes !== null) this.bytes += record.length;
    else if (this.counting) this.bytesAdded += record.length;
    // A collision fails the log (and the node) as a local one does: never an overwrite.
    const put = this.write(async () => {
      if (!(await durable(putNew(this.db, [this.origin, this.incarnation, key], record)))) {
        throw new CrowdError('CROWD_ERR_LOG_OFFSET', `offset ${key} of the replica of ${this.origin}/${this.incarnation} is already stored: refusing to overwrite it`);
      }
    });
    put.catch(() => {}); // observed through the chain; after an earlier failure, nobody else waits for it
    // Flushes settle in commit order; the chain keeps flushed() monotonic whatever order the promises run in.
    this.chain = this.chain.then(() => put).then(() => {
      if (last <= this.flushedOffset) return;
      this.flushedOffset = last;
      for (const l of this.flushListeners) l();
    });
    return this.chain;
  }

  /** Stores the leader's finished offsets (the next issue's takeover starts there). */
  async setFinished(finished: Record<string, number>): Promise<void> {
    const same = Object.keys(finished).length === Object.keys(this.meta.finished).length && Object.entries(finished).every(([k, v]) => this.meta.finished[k] === v);
    if (same) return;
    this.meta = { ...this.meta, finished: { ...finished } };
    await this.write(() => durable(this.metaDb.put(Replica.metaKey(this.origin, this.incarnation), this.meta)));
  }

  /**
   * Follows the leader's retention: removes whole records that end below `first` (and below
   * every finished offset, every pin, and what every delivery of this replica here still
   * needs), in chunks, one pass at a time.
   */
  trimBelow(first: number): Promise<number> {
    if (this.trimming) return this.trimming;
    const run = async (): Promise<number> => {
      let removed = 0;
      for (;;) {
        const floor = Math.min(first, Math.min(...Object.values(this.meta.finished), Infinity) + 1, this.keptFrom());
        const keys: { key: ReplicaKey; last: number; bytes: number }[] = [];
        for (const { key, value } of this.db.getRange({ start: [this.origin, this.incarnation, 0], end: [this.origin, this.incarnation, floor], limit: TRIM_CHUNK })) {
          // Never what a target has not finished (the leader's retention guarantees it; checked here too).
          const last = key[2] + recordCount(value) - 1;
          if (last >= floor) break;
          keys.push({ key, last, bytes: value.length });
        }
        if (keys.length === 0) return removed;
        let gone = 0;
        await this.write(() => {
          // Runs later than the call: what was pinned (or started being delivered) meanwhile stays.
          const keep = this.keptFrom();
          const ops: Promise<unknown>[] = [];
          for (const k of keys) {
            if (k.last >= keep) break;
            ops.push(durable(this.db.remove(k.key)));
            this.removedThrough = Math.max(this.removedThrough, k.last);
            gone++;
          }
          return Promise.all(ops);
        });
        for (const k of keys.slice(0, gone)) {
          if (this.bytes !== null) this.bytes -= k.bytes;
          else if (this.counting && k.key[2] <= this.countedBelow) this.bytesTrimmedCounted += k.bytes;
        }
        removed += gone;
        if (gone < TRIM_CHUNK) return removed;
      }
    };
    this.trimming = run().finally(() => (this.trimming = null));
    return this.trimming;
  }

  /** The lowest offset that pins and deliveries here keep (Infinity: none). */
  private keptFrom(): number {
    let keep = Infinity;
    for (const pinned of this.pins.keys()) keep = Math.min(keep, pinned);
    for (const h of this.holders) keep = Math.min(keep, h());
    return keep;
  }

  /** Keeps trims from removing `offset` and what follows until the returned function runs. */
  pin(offset: number): () => void {
    this.pins.set(offset, (this.pins.get(offset) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = this.pins.get(offset)! - 1;
      if (n === 0) this.pins.delete(offset);
      else this.pins.set(offset, n);
    };
  }

  /**
   * Keeps trims from removing `neededFrom()` and what follows (asked at each trim) until the
   * returned function runs: a delivery of this replica here names the lowest offset it needs.
   */
  hold(neededFrom: () => number): () => void {
    const h = (): number => neededFrom();
    this.holders.add(h);
    return () => void this.holders.delete(h);
  }

  /** Called whenever the flushed offset moved; the returned function removes the listener. */
  onFlushed(listener: () => void): () => void {
    const l = (): void => listener();
    this.flushListeners.add(l);
    return () => void this.flushListeners.delete(l);
  }

  /** Up to `limit` envelopes from `from` through the flushed offset (or `through`, when lower). Each is a copy. */
  read(from: number, limit: number, through: number = this.flushedOffset): Envelope[] {
    return readRun(this.run, from, limit, Math.min(through, this.flushedOffset), (bytes) => decodeEnvelope(bytes, true));
  }

  /**
   * Counts the entries with offset in [from, through] whose route is in `routes`, about
   * `chunk` entries between yields to the event loop (as `Log.countRoutes`).
   */
  async countRoutes(from: number, through: number, routes: ReadonlySet<string>, chunk = 20_000): Promise<number> {
    return countRoutesIn(this.run, from, through, routes, chunk);
  }

  /**
   * The first offset received at or after `ms` (binary search over offsets; receive times
   * follow offsets), or the next offset when every entry is older.
   */
  offsetAtTime(ms: number): number {
    return offsetAtTimeIn(this.firstOffset() || this.flushedOffset + 1, this.flushedOffset + 1, ms, (o) => this.receivedAt(o));
  }

  /** When the entry at `offset` was received; in a gap, the next entry's; null past the end. */
  private receivedAt(offset: number): number | null {
    for (const { key, value } of this.db.getRange({ start: [this.origin, this.incarnation, offset], end: [this.origin, this.incarnation, 0], reverse: true, limit: 1 })) {
      if (offset - key[2] < recordCount(value)) return decodeEnvelope(envelopeAt(value, offset - key[2])).received_at;
    }
    for (const { value } of this.db.getRange({ start: [this.origin, this.incarnation, offset], end: [this.origin, this.incarnation, this.flushedOffset + 1], limit: 1 })) {
      return decodeEnvelope(envelopeAt(value, 0)).received_at;
    }
    return null;
  }

  /** Starts measuring the bytes of the records after `offset` (the record holding offset + 1 counts whole). */
  lagMeter(offset: number): LagMeter {
    let start = offset + 1;
    for (const key of this.db.getKeys({ start: [this.origin, this.incarnation, offset + 1], end: [this.origin, this.incarnation, 0], reverse: true, limit: 1 })) start = key[2];
    return { cut: start - 1, bytes: 0, through: start - 1, records: [], head: 0 };
  }

  /**
   * As `Log.measureLag`: counts the records flushed since the last call (at most `scan` per
   * call, read from the file: a replica's records are not seen in memory on their way in),
   * drops those trimmed meanwhile, and moves the cut forward until at most `max` bytes of
   * records follow it. Returns the cut.
   */
  measureLag(m: LagMeter, max: number, scan = 10_000): number {
    if (m.through < this.flushedOffset) {
      let n = 0;
      for (const { key, value } of this.db.getRange({ start: [this.origin, this.incarnation, m.through + 1], end: [this.origin, this.incarnation, this.flushedOffset + 1], snapshot: false })) {
        const count = recordCount(value);
        const last = key[2] + count - 1;
        if (last > this.flushedOffset) break;
        meterRecord(m, last, value.length - 4 - 4 * count);
        if (++n >= scan) break;
      }
    }
    // Records trimmed meanwhile no longer count (the cut moves over them).
    return advanceCut(m, max, this.firstOffset());
  }
}
