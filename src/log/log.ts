/**
 * The write-ahead log: one LMDB environment in `log.dir`.
 *
 * Guarantees:
 * - `append` hands its callback success only after the transaction holding the entry has
 *   been committed and fdatasync'ed (the commit promise and its `flushed` promise).
 * - All appends of one event-loop turn share one transaction: group commit, one fsync for
 *   many requests; while a commit is being flushed, the next turns gather into the next one.
 *   They are written as one record (`record.ts`) keyed by the first offset.
 * - Offsets are integers from 1 below 2^53, strictly increasing, never reused (the next
 *   offset survives retention through the meta record `offset_floor`).
 * - Readers (`read`, consumers, peers) never pass the durable watermark: entries become
 *   visible in LMDB before they are flushed.
 * - A failed commit poisons the log: every waiting and later append fails, and the owner
 *   must crash-stop (never retry and then acknowledge).
 *
 * Sub-databases: `entries` (first offset -> record of envelopes), `consumers` (target -> offset),
 * `retries` and `dead` ([target, offset] -> held request, see `delivery-store.ts`), `meta`
 * (stats, offset floor), so that moving offsets and writing records is one transaction.
 */
import { strict as assert } from 'node:assert';
import { join } from 'node:path';
import type { Database, RootDatabase } from 'lmdb';
import { randomBytes } from 'node:crypto';
import { CrowdError } from '../errors';
import { Replica, type ReplicaKey, type ReplicaMeta } from './replica';
import { decodeEnvelope, encodeEnvelope, type Envelope, type EnvelopeInput } from './codec';
import { DeliveryStore } from './delivery-store';
import { advanceCut, countRoutesIn, meterRecord, offsetAtTimeIn, readRun, type LagMeter, type RecordRun } from './range';
import { makeLogDir } from './dir';
import { durable, openEnvironment, putNew } from './lmdb';
import { lockLogDir } from './lock';
import { RECORD_BYTES_MAX, envelopeAt, frameRecord, recordCount } from './record';

export interface LogOptions {
  readonly dir: string;
  /** Appends accepted but not yet flushed; `refusal()` says no past it. */
  readonly maxPendingWrites: number;
  /** Bytes of appends accepted but not yet flushed (held in memory); `refusal()` says no past it. */
  readonly maxPendingBytes?: number;
  /** Bytes of envelopes held; `refusal()` says no past it. */
  readonly maxBytes: number;
  /** Entries every consumer passed stay this long. */
  readonly retentionMs: number;
  /** Consumers whose offsets bound retention; none means nothing is removed. */
  readonly consumers: readonly string[];
  readonly readOnly?: boolean;
  readonly now?: () => number;
  /** Peers whose logs this environment also holds as replicas (each up to its own max_bytes): sizes the map. */
  readonly replicaLogs?: number;
}

/** Told once whether its append was flushed (null) or failed. */
export interface AppendWaiter {
  appended(err: Error | null): void;
}
export type Refusal = 'pending_writes' | 'max_bytes' | 'failed' | 'closed';

/**
 * Measures the bytes of the log's records after a cut (`measureLag`): the cut moves forward
 * until at most a given number of bytes follow it. Record granularity.
 */
export type { LagMeter } from './range';

export interface LogStats {
  readonly first_offset: number;
  readonly last_offset: number;
  readonly durable_offset: number;
  readonly bytes: number;
  readonly pending_writes: number;
}

/** The envelopes of one record, from the first append until their flush. */
interface Batch {
  readonly firstOffset: number;
  lastOffset: number;
  readonly parts: Buffer[];
  readonly waiters: AppendWaiter[];
  /** Envelope bytes (without framing). */
  bytes: number;
  settled: boolean;
  readonly started: number;
  /** The write transaction this record went out in (set when it is written). */
  txn: Txn | null;
}

/** The records written in one turn: lmdb-js commits them as one transaction. */
interface Txn {
  readonly started: number;
  /** Requests in all its records. */
  count: number;
  /** Its records not released yet. */
  left: number;
}

interface StoredStats {
  /** Sum of envelope sizes of the live entries with offset <= through_offset. */
  bytes: number;
  through_offset: number;
}

/** Write transactions being committed at once; more arrive gathered into the next one. */
const COMMITS_IN_FLIGHT_MAX = 1;
/** How long a failure report waits for lmdb-js's underlying commit error. */
const COMMIT_ERROR_WAIT_MS = 500;
/** A commit still unsettled after this long means the writer is stuck: crash-stop. */
export const COMMIT_STALL_MS = 30_000;

