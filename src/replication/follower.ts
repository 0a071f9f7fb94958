/**
 * The follower side: one WebSocket client (`ws`) per configured peer, holding a replica of
 * that peer's log. It asks for the log from the end of its replica, appends each record at
 * the same offset (through this node's group commit and fdatasync) and reports the highest
 * offset flushed. Anything malformed closes the connection with a logged reason and writes
 * nothing; the link reconnects with backoff.
 */
import { randomBytes } from 'node:crypto';
import WebSocket from 'ws';
import type { Log } from '../log/log';
import type { Replica } from '../log/replica';
import type { Logger } from '../observability/logger';
import { FRAME_BYTES_MAX, WINDOW_BYTES } from './leader';
import { checkLeaderProof, closeReason, followerAuth, parseLeaderMessage, parseRecordFrame, REPLICATE_PATH, type Flushed, type Progress, type Want } from './protocol';

const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 2000;
/** Connected but unheard of this long: the connection is dropped and made again. */
const SILENCE_MS = 5000;

export type LinkState = 'connecting' | 'connected' | 'down' | 'unauthorized' | 'refused';

export interface LinkView {
  url: string;
  node_id: string | null;
  incarnation: string | null;
  state: LinkState;
  /** The leader's durable offset, last heard. */
  leader_durable: number;
  /** What this node has flushed of that leader's log. */
  replica_flushed: number;
  last_heard: number | null;
  reason?: string;
}

export interface FollowerDeps {
  readonly log: Log;
  readonly nodeId: string;
  readonly secret: string;
  readonly logger: Logger;
  readonly onGap: (origin: string, from: number, to: number) => void;
  /** Claims `nodeId` for this link: null when it may follow that node, else the URL of the link that already does. */
  readonly claim: (nodeId: string, link: PeerLink) => string | null;
  /** A progress message from the leader `nodeId` (after its hello on this connection). */
  readonly onProgress: (nodeId: string, m: Progress) => void;
}

export class PeerLink {
  private ws: WebSocket | null = null;
  private state: LinkState = 'connecting';
  private reason: string | undefined;
  private backoff = BACKOFF_MIN_MS;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private nodeId: string | null = null;
  private incarnation: string | null = null;
  private replica: Replica | null = null;
  private leaderFirst = 0;
  private leaderDurable = 0;
  private lastHeard: number | null = null;
  private reported = 0;
  private reportScheduled = false;
  private failures = 0;
  /** The nonce of the current connection's Crowd-Auth (the leader's proof covers it). */
  private nonce = '';
  /** Record bytes received and not yet flushed. */
  private pendingBytes = 0;
  /** The connection whose hello was taken. */
  private helloOn: WebSocket | null = null;

  constructor(
    readonly url: string,
    private readonly deps: FollowerDeps,
  ) {}

  start(): void {
    this.connect();
  }

  private wsUrl(): string {
    const u = new URL(this.url);
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    u.pathname = REPLICATE_PATH;
    return u.toString();
  }

