/**
 * The peer protocol on /_crowd/replicate (one WebSocket per (follower, leader) pair; the
 * follower connects to the leader's ingest port).
 *
 * Upgrade request headers: `Authorization: Bearer <cluster.secret>`, `Crowd-Node-Id`
 * (the follower's node_id). Refused with 401 (wrong or missing secret) or 409 (the
 * follower claims the leader's own node_id).
 *
 * Text frames (JSON):
 *   leader -> follower  {"t":"hello","node_id","incarnation","first","durable"}
 *                       {"t":"progress","first","durable","finished":{target: offset}}   about every second
 *   follower -> leader  {"t":"want","incarnation","from"}     from which offset it needs the log (the end of
 *                                                             what it has written, flushed or not: never a flushed report)
 *                       {"t":"flushed","incarnation","offset"}  the highest offset it has flushed: sent right
 *                                                             after "want" (when above 0), then as commits flush
 * Binary frames (leader -> follower): one stored record each,
 *   u8 1 | f64 BE key (the record's first offset) | the record's stored bytes
 */
export const REPLICATE_PATH = '/_crowd/replicate';
export const RECORD_FRAME = 1;
export const RECORD_HEADER_BYTES = 9;

export interface Hello {
  t: 'hello';
  node_id: string;
  incarnation: string;
  first: number;
  durable: number;
}

export interface Progress {
  t: 'progress';
  first: number;
  durable: number;
  finished: Record<string, number>;
}

export interface Want {
  t: 'want';
  incarnation: string;
  from: number;
}

export interface Flushed {
  t: 'flushed';
  incarnation: string;
  offset: number;
}

export function recordFrame(key: number, record: Buffer): Buffer {
  const out = Buffer.allocUnsafe(RECORD_HEADER_BYTES + record.length);
  out[0] = RECORD_FRAME;
  out.writeDoubleBE(key, 1);
  record.copy(out, RECORD_HEADER_BYTES);
  return out;
}

/** The key and record of a binary frame, or an error naming what is wrong. */
export function parseRecordFrame(frame: Buffer): { key: number; record: Buffer } | string {
  if (frame.length < RECORD_HEADER_BYTES + 4) return `binary frame of ${frame.length} bytes is shorter than a record frame`;
  if (frame[0] !== RECORD_FRAME) return `binary frame type ${frame[0]} is unknown`;
  const key = frame.readDoubleBE(1);
  if (!Number.isSafeInteger(key) || key < 1) return `record key ${key} is not an offset`;
  return { key, record: frame.subarray(RECORD_HEADER_BYTES) };
}

const isOffset = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isId = (v: unknown): v is string => typeof v === 'string' && /^[\x21-\x7e]{1,128}$/.test(v);

/** Parses a text frame from a leader; a string names what is wrong. */
export function parseLeaderMessage(text: string): Hello | Progress | string {
  let m: Record<string, unknown>;
  try {
    m = JSON.parse(text);
  } catch {
    return 'text frame is not JSON';
  }
  if (m === null || typeof m !== 'object') return 'text frame is not a JSON object';
  if (m.t === 'hello') {
    if (!isId(m.node_id) || !isId(m.incarnation) || !isOffset(m.first) || !isOffset(m.durable)) return 'hello lacks node_id, incarnation, first or durable';
    return m as unknown as Hello;
  }
  if (m.t === 'progress') {
    if (!isOffset(m.first) || !isOffset(m.durable) || m.finished === null || typeof m.finished !== 'object') return 'progress lacks first, durable or finished';
    for (const v of Object.values(m.finished as object)) if (!isOffset(v)) return 'progress has a finished offset that is not an offset';
    return m as unknown as Progress;
  }
  return `unknown message type ${JSON.stringify(m.t)}`;
}

/** Parses a text frame from a follower; a string names what is wrong. */
export function parseFollowerMessage(text: string): Want | Flushed | string {
  let m: Record<string, unknown>;
  try {
    m = JSON.parse(text);
  } catch {
    return 'text frame is not JSON';
  }
  if (m === null || typeof m !== 'object') return 'text frame is not a JSON object';
  if (m.t === 'want') {
    if (!isId(m.incarnation) || !isOffset(m.from)) return 'want lacks incarnation or from';
    return m as unknown as Want;
  }
  if (m.t === 'flushed') {
    if (!isId(m.incarnation) || !isOffset(m.offset)) return 'flushed lacks incarnation or offset';
    return m as unknown as Flushed;
  }
  return `unknown message type ${JSON.stringify(m.t)}`;
}
