// The consumer against a real log with a hand-driven clock and a sink answered by hand:
// rewinds while requests are in flight, dead letters replayed after a rewind, answers that
// arrive late, a stop during a retry, and the read-ahead at its byte bound.
import t, { type Test } from 'tap';
import { Harness, settle, target, type Call } from '../../helpers/consumer';

/** Answers open attempts with `status(call)` until none is open (bounded). */
async function answer(h: Harness, status: (c: Call) => number, rounds = 200): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    const open = h.sink.open();
    if (open.length === 0) return;
    for (const c of open) c.answer(status(c));
    await settle();
  }
  throw new Error(`still ${h.sink.open().length} attempts open after ${rounds} rounds`);
}

function identity(t: Test, h: Harness, what: string): void {
  const f = h.figures();
  t.equal(f.accepted, f.delivered + f.dead + f.purged + f.lag, `${what}: accepted ${f.accepted} = delivered ${f.delivered} + dead ${f.dead} + purged ${f.purged} + lag ${f.lag}`);
  t.ok(f.lag >= 0, `${what}: lag ${f.lag} >= 0`);
}

t.test('dlq replay after a rewind: each dead letter is sent once, by the retry line', async (t) => {
  const h = await Harness.open(target({ concurrency: 64 }));
  t.teardown(() => h.close());
  // More entries than one read, so that the rewound main line has not reached the dead letters when they are replayed.
  await h.append(1200);
  await h.start();
  const deadOnes = new Set([1190, 1191, 1192, 1193, 1194, 1195]);
  await answer(h, (c) => (deadOnes.has(c.env.offset) ? 422 : 200));
  await h.commit();
  t.same(h.figures(), { accepted: 1200, delivered: 1194, dead: 6, purged: 0, lag: 0 }, 'six dead letters, the rest delivered');

  const r = await h.rewind(1);
  t.same(r, { from: 1, previous: 1201, resent: 1194 }, 'the dead letters are not sent again by the rewind');
  await settle();
  t.ok(h.sink.open().length > 0, 'the rewound main line is sending');
  t.equal(await h.replayDead(), 6, 'six dead letters replayed while the main line is far before them');
  await answer(h, () => 200);
  await h.commit();

  const ok = h.okCounts();
  for (const o of deadOnes) t.equal(ok.get(o), 1, `dead letter ${o}: one 2xx (from the replay), not two`);
  t.same(h.deliveredTwice().length, 1194, 'every other offset twice: once before, once after the rewind');
  t.same(h.figures(), { accepted: 2394, delivered: 2394, dead: 0, purged: 0, lag: 0 });
  identity(t, h, 'after the replay');
  t.equal(h.consumer.status().retrying, 0, 'nothing left retrying');
  t.same(h.log.delivery.retryIndex('api'), [], 'no retry record left');
});

t.test('a rewind while the commit holding a dead letter is being written: the main line does not send it again', async (t) => {
  const h = await Harness.open(target({ concurrency: 8 }));
  t.teardown(() => h.close());
  await h.append(20);
  await h.start();
  await answer(h, (c) => (c.env.offset === 5 ? 422 : 200));
  // The manager takes the commit (the dead letter leaves the consumer's pending list) and
  // starts writing it; the rewind runs before that write has landed.
  const p = h.consumer.takeCommit()!;
  t.same(p.commit.dead.map((d) => d.offset), [5], 'the commit carries the dead letter');
  const rewound = h.rewind(1);
  const written = h.log.delivery.commit([p.commit]);
  const r = await rewound;
  await written;
  h.consumer.committed(p);
  t.same(r, { from: 1, previous: 21, resent: 19 }, 'the dead letter is not counted as sent again');
  await answer(h, () => 200);
  await h.commit();
  t.equal(h.okCounts().get(5), undefined, 'offset 5 is not sent from the log after the rewind');
  t.same(h.figures(), { accepted: 39, delivered: 38, dead: 1, purged: 0, lag: 0 });
  t.equal(await h.replayDead(), 1, 'the dead letter is still in the store');
  await answer(h, () => 200);
  t.equal(h.okCounts().get(5), 1, 'replayed: sent once');
  identity(t, h, 'after the replay');
});

