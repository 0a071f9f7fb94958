/**
 * The http sink: replays a stored request to the target URL over keep-alive connections
 * (an undici Pool with `concurrency` connections).
 *
 * What counts as the answer: the status line. A 2xx is delivered as soon as it is read; the
 * rest of the answer is read and dropped for at most RESPONSE_DRAIN_MS (then the connection is
 * closed). Any other answer, a timeout or an unreadable answer closes the connection: bytes an
 * upstream writes after a refusal are never read as the answer to the next request.
 *
 * What the upstream receives: the original method; the target URL's path followed by the
 * request's path and query; the body bytes unchanged; the request's end-to-end headers
 * without hop-by-hop ones and `host`; plus Idempotency-Key (= the request id, the same on
 * every attempt), Crowd-Id, Crowd-Attempt, Crowd-Received-At and X-Forwarded-For/-Proto/-Host.
 */
import { Pool, buildConnector } from 'undici';
import type { TargetConfig } from '../../config/schema';
import type { Envelope } from '../../log/codec';
import { dropInterimContinue } from './interim';
import type { AttemptResult, Sink } from './sink';

/** Hop-by-hop headers and the ones crowd sets itself: never copied from the stored request. */
const NOT_FORWARDED = new Set([
  'connection',
  'keep-alive',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
  'content-length',
  'expect',
  'idempotency-key',
  'crowd-id',
  'crowd-attempt',
  'crowd-received-at',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
]);

/** Response bytes read (and dropped) before the connection is closed instead of reused. */
const RESPONSE_DRAIN_MAX = 64 * 1024;
/** How long the rest of a 2xx answer is read (after its status) before the connection is closed instead. */
const RESPONSE_DRAIN_MS = 500;
/** Largest answer head read (undici's default is 16 KiB); a larger one dead-letters the request. */
export const MAX_ANSWER_HEADER_BYTES = 256 * 1024;
/** Characters of a redirect's Location kept in the error. */
const LOCATION_MAX = 300;
/**
 * A sweeper that runs this much later than its period means the process did not run (stopped,
 * swapped out, a long pause): answers may wait unread in the sockets, so it gives them one
 * turn of the event loop (setImmediate runs after the sockets are read) before it expires
 * anything.
 */
const STALL_MS = 100;

/** Builds the upstream headers as undici's flat [name, value, ...] list. */
export function upstreamHeaders(e: Envelope, attempt: number): string[] {
  const out: string[] = [];
  let host = '';
  let forwardedFor = '';
  for (const [k, v] of e.headers) {
    if (k === 'host') host = v;
    else if (k === 'x-forwarded-for') forwardedFor = forwardedFor ? `${forwardedFor}, ${v}` : v;
    if (NOT_FORWARDED.has(k) || k.startsWith('proxy-')) continue;
    out.push(k, v);
  }
  out.push(
    'idempotency-key',
    e.id,
    'crowd-id',
    e.id,
    'crowd-attempt',
    String(attempt),
    'crowd-received-at',
    new Date(e.received_at).toISOString(),
    'x-forwarded-for',
    forwardedFor ? `${forwardedFor}, ${e.remote}` : e.remote,
    'x-forwarded-proto',
    'http',
  );
  if (host) out.push('x-forwarded-host', host);
  return out;
}

/** Characters that may not appear raw in a request target: percent-encoded (UTF-8) when sent. */
const UNSAFE_IN_TARGET = /[^\x21-\x7e]/gu;

/**
 * One attempt, as an undici dispatch handler: the status, Retry-After and Location are all it
 * needs, so the answer's body is counted and dropped as it arrives (no stream objects), and the
 * attempt can be aborted without an AbortSignal (the sink's sweeper enforces the deadline).
 * The result is given once (at the status line, or at the error); the attempt stays with the
 * sink until undici is done with its connection.
 */
