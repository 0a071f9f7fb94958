/**
 * A log record: the envelopes of one group commit, stored as one LMDB value under the
 * offset of its first envelope. Offsets inside a record are consecutive.
 *
 *   u32 count | count × (u32 length | envelope bytes)        (big-endian)
 *
 * One value per commit instead of one per request: the B-tree, lmdb-js's per-write
 * bookkeeping and the writer thread see one write where there were hundreds. Each
 * envelope's bytes stay contiguous, so a single envelope can be sliced out unchanged
 * (for peers and the dead-letter store) without decoding its neighbours.
 */

/** A record is closed at this size and the next envelope opens another (same transaction). */
export const RECORD_BYTES_MAX = 4 * 1024 * 1024;

export function frameRecord(parts: readonly Buffer[], bytes: number): Buffer {
  const out = Buffer.allocUnsafe(4 + 4 * parts.length + bytes);
  out.writeUInt32BE(parts.length, 0);
  let p = 4;
  for (const part of parts) {
    out.writeUInt32BE(part.length, p);
    part.copy(out, p + 4);
    p += 4 + part.length;
  }
  return out;
}

export function recordCount(record: Uint8Array): number {
  return ((record[0]! << 24) | (record[1]! << 16) | (record[2]! << 8) | record[3]!) >>> 0;
}

/** Calls `visit(index, envelopeBytes)` for each envelope until it returns false. */
export function forEachInRecord(record: Buffer, visit: (index: number, bytes: Buffer) => boolean): void {
  const count = record.readUInt32BE(0);
  let p = 4;
  for (let i = 0; i < count; i++) {
    const len = record.readUInt32BE(p);
    if (p + 4 + len > record.length) throw new RangeError(`log record truncated at envelope ${i} of ${count}`);
    if (!visit(i, record.subarray(p + 4, p + 4 + len))) return;
    p += 4 + len;
  }
}

/** The envelope bytes at `index` of a record. */
export function envelopeAt(record: Buffer, index: number): Buffer {
  let found: Buffer | null = null;
  forEachInRecord(record, (i, bytes) => {
    if (i === index) found = bytes;
    return i < index;
  });
  if (found === null) throw new RangeError(`log record has no envelope ${index}`);
  return found;
}
