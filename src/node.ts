/**
 * Composition root: config -> log -> http (ingest + admin). Owns start and stop; nothing
 * else reaches across stages.
 *
 * Stop (SIGTERM/SIGINT): the listen socket closes and requests on open connections get
 * 503 + Connection: close; requests already appended are acknowledged once flushed; then
 * the log closes. A failed commit (crash-stop): waiting requests get 503, the cause is
 * logged, and `onFatal` tells the owner to exit non-zero.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Config } from './config/schema';
import { formatBytes } from './config/units';
import { Delivery, listDeadLetters } from './delivery/delivery';
import { CrowdError } from './errors';
import { ReplicaDeliveryStore } from './log/replica-source';
import { AdminServer } from './http/admin';
import { IngestServer } from './http/ingest';
import { loadNativeUws, type TemplatedApp } from './http/uws';
import { Log } from './log/log';
import type { Logger } from './observability/logger';
import { Metrics } from './observability/metrics';
import { Replicator } from './replication/replicator';
import { HANDBACK_WAIT_MS, reportedAhead, Takeover } from './replication/takeover';
import { finishedOffsets } from './delivery/source';
import { VERSION } from './version';

/** Longest wait for open requests and pending commits at shutdown. */
export const SHUTDOWN_GRACE_MS = 10_000;
/** Longest wait at shutdown for delivery requests in flight. */
export const DELIVERY_STOP_GRACE_MS = 5_000;
/** Retention and stats persistence run this often (at most). */
export const HOUSEKEEPING_INTERVAL_MS = 5_000;
/** A stuck writer (see Log.checkStall) is looked for this often, also while stopping. */
export const STALL_CHECK_INTERVAL_MS = 1_000;

/** Who holds the log is computed at most this often (it is asked per refused request). */
const HOLDERS_CACHE_MS = 250;

/** In log.dir: the pid and the ports this node listens on. */
export const RUNTIME_FILE = 'crowd.runtime.json';

/** Where the highest handback applied to a target is kept (target names cannot hold "@"). */
const handbackKey = (target: string): string => `handback@${target}`;

export type NodeState = 'starting' | 'ready' | 'draining' | 'stopped' | 'failed';

export interface NodeOptions {
  readonly config: Config;
  readonly configFile: string;
  readonly logger: Logger;
  /** Called once after a storage failure; the owner must exit non-zero. */
  readonly onFatal: (err: Error) => void;
}

export class CrowdNode {
  state: NodeState = 'starting';
  private readonly opts: NodeOptions;
  private readonly metrics: Metrics;
  private readonly admin: AdminServer;
  private log: Log | null = null;
  private ingest: IngestServer | null = null;
  private delivery: Delivery | null = null;
  private replicator: Replicator | null = null;
  private takeover: Takeover | null = null;
  private housekeeping: NodeJS.Timeout | null = null;
  /** The retention and stats pass in progress; stop() waits for it before closing the log. */
  private housekeepingRun: Promise<void> | null = null;
  /** Checks for a stuck writer, from start until the log is closed (also while draining). */
  private stallTimer: NodeJS.Timeout | null = null;
  /** Who holds the log (computed at most every HOLDERS_CACHE_MS), and what the last log line said. */
  private held: { at: number; names: string[]; text: string; brief: string } | null = null;
  private reportedFull: string | null = null;

  private constructor(opts: NodeOptions) {
    this.opts = opts;
    const { config } = opts;
    const uws = loadNativeUws();
    this.metrics = new Metrics({
      log: () => this.log?.stats() ?? null,
      targets: () => [...(this.delivery?.status() ?? []), ...(this.takeover?.figures() ?? [])],
      maxBytes: config.log.max_bytes,
    });
    this.admin = new AdminServer({
      uws,
      config,
      metrics: this.metrics,
      status: () => this.status(),
      notReady: () => this.notReady(),
      delivery: (origin) => (origin === undefined ? this.delivery : this.takeover?.deliveryOf(origin.origin, origin.incarnation) ?? null),
      replicaDeadLetters: (origin, incarnation, target, after, limit) => this.replicaDeadLetters(origin, incarnation, target, after, limit),
    });
  }