/** Share of log.max_bytes above which retention removes passed entries whatever their age. */
export const RETENTION_PRESSURE = 0.9;
/** Records removed per retention transaction: keeps each write transaction small. */
export const RETENTION_CHUNK = 1000;
/** lmdb map size: a ceiling on the data file; the file is sparse, so this costs address space only. */
const MIN_MAP_SIZE = 64 * 1024 ** 3;
/** LMDB's MDB_PANIC. */
const MDB_PANIC = -30795;

export class Log {
  readonly dir: string;
  private readonly env: RootDatabase;
  private readonly entries: Database<Buffer, number>;
  private readonly consumersDb: Database<number, string>;
  /** Consumer offsets, retrying requests and dead letters. */
  readonly delivery: DeliveryStore;
  private readonly meta: Database<unknown, string>;
  private readonly replicaDb: Database<Buffer, ReplicaKey>;
  /** The entries as a run of records (range.ts). */
  private readonly run: RecordRun = {
    keyAtOrBefore: (offset) => {
      for (const key of this.entries.getKeys({ start: offset, reverse: true, limit: 1 })) return key;
      return null;
    },
    records: (start, end, stream) => this.entries.getRange({ start, end, ...(stream ? { snapshot: false } : {}) }),
  };
  private readonly replicaMap = new Map<string, Replica>();
  /** This log's random id, minted when it was created: (node_id, incarnation) names it on peers. */
  incarnation = '';
  private readonly opts: LogOptions;
  private readonly now: () => number;

  private nextOffset = 1;
  private durable = 0;
  private bytesDurable = 0;
  private bytesPending = 0;
  private pending = 0;
  /** Records being filled, written when the turn ends (or when the commit in flight is done). */
  private filling: Batch[] = [];
  /** Set when a write waits for the commit in flight. */
  private writeDeferred = false;
  /** An append turn is scheduled (setImmediate) and has not run yet. */
  private turnScheduled = false;
  /** Writes other than appends: running (their transaction not yet flushed), and waiting to start. */
  private opsInFlight = 0;
  private opsSince = 0;
  private opsWaiting: (() => void)[] = [];
  /** Set for the event turn in which waiting writes were let go: writes asked for in it join them. */
  private opsOpenTurn = false;
  /** Batches in append order whose waiters have not been answered yet. */
  private readonly unsettled: Batch[] = [];
  private failure: CrowdError | null = null;
  private closed = false;
  private unlock: (() => void) | null = null;
  /** The first offset when the environment was closed; stats stay readable after close. */
  private firstAtClose: number | null = null;
  private readonly fatalListeners: ((err: Error) => void)[] = [];
  private readonly batchListeners: ((count: number, seconds: number) => void)[] = [];
  private readonly durableListeners: (() => void)[] = [];
  /** When close() began (its flush counts for the stall check), or null. */
  private closeStarted: number | null = null;
  /** The last offset a retention transaction removed (its callback ran; maybe not yet committed). */
  private removedThrough = 0;
  /** Offsets retention must keep (with everything after them), e.g. during a rewind. */
  private readonly pins = new Map<number, number>();
  /** Lag meters that retention keeps up to date. */
  private readonly meters = new Set<LagMeter>();

  private constructor(opts: LogOptions) {
    this.opts = opts;
    this.now = opts.now ?? Date.now;
    this.dir = opts.dir;
    if (!opts.readOnly) {
      makeLogDir(opts.dir);
      this.unlock = lockLogDir(opts.dir);
    }
    try {
      this.env = openEnvironment({ path: join(opts.dir, 'crowd.mdb'), readOnly: opts.readOnly ?? false, mapSize: Math.max(MIN_MAP_SIZE, 4 * opts.maxBytes * (1 + (opts.replicaLogs ?? 0))), maxDbs: 8 });
      this.entries = this.env.openDB<Buffer, number>({ name: 'entries', encoding: 'binary', keyEncoding: 'ordered-binary', cache: false, compression: false });
      this.consumersDb = this.env.openDB<number, string>({ name: 'consumers', encoding: 'json', cache: false });
      this.meta = this.env.openDB<unknown, string>({ name: 'meta', encoding: 'json', cache: false });
      const held = { encoding: 'binary' as const, keyEncoding: 'ordered-binary' as const, cache: false, compression: false };
      this.replicaDb = this.env.openDB<Buffer, ReplicaKey>({ name: 'replicas', ...held });
      this.delivery = new DeliveryStore(
        this.env,
        this.consumersDb,
        this.env.openDB<Buffer, [string, number]>({ name: 'retries', ...held }),
        this.env.openDB<Buffer, [string, number]>({ name: 'dead', ...held }),
        (op) => this.write(op),
      );
    } catch (err) {
      this.unlock?.();
      // MDB_PANIC on a read-only open: the newest meta page was written during an earlier
      // boot and never marked flushed (a power loss or an OS crash), and LMDB's fallback to
      // the last flushed one writes the meta pages, which a read-only environment cannot.
      if (opts.readOnly && (err as { code?: number }).code === MDB_PANIC) {
        throw new CrowdError(
          'CROWD_ERR_LOG_RECOVERY',
          `the log at ${opts.dir} needs recovery: its last transactions were written before a reboot and never marked flushed (a power loss or an OS crash); \`crowd start\` recovers it, keeping every flushed (acknowledged) transaction, and then it can be read`,
          { cause: err },
        );
      }
      throw err;
    }
  }

