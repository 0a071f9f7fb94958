/**
 * The leader side: serves this node's log to followers on /_crowd/replicate (uWebSockets.js,
 * the ingest app). Each follower gets the stored records from the offset it asks for, only up
 * to the durable watermark, then new ones as commits are flushed. Bytes sent and not yet
 * reported flushed are bounded per follower (`WINDOW_BYTES`, or one record when a single
 * record is larger); the rest stays in the log and
 * is read when the follower's reports free the window, so a slow follower costs no memory.
 */
import type { HttpRequest, HttpResponse, TemplatedApp, WebSocket } from 'uWebSockets.js';
import { LIMITS, NAME } from '../config/schema';
import type { Log } from '../log/log';
import type { Logger } from '../observability/logger';
import { AUTH_SKEW_MS, checkFollowerAuth, closeReason, leaderProof, parseFollowerMessage, recordFrame, REPLICATE_PATH, isIncarnation, type Hello, type Progress, type TakenReport } from './protocol';

/** Bytes sent to one follower and not yet reported flushed. */
export const WINDOW_BYTES = 8 * 1024 * 1024;
/** Sent ranges kept per follower node (each want or retention jump may start one). */
const SENT_RANGES_MAX = 64;
/** Nonces remembered (older than two clock skews they are forgotten first). */
const NONCES_MAX = 100_000;
/** Follower node ids whose sent ranges are kept while they are not connected. */
const SENT_NODES_MAX = 256;
/** The largest record frame: one envelope of the largest body crowd can take, with its headers. */
export const FRAME_BYTES_MAX = 2 * LIMITS.max_body_bytes_max;
/** One read from the log, at most (a larger record goes alone). */
const READ_BYTES = 1024 * 1024;
/** A follower silent this long is closed (it reports at least every progress tick). */
const IDLE_TIMEOUT_S = 30;
/** A follower heard within this time counts as live for the quorum (it reports every second). */
export const LIVE_MS = 3000;

interface Session {
  nodeId: string;
  /** The follower's own log (its Crowd-Incarnation header), when it said. */
  incarnation: string | null;
  /** The follower's nonce, which the hello's proof covers. */
  nonce: string;
  remote: string;
  /** Set once the follower said what it wants. */
  next: number;
  wanting: boolean;
  /** Sent records not yet reported flushed: their last offsets and sizes, oldest first. */
  sent: { last: number; bytes: number }[];
  inFlight: number;
  /** The highest offset the follower holds by its own word: its want (from - 1) or a report. */
  flushed: number;
  /** What the last want claimed to hold already (from - 1): reports up to it are not checked against what was sent. */
  claimed: number;
  /**
   * The highest offset reported flushed that this log had sent to that node_id (on this
   * connection or an earlier one): only these count toward a quorum. A want's claim to hold
   * offsets this log never sent there cannot be told from a lie, so it counts for nothing.
   */
  proven: number;
  lastHeard: number;
  closed: boolean;
}

export interface FollowerView {
  node_id: string;
  remote: string;
  flushed_offset: number;
  in_flight_bytes: number;
  /** Bytes uWebSockets.js holds for this connection (sent, not yet taken by the kernel). */
  buffered_bytes: number;
  last_heard: number;
  /** The follower's own log, as it said when it connected. */
  incarnation: string | null;
  /** Asked for the log and heard within LIVE_MS. */
  live: boolean;
}

export interface LeaderDeps {
  readonly log: Log;
  readonly nodeId: string;
  readonly secret: string;
  readonly logger: Logger;
  /** Per target: the offset below which everything is finished (delivered or dead-lettered). */
  readonly finished: () => Record<string, number>;
  /** Other nodes' logs this node delivers or delivered (streamed with the progress). */
  readonly taken: () => TakenReport[];
  /** A follower connected (or went away): takeover looks again. */
  readonly onFollowers: () => void;
  readonly onAuthFailure: (remote: string, why: string) => void;
  /** A follower's flushed offset of this log moved. */
  readonly onFlushed: () => void;
}

type Ws = WebSocket<{ session: Session }>;


export class Leader {
  private readonly sessions = new Map<Ws, Session>();
  private stopped = false;
  /** Nonces of accepted Crowd-Auth headers, by when (replays are refused). */
  private readonly nonces = new Map<string, number>();
  /** Per node_id: the offset ranges this process sent it, merged, ascending (a quorum counts only these). */
  private readonly sentRanges = new Map<string, [number, number][]>();