  static async start(opts: NodeOptions): Promise<CrowdNode> {
    const node = new CrowdNode(opts);
    await node.run();
    return node;
  }

  private async run(): Promise<void> {
    const { config, logger } = this.opts;
    const adminPort = await this.admin.start();
    const log = await Log.open({
      dir: config.log.dir,
      maxPendingWrites: config.log.max_pending_writes,
      maxPendingBytes: config.log.max_pending_bytes,
      maxBytes: config.log.max_bytes,
      retentionMs: config.log.retention,
      consumers: config.targets.map((t) => t.name),
      replicaLogs: config.cluster.peers.length,
    });
    this.log = log;
    log.onBatch((count, seconds) => {
      this.metrics.commitBatchSize.observe(count);
      this.metrics.commitSeconds.observe(seconds);
      this.metrics.appendSeconds.observeMany(seconds, count);
    });
    log.onFatal((err) => this.fatal(err));
    const delivery = new Delivery({ config, log, logger, metrics: this.metrics, onFatal: (err) => this.fatal(err, 'delivery_failed') });
    this.delivery = delivery;
    const targetNames = config.targets.map((t) => t.name);
    const replicator = config.cluster.peers.length > 0 ? new Replicator({ config, log, logger, registry: this.metrics.registry, finished: () => finishedOffsets(log.delivery, targetNames) }) : null;
    this.replicator = replicator;
    if (replicator) {
      const takeover = new Takeover({ config, log, logger, metrics: this.metrics, view: replicator, onFatal: (err) => this.fatal(err, 'delivery_failed') });
      this.takeover = takeover;
      replicator.taken = () => takeover.taken();
      replicator.onPeer = () => {
        if (this.state === 'ready') takeover.poke();
      };
      log.heldElsewhere = () => takeover.heldBytes();
      await this.handback(log, replicator, targetNames);
    }
    // Before ingest starts: every acknowledgement after this point is counted per target.
    await delivery.start();
    const ingest = new IngestServer({
      uws: loadNativeUws(),
      config,
      log,
      metrics: this.metrics,
      logger,
      ...(replicator ? { routes: (app: TemplatedApp) => replicator.attach(app) } : {}),
      ...(replicator && config.cluster.ack === 'quorum' ? { quorum: replicator } : {}),
      accepted: (route) => delivery.accepted(route),
      refusalText: (r) => (r === 'max_bytes' ? this.fullText() : undefined),
    });
    this.ingest = ingest;
    const port = await ingest.start();
    replicator?.start();
    this.takeover?.start();
    this.housekeeping = setInterval(() => this.houseKeep(), Math.min(HOUSEKEEPING_INTERVAL_MS, Math.max(1000, config.log.retention)));
    this.housekeeping.unref();
    this.stallTimer = setInterval(() => {
      log.checkStall();
      if (this.state !== 'ready') return;
      this.reportFull();
      // Over the quota, retention runs now rather than at the next housekeeping turn (a
      // target's max_lag_bytes may have just let it free space).
      if (log.refusal() === 'max_bytes') this.houseKeep();
    }, STALL_CHECK_INTERVAL_MS);
    this.stallTimer.unref();
    // Where a local CLI finds this node when the config says port 0 (a port picked at start).
    writeFileSync(join(config.log.dir, RUNTIME_FILE), JSON.stringify({ pid: process.pid, port, admin_port: adminPort, started_at: new Date().toISOString() }) + '\n');
    this.state = 'ready';
    const s = log.stats();
    if (config.routes.length === 0) logger.warn('no routes configured: every request gets 404');
    logger.info(
      { event: 'listening', version: VERSION, config: this.opts.configFile, host: config.server.host, port, admin_host: config.admin.host, admin_port: adminPort, log_dir: config.log.dir, first_offset: s.first_offset, last_offset: s.last_offset },
      `crowd ${VERSION} listening on ${config.server.host}:${port}, admin on ${config.admin.host}:${adminPort}`,
    );
  }