class Attempt {
  status: number | null = null;
  bytes = 0;
  private abortFn: ((err?: Error) => void) | null = null;
  private resolved = false;
  private done = false;
  timedOut = false;

  constructor(
    /** When the attempt runs out of time: the target's timeout, then the drain limit once a 2xx is in. */
    public deadline: number,
    private readonly resolve: (r: AttemptResult) => void,
    private readonly sink: HttpSink,
  ) {}

  onConnect(abort: (err?: Error) => void): void {
    this.abortFn = abort;
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[] | string[]): boolean {
    if (statusCode < 200) return true; // 1xx: the real answer follows
    this.status = statusCode;
    if (statusCode < 300) {
      this.answer({ status: statusCode, retryAfter: null, error: '', timedOut: false, unsendable: false });
      this.deadline = Math.min(this.deadline, performance.now() + RESPONSE_DRAIN_MS);
      return true;
    }
    let retryAfter: string | null = null;
    let location: string | null = null;
    for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
      const name = rawHeaders[i]!.toString().toLowerCase();
      if (name === 'retry-after') retryAfter = rawHeaders[i + 1]!.toString();
      else if (name === 'location') location = rawHeaders[i + 1]!.toString('latin1').slice(0, LOCATION_MAX);
    }
    const error = location !== null && statusCode < 400 ? `upstream answered ${statusCode} (Location: ${location})` : `upstream answered ${statusCode}`;
    this.answer({ status: statusCode, retryAfter, error, timedOut: false, unsendable: false });
    // Not reused: whatever the upstream writes next on this connection is not an answer to anything.
    this.abort(new Error(`closed after a ${statusCode} answer`));
    return false;
  }

  onData(chunk: Buffer): boolean {
    this.bytes += chunk.length;
    // A large answer is not read to its end: the connection is closed instead of reused.
    if (this.bytes > RESPONSE_DRAIN_MAX) this.abort(new Error(`answer larger than ${RESPONSE_DRAIN_MAX} bytes`));
    return true;
  }

  onComplete(): void {
    this.finish(null);
  }

  onError(err: Error): void {
    this.finish(err);
  }

  abort(err: Error): void {
    if (this.done) return;
    if (this.abortFn) this.abortFn(err);
    else this.finish(err);
  }

  private answer(r: AttemptResult): void {
    if (this.resolved) return;
    this.resolved = true;
    this.resolve(r);
  }

  private finish(err: Error | null): void {
    if (this.done) return;
    this.done = true;
    this.sink.finished(this);
    if (this.resolved) return; // the status decided; how the rest of the answer went does not matter
    if (this.timedOut) {
      this.answer({ status: null, retryAfter: null, error: `UND_ERR_TIMEOUT no answer within the target timeout`, timedOut: true, unsendable: false });
      return;
    }
    const e2 = err as Error & { code?: string; cause?: Error & { code?: string } };
    const code = e2?.code ?? e2?.cause?.code ?? '';
    if (code === 'UND_ERR_HEADERS_OVERFLOW') {
      // The status line came but the answer cannot be read: retrying would make the upstream
      // process the request again and again, for an answer crowd still could not read.
      this.answer({ status: null, retryAfter: null, error: `${code} the answer's headers are larger than ${MAX_ANSWER_HEADER_BYTES / 1024} KiB: dead-lettered without a retry (the upstream may have processed it)`, timedOut: false, unsendable: true });
      return;
    }
    const timedOut = code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT';
    const detail = e2?.cause?.message && e2.cause.message !== e2.message ? `${e2.message}: ${e2.cause.message}` : (e2?.message ?? 'no answer');
    // undici refused to build the request (a header or path it cannot send): no retry can help.
    const unsendable = code === 'UND_ERR_INVALID_ARG' || code === 'ERR_INVALID_CHAR' || code === 'ERR_INVALID_HTTP_TOKEN';
    this.answer({ status: null, retryAfter: null, error: `${code ? code + ' ' : ''}${detail}`, timedOut, unsendable });
  }
}

