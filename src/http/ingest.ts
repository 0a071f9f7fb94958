/**
 * The ingest server (uWebSockets.js). Owns routing, body limits, auth and answers; hands
 * complete requests to the log and answers only when the log says the entry is flushed.
 *
 * uWS rules kept here: onAborted is attached before anything asynchronous; headers, URL and
 * remote address are read synchronously in the handler; onData chunks are copied (their
 * ArrayBuffer is neutered after the callback); writes after the handler returned happen
 * inside res.cork(); `res` is never touched after it was aborted or ended.
 */
import type { Config, RouteConfig } from '../config/schema';
import type { AppendWaiter, Log, Refusal } from '../log/log';
import { newId } from '../log/ids';
import type { Metrics } from '../observability/metrics';
import { bearerMatches } from './auth';
import { Router } from './routes';
import { STATUS_LINE, errorBody, okBody } from './responses';
import { createLogger, type Logger } from '../observability/logger';
import { AcceptGuard } from './accept-guard';
import { connectionsOnPort, openFilesLimit } from './fds';
import { listen, listenNow, type HttpResponse, type TemplatedApp, type Uws, type us_listen_socket } from './uws';
import { HeaderScan, checkTarget, shorten } from './validate';

const EMPTY = Buffer.alloc(0);

/** Bodies up to this size may use all of server.max_receiving_bytes; larger ones only LARGE_SHARE of it. */
const SMALL_BODY_BYTES = 64 * 1024;
const LARGE_SHARE = 0.75;

/** First buffer of a body that arrives in several chunks; it doubles as chunks arrive. */
const INITIAL_BODY_BUFFER = 1024;

/**
 * A body refused with 413 is read and discarded up to this many bytes before the answer and
 * the close: closing with unread bytes resets the connection, and a client still writing its
 * body would see a broken pipe instead of the 413.
 */
const LINGER_BYTES = 8 * 1024 * 1024;

const REFUSAL_TEXT: Record<Refusal, string> = {
  pending_writes: 'too many requests waiting for the disk; retry later',
  max_bytes: 'the log is over log.max_bytes; retry later',
  failed: 'the log failed; this node is stopping',
  closed: 'this node is shutting down',
};

interface Pending {
  aborted: boolean;
  answered: boolean;
}

/**
 * One request to store: complete, waiting for the end of the event-loop turn, then for its
 * flush; answers the client when the log says so.
 */
class Stored implements Pending, AppendWaiter {
  aborted = false;
  answered = false;
  id = '';
  body: Buffer = EMPTY;
  constructor(
    private readonly server: IngestServer,
    readonly res: HttpResponse,
    readonly route: string,
    readonly method: string,
    readonly path: string,
    readonly query: string,
    readonly headers: string[],
    readonly remote: string,
  ) {}

  offset = 0;

  appended(err: Error | null): void {
    if (err === null && this.server.quorum) this.server.awaitQuorum(this);
    else this.server.acknowledge(this, this.res, err);
  }
}

/** Quorum acknowledgements (cluster.ack = "quorum"), provided by the replicator. */
export interface QuorumGate {
  /** Why a new request would get 503 at once (too few live peers), or null. */
  refusal(): string | null;
  /** Calls `done(null)` once `offset` is flushed on enough peers, else `done(reason)` at the deadline; in append order. */
  await(offset: number, done: (timeout: string | null) => void): void;
}

export interface IngestDeps {
  readonly uws: Uws;
  readonly config: Config;
  readonly log: Log;
  readonly metrics: Metrics;
  /** Called once per acknowledged (flushed) request with its route, even if the client left. */
  readonly accepted?: (route: string) => void;
  /** With cluster.ack = "quorum": the gate every flushed request passes before its 2xx. */
  readonly quorum?: QuorumGate;
  /** Adds routes to the ingest app before the catch-all (the replication WebSocket). */
  readonly routes?: (app: TemplatedApp) => void;
  /** Where warnings about the descriptor limit go; default: a logger of its own on stdout. */
  readonly logger?: Logger;
  /** The 503 text for a refusal, when the node has a more specific one (e.g. who holds the log). */
  readonly refusalText?: (refusal: Refusal) => string | undefined;
}

/** Below this many open files crowd warns at start: each client connection takes one. */
const LOW_FD_LIMIT = 4096;