t.test('a rewind over entries older than retry.max_age sends them again instead of dead-lettering them', async (t) => {
  const h = await Harness.open(target({ concurrency: 8, retry: { base: 100, max: 1000, max_age: 60_000, permanent: [422] } }));
  t.teardown(() => h.close());
  await h.append(5);
  await h.start();
  await answer(h, () => 200);
  await h.commit();
  h.clock += 10 * 60_000; // ten times max_age later
  t.same(await h.rewind(1), { from: 1, previous: 6, resent: 5 });
  await settle();
  t.equal(h.sink.open().length, 5, 'all five are sent again');
  await answer(h, () => 200);
  t.same(h.figures(), { accepted: 10, delivered: 10, dead: 0, purged: 0, lag: 0 }, 'none dead-lettered for its age');
  // Failing after the rewind, they age from the rewind: dead letters only max_age after it.
  t.same(await h.rewind(1), { from: 1, previous: 6, resent: 5 });
  await settle();
  for (const c of h.sink.open()) c.answer(503);
  await settle();
  // Each retry fails again; the clock moves in steps past the backoff.
  for (let i = 0; i < 30; i++) {
    await h.tick(1000);
    for (const c of h.sink.open()) c.answer(503);
    await settle();
  }
  t.equal(h.figures().dead, 0, 'half of max_age after the rewind: still retrying');
  for (let i = 0; i < 31; i++) {
    await h.tick(1000);
    for (const c of h.sink.open()) c.answer(503);
    await settle();
  }
  await h.commit();
  t.equal(h.figures().dead, 5, 'max_age after the rewind: dead letters');
  identity(t, h, 'after the rewind');
});

