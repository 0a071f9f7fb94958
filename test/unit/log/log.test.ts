// Ensures the log acks only flushed entries, readers stop at the durable watermark, offsets
// only grow (also across reopen and retention), refusals fire at their limits, and retention
// removes only what every consumer passed and what is older than the retention.
import t from 'tap';
import { join } from 'node:path';
import { Log, RETENTION_CHUNK, type LogOptions } from '../../../src/log/log';
import { newId } from '../../../src/log/ids';
import { open } from 'lmdb';
import { tempDir } from '../../helpers/crowd';

const base = (dir: string, o: Partial<LogOptions> = {}): LogOptions => ({ dir, maxPendingWrites: 100_000, maxBytes: 1e12, retentionMs: 0, consumers: [], ...o });

function entry(body: string, receivedAt = Date.now()) {
  return { id: newId(), received_at: receivedAt, route: 'r', method: 'POST', path: '/r', query: '', headerList: ['a', 'b'], remote: '127.0.0.1', body: Buffer.from(body) };
}

/** Appends `n` entries in one event-loop turn and resolves when all are acknowledged. */
function appendTurn(log: Log, n: number, receivedAt?: number, prefix = 'b'): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const offsets: number[] = [];
    let left = n;
    for (let i = 0; i < n; i++) {
      offsets.push(
        log.append(entry(`${prefix}${i}`, receivedAt), {
          appended: (err) => {
            if (err) reject(err);
            else if (--left === 0) resolve(offsets);
          },
        }),
      );
    }
  });
}

t.test('group commit, acks after flush, readers stop at the durable watermark', async (t) => {
  const dir = join(tempDir(), 'log');
  const log = await Log.open(base(dir));
  t.teardown(() => log.close());
  const batches: number[] = [];
  log.onBatch((count) => batches.push(count));
  let acked = 0;
  const offsets: number[] = [];
  const all = new Promise<void>((resolve) => {
    for (let i = 0; i < 100; i++) offsets.push(log.append(entry(`x${i}`), { appended: () => void (++acked === 100 && resolve()) }));
  });
  t.equal(acked, 0, 'nothing is acknowledged in the turn it was appended');
  t.equal(log.durableOffset(), 0);
  t.same(log.read(1, 1000), [], 'no reader sees entries before their flush');
  t.equal(log.stats().pending_writes, 100);
  await all;
  t.same(offsets, Array.from({ length: 100 }, (_, i) => i + 1), 'offsets start at 1 and are consecutive');
  t.same(batches, [100], 'one transaction for the whole event-loop turn');
  t.equal(log.durableOffset(), 100);
  const read = log.read(1, 1000);
  t.equal(read.length, 100);
  t.equal(Buffer.from(read[42]!.body).toString(), 'x42');
  t.same(log.read(95, 1000, 97).map((e) => e.offset), [95, 96, 97], 'read honours an upper bound');
  t.equal(log.stats().pending_writes, 0);
});

t.test('offsets keep growing across reopen', async (t) => {
  const dir = join(tempDir(), 'log');
  let log = await Log.open(base(dir));
  await appendTurn(log, 10);
  await log.close();
  log = await Log.open(base(dir));
  t.teardown(() => log.close());
  t.same(await appendTurn(log, 3), [11, 12, 13]);
  t.equal(log.stats().first_offset, 1);
  t.equal(log.stats().last_offset, 13);
});

t.test('the pending-writes bound', async (t) => {
  const log = await Log.open(base(join(tempDir(), 'log'), { maxPendingWrites: 10 }));
  t.teardown(() => log.close());
  const done = appendTurn(log, 10);
  t.equal(log.refusal(), 'pending_writes', 'refuses at the bound');
  await done;
  t.equal(log.refusal(), null, 'accepts again once flushed');
});

