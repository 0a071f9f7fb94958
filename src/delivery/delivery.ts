/**
 * Delivery: one consumer per target, their commits, and the operator actions on them
 * (dead letters, rewind, resume).
 *
 * Commits: every COMMIT_INTERVAL_MS (sooner when a consumer passed many entries), the
 * changes of all consumers (offsets, parked retries, dead letters) are written in one
 * transaction. One commit at a time; rewinds and dead-letter moves wait their turn, so a
 * commit taken before a rewind never lands after it.
 */
import type { Config, TargetConfig } from '../config/schema';
import { envelopeToJson, decodeEnvelope } from '../log/codec';
import type { Logger } from '../observability/logger';
import type { Metrics } from '../observability/metrics';
import { CrowdError } from '../errors';
import { Consumer, ReadAheadBudget, type ConsumerStatus, type PendingCommit } from './consumer';
import { HttpSink } from './sinks/http';
import type { Sink } from './sinks/sink';
import type { DeliverySource, DeliveryStoreView } from './source';

export const COMMIT_INTERVAL_MS = 100;
/** Dead letters listed, replayed or purged per call. */
export const DLQ_BATCH_MAX = 10_000;

export interface DeliveryDeps {
  readonly config: Config;
  /** The log the targets are delivered from (the local log, or a peer's replica). */
  readonly log: DeliverySource;
  readonly logger: Logger;
  readonly metrics: Metrics;
  /** The node whose log this is, when it is a peer's replica (metrics get an `origin` label). */
  readonly origin?: string;
  /** Called once when delivery cannot go on (a failed commit, a bug): the node crash-stops. */
  readonly onFatal: (err: Error) => void;
}

export class Delivery {
  private readonly deps: DeliveryDeps;
  readonly consumers = new Map<string, Consumer>();
  /** Consumers per route name (for counting accepted requests). */
  private readonly byRoute = new Map<string, Consumer[]>();
  private timer: NodeJS.Timeout | null = null;
  private chain: Promise<unknown> = Promise.resolve();
  private commitQueued = false;
  private stopped = false;
  private failed = false;

  constructor(deps: DeliveryDeps) {
    this.deps = deps;
    const { config } = deps;
    // Envelopes held for delivery, over all targets together.
    const budget = new ReadAheadBudget(config.delivery.max_read_ahead_bytes);
    for (const t of config.targets) {
      const routes = new Set(config.routes.filter((r) => r.targets.includes(t.name)).map((r) => r.name));
      const consumer = new Consumer({
        target: t,
        routes,
        log: deps.log,
        sink: makeSink(t),
        logger: deps.logger,
        budget,
        events: {
          attemptSeconds: ((h) => (seconds: number) => h.observe(seconds))(deps.metrics.deliverySecondsOf(t.name, deps.origin)),
          commitSoon: () => this.commitSoon(),
        },
      });
      this.consumers.set(t.name, consumer);
      for (const r of routes) {
        const list = this.byRoute.get(r) ?? [];
        list.push(consumer);
        this.byRoute.set(r, list);
      }
    }
  }

  /**
   * Loads every consumer's state and stores new targets' offsets (await it before ingest
   * starts, so that every later acknowledgement is counted), then counts backlogs and
   * starts sending in the background.
   */
  async start(): Promise<void> {
    const inits = [...this.consumers.values()].map((c) => ({ c, backlog: c.init() }));
    // A new target's starting offset is durable before any request is accepted: a crash
    // right after start must not move it past requests accepted meanwhile.
    const fresh = inits.filter((i) => i.backlog.store);
    if (fresh.length > 0) await this.deps.log.delivery.commit(fresh.map((i) => ({ target: i.c.name, offset: i.c.initialOffset(), park: [], unpark: [], dead: [] })));
    this.deps.log.onDurable(() => {
      for (const c of this.consumers.values()) c.notify();
    });
    this.timer = setInterval(() => {
      try {
        for (const c of this.consumers.values()) c.checkLag();
      } catch (err) {
        this.fail(err instanceof Error ? err : new Error(String(err)));
        return;
      }
      this.commitSoon();
    }, COMMIT_INTERVAL_MS);
    this.timer.unref();
    for (const { c, backlog } of inits) {
      c.start(backlog).catch((err: Error) => {
        if (!this.stopped) this.fail(err);
      });
    }
  }

