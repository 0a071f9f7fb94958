/**
 * The http sink: replays a stored request to the target URL over keep-alive connections
 * (an undici Pool with `concurrency` connections).
 *
 * What the upstream receives: the original method; the target URL's path followed by the
 * request's path and query; the body bytes unchanged; the request's end-to-end headers
 * without hop-by-hop ones and `host`; plus Idempotency-Key (= the request id, the same on
 * every attempt), Crowd-Id, Crowd-Attempt, Crowd-Received-At and X-Forwarded-For/-Proto/-Host.
 */
import { Pool } from 'undici';
import type { TargetConfig } from '../../config/schema';
import type { Envelope } from '../../log/codec';
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

/** A request in flight and the moment it has to be given up. */
interface Running {
  readonly deadline: number;
  readonly ctl: AbortController;
}

export class HttpSink implements Sink {
  private readonly pool: Pool;
  private readonly basePath: string;
  private readonly baseQuery: string;
  private readonly timeout: number;
  /** One timer for all requests in flight: cheaper than a timer per request. */
  private readonly running = new Set<Running>();
  private sweeper: NodeJS.Timeout | null = null;

  constructor(target: TargetConfig) {
    const url = new URL(target.url);
    this.basePath = url.pathname === '/' ? '' : url.pathname.replace(/\/$/, '');
    this.baseQuery = url.search.slice(1);
    this.timeout = target.timeout;
    this.pool = new Pool(url.origin, {
      connections: target.concurrency,
      pipelining: 1,
      connectTimeout: target.timeout,
      headersTimeout: target.timeout,
      bodyTimeout: target.timeout,
    });
  }

  /** The path and query sent upstream for a stored request (non-ASCII and spaces percent-encoded). */
  requestPath(e: Envelope): string {
    const query = [this.baseQuery, e.query].filter((q) => q !== '').join('&');
    const target = this.basePath + e.path + (query ? `?${query}` : '');
    return target.replace(UNSAFE_IN_TARGET, (c) => encodeURIComponent(c));
  }

  async send(e: Envelope, attempt: number): Promise<AttemptResult> {
    const hasBody = e.body.length > 0 || (e.method !== 'GET' && e.method !== 'HEAD');
    // The whole attempt (waiting for a connection, connecting, sending, the answer) is bounded
    // by `timeout`; undici's own timeouts restart on activity.
    const run: Running = { deadline: performance.now() + this.timeout, ctl: new AbortController() };
    this.running.add(run);
    this.sweep();
    try {
      const res = await this.pool.request({
        method: e.method as 'POST',
        path: this.requestPath(e),
        headers: upstreamHeaders(e, attempt),
        body: hasBody ? e.body : undefined,
        signal: run.ctl.signal,
      });
      const retryAfter = res.headers['retry-after'];
      // The answer counts once its status is in; the body is read (bounded) only so that the
      // connection can be reused, and a slow or failing body does not change the outcome.
      await res.body.dump({ limit: RESPONSE_DRAIN_MAX, signal: run.ctl.signal }).catch(() => undefined);
      const ok = res.statusCode >= 200 && res.statusCode < 300;
      return {
        status: res.statusCode,
        retryAfter: Array.isArray(retryAfter) ? (retryAfter[0] ?? null) : (retryAfter ?? null),
        error: ok ? '' : `upstream answered ${res.statusCode}`,
        timedOut: false,
        unsendable: false,
      };
    } catch (err) {
      if (run.ctl.signal.aborted) return { status: null, retryAfter: null, error: `UND_ERR_TIMEOUT no answer within ${this.timeout} ms (target timeout)`, timedOut: true, unsendable: false };
      const e2 = err as Error & { code?: string; cause?: Error & { code?: string } };
      const code = e2.code ?? e2.cause?.code ?? '';
      const timedOut = code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT';
      const detail = e2.cause?.message && e2.cause.message !== e2.message ? `${e2.message}: ${e2.cause.message}` : e2.message;
      // undici refused to build the request (a header or path it cannot send): no retry can help.
      const unsendable = code === 'UND_ERR_INVALID_ARG' || code === 'ERR_INVALID_CHAR' || code === 'ERR_INVALID_HTTP_TOKEN';
      return { status: null, retryAfter: null, error: `${code ? code + ' ' : ''}${detail}`, timedOut, unsendable };
    } finally {
      this.running.delete(run);
    }
  }

  /** Aborts the requests past their deadline; runs while any are in flight. */
  private sweep(): void {
    if (this.sweeper) return;
    const period = Math.max(5, Math.min(1000, Math.floor(this.timeout / 10)));
    this.sweeper = setInterval(() => {
      const now = performance.now();
      for (const r of this.running) if (now >= r.deadline) r.ctl.abort();
      if (this.running.size === 0 && this.sweeper) {
        clearInterval(this.sweeper);
        this.sweeper = null;
      }
    }, period);
    this.sweeper.unref();
  }

  async close(): Promise<void> {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = null;
    await this.pool.destroy().catch(() => undefined);
  }
}
