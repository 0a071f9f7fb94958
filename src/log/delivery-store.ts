/**
 * What delivery keeps in the log's LMDB environment, beside the entries: each target's
 * offset (`consumers`), the requests it is retrying after the offset passed them
 * (`retries`), and its dead letters (`dead`). One environment, so that moving an offset,
 * parking a retrying request and writing a dead letter are one transaction.
 *
 * Retry and dead-letter records hold the envelope's own bytes: retention may remove the
 * entry from the log once the offset passed it, and the record still has everything.
 * Keys are [target, offset] (ordered-binary), so one target's records are one range.
 */
import type { Database, RootDatabase } from 'lmdb';
import { Packr } from 'msgpackr';
import { CrowdError } from '../errors';

/** A request held outside the log: waiting for its next attempt, or dead-lettered. */
export interface Held {
  /** The stored envelope bytes (`codec.ts`). */
  readonly envelope: Uint8Array;
  readonly attempts: number;
  /** Last upstream status; 0 when the last attempt got no response. */
  readonly status: number;
  readonly error: string;
  readonly first_attempt_at: number;
  /** Retry: when the next attempt is due. Dead letter: when it was dead-lettered. */
  readonly at: number;
  /** When it was last replayed from the dead letters (0: never). */
  readonly replayed_at: number;
}

export interface HeldEntry {
  readonly offset: number;
  readonly held: Held;
}

/** Everything one consumer commit writes, in one transaction with the other consumers'. */
export interface ConsumerCommit {
  readonly target: string;
  /** The new offset (every entry up to it is finished or held); absent: unchanged. */
  readonly offset?: number;
  /** Retrying requests the offset passes (or whose attempt count changed). */
  readonly park: readonly HeldEntry[];
  /** Retry records to delete (delivered, or moved to the dead letters). */
  readonly unpark: readonly number[];
  readonly dead: readonly HeldEntry[];
}

const VERSION = 1;
const packr = new Packr({ useRecords: false, structuredClone: false, moreTypes: false, bundleStrings: false });
const MAX_OFFSET = Number.MAX_SAFE_INTEGER;
/** Envelope bytes one dead-letter listing returns at most (then the caller pages with `after`). */
export const LIST_BYTES_MAX = 16 * 1024 * 1024;

export function encodeHeld(h: Held): Buffer {
  return packr.pack([VERSION, h.envelope, h.attempts, h.status, h.error, h.first_attempt_at, h.at, h.replayed_at]);
}

export function decodeHeld(bytes: Uint8Array): Held {
  const a = packr.unpack(bytes) as unknown[];
  if (!Array.isArray(a) || a[0] !== VERSION) throw new CrowdError('CROWD_ERR_HELD', `not a version ${VERSION} held-request record (${bytes.length} bytes)`);
  return {
    // A copy: the value buffer may be reused by the next read.
    envelope: Buffer.from(a[1] as Uint8Array),
    attempts: a[2] as number,
    status: a[3] as number,
    error: a[4] as string,
    first_attempt_at: a[5] as number,
    at: a[6] as number,
    replayed_at: (a[7] as number | undefined) ?? 0,
  };
}

type Key = [string, number];

export class DeliveryStore {
  constructor(
    private readonly env: RootDatabase,
    private readonly consumers: Database<number, string>,
    private readonly retries: Database<Buffer, Key>,
    private readonly dead: Database<Buffer, Key>,
    /** Runs a write through the log, which fails (crash-stop) on a failed commit. */
    private readonly write: <T>(op: () => Promise<T>) => Promise<T>,
  ) {}

  offset(target: string): number {
    return this.consumers.get(target) ?? 0;
  }

  hasOffset(target: string): boolean {
    return this.consumers.get(target) !== undefined;
  }

  async setOffset(target: string, offset: number): Promise<void> {
    await this.write(() => this.consumers.put(target, offset));
  }

  /** Every retry record of a target: offset, attempts and due time (the envelope stays on disk). */
  retryIndex(target: string): { offset: number; attempts: number; due: number }[] {
    const out: { offset: number; attempts: number; due: number }[] = [];
    for (const { key, value } of this.retries.getRange({ start: [target, 0], end: [target, MAX_OFFSET] })) {
      // The envelope is not copied: only the attempt count and due time stay in memory.
      const a = packr.unpack(value) as unknown[];
      out.push({ offset: key[1], attempts: a[2] as number, due: a[6] as number });
    }
    return out;
  }