  /**
   * Before this node delivers its own log: a peer may have delivered it while this node was
   * down. Waits (at most HANDBACK_WAIT_MS) for the peers' reports, then moves each target's
   * offset up to the highest finished offset reported for this log.
   */
  private async handback(log: Log, replicator: Replicator, targets: readonly string[]): Promise<void> {
    const { logger } = this.opts;
    replicator.startLinks();
    const w = await replicator.waitForReports(log.incarnation, HANDBACK_WAIT_MS);
    // A report is applied once: later starts skip what an earlier one applied already, so a
    // rewind (crowd replay) on this node is not undone by an old takeover's report.
    const applied = (t: string): number => (log.delivery.hasOffset(handbackKey(t)) ? log.delivery.offset(handbackKey(t)) : 0);
    const fresh = w.reports.map((r) => ({ ...r, finished: Object.fromEntries(Object.entries(r.finished).filter(([t, v]) => v > applied(t))) }));
    const ahead = reportedAhead(fresh, (t) => (log.delivery.hasOffset(t) ? log.delivery.offset(t) : null), targets, log.durableOffset());
    for (const [t, m] of Object.entries(ahead)) {
      await log.delivery.setOffset(t, m.to);
      await log.delivery.setOffset(handbackKey(t), m.to);
    }
    const takers = w.reports.filter((r) => Object.keys(r.finished).length > 0).map((r) => `${r.by} ${r.delivering ? 'still delivering' : 'reported'} ${JSON.stringify(r.finished)}`);
    if (Object.keys(ahead).length > 0 || !w.complete) {
      const moved = Object.keys(ahead).length > 0;
      logger[moved ? 'warn' : 'info'](
        { event: 'handback', waited_ms: w.waitedMs, complete: w.complete, moved: ahead, reports: w.reports },
        `handback: ${moved ? `targets resume where peers delivered this log to (${Object.entries(ahead).map(([t, m]) => `${t} ${m.from} -> ${m.to}`).join(', ')})` : 'no peer delivered past this node\'s offsets'}${w.complete ? '' : `; not every peer answered within ${HANDBACK_WAIT_MS} ms (what a taker delivers later may be delivered again)`}${takers.length ? `; reports: ${takers.join('; ')}` : ''}`,
      );
    }
  }

  /** Dead letters a target got here while delivering a peer's log (the latest incarnation held, unless named). */
  private replicaDeadLetters(origin: string, incarnation: string | undefined, target: string, after: number, limit: number): unknown {
    const log = this.log;
    if (!log) throw new CrowdError('CROWD_ERR_REPLAY', 'the log is not open');
    if (!this.opts.config.targets.some((t) => t.name === target)) throw new CrowdError('CROWD_ERR_REPLAY', `no target is named "${target}"`);
    const all = log.replicas().filter((r) => r.origin === origin && (incarnation === undefined || r.incarnation === incarnation));
    const r = all[all.length - 1];
    // Dead letters outlive the replica (an old log removed after it was delivered): with the
    // incarnation named, they are listed from the store all the same.
    const inc = r?.incarnation ?? incarnation;
    if (inc === undefined) throw new CrowdError('CROWD_ERR_REPLAY', `no replica of ${origin} is held here (name the log with --incarnation to list dead letters kept after its replica was removed)`);
    const store = new ReplicaDeliveryStore(log.delivery, origin, inc, () => 0);
    return { target, origin, incarnation: inc, dead_letters: listDeadLetters(store, target, after, limit) };
  }

  private houseKeep(): void {
    const log = this.log;
    if (!log || this.state !== 'ready' || this.housekeepingRun) return;
    this.housekeepingRun = this.runHousekeeping(log).finally(() => {
      this.housekeepingRun = null;
    });
  }