export class IngestServer {
  private readonly deps: IngestDeps;
  private readonly app: TemplatedApp;
  private readonly router: Router;
  private readonly ackLine: string;
  private readonly retryAfter: string;
  private listenSocket: us_listen_socket | null = null;
  /** Closes the listen socket near the descriptor limit and opens it again below. */
  private guard: AcceptGuard | null = null;
  private relistenFailedAt = 0;
  /** crowd_ingest_requests_total{code=ack_status} per route name. */
  private readonly acked: Map<string, { inc(): void }>;
  private draining = false;
  /** Requests whose handler ran and that are not answered or aborted yet. */
  private open = 0;
  /** Complete requests of this event-loop turn, stored when it ends (see complete()). */
  private ready: Stored[] = [];
  /** Bytes reserved by bodies being received (server.max_receiving_bytes). */
  private receiving = 0;
  private readonly maxReceiving: number;
  private readonly maxReceivingLarge: number;
  port = 0;

  constructor(deps: IngestDeps) {
    this.deps = deps;
    this.router = new Router(deps.config.routes);
    this.ackLine = STATUS_LINE[deps.config.server.ack_status]!;
    this.retryAfter = String(Math.ceil(deps.config.server.retry_after / 1000));
    this.acked = new Map(deps.config.routes.map((r) => [r.name, deps.metrics.ingestCounter(r.name, deps.config.server.ack_status)]));
    this.maxReceiving = deps.config.server.max_receiving_bytes;
    this.maxReceivingLarge = Math.max(Math.floor(this.maxReceiving * LARGE_SHARE), deps.config.server.max_body_bytes);
    this.quorum = deps.quorum ?? null;
    this.app = deps.uws.App();
    deps.routes?.(this.app);
    this.app.any('/*', (res, req) => this.handle(res, req.getCaseSensitiveMethod(), req.getUrl(), req));
  }

  async start(): Promise<number> {
    const { host, port } = this.deps.config.server;
    let l = await listen(this.deps.uws, this.app, host, port);
    if (port === 0) {
      // A port picked by the kernel is listened on again as a fixed port: uSockets sets
      // SO_REUSEADDR only then, and without it on the accepted connections the guard below
      // could not listen again while they are open.
      this.deps.uws.us_listen_socket_close(l.socket);
      l = await listen(this.deps.uws, this.app, host, l.port);
    }
    this.listenSocket = l.socket;
    this.port = l.port;
    this.warnLowFdLimit();
    const limits = openFilesLimit();
    if (limits !== null && Number.isFinite(limits.soft)) {
      const outbound = this.deps.config.targets.reduce((n, t) => n + t.concurrency, 0);
      this.guard = new AcceptGuard({
        limit: limits.soft,
        reserve: Math.max(64, Math.ceil(limits.soft / 16), outbound + 64),
        logger: this.logger,
        pause: () => this.closeListenSocket(),
        resume: () => this.relisten(),
      });
      this.guard.start();
    }
    return l.port;
  }

  private closeListenSocket(): void {
    if (this.listenSocket) {
      this.deps.uws.us_listen_socket_close(this.listenSocket);
      this.listenSocket = null;
    }
  }

  /** Listens on the same port again (after the accept guard paused); false if that failed. */
  private relisten(): boolean {
    if (this.draining) return false;
    const socket = listenNow(this.deps.uws, this.app, this.deps.config.server.host, this.port);
    if (!socket) {
      // Tried at every check of the guard: said once a minute at most.
      const now = Date.now();
      if (now - this.relistenFailedAt >= 60_000) {
        this.relistenFailedAt = now;
        this.logger.error({ event: 'relisten_failed', port: this.port }, `cannot listen on port ${this.port} again (another process took it?); retrying`);
      }
      return false;
    }
    this.listenSocket = socket;
    return true;
  }

  private get logger(): Logger {
    const logger = this.deps.logger ?? createLogger(this.deps.config.node_id);
    Object.defineProperty(this, 'logger', { value: logger });
    return logger;
  }

  /**
   * Warns when the limit on open files is low: each connection takes a descriptor, and near
   * the limit the accept guard stops accepting new connections. Node.js already raised the
   * soft limit to the hard one at start.
   */
  private warnLowFdLimit(): void {
    const limits = openFilesLimit();
    if (limits === null || limits.soft >= LOW_FD_LIMIT) return;
    this.logger.warn(
      { event: 'low_fd_limit', open_files_soft: limits.soft, open_files_hard: limits.hard },
      `the limit on open files is ${limits.soft} (hard limit ${limits.hard}); each connection takes one and near it crowd stops accepting new connections. Raise it (LimitNOFILE= in the systemd unit, ulimit -Hn) to at least ${LOW_FD_LIMIT}`,
    );
  }