  constructor(private readonly deps: LeaderDeps) {
  }

  /** Adds the WebSocket route to the ingest app (before it listens). */
  attach(app: TemplatedApp): void {
    app.ws<{ session: Session }>(REPLICATE_PATH, {
      maxPayloadLength: 64 * 1024,
      // Past the window, only a record larger than it is sent alone; a drop closes (never a silent gap).
      maxBackpressure: WINDOW_BYTES + FRAME_BYTES_MAX,
      closeOnBackpressureLimit: 1,
      idleTimeout: IDLE_TIMEOUT_S,
      sendPingsAutomatically: true,
      upgrade: (res, req, context) => this.upgrade(res, req, context),
      open: (ws) => this.open(ws as Ws),
      message: (ws, message, isBinary) => this.message(ws as Ws, message, isBinary),
      drain: (ws) => this.pump(ws as Ws),
      close: (ws) => this.close(ws as Ws),
    });
  }

  private upgrade(res: HttpResponse, req: HttpRequest, context: unknown): void {
    const remote = Buffer.from(res.getRemoteAddressAsText()).toString();
    const auth = req.getHeader('crowd-auth');
    const nodeId = req.getHeader('crowd-node-id');
    const key = req.getHeader('sec-websocket-key');
    const protocol = req.getHeader('sec-websocket-protocol');
    const extensions = req.getHeader('sec-websocket-extensions');
    const incarnation = req.getHeader('crowd-incarnation');
    if (this.stopped) {
      res.writeStatus('503 Service Unavailable').end('replication refused: this node is stopping', true);
      return;
    }
    const checked = checkFollowerAuth(this.deps.secret, nodeId, auth);
    const replayed = typeof checked !== 'string' && this.seenNonce(checked.nonce, checked.at);
    if (typeof checked === 'string' || replayed) {
      const why = typeof checked === 'string' ? checked : 'a replayed Crowd-Auth (its nonce was used before)';
      this.deps.onAuthFailure(remote, why);
      res.writeStatus('401 Unauthorized').end(`replication refused: ${why} (cluster.secret)`, true);
      return;
    }
    if (!NAME.test(nodeId)) {
      res.writeStatus('400 Bad Request').end('replication refused: Crowd-Node-Id header missing or not a node_id (letters, digits, "_", "." or "-")', true);
      return;
    }
    if (nodeId === this.deps.nodeId) {
      this.deps.logger.warn({ event: 'peer_refused', remote, node_id: nodeId }, `replication refused: the peer at ${remote} presents this node's own node_id "${nodeId}" (node_ids must differ)`);
      res.writeStatus('409 Conflict').end(`replication refused: node_id "${nodeId}" is this node's own`, true);
      return;
    }
    const session: Session = { nodeId, incarnation: isIncarnation(incarnation) ? incarnation : null, remote, nonce: checked.nonce, next: 0, wanting: false, sent: [], inFlight: 0, flushed: 0, claimed: 0, proven: 0, lastHeard: Date.now(), closed: false };
    res.upgrade({ session }, key, protocol, extensions, context as never);
  }

  private open(ws: Ws): void {
    const session = ws.getUserData().session;
    this.sessions.set(ws, session);
    const log = this.deps.log;
    const hello: Hello = { t: 'hello', node_id: this.deps.nodeId, incarnation: log.incarnation, first: log.firstOffset(), durable: log.durableOffset(), proof: leaderProof(this.deps.secret, this.deps.nodeId, log.incarnation, session.nonce) };
    ws.send(JSON.stringify(hello));
    // Right away (then every second): a node that comes back learns at once how far its takers got.
    ws.send(this.progressText());
    this.deps.logger.info({ event: 'follower_connected', node_id: session.nodeId, remote: session.remote }, `peer ${session.nodeId} (${session.remote}) follows this log`);
    this.deps.onFollowers();
  }