  /** An acknowledged request of `route` (called by ingest for each one). */
  accepted(route: string): void {
    const list = this.byRoute.get(route);
    if (list) for (const c of list) c.acceptedOne();
  }

  commitSoon(): void {
    // After stop only the final commit runs (the log closes right after it).
    if (this.commitQueued || this.stopped) return;
    this.commitQueued = true;
    this.serial(async () => {
      this.commitQueued = false;
      await this.commitNow();
    }).catch((err: Error) => this.fail(err));
  }

  /**
   * Delivery cannot go on: a commit failed (the log has failed too, and says so) or a
   * consumer threw. Logged, then reported once; the node stops and the supervisor restarts
   * it from what is on disk (at worst some requests are delivered again).
   */
  private fail(err: Error): void {
    if (this.failed) return;
    this.failed = true;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.deps.logger.error({ event: 'delivery_failed', err }, `delivery failed: ${err.message}`);
    this.deps.onFatal(err);
  }

  private async commitNow(): Promise<void> {
    const pending: { c: Consumer; p: PendingCommit }[] = [];
    for (const c of this.consumers.values()) {
      const p = c.takeCommit();
      if (p) pending.push({ c, p });
    }
    if (pending.length === 0) return;
    // A failed commit fails the log (crash-stop); the node exits.
    await this.deps.log.delivery.commit(pending.map((x) => x.p.commit));
    // Every consumer learns that its part is durable, even when another one throws.
    let failure: Error | null = null;
    for (const { c, p } of pending) {
      try {
        c.committed(p);
      } catch (err) {
        failure ??= err instanceof Error ? err : new Error(String(err));
      }
    }
    if (failure) throw failure;
  }

  /** Runs `op` after every earlier commit or operator action. */
  private serial<T>(op: () => Promise<T>): Promise<T> {
    const run = this.chain.then(op, op);
    this.chain = run.catch(() => undefined);
    return run;
  }

  consumer(name: string): Consumer {
    const c = this.consumers.get(name);
    if (!c) {
      const known = [...this.consumers.keys()];
      throw new CrowdError('CROWD_ERR_REPLAY', `no target is named "${name}"${known.length ? ` (targets: ${known.join(', ')})` : ' (no targets are configured)'}`);
    }
    return c;
  }

  /** Dead letters of a target, oldest first, with offset > after. */
  deadLetters(target: string, after: number, limit: number): unknown[] {
    this.consumer(target);
    return listDeadLetters(this.deps.log.delivery, target, after, limit);
  }

  /** Moves dead letters back into the target's retry line. */
  replayDead(target: string, offsets: number[] | null): Promise<{ replayed: number; remaining: number }> {
    const c = this.consumer(target);
    return this.serial(async () => {
      await this.commitNow(); // dead letters still in memory are written first
      const moved = await this.deps.log.delivery.replayDead(target, offsets, DLQ_BATCH_MAX, Date.now());
      c.replayed(moved);
      this.deps.logger.info({ event: 'dlq_replay', target, count: moved.length }, `target ${target}: ${moved.length} dead letters go back to delivery`);
      return { replayed: moved.length, remaining: this.deps.log.delivery.deadCount(target) };
    });
  }

  purgeDead(target: string, offsets: number[] | null): Promise<{ purged: number; remaining: number }> {
    const c = this.consumer(target);
    return this.serial(async () => {
      await this.commitNow();
      const n = await this.deps.log.delivery.purgeDead(target, offsets, DLQ_BATCH_MAX);
      c.purgedSome(n);
      this.deps.logger.warn({ event: 'dlq_purge', target, count: n }, `target ${target}: ${n} dead letters purged`);
      return { purged: n, remaining: this.deps.log.delivery.deadCount(target) };
    });
  }

