/**
 * What crowd refuses at ingest because it could not forward it unchanged: header values
 * outside printable ASCII, request targets with dot segments, backslashes, fragments or bytes
 * outside ASCII, and framing headers that the header list shows as ambiguous. Each check is one
 * pass over the strings uWebSockets.js hands over, without regular expressions (hot path).
 *
 * uWebSockets.js decodes header values, the path and the query as UTF-8 (an invalid byte
 * arrives as U+FFFD), so a byte >= 0x80 is seen as a character >= U+0080: its first UTF-8 byte
 * is named, or, for U+FFFD, "a byte of 0x80 or above that is not UTF-8". Positions count bytes
 * from 0; everything before the first bad character is ASCII, so they are exact.
 */

import { dropNominated } from './hop-by-hop';

/** Headers not stored: hop-by-hop ones, framing that the stored body makes moot, and `expect`. */
const DROPPED_HEADERS = new Set(['connection', 'keep-alive', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'content-length', 'expect']);

/** How much of a path or value an error message quotes. */
export const ECHO_CHARS = 200;

/** `s` quoted whole when short, else its first ECHO_CHARS characters and its length. */
export function shorten(s: string): string {
  return s.length <= ECHO_CHARS ? s : `${s.slice(0, ECHO_CHARS)}... (${s.length} characters)`;
}

/** Names the byte a decoded character came from. */
function describe(s: string, i: number): string {
  const c = s.codePointAt(i)!;
  if (c === 0xfffd) return `a byte of 0x80 or above that is not UTF-8 at position ${i}`;
  const first = c < 0x80 ? c : c < 0x800 ? 0xc0 | (c >> 6) : c < 0x10000 ? 0xe0 | (c >> 12) : 0xf0 | (c >> 18);
  return `a byte 0x${first.toString(16).toUpperCase().padStart(2, '0')} at position ${i}`;
}

/** Index of the first character outside printable ASCII and tab, or -1. */
function badValueChar(v: string): number {
  for (let i = 0; i < v.length; i++) {
    const c = v.charCodeAt(i);
    if (c >= 0x7f || (c < 0x20 && c !== 0x09)) return i;
  }
  return -1;
}

function isChunked(v: string): boolean {
  return v === 'chunked' || (v.length === 7 && v.toLowerCase() === 'chunked');
}

function isDigits(v: string): boolean {
  if (v.length === 0 || v.length > 15) return false;
  for (let i = 0; i < v.length; i++) {
    const c = v.charCodeAt(i);
    if (c < 0x30 || c > 0x39) return false;
  }
  return true;
}

/**
 * One pass over a request's header list (feed it from req.forEach): collects the headers to
 * store and notes the first problem. `framing` problems leave the end of the body unknown:
 * answer them and close the connection without reading on.
 */
export class HeaderScan {
  /** Name, value, name, value... of the headers to store (authorization included). */
  readonly stored: string[] = [];
  error: string | null = null;
  framing = false;
  contentLength = '';
  /** The values of the Connection header lines, comma-joined: the headers they name are not stored. */
  private connection = '';
  private lengths = 0;
  private codings = 0;
  private hosts = 0;
  private coding = '';

  readonly add = (k: string, v: string): void => {
    const bad = badValueChar(v);
    if (bad >= 0 && this.error === null) this.error = `header "${k}": value has ${describe(v, bad)}: only printable ASCII and tab are accepted`;
    if (DROPPED_HEADERS.has(k)) {
      if (k === 'content-length') {
        if (this.lengths++ === 0) this.contentLength = v;
      } else if (k === 'transfer-encoding') {
        if (this.codings++ === 0) this.coding = v;
      } else if (k === 'connection') this.connection += `,${v}`;
      return;
    }
    if (k === 'host') this.hosts++;
    else if (k.charCodeAt(0) === 0x70 /* p */ && k.startsWith('proxy-')) return;
    this.stored.push(k, v);
  };

  /** Ends the scan: the error to answer 400 with, or null. */
  finish(): string | null {
    // Headers named in Connection are hop-by-hop (RFC 9110 7.6.1): not stored, never forwarded.
    if (this.connection !== '') dropNominated(this.stored, this.connection);
    let framing: string | null = null;
    if (this.lengths > 1) framing = `header "content-length" appears ${this.lengths} times: send it once`;
    else if (this.codings > 1) framing = `header "transfer-encoding" appears ${this.codings} times: send it once`;
    else if (this.lengths === 1 && this.codings === 1) framing = 'headers "content-length" and "transfer-encoding" are both present: send one of them';
    else if (this.codings === 1 && !isChunked(this.coding)) framing = `header "transfer-encoding": "${shorten(this.coding)}" is not supported: only "chunked" is accepted`;
    else if (this.lengths === 1 && !isDigits(this.contentLength))
      framing = this.contentLength === '' ? 'header "content-length" is empty' : `header "content-length": "${shorten(this.contentLength)}" is not a number of bytes`;
    else if (this.hosts > 1) framing = `header "host" appears ${this.hosts} times: send it once`;
    if (framing !== null) {
      this.framing = true;
      this.error = framing;
    }
    return this.error;
  }
}

/** True for ".", "..", and the same with dots written %2e or %2E. */
function isDotSegment(s: string, from: number, to: number): boolean {
  let dots = 0;
  for (let i = from; i < to; ) {
    const c = s.charCodeAt(i);
    if (c === 0x2e) i++;
    else if (c === 0x25 && s.charCodeAt(i + 1) === 0x32 && (s.charCodeAt(i + 2) | 0x20) === 0x65 && i + 3 <= to) i += 3;
    else return false;
    if (++dots > 2) return false;
  }
  return dots > 0;
}

/**
 * Checks a request target as uWebSockets.js hands it over (path, query): only ASCII without
 * spaces or controls, no fragment, and in the path no backslash and no dot segment (a WHATWG
 * URL parser at the upstream would resolve them, leaving the route or the target's base path).
 * Returns the error to answer 400 with, or null.
 */
export function checkTarget(path: string, query: string): string | null {
  if (path.charCodeAt(0) !== 0x2f) return `path "${shorten(path)}" does not start with "/"`;
  let segment = 1;
  for (let i = 1; i <= path.length; i++) {
    const c = i < path.length ? path.charCodeAt(i) : 0x2f;
    if (c === 0x2f) {
      // Only a short segment starting with "." or "%" can be a dot segment.
      const n = i - segment;
      if (n > 0 && n <= 6 && (path.charCodeAt(segment) === 0x2e || path.charCodeAt(segment) === 0x25) && isDotSegment(path, segment, i))
        return `path has a dot segment "${path.slice(segment, i)}" at position ${segment}: send the path without "." and ".." segments`;
      segment = i + 1;
    } else if (c <= 0x20 || c >= 0x7f) return `path has ${describe(path, i)}: percent-encode bytes outside printable ASCII`;
    else if (c === 0x5c) return `path has a backslash at position ${i}: send "/" or "%5C"`;
    else if (c === 0x23) return `the request target has a fragment ("#") at position ${i}: fragments are not sent in HTTP requests`;
  }
  for (let i = 0; i < query.length; i++) {
    const c = query.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f) return `query has ${describe(query, i)}: percent-encode bytes outside printable ASCII`;
    if (c === 0x23) return `the request target has a fragment ("#") in the query at position ${i}: fragments are not sent in HTTP requests`;
  }
  return null;
}