  /**
   * Opens the log and makes everything already in it durable (one flushed transaction):
   * after kill -9 LMDB may hold committed but unflushed entries from before the crash.
   */
  static async open(opts: LogOptions): Promise<Log> {
    const log = new Log(opts);
    const last = log.lastStoredOffset();
    const floor = (log.meta.get('offset_floor') as number | undefined) ?? 1;
    log.nextOffset = Math.max(last + 1, floor);
    log.incarnation = (log.meta.get('incarnation') as string | undefined) ?? '';
    if (!opts.readOnly) {
      if (!log.incarnation) {
        log.incarnation = randomBytes(8).toString('hex');
        log.meta.put('incarnation', log.incarnation);
      }
      await durable(log.meta.put('opened_at', log.now()));
    }
    // Retention may have emptied the log: everything below the floor was durable.
    log.durable = Math.max(last, floor - 1);
    if (!opts.readOnly) log.bytesDurable = log.countBytes();
    return log;
  }

  /** Why an append would be refused right now, or null when it would be taken. */
  refusal(): Refusal | null {
    if (this.failure) return 'failed';
    if (this.closed) return 'closed';
    if (this.pending >= this.opts.maxPendingWrites) return 'pending_writes';
    if (this.bytesPending >= (this.opts.maxPendingBytes ?? Infinity)) return 'pending_writes';
    if (this.bytesDurable + this.bytesPending + this.heldElsewhere() >= this.opts.maxBytes) return 'max_bytes';
    return null;
  }

  /**
   * Bytes held in this environment besides the log that count against log.max_bytes: the
   * replicas this node delivers (a takeover). Set by the node; 0 until then.
   */
  heldElsewhere: () => number = () => 0;

  /**
   * Removes a replica (an orphaned incarnation whose every entry is finished): its records in
   * chunks, then its meta record. Nothing may deliver from it any more.
   */
  async dropReplica(origin: string, incarnation: string): Promise<number> {
    const k = Replica.metaKey(origin, incarnation);
    let removed = 0;
    for (;;) {
      const keys = [...this.replicaDb.getKeys({ start: [origin, incarnation, 0], end: [origin, incarnation, Number.MAX_SAFE_INTEGER], limit: 1000 })];
      if (keys.length === 0) break;
      await this.write(() => Promise.all(keys.map((key) => durable(this.replicaDb.remove(key)))));
      removed += keys.length;
    }
    await this.write(() => durable(this.meta.remove(k)));
    this.replicaMap.delete(k);
    return removed;
  }

  /**
   * Assigns the next offset, encodes the envelope and queues it in the current event turn's
   * transaction. `waiter.appended(null)` runs once that transaction is flushed,
   * `waiter.appended(err)` if it failed. The caller must have checked `refusal()` in the same turn.
   */
  append(entry: EnvelopeInput, waiter: AppendWaiter): number {
    if (this.failure || this.closed) throw this.closedError();
    const offset = this.nextOffset;
    if (!Number.isSafeInteger(offset + 1)) throw new CrowdError('CROWD_ERR_LOG_OFFSET', `offset ${offset} reached 2^53`);
    const bytes = encodeEnvelope(entry, offset);
    this.nextOffset = offset + 1;
    this.pending++;
    this.bytesPending += bytes.length;
    let b = this.filling.length > 0 ? this.filling[this.filling.length - 1]! : null;
    if (b === null || b.bytes + bytes.length > RECORD_BYTES_MAX) {
      if (this.filling.length === 0) this.scheduleWrite();
      b = { firstOffset: offset, lastOffset: offset, parts: [], waiters: [], bytes: 0, settled: false, started: performance.now(), txn: null };
      this.filling.push(b);
    }
    b.parts.push(bytes);
    b.waiters.push(waiter);
    b.lastOffset = offset;
    b.bytes += bytes.length;
    return offset;
  }

