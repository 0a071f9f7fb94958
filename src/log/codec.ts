/**
 * The envelope: everything crowd keeps of one request. Encoded once at ingest with msgpackr
 * (plain arrays, no shared structures, so any node decodes any bytes), stored as raw bytes,
 * and the same bytes go to disk, to peers and to the dead-letter store.
 */
import { Packr } from 'msgpackr';

export interface Envelope {
  /** UUIDv7 minted at ingest; the Idempotency-Key of every delivery attempt. */
  readonly id: string;
  /** Position in this node's log; integers below 2^53. */
  readonly offset: number;
  /** Milliseconds since the epoch. */
  readonly received_at: number;
  readonly route: string;
  readonly method: string;
  readonly path: string;
  /** Raw query string without "?"; empty when there is none. */
  readonly query: string;
  /** Lower-cased names, original order, hop-by-hop headers removed. */
  readonly headers: readonly (readonly [string, string])[];
  readonly remote: string;
  readonly body: Uint8Array;
}

/** What ingest hands to the log: the envelope before its offset, headers as one flat list. */
export interface EnvelopeInput {
  readonly id: string;
  readonly received_at: number;
  readonly route: string;
  readonly method: string;
  readonly path: string;
  readonly query: string;
  /** name, value, name, value, ... (one array per request instead of one per header). */
  readonly headerList: readonly string[];
  readonly remote: string;
  readonly body: Uint8Array;
}

export function flattenHeaders(headers: readonly (readonly [string, string])[]): string[] {
  const flat: string[] = [];
  for (const [k, v] of headers) flat.push(k, v);
  return flat;
}

const VERSION = 1;
const FIELDS = 11;

const packr = new Packr({ useRecords: false, structuredClone: false, moreTypes: false, bundleStrings: false });

/**
 * Encodes an envelope as a MessagePack array that msgpackr decodes (`decodeEnvelope`).
 * Written by hand because this runs once per request on the ingest hot path: msgpackr's
 * generic `pack` cost about 2.7 µs per request there (a tenth of the main thread), this
 * about a third of that. The unit tests check that msgpackr decodes every shape it writes
 * to the same values as msgpackr's own encoding. The offset is passed apart so that
 * callers need not copy the request's fields into a new object.
 *
 * Output buffers are slices of a slab that is only ever appended to, never rewritten:
 * lmdb-js may read a value after `put` returned.
 */
export function encodeEnvelope(e: EnvelopeInput, offset: number): Buffer {
  let bound = 64 + e.body.length + 5;
  bound += maxStr(e.id) + maxStr(e.route) + maxStr(e.method) + maxStr(e.path) + maxStr(e.query) + maxStr(e.remote);
  const h = e.headerList;
  for (let i = 0; i < h.length; i++) bound += maxStr(h[i]!);
  if (slabPos + bound > slab.length) {
    slab = Buffer.allocUnsafeSlow(Math.max(SLAB_BYTES, bound));
    slabPos = 0;
  }
  const b = slab;
  const start = slabPos;
  let p = start;
  b[p++] = 0x90 | FIELDS; // fixarray of 11
  b[p++] = VERSION; // positive fixint
  p = writeStr(b, p, e.id);
  p = writeUint(b, p, offset);
  p = writeUint(b, p, e.received_at);
  p = writeStr(b, p, e.route);
  p = writeStr(b, p, e.method);
  p = writeStr(b, p, e.path);
  p = writeStr(b, p, e.query);
  const n = h.length;
  if (n < 16) b[p++] = 0x90 | n;
  else if (n < 0x10000) {
    b[p++] = 0xdc;
    p = b.writeUInt16BE(n, p);
  } else {
    b[p++] = 0xdd;
    p = b.writeUInt32BE(n, p);
  }
  for (let i = 0; i < n; i++) p = writeStr(b, p, h[i]!);
  p = writeStr(b, p, e.remote);
  const len = e.body.length;
  if (len < 0x100) {
    b[p++] = 0xc4;
    b[p++] = len;
  } else if (len < 0x10000) {
    b[p++] = 0xc5;
    p = b.writeUInt16BE(len, p);
  } else {
    b[p++] = 0xc6;
    p = b.writeUInt32BE(len, p);
  }
  b.set(e.body, p);
  p += len;
  slabPos = p;
  return b.subarray(start, p);
}

const SLAB_BYTES = 256 * 1024;
let slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
let slabPos = 0;

/** Bytes a string can take: 3 per UTF-16 unit at most, plus a 5-byte header. */
function maxStr(s: string): number {
  return s.length * 3 + 5;
}

