// A peer's replica delivered by the same consumer as the local log: every entry once and in
// order, the consumer's offsets, retries and dead letters kept under "<target>@<origin>" in
// this node's store (never under the local target's name), and trims of the replica that
// keep what is pinned or not yet passed.
import t from 'tap';
import { join } from 'node:path';
import pino from 'pino';
import { Consumer } from '../../../src/delivery/consumer';
import type { DeliverySource } from '../../../src/delivery/source';
import { encodeEnvelope, type EnvelopeInput } from '../../../src/log/codec';
import { Log } from '../../../src/log/log';
import { frameRecord } from '../../../src/log/record';
import type { Replica } from '../../../src/log/replica';
import { ReplicaSource } from '../../../src/log/replica-source';
import { FakeSink, settle, target } from '../../helpers/consumer';
import { tempDir } from '../../helpers/crowd';

const ORIGIN = 'peer-a';

const input = (offset: number, route = 'leads'): EnvelopeInput => ({
  id: `01a21ed0-7a0c-7e26-9c4b-${String(offset).padStart(12, '0')}`,
  received_at: 1000 * offset,
  route,
  method: 'POST',
  path: '/leads',
  query: '',
  headerList: ['content-type', 'text/plain'],
  remote: '10.0.0.1',
  body: Buffer.from(`body-${offset}`),
});

/** A record as the origin stores it: `count` envelopes from `key` (routes by offset, default `leads`). */
function record(key: number, count: number, route: (offset: number) => string = () => 'leads'): Buffer {
  const parts: Buffer[] = [];
  for (let o = key; o < key + count; o++) parts.push(Buffer.from(encodeEnvelope(input(o, route(o)), o)));
  return frameRecord(parts, parts.reduce((n, p) => n + p.length, 0));
}

/** Appends records of the given sizes after the replica's end; returns the last offset. */
async function fill(replica: Replica, sizes: number[], route?: (offset: number) => string): Promise<number> {
  let key = replica.lastWritten() + 1;
  for (const n of sizes) {
    await replica.append(key, record(key, n, route), 1);
    key += n;
  }
  return key - 1;
}

async function openLog(consumers = ['api']): Promise<Log> {
  return Log.open({ dir: join(tempDir('crowd-replica-source-'), 'log'), maxPendingWrites: 10_000, maxBytes: 1e9, retentionMs: 0, consumers });
}

/** A consumer over `source`, as the delivery manager runs it, with commits the test asks for. */
function consumerOver(source: DeliverySource, over: Parameters<typeof target>[0] = {}) {
  const sink = new FakeSink();
  const lines: string[] = [];
  const consumer = new Consumer({
    target: target(over),
    routes: new Set(['leads']),
    log: source,
    sink,
    logger: pino({ level: 'warn' }, { write: (l: string) => lines.push(l) }),
    events: { attemptSeconds: () => undefined, commitSoon: () => undefined },
    now: () => 1_000_000,
    random: () => 0.5,
  });
  source.onDurable(() => consumer.notify());
  return {
    consumer,
    sink,
    lines,
    async start(): Promise<void> {
      const backlog = consumer.init();
      // Entries flushed into a replica after init (which counts the backlog through the durable
      // offset) are counted as accepted as they arrive, as ingest counts them on the origin.
      if (source instanceof ReplicaSource) {
        source.onArrived((from, through) => {
          for (const e of source.read(from, Infinity, through)) if (e.route === 'leads') consumer.acceptedOne();
        });
      }
      if (backlog.store) await source.delivery.commit([{ target: consumer.name, offset: consumer.initialOffset(), park: [], unpark: [], dead: [] }]);
      await consumer.start(backlog);
      await settle();
    },
    async commit(): Promise<void> {
      const p = consumer.takeCommit();
      if (!p) return;
      await source.delivery.commit([p.commit]);
      consumer.committed(p);
      await settle();
    },
    async answerAll(status: (offset: number) => number | null): Promise<void> {
      for (let i = 0; i < 200; i++) {
        const open = sink.open();
        if (open.length === 0) return;
        for (const c of open) c.answer(status(c.env.offset));
        await settle();
      }
      throw new Error(`still ${sink.open().length} attempts open`);
    },
  };
}

t.test('the local log is a delivery source as it is', async (t) => {
  const log = await openLog();
  t.teardown(() => log.close());
  const source: DeliverySource = log;
  t.equal(source.durableOffset(), 0);
});