  /**
   * Group commit: the records are written when the turn ends, unless a commit is still being
   * flushed; then requests keep gathering (bounded by the pending limits) and go out together
   * in the next transaction as soon as it is done. Fewer, larger transactions: fewer fsyncs
   * and wake-ups under load, no added wait when idle.
   */
  private scheduleWrite(): void {
    if (this.turnScheduled) return;
    if (this.unsettled.length < COMMITS_IN_FLIGHT_MAX && this.opsInFlight === 0) {
      this.turnScheduled = true;
      setImmediate(this.writeTurn);
    } else this.writeDeferred = true;
  }

  /** Writes the gathered records; lmdb-js commits all puts of one turn in one transaction. */
  private readonly writeTurn = (): void => {
    this.turnScheduled = false;
    if (this.opsInFlight > 0) {
      // Another write's transaction went first: these wait for it (one transaction at a time).
      this.writeDeferred = true;
      return;
    }
    const records = this.filling;
    this.filling = [];
    if (records.length === 0) return this.openOps();
    const txn: Txn = { started: records[0]!.started, count: 0, left: records.length };
    for (const b of records) {
      b.txn = txn;
      txn.count += b.waiters.length;
      if (this.failure) {
        // A commit already failed: nothing more is written; these waiters get the failure.
        b.settled = true;
        this.unsettled.push(b);
        this.release();
        continue;
      }
      let promise: Promise<unknown>;
      try {
        // Never over an existing record: a collision means two writers or a broken offset
        // counter, and fails the log instead of replacing acknowledged requests.
        promise = durable(putNew(this.entries, b.firstOffset, frameRecord(b.parts, b.bytes))).then((written) => {
          if (!written) throw new CrowdError('CROWD_ERR_LOG_OFFSET', `offset ${b.firstOffset} is already in ${this.dir}: refusing to overwrite it (two writers on one log, or a broken offset counter)`);
        });
      } catch (err) {
        promise = Promise.reject(err);
      }
      b.parts.length = 0; // the framed copy is what lmdb-js holds now
      this.watch(b, promise);
    }
  };

  /**
   * Marks the batch settled when its commit and its fdatasync resolved, then releases
   * settled batches strictly in append order: an ack never overtakes an earlier request's
   * flush, whatever order lmdb-js settles its promises in.
   */
  private watch(b: Batch, promise: Promise<unknown>): void {
    this.unsettled.push(b);
    promise.then(
        () => {
          b.settled = true;
          this.release();
        },
        (err: unknown) => {
          b.settled = true;
          const first = this.failure === null;
          if (first) {
            this.failure =
              err instanceof CrowdError ? err : new CrowdError('CROWD_ERR_LOG_COMMIT', `commit to ${this.dir} failed: ${(err as Error)?.message ?? err}`, { cause: err });
          }
          this.release();
          if (first) void this.notifyFatal(this.failure!, err);
        },
      );
  }

  /** Tells the owner about the failure, with lmdb-js's underlying error when it has one. */
  private async notifyFatal(failure: CrowdError, err: unknown): Promise<void> {
    const detail = (err as { commitError?: Promise<unknown> })?.commitError;
    if (detail && typeof detail.then === 'function') {
      // lmdb-js rejects commitError with the underlying error; never wait long for it.
      const cause = await Promise.race([
        detail.then(
          () => null,
          (e: unknown) => e as Error & { code?: unknown },
        ),
        new Promise<null>((r) => setTimeout(() => r(null), COMMIT_ERROR_WAIT_MS).unref()),
      ]);
      if (cause) failure.message = `commit to ${this.dir} failed: ${cause.message}${cause.code !== undefined ? ` (code ${cause.code})` : ''}`;
    }
    for (const l of this.fatalListeners) l(failure);
  }

