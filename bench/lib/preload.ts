/**
 * Writes N envelopes straight into a crowd log directory with crowd's own log module
 * (`src/log/log.ts`), much faster than POSTing them. Appends of one event-loop turn share one
 * transaction (group commit) and are stored as one record. By default each record holds
 * RECORD_ENTRIES_DEFAULT entries, what crowd's group commit stores under a few hundred
 * concurrent clients, and is flushed before the next one is appended (one fdatasync per
 * record: 120k-250k entries/s here). With `recordEntries` 0 the records are as large as the
 * log makes them (up to 4 MiB, thousands of entries; about 400k entries/s), which changes
 * what crowd does at start: it counts its backlog 256 records at a time, the first chunk
 * before it listens. Memory stays bounded to a few batches of envelopes either way.
 *
 * The envelopes are what crowd's ingest would store for `POST /leads` on route `leads` with
 * the benchmark BODY (servers.ts) and a couple of headers.
 *
 * A target with no stored offset starts after what the log holds (the new-target rule), so a
 * preloaded log would not be delivered: with `target`, its consumer offset is set to 0 before
 * the log closes, and crowd delivers the whole backlog to it.
 *
 * As a child process (crowd must not run on the directory: the log has one writer):
 *
 *   node dist/bench/lib/preload.js --dir LOG_DIR --count N [--target NAME] [--body-bytes B] [--record-entries N] [--progress]
 *
 * prints one JSON line: {"count":N,"seconds":S,"bytes":B,"file_bytes":F,"first_offset":..,"last_offset":..,"per_s":R,"record_entries":E,"target":T}.
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Log, type AppendWaiter } from '../../src/log/log';
import { newId } from '../../src/log/ids';
import { BODY, CONTENT_TYPE, PATH } from './servers';

export const ROUTE = 'leads';
/** Appends per event-loop turn (one transaction, one fsync) when records may be large. */
const BATCH = 5000;
/** Batches appended but not yet flushed; the next ones wait. */
const BATCHES_IN_FLIGHT = 4;
/**
 * Entries per record by default: what crowd's group commit stores under a load of a few
 * hundred concurrent clients (one record per transaction, at most one request per connection
 * in it). See `recordEntries`.
 */
export const RECORD_ENTRIES_DEFAULT = 256;

export interface PreloadOptions {
  /** The log directory (crowd's `log.dir`). */
  readonly dir: string;
  readonly count: number;
  /** A target whose consumer offset is set to 0 (so that crowd delivers everything); none: untouched. */
  readonly target?: string | null;
  readonly body?: Buffer;
  /**
   * Entries per record (one transaction each, flushed before the next is appended), so that
   * the log has the shape a loaded crowd gives it; default RECORD_ENTRIES_DEFAULT. 0: as
   * large as the log makes them (BATCH appends per turn, BATCHES_IN_FLIGHT turns in flight:
   * records of up to 4 MiB, several thousand entries, fastest).
   */
  readonly recordEntries?: number;
  /** Called about once a second with the entries written so far. */
  readonly onProgress?: (written: number) => void;
}

export interface PreloadResult {
  readonly count: number;
  readonly seconds: number;
  /** Envelope bytes the log holds (its own count, as in /status). */
  readonly bytes: number;
  /** Size of crowd.mdb on disk (allocated blocks). */
  readonly file_bytes: number;
  readonly first_offset: number;
  readonly last_offset: number;
  readonly per_s: number;
  /** Entries per record asked for (0: as large as the log makes them). */
  readonly record_entries: number;
  readonly target: string | null;
}

/** Resolves once every append of the batch was flushed (or rejects with the first failure). */
class BatchWaiter implements AppendWaiter {
  private left: number;
  private failed: Error | null = null;
  readonly done: Promise<void>;
  private resolve!: () => void;
  private reject!: (err: Error) => void;

  constructor(n: number) {
    this.left = n;
    this.done = new Promise((res, rej) => {
      this.resolve = res;
      this.reject = rej;
    });
  }

  appended(err: Error | null): void {
    if (err && !this.failed) {
      this.failed = err;
      this.reject(err);
    }
    if (--this.left === 0 && !this.failed) this.resolve();
  }
}

