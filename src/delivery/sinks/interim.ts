/**
 * Unsolicited `100 Continue` answers, removed before undici reads them.
 *
 * RFC 9110 15.2 says a client must accept a 1xx answer it did not ask for; undici 7 destroys
 * the connection on any `100` ("bad response"), so an upstream that always sends one before
 * its real answer would look as if it never answered (and get every request again, forever).
 * crowd never sends `Expect: 100-continue`, so a 100 carries nothing it needs: the bytes of
 * `HTTP/1.x 100 ...\r\n...\r\n\r\n` at the start of an answer are dropped here, at the socket.
 *
 * Where an answer starts: the socket is used for one request at a time (pipelining 1) and
 * undici writes each request's head as one string (bodies are Buffers), so the first bytes
 * read after a string write start the answer to it. Only those bytes are looked at; the rest
 * of an answer passes untouched, at the cost of one boolean test per read.
 */
import type { Duplex } from 'node:stream';

/** Bytes of interim answers held while waiting for their end; past this, undici gets them as they are. */
const MAX_INTERIM_BYTES = 16 * 1024;
const PREFIX = Buffer.from('HTTP/1.');

/** 'yes': `chunk` starts with a complete-enough `HTTP/1.x 100 ` line; 'more': cannot tell yet; 'no'. */
function isContinue(chunk: Buffer): 'yes' | 'no' | 'more' {
  const n = Math.min(chunk.length, 13);
  for (let i = 0; i < n; i++) {
    const want = i < 7 ? PREFIX[i] : i === 8 ? 0x20 : i === 9 ? 0x31 : i === 10 || i === 11 ? 0x30 : -1;
    if (i === 7) {
      if (chunk[i] !== 0x30 && chunk[i] !== 0x31) return 'no';
    } else if (i === 12) {
      if (chunk[i] !== 0x20 && chunk[i] !== 0x0d) return 'no';
    } else if (chunk[i] !== want) return 'no';
  }
  return n < 13 ? 'more' : 'yes';
}

/** interimEnd's answer when the block is not one crowd skips safely. */
const UNSURE = -2;
const HTTP_SLASH = Buffer.from('HTTP/');

/**
 * Where the interim answer at the start of `chunk` ends (the index after its blank line),
 * -1 when more bytes are needed, or UNSURE: a bare LF, or a line starting with `HTTP/` before
 * the blank line (the next answer's status line), in which case nothing is skipped and
 * undici sees the bytes as they came. Only strict CRLF heads are skipped, so the real
 * answer's status line is never mistaken for part of the interim one.
 */
function interimEnd(chunk: Buffer): number {
  let pos = 0;
  for (let line = 0; ; line++) {
    const lf = chunk.indexOf(0x0a, pos);
    if (lf < 0) return -1;
    if (lf === pos || chunk[lf - 1] !== 0x0d) return UNSURE;
    if (line > 0) {
      if (lf - 1 === pos) return lf + 1; // the blank line
      if (chunk.subarray(pos, pos + 5).equals(HTTP_SLASH)) return UNSURE;
    }
    pos = lf + 1;
  }
}

/** Makes `socket` drop interim 100 answers for the HTTP/1.1 client that reads it (undici). */
export function dropInterimContinue(socket: Duplex): void {
  const read = socket.read;
  const write = socket.write;
  let atStart = true;
  let held: Buffer | null = null;
  socket.write = function (this: Duplex, chunk: unknown, ...rest: unknown[]): boolean {
    if (typeof chunk === 'string') atStart = true;
    return (write as (...a: unknown[]) => boolean).call(this, chunk, ...rest);
  } as Duplex['write'];
  socket.read = function (this: Duplex, size?: number): unknown {
    let chunk = read.call(this, size) as Buffer | null;
    if (!atStart || chunk === null) return chunk;
    for (;;) {
      if (held !== null) {
        chunk = Buffer.concat([held, chunk]);
        held = null;
      }
      const verdict = isContinue(chunk);
      if (verdict === 'no') {
        atStart = false;
        return chunk;
      }
      const end = verdict === 'yes' ? interimEnd(chunk) : -1;
      if (end === UNSURE) {
        atStart = false; // not an interim answer crowd can skip safely: undici judges it
        return chunk;
      }
      if (end < 0) {
        if (chunk.length > MAX_INTERIM_BYTES) {
          atStart = false; // not an interim answer crowd can skip: undici judges it
          return chunk;
        }
        held = chunk; // wait for the rest
      } else if (end < chunk.length) {
        chunk = chunk.subarray(end); // another interim answer, or the real one
        continue;
      }
      const next = read.call(this, size) as Buffer | null;
      if (next === null) return null;
      chunk = next;
    }
  } as Duplex['read'];
}