  private release(): void {
    let moved = false;
    while (this.unsettled.length > 0 && this.unsettled[0]!.settled) {
      const b = this.unsettled.shift()!;
      this.pending -= b.waiters.length;
      this.bytesPending -= b.bytes;
      if (this.failure) {
        for (const w of b.waiters) w.appended(this.failure);
        continue;
      }
      assert(b.lastOffset > this.durable, `durable watermark would move back from ${this.durable} to ${b.lastOffset}`);
      this.durable = b.lastOffset;
      this.bytesDurable += b.bytes;
      // Meters that have counted everything before this record count it without reading it.
      for (const m of this.meters) if (m.through === b.firstOffset - 1) meterRecord(m, b.lastOffset, b.bytes);
      const txn = b.txn;
      if (txn && --txn.left === 0) {
        const seconds = (performance.now() - txn.started) / 1000;
        for (const l of this.batchListeners) l(txn.count, seconds);
      }
      for (const w of b.waiters) w.appended(null);
      moved = true;
    }
    if (moved) for (const l of this.durableListeners) l();
    if (this.unsettled.length > 0) return;
    // Appends and other writes take turns: waiting writes first, then the appends gathered meanwhile.
    if (this.opsWaiting.length > 0 || this.failure) this.openOps();
    else if (this.writeDeferred && this.opsInFlight === 0) {
      this.writeDeferred = false;
      if (this.filling.length > 0 && !this.turnScheduled) {
        this.turnScheduled = true;
        setImmediate(this.writeTurn);
      }
    }
  }

  /** Lets every waiting write start now, in this event turn (lmdb-js commits them in one transaction). */
  private openOps(): void {
    const waiting = this.opsWaiting;
    if (waiting.length === 0) return;
    this.opsWaiting = [];
    this.opsOpenTurn = true;
    setImmediate(() => (this.opsOpenTurn = false));
    for (const go of waiting) go();
  }

  /** Called once when a commit fails; the owner must answer 503 and exit non-zero. */
  onFatal(listener: (err: Error) => void): void {
    this.fatalListeners.push(listener);
  }

  /**
   * Called once per flushed write transaction of appends (after its last record is
   * released) with its request count and the seconds from its first append to its flush.
   */
  onBatch(listener: (count: number, seconds: number) => void): void {
    this.batchListeners.push(listener);
  }

  /** Called (synchronously, after the acks) whenever the durable watermark moved. */
  onDurable(listener: () => void): void {
    this.durableListeners.push(listener);
  }

  /** The highest offset whose transaction has been flushed; readers stop here. */
  durableOffset(): number {
    return this.durable;
  }

  stats(): LogStats {
    return {
      first_offset: this.firstKey(),
      last_offset: this.nextOffset - 1,
      durable_offset: this.durable,
      bytes: this.bytesDurable + this.bytesPending,
      pending_writes: this.pending,
    };
  }

  /**
   * Up to `limit` envelopes with offset >= from, never past the durable watermark
   * (or past `through`, when given and lower).
   */
  read(from: number, limit: number, through: number = this.durable, copy = false): Envelope[] {
    if (this.closed) throw this.closedError();
    return readRun(this.run, from, limit, Math.min(through, this.durable), (bytes, offset, i) => {
      // Envelopes held across awaits (delivery) must not share lmdb-js's read buffers.
      const e = decodeEnvelope(bytes, copy);
      assert(e.offset === offset, `record ${offset - i} holds offset ${e.offset} at position ${i}`);
      return e;
    });
  }

  /**
   * For read-only openers (`crowd tail` beside a running server): the last visible offset.
   * Another process's durable watermark is not known here, so this may include entries that
   * are committed but whose fdatasync has not finished yet; delivery never reads this way.
   */
  refreshVisible(): number {
    this.env.resetReadTxn();
    this.durable = this.lastStoredOffset();
    return this.durable;
  }

  consumerOffset(target: string): number {
    return this.consumersDb.get(target) ?? 0;
  }

  /** Records that `target` has finished every entry up to `offset`. */
  async commitOffset(target: string, offset: number): Promise<void> {
    if (offset > this.durable) throw new CrowdError('CROWD_ERR_LOG_OFFSET', `consumer ${target} cannot pass the durable offset ${this.durable} (asked ${offset})`);
    await this.write(() => this.consumersDb.put(target, offset));
  }

  /** The lowest offset still in the log, or the next offset when it is empty. */
  firstOffset(): number {
    const k = this.firstKey();
    const first = k === 0 ? this.nextOffset : k;
    // A retention transaction whose callback ran has removed these, committed or not.
    return Math.max(first, this.removedThrough + 1);
  }

  /**
   * Counts the entries with offset in [from, through] whose route is in `routes`, about
   * `chunk` entries between yields to the event loop (a backlog may be millions of entries;
   * the first yield comes before any reading, so a caller's start-up is not held up).
   */
  async countRoutes(from: number, through: number, routes: ReadonlySet<string>, chunk = 20_000): Promise<number> {
    return countRoutesIn(this.run, from, through, routes, chunk, () => this.closed);
  }