  private async runHousekeeping(log: Log): Promise<void> {
    try {
      const removed = await log.applyRetention(() => this.state !== 'ready');
      if (removed > 0) {
        this.metrics.retentionRemoved.inc(removed);
        this.opts.logger.info({ event: 'retention', removed }, `retention removed ${removed} entries`);
      }
      if (this.state === 'ready') await log.saveStats();
    } catch (err) {
      // A failed commit here has already failed the log (and so the node); this line says where.
      this.opts.logger.error({ event: 'housekeeping_failed', err }, `housekeeping failed: ${(err as Error).message}`);
    }
  }

  /** A storage failure (`log_failed`) or a broken delivery invariant (`delivery_failed`): crash-stop. */
  private fatal(err: Error, event: 'log_failed' | 'delivery_failed' = 'log_failed'): void {
    if (this.state === 'failed') return;
    this.state = 'failed';
    this.ingest?.stopAccepting();
    this.opts.logger.fatal({ event, err }, `${err.message}: stopping; acknowledged requests are safe, unacknowledged ones got 503`);
    this.opts.onFatal(err);
  }

  /** Stops accepting, waits (bounded) for open requests and pending commits, closes the log. */
  async stop(signal: string): Promise<void> {
    // After a storage failure the node is already on its way out with exit code 1.
    if (this.state === 'stopped' || this.state === 'draining' || this.state === 'failed') return;
    const { logger } = this.opts;
    this.state = 'draining';
    logger.info({ event: 'stopping', signal }, `${signal}: stopping; new requests get 503`);
    this.ingest?.stopAccepting();
    if (this.housekeeping) clearInterval(this.housekeeping);
    const deadline = Date.now() + SHUTDOWN_GRACE_MS;
    while (Date.now() < deadline && ((this.ingest?.openRequests() ?? 0) > 0 || (this.log?.stats().pending_writes ?? 0) > 0)) {
      await new Promise((r) => setTimeout(r, 5));
    }
    // Followers' connections are not requests: closed here (after the last quorum answers) so they do not hold the stop.
    this.replicator?.stopServing();
    const open = this.ingest?.openRequests() ?? 0;
    if (open > 0) logger.warn({ event: 'stop_timeout', open_requests: open }, `${open} requests still open after ${SHUTDOWN_GRACE_MS} ms; their connections close`);
    // Open (keep-alive) connections keep getting 503 + Connection: close until they close, within
    // the same grace: exiting under a request in flight would reset its connection.
    while (Date.now() < deadline && (this.ingest?.openConnections() ?? 0) > 0) {
      await new Promise((r) => setTimeout(r, 100));
    }
    // Let the last acknowledgements leave the socket buffers before the process exits.
    await new Promise((r) => setImmediate(r));
    // Requests in flight to upstreams get a few seconds; what does not finish is sent again after the restart.
    await Promise.all([this.delivery?.stop(DELIVERY_STOP_GRACE_MS), this.takeover?.stop(DELIVERY_STOP_GRACE_MS)]);
    this.replicator?.stop();
    // A failure while draining: the node is on its way out without touching the log again.
    if ((this.state as NodeState) === 'failed') return;
    this.admin.stop();
    // A retention pass stops at its next chunk once draining; its transaction finishes first.
    await this.housekeepingRun;
    if ((this.state as NodeState) === 'failed') return;
    // Left open: the process exits without lmdb-js's close-time sync (see Log.close).
    await this.log?.close({ leaveOpen: true });
    if (this.stallTimer) clearInterval(this.stallTimer);
    if ((this.state as NodeState) === 'failed') return; // a commit failed while draining
    this.state = 'stopped';
    const s = this.log?.stats();
    logger.info({ event: 'stopped', last_offset: s?.last_offset }, 'stopped');
  }

