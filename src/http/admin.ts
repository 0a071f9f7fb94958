/**
 * The admin server: /metrics (Prometheus text), /healthz, /readyz, /status. Bound to
 * admin.host (loopback by default); with admin.token every call needs the bearer token.
 */
import type { Config } from '../config/schema';
import { parseDurationMs } from '../config/units';
import type { Delivery } from '../delivery/delivery';
import { CrowdError } from '../errors';
import type { Metrics } from '../observability/metrics';
import { bearerMatches } from './auth';
import { STATUS_LINE, errorBody } from './responses';
import { listen, type HttpResponse, type TemplatedApp, type Uws, type us_listen_socket } from './uws';

export interface AdminDeps {
  readonly uws: Uws;
  readonly config: Config;
  readonly metrics: Metrics;
  readonly status: () => unknown;
  /** null when ready, else why not. */
  readonly notReady: () => string | null;
  /** The local log's delivery, or (with `origin`) the delivery of a peer's log taken over here. */
  readonly delivery: (origin?: { origin: string; incarnation: string }) => Delivery | null;
  /** Dead letters a target got here while delivering a peer's log (also after the takeover ended). */
  readonly replicaDeadLetters: (origin: string, incarnation: string | undefined, target: string, after: number, limit: number) => unknown;
}

type Query = URLSearchParams;

export class AdminServer {
  private readonly deps: AdminDeps;
  private readonly app: TemplatedApp;
  private socket: us_listen_socket | null = null;
  port = 0;

  constructor(deps: AdminDeps) {
    this.deps = deps;
    const app = (this.app = deps.uws.App());
    const guarded = (fn: (res: HttpResponse) => void) => (res: HttpResponse, req: { getHeader(k: string): string }) => {
      if (!this.authorized(req.getHeader('authorization'))) {
        res.writeStatus(STATUS_LINE[401]!).writeHeader('WWW-Authenticate', 'Bearer realm="crowd-admin"').writeHeader('Content-Type', 'application/json').end(errorBody('missing or wrong admin token'));
        return;
      }
      fn(res);
    };
    const guarded2 = (fn: (res: HttpResponse, req: { getParameter(i: number): string | undefined; getQuery(): string | undefined }) => void) => (res: HttpResponse, req: { getHeader(k: string): string; getParameter(i: number): string | undefined; getQuery(): string | undefined }) => {
      if (!this.authorized(req.getHeader('authorization'))) {
        res.writeStatus(STATUS_LINE[401]!).writeHeader('WWW-Authenticate', 'Bearer realm="crowd-admin"').writeHeader('Content-Type', 'application/json').end(errorBody('missing or wrong admin token'));
        return;
      }
      fn(res, req);
    };
    app.get('/healthz', guarded((res) => json(res, 200, { status: 'OK' })));
    app.get(
      '/readyz',
      guarded((res) => {
        const why = this.deps.notReady();
        json(res, why === null ? 200 : 503, why === null ? { status: 'OK' } : { status: 'ERROR', error: why });
      }),
    );
    app.get('/status', guarded((res) => json(res, 200, this.deps.status())));
    app.get(
      '/metrics',
      guarded((res) => {
        let aborted = false;
        res.onAborted(() => {
          aborted = true;
        });
        const registry = this.deps.metrics.registry;
        registry.metrics().then(
          (text) => {
            if (aborted) return;
            res.cork(() => res.writeStatus('200 OK').writeHeader('Content-Type', registry.contentType).end(text));
          },
          (err: Error) => {
            if (aborted) return;
            res.cork(() => json(res, 500, { status: 'ERROR', error: `metrics collection failed: ${err.message}` }));
          },
        );
      }),
    );
    // Dead letters and rewinds: parameters in the query string, JSON answers.
    const action = (method: 'get' | 'post', suffix: string, fn: (d: Delivery, target: string, q: Query) => unknown) => {
      app[method](
        `/targets/:target${suffix}`,
        guarded2((res, req) => {
          const raw = req.getParameter(0) ?? '';
          const q = new URLSearchParams(req.getQuery() ?? '');
          let target: string;
          try {
            target = decodeURIComponent(raw);
          } catch {
            json(res, 400, { status: 'ERROR', error: `target name "${raw}" is not valid percent-encoding` });
            return;
          }
          let aborted = false;
          res.onAborted(() => {
            aborted = true;
          });
          const origin = q.get('origin');
          Promise.resolve()
            .then(() => {
              if (origin !== null && method === 'get' && suffix === '/dlq') {
                return this.deps.replicaDeadLetters(origin, q.get('incarnation') ?? undefined, target, intParam(q, 'after') ?? 0, intParam(q, 'limit') ?? 100);
              }
              if (origin !== null) {
                const inc = q.get('incarnation');
                const d = inc === null ? null : this.deps.delivery({ origin, incarnation: inc });
                if (!d) throw new CrowdError('CROWD_ERR_REPLAY', `${origin}'s log${inc ? ` ${inc}` : ''} is not being delivered by this node (give origin= and incarnation= of a takeover in progress; crowd status lists them)`);
                return fn(d, target, q);
              }
              const d = this.deps.delivery();
              if (!d) throw new CrowdError('CROWD_ERR_REPLAY', 'delivery is not running');
              return fn(d, target, q);
            })
            .then(
              (body) => !aborted && res.cork(() => json(res, 200, body)),
              (err: Error) => !aborted && res.cork(() => json(res, err instanceof CrowdError ? (/no target is named/.test(err.message) ? 404 : 400) : 500, { status: 'ERROR', error: err.message })),
            );
        }),
      );
    };
    action('get', '/dlq', (d, target, q) => ({ target, dead_letters: d.deadLetters(target, intParam(q, 'after') ?? 0, intParam(q, 'limit') ?? 100) }));
    action('post', '/dlq/replay', (d, target, q) => d.replayDead(target, offsetsParam(q)));
    action('post', '/dlq/purge', (d, target, q) => d.purgeDead(target, offsetsParam(q)));
    action('post', '/replay', (d, target, q) => {
      const from = intParam(q, 'from');
      const since = q.get('since');
      if ((from === undefined) === (since === null)) throw new CrowdError('CROWD_ERR_REPLAY', 'give exactly one of from=OFFSET or since=DURATION');
      if (from !== undefined) return d.rewind(target, { from });
      const r = parseDurationMs(since);
      if (!r.ok) throw new CrowdError('CROWD_ERR_REPLAY', `since: ${r.problem}`);
      return d.rewind(target, { sinceMs: r.value });
    });
    action('post', '/resume', (d, target) => ({ target, resumed: d.resume(target) }));
    app.any('/*', (res, req) => json(res, 404, { status: 'ERROR', error: `no admin endpoint ${req.getMethod().toUpperCase()} ${req.getUrl()}` }));
  }