  /**
   * The first offset received at or after `ms` (binary search over offsets; receive times
   * follow offsets), or the next offset when every entry is older.
   */
  offsetAtTime(ms: number): number {
    return offsetAtTimeIn(this.firstOffset(), this.durable + 1, ms, (o) => this.receivedAt(o));
  }

  private receivedAt(offset: number): number | null {
    for (const { key, value } of this.entries.getRange({ start: offset, reverse: true, limit: 1 })) {
      if (offset - key >= recordCount(value)) return null;
      return decodeEnvelope(envelopeAt(value, offset - key)).received_at;
    }
    return null;
  }

  /**
   * Every write that is not an append goes through here: a failed commit poisons the log
   * exactly like a failed append (fsyncgate: never go on writing after a failed fsync).
   */
  private async write<T>(op: () => Promise<T>): Promise<T> {
    if (this.failure) throw this.failure;
    if (this.closed) throw this.closedError();
    // One write transaction in flight at a time, appends included: with lmdb-js's overlapping
    // sync a second transaction would write the file while the first one's fdatasync runs, and
    // go on writing after that fdatasync failed. Writes asked for in one turn go together.
    if (!this.opsOpenTurn && (this.unsettled.length > 0 || this.turnScheduled || this.opsInFlight > 0 || this.opsWaiting.length > 0)) {
      await new Promise<void>((go) => this.opsWaiting.push(go));
      if (this.failure) throw this.failure;
      if (this.closed) throw this.closedError();
    }
    if (!this.opsOpenTurn) {
      this.opsOpenTurn = true;
      setImmediate(() => (this.opsOpenTurn = false));
    }
    if (this.opsInFlight++ === 0) this.opsSince = performance.now();
    try {
      return await op();
    } catch (err) {
      if (this.failure === null) {
        this.failure = new CrowdError('CROWD_ERR_LOG_COMMIT', `commit to ${this.dir} failed: ${(err as Error)?.message ?? err}`, { cause: err });
        void this.notifyFatal(this.failure, err);
      }
      throw this.failure;
    } finally {
      if (--this.opsInFlight === 0) this.opsDone();
    }
  }

  /** The last write finished: the appends gathered meanwhile go next, else writes that waited. */
  private opsDone(): void {
    if (this.failure) return this.openOps();
    if (this.unsettled.length > 0) return; // release() opens what waits
    if (this.writeDeferred && this.filling.length > 0) {
      this.writeDeferred = false;
      if (!this.turnScheduled) {
        this.turnScheduled = true;
        setImmediate(this.writeTurn);
      }
      return;
    }
    this.writeDeferred = false;
    this.openOps();
  }

  /**
   * A stuck writer never settles its promises: acks would hang and the process would never
   * exit. The owner calls this periodically; past COMMIT_STALL_MS the log fails.
   */
  checkStall(now: number = performance.now()): void {
    const oldest = this.unsettled[0];
    const since = oldest?.started ?? (this.opsInFlight > 0 ? this.opsSince : this.closeStarted);
    if (this.failure || since === null || this.firstAtClose !== null || now - since < COMMIT_STALL_MS) return;
    const what = oldest ? `commit to ${this.dir}` : this.opsInFlight > 0 ? `a write to ${this.dir}` : `closing ${this.dir} (its last flush)`;
    this.failure = new CrowdError('CROWD_ERR_LOG_STALLED', `${what} has not completed in ${Math.round((now - since) / 1000)} s${oldest ? ` (offsets ${oldest.firstOffset}-${oldest.lastOffset})` : ''}`);
    for (const b of this.unsettled) b.settled = true;
    this.release();
    this.openOps();
    void this.notifyFatal(this.failure, null);
  }

