/**
 * Takeover: a live node delivers the replica of a peer that is down, hands it back when the
 * peer returns, and finishes a wiped peer's old log.
 *
 * Once a second (and whenever a peer connects), for each replica held here:
 * - Its origin is **up** when heard within `cluster.takeover_after` (over either connection)
 *   and still on that incarnation: the origin delivers it.
 * - Otherwise (origin down, or the replica is of an older incarnation: an **orphan**), the
 *   live node (this one included; the origin excluded) that wins the rendezvous hash of
 *   (origin, node) delivers it (`ownership.ts`). Views differ during a partition: two nodes may
 *   both deliver, which gives duplicates with the same Idempotency-Key, never a loss.
 * - Delivering a replica here is one `Delivery` over a `ReplicaSource`: the same consumers,
 *   retries, rate, breaker and dead letters as the local log, with their state stored under
 *   `<target>@<origin>/<incarnation>`. Each target starts at the highest finished offset
 *   anyone reported for it (the origin's own, or another taker's).
 * - **Handback**: when the origin is up again, delivery here stops (requests in flight get
 *   DELIVERY_STOP_GRACE_MS, then are abandoned and sent again by the origin) and the final
 *   offsets are streamed to the peers (`taken` in the progress message). The origin waits at
 *   start (at most HANDBACK_WAIT_MS) until every reachable peer reported and none still
 *   delivers its log, then moves each target's offset up to the highest one reported.
 * - An orphan whose every target finished (here or by another node's report) is removed once
 *   its newest entry is older than log.retention (as delivered entries of the local log are).
 *
 * Until a peer was heard once since this node started, it counts as heard at the start: no
 * takeover before `takeover_after` has passed.
 */
import type { Config } from '../config/schema';
import { Delivery } from '../delivery/delivery';
import { finishedOffsets } from '../delivery/source';
import type { Log } from '../log/log';
import type { Replica } from '../log/replica';
import { ReplicaDeliveryStore, ReplicaSource } from '../log/replica-source';
import type { Logger } from '../observability/logger';
import type { Metrics, TargetFigures } from '../observability/metrics';
import type { ConsumerStatus } from '../delivery/consumer';
import { Gauge } from 'prom-client';
import { taker } from './ownership';
import { TAKEN_MAX, type TakenReport } from './protocol';

/** How often ownership is looked at (also on every peer connection). */
export const TAKEOVER_TICK_MS = 1000;
/** The longest a node that starts waits for its peers' reports before it delivers. */
export const HANDBACK_WAIT_MS = 5000;
/** Longest wait for a taken-over log's requests in flight at handback (then sent again by the origin). */
export const HANDBACK_GRACE_MS = 2000;
/** A removed orphan is still reported this long, so that every peer hears that it finished. */
const DONE_REPORT_MS = 10 * 60_000;
/** Envelopes read per step when counting entries that arrive in a replica being delivered. */
const ARRIVAL_CHUNK = 1000;

/** What this node knows of its peers (from the replication connections). */
export interface ClusterView {
  /** When each peer (by node_id) was last heard, over either connection (epoch ms). */
  heard(): ReadonlyMap<string, number>;
  /** Each peer's own log incarnation, as it last said. */
  incarnations(): ReadonlyMap<string, string>;
  /** Other nodes' reports on the log (origin, incarnation), each with the reporting node. */
  reports(origin: string, incarnation: string): readonly (TakenReport & { by: string })[];
  /** Whether a replication link follows that log now (its replica must stay). */
  follows(origin: string, incarnation: string): boolean;
}

export interface TakeoverDeps {
  readonly config: Config;
  readonly log: Log;
  readonly logger: Logger;
  readonly metrics: Metrics;
  readonly view: ClusterView;
  readonly onFatal: (err: Error) => void;
}

interface Active {
  readonly replica: Replica;
  readonly source: ReplicaSource;
  readonly delivery: Delivery;
  readonly since: number;
}

/** Who delivers a replica, as this node sees it. */
export interface ReplicaRole {
  /** "origin", "this node", another node's id, or "nobody" (no live node can). */
  delivered_by: string;
  orphaned: boolean;
  /** Per target, while delivered here. */
  targets?: { name: string; state: string; offset: number; committed_offset: number; lag: number; dead_letters: number; delivered: number }[];
}