  private message(ws: Ws, message: ArrayBuffer, isBinary: boolean): void {
    const session = ws.getUserData().session;
    session.lastHeard = Date.now();
    const m = isBinary ? 'a binary frame from a follower' : parseFollowerMessage(Buffer.from(message).toString());
    if (typeof m === 'string') return this.refuse(ws, session, m);
    if (m.incarnation !== this.deps.log.incarnation) return this.refuse(ws, session, `asks for incarnation ${m.incarnation}; this log is ${this.deps.log.incarnation}`);
    const durable = this.deps.log.durableOffset();
    if (m.t === 'want') {
      if (session.wanting) return this.refuse(ws, session, 'a second want on one connection');
      // A follower holds only what this log sent it, and this log sends only durable records.
      if (m.from > durable + 1) return this.refuse(ws, session, `asks from offset ${m.from}, past this log's durable offset ${durable}: it cannot hold offsets this log never made durable (was this log directory restored from an older copy?)`);
      // From the record holding `from`; below the first offset (retention), from the first.
      // `from` is not a flushed report: the follower may still be flushing what precedes it.
      session.next = Math.max(m.from, this.deps.log.firstOffset(), 1);
      session.wanting = true;
      // `from` is not a flushed report either: the follower may still be flushing what precedes it.
      session.claimed = m.from - 1;
      this.pump(ws);
      return;
    }
    if (m.offset > durable) return this.refuse(ws, session, `reports offset ${m.offset} flushed; this log is durable through ${durable}`);
    if (!session.wanting) return this.refuse(ws, session, `reports offset ${m.offset} flushed before asking for the log (want): it was sent nothing`);
    const sentThrough = session.next - 1;
    if (m.offset > Math.max(sentThrough, session.claimed)) return this.refuse(ws, session, `reports offset ${m.offset} flushed; it was sent offsets through ${sentThrough} and said it held ${session.claimed}`);
    let moved = false;
    if (m.offset > session.proven) {
      session.proven = m.offset;
      moved = true;
    }
    if (m.offset > session.flushed) {
      session.flushed = m.offset;
      moved = true;
    }
    while (session.sent.length > 0 && session.sent[0]!.last <= m.offset) session.inFlight -= session.sent.shift()!.bytes;
    if (moved) this.deps.onFlushed();
    this.pump(ws);
  }

  private refuse(ws: Ws, session: Session, why: string): void {
    this.deps.logger.warn({ event: 'follower_refused', node_id: session.nodeId, remote: session.remote, reason: why }, `replication to ${session.nodeId} (${session.remote}) closed: ${why}`);
    if (!session.closed) ws.end(1008, closeReason(why));
  }

  private close(ws: Ws): void {
    const session = this.sessions.get(ws);
    if (!session) return;
    session.closed = true;
    this.sessions.delete(ws);
    this.deps.logger.info({ event: 'follower_disconnected', node_id: session.nodeId, remote: session.remote }, `peer ${session.nodeId} (${session.remote}) stopped following this log`);
    this.deps.onFlushed();
  }

  /** Sends what the follower's window and the socket's buffer allow, up to the durable watermark. */
  private pump(ws: Ws): void {
    const session = this.sessions.get(ws);
    if (!session || session.closed || !session.wanting) return;
    const log = this.deps.log;
    while (session.next <= log.durableOffset() && session.inFlight < WINDOW_BYTES && ws.getBufferedAmount() < WINDOW_BYTES) {
      const records = log.readRecords(session.next, Math.min(READ_BYTES, WINDOW_BYTES - session.inFlight));
      if (records.length === 0) break;
      // A record larger than what is left of the window waits for the window to empty.
      if (session.inFlight > 0 && session.inFlight + records[0]!.bytes.length > WINDOW_BYTES) break;
      // Retention removed what came next: the follower learns the new first offset before the jump.
      const jump = records[0]!.key > session.next;
      ws.cork(() => {
        if (jump) ws.send(this.progressText());
        for (const r of records) {
          ws.send(recordFrame(r.key, r.bytes), true);
          session.sent.push({ last: r.last, bytes: r.bytes.length });
          session.inFlight += r.bytes.length;
          session.next = r.last + 1;
          this.noteSent(session.nodeId, r.key, r.last);
        }
      });
    }
  }

  /** True when `nonce` was presented within the last two skews (a replay); else remembers it. */
  private seenNonce(nonce: string, at: number): boolean {
    const now = Date.now();
    if (this.nonces.size >= NONCES_MAX) for (const [n, t] of this.nonces) if (now - t > 2 * AUTH_SKEW_MS) this.nonces.delete(n);
    if (this.nonces.has(nonce)) return true;
    if (this.nonces.size >= NONCES_MAX) this.nonces.delete(this.nonces.keys().next().value as string);
    this.nonces.set(nonce, Math.max(now, at));
    return false;
  }