t.test('rewind while requests are in flight: it waits for them, then sends from the new offset', async (t) => {
  const h = await Harness.open(target({ concurrency: 4 }));
  t.teardown(() => h.close());
  await h.append(10);
  await h.start();
  t.same(h.sink.offsets(), [1, 2, 3, 4], 'four in flight');
  const rewound = h.rewind(1);
  await settle();
  t.equal(h.sink.calls.length, 4, 'nothing new is sent while the rewind waits');
  // Answers arriving while the rewind waits: delivered and counted.
  h.sink.calls[0]!.answer(200);
  h.sink.calls[1]!.answer(503);
  h.sink.calls[2]!.answer(422);
  h.sink.calls[3]!.answer(200);
  const r = await rewound;
  t.same(r, { from: 1, previous: 5, resent: 2 }, 'offsets 1 and 4 again; not the dead 3, and 2 stays in the retry line');
  await settle();
  t.same(h.sink.offsets().slice(4, 8), [1, 4, 5, 6], 'sent again from offset 1, without the dead letter and the retrying one');
  await answer(h, () => 200);
  await h.tick(10_000); // the retry of offset 2 is due
  t.same(h.sink.offsets().slice(4).filter((o) => o === 2), [2], 'offset 2 is sent once more, by the retry line');
  await answer(h, () => 200);
  await h.commit();
  const ok = h.okCounts();
  t.same([1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map((o) => ok.get(o) ?? 0), [2, 1, 0, 2, 1, 1, 1, 1, 1, 1]);
  t.same(h.figures(), { accepted: 12, delivered: 11, dead: 1, purged: 0, lag: 0 });
  identity(t, h, 'after the rewind');
  t.equal(h.consumer.status().committed_offset, 10);
});

t.test('a rewind that times out leaves the answers that arrive later counted once', async (t) => {
  const h = await Harness.open(target({ concurrency: 2, timeout: 20 }));
  t.teardown(() => h.close());
  await h.append(3);
  await h.start();
  t.same(h.sink.offsets(), [1, 2]);
  await t.rejects(h.rewind(1), /still has requests in flight/);
  h.sink.calls[0]!.answer(200);
  h.sink.calls[1]!.answer(200);
  await settle();
  await answer(h, () => 200);
  await h.commit();
  t.same(h.figures(), { accepted: 3, delivered: 3, dead: 0, purged: 0, lag: 0 }, 'the late answers count, nothing is sent twice');
  t.same(h.sink.offsets(), [1, 2, 3]);
  t.equal(h.consumer.status().committed_offset, 3);
});

t.test('a parked retry delivered after a rewind past it is delivered once', async (t) => {
  const h = await Harness.open(target({ concurrency: 4 }));
  t.teardown(() => h.close());
  await h.append(6);
  await h.start();
  await answer(h, (c) => (c.env.offset === 2 ? 503 : 200));
  await h.commit();
  t.same(h.log.delivery.retryIndex('api').map((r) => r.offset), [2], 'offset 2 parked');
  await h.rewind(1);
  await settle();
  await answer(h, () => 200);
  t.same(h.sink.offsets().slice(6), [1, 3, 4, 5, 6], 'the main line skips the parked offset');
  await h.tick(10_000); // the retry is due
  t.same(h.sink.offsets().slice(11), [2], 'the retry line sends it');
  await answer(h, () => 200);
  await h.commit();
  t.equal(h.okCounts().get(2), 1, 'offset 2: one 2xx');
  t.same(h.figures(), { accepted: 11, delivered: 11, dead: 0, purged: 0, lag: 0 });
  t.same(h.log.delivery.retryIndex('api'), []);
});

t.test('stop during a retry: the retry is parked by the last commit and sent after a restart', async (t) => {
  const h = await Harness.open(target({ concurrency: 4 }));
  await h.append(3);
  await h.start();
  await answer(h, (c) => (c.env.offset === 2 ? 503 : 200));
  t.equal(h.consumer.status().retrying, 1);
  await h.consumer.stop(0);
  await h.commit();
  t.same(h.log.delivery.retryIndex('api').map((r) => r.offset), [2], 'parked by the last commit');
  t.equal(h.log.delivery.offset('api'), 3);
  const dir = h.log.dir;
  await h.log.close();

  const h2 = await Harness.open(target({ concurrency: 4 }), {}, dir);
  t.teardown(() => h2.close());
  h2.clock = h.clock;
  await h2.start();
  t.equal(h2.consumer.status().retrying, 1, 'loaded from its record');
  await h2.tick(10_000);
  t.same(h2.sink.offsets(), [2], 'only the retry is sent');
  t.equal(h2.sink.calls[0]!.attempt, 2, 'as attempt 2');
  t.equal(h2.sink.calls[0]!.env.body.toString(), 'body-1', 'with its body');
  // Stopped while the retry is in flight: the late answer changes nothing on disk.
  await h2.consumer.stop(0);
  h2.sink.calls[0]!.answer(200);
  await settle();
  t.same(h2.log.delivery.retryIndex('api').map((r) => r.offset), [2], 'the record stays: sent again after the next start');
});

t.test('read-ahead stops at max_read_ahead_bytes; waiting retries hold no envelope', async (t) => {
  const size = 64 * 1024;
  const h = await Harness.open(target({ concurrency: 16, max_read_ahead_bytes: 4 * size }));
  t.teardown(() => h.close());
  await h.append(40, { bytes: size });
  await h.start();
  const held = (): number => h.consumer.heldBytes();
  t.equal(h.sink.calls.length, 4, 'four 64 KiB requests fit in 256 KiB: four are read and sent');
  t.ok(held() <= 4 * (size + 1024), `held ${held()} bytes`);
  // Retries keep their offsets only: the window reads on, never holding more than the bound.
  let maxHeld = held();
  for (let round = 0; round < 20 && h.sink.open().length > 0; round++) {
    for (const c of h.sink.open()) c.answer(503);
    await settle();
    maxHeld = Math.max(maxHeld, held());
  }
  t.ok(maxHeld <= 4 * (size + 1024), `at most four envelopes held (${maxHeld} bytes)`);
  t.equal(h.sink.open().length, 0, 'the breaker opened after the failures; nothing open');
  t.ok(h.consumer.status().retrying >= 5, `retrying ${h.consumer.status().retrying}`);
  // Later they are sent again, with the envelope read again from the log.
  h.consumer.resume();
  await settle();
  t.ok(h.sink.open().length > 0);
  t.equal(h.sink.open()[0]!.env.body.length, size, 'the envelope comes back from the log');
  await answer(h, () => 200);
  await h.commit();
  t.same(h.figures(), { accepted: 40, delivered: 40, dead: 0, purged: 0, lag: 0 });
  t.equal(held(), 0);
});

t.test('an envelope larger than max_read_ahead_bytes is still sent (one at a time)', async (t) => {
  const h = await Harness.open(target({ concurrency: 4, max_read_ahead_bytes: 1000 }));
  t.teardown(() => h.close());
  await h.append(3, { bytes: 5000 });
  await h.start();
  t.same(h.sink.offsets(), [1], 'one at a time');
  await answer(h, () => 200);
  t.same(h.sink.offsets(), [1, 2, 3]);
  t.same(h.figures(), { accepted: 3, delivered: 3, dead: 0, purged: 0, lag: 0 });
});
