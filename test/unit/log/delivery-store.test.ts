// The delivery records in the log's environment: one commit moves an offset, parks,
// unparks and dead-letters together; dead letters move back to the retries and get purged.
import t from 'tap';
import { join } from 'node:path';
import { Log } from '../../../src/log/log';
import { tempDir } from '../../helpers/crowd';
import type { Held } from '../../../src/log/delivery-store';

const held = (attempts: number, at: number): Held => ({ envelope: Buffer.from([1, 2, 3]), attempts, status: 503, error: 'upstream answered 503', first_attempt_at: 5, at, replayed_at: 0 });

t.test('commit, replayDead, purgeDead', async (t) => {
  const dir = join(tempDir(), 'log');
  let log = await Log.open({ dir, maxPendingWrites: 1000, maxBytes: 1e9, retentionMs: 0, consumers: ['a', 'b'] });
  const s = log.delivery;
  t.equal(s.hasOffset('a'), false);
  await s.commit([
    { target: 'a', offset: 10, park: [{ offset: 3, held: held(1, 100) }, { offset: 4, held: held(2, 200) }], unpark: [], dead: [{ offset: 7, held: held(3, 300) }] },
    { target: 'b', offset: 2, park: [], unpark: [], dead: [] },
  ]);
  t.equal(s.offset('a'), 10);
  t.equal(s.offset('b'), 2);
  t.same(s.retryIndex('a'), [{ offset: 3, attempts: 1, due: 100 }, { offset: 4, attempts: 2, due: 200 }]);
  t.same(s.retryIndex('b'), [], 'records are per target');
  t.equal(s.deadCount('a'), 1);
  t.match(s.deadLetters('a', 0, 10), [{ offset: 7, held: { attempts: 3, status: 503, error: 'upstream answered 503', at: 300 } }]);
  t.same([...s.retry('a', 4)!.envelope], [1, 2, 3]);

  // Parked and delivered before the commit: both in one commit, no record left.
  await s.commit([{ target: 'a', offset: 12, park: [{ offset: 11, held: held(1, 400) }], unpark: [11, 3], dead: [] }]);
  t.same(s.retryIndex('a').map((r) => r.offset), [4], 'park then unpark in one commit leaves nothing');

  const moved = await s.replayDead('a', null, 10, 999);
  t.same(moved, [{ offset: 7, attempts: 3, due: 999 }]);
  t.equal(s.deadCount('a'), 0);
  t.same(s.retryIndex('a').map((r) => r.offset), [4, 7]);
  await s.commit([{ target: 'a', park: [], unpark: [4, 7], dead: [{ offset: 4, held: held(9, 1) }, { offset: 7, held: held(9, 2) }] }]);
  t.equal(s.offset('a'), 12, 'an absent offset is left alone');
  t.equal(await s.purgeDead('a', [4, 99], 10), 1, 'only existing offsets count');
  t.equal(s.deadCount('a'), 1);
  await log.close();
  log = await Log.open({ dir, maxPendingWrites: 1000, maxBytes: 1e9, retentionMs: 0, consumers: ['a', 'b'] });
  t.teardown(() => log.close());
  t.equal(log.delivery.deadCount('a'), 1, 'dead letters survive a reopen');
  t.equal(await log.delivery.purgeDead('a', null, 10), 1);
  t.equal(log.delivery.deadCount('a'), 0);
});