function writeStr(b: Buffer, p: number, s: string): number {
  const n = s.length;
  // Short ASCII strings (nearly every field) are copied by a plain loop: cheaper than a
  // call into Buffer#write for a few dozen bytes.
  if (n < 0x100) {
    const h = n < 32 ? 1 : 2;
    let q = p + h;
    let i = 0;
    for (; i < n; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0x80) break;
      b[q++] = c;
    }
    if (i === n) {
      if (h === 1) b[p] = 0xa0 | n;
      else {
        b[p] = 0xd9;
        b[p + 1] = n;
      }
      return q;
    }
  }
  // Reserve the largest header the byte length could need, then move the bytes if smaller.
  const max = n * 3;
  const header = max < 32 ? 1 : max < 0x100 ? 2 : max < 0x10000 ? 3 : 5;
  const written = b.write(s, p + header, max, 'utf8');
  let h: number;
  if (written < 32) h = 1;
  else if (written < 0x100) h = 2;
  else if (written < 0x10000) h = 3;
  else h = 5;
  if (h !== header) b.copyWithin(p + h, p + header, p + header + written);
  if (h === 1) b[p] = 0xa0 | written;
  else if (h === 2) {
    b[p] = 0xd9;
    b[p + 1] = written;
  } else if (h === 3) {
    b[p] = 0xda;
    b.writeUInt16BE(written, p + 1);
  } else {
    b[p] = 0xdb;
    b.writeUInt32BE(written, p + 1);
  }
  return p + h + written;
}

/** Non-negative integers below 2^53: uint8/16/32, else float64 (exact for them). */
function writeUint(b: Buffer, p: number, v: number): number {
  if (v < 0x80) {
    b[p] = v;
    return p + 1;
  }
  if (v < 0x100) {
    b[p] = 0xcc;
    b[p + 1] = v;
    return p + 2;
  }
  if (v < 0x10000) {
    b[p] = 0xcd;
    return b.writeUInt16BE(v, p + 1);
  }
  if (v < 0x1_0000_0000) {
    b[p] = 0xce;
    return b.writeUInt32BE(v, p + 1);
  }
  b[p] = 0xcb;
  return b.writeDoubleBE(v, p + 1);
}

/** The same envelope encoded by msgpackr's generic packer (tests compare against it). */
export function encodeEnvelopeWithPackr(e: EnvelopeInput, offset: number): Buffer {
  return packr.pack([VERSION, e.id, offset, e.received_at, e.route, e.method, e.path, e.query, [...e.headerList], e.remote, e.body]);
}

export class EnvelopeDecodeError extends Error {
  readonly code = 'CROWD_ERR_ENVELOPE';
}

/**
 * Decodes stored envelope bytes. The body is a view into `bytes` (msgpackr does not copy
 * binary fields) unless `copyBody`: callers that keep the envelope across awaits must copy,
 * because lmdb-js may reuse its read buffers.
 */
export function decodeEnvelope(bytes: Uint8Array, copyBody = false): Envelope {
  const a = packr.unpack(bytes) as unknown[];
  if (!Array.isArray(a) || a.length !== FIELDS || a[0] !== VERSION) {
    throw new EnvelopeDecodeError(`not a version ${VERSION} envelope (${bytes.length} bytes)`);
  }
  return fromFields(a, copyBody);
}

/** The largest time a Date holds (`crowd tail` prints received_at as an ISO date). */
const MAX_DATE_MS = 8.64e15;
const isString = (v: unknown): boolean => typeof v === 'string';
const isCount = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0;
/** The type each field must have, by position (the version is checked apart). */
const FIELD_CHECKS: [string, (v: unknown) => boolean][] = [
  ['version', () => true],
  ['id', isString],
  ['offset', isCount],
  ['received_at', (v) => isCount(v) && (v as number) <= MAX_DATE_MS],
  ['route', isString],
  ['method', isString],
  ['path', isString],
  ['query', isString],
  ['headers', (v) => Array.isArray(v) && v.length % 2 === 0 && v.every(isString)],
  ['remote', isString],
  ['body', (v) => v instanceof Uint8Array],
];

/**
 * Decodes envelope bytes that come from outside this node (a peer's record) and checks the
 * type of every field, so that what is stored reads back like an envelope written here
 * (`decodeEnvelope` trusts the local log and checks only the shape). Throws
 * EnvelopeDecodeError naming the first wrong field, without quoting its value.
 */