export class HttpSink implements Sink {
  private readonly pool: Pool;
  private readonly basePath: string;
  private readonly baseQuery: string;
  private readonly timeout: number;
  /** One timer for all attempts in flight: cheaper than a timer (or an AbortSignal) per request. */
  private readonly running = new Set<Attempt>();
  private sweeper: NodeJS.Timeout | null = null;
  private lastSweep = 0;
  private recheck: NodeJS.Immediate | null = null;

  constructor(target: TargetConfig) {
    const url = new URL(target.url);
    this.basePath = url.pathname.replace(/\/+$/, '');
    this.baseQuery = url.search.slice(1);
    this.timeout = target.timeout;
    const connector = buildConnector({ timeout: target.timeout });
    this.pool = new Pool(url.origin, {
      connections: target.concurrency,
      pipelining: 1,
      connect: (opts, callback) =>
        connector(opts, (err, socket) => {
          if (socket) dropInterimContinue(socket);
          (callback as (e: Error | null, s: typeof socket) => void)(err, socket);
        }),
      // The sweeper bounds each attempt (and checks for a stalled process first); undici's own
      // timers would expire answers that wait unread in the sockets after a stall.
      headersTimeout: 0,
      bodyTimeout: 0,
      maxHeaderSize: MAX_ANSWER_HEADER_BYTES,
    });
  }

  /** The path and query sent upstream for a stored request (non-ASCII and spaces percent-encoded). */
  requestPath(e: Envelope): string {
    const query = this.baseQuery === '' ? e.query : e.query === '' ? this.baseQuery : `${this.baseQuery}&${e.query}`;
    const target = this.basePath + e.path + (query ? `?${query}` : '');
    return target.replace(UNSAFE_IN_TARGET, (c) => encodeURIComponent(c));
  }

  /**
   * Sends one attempt. The whole attempt (connecting, sending, the answer) is bounded by the
   * target's `timeout`; undici's own timeouts restart on activity.
   */
  send(e: Envelope, attempt: number): Promise<AttemptResult> {
    const hasBody = e.body.length > 0 || (e.method !== 'GET' && e.method !== 'HEAD');
    return new Promise((resolve) => {
      const a = new Attempt(performance.now() + this.timeout, resolve, this);
      this.running.add(a);
      this.sweep();
      try {
        this.pool.dispatch({ method: e.method as 'POST', path: this.requestPath(e), headers: upstreamHeaders(e, attempt), body: hasBody ? e.body : null }, a);
      } catch (err) {
        a.onError(err as Error);
      }
    });
  }

  /** Called by an attempt once it is over. */
  finished(a: Attempt): void {
    this.running.delete(a);
  }

  /** Aborts the requests past their deadline; runs while any are in flight. */
  private sweep(): void {
    if (this.sweeper) return;
    const period = Math.max(5, Math.min(1000, Math.floor(this.timeout / 10)));
    this.lastSweep = performance.now();
    this.sweeper = setInterval(() => {
      const now = performance.now();
      const late = now - this.lastSweep > period + STALL_MS;
      this.lastSweep = now;
      if (late) {
        // The process stalled: read the sockets first, then expire what is still unanswered.
        this.recheck ??= setImmediate(() => {
          this.recheck = null;
          this.expire(performance.now());
        });
      } else if (this.recheck === null) this.expire(now);
      if (this.running.size === 0 && this.sweeper) {
        clearInterval(this.sweeper);
        this.sweeper = null;
      }
    }, period);
    this.sweeper.unref();
  }

  private expire(now: number): void {
    for (const a of this.running) {
      if (now >= a.deadline) {
        if (a.status === null) a.timedOut = true;
        a.abort(new Error('target timeout'));
      }
    }
  }

  async close(): Promise<void> {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = null;
    if (this.recheck) clearImmediate(this.recheck);
    this.recheck = null;
    await this.pool.destroy().catch(() => undefined);
  }
}