  /** Adds [from, through] to what was sent to `node` (merged; at most SENT_RANGES_MAX ranges, the oldest dropped). */
  private noteSent(node: string, from: number, through: number): void {
    let ranges = this.sentRanges.get(node);
    if (!ranges) {
      // Node ids come from the peers: forget those without a connection once there are many.
      if (this.sentRanges.size >= SENT_NODES_MAX) {
        const connected = new Set([...this.sessions.values()].map((x) => x.nodeId));
        for (const k of this.sentRanges.keys()) if (!connected.has(k)) this.sentRanges.delete(k);
      }
      this.sentRanges.set(node, (ranges = []));
    }
    const last = ranges[ranges.length - 1];
    if (last && from >= last[0] && from <= last[1] + 1) {
      if (through > last[1]) last[1] = through;
      return;
    }
    ranges.push([from, through]);
    ranges.sort((a, b) => a[0] - b[0]);
    const merged: [number, number][] = [];
    for (const r of ranges) {
      const m = merged[merged.length - 1];
      if (m && r[0] <= m[1] + 1) m[1] = Math.max(m[1], r[1]);
      else merged.push([r[0], r[1]]);
    }
    this.sentRanges.set(node, merged.slice(-SENT_RANGES_MAX));
  }

  private wasSent(node: string, offset: number): boolean {
    const ranges = this.sentRanges.get(node);
    if (!ranges) return false;
    for (let i = ranges.length - 1; i >= 0; i--) {
      const r = ranges[i]!;
      if (offset > r[1]) return false;
      if (offset >= r[0]) return true;
    }
    return false;
  }

  /** New records are durable: send them. */
  onDurable(): void {
    for (const ws of this.sessions.keys()) this.pump(ws);
  }

  /** The progress message, to every follower (about every second; also the heartbeat). */
  tick(): void {
    const text = this.progressText();
    for (const [ws, s] of this.sessions) if (!s.closed) ws.send(text);
  }

  private progressText(): string {
    const log = this.deps.log;
    const progress: Progress = { t: 'progress', first: log.firstOffset(), durable: log.durableOffset(), finished: this.deps.finished() };
    const taken = this.deps.taken();
    if (taken.length > 0) progress.taken = taken;
    return JSON.stringify(progress);
  }

  /**
   * Followers (by node_id) that reported `offset` flushed after this log sent it to them (on
   * this connection or an earlier one): the copies a quorum counts. A claim to hold offsets
   * never sent there is not counted, since this log cannot check it.
   */
  copies(offset: number): number {
    const nodes = new Set<string>();
    for (const s of this.sessions.values()) if (!s.closed && s.wanting && offset <= s.proven && this.wasSent(s.nodeId, offset)) nodes.add(s.nodeId);
    return nodes.size;
  }

  /** Flushed offsets of this log, one per connected follower (by node_id, the highest). */
  followers(): FollowerView[] {
    const byNode = new Map<string, FollowerView>();
    const now = Date.now();
    for (const [ws, s] of this.sessions) {
      if (s.closed) continue;
      const v: FollowerView = { node_id: s.nodeId, remote: s.remote, flushed_offset: s.flushed, in_flight_bytes: s.inFlight, buffered_bytes: ws.getBufferedAmount(), last_heard: s.lastHeard, incarnation: s.incarnation, live: s.wanting && now - s.lastHeard <= LIVE_MS };
      const had = byNode.get(s.nodeId);
      if (!had || had.flushed_offset < v.flushed_offset) byNode.set(s.nodeId, v);
    }
    return [...byNode.values()];
  }

  /** Per follower node: when it was last heard on any connection, and the incarnation its newest connection said. */
  sessionsHeard(): { node_id: string; last_heard: number; incarnation: string | null }[] {
    const byNode = new Map<string, { node_id: string; last_heard: number; incarnation: string | null; opened: number }>();
    let order = 0;
    for (const s of this.sessions.values()) {
      order++;
      if (s.closed) continue;
      const had = byNode.get(s.nodeId);
      // Sessions are kept in the order they opened: the later one says the current incarnation.
      byNode.set(s.nodeId, { node_id: s.nodeId, last_heard: Math.max(had?.last_heard ?? 0, s.lastHeard), incarnation: s.incarnation ?? had?.incarnation ?? null, opened: order });
    }
    return [...byNode.values()].map(({ opened: _o, ...v }) => v);
  }

  /** Closes every follower's connection and refuses new ones (the node is stopping). */
  closeAll(): void {
    this.stopped = true;
    for (const [ws, s] of this.sessions) {
      s.closed = true;
      ws.end(1001, 'node stopping');
    }
    this.sessions.clear();
  }
}