  /** Stops accepting: the listen socket closes, requests on open connections get 503 and close. */
  stopAccepting(): void {
    this.draining = true;
    this.guard?.stop();
    this.closeListenSocket();
  }

  openRequests(): number {
    return this.open;
  }

  /**
   * Client connections still open. While stopping, each gets 503 + Connection: close on its
   * next request; the owner waits (bounded) for them to close before the process exits, since
   * an exit closes them under requests in flight (which the clients see as a reset).
   */
  openConnections(): number {
    return this.port > 0 ? connectionsOnPort(this.port) : 0;
  }

  private handle(res: HttpResponse, method: string, url: string, req: { getHeader(k: string): string; getQuery(): string; forEach(cb: (k: string, v: string) => void): void }): void {
    const { config } = this.deps;
    const head = method === 'HEAD';
    // One pass over the header list: the headers to store, and what crowd refuses (validate.ts).
    const scan = new HeaderScan();
    req.forEach(scan.add);
    const query = req.getQuery() ?? '';
    const invalid = scan.finish() ?? checkTarget(url, query);
    if (invalid !== null) {
      if (scan.framing) this.refuseFraming(res, errorBody(invalid), head);
      else this.drainThen(res, 'none', () => this.reply(res, 400, errorBody(invalid), 'none', undefined, false, head));
      return;
    }
    if (url === '/healthz') {
      const ok = !this.draining && this.deps.log.refusal() === null;
      this.drainThen(res, 'healthz', () => this.reply(res, ok ? 200 : 503, ok ? '{"status":"OK"}' : errorBody('not accepting requests'), 'healthz', undefined, false, head));
      return;
    }
    const route = url.startsWith('/_crowd/') ? null : this.router.match(url);
    if (route === null) {
      this.drainThen(res, 'none', () => this.reply(res, 404, errorBody(`no route for path ${shorten(url)}`), 'none', undefined, false, head));
      return;
    }
    if (!route.methods.includes(method as RouteConfig['methods'][number])) {
      const allow = route.methods.join(', ');
      this.drainThen(res, route.name, () => this.reply(res, 405, errorBody(`method ${method} is not allowed on ${shorten(url)}; allowed: ${allow}`), route.name, ['Allow', allow], false, head));
      return;
    }
    if (route.token !== undefined && !bearerMatches(req.getHeader('authorization'), route.token)) {
      this.drainThen(res, route.name, () =>
        this.reply(res, 401, errorBody(`missing or wrong bearer token for route ${route.name}`), route.name, ['WWW-Authenticate', `Bearer realm="${route.name}"`], false, head),
      );
      return;
    }
    const max = config.server.max_body_bytes;
    const declared = scan.contentLength;
    const declaredBytes = declared === '' ? 0 : Number(declared);
    if (declaredBytes > max) {
      this.lingerThen(res, () => this.reply(res, 413, errorBody(`body of ${declared} bytes is larger than server.max_body_bytes (${max})`), route.name, undefined, true, head));
      return;
    }
    if (declaredBytes > 0 && !this.reserve(declaredBytes, declaredBytes)) {
      this.refuseReceiving(res, route.name);
      return;
    }
    const headers = route.token === undefined ? scan.stored : withoutAuthorization(scan.stored);
    const remote = Buffer.from(res.getRemoteAddressAsText()).toString('latin1');
    const state = new Stored(this, res, route.name, method, url, query, headers, remote);
    this.receive(res, state, route.name, true, declaredBytes, (body) => {
      state.body = body;
      this.complete(state);
    });
  }