t.test('the pending-bytes bound', async (t) => {
  const log = await Log.open(base(join(tempDir(), 'log'), { maxPendingBytes: 10_000 }));
  t.teardown(() => log.close());
  const done = appendTurn(log, 3, undefined, 'p'.repeat(4000));
  t.equal(log.refusal(), 'pending_writes', 'refuses once the bytes waiting for the disk reach the bound');
  await done;
  t.equal(log.refusal(), null, 'accepts again once flushed');
});

t.test('a commit that never completes fails the log', async (t) => {
  const log = await Log.open(base(join(tempDir(), 'log')));
  t.teardown(() => log.close());
  const fatal: Error[] = [];
  log.onFatal((err) => fatal.push(err));
  const outcome = appendTurn(log, 1000, undefined, 's'.repeat(10_000)).then(
    () => 'flushed',
    (err: Error & { code?: string }) => err.code,
  );
  await new Promise((r) => setImmediate(r)); // the records are written, the commit is running
  log.checkStall(performance.now() + 60_000);
  t.equal(await outcome, 'CROWD_ERR_LOG_STALLED', 'the waiting appends fail instead of hanging');
  await new Promise((r) => setTimeout(r, 20));
  t.equal(fatal.length, 1, 'the owner is told to crash-stop');
  t.match(fatal[0]!.message, /has not completed in \d+ s/);
  t.equal(log.refusal(), 'failed');
});

t.test('the byte quota, also after reopen', async (t) => {
  const dir = join(tempDir(), 'log');
  let log = await Log.open(base(dir, { maxBytes: 5000 }));
  await appendTurn(log, 10);
  t.equal(log.refusal(), null);
  const big = 'y'.repeat(5000);
  await new Promise<void>((resolve, reject) => log.append(entry(big), { appended: (err) => (err ? reject(err) : resolve()) }));
  t.equal(log.refusal(), 'max_bytes');
  const bytes = log.stats().bytes;
  t.ok(bytes > 5000, `bytes counted (${bytes})`);
  await log.close();
  log = await Log.open(base(dir, { maxBytes: 5000 }));
  t.teardown(() => log.close());
  t.equal(log.stats().bytes, bytes, 'the byte count survives a reopen');
  t.equal(log.refusal(), 'max_bytes');
});

t.test('retention', async (t) => {
  const dir = join(tempDir(), 'log');
  let now = 10_000;
  const opts = base(dir, { consumers: ['a', 'b'], retentionMs: 2000, now: () => now });
  let log = await Log.open(opts);
  await appendTurn(log, 20, 1000, 'old');
  await appendTurn(log, 20, 9000, 'new');
  t.equal(await log.applyRetention(), 0, 'no consumer passed anything: nothing removed');
  await log.commitOffset('a', 35);
  await log.commitOffset('b', 15);
  t.equal(await log.applyRetention(), 0, 'a record (one commit, offsets 1-20) goes only when every consumer passed all of it');
  await log.commitOffset('b', 20);
  t.equal(await log.applyRetention(), 20, 'removes what the slowest consumer passed');
  t.equal(log.stats().first_offset, 21);
  t.equal(log.read(1, 5)[0]!.offset, 21, 'reads start at the first entry left');
  await log.commitOffset('b', 40);
  t.equal(await log.applyRetention(), 0, 'keeps entries younger than the retention');
  t.equal(log.stats().first_offset, 21);
  now = 20_000;
  await log.commitOffset('a', 40);
  const before = log.stats().bytes;
  t.equal(await log.applyRetention(), 20, 'everything passed and old: all removed');
  t.equal(log.stats().first_offset, 0, 'the log is empty');
  t.ok(log.stats().bytes < before && log.stats().bytes === 0, 'bytes follow the removals');
  await t.rejects(log.commitOffset('a', 41), { code: 'CROWD_ERR_LOG_OFFSET' }, 'a consumer cannot pass the durable offset');
  await log.close();
  log = await Log.open(opts);
  t.teardown(() => log.close());
  t.equal(log.durableOffset(), 40, 'an emptied log reopens with its durable offset where it was');
  await log.commitOffset('a', 40);
  t.same(await appendTurn(log, 2), [41, 42], 'offsets are never reused after retention emptied the log');
});

