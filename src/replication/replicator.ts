/**
 * The in-process replicator: serves this node's log to its peers (Leader), holds a replica of
 * each peer's log (one PeerLink per configured peer), and, with cluster.ack = "quorum", holds
 * each 2xx until cluster.min_insync copies (this one included) are flushed (QuorumGate).
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Config } from '../config/schema';
import type { Log } from '../log/log';
import type { Logger } from '../observability/logger';
import type { QuorumGate } from '../http/ingest';
import type { TemplatedApp } from '../http/uws';
import { Leader, LIVE_MS, type FollowerView } from './leader';
import { PeerLink, type LinkView } from './follower';
import type { Progress, TakenReport } from './protocol';
import type { ClusterView } from './takeover';

const TICK_MS = 1000;

interface Waiter {
  offset: number;
  started: number;
  deadline: number;
  done: (timeout: string | null) => void;
}

export interface PeerStatus extends LinkView {
  /** What that peer has flushed of this node's log, and how far behind it is. */
  flushed_offset: number | null;
  lag: number | null;
  /** Bytes of this log sent to that peer and not yet reported flushed (at most the window, or one larger record). */
  in_flight_bytes: number | null;
}

export interface ReplicationStatus {
  node_id: string;
  incarnation: string;
  ack: 'local' | 'quorum';
  min_insync: number;
  peers: PeerStatus[];
  replicas: ReturnType<ReturnType<Log['replicas']>[number]['info']>[];
  quorum_waiting: number;
}

export interface ReplicatorDeps {
  readonly config: Config;
  readonly log: Log;
  readonly logger: Logger;
  readonly registry: Registry;
  /** Per target: the offset below which everything is delivered or dead-lettered. */
  readonly finished: () => Record<string, number>;
}

export class Replicator implements QuorumGate, ClusterView {
  /** Other nodes' logs this node delivers or delivered (set by the takeover). */
  taken: () => TakenReport[] = () => [];
  /** A peer connected or reported: takeover looks again (set by the takeover). */
  onPeer: () => void = () => {};
  /** Taken reports by (origin/incarnation), then by reporting node. */
  private readonly reportsBy = new Map<string, Map<string, TakenReport>>();
  /** Peers (node_id) that sent a progress message since this node started. */
  private readonly progressFrom = new Set<string>();
  private linksStarted = false;
  private linkTimer: NodeJS.Timeout | null = null;
  private readonly leader: Leader;
  private readonly links: PeerLink[];
  private readonly waiters: Waiter[] = [];
  private head = 0;
  private timer: NodeJS.Timeout | null = null;
  private settleScheduled = false;
  private tickTimer: NodeJS.Timeout | null = null;
  private readonly quorumWait: Histogram;
  private readonly quorumTimeouts: Counter;
  private readonly authFailures: Counter;
  private readonly gaps: Counter<'origin'>;
  private readonly needed: number;
  private readonly timeoutMs: number;