export class Takeover {
  private readonly active = new Map<string, Active>();
  /** Takeovers being stopped (requests in flight finishing): still reported as delivering. */
  private readonly stopping = new Set<string>();
  private readonly roles = new Map<string, ReplicaRole>();
  private readonly done = new Map<string, { report: TakenReport; at: number }>();
  private readonly startedAt = Date.now();
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  private readonly targets: string[];

  constructor(private readonly deps: TakeoverDeps) {
    this.targets = deps.config.targets.map((t) => t.name);
    const self = this;
    new Gauge({
      name: 'crowd_takeover_active',
      help: "1 while this node delivers the origin's log from its replica (a takeover), else 0.",
      labelNames: ['origin'],
      registers: [deps.metrics.registry],
      collect() {
        this.reset();
        for (const r of deps.log.replicas()) this.set({ origin: r.origin }, 0);
        for (const a of self.active.values()) this.set({ origin: a.replica.origin }, 1);
      },
    });
  }

  start(): void {
    this.timer = setInterval(() => this.poke(), TAKEOVER_TICK_MS);
    this.timer.unref();
  }

  /** Looks at ownership now (one pass at a time; a call during a pass runs another after it). */
  poke(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.pass()
      .catch((err: Error) => this.deps.logger.error({ event: 'takeover_failed', err }, `takeover: ${err.message}`))
      .finally(() => {
        this.running = null;
        if (this.again && !this.stopped) {
          this.again = false;
          this.poke();
        }
      });
  }

  private async pass(): Promise<void> {
    const { config, log, view } = this.deps;
    const self = config.node_id;
    const now = Date.now();
    const after = config.cluster.takeover_after;
    const heard = view.heard();
    const incarnations = view.incarnations();
    const live = new Set<string>([self]);
    for (const [node, at] of heard) if (now - at < after) live.add(node);
    const replicas = log.replicas();
    // The newest replica of each origin is its current log unless the origin said otherwise.
    const newest = new Map<string, string>();
    for (const r of replicas) newest.set(r.origin, r.incarnation);
    for (const r of replicas) {
      if (this.stopped) return;
      const key = keyOf(r.origin, r.incarnation);
      const current = incarnations.get(r.origin) ?? newest.get(r.origin);
      const orphaned = r.incarnation !== current;
      const up = now - (heard.get(r.origin) ?? this.startedAt) < after;
      const by = !orphaned && up ? r.origin : taker(r.origin, this.holdersOfMost(r, live));
      if (orphaned && this.finishedEverywhere(r) && this.pastRetention(r, now) && !view.follows(r.origin, r.incarnation)) {
        await this.end(key, 'every entry of this old log is finished');
        this.done.set(key, { report: this.report(r, false), at: now });
        const removed = await log.dropReplica(r.origin, r.incarnation);
        this.roles.delete(key);
        this.deps.logger.info({ event: 'replica_removed', origin: r.origin, incarnation: r.incarnation, records: removed }, `replica ${r.origin}/${r.incarnation} removed: the node started a new log and every target finished the old one`);
        continue;
      }
      this.roles.set(key, { delivered_by: by === null ? 'nobody' : by === self ? 'this node' : by === r.origin ? 'origin' : by, orphaned });
      if (by === self) await this.begin(r, orphaned, now - (heard.get(r.origin) ?? this.startedAt));
      else await this.end(key, by === r.origin ? `${r.origin} is back` : `${by ?? 'no live node'} delivers it now`);
    }
    for (const [key, d] of this.done) if (now - d.at > DONE_REPORT_MS) this.done.delete(key);
    await this.retain(now);
  }

  /**
   * Retention for the replicas delivered here, as for the local log (their origin, which
   * would trim them, is down): entries every target finished go once older than
   * log.retention, or at once while the quota is full. The replica's own floor keeps what
   * the origin had not finished and what this node's consumers still need.
   */
  private async retain(now: number): Promise<void> {
    if (this.targets.length === 0) return;
    const full = this.deps.log.refusal() === 'max_bytes';
    for (const a of [...this.active.values()]) {
      if (this.stopped) return;
      const r = a.replica;
      const cut = full ? r.flushed() + 1 : r.offsetAtTime(now - this.deps.config.log.retention);
      if (cut > r.firstOffset()) await r.trimBelow(cut);
    }
  }