t.test('near max_bytes, retention removes passed entries before their time, never unpassed ones', async (t) => {
  const dir = join(tempDir(), 'log');
  const log = await Log.open(base(dir, { consumers: ['a'], retentionMs: 3_600_000, maxBytes: 4000 }));
  t.teardown(() => log.close());
  await appendTurn(log, 10, undefined, 'x'.repeat(200));
  await appendTurn(log, 10, undefined, 'y'.repeat(200));
  t.equal(log.refusal(), 'max_bytes', 'over the quota');
  t.equal(await log.applyRetention(), 0, 'nothing passed: nothing removed, the quota holds');
  await log.commitOffset('a', 10);
  t.equal(await log.applyRetention(), 10, 'the delivered record goes although younger than the retention');
  t.equal(log.stats().first_offset, 11);
  t.equal(log.refusal(), null, 'room again');
  t.equal(await log.applyRetention(), 0, 'below the pressure mark the retention time applies again');
});

t.test('no consumer configured: retention removes nothing', async (t) => {
  const log = await Log.open(base(join(tempDir(), 'log'), { consumers: [], retentionMs: 0 }));
  t.teardown(() => log.close());
  await appendTurn(log, 5, 1);
  t.equal(await log.applyRetention(), 0);
  t.equal(log.stats().first_offset, 1);
});

t.test('reads across records, and records split at RECORD_BYTES_MAX', async (t) => {
  const log = await Log.open(base(join(tempDir(), 'log')));
  t.teardown(() => log.close());
  for (let turn = 0; turn < 3; turn++) await appendTurn(log, 10, undefined, `t${turn}-`);
  t.same(log.read(5, 12).map((e) => e.offset), [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], 'from the middle of one record into the next');
  t.same(log.read(25, 100).map((e) => e.offset), [25, 26, 27, 28, 29, 30]);
  t.equal(Buffer.from(log.read(21, 1)[0]!.body).toString(), 't2-0');
  t.same(log.read(31, 10), [], 'nothing past the end');
  const big = 'B'.repeat(1536 * 1024);
  const records: number[] = [];
  log.onBatch((count) => records.push(count));
  await appendTurn(log, 4, undefined, big);
  t.same(records, [4], 'a turn larger than RECORD_BYTES_MAX is written as several records of one transaction, counted once');
  const read = log.read(31, 10);
  t.same(read.map((e) => e.offset), [31, 32, 33, 34]);
  t.equal(Buffer.from(read[3]!.body).toString(), big + '3');
});

t.test('the batch listener counts requests per write transaction, not per record', async (t) => {
  const log = await Log.open(base(join(tempDir(), 'log')));
  t.teardown(() => log.close());
  const batches: number[] = [];
  log.onBatch((count) => batches.push(count));
  await appendTurn(log, 7);
  await Promise.all([appendTurn(log, 3), appendTurn(log, 2)]); // one turn, one transaction
  t.same(batches, [7, 5]);
});

t.test('retention keeps what was pinned after its pass began (its transaction runs later)', async (t) => {
  const log = await Log.open(base(join(tempDir(), 'log'), { consumers: ['a'], retentionMs: 0 }));
  t.teardown(() => log.close());
  for (let i = 0; i < 50; i++) await appendTurn(log, 1, 1); // 50 records
  await log.commitOffset('a', 50);
  const pass = log.applyRetention();
  const unpin = log.pin(11); // a rewind to 11, between the choice of keys and the transaction
  t.equal(await pass, 10, 'only the entries before the pin are removed');
  t.equal(log.firstOffset(), 11);
  t.same(log.read(11, 100).map((e) => e.offset), Array.from({ length: 40 }, (_, i) => i + 11), 'the pinned entries are all still there');
  unpin();
  t.equal(await log.applyRetention(), 40, 'once unpinned they go');
});

