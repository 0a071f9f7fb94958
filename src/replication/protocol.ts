/**
 * The peer protocol on /_crowd/replicate (one WebSocket per (follower, leader) pair; the
 * follower connects to the leader's ingest port).
 *
 * Upgrade request headers: `Crowd-Node-Id` (the follower's node_id), `Crowd-Incarnation`
 * (the follower's own log: a leader delivering that log hands it back at once) and
 * `Crowd-Auth: v1 <unix ms> <nonce> <mac>`, mac = HMAC-SHA256(cluster.secret,
 * "crowd-follow\n<node_id>\n<unix ms>\n<nonce>") in hex: the secret itself never crosses the
 * network. The leader refuses with 401 a wrong mac, a time more than a minute off its clock
 * or a nonce it has seen (a replay), and with 409 the leader's own node_id. Its hello proves
 * it knows the secret too: proof = HMAC-SHA256(cluster.secret, "crowd-lead\n<its node_id>\n
 * <incarnation>\n<the follower's nonce>"); a follower drops a leader without it.
 *
 * Text frames (JSON):
 *   leader -> follower  {"t":"hello","node_id","incarnation","first","durable"}
 *                       {"t":"progress","first","durable","finished":{target: offset},
 *                        "taken":[{"origin","incarnation","delivering","finished","flushed"}]}   about every second
 *                       (taken: every other node's log this leader holds, how much of it (flushed),
 *                        and, where it delivers or delivered it, how far: the origin starts from
 *                        there when it comes back, see takeover.ts)
 *   follower -> leader  {"t":"want","incarnation","from"}     from which offset it needs the log
 *                                                            (not a flushed report)
 *                       {"t":"flushed","incarnation","offset"}  the highest offset it has flushed
 *                                                            (after want, then as it moves)
 * Binary frames (leader -> follower): one stored record each,
 *   u8 1 | f64 BE key (the record's first offset) | the record's stored bytes
 *
 * The leader closes a connection (1008, with the reason) whose follower sends a binary or
 * malformed frame, names another incarnation, wants from past the durable offset + 1, or
 * reports flushed an offset past the durable one or past what it was sent (and said it
 * held). A quorum counts only offsets reported flushed after they were sent on the
 * follower's current connection: what a want says the follower held already is taken
 * for the window and status, never for a quorum.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { NAME } from '../config/schema';

export const REPLICATE_PATH = '/_crowd/replicate';
export const RECORD_FRAME = 1;
export const RECORD_HEADER_BYTES = 9;

export interface Hello {
  t: 'hello';
  node_id: string;
  incarnation: string;
  first: number;
  durable: number;
  /** The leader's proof that it knows the secret (see above). */
  proof?: string;
}

/** How far a follower's clock may be from the leader's. */
export const AUTH_SKEW_MS = 60_000;

const mac = (secret: string, text: string): string => createHmac('sha256', secret).update(text).digest('hex');

/** The follower's Crowd-Auth header value. */
export function followerAuth(secret: string, nodeId: string, now = Date.now(), nonce = randomBytes(16).toString('hex')): string {
  return `v1 ${now} ${nonce} ${mac(secret, `crowd-follow\n${nodeId}\n${now}\n${nonce}`)}`;
}

/** Checks a Crowd-Auth header; the nonce when it is right, else what is wrong (never the presented values). */
export function checkFollowerAuth(secret: string, nodeId: string, header: string, now = Date.now()): { nonce: string; at: number } | string {
  if (header === '') return 'no credentials presented';
  const m = /^v1 (\d{1,15}) ([0-9a-f]{32}) ([0-9a-f]{64})$/.exec(header);
  if (!m) return 'malformed Crowd-Auth header';
  const at = Number(m[1]);
  const want = Buffer.from(mac(secret, `crowd-follow\n${nodeId}\n${m[1]}\n${m[2]}`), 'hex');
  if (!timingSafeEqual(want, Buffer.from(m[3]!, 'hex'))) return 'wrong secret';
  if (Math.abs(now - at) > AUTH_SKEW_MS) return `its clock is ${Math.round((at - now) / 1000)} s off this node's (at most ${AUTH_SKEW_MS / 1000} s: check NTP)`;
  return { nonce: m[2]!, at };
}

/** The leader's proof in its hello. */
export function leaderProof(secret: string, nodeId: string, incarnation: string, nonce: string): string {
  return mac(secret, `crowd-lead\n${nodeId}\n${incarnation}\n${nonce}`);
}

export function checkLeaderProof(secret: string, hello: Hello, nonce: string): boolean {
  if (typeof hello.proof !== 'string' || !/^[0-9a-f]{64}$/.test(hello.proof)) return false;
  return timingSafeEqual(Buffer.from(leaderProof(secret, hello.node_id, hello.incarnation, nonce), 'hex'), Buffer.from(hello.proof, 'hex'));
}