  /** Rewinds a target to an offset, or to the first entry received at or after `sinceMs`. */
  async rewind(target: string, at: { from?: number; sinceMs?: number }): Promise<{ target: string; from: number; previous: number; resent: number; message?: string }> {
    const c = this.consumer(target);
    let from: number;
    if (at.from !== undefined) from = at.from;
    else if (at.sinceMs !== undefined) {
      from = this.deps.log.offsetAtTime(Date.now() - at.sinceMs);
      // A target that lags behind the window's start has sent nothing of it yet: nothing to
      // rewind (an explicit --from past the position is still refused: it asks to skip).
      const position = c.position();
      if (from > position) {
        const message = `target ${target} has not reached that point yet (it is at offset ${position}; the window starts at offset ${from}): nothing to rewind, 0 requests resent`;
        this.deps.logger.info({ event: 'target_rewind_clamped', target, from, position }, message);
        return { target, from: position, previous: position, resent: 0, message };
      }
    } else throw new CrowdError('CROWD_ERR_REPLAY', 'replay needs --from OFFSET or --since DURATION');
    try {
      const r = await c.rewind(
        from,
        (op) => this.serial(op),
        // Runs inside the serialised part: no commit can be written meanwhile.
        async (offset) => {
          if (this.stopped) throw new Error(`target ${target}: crowd is stopping; the rewind was not stored`);
          await this.deps.log.delivery.setOffset(target, offset);
        },
      );
      return { target, ...r };
    } catch (err) {
      if (err instanceof CrowdError) throw err;
      throw new CrowdError('CROWD_ERR_REPLAY', (err as Error).message);
    }
  }

  /**
   * The targets whose unfinished entries keep retention from freeing the log: those at the
   * lowest committed offset, with entries after it (the slowest consumers). Empty when every
   * target is caught up (or none is configured).
   */
  holders(): ConsumerStatus[] {
    const all = this.status();
    const durable = this.deps.log.durableOffset();
    const lowest = Math.min(...all.map((s) => s.committed_offset));
    return all.filter((s) => s.committed_offset === lowest && lowest < durable);
  }

  resume(target: string): boolean {
    return this.consumer(target).resume();
  }

  status(): ConsumerStatus[] {
    return [...this.consumers.values()].map((c) => c.status());
  }

  /** Stops sending, waits (bounded) for requests in flight, writes the last commit. */
  async stop(graceMs: number): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await Promise.all([...this.consumers.values()].map((c) => c.stop(graceMs)));
    await this.serial(() => this.commitNow()).catch((err: Error) => this.deps.logger.error({ event: 'delivery_commit_failed', err }, `last delivery commit failed: ${err.message}`));
    await Promise.all([...this.consumers.values()].map((c) => c.closeSink()));
  }
}

function makeSink(t: TargetConfig): Sink {
  // The config refuses the other types until their sinks exist.
  if (t.type !== 'http') throw new CrowdError('CROWD_ERR_CONFIG', `target ${t.name}: type "${t.type}" is not supported by this version`);
  return new HttpSink(t);
}

/** Dead letters of `target` in `store`, oldest first, with offset > after (as the admin API lists them). */
export function listDeadLetters(store: DeliveryStoreView, target: string, after: number, limit: number): unknown[] {
  return store.deadLetters(target, after, Math.min(limit, DLQ_BATCH_MAX)).map(({ offset, held }) => {
    const e = decodeEnvelope(held.envelope);
    return {
      offset,
      attempts: held.attempts,
      status: held.status || null,
      error: held.error,
      first_attempt_at: held.first_attempt_at ? new Date(held.first_attempt_at).toISOString() : null,
      dead_at: new Date(held.at).toISOString(),
      request: envelopeToJson(e),
    };
  });
}