t.test('a replica is delivered once, in order; the offsets go under target@origin/incarnation', async (t) => {
  const log = await openLog();
  t.teardown(() => log.close());
  const replica = log.replica(ORIGIN, 'inc-1', true)!;
  const last = await fill(replica, [3, 2, 5]); // records at 1, 4 and 6
  t.equal(last, 10);
  const source = new ReplicaSource(replica, log.delivery, ['api']);
  t.teardown(() => source.close());
  t.equal(source.durableOffset(), 10, 'durable is the replica flushed offset');
  t.equal(source.firstOffset(), 1);

  const c = consumerOver(source, { ordered: true, concurrency: 1 });
  await c.start();
  t.equal(c.consumer.status().committed_offset, 0, 'a target with no offset here and none finished on the origin starts before the first entry');
  t.equal(c.consumer.status().accepted, 10, 'the backlog is counted from the replica');
  await c.answerAll(() => 200);
  t.same(c.sink.offsets(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 'every entry once, in order');
  t.same(
    c.sink.calls.map((x) => x.env.id),
    Array.from({ length: 10 }, (_, i) => input(i + 1).id),
    'with the ids the origin gave them',
  );

  // More records flushed into the replica wake the consumer (the replica's flush listener).
  await fill(replica, [2]);
  await settle();
  await c.answerAll(() => 200);
  t.same(c.sink.offsets().slice(10), [11, 12], 'entries flushed later are delivered too');
  await c.commit();

  t.equal(log.delivery.offset('api@peer-a/inc-1'), 12, 'offset stored under target@origin/incarnation');
  t.equal(log.delivery.hasOffset('api'), false, 'nothing stored under the local target name');
  t.same(c.consumer.status().delivered, 12);
  await c.consumer.stop(0);

  // A new consumer over the same replica resumes from the stored offset.
  const source2 = new ReplicaSource(replica, log.delivery, ['api']);
  t.teardown(() => source2.close());
  await fill(replica, [1]);
  const c2 = consumerOver(source2, { ordered: true, concurrency: 1 });
  await c2.start();
  t.equal(c2.consumer.status().committed_offset, 12, 'resumes where the last one committed');
  await c2.answerAll(() => 200);
  t.same(c2.sink.offsets(), [13], 'nothing delivered again');
  await c2.consumer.stop(0);
});

t.test('a target starts at the origin finished offset, and local and replica consumers of one target do not mix', async (t) => {
  const log = await openLog();
  t.teardown(() => log.close());
  const replica = log.replica(ORIGIN, 'inc-1', true)!;
  await fill(replica, [4, 4, 4]);
  await replica.setFinished({ api: 5 });
  const source = new ReplicaSource(replica, log.delivery, ['api']);
  t.teardown(() => source.close());

  // Three local entries for the local target of the same name.
  for (let i = 0; i < 3; i++) {
    await new Promise<void>((res, rej) => log.append(input(100 + i), { appended: (err) => (err ? rej(err) : res()) }));
  }
  await log.delivery.setOffset('api', 0);
  const local = consumerOver(log);
  const remote = consumerOver(source, { concurrency: 8 });
  await local.start();
  await remote.start();
  t.equal(remote.consumer.status().committed_offset, 5, 'the replica consumer starts at the finished offset');
  await local.answerAll(() => 200);
  // 7 is retried (500), 9 is a dead letter (422).
  await remote.answerAll((o) => (o === 7 ? 500 : o === 9 ? 422 : 200));
  await local.commit();
  await remote.commit();

  t.same(local.sink.offsets().sort((a, b) => a - b), [1, 2, 3], 'the local consumer sent the local entries');
  t.same(
    remote.sink.offsets().sort((a, b) => a - b),
    [6, 7, 8, 9, 10, 11, 12],
    'the replica consumer sent the replica entries after the finished offset',
  );
  t.equal(log.delivery.offset('api'), 3, 'local offset under the target name');
  t.equal(log.delivery.offset('api@peer-a/inc-1'), 12, 'replica offset under target@origin/incarnation');
  t.same(log.delivery.retryIndex('api@peer-a/inc-1').map((r) => r.offset), [7], 'the retry is parked under target@origin/incarnation');
  t.same(log.delivery.retryIndex('api'), [], 'and not under the target');
  t.same(log.delivery.deadOffsets('api@peer-a/inc-1', 0), [9], 'the dead letter is under target@origin/incarnation');
  t.equal(log.delivery.deadCount('api'), 0, 'and not under the target');
  t.same(
    source.delivery.deadLetters('api', 0, 10).map((d) => d.offset),
    [9],
    'the source lists its dead letters by target name',
  );
  const f = remote.consumer.status();
  t.equal(f.accepted, f.delivered + f.dead_letters + f.purged + f.lag, `accepted ${f.accepted} = delivered ${f.delivered} + dead ${f.dead_letters} + purged ${f.purged} + lag ${f.lag}`);

  // Replaying the dead letter through the source moves it back under target@origin/incarnation.
  const moved = await source.delivery.replayDead('api', null, 10, 1_000_000);
  t.same(moved.map((m) => m.offset), [9]);
  t.same(log.delivery.retryIndex('api@peer-a/inc-1').map((r) => r.offset), [7, 9]);
  t.equal(log.delivery.deadCount('api@peer-a/inc-1'), 0);
  await local.consumer.stop(0);
  await remote.consumer.stop(0);
});

t.test('trimBelow keeps what a consumer has not passed and what is pinned', async (t) => {
  const log = await openLog();
  t.teardown(() => log.close());
  const replica = log.replica(ORIGIN, 'inc-1', true)!;
  await fill(replica, [3, 2, 5, 2]); // records 1-3, 4-5, 6-10, 11-12

  const source = new ReplicaSource(replica, log.delivery, ['api']);
  t.equal(await replica.trimBelow(100), 0, 'nothing passed yet: nothing removed');
  t.equal(source.firstOffset(), 1);

  await log.delivery.setOffset('api@peer-a/inc-1', 5);
  t.equal(await replica.trimBelow(100), 2, 'the records every consumer passed go');
  t.equal(source.firstOffset(), 6);
  t.same(source.read(1, 100).map((e) => e.offset), [6, 7, 8, 9, 10, 11, 12], 'the rest is still read');

  await log.delivery.setOffset('api@peer-a/inc-1', 12);
  const unpin = source.pin(7);
  t.equal(await replica.trimBelow(100), 0, 'a pin keeps the record holding it');
  t.equal(source.firstOffset(), 6);

  // A pin taken after a trim chose its records, before its write ran (it waits for a local
  // append's transaction): the write keeps them.
  unpin();
  await settle();
  const appended = new Promise<void>((res, rej) => log.append(input(1), { appended: (err) => (err ? rej(err) : res()) }));
  const trim = replica.trimBelow(100);
  const unpin2 = source.pin(11);
  t.equal(await trim, 1, 'only the record before the pin goes');
  await appended;
  t.equal(source.firstOffset(), 11);
  unpin2();

  // The origin's finished offsets still bound the trim.
  await replica.setFinished({ api: 10 });
  t.equal(await replica.trimBelow(100), 0, 'a record holding an unfinished entry stays');
  await replica.setFinished({ api: 12 });

  // Closed: the source no longer holds the replica.
  await log.delivery.setOffset('api@peer-a/inc-1', 10);
  t.equal(await replica.trimBelow(100), 0, 'the consumer has not passed 11-12');
  source.close();
  t.equal(await replica.trimBelow(100), 1, 'after close, the origin retention alone decides');
  t.equal(source.firstOffset(), 13, 'empty: the next offset');
});

t.test('a consumer over a trimmed replica starts at the first entry held', async (t) => {
  const log = await openLog();
  t.teardown(() => log.close());
  const replica = log.replica(ORIGIN, 'inc-1', true)!;
  await fill(replica, [3, 3]);
  await replica.trimBelow(4);
  const source = new ReplicaSource(replica, log.delivery, ['api']);
  t.teardown(() => source.close());
  const c = consumerOver(source, { ordered: true, concurrency: 1 });
  await c.start();
  await c.answerAll(() => 200);
  t.same(c.sink.offsets(), [4, 5, 6]);
  await c.consumer.stop(0);
});

t.test('countRoutes, offsetAtTime and the lag meter read the replica', async (t) => {
  const log = await openLog();
  t.teardown(() => log.close());
  const replica = log.replica(ORIGIN, 'inc-1', true)!;
  await fill(replica, [4, 4, 2], (o) => (o % 2 === 0 ? 'other' : 'leads'));
  const source = new ReplicaSource(replica, log.delivery, ['api']);
  t.teardown(() => source.close());

  t.equal(await source.countRoutes(1, 10, new Set(['leads'])), 5);
  t.equal(await source.countRoutes(3, 7, new Set(['leads'])), 3);
  t.equal(await source.countRoutes(1, 10, new Set(['other']), 1), 5, 'the same in small chunks');

  t.equal(source.offsetAtTime(0), 1);
  t.equal(source.offsetAtTime(5500), 6, 'received at 1000 x offset');
  t.equal(source.offsetAtTime(6000), 6);
  t.equal(source.offsetAtTime(99_000), 11, 'after every entry: the next offset');

  const sizes = [1, 5, 9].map((k) => record(k, k === 9 ? 2 : 4, (o) => (o % 2 === 0 ? 'other' : 'leads'))).map((r) => r.length - 4 - 4 * r.readUInt32BE(0));
  const total = sizes.reduce((a, b) => a + b, 0);
  const m = source.lagMeter(0);
  t.equal(source.measureLag(m, total), 0, 'everything fits under the bound');
  t.equal(m.bytes, total, 'every record counted');
  t.equal(source.measureLag(m, sizes[2]!), 8, 'the cut moves to the record end after which at most max bytes follow');
  await fill(replica, [1]);
  t.equal(source.measureLag(m, 0), 11, 'records flushed later are counted');
  t.equal(m.bytes, 0);

  const m2 = source.lagMeter(0);
  source.measureLag(m2, total * 2);
  await log.delivery.setOffset('api@peer-a/inc-1', 4);
  await replica.trimBelow(100);
  t.equal(source.measureLag(m2, total * 2), 4, 'trimmed records leave the meter');
  t.equal(m2.bytes, total + record(11, 1).length - 8 - sizes[0]!);
});