  /**
   * Removes entries that every consumer has passed and that are older than the retention
   * (or, above RETENTION_PRESSURE of max_bytes, whatever their age). No consumer
   * configured: nothing is removed. Returns the number of entries removed.
   *
   * The keys are chosen before the transaction and its callback runs later (lmdb.ts), so
   * the callback checks again what may have changed meanwhile: a pin (a rewind) keeps its
   * offset and everything after it. The offsets it removes are taken out of `firstOffset()`
   * at once, so that a rewind checked after the callback ran refuses them. `stop` is asked
   * before each chunk (the owner is shutting down).
   */
  async applyRetention(stop: () => boolean = () => false): Promise<number> {
    if (this.opts.consumers.length === 0 || this.opts.readOnly) return 0;
    let removed = 0;
    while (!this.closed && !this.failure && !stop()) {
      let passed = Math.min(...this.opts.consumers.map((c) => this.consumerOffset(c)));
      passed = Math.min(passed, this.durable, this.pinnedBelow());
      // Near log.max_bytes, delivered entries go before their retention time: the quota is
      // for what is still owed to targets, not for replay history.
      const pressed = this.bytesDurable + this.bytesPending + this.heldElsewhere() >= this.opts.maxBytes * RETENTION_PRESSURE;
      const cutoff = pressed ? Infinity : this.now() - this.opts.retentionMs;
      const candidates: { key: number; last: number; freed: number }[] = [];
      for (const { key, value } of this.entries.getRange({ start: 1, end: passed + 1, limit: RETENTION_CHUNK })) {
        const count = recordCount(value);
        const last = key + count - 1;
        // Whole records only: every entry passed by every consumer and older than the cutoff.
        if (last > passed || decodeEnvelope(envelopeAt(value, count - 1)).received_at > cutoff) break;
        candidates.push({ key, last, freed: value.length - 4 - 4 * count });
      }
      if (candidates.length === 0) return removed;
      let chunk = 0;
      await this.write(() =>
        this.env.transaction(() => {
          // Runs later than the call: what was pinned meanwhile stays.
          const limit = this.pinnedBelow();
          let lastRemoved = 0;
          for (const c of candidates) {
            if (c.last > limit || this.closed) break;
            this.entries.remove(c.key);
            this.bytesDurable -= c.freed;
            for (const m of this.meters) {
              if (c.last <= m.cut) continue;
              while (m.head < m.records.length && m.records[m.head]!.last <= c.last) m.bytes -= m.records[m.head++]!.bytes;
              if (c.last > m.through) m.through = c.last;
              m.cut = c.last;
            }
            lastRemoved = c.last;
            chunk += c.last - c.key + 1;
          }
          if (lastRemoved === 0) return;
          this.removedThrough = Math.max(this.removedThrough, lastRemoved);
          const floor = Math.max((this.meta.get('offset_floor') as number | undefined) ?? 1, lastRemoved + 1);
          this.meta.put('offset_floor', floor);
          this.meta.put('stats', { bytes: this.bytesDurable, through_offset: this.durable } satisfies StoredStats);
        }),
      );
      removed += chunk;
      if (chunk === 0 || candidates.length < RETENTION_CHUNK) return removed;
    }
    return removed;
  }

  /** Starts measuring the bytes of the records after `offset` (the record holding offset + 1 counts whole). */
  lagMeter(offset: number): LagMeter {
    let start = offset + 1;
    for (const key of this.entries.getKeys({ start: offset + 1, reverse: true, limit: 1 })) start = key;
    const m: LagMeter = { cut: start - 1, bytes: 0, through: start - 1, records: [], head: 0 };
    this.meters.add(m);
    return m;
  }

  /**
   * Counts the records made durable since the last call (at most `scan` of them per call) and
   * moves the cut forward until at most `max` bytes of records follow it. Returns the cut: the
   * entries up to it are the oldest beyond `max`. Each record is read at most twice in all.
   */
  measureLag(m: LagMeter, max: number, scan = 10_000): number {
    if (this.closed) return m.cut;
    // Records flushed by this process are counted as they are released (meterRecord); the
    // backlog found at start is read from the file once, `scan` records per call.
    if (m.through < this.durable) {
      let n = 0;
      for (const { key, value } of this.entries.getRange({ start: m.through + 1, end: this.durable + 1, snapshot: false })) {
        const count = recordCount(value);
        meterRecord(m, key + count - 1, value.length - 4 - 4 * count);
        if (++n >= scan) break;
      }
    }
    return advanceCut(m, max);
  }

  /** The highest offset retention may remove given the pins (a pin keeps its offset and what follows). */
  private pinnedBelow(): number {
    let limit = Infinity;
    for (const pinned of this.pins.keys()) limit = Math.min(limit, pinned - 1);
    return limit;
  }