  /**
   * The live nodes holding the most of `r`'s log (by their reports; this node by its own
   * replica): a quorum ack needs only one peer's copy, so the peers' replicas of a dead node
   * can end at different offsets, and the longest one must be delivered. A live peer that
   * has not reported this log (it holds none, or has not reported yet) is not a candidate.
   */
  private holdersOfMost(r: Replica, live: ReadonlySet<string>): Set<string> {
    const ends = new Map<string, number>([[this.deps.config.node_id, r.flushed()]]);
    for (const rep of this.deps.view.reports(r.origin, r.incarnation)) if (live.has(rep.by) && rep.flushed !== undefined) ends.set(rep.by, rep.flushed);
    const most = Math.max(...ends.values());
    return new Set([...ends].filter(([, end]) => end >= most).map(([node]) => node));
  }

  /** Whether every target finished every entry of `r` (by this node's store or any node's report). */
  private finishedEverywhere(r: Replica): boolean {
    const end = r.flushed();
    if (end === 0) return true;
    const mine = this.view(r);
    const reports = this.deps.view.reports(r.origin, r.incarnation);
    return this.targets.every((t) => {
      let best = r.finished()[t] ?? 0;
      if (mine.hasStoredOffset(t)) best = Math.max(best, finishedOffsets(mine, [t])[t]!);
      for (const rep of reports) best = Math.max(best, rep.finished[t] ?? 0);
      return best >= end;
    });
  }

  /** Whether the newest entry of `r` is older than log.retention (as the local log keeps delivered entries for replay). */
  private pastRetention(r: Replica, now: number): boolean {
    const last = r.flushed() > 0 ? r.read(r.flushed(), 1)[0] : undefined;
    return last === undefined || now - last.received_at >= this.deps.config.log.retention;
  }

  /** The delivery store as seen for replica `r` (also when it is not delivered here). */
  private view(r: Replica): ReplicaDeliveryStore {
    return new ReplicaDeliveryStore(this.deps.log.delivery, r.origin, r.incarnation, () => 0);
  }

  private async begin(r: Replica, orphaned: boolean, silentMs: number): Promise<void> {
    const key = keyOf(r.origin, r.incarnation);
    if (this.active.has(key)) return;
    const { config, log, logger, metrics } = this.deps;
    const source = new ReplicaSource(r, log.delivery, this.targets);
    // Each target starts at the highest finished offset anyone reported (a second takeover
    // must not start again where an earlier one here stopped).
    const reports = this.deps.view.reports(r.origin, r.incarnation);
    const from: Record<string, number> = {};
    for (const t of this.targets) {
      let best = source.startOffset(t);
      for (const rep of reports) best = Math.max(best, rep.finished[t] ?? 0);
      best = Math.min(best, r.flushed());
      if (source.delivery.offset(t) < best) await source.delivery.setOffset(t, best);
      from[t] = source.delivery.offset(t);
    }
    const delivery = new Delivery({ config, log: source, logger: logger.child({ origin: r.origin, incarnation: r.incarnation }), metrics, origin: r.origin, onFatal: this.deps.onFatal });
    // Entries arriving while it is delivered here are counted before they are sent.
    source.onArrived((lo, hi) => {
      for (let at = lo; at <= hi; ) {
        const batch = source.read(at, ARRIVAL_CHUNK, hi);
        if (batch.length === 0) break;
        for (const e of batch) delivery.accepted(e.route);
        at = batch[batch.length - 1]!.offset + 1;
      }
    });
    this.active.set(key, { replica: r, source, delivery, since: Date.now() });
    const why = orphaned ? `${r.origin} started a new log: this node delivers the old one (${r.incarnation}) to its end` : `${r.origin} unheard of for ${Math.round(silentMs / 1000)} s (cluster.takeover_after)`;
    logger.warn({ event: 'takeover_start', origin: r.origin, incarnation: r.incarnation, orphaned, from, through: r.flushed() }, `takeover: delivering ${r.origin}'s log ${r.incarnation} from its replica here, offsets after ${JSON.stringify(from)} through ${r.flushed()}: ${why}`);
    await delivery.start();
  }