  private connect(): void {
    if (this.stopped) return;
    this.timer = null;
    if (this.state !== 'unauthorized' && this.state !== 'refused' && this.state !== 'down') this.state = 'connecting';
    const nonce = randomBytes(16).toString('hex');
    this.nonce = nonce;
    const ws = new WebSocket(this.wsUrl(), {
      headers: { 'crowd-auth': followerAuth(this.deps.secret, this.deps.nodeId, Date.now(), nonce), 'crowd-node-id': this.deps.nodeId, 'crowd-incarnation': this.deps.log.incarnation },
      handshakeTimeout: 5000,
      maxPayload: FRAME_BYTES_MAX,
      perMessageDeflate: false,
    });
    this.ws = ws;
    ws.on('unexpected-response', (_req, res) => {
      const status = res.statusCode ?? 0;
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString().slice(0, 200)));
      res.on('end', () => {
        if (status === 401) this.fail('unauthorized', `${this.url} refused this node's cluster.secret: ${body.trim()}`);
        else if (status === 409) {
          // It is this node (listed by another address): a configuration error, not retried.
          this.fail('refused', `${this.url} is this node itself (it refused our own node_id): remove it from cluster.peers`);
          this.stopped = true;
        } else this.fail('refused', `${this.url} refused replication (${status}): ${body.trim()}`);
      });
      ws.terminate();
    });
    ws.on('open', () => {
      // The backoff resets only once the leader serves the log (its first progress), so a
      // leader that refuses right after the handshake is not retried ten times a second.
      this.state = 'connected';
      this.reason = undefined;
      this.lastHeard = Date.now();
    });
    ws.on('message', (data: Buffer, isBinary: boolean) => this.onMessage(ws, data, isBinary));
    ws.on('error', () => {
      /* 'close' follows and reconnects */
    });
    ws.on('close', () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.failures++;
      if (this.state === 'connected' || this.state === 'connecting') this.state = this.failures >= 3 ? 'down' : 'connecting';
      this.schedule();
    });
  }

  private fail(state: LinkState, reason: string): void {
    if (this.state !== state || this.reason !== reason) this.deps.logger.warn({ event: 'peer_' + state, peer: this.url, reason }, reason);
    this.state = state;
    this.reason = reason;
  }

  private schedule(): void {
    if (this.stopped || this.timer) return;
    this.timer = setTimeout(() => this.connect(), this.backoff);
    this.timer.unref();
    this.backoff = Math.min(BACKOFF_MAX_MS, this.backoff * 2);
  }

  private close(ws: WebSocket, reason: string): void {
    this.deps.logger.warn({ event: 'replication_closed', peer: this.url, node_id: this.nodeId, reason }, `replication from ${this.url} closed: ${reason}`);
    this.reason = reason;
    ws.close(1008, closeReason(reason));
    ws.terminate();
  }

  private onMessage(ws: WebSocket, data: Buffer, isBinary: boolean): void {
    // A connection being closed (refused, or a broken leader): what else it carried is ignored.
    if (this.ws !== ws || ws.readyState !== WebSocket.OPEN) return;
    this.lastHeard = Date.now();
    if (isBinary) return this.onRecord(ws, data);
    const m = parseLeaderMessage(data.toString());
    if (typeof m === 'string') return this.close(ws, m);
    if (m.t === 'hello') {
      // One log per connection: a second hello (another incarnation, or the same again) is a broken leader.
      // The leader proves it knows the secret (the secret never crosses the network).
      if (!checkLeaderProof(this.deps.secret, m, this.nonce)) {
        this.fail('unauthorized', `${this.url} answered without proof that it knows cluster.secret: not a peer of this cluster`);
        ws.terminate();
        return;
      }
      if (this.helloOn === ws) return this.close(ws, `a second hello on one connection (incarnation ${m.incarnation}${this.incarnation ? `, was ${this.incarnation}` : ''})`);
      this.helloOn = ws;
      if (m.node_id === this.deps.nodeId) {
        this.fail('refused', `${this.url} presents this node's own node_id "${m.node_id}": a node must not list itself, and node_ids must differ`);
        this.stopped = true; // configuration error: do not hammer it
        ws.terminate();
        return;
      }
      if (this.nodeId !== null && this.nodeId !== m.node_id) {
        this.deps.logger.warn({ event: 'peer_changed', peer: this.url, was: this.nodeId, now: m.node_id }, `${this.url} now presents node_id ${m.node_id} (was ${this.nodeId})`);
      }
      if (this.incarnation !== null && this.nodeId === m.node_id && this.incarnation !== m.incarnation) {
        this.deps.logger.warn({ event: 'peer_new_incarnation', peer: this.url, node_id: m.node_id, was: this.incarnation, now: m.incarnation }, `${m.node_id} started a new log (incarnation ${m.incarnation}, was ${this.incarnation}); the old replica is kept`);
      }
      const other = this.deps.claim(m.node_id, this);
      if (other !== null) {
        this.fail('refused', `${this.url} is node ${m.node_id}, already replicated through ${other}: list each node once in cluster.peers`);
        this.stopped = true; // configuration error: do not hammer it
        ws.terminate();
        return;
      }
      this.nodeId = m.node_id;
      this.incarnation = m.incarnation;
      this.leaderFirst = m.first;
      this.leaderDurable = m.durable;
      this.replica = this.deps.log.replica(m.node_id, m.incarnation, true);
      const want: Want = { t: 'want', incarnation: m.incarnation, from: this.replica!.lastWritten() + 1 };
      ws.send(JSON.stringify(want));
      // Records written before this connection may still be flushing: `want` says nothing of
      // them, the flushed offset is reported on its own (and again as their commits flush).
      this.reported = Math.min(this.replica!.flushed(), m.durable);
      if (this.reported > 0) {
        const flushed: Flushed = { t: 'flushed', incarnation: m.incarnation, offset: this.reported };
        ws.send(JSON.stringify(flushed));
      }
      return;
    }
    if (!this.replica) return this.close(ws, 'progress before hello');
    this.backoff = BACKOFF_MIN_MS;
    this.failures = 0;
    this.leaderFirst = m.first;
    this.leaderDurable = m.durable;
    void this.replica.setFinished(m.finished).catch(() => {});
    if (m.first > this.replica.firstOffset()) void this.replica.trimBelow(m.first).catch(() => {});
    if (this.nodeId !== null) this.deps.onProgress(this.nodeId, m);
  }

  private onRecord(ws: WebSocket, data: Buffer): void {
    const replica = this.replica;
    if (!replica) return this.close(ws, 'a record before hello');
    const f = parseRecordFrame(data);
    if (typeof f === 'string') return this.close(ws, f);
    // An honest leader never has more than its window (or one larger record) unreported here.
    if (this.pendingBytes + f.record.length > WINDOW_BYTES + FRAME_BYTES_MAX) return this.close(ws, `the leader sent ${this.pendingBytes + f.record.length} bytes not yet flushed here, past its window`);
    const before = replica.lastWritten();
    let flushed: Promise<void>;
    try {
      // The frame's bytes belong to ws; the stored record must own its bytes.
      flushed = replica.append(f.key, Buffer.from(f.record), this.leaderFirst);
    } catch (err) {
      return this.close(ws, (err as Error).message);
    }
    if (f.key > before + 1) this.deps.onGap(replica.origin, before + 1, f.key - 1);
    const size = f.record.length;
    this.pendingBytes += size;
    flushed.then(
      () => {
        this.pendingBytes -= size;
        this.scheduleReport();
      },
      () => {
        /* the log failed: the node stops */
      },
    );
  }

  private scheduleReport(): void {
    if (this.reportScheduled) return;
    this.reportScheduled = true;
    setImmediate(() => {
      this.reportScheduled = false;
      const r = this.replica;
      const ws = this.ws;
      if (!r || !ws || ws.readyState !== WebSocket.OPEN || r.flushed() <= this.reported) return;
      this.reported = r.flushed();
      const m: Flushed = { t: 'flushed', incarnation: r.incarnation, offset: this.reported };
      ws.send(JSON.stringify(m));
    });
  }

  /**
   * Every second: drops a connection that went silent (a stopped or partitioned leader), and
   * repeats the flushed report, which is also this follower's heartbeat (the leader counts
   * only followers heard recently toward a quorum).
   */
  check(now = Date.now()): void {
    const ws = this.ws;
    if (!ws || this.state !== 'connected') return;
    if (this.lastHeard !== null && now - this.lastHeard > SILENCE_MS) {
      this.deps.logger.warn({ event: 'peer_silent', peer: this.url, node_id: this.nodeId }, `${this.url} silent for ${now - this.lastHeard} ms: reconnecting`);
      ws.terminate();
      return;
    }
    const r = this.replica;
    if (r && this.helloOn === ws && ws.readyState === WebSocket.OPEN) {
      const m: Flushed = { t: 'flushed', incarnation: r.incarnation, offset: r.flushed() };
      ws.send(JSON.stringify(m));
    }
  }

  view(): LinkView {
    return {
      url: this.url,
      node_id: this.nodeId,
      incarnation: this.incarnation,
      state: this.state,
      leader_durable: this.leaderDurable,
      replica_flushed: this.replica?.flushed() ?? 0,
      last_heard: this.lastHeard,
      ...(this.reason ? { reason: this.reason } : {}),
    };
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.ws?.terminate();
    this.ws = null;
  }
}
