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
import { forEachInRecord, recordCount } from './record';

export type ReplicaKey = [string, string, number];

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
  bytes: number;
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
  private bytes = 0;
  private chain: Promise<void> = Promise.resolve();

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
    for (const { value } of this.db.getRange({ start: [origin, incarnation, 0], end: [origin, incarnation, Number.MAX_SAFE_INTEGER] })) this.bytes += value.length;
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

  firstOffset(): number {
    for (const key of this.db.getKeys({ start: [this.origin, this.incarnation, 0], end: [this.origin, this.incarnation, Number.MAX_SAFE_INTEGER], limit: 1 })) return key[2];
    return 0;
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
    this.bytes += record.length;
    const put = this.write(() => durable(putNew(this.db, [this.origin, this.incarnation, key], record))).then((ok) => {
      if (!ok) throw new CrowdError('CROWD_ERR_LOG_OFFSET', `offset ${key} of the replica of ${this.origin}/${this.incarnation} is already stored: refusing to overwrite it`);
    });
    // Flushes settle in commit order; the chain keeps flushed() monotonic whatever order the promises run in.
    this.chain = this.chain.then(() => put).then(() => {
      if (last > this.flushedOffset) this.flushedOffset = last;
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

  /** Follows the leader's retention: removes whole records that end below `first`. */
  async trimBelow(first: number): Promise<number> {
    const keys: { key: ReplicaKey; bytes: number }[] = [];
    for (const { key, value } of this.db.getRange({ start: [this.origin, this.incarnation, 0], end: [this.origin, this.incarnation, first], limit: 1000 })) {
      if (key[2] + recordCount(value) - 1 >= first) break;
      // Never below what the targets have not finished (the leader's retention guarantees it; checked here too).
      const floor = Math.min(...Object.values(this.meta.finished), Infinity);
      if (key[2] + recordCount(value) - 1 >= floor) break;
      keys.push({ key, bytes: value.length });
    }
    if (keys.length === 0) return 0;
    await this.write(() => Promise.all(keys.map((k) => durable(this.db.remove(k.key)))));
    for (const k of keys) this.bytes -= k.bytes;
    return keys.length;
  }

  /** Up to `limit` envelopes from `from` through the flushed offset. */
  read(from: number, limit: number): Envelope[] {
    const out: Envelope[] = [];
    const end = this.flushedOffset;
    if (from > end) return out;
    let start = from;
    for (const key of this.db.getKeys({ start: [this.origin, this.incarnation, from], end: [this.origin, this.incarnation, 0], reverse: true, limit: 1 })) start = key[2];
    for (const { key, value } of this.db.getRange({ start: [this.origin, this.incarnation, start], end: [this.origin, this.incarnation, end + 1] })) {
      let more = true;
      forEachInRecord(value, (i, bytes) => {
        const offset = key[2] + i;
        if (offset > end) return (more = false);
        if (offset >= from) {
          out.push(decodeEnvelope(bytes, true));
          if (out.length >= limit) return (more = false);
        }
        return true;
      });
      if (!more) break;
    }
    return out;
  }
}