  async start(): Promise<number> {
    const l = await listen(this.deps.uws, this.app, this.deps.config.admin.host, this.deps.config.admin.port);
    this.socket = l.socket;
    this.port = l.port;
    return l.port;
  }

  stop(): void {
    if (this.socket) this.deps.uws.us_listen_socket_close(this.socket);
    this.socket = null;
  }

  private authorized(header: string): boolean {
    const token = this.deps.config.admin.token;
    return token === undefined || bearerMatches(header, token);
  }
}

function intParam(q: Query, name: string): number | undefined {
  const v = q.get(name);
  if (v === null) return undefined;
  const n = Number(v);
  if (v === '' || !Number.isSafeInteger(n) || n < 0) throw new CrowdError('CROWD_ERR_REPLAY', `${name}: "${v}" is not a whole number >= 0`);
  return n;
}

/** `offset=5,9,12` (or repeated): those dead letters; absent: all (up to the batch limit). */
function offsetsParam(q: Query): number[] | null {
  const all = q.getAll('offset').flatMap((v) => v.split(','));
  if (all.length === 0) return null;
  return all.map((v) => {
    const n = Number(v);
    if (v === '' || !Number.isSafeInteger(n) || n < 1) throw new CrowdError('CROWD_ERR_REPLAY', `offset: "${v}" is not a whole number >= 1`);
    return n;
  });
}

function json(res: HttpResponse, code: number, body: unknown): void {
  res.writeStatus(STATUS_LINE[code] ?? `${code}`).writeHeader('Content-Type', 'application/json').end(JSON.stringify(body));
}
