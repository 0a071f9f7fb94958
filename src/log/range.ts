/**
 * Reading a run of log records, for the local log (`Log`) and a peer's replica (`Replica`)
 * alike: both store records (record.ts) under the offset of their first envelope, and differ
 * only in how their keys are spelled in LMDB.
 */
import type { Envelope } from './codec';
import { routeOf } from './codec';
import { forEachInRecord, recordCount } from './record';

export interface RecordRun {
  /** The greatest key at or below `offset` (the record holding it), or null. */
  keyAtOrBefore(offset: number): number | null;
  /** Records with keys in [start, end), ascending; `stream`: without a snapshot (long scans). */
  records(start: number, end: number, stream?: boolean): Iterable<{ key: number; value: Buffer }>;
}

/** Up to `limit` envelopes with offsets in [from, end], decoded by `decode`. */
export function readRun(run: RecordRun, from: number, limit: number, end: number, decode: (bytes: Buffer, offset: number, index: number) => Envelope): Envelope[] {
  const out: Envelope[] = [];
  if (from > end || limit <= 0) return out;
  const start = run.keyAtOrBefore(from) ?? from;
  for (const { key, value } of run.records(start, end + 1)) {
    let more = true;
    forEachInRecord(value, (i, bytes) => {
      const offset = key + i;
      if (offset > end) return (more = false);
      if (offset >= from) {
        out.push(decode(bytes, offset, i));
        if (out.length >= limit) return (more = false);
      }
      return true;
    });
    if (!more) break;
  }
  return out;
}

/**
 * Counts the entries with offset in [from, through] whose route is in `routes`, about
 * `chunk` entries between yields to the event loop (a backlog may be millions of entries;
 * the first yield comes before any reading, so a caller's start-up is not held up).
 */
export async function countRoutesIn(run: RecordRun, from: number, through: number, routes: ReadonlySet<string>, chunk: number, stopped: () => boolean = () => false): Promise<number> {
  let count = 0;
  let start = run.keyAtOrBefore(from) ?? from;
  while (start <= through && !stopped()) {
    await new Promise((r) => setImmediate(r));
    let next = -1;
    let seen = 0;
    let more = false;
    for (const { key, value } of run.records(start, through + 1, true)) {
      forEachInRecord(value, (i, bytes) => {
        const offset = key + i;
        if (offset > through) return false;
        if (offset >= from && routes.has(routeOf(bytes))) count++;
        return true;
      });
      next = key + recordCount(value);
      seen += recordCount(value);
      if (seen >= chunk) {
        more = true;
        break;
      }
    }
    if (!more || next < 0) break;
    start = next;
  }
  return count;
}

/**
 * The first offset in [lo, hi] received at or after `ms` (binary search: receive times follow
 * offsets); `hi` when every entry is older. `receivedAt` is null past the end.
 */
export function offsetAtTimeIn(lo: number, hi: number, ms: number, receivedAt: (offset: number) => number | null): number {
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2);
    const at = receivedAt(mid);
    if (at === null || at >= ms) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** Bytes of the records after a cut (a target's lag in bytes); see `Log.lagMeter`. */
export interface LagMeter {
  /** The last offset of the record before the measured ones. */
  cut: number;
  /** Bytes of the records in (cut, through]. */
  bytes: number;
  /** The last offset of the last record counted. */
  through: number;
  /** The records counted after the cut, oldest first from `head` (the cut moves over them). */
  records: { last: number; bytes: number }[];
  head: number;
}

export function meterRecord(m: LagMeter, last: number, bytes: number): void {
  m.records.push({ last, bytes });
  m.bytes += bytes;
  m.through = last;
}

/** Moves the cut over records up to offset `below - 1` (gone), then until at most `max` bytes follow it; returns the cut. */
export function advanceCut(m: LagMeter, max: number, below = -Infinity): number {
  while (m.head < m.records.length && m.records[m.head]!.last < below) {
    const r = m.records[m.head++]!;
    m.bytes -= r.bytes;
    m.cut = r.last;
  }
  while (m.bytes > max && m.head < m.records.length) {
    const r = m.records[m.head++]!;
    m.bytes -= r.bytes;
    m.cut = r.last;
  }
  if (m.head > 1024 && m.head * 2 > m.records.length) {
    m.records = m.records.slice(m.head);
    m.head = 0;
  }
  return m.cut;
}