  /**
   * Counts the request as open until it is answered or aborted, reads its body up to
   * server.max_body_bytes (past it: 413 and the connection closes), then calls `done` with
   * the body, or with an empty buffer when `keep` is false (read and discarded, so that a
   * keep-alive connection survives a 404). A kept body holds `declared` bytes of
   * server.max_receiving_bytes (reserved by the caller) or, without a declared length, what
   * its buffer holds; the reservation ends when the body is complete, answered or aborted.
   */
  private receive(res: HttpResponse, state: Pending, route: string, keep: boolean, declared: number, done: (body: Buffer) => void): void {
    const max = this.deps.config.server.max_body_bytes;
    // Growth stops at the declared length or max_body_bytes: the buffer ends at the body's size.
    const limit = declared > 0 && declared < max ? declared : max;
    let reserved = keep ? declared : 0;
    const release = () => {
      this.receiving -= reserved;
      reserved = 0;
    };
    this.open++;
    res.onAborted(() => {
      state.aborted = true;
      release();
      if (!state.answered) this.open--;
    });
    let buf: Buffer | null = null;
    let size = 0;
    /** Bytes read and discarded since the body went over max_body_bytes, or -1. */
    let discarded = -1;
    res.onData((chunk, isLast) => {
      if (state.answered) return;
      const n = chunk.byteLength;
      if (discarded >= 0 || size + n > max) {
        if (discarded < 0) {
          release();
          buf = null;
          discarded = 0;
        }
        discarded += n;
        if (isLast || discarded > LINGER_BYTES) {
          this.finish(state);
          this.reply(res, 413, errorBody(`body is larger than server.max_body_bytes (${max})`), route, undefined, true);
        }
        return;
      }
      if (!keep) {
        if (isLast) done(EMPTY);
        return;
      }
      let capacity = 0;
      if (buf === null) {
        // A body in one chunk: one copy (stored at the end of the turn, see complete()).
        if (isLast) {
          release();
          done(Buffer.from(new Uint8Array(chunk)));
          return;
        }
        capacity = Math.max(n, Math.min(limit, Math.max(INITIAL_BODY_BUFFER, 2 * n)));
      } else if (size + n > buf.length) {
        // Doubling: copying stays linear in the body size, and the buffer at most twice it.
        capacity = Math.max(size + n, Math.min(limit, 2 * buf.length));
      }
      if (capacity > 0) {
        // Without a declared length the buffer itself is what is reserved.
        if (capacity > reserved) {
          if (!this.reserve(capacity - reserved, capacity)) {
            release();
            this.finish(state);
            this.refuseReceiving(res, route);
            return;
          }
          reserved = capacity;
        }
        const grown = Buffer.allocUnsafeSlow(capacity);
        if (buf !== null) buf.copy(grown, 0, 0, size);
        buf = grown;
      }
      // One copy per chunk (its ArrayBuffer is neutered when this callback returns), into
      // one growing buffer: a body sent in 1-byte chunks costs its size, not a Buffer per byte.
      buf!.set(new Uint8Array(chunk), size);
      size += n;
      if (isLast) {
        // From here the body is the log's (log.max_pending_bytes), not a body being received.
        release();
        done(buf!.subarray(0, size));
      }
    });
  }

  /**
   * Takes `bytes` of server.max_receiving_bytes for a body that will hold `total` bytes, or
   * says no: bodies over SMALL_BODY_BYTES may use only LARGE_SHARE of it.
   */
  private reserve(bytes: number, total: number): boolean {
    const cap = total > SMALL_BODY_BYTES ? this.maxReceivingLarge : this.maxReceiving;
    if (this.receiving + bytes > cap) return false;
    this.receiving += bytes;
    return true;
  }

  private refuseReceiving(res: HttpResponse, route: string): void {
    this.reply(res, 503, errorBody(`too many request bytes are being received (server.max_receiving_bytes is ${this.maxReceiving}); retry later`), route, ['Retry-After', this.retryAfter], true);
  }

  /**
   * A complete request is stored at the end of the event-loop turn, not at once: uWS parses
   * everything a connection sent in one go, and a pipelined request (one sent before the
   * previous one was answered) makes it close the connection, aborting the previous one too.
   * Held back to the end of the turn, such requests are dropped unstored (the client saw the
   * connection close without an answer) instead of stored without an acknowledgement.
   */
  private complete(state: Stored): void {
    this.ready.push(state);
    if (this.ready.length === 1) setImmediate(this.storeReady);
  }

  private readonly storeReady = (): void => {
    const ready = this.ready;
    this.ready = [];
    for (const state of ready) if (!state.aborted) this.store(state);
  };

  private store(state: Stored): void {
    const refusal = this.draining ? 'closed' : this.deps.log.refusal();
    if (refusal !== null) {
      this.finish(state);
      this.reply(state.res, 503, errorBody(this.deps.refusalText?.(refusal) ?? REFUSAL_TEXT[refusal]), state.route, ['Retry-After', this.retryAfter], this.draining);
      return;
    }
    const quorumRefusal = this.quorum?.refusal() ?? null;
    if (quorumRefusal !== null) {
      this.finish(state);
      this.reply(state.res, 503, errorBody(quorumRefusal), state.route, ['Retry-After', this.retryAfter], false);
      return;
    }
    const receivedAt = Date.now();
    const id = newId(receivedAt);
    state.id = id;
    const body = state.body;
    state.body = EMPTY;
    state.offset = this.deps.log.append({ id, received_at: receivedAt, route: state.route, method: state.method, path: state.path, query: state.query, headerList: state.headers, remote: state.remote, body }, state);
  }