export function decodeCheckedEnvelope(bytes: Uint8Array): Envelope {
  let a: unknown;
  try {
    a = packr.unpack(bytes);
  } catch (err) {
    throw new EnvelopeDecodeError(`not MessagePack (${bytes.length} bytes: ${(err as Error).message})`);
  }
  if (!Array.isArray(a) || a.length !== FIELDS || a[0] !== VERSION) {
    throw new EnvelopeDecodeError(`not a version ${VERSION} envelope (${bytes.length} bytes)`);
  }
  for (let i = 1; i < FIELDS; i++) {
    const [name, ok] = FIELD_CHECKS[i]!;
    if (!ok(a[i])) throw new EnvelopeDecodeError(`field ${name} has the wrong type or value`);
  }
  return fromFields(a, false);
}

function fromFields(a: unknown[], copyBody: boolean): Envelope {
  const flat = a[8] as string[];
  const headers: [string, string][] = [];
  for (let i = 0; i + 1 < flat.length; i += 2) headers.push([flat[i]!, flat[i + 1]!]);
  return {
    id: a[1] as string,
    offset: a[2] as number,
    received_at: a[3] as number,
    route: a[4] as string,
    method: a[5] as string,
    path: a[6] as string,
    query: a[7] as string,
    headers,
    remote: a[9] as string,
    body: copyBody ? Buffer.from(a[10] as Uint8Array) : (a[10] as Uint8Array),
  };
}

/** JSON form for `crowd tail`: the body as text when it is valid UTF-8, base64 otherwise. */
export function envelopeToJson(e: Envelope): Record<string, unknown> {
  const body = Buffer.from(e.body.buffer, e.body.byteOffset, e.body.byteLength);
  let text: string | null = null;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(body);
  } catch {
    text = null;
  }
  return {
    offset: e.offset,
    id: e.id,
    received_at: new Date(e.received_at).toISOString(),
    route: e.route,
    method: e.method,
    path: e.path,
    query: e.query,
    headers: Object.fromEntries(groupHeaders(e.headers)),
    remote: e.remote,
    body_encoding: text === null ? 'base64' : 'utf8',
    body: text === null ? body.toString('base64') : text,
  };
}

function groupHeaders(headers: readonly (readonly [string, string])[]): [string, string][] {
  const m = new Map<string, string>();
  for (const [k, v] of headers) m.set(k, m.has(k) ? `${m.get(k)}, ${v}` : v);
  return [...m];
}

/**
 * The route of an encoded envelope without decoding the rest: counting a target's backlog
 * reads millions of envelopes and needs only this field (the fifth of the array).
 */
export function routeOf(b: Uint8Array): string {
  let p = 2; // fixarray header, version
  p = skipStr(b, p); // id
  p = skipUint(b, p); // offset
  p = skipUint(b, p); // received_at
  const t = b[p]!;
  let n: number;
  if ((t & 0xe0) === 0xa0) {
    n = t & 0x1f;
    p += 1;
  } else if (t === 0xd9) {
    n = b[p + 1]!;
    p += 2;
  } else if (t === 0xda) {
    n = (b[p + 1]! << 8) | b[p + 2]!;
    p += 3;
  } else throw new EnvelopeDecodeError(`route field has msgpack type 0x${t.toString(16)}`);
  let ascii = true;
  for (let i = 0; i < n; i++) if (b[p + i]! >= 0x80) ascii = false;
  if (ascii) return String.fromCharCode.apply(null, Array.from(b.subarray(p, p + n)));
  return Buffer.from(b.buffer, b.byteOffset + p, n).toString('utf8');
}

function skipStr(b: Uint8Array, p: number): number {
  const t = b[p]!;
  if ((t & 0xe0) === 0xa0) return p + 1 + (t & 0x1f);
  if (t === 0xd9) return p + 2 + b[p + 1]!;
  if (t === 0xda) return p + 3 + ((b[p + 1]! << 8) | b[p + 2]!);
  if (t === 0xdb) return p + 5 + (((b[p + 1]! << 24) | (b[p + 2]! << 16) | (b[p + 3]! << 8) | b[p + 4]!) >>> 0);
  throw new EnvelopeDecodeError(`expected a msgpack string, got type 0x${t.toString(16)}`);
}

function skipUint(b: Uint8Array, p: number): number {
  const t = b[p]!;
  if (t < 0x80) return p + 1;
  if (t === 0xcc) return p + 2;
  if (t === 0xcd) return p + 3;
  if (t === 0xce) return p + 5;
  if (t === 0xcf || t === 0xcb) return p + 9;
  throw new EnvelopeDecodeError(`expected a msgpack integer, got type 0x${t.toString(16)}`);
}

/** The stored bytes of a decoded envelope (what the dead-letter and retry stores keep). */
export function reencodeEnvelope(e: Envelope): Buffer {
  return Buffer.from(encodeEnvelope({ id: e.id, received_at: e.received_at, route: e.route, method: e.method, path: e.path, query: e.query, headerList: flattenHeaders(e.headers), remote: e.remote, body: e.body }, e.offset));
}
