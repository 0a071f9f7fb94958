/**
 * A peer's replica as a delivery source: the same consumers that deliver the local log can
 * deliver a replica held here (a takeover of a dead peer's backlog).
 *
 * - Reads stop at the replica's flushed offset (what this node has fsynced), which is its
 *   durable offset; `onDurable` listeners run whenever it moves.
 * - Consumer state lives in this node's own delivery store under
 *   `<target>@<origin>/<incarnation>` (names cannot hold "@" or "/", so these never meet the
 *   local targets' keys, nor another log's): a taker's offsets, retries and dead letters for
 *   an origin stay apart from its own, and a wiped origin's old log from its new one.
 * - A target with no offset stored here yet starts at the origin's finished offset for it (as
 *   the origin last reported it), else before the first entry held: never after the replica's
 *   end, as a new local target would (that would skip the origin's backlog).
 * - While the source is open, trims of the replica (which follow the origin's retention) keep
 *   what its consumers have not passed, and what is pinned (a rewind).
 * - Lag in bytes (`targets[].max_lag_bytes`) is measured over the replica's records as the
 *   local log measures its own, except that records are read from the file as they are
 *   flushed (the local log counts its own appends in memory).
 *
 * The replica keeps growing while its origin is alive; while it is being delivered here it
 * normally does not (its origin is down), but nothing here depends on that.
 */
import type { DeliverySource, DeliveryStoreView } from '../delivery/source';
import type { ConsumerCommit, DeliveryStore, Held, HeldEntry } from './delivery-store';
import type { Envelope } from './codec';
import type { LagMeter } from './log';
import type { Replica } from './replica';

/** The store key of `target`'s consumer for the replica of (`origin`, `incarnation`). */
export function replicaConsumerName(target: string, origin: string, incarnation: string): string {
  return `${target}@${origin}/${incarnation}`;
}

/** The delivery store seen through a replica: every key is `<target>@<origin>/<incarnation>`. */
export class ReplicaDeliveryStore implements DeliveryStoreView {
  constructor(
    private readonly store: DeliveryStore,
    private readonly origin: string,
    private readonly incarnation: string,
    /** Where a target without a stored offset starts (its last finished offset). */
    private readonly startOffset: (target: string) => number,
  ) {}

  /** The key this target's state is stored under. */
  key(target: string): string {
    return replicaConsumerName(target, this.origin, this.incarnation);
  }

  offset(target: string): number {
    const k = this.key(target);
    return this.store.hasOffset(k) ? this.store.offset(k) : this.startOffset(target);
  }

  /** Always true: a replica's target has a starting point even before anything is stored (see the file comment). */
  hasOffset(_target: string): boolean {
    return true;
  }

  /** Whether an offset is stored for this target here (false: it starts at `startOffset`). */
  hasStoredOffset(target: string): boolean {
    return this.store.hasOffset(this.key(target));
  }

  setOffset(target: string, offset: number): Promise<void> {
    return this.store.setOffset(this.key(target), offset);
  }

  retryIndex(target: string): { offset: number; attempts: number; due: number }[] {
    return this.store.retryIndex(this.key(target));
  }

  firstRetry(target: string): number | null {
    return this.store.firstRetry(this.key(target));
  }

  retry(target: string, offset: number): Held | undefined {
    return this.store.retry(this.key(target), offset);
  }

  deadCount(target: string): number {
    return this.store.deadCount(this.key(target));
  }

  deadOffsets(target: string, from: number, through?: number): number[] {
    return this.store.deadOffsets(this.key(target), from, through);
  }

  deadLetters(target: string, after: number, limit: number): HeldEntry[] {
    return this.store.deadLetters(this.key(target), after, limit);
  }

  commit(commits: readonly ConsumerCommit[]): Promise<void> {
    return this.store.commit(commits.map((c) => ({ ...c, target: this.key(c.target) })));
  }

  replayDead(target: string, offsets: readonly number[] | null, limit: number, now: number): Promise<{ offset: number; attempts: number; due: number }[]> {
    return this.store.replayDead(this.key(target), offsets, limit, now);
  }

  purgeDead(target: string, offsets: readonly number[] | null, limit: number): Promise<number> {
    return this.store.purgeDead(this.key(target), offsets, limit);
  }
}

export class ReplicaSource implements DeliverySource {
  readonly delivery: ReplicaDeliveryStore;
  private readonly listeners = new Set<() => void>();
  private readonly arrivals = new Set<(from: number, through: number) => void>();
  private readonly detach: (() => void)[] = [];
  private closed = false;
  /** The flushed offset the listeners were last told about. */
  private seen: number;

  /**
   * `targets`: the targets delivered from this replica here; trims keep what any of them has
   * not passed until `close()`.
   */
  constructor(
    readonly replica: Replica,
    store: DeliveryStore,
    readonly targets: readonly string[],
  ) {
    this.delivery = new ReplicaDeliveryStore(store, replica.origin, replica.incarnation, (t) => this.startOffset(t));
    this.seen = replica.flushed();
    this.detach.push(
      replica.onFlushed(() => {
        const from = this.seen + 1;
        this.seen = replica.flushed();
        for (const l of this.arrivals) l(from, this.seen);
        for (const l of this.listeners) l();
      }),
      replica.hold(() => this.neededFrom()),
    );
  }

  get origin(): string {
    return this.replica.origin;
  }

  /**
   * Where a target without a stored offset starts: the origin's finished offset for it, but
   * never below what the replica holds (retention on the origin removed the rest).
   */
  startOffset(target: string): number {
    const finished = this.replica.finished()[target];
    const before = this.firstOffset() - 1;
    return finished === undefined ? before : Math.max(finished, before);
  }

  /** The lowest offset a target delivered here has not passed (trims keep it and what follows). */
  private neededFrom(): number {
    if (this.closed) return Infinity;
    let min = Infinity;
    for (const t of this.targets) min = Math.min(min, this.delivery.offset(t) + 1);
    return min;
  }

  read(from: number, limit: number, through: number = this.durableOffset(), _copy = false): Envelope[] {
    // Every envelope read from a replica is a copy already.
    return this.replica.read(from, limit, through);
  }

  durableOffset(): number {
    return this.replica.flushed();
  }

  firstOffset(): number {
    return this.replica.firstOffset() || this.replica.flushed() + 1;
  }

  countRoutes(from: number, through: number, routes: ReadonlySet<string>, chunk?: number): Promise<number> {
    return this.replica.countRoutes(from, through, routes, chunk);
  }

  offsetAtTime(ms: number): number {
    return this.replica.offsetAtTime(ms);
  }

  lagMeter(offset: number): LagMeter {
    return this.replica.lagMeter(offset);
  }

  measureLag(m: LagMeter, max: number, scan?: number): number {
    return this.replica.measureLag(m, max, scan);
  }

  pin(offset: number): () => void {
    return this.replica.pin(offset);
  }

  onDurable(listener: () => void): void {
    this.listeners.add(listener);
  }

  /**
   * Called with the offsets newly flushed into the replica (before the `onDurable` listeners,
   * so that a consumer never sends an entry before it was counted). On the origin, ingest
   * counts each acknowledged request for its targets (`Consumer.acceptedOne`); for a replica
   * delivered here, entries arriving while it is delivered are counted through this.
   */
  onArrived(listener: (from: number, through: number) => void): void {
    this.arrivals.add(listener);
  }

  /** Stops telling listeners and stops holding the replica against trims. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.listeners.clear();
    this.arrivals.clear();
    for (const d of this.detach) d();
  }
}