  /** The lowest offset parked for a retry, or null. */
  firstRetry(target: string): number | null {
    for (const key of this.retries.getKeys({ start: [target, 0], end: [target, MAX_OFFSET], limit: 1 })) return key[1];
    return null;
  }

  retry(target: string, offset: number): Held | undefined {
    const v = this.retries.get([target, offset]);
    return v === undefined ? undefined : decodeHeld(v);
  }

  deadCount(target: string): number {
    return this.dead.getCount({ start: [target, 0], end: [target, MAX_OFFSET] });
  }

  retryCount(target: string): number {
    return this.retries.getCount({ start: [target, 0], end: [target, MAX_OFFSET] });
  }

  /** Offsets of a target's dead letters in [from, through]. */
  deadOffsets(target: string, from: number, through: number = MAX_OFFSET): number[] {
    const out: number[] = [];
    for (const key of this.dead.getKeys({ start: [target, from], end: [target, through + 1] })) out.push(key[1]);
    return out;
  }

  /** Dead letters of a target with offset > after, oldest first (at most `limit`, and about LIST_BYTES_MAX of envelopes). */
  deadLetters(target: string, after: number, limit: number): HeldEntry[] {
    const out: HeldEntry[] = [];
    let bytes = 0;
    for (const { key, value } of this.dead.getRange({ start: [target, after + 1], end: [target, MAX_OFFSET], limit })) {
      out.push({ offset: key[1], held: decodeHeld(value) });
      bytes += value.length;
      if (bytes >= LIST_BYTES_MAX) break;
    }
    return out;
  }

  /** One transaction for all the commits (offsets, parked retries, dead letters). */
  async commit(commits: readonly ConsumerCommit[]): Promise<void> {
    await this.write(() =>
      this.env.transaction(() => {
        for (const c of commits) {
          // Parks first: a request parked and then delivered (or dead-lettered) before this
          // commit has both a park and an unpark here, and must end up without a record.
          for (const p of c.park) this.retries.put([c.target, p.offset], encodeHeld(p.held));
          for (const o of c.unpark) this.retries.remove([c.target, o]);
          for (const d of c.dead) this.dead.put([c.target, d.offset], encodeHeld(d.held));
          if (c.offset !== undefined) this.consumers.put(c.target, c.offset);
        }
      }),
    );
  }

  /**
   * Moves dead letters (the given offsets, or the oldest `limit`) back to the retry records,
   * due at `now`, keeping their attempt counts. One record at a time is in memory.
   */
  async replayDead(target: string, offsets: readonly number[] | null, limit: number, now: number): Promise<{ offset: number; attempts: number; due: number }[]> {
    const keys = this.pickDead(target, offsets, limit);
    const moved: { offset: number; attempts: number; due: number }[] = [];
    await this.write(() =>
      this.env.transaction(() => {
        for (const offset of keys) {
          const v = this.dead.get([target, offset]);
          if (v === undefined) continue;
          const a = packr.unpack(v) as unknown[];
          a[6] = now; // due now
          a[7] = now; // replayed now: retry.max_age counts from here
          this.retries.put([target, offset], packr.pack(a));
          this.dead.remove([target, offset]);
          moved.push({ offset, attempts: a[2] as number, due: now });
        }
      }),
    );
    return moved;
  }

  /** Deletes dead letters (the given offsets, or the oldest `limit`); returns how many. */
  async purgeDead(target: string, offsets: readonly number[] | null, limit: number): Promise<number> {
    const keys = this.pickDead(target, offsets, limit);
    await this.write(() =>
      this.env.transaction(() => {
        for (const offset of keys) this.dead.remove([target, offset]);
      }),
    );
    return keys.length;
  }

  /** The offsets of existing dead letters: those given, or the oldest `limit`. */
  private pickDead(target: string, offsets: readonly number[] | null, limit: number): number[] {
    if (offsets === null) {
      const out: number[] = [];
      for (const key of this.dead.getKeys({ start: [target, 0], end: [target, MAX_OFFSET], limit })) out.push(key[1]);
      return out;
    }
    return offsets.slice(0, limit).filter((o) => this.dead.doesExist([target, o]));
  }
}
