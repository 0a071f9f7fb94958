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

const VERSION = 1;
const FIELDS = 11;

const packr = new Packr({ useRecords: false, structuredClone: false, moreTypes: false, bundleStrings: false });

/**
 * Encodes an envelope; the offset is passed apart so that callers need not copy the
 * request's fields into a new object (`{ ...e, offset }` costs a map transition per request).
 */
export function encodeEnvelope(e: Omit<Envelope, 'offset'>, offset: number): Buffer {
  const flat: string[] = new Array(e.headers.length * 2);
  for (let i = 0; i < e.headers.length; i++) {
    const h = e.headers[i]!;
    flat[2 * i] = h[0];
    flat[2 * i + 1] = h[1];
  }
  return packr.pack([VERSION, e.id, offset, e.received_at, e.route, e.method, e.path, e.query, flat, e.remote, e.body]);
}

export class EnvelopeDecodeError extends Error {
  readonly code = 'CROWD_ERR_ENVELOPE';
}

export function decodeEnvelope(bytes: Uint8Array): Envelope {
  const a = packr.unpack(bytes) as unknown[];
  if (!Array.isArray(a) || a.length !== FIELDS || a[0] !== VERSION) {
    throw new EnvelopeDecodeError(`not a version ${VERSION} envelope (${bytes.length} bytes)`);
  }
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
    body: a[10] as Uint8Array,
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