  /** The targets holding the log and a sentence saying so (cached briefly: asked per refused request). */
  private holders(): { names: string[]; text: string; brief: string } {
    const now = Date.now();
    if (this.held && now - this.held.at < HOLDERS_CACHE_MS) return this.held;
    const { config } = this.opts;
    const list = this.delivery?.holders() ?? [];
    let text: string;
    let brief: string;
    if (config.targets.length === 0) text = brief = 'no targets are configured, so nothing is removed from it';
    else if (list.length === 0) text = brief = 'every target is caught up; retention frees it shortly';
    else {
      // For clients: names and counts only (offsets, states and upstream errors stay on the admin port).
      brief = `held by target${list.length > 1 ? 's' : ''} ${list.map((s) => `${s.name} (${s.lag} requests not delivered)`).join(', ')}`;
      const one = (s: (typeof list)[number]) =>
        `${s.name} (at offset ${s.committed_offset}, ${s.lag} requests not delivered, state ${s.state}${s.last_error ? `, last error: ${s.last_error.message}` : ''})`;
      text = `held by target${list.length > 1 ? 's' : ''} ${list.map(one).join(', ')}: retention cannot remove what ${list.length > 1 ? 'they have' : 'it has'} not delivered (targets[].max_lag_bytes moves a target's oldest entries to its dead letters instead)`;
    }
    this.held = { at: now, names: list.map((s) => s.name), text, brief };
    return this.held;
  }

  /** The 503 text while the log is over log.max_bytes. */
  private fullText(): string {
    this.reportFull();
    const replicas = this.takeover?.heldBytes() ?? 0;
    const also = replicas > 0 ? `; ${formatBytes(replicas)} of it are peers' logs this node delivers (a takeover)` : '';
    return `the log is over log.max_bytes (${formatBytes(this.opts.config.log.max_bytes)}); ${this.holders().brief}${also}; retry later`;
  }

  /** A warn line when the log becomes full (or its holders change), an info line when it is not any more. */
  private reportFull(): void {
    const { logger, config } = this.opts;
    const full = this.log?.refusal() === 'max_bytes';
    if (!full) {
      if (this.reportedFull !== null) {
        this.reportedFull = null;
        logger.info({ event: 'log_not_full' }, 'the log is below log.max_bytes again: ingest accepts requests');
      }
      return;
    }
    const h = this.holders();
    const key = h.names.join(',');
    if (this.reportedFull === key) return;
    this.reportedFull = key;
    logger.warn(
      { event: 'log_full', held_by: h.names, bytes: this.log?.stats().bytes, max_bytes: config.log.max_bytes },
      `the log is over log.max_bytes (${formatBytes(config.log.max_bytes)}): every route gets 503; ${h.text}`,
    );
  }

  private notReady(): string | null {
    if (this.state !== 'ready') return this.state;
    const refusal = this.log?.refusal();
    if (refusal === 'max_bytes') return `over log.max_bytes; ${this.holders().text}`;
    if (refusal) return refusal;
    return null;
  }

  /** The replicator's status, each replica with who delivers it (and how far, when this node does). */
  private clusterStatus(): unknown {
    const st = this.replicator?.status();
    if (!st) return null;
    return { ...st, takeover_after_ms: this.opts.config.cluster.takeover_after, replicas: st.replicas.map((r) => ({ ...r, ...(this.takeover?.role(r.origin, r.incarnation) ?? {}) })) };
  }

  status(): unknown {
    const { config } = this.opts;
    const s = this.log?.stats();
    return {
      node: config.node_id,
      version: VERSION,
      state: this.state,
      ready: this.notReady() === null,
      ingest: { host: config.server.host, port: this.ingest?.port ?? null },
      log: s
        ? {
            dir: config.log.dir,
            ...s,
            max_bytes: config.log.max_bytes,
            max_pending_writes: config.log.max_pending_writes,
            over_max_bytes: this.log?.refusal() === 'max_bytes',
            held_by: this.holders().names,
          }
        : { dir: config.log.dir },
      targets: this.delivery?.status() ?? [],
      incarnation: this.log?.incarnation ?? null,
      cluster: this.clusterStatus() ?? { node_id: config.node_id, incarnation: this.log?.incarnation ?? null, ack: config.cluster.ack, min_insync: config.cluster.min_insync, peers: [], replicas: this.log?.replicas().map((r) => r.info()) ?? [], quorum_waiting: 0 },
      peers: this.replicator?.peers() ?? [],
    };
  }
}
