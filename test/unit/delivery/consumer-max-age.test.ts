// retry.max_age applies to every entry, attempted or not: while the circuit is open (or
// the only slot is taken by a hanging request) the backlog ages into the dead letters
// without being sent, with an error that says whether it was ever attempted; what is
// dead-lettered and not yet committed stays within the target's byte bound.
import t, { type Test } from 'tap';
import { Harness, settle, target } from '../../helpers/consumer';

function identity(t: Test, h: Harness, what: string): void {
  const f = h.figures();
  t.equal(f.accepted, f.delivered + f.dead + f.purged + f.lag, `${what}: accepted ${f.accepted} = delivered ${f.delivered} + dead ${f.dead} + purged ${f.purged} + lag ${f.lag}`);
  t.ok(f.lag >= 0, `${what}: lag ${f.lag} >= 0`);
}

const MAX_AGE = 10_000;

t.test('circuit open: the whole backlog becomes dead letters at max_age, none of it sent', async (t) => {
  const h = await Harness.open(target({ concurrency: 4, retry: { base: 100, max: 60_000, max_age: MAX_AGE, permanent: [400] } }));
  t.teardown(() => h.close());
  await h.append(50);
  await h.start();
  // Five failures open the circuit.
  for (let i = 0; i < 5 && h.sink.open().length > 0; i++) {
    for (const c of h.sink.open()) c.answer(503);
    await settle();
  }
  t.equal(h.consumer.status().state, 'circuit-open', 'the circuit is open');
  await h.commit();
  await h.tick(MAX_AGE - 1000);
  // One probe per backoff step meanwhile, refused too.
  for (const c of h.sink.open()) c.answer(503);
  await settle();
  t.equal(h.consumer.status().dead_letters, 0, 'nothing is dead before max_age');
  const sent = h.sink.calls.length;
  const attempted = new Set(h.sink.offsets()).size;
  await h.tick(1000);
  for (let i = 0; i < 5; i++) await h.commit();
  t.equal(h.sink.calls.length, sent, 'nothing more was sent');
  t.same(h.figures(), { accepted: 50, delivered: 0, dead: 50, purged: 0, lag: 0 }, 'all 50 are dead letters');
  identity(t, h, 'after max_age');
  const dead = h.log.delivery.deadLetters('api', 0, 100);
  t.equal(dead.length, 50, '50 dead letters stored');
  const never = dead.filter((d) => /older than retry\.max_age \(10 s\).*never attempted/.test(d.held.error));
  const tried = dead.filter((d) => /older than retry\.max_age \(10 s\) after \d+ attempts/.test(d.held.error));
  t.equal(never.length + tried.length, 50, 'each error says whether it was attempted');
  t.equal(tried.length, attempted, `the ${attempted} attempted ones say how many attempts`);
  t.ok(never.every((d) => d.held.attempts === 0), 'never attempted: 0 attempts');
  t.same(h.log.delivery.retryIndex('api'), [], 'no retry record left');
  t.equal(h.consumer.status().offset, 50, 'the offset passed them all');
});

t.test('one request hanging in the only slot: the ones behind it expire unsent', async (t) => {
  const h = await Harness.open(target({ concurrency: 1, retry: { base: 100, max: 1000, max_age: MAX_AGE, permanent: [400] } }));
  t.teardown(() => h.close());
  await h.append(5);
  await h.start();
  t.equal(h.sink.open().length, 1, 'one in flight');
  await h.tick(MAX_AGE);
  t.equal(h.sink.calls.length, 1, 'nothing else sent');
  t.equal(h.consumer.status().dead_letters, 4, 'the four behind it are dead letters');
  h.sink.open()[0]!.answer(200);
  await settle();
  await h.commit();
  t.same(h.figures(), { accepted: 5, delivered: 1, dead: 4, purged: 0, lag: 0 });
  identity(t, h, 'after the answer');
});

t.test('a waiting retry expires at max_age, not at its (later) due time', async (t) => {
  const h = await Harness.open(target({ concurrency: 1, retry: { base: 60_000, max: 60_000, max_age: MAX_AGE, permanent: [400] } }));
  t.teardown(() => h.close());
  await h.append(1);
  await h.start();
  h.sink.open()[0]!.answer(503);
  await settle();
  await h.commit();
  t.equal(h.consumer.status().retrying, 1, 'waiting for a retry');
  await h.tick(MAX_AGE);
  await h.commit();
  t.equal(h.sink.calls.length, 1, 'not sent again');
  t.same(h.figures(), { accepted: 1, delivered: 0, dead: 1, purged: 0, lag: 0 });
  const [d] = h.log.delivery.deadLetters('api', 0, 10);
  t.match(d!.held.error, /older than retry\.max_age \(10 s\) after 1 attempts; last: upstream answered 503/);
  t.equal(d!.held.status, 503);
});