  /** Keeps retention from removing `offset` and what follows until the returned function runs. */
  pin(offset: number): () => void {
    this.pins.set(offset, (this.pins.get(offset) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = this.pins.get(offset)! - 1;
      if (n === 0) this.pins.delete(offset);
      else this.pins.set(offset, n);
    };
  }

  /** Persists the byte count so that the next open scans only entries after it. */
  async saveStats(): Promise<void> {
    if (this.opts.readOnly || this.failure || this.closed) return;
    await this.write(() => this.meta.put('stats', { bytes: this.bytesDurable, through_offset: this.durable } satisfies StoredStats));
  }

  /**
   * Waits for every queued append to settle, saves stats and closes the environment
   * (unless `leaveOpen`: then the process must exit with `exitWithoutSync`).
   */
  async close(opts: { leaveOpen?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.closeStarted = performance.now();
    if (this.filling.length > 0) this.writeTurn();
    if (!this.opts.readOnly && !this.failure) {
      try {
        // This write's own flushed promise: env.flushed resolves even when the fdatasync failed.
        await durable(this.meta.put('stats', { bytes: this.bytesDurable + this.bytesPending, through_offset: this.nextOffset - 1 } satisfies StoredStats));
      } catch (err) {
        // Like any failed commit: the log fails and the owner exits without syncing again.
        if (this.failure === null) {
          this.failure = new CrowdError('CROWD_ERR_LOG_COMMIT', `commit to ${this.dir} failed while closing: ${(err as Error)?.message ?? err}`, { cause: err });
          void this.notifyFatal(this.failure, err);
        }
      }
    }
    this.firstAtClose = this.firstKey();
    // lmdb-js's close syncs the environment again (mdb_env_sync). After a failure that could
    // mark the failed transaction as flushed; and lmdb-js does not report every failed
    // fdatasync (a failed flush of the last transaction can go unreported), so the server
    // leaves it open (`leaveOpen`) and exits without syncing: everything it acknowledged
    // was flushed already.
    if (!this.opts.readOnly && (this.failure || opts.leaveOpen)) return;
    await this.env.close();
    this.unlock?.();
  }

  /**
   * The stored records (as their bytes) from the one holding `from` through the durable
   * watermark: at least one record when there is one, then as many as fit in `maxBytes`.
   */
  readRecords(from: number, maxBytes: number): { key: number; last: number; bytes: Buffer }[] {
    if (this.closed) throw this.closedError();
    const out: { key: number; last: number; bytes: Buffer }[] = [];
    const end = this.durable;
    if (from > end) return out;
    let start = from;
    for (const key of this.entries.getKeys({ start: from, reverse: true, limit: 1 })) start = key;
    let bytes = 0;
    for (const { key, value } of this.entries.getRange({ start, end: end + 1 })) {
      const last = key + recordCount(value) - 1;
      if (last > end) break; // the durable watermark is always at a record's end; defensive
      if (out.length > 0 && bytes + value.length > maxBytes) break;
      out.push({ key, last, bytes: Buffer.from(value) });
      bytes += value.length;
    }
    return out;
  }

  /** The replica of (origin, incarnation) held here; created (empty) when `create`. */
  replica(origin: string, incarnation: string, create = false): Replica | null {
    const k = Replica.metaKey(origin, incarnation);
    let r = this.replicaMap.get(k);
    if (r) return r;
    let meta = this.meta.get(k) as ReplicaMeta | undefined;
    if (!meta) {
      if (!create || this.opts.readOnly) return null;
      meta = { origin, incarnation, created_at: this.now(), gaps: 0, finished: {} };
      this.write(() => durable(this.meta.put(k, meta))).catch(() => {}); // a failure fails the log itself
    }
    r = new Replica(origin, incarnation, this.replicaDb, this.meta, meta, (op) => this.write(op));
    this.replicaMap.set(k, r);
    return r;
  }

  /** Every replica held here, oldest first by creation. */
  replicas(): Replica[] {
    const out: Replica[] = [];
    for (const { value } of this.meta.getRange({ start: 'replica:', end: 'replica;' })) {
      const m = value as ReplicaMeta;
      const r = this.replica(m.origin, m.incarnation);
      if (r) out.push(r);
    }
    return out.sort((a, b) => a.createdAt() - b.createdAt());
  }

  private closedError(): CrowdError {
    return new CrowdError('CROWD_ERR_LOG_CLOSED', `log ${this.dir} is ${this.failure ? 'failed' : 'closed'}: no more reads or writes`);
  }

  private firstKey(): number {
    if (this.firstAtClose !== null) return this.firstAtClose;
    for (const key of this.entries.getKeys({ limit: 1 })) return key;
    return 0;
  }

  /** The offset of the last envelope in the log (0 when empty). */
  private lastStoredOffset(): number {
    for (const { key, value } of this.entries.getRange({ reverse: true, limit: 1 })) return key + recordCount(value) - 1;
    return 0;
  }

  private countBytes(): number {
    const s = this.meta.get('stats') as StoredStats | undefined;
    let bytes = s?.bytes ?? 0;
    // Stats are saved at record boundaries, so the records after them are whole.
    const from = (s?.through_offset ?? 0) + 1;
    for (const { value } of this.entries.getRange({ start: from })) bytes += value.length - 4 - 4 * recordCount(value);
    return bytes;
  }
}
