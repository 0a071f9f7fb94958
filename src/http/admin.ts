/**
 * The admin server: /metrics (Prometheus text), /healthz, /readyz, /status. Bound to
 * admin.host (loopback by default); with admin.token every call needs the bearer token.
 */
import type { Config } from '../config/schema';
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
}

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

function json(res: HttpResponse, code: number, body: unknown): void {
  res.writeStatus(STATUS_LINE[code] ?? `${code}`).writeHeader('Content-Type', 'application/json').end(JSON.stringify(body));
}