t.test('a replayed dead letter ages from the replay; parked ones expire after a restart', async (t) => {
  const h = await Harness.open(target({ concurrency: 1, retry: { base: 100, max: 1000, max_age: MAX_AGE, permanent: [400] } }));
  t.teardown(() => h.close());
  await h.append(3);
  await h.start();
  await h.answerAll(400);
  await h.commit();
  t.equal(h.consumer.status().dead_letters, 3);
  await h.tick(MAX_AGE * 2);
  t.equal(await h.replayDead(), 3, 'replayed long after max_age');
  t.equal(h.sink.calls.length, 4, 'the replay sends (its age counts from the replay)');
  for (let i = 0; i < 5 && h.sink.open().length > 0; i++) {
    for (const c of h.sink.open()) c.answer(503);
    await settle();
  }
  await h.commit();
  await h.tick(MAX_AGE);
  await h.commit();
  await h.commit();
  t.same(h.figures(), { accepted: 3, delivered: 0, dead: 3, purged: 0, lag: 0 }, 'dead again, max_age after the replay');
  identity(t, h, 'after the second expiry');
});

t.test('expiring a large backlog keeps the uncommitted dead letters within the byte bound', async (t) => {
  const bound = 64 * 1024;
  const h = await Harness.open(target({ concurrency: 1, max_read_ahead_bytes: bound, retry: { base: 100, max: 60_000, max_age: MAX_AGE, permanent: [400] } }));
  t.teardown(() => h.close());
  await h.append(200, { bytes: 4096 });
  await h.start();
  t.equal(h.sink.open().length, 1, 'one in flight, never answered');
  await h.tick(MAX_AGE);
  t.equal(h.consumer.status().dead_letters, 199, 'all but the one in flight are dead letters');
  // Its answer lets the offset pass the others: their records are written in several commits.
  h.sink.open()[0]!.answer(200);
  await settle();
  let commits = 0;
  let most = 0;
  for (let i = 0; i < 100 && h.log.delivery.deadCount('api') < 199; i++) {
    const p = h.consumer.takeCommit();
    if (!p) {
      await h.tick(1);
      continue;
    }
    const bytes = p.commit.dead.reduce((n, d) => n + d.held.envelope.byteLength, 0);
    most = Math.max(most, bytes);
    await h.log.delivery.commit([p.commit]);
    h.consumer.committed(p);
    commits++;
    await settle();
  }
  await h.commit();
  t.equal(h.log.delivery.deadCount('api'), 199, 'all 199 stored');
  t.equal(h.consumer.status().offset, 200, 'the offset passed them all');
  t.ok(most <= 2 * bound, `at most ${most} bytes of dead letters in one commit (bound ${bound})`);
  t.ok(commits > 3, `written in ${commits} commits`);
  identity(t, h, 'after expiry');
});

t.test('expired main-line entries are not held back by a due retry waiting for the breaker', async (t) => {
  const h = await Harness.open(target({ concurrency: 1, retry: { base: 100, max: 60_000, max_age: MAX_AGE, permanent: [400] } }));
  t.teardown(() => h.close());
  await h.append(4);
  await h.start();
  h.sink.open()[0]!.answer(400); // offset 1: a dead letter
  await settle();
  h.sink.open()[0]!.answer(401); // offset 2: paused, the breaker holds for retry.max
  await settle();
  t.equal(h.consumer.status().state, 'paused');
  await h.commit();
  await h.tick(MAX_AGE - 2000);
  t.equal(await h.replayDead(), 1, 'offset 1 replayed: due now, young again, and held by the pause');
  await h.tick(2000);
  await h.commit();
  const dead = h.log.delivery.deadLetters('api', 0, 10).map((d) => d.offset);
  t.ok(dead.includes(3) && dead.includes(4), `offsets 3 and 4 (never sent) are dead letters (${dead.join(', ')})`);
  t.equal(h.sink.calls.length, 2, 'nothing more was sent');
  const f = h.figures();
  t.equal(f.accepted, f.delivered + f.dead + f.purged + f.lag, 'accounting identity');
});

t.test('an expired retry is dead-lettered even when a younger due retry is ahead of it', async (t) => {
  // A long backoff puts offset 2's next attempt at its max_age; offset 3 hangs in the only slot.
  const h = await Harness.open(target({ concurrency: 1, retry: { base: 20_000, max: 60_000, max_age: MAX_AGE, permanent: [400] } }));
  t.teardown(() => h.close());
  await h.append(3);
  await h.start();
  h.sink.open()[0]!.answer(400); // offset 1: a dead letter
  await settle();
  h.sink.open()[0]!.answer(503); // offset 2: retrying, due at its max_age
  await settle();
  t.same(h.sink.open().map((c) => c.env.offset), [3], 'offset 3 in flight, never answered');
  await h.tick(MAX_AGE - 3000);
  t.equal(await h.replayDead(), 1, 'offset 1 replayed: due now (ahead of offset 2), young again, waiting for the slot');
  await h.tick(3000);
  await h.commit();
  const dead = h.log.delivery.deadLetters('api', 0, 10);
  t.same(dead.map((d) => d.offset), [2], 'offset 2 is a dead letter at its max_age');
  t.match(dead[0]?.held.error ?? '', /older than retry\.max_age \(10 s\) after 1 attempts/);
  t.equal(h.consumer.status().retrying, 1, 'offset 1 still waits');
  const f = h.figures();
  t.equal(f.accepted, f.delivered + f.dead + f.purged + f.lag, 'accounting identity');
});
