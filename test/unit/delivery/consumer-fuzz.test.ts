// Rewinds at random moments while requests are answered at random (2xx, permanent, retry),
// commits are written and the clock moves: the accounting identity and the ledger's
// invariants must hold throughout (a broken one throws), and every entry ends delivered or
// dead once the upstream accepts everything.
import t from 'tap';
import { Harness, target } from '../../helpers/consumer';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

for (const seed of [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]) {
  t.test(`random rewinds under random answers (seed ${seed})`, async (t) => {
    const rand = rng(seed);
    const h = await Harness.open(target({ concurrency: 32, retry: { base: 50, max: 300, max_age: 3_600_000, permanent: [400] } }));
    t.teardown(() => h.close());
    await h.append(1500);
    await h.start();
    const errors: unknown[] = [];
    const onErr = (e: unknown) => errors.push(e);
    process.on('unhandledRejection', onErr);
    t.teardown(() => process.off('unhandledRejection', onErr));
    const answerSome = (p: number) => {
      for (const c of h.sink.open()) if (rand() < p) c.answer(rand() < 0.5 ? 200 : rand() < 0.5 ? 400 : 503);
    };
    let rewinds = 0;
    for (let round = 0; round < 400 && errors.length === 0; round++) {
      answerSome(0.6);
      await h.tick(Math.floor(rand() * 120));
      if (rand() < 0.3) await h.commit();
      if (rand() < 0.08) {
        const off = h.consumer.status().offset;
        const from = Math.max(1, off + Math.floor(rand() * 1200) - 200);
        // Half the time a delivery commit is being written when the rewind starts; as in the
        // manager, the rewind's own part waits for it (the commit chain).
        const p = rand() < 0.5 ? h.consumer.takeCommit() : null;
        const writing = p ? h.log.delivery.commit([p.commit]) : null;
        let landed = false;
        const finishCommit = async () => {
          if (!p || !writing || landed) return;
          landed = true;
          await writing;
          h.consumer.committed(p);
        };
        const r = h.rewind(from, finishCommit).then(
          () => rewinds++,
          () => undefined,
        );
        let done = false;
        void r.then(() => (done = true));
        for (let i = 0; i < 100 && !done; i++) {
          answerSome(1);
          await h.tick(50);
        }
        await r;
        await finishCommit(); // a refused rewind never ran its serialised part
      }
    }
    t.same(errors.map(String), [], 'no invariant broken');
    // Then the upstream accepts everything: all ends delivered or dead.
    for (let i = 0; i < 400 && h.figures().lag > 0; i++) {
      for (const c of h.sink.open()) c.answer(200);
      await h.tick(400);
      if (i % 5 === 0) await h.commit();
    }
    const f = h.figures();
    t.equal(f.lag, 0, `all settled after ${rewinds} rewinds: ${JSON.stringify(f)}`);
    t.equal(f.accepted, f.delivered + f.dead + f.purged + f.lag);
  });
}
