// targets[].max_lag_bytes: past it, the target's oldest entries not yet sent go to its dead
// letters (unsent), so that retention can free the log; what a rewind sends again is not.
import t from 'tap';
import { Harness, settle, target } from '../../helpers/consumer';

async function appendEach(h: Harness, n: number, bytes: number): Promise<void> {
  for (let i = 0; i < n; i++) await h.append(1, { bytes }); // one record each
}

t.test('the oldest entries beyond max_lag_bytes become dead letters; the rest wait', async (t) => {
  const h = await Harness.open(target({ concurrency: 1, max_lag_bytes: 10 * 4096 }));
  t.teardown(() => h.close());
  await appendEach(h, 30, 4000);
  await h.start();
  t.equal(h.sink.open().length, 1, 'offset 1 in flight, never answered');
  h.consumer.checkLag();
  await settle();
  const s = h.consumer.status();
  t.equal(s.dead_letters, 19, 'offsets 2-20 are dead letters (10 records of about 4 KiB stay)');
  t.equal(h.sink.calls.length, 1, 'none of them was sent');
  h.sink.open()[0]!.answer(200);
  await settle();
  await h.commit();
  const dead = h.log.delivery.deadLetters('api', 0, 100);
  t.same(dead.map((d) => d.offset), Array.from({ length: 19 }, (_, i) => i + 2), 'the oldest, in order');
  t.match(dead[0]!.held.error, /over targets\[\]\.max_lag_bytes \(40 KiB\).*: never attempted/);
  await h.answerAll(200);
  await h.commit();
  t.same(h.figures(), { accepted: 30, delivered: 11, dead: 19, purged: 0, lag: 0 });
  // More entries: the meter goes on from where it was.
  for (let i = 0; i < 15; i++) {
    await appendEach(h, 1, 4000);
    await h.tick(1);
    await h.answerAll(200);
    await h.commit();
    h.consumer.checkLag();
  }
  t.same(h.figures(), { accepted: 45, delivered: 26, dead: 19, purged: 0, lag: 0 }, 'a target keeping up loses nothing');
});

t.test('a rewind is not dead-lettered by max_lag_bytes', async (t) => {
  const h = await Harness.open(target({ concurrency: 4, max_lag_bytes: 5 * 4096 }));
  t.teardown(() => h.close());
  await appendEach(h, 12, 4000);
  await h.start();
  await h.answerAll(200);
  await h.commit();
  await h.rewind(1);
  await settle();
  h.consumer.checkLag();
  await settle();
  await h.answerAll(200);
  await h.commit();
  t.same(h.figures(), { accepted: 24, delivered: 24, dead: 0, purged: 0, lag: 0 }, 'all sent again, none dead');
});