  private async end(key: string, why: string): Promise<void> {
    const a = this.active.get(key);
    if (!a) return;
    this.active.delete(key);
    // Reported as delivering until its last commit is written (the origin waits for that).
    this.stopping.add(key);
    try {
      await a.delivery.stop(HANDBACK_GRACE_MS);
    } finally {
      this.stopping.delete(key);
      a.source.close();
    }
    const finished = finishedOffsets(a.source.delivery, this.targets);
    this.deps.logger.warn({ event: 'takeover_end', origin: a.replica.origin, incarnation: a.replica.incarnation, finished }, `takeover of ${a.replica.origin}'s log ${a.replica.incarnation} ended (${why}); finished here: ${JSON.stringify(finished)}`);
  }

  private report(r: Replica, delivering: boolean): TakenReport {
    const v = this.view(r);
    const stored = this.targets.filter((t) => v.hasStoredOffset(t));
    return { origin: r.origin, incarnation: r.incarnation, delivering, finished: finishedOffsets(v, stored), flushed: r.flushed() };
  }

  /** Every other node's log held here: how much, and what this node delivers or delivered of it (streamed to the peers with the progress). */
  taken(): TakenReport[] {
    const out: TakenReport[] = [];
    for (const r of this.deps.log.replicas()) {
      const key = keyOf(r.origin, r.incarnation);
      out.push(this.report(r, this.active.has(key) || this.stopping.has(key)));
    }
    for (const d of this.done.values()) out.push({ ...d.report, flushed: 0 });
    return out.slice(-TAKEN_MAX);
  }

  /** Bytes of the replicas delivered here (they count against log.max_bytes). */
  heldBytes(): number {
    let n = 0;
    for (const a of this.active.values()) n += a.replica.info().bytes ?? 0;
    return n;
  }

  /** Per-target figures of the logs delivered here, for the metrics (with `origin`). */
  figures(): TargetFigures[] {
    const out: TargetFigures[] = [];
    for (const a of this.active.values()) for (const s of a.delivery.status()) out.push({ ...s, origin: a.replica.origin });
    return out;
  }

  /** Who delivers the replica (origin, incarnation), and how far, as this node sees it. */
  role(origin: string, incarnation: string): ReplicaRole {
    const key = keyOf(origin, incarnation);
    const role = this.roles.get(key) ?? { delivered_by: 'origin', orphaned: false };
    const a = this.active.get(key);
    if (!a) return role;
    return { ...role, targets: a.delivery.status().map((s: ConsumerStatus) => ({ name: s.name, state: s.state, offset: s.offset, committed_offset: s.committed_offset, lag: s.lag, dead_letters: s.dead_letters, delivered: s.delivered })) };
  }

  /** The Delivery of a replica delivered here, or null. */
  deliveryOf(origin: string, incarnation: string): Delivery | null {
    return this.active.get(keyOf(origin, incarnation))?.delivery ?? null;
  }

  /** Stops every takeover (the node is stopping): requests in flight get `graceMs`. */
  async stop(graceMs: number): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.running;
    const all = [...this.active.values()];
    this.active.clear();
    await Promise.all(
      all.map(async (a) => {
        await a.delivery.stop(graceMs);
        a.source.close();
      }),
    );
  }
}

function keyOf(origin: string, incarnation: string): string {
  return `${origin}/${incarnation}`;
}

/**
 * Handback on the origin's side, before its delivery starts: per target, the highest finished
 * offset the peers reported for this log (origin, incarnation), where it is above the local one.
 */
export function reportedAhead(reports: readonly TakenReport[], local: (target: string) => number | null, targets: readonly string[], durable: number): Record<string, { from: number; to: number }> {
  const out: Record<string, { from: number; to: number }> = {};
  for (const t of targets) {
    const have = local(t);
    if (have === null) continue;
    let best = have;
    for (const r of reports) best = Math.max(best, Math.min(r.finished[t] ?? 0, durable));
    if (best > have) out[t] = { from: have, to: best };
  }
  return out;
}
