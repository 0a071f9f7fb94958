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

export class HttpSink implements Sink {
  private readonly pool: Pool;
  private readonly basePath: string;
  private readonly baseQuery: string;

  constructor(target: TargetConfig) {
    const url = new URL(target.url);
    this.basePath = url.pathname === '/' ? '' : url.pathname.replace(/\/$/, '');
    this.baseQuery = url.search.slice(1);
    this.pool = new Pool(url.origin, {
      connections: target.concurrency,
      pipelining: 1,
      connectTimeout: target.timeout,
      headersTimeout: target.timeout,
      bodyTimeout: target.timeout,
      keepAliveTimeout: 30_000,
      keepAliveMaxTimeout: 600_000,
    });
  }

  /** The path and query sent upstream for a stored request. */
  requestPath(e: Envelope): string {
    const query = [this.baseQuery, e.query].filter((q) => q !== '').join('&');
    return this.basePath + e.path + (query ? `?${query}` : '');
  }

  async send(e: Envelope, attempt: number): Promise<AttemptResult> {
    const hasBody = e.body.length > 0 || (e.method !== 'GET' && e.method !== 'HEAD');
    try {
      const res = await this.pool.request({
        method: e.method as 'POST',
        path: this.requestPath(e),
        headers: upstreamHeaders(e, attempt),
        body: hasBody ? e.body : undefined,
      });
      const retryAfter = res.headers['retry-after'];
      // The body is not used; reading it (bounded) lets the connection be reused.
      await res.body.dump({ limit: RESPONSE_DRAIN_MAX }).catch(() => undefined);
      const ok = res.statusCode >= 200 && res.statusCode < 300;
      return {
        status: res.statusCode,
        retryAfter: Array.isArray(retryAfter) ? (retryAfter[0] ?? null) : (retryAfter ?? null),
        error: ok ? '' : `upstream answered ${res.statusCode}`,
        timedOut: false,
      };
    } catch (err) {
      const e2 = err as Error & { code?: string; cause?: Error & { code?: string } };
      const code = e2.code ?? e2.cause?.code ?? '';
      const timedOut = code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT';
      const detail = e2.cause?.message && e2.cause.message !== e2.message ? `${e2.message}: ${e2.cause.message}` : e2.message;
      return { status: null, retryAfter: null, error: `${code ? code + ' ' : ''}${detail}`, timedOut };
    }
  }

  async close(): Promise<void> {
    await this.pool.destroy().catch(() => undefined);
  }
}