export async function preload(o: PreloadOptions): Promise<PreloadResult> {
  if (!Number.isSafeInteger(o.count) || o.count < 0) throw new Error(`preload: count must be a non-negative integer, got ${o.count}`);
  const body = o.body ?? Buffer.from(BODY);
  // What ingest stores: lower-case names, without content-length and hop-by-hop headers.
  const headerList = ['host', '127.0.0.1', 'content-type', CONTENT_TYPE, 'user-agent', 'crowd-bench-preload'];
  const perRecord = o.recordEntries ?? RECORD_ENTRIES_DEFAULT;
  const started = performance.now();
  const log = await Log.open({
    dir: o.dir,
    maxPendingWrites: 250_000,
    maxBytes: 1024 ** 4, // no quota here: crowd's own applies when it opens the log
    retentionMs: 365 * 24 * 3600 * 1000,
    consumers: [], // nothing removed
  });
  let closed = false;
  try {
    const inFlight: Promise<void>[] = [];
    let written = 0;
    let lastReport = started;
    // With a record size, each batch is flushed before the next is appended: appends that
    // arrive while a commit is in flight would be gathered into one larger record.
    const batch = perRecord > 0 ? perRecord : BATCH;
    const maxInFlight = perRecord > 0 ? 1 : BATCHES_IN_FLIGHT;
    while (written < o.count) {
      const n = Math.min(batch, o.count - written);
      const waiter = new BatchWaiter(n);
      const receivedAt = Date.now();
      // One turn: these appends go into one transaction.
      for (let i = 0; i < n; i++) {
        const refusal = log.refusal();
        if (refusal !== null) throw new Error(`preload: the log refused an append (${refusal}) after ${written + i} entries`);
        log.append({ id: newId(receivedAt), received_at: receivedAt, route: ROUTE, method: 'POST', path: PATH, query: '', headerList, remote: '127.0.0.1', body }, waiter);
      }
      written += n;
      waiter.done.catch(() => undefined); // handled when awaited below; no unhandled rejection meanwhile
      inFlight.push(waiter.done);
      if (inFlight.length >= maxInFlight) await inFlight.shift();
      else await new Promise((r) => setImmediate(r)); // end the turn: the batch is written
      if (o.onProgress && performance.now() - lastReport > 1000) {
        lastReport = performance.now();
        o.onProgress(written);
      }
    }
    await Promise.all(inFlight);
    if (o.target) await log.delivery.setOffset(o.target, 0);
    const s = log.stats();
    if (s.durable_offset !== s.last_offset) throw new Error(`preload: durable offset ${s.durable_offset} behind last offset ${s.last_offset}`);
    await log.close();
    closed = true;
    const seconds = (performance.now() - started) / 1000;
    let fileBytes = 0;
    try {
      fileBytes = statSync(join(o.dir, 'crowd.mdb')).blocks * 512;
    } catch {
      // reported as 0
    }
    return {
      count: o.count,
      seconds,
      bytes: s.bytes,
      file_bytes: fileBytes,
      first_offset: s.first_offset,
      last_offset: s.last_offset,
      per_s: o.count / seconds,
      record_entries: perRecord,
      target: o.target ?? null,
    };
  } finally {
    if (!closed) await log.close().catch(() => undefined);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      dir: { type: 'string' },
      count: { type: 'string' },
      target: { type: 'string' },
      'body-bytes': { type: 'string' },
      'record-entries': { type: 'string' },
      progress: { type: 'boolean', default: false },
    },
  });
  if (!values.dir || values.count === undefined) throw new Error('usage: node dist/bench/lib/preload.js --dir LOG_DIR --count N [--target NAME] [--body-bytes B] [--record-entries N] [--progress]');
  const count = Number(values.count);
  let body: Buffer | undefined;
  if (values['body-bytes'] !== undefined) {
    const b = Number(values['body-bytes']);
    if (!Number.isInteger(b) || b < 0) throw new Error(`--body-bytes must be a non-negative integer, got "${values['body-bytes']}"`);
    body = Buffer.alloc(b, 'x');
  }
  const recordEntries = values['record-entries'] === undefined ? undefined : Number(values['record-entries']);
  if (recordEntries !== undefined && (!Number.isInteger(recordEntries) || recordEntries < 0)) throw new Error(`--record-entries must be a non-negative integer, got "${values['record-entries']}"`);
  const result = await preload({
    recordEntries,
    dir: values.dir,
    count,
    target: values.target ?? null,
    body,
    onProgress: values.progress ? (n) => process.stderr.write(`preload: ${n} written\n`) : undefined,
  });
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

if (require.main === module) {
  main().catch((err: Error) => {
    process.stderr.write(`preload: ${err.message}\n`);
    process.exit(1);
  });
}