t.test('a record never overwrites another: a collision fails the log', async (t) => {
  const dir = join(tempDir(), 'log');
  const log = await Log.open(base(dir));
  t.teardown(() => log.close());
  await appendTurn(log, 10);
  // A second writer on the same file (what the lock prevents) puts a record at the next offset.
  const raw = open({ path: join(dir, 'crowd.mdb'), maxDbs: 8 }).openDB<Buffer, number>({ name: 'entries', encoding: 'binary', keyEncoding: 'ordered-binary' });
  const theirs = Buffer.from('a record of another writer');
  await raw.put(11, theirs);
  const fatal: Error[] = [];
  log.onFatal((err) => fatal.push(err));
  const outcome = appendTurn(log, 1).then(
    () => 'acknowledged',
    (err: Error & { code?: string }) => err.code,
  );
  t.equal(await outcome, 'CROWD_ERR_LOG_OFFSET', 'the append is not acknowledged');
  await new Promise((r) => setTimeout(r, 20));
  t.equal(fatal.length, 1, 'the owner is told to crash-stop');
  t.match(fatal[0]!.message, /offset 11 is already in .*refusing to overwrite/);
  t.same(raw.get(11), theirs, 'the other record is unchanged');
  t.equal(log.refusal(), 'failed');
});

t.test('a closed log refuses reads and writes with a clear error; housekeeping after close is a no-op', async (t) => {
  const log = await Log.open(base(join(tempDir(), 'log'), { consumers: ['a'] }));
  await appendTurn(log, 3);
  await log.close();
  t.throws(() => log.read(1, 10), { code: 'CROWD_ERR_LOG_CLOSED', message: /is closed/ });
  t.throws(() => log.append(entry('x'), { appended: () => undefined }), { code: 'CROWD_ERR_LOG_CLOSED' });
  await t.rejects(log.commitOffset('a', 1), { code: 'CROWD_ERR_LOG_CLOSED' });
  t.equal(await log.applyRetention(), 0);
  await t.resolves(log.saveStats());
  t.equal(log.stats().last_offset, 3, 'stats stay readable');
});

t.test('a retention pass stops between chunks when asked to', async (t) => {
  const log = await Log.open(base(join(tempDir(), 'log'), { consumers: ['a'], retentionMs: 0 }));
  t.teardown(() => log.close());
  for (let i = 0; i < RETENTION_CHUNK + 5; i++) await appendTurn(log, 1, 1); // one record each
  await log.commitOffset('a', RETENTION_CHUNK + 5);
  let asked = 0;
  t.equal(await log.applyRetention(() => asked++ > 0), RETENTION_CHUNK, 'one chunk, then it stops');
  t.equal(await log.applyRetention(), 5, 'the next pass removes the rest');
});

t.test('lag meter: the backlog read once, new records counted as they flush, the cut keeps at most max bytes after it', async (t) => {
  const log = await Log.open(base(join(tempDir(), 'log'), { consumers: ['a'], retentionMs: 0 }));
  t.teardown(() => log.close());
  const body = 'x'.repeat(1000);
  for (let i = 0; i < 5; i++) await appendTurn(log, 1, 1, body); // records 1..5, the backlog
  const m = log.lagMeter(0);
  t.equal(m.records.length, 0, 'nothing is counted before the first measure');
  t.equal(log.measureLag(m, 1e9), 0, 'under the bound: no cut');
  t.equal(m.records.length, 5, 'the backlog is read');
  const rec = m.records[0]!.bytes;
  t.ok(rec > 1000 && rec < 1200, `a record of one ${rec}-byte envelope`);
  for (let i = 0; i < 3; i++) await appendTurn(log, 1, 1, body); // 6..8, counted at release
  t.equal(m.through, 8, 'records flushed after the meter are counted without a read');
  t.equal(log.measureLag(m, 3 * rec), 5, 'at most three records after the cut: offsets 1-5 are beyond the bound');
  t.equal(m.bytes, 3 * rec);
  await log.commitOffset('a', 7);
  await log.applyRetention();
  t.equal(m.cut, 7, 'retention moves the cut over what it removed');
  t.equal(m.bytes, rec, 'and the bytes with it');
});