  constructor(private readonly deps: ReplicatorDeps) {
    const { config, log, logger } = deps;
    const secret = config.cluster.secret ?? '';
    this.needed = config.cluster.min_insync - 1;
    this.timeoutMs = config.cluster.ack_timeout;
    this.leader = new Leader({
      log,
      nodeId: config.node_id,
      secret,
      logger,
      finished: deps.finished,
      taken: () => this.taken(),
      onFollowers: () => this.onPeer(),
      onAuthFailure: (remote, why) => {
        this.authFailures.inc();
        logger.warn({ event: 'peer_unauthorized', remote, reason: why }, `replication refused to ${remote}: ${why} (cluster.secret)`);
      },
      onFlushed: () => this.settleSoon(),
    });
    this.links = config.cluster.peers.map((url) => new PeerLink(url, { log, nodeId: config.node_id, secret, logger, onGap: (origin, from, to) => this.gap(origin, from, to), claim: (id, link) => this.claim(id, link), onProgress: (id, m) => this.progress(id, m) }));
    const registers = [deps.registry];
    this.quorumWait = new Histogram({ name: 'crowd_quorum_wait_seconds', help: 'From the local flush to the quorum (cluster.ack = "quorum").', buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], registers });
    this.quorumTimeouts = new Counter({ name: 'crowd_quorum_timeouts_total', help: 'Requests answered 503 because the quorum was not reached within cluster.ack_timeout (stored here all the same).', registers });
    this.authFailures = new Counter({ name: 'crowd_peer_auth_failures_total', help: 'Replication connections refused for a wrong or missing cluster.secret.', registers });
    this.gaps = new Counter({ name: 'crowd_replication_gaps_total', help: 'Ranges of a peer log skipped because its retention had removed them.', labelNames: ['origin'], registers });
    const self = this;
    new Gauge({
      name: 'crowd_peer_up',
      help: '1 while the replication link to the peer is connected.',
      labelNames: ['peer'],
      registers,
      collect() {
        this.reset();
        for (const l of self.links) this.set({ peer: l.url }, l.view().state === 'connected' ? 1 : 0);
      },
    });
    new Gauge({
      name: 'crowd_replication_lag_messages',
      help: "Entries of this node's log that the peer has not reported flushed.",
      labelNames: ['peer'],
      registers,
      collect() {
        this.reset();
        for (const p of self.peers()) this.set({ peer: p.url }, p.lag ?? log.durableOffset());
      },
    });
    new Gauge({
      name: 'crowd_replica_last_offset',
      help: "The last flushed offset of each peer log held here (by origin node_id; the latest incarnation).",
      labelNames: ['origin'],
      registers,
      collect() {
        this.reset();
        const byOrigin = new Map<string, number>();
        for (const r of log.replicas()) byOrigin.set(r.origin, r.flushed());
        for (const [origin, v] of byOrigin) this.set({ origin }, v);
      },
    });
  }

  /** The WebSocket route, added to the ingest app before it listens. */
  attach(app: TemplatedApp): void {
    this.leader.attach(app);
  }

  /** Connects to the peers (before delivery starts: their reports say how far takers got). */
  startLinks(): void {
    if (this.linksStarted) return;
    this.linksStarted = true;
    for (const l of this.links) l.start();
    // Heartbeats from the start (a node waiting for its peers' reports must not look dead to them).
    this.linkTimer = setInterval(() => {
      for (const l of this.links) l.check();
    }, TICK_MS);
    this.linkTimer.unref();
  }

  /** Whether a link follows the log (origin, incarnation) now (its replica must not be removed). */
  follows(origin: string, incarnation: string): boolean {
    return this.links.some((l) => {
      const v = l.view();
      return v.node_id === origin && v.incarnation === incarnation && v.state === 'connected';
    });
  }

  start(): void {
    this.deps.log.onDurable(() => this.leader.onDurable());
    this.startLinks();
    this.tickTimer = setInterval(() => this.leader.tick(), TICK_MS);
    this.tickTimer.unref();
  }

  /** One link per peer node: two URLs of one node (or of a cloned VM) would write one replica twice. */
  private readonly claims = new Map<string, PeerLink>();
  private claim(nodeId: string, link: PeerLink): string | null {
    const had = this.claims.get(nodeId);
    if (had && had !== link) return had.url;
    this.claims.set(nodeId, link);
    return null;
  }

  private gap(origin: string, from: number, to: number): void {
    this.gaps.inc({ origin });
    this.deps.logger.warn({ event: 'replication_gap', origin, from, to }, `replica of ${origin}: offsets ${from}..${to} were removed by its retention before they reached this node (every target had passed them)`);
  }

  private progress(nodeId: string, m: Progress): void {
    const first = !this.progressFrom.has(nodeId);
    this.progressFrom.add(nodeId);
    // What that node said last replaces what it said before (a log it no longer reports is done with).
    for (const [key, by] of this.reportsBy) {
      by.delete(nodeId);
      if (by.size === 0) this.reportsBy.delete(key);
    }
    for (const r of m.taken ?? []) {
      const key = `${r.origin}/${r.incarnation}`;
      let by = this.reportsBy.get(key);
      if (!by) this.reportsBy.set(key, (by = new Map()));
      by.set(nodeId, r);
    }
    if (first || (m.taken?.length ?? 0) > 0) this.onPeer();
  }

  // ClusterView

  heard(): ReadonlyMap<string, number> {
    return this.seen().heard;
  }

  incarnations(): ReadonlyMap<string, string> {
    return this.seen().incarnations;
  }

  reports(origin: string, incarnation: string): readonly (TakenReport & { by: string })[] {
    return [...(this.reportsBy.get(`${origin}/${incarnation}`)?.entries() ?? [])].map(([by, r]) => ({ ...r, by }));
  }

  /** Per peer node: when last heard over either connection, and its incarnation as said most recently. */
  private seen(): { heard: Map<string, number>; incarnations: Map<string, string> } {
    const heard = new Map<string, number>();
    const incarnations = new Map<string, string>();
    const said = new Map<string, number>();
    const note = (node: string, at: number | null, incarnation: string | null): void => {
      if (at === null) return;
      heard.set(node, Math.max(heard.get(node) ?? 0, at));
      if (incarnation !== null && at >= (said.get(node) ?? -1)) {
        said.set(node, at);
        incarnations.set(node, incarnation);
      }
    };
    for (const l of this.links) {
      const v = l.view();
      if (v.node_id !== null) note(v.node_id, v.last_heard, v.incarnation);
    }
    for (const f of this.leader.sessionsHeard()) note(f.node_id, f.last_heard, f.incarnation);
    return { heard, incarnations };
  }

  /**
   * Resolves once every peer that can be reached sent its progress (with its reports on this
   * node's log) and none still delivers `incarnation` of this node's log, or after `boundMs`.
   * Returns the reports on that log.
   */
  async waitForReports(incarnation: string, boundMs: number): Promise<{ reports: (TakenReport & { by: string })[]; waitedMs: number; complete: boolean }> {
    const started = Date.now();
    const self = this.deps.config.node_id;
    for (;;) {
      const reports = this.reports(self, incarnation);
      const pending = this.links.filter((l) => {
        const v = l.view();
        if (v.state === 'down' || v.state === 'refused' || v.state === 'unauthorized') return false;
        return v.node_id === null || !this.progressFrom.has(v.node_id);
      });
      const complete = pending.length === 0 && !reports.some((r) => r.delivering);
      const waitedMs = Date.now() - started;
      if (complete || waitedMs >= boundMs) return { reports: [...reports], waitedMs, complete };
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  // QuorumGate

  refusal(): string | null {
    // Waiting for peers counts against the same bound as waiting for the disk.
    const waiting = this.waiters.length - this.head;
    if (waiting >= this.deps.config.log.max_pending_writes) return `too many requests waiting for the quorum (${waiting}, log.max_pending_writes); retry later`;
    const live = this.leader.followers().filter((f) => f.live).length;
    if (live >= this.needed) return null;
    return `quorum unreachable: ${live} of the ${this.needed} peers cluster.min_insync needs are replicating from this node (heard within ${LIVE_MS / 1000} s); retry later`;
  }

  await(offset: number, done: (timeout: string | null) => void): void {
    const now = performance.now();
    this.waiters.push({ offset, started: now, deadline: now + this.timeoutMs, done });
    if (this.waiters.length - this.head === 1) this.settle();
  }

  /**
   * Flushed reports arrive inside uWebSockets.js's handler of the follower's socket, which is
   * corked then: a response written there could not be corked and would leave in pieces, a
   * syscall each. The acks go out right after, outside it, one write each.
   */
  private settleSoon(): void {
    if (this.settleScheduled) return;
    this.settleScheduled = true;
    setImmediate(() => {
      this.settleScheduled = false;
      this.settle();
    });
  }

  /** Answers waiting requests in append order: the quorum reached, or the deadline passed. */
  private settle(): void {
    if (this.head >= this.waiters.length) return;
    const now = performance.now();
    while (this.head < this.waiters.length) {
      const w = this.waiters[this.head]!;
      const copies = this.leader.copies(w.offset);
      if (copies >= this.needed) {
        this.quorumWait.observe((now - w.started) / 1000);
        w.done(null);
      } else if (now >= w.deadline) {
        this.quorumTimeouts.inc();
        w.done(`quorum not reached in ${this.timeoutMs} ms: ${copies + 1} of the ${this.needed + 1} copies cluster.min_insync needs are flushed; the request is stored on this node and may still be delivered, so a retry can deliver it twice`);
      } else break;
      this.waiters[this.head++] = undefined as never;
    }
    if (this.head > 1024 && this.head * 2 > this.waiters.length) {
      this.waiters.splice(0, this.head);
      this.head = 0;
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.head < this.waiters.length) {
      this.timer = setTimeout(() => this.settle(), Math.max(1, this.waiters[this.head]!.deadline - now));
    }
  }

  peers(): PeerStatus[] {
    const followers = new Map<string, FollowerView>(this.leader.followers().map((f) => [f.node_id, f]));
    const durable = this.deps.log.durableOffset();
    return this.links.map((l) => {
      const v = l.view();
      const f = v.node_id !== null ? followers.get(v.node_id) : undefined;
      // Below this log's first offset nothing is left to copy: a follower behind it lags only by what remains.
      const through = f ? Math.max(f.flushed_offset, this.deps.log.firstOffset() - 1) : 0;
      return { ...v, flushed_offset: f ? f.flushed_offset : null, lag: f ? Math.max(0, durable - through) : null, in_flight_bytes: f ? f.in_flight_bytes : null };
    });
  }

  status(): ReplicationStatus {
    const c = this.deps.config.cluster;
    return {
      node_id: this.deps.config.node_id,
      incarnation: this.deps.log.incarnation,
      ack: c.ack,
      min_insync: c.min_insync,
      peers: this.peers(),
      replicas: this.deps.log.replicas().map((r) => r.info()),
      quorum_waiting: this.waiters.length - this.head,
    };
  }

  /** Stops serving this node's log (followers disconnected, new ones refused); the links to peers go on. */
  stopServing(): void {
    this.leader.closeAll();
  }

  stop(): void {
    if (this.tickTimer) clearInterval(this.tickTimer);
    if (this.linkTimer) clearInterval(this.linkTimer);
    if (this.timer) clearTimeout(this.timer);
    for (const l of this.links) l.stop();
    this.leader.closeAll();
    // Requests still waiting: stored here; the quorum is not known.
    while (this.head < this.waiters.length) {
      const w = this.waiters[this.head++]!;
      w.done('this node is shutting down before the quorum was reached; the request is stored on this node and may still be delivered');
    }
  }
}