  /**
   * Flushed here; the 2xx waits for the peers. The request is stored and will be delivered
   * whatever the quorum's outcome, so it counts as accepted now.
   */
  awaitQuorum(state: Stored): void {
    this.deps.accepted?.(state.route);
    this.quorum!.await(state.offset, (timeout) => this.acknowledge(state, state.res, null, timeout));
  }

  /** Answers a stored request once its transaction is flushed (or failed). */
  acknowledge(state: Stored, res: HttpResponse, err: Error | null, quorumTimeout?: string | null): void {
    this.finish(state);
    if (err === null && quorumTimeout === undefined) this.deps.accepted?.(state.route);
    if (state.aborted) return;
    if (err) {
      this.reply(res, 503, errorBody(REFUSAL_TEXT.failed), state.route, ['Retry-After', this.retryAfter], true);
      return;
    }
    if (quorumTimeout) {
      this.reply(res, 503, errorBody(quorumTimeout), state.route, ['Retry-After', this.retryAfter], this.draining);
      return;
    }
    this.acked.get(state.route)!.inc();
    const id = state.id;
    const close = this.draining;
    const line = this.ackLine;
    const head = state.method === 'HEAD';
    res.cork(() => {
      res.writeStatus(line).writeHeader('Content-Type', 'application/json').writeHeader('Crowd-Id', id);
      if (head) res.endWithoutBody(okBody(id).length, close);
      else res.end(okBody(id), close);
    });
  }

  readonly quorum: QuorumGate | null;

  private finish(state: Pending): void {
    if (!state.answered && !state.aborted) this.open--;
    state.answered = true;
  }

  /**
   * Answers 400 and closes the connection for a request whose framing headers are ambiguous:
   * where its body ends is unknown, so nothing after it on the connection may be taken. The
   * answer waits for the end of the event-loop turn: answered at once, uWS would go on to
   * serve the bytes that followed in the same read as the next request, though the answer
   * closes the connection. Held back, such a request makes uWS close the connection (a request
   * sent before the previous one was answered), and crowd drops it unstored (see complete()).
   */
  private refuseFraming(res: HttpResponse, body: string, head: boolean): void {
    const state: Pending = { aborted: false, answered: false };
    this.open++;
    res.onAborted(() => {
      state.aborted = true;
      if (!state.answered) this.open--;
    });
    setImmediate(() => {
      if (state.aborted) return;
      this.finish(state);
      this.reply(res, 400, body, 'none', undefined, true, head);
    });
  }

  /**
   * Reads and discards a body that will not be taken, up to LINGER_BYTES, then answers: the
   * answer closes the connection, and closing with unread bytes would reset it under the answer.
   */
  private lingerThen(res: HttpResponse, answer: () => void): void {
    const state: Pending = { aborted: false, answered: false };
    this.open++;
    res.onAborted(() => {
      state.aborted = true;
      if (!state.answered) this.open--;
    });
    let discarded = 0;
    res.onData((chunk, isLast) => {
      if (state.answered) return;
      discarded += chunk.byteLength;
      if (isLast || discarded > LINGER_BYTES) {
        this.finish(state);
        answer();
      }
    });
  }

  /** Reads and discards the body, then answers. */
  private drainThen(res: HttpResponse, route: string, answer: () => void): void {
    const state: Pending = { aborted: false, answered: false };
    this.receive(res, state, route, false, 0, () => {
      this.finish(state);
      answer();
    });
  }

  /** Answers; to HEAD without the body (its length in Content-Length). */
  private reply(res: HttpResponse, code: number, body: string, route: string, header?: [string, string], close = false, head = false): void {
    if (route !== 'healthz') this.deps.metrics.ingest(route, code);
    res.cork(() => {
      res.writeStatus(STATUS_LINE[code]!).writeHeader('Content-Type', 'application/json');
      if (header) res.writeHeader(header[0], header[1]);
      if (head) res.endWithoutBody(Buffer.byteLength(body), close || this.draining);
      else res.end(body, close || this.draining);
    });
  }
}

/** The header list without `authorization` (a route's own token is not stored). */
function withoutAuthorization(headers: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) if (headers[i] !== 'authorization') out.push(headers[i]!, headers[i + 1]!);
  return out;
}