export interface Progress {
  t: 'progress';
  first: number;
  durable: number;
  finished: Record<string, number>;
  taken?: TakenReport[];
}

/** A log of another node that the sender delivers (or delivered) from its replica. */
export interface TakenReport {
  origin: string;
  incarnation: string;
  /** Whether the sender delivers it now (false: it handed it back, or finished an orphan). */
  delivering: boolean;
  /** Per target: the offset below which the sender delivered or dead-lettered everything (targets it delivered). */
  finished: Record<string, number>;
  /** The last offset of that log the sender holds flushed (the longest replica is the one to deliver). */
  flushed?: number;
}

/** Taken reports one progress message carries at most. */
export const TAKEN_MAX = 256;

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

/** Bytes a close frame's reason can hold (RFC 6455 5.5: 125 bytes of payload, 2 of them the code). */
export const CLOSE_REASON_BYTES = 123;

/**
 * `why` cut to what a close frame holds, at a character boundary. A longer reason is not
 * sendable: the ws client throws (RangeError) and uWebSockets.js drops the close frame.
 */
export function closeReason(why: string): string {
  const bytes = Buffer.from(why);
  if (bytes.length <= CLOSE_REASON_BYTES) return why;
  let end = CLOSE_REASON_BYTES;
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--; // not inside a UTF-8 sequence
  return bytes.subarray(0, end).toString();
}

/** A message type as quoted in a refusal: a peer's text, so at most 40 characters of it. */
const quoteType = (t: unknown): string => String(JSON.stringify(t)).slice(0, 40);

const isOffset = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isId = (v: unknown): v is string => typeof v === 'string' && /^[\x21-\x7e]{1,128}$/.test(v);
/** A node_id as the config allows it (so an (origin, incarnation) pair names one replica only). */
const isNodeId = (v: unknown): v is string => typeof v === 'string' && NAME.test(v);
/** An incarnation: hex, as Log mints it. */
export const isIncarnation = (v: unknown): v is string => typeof v === 'string' && /^[0-9a-f]{1,64}$/.test(v);

/** A text frame's JSON object, or what is wrong with it. */
function jsonObject(text: string): Record<string, unknown> | string {
  let m: unknown;
  try {
    m = JSON.parse(text);
  } catch {
    return 'text frame is not JSON';
  }
  if (m === null || typeof m !== 'object') return 'text frame is not a JSON object';
  return m as Record<string, unknown>;
}

/** Parses a text frame from a leader; a string names what is wrong. */
export function parseLeaderMessage(text: string): Hello | Progress | string {
  const m = jsonObject(text);
  if (typeof m === 'string') return m;
  if (m.t === 'hello') {
    if (!isNodeId(m.node_id) || !isIncarnation(m.incarnation) || !isOffset(m.first) || !isOffset(m.durable)) return 'hello lacks node_id (a config name), incarnation (hex), first or durable';
    return m as unknown as Hello;
  }
  if (m.t === 'progress') {
    if (!isOffset(m.first) || !isOffset(m.durable) || m.finished === null || typeof m.finished !== 'object') return 'progress lacks first, durable or finished';
    for (const v of Object.values(m.finished as object)) if (!isOffset(v)) return 'progress has a finished offset that is not an offset';
    if (m.taken !== undefined) {
      if (!Array.isArray(m.taken) || m.taken.length > TAKEN_MAX) return `progress has taken that is not a list of at most ${TAKEN_MAX}`;
      for (const r of m.taken as Record<string, unknown>[]) {
        if (r === null || typeof r !== 'object' || !isNodeId(r.origin) || !isIncarnation(r.incarnation) || typeof r.delivering !== 'boolean' || r.finished === null || typeof r.finished !== 'object') {
          return 'progress has a taken report without origin, incarnation, delivering or finished';
        }
        for (const v of Object.values(r.finished as object)) if (!isOffset(v)) return 'progress has a taken finished offset that is not an offset';
        if (r.flushed !== undefined && !isOffset(r.flushed)) return 'progress has a taken flushed offset that is not an offset';
      }
    }
    return m as unknown as Progress;
  }
  return `unknown message type ${quoteType(m.t)}`;
}

/** Parses a text frame from a follower; a string names what is wrong. */
export function parseFollowerMessage(text: string): Want | Flushed | string {
  const m = jsonObject(text);
  if (typeof m === 'string') return m;
  if (m.t === 'want') {
    if (!isId(m.incarnation) || !isOffset(m.from)) return 'want lacks incarnation or from';
    return m as unknown as Want;
  }
  if (m.t === 'flushed') {
    if (!isId(m.incarnation) || !isOffset(m.offset)) return 'flushed lacks incarnation or offset';
    return m as unknown as Flushed;
  }
  return `unknown message type ${quoteType(m.t)}`;
}
