// Ensures the lmdb-js behaviours the log depends on (src/log/lmdb.ts) are what the log
// assumes: an upgrade that changes one of them fails here first. The exit-time sync and
// exitWithoutSync are checked with strace in test/crash/fsync-fault.test.ts.
import t from 'tap';
import { join } from 'node:path';
import { durable, openEnvironment, putNew } from '../../../src/log/lmdb';
import { tempDir } from '../../helpers/crowd';

function env() {
  const root = openEnvironment({ path: join(tempDir(), 'x.mdb'), readOnly: false, mapSize: 64 * 1024 * 1024, maxDbs: 4 });
  const db = root.openDB<Buffer, number>({ name: 'entries', encoding: 'binary', keyEncoding: 'ordered-binary' });
  return { root, db };
}

t.test('transaction callbacks run later than the call', async (t) => {
  const { root } = env();
  t.teardown(() => root.close());
  let ran = false;
  const done = root.transaction(() => {
    ran = true;
  });
  t.equal(ran, false, 'not at the call: whatever the callback decides must be read inside it');
  await done;
  t.equal(ran, true);
});

t.test('a write has a commit promise and a separate flushed promise; durable() waits for both', async (t) => {
  const { root, db } = env();
  t.teardown(() => root.close());
  const order: string[] = [];
  const write = db.put(1, Buffer.from('a'));
  const flushed = (write as { flushed?: Promise<unknown> }).flushed;
  t.ok(flushed && typeof flushed.then === 'function', 'separateFlushed gives each write a flushed promise');
  void flushed!.then(() => order.push('flushed'));
  await durable(write).then(() => order.push('durable'));
  t.same(order, ['flushed', 'durable'], 'durable resolves only after the fdatasync');
});

t.test('a committed write is visible to readers (whether or not its fdatasync is done)', async (t) => {
  const { root, db } = env();
  t.teardown(() => root.close());
  await db.put(7, Buffer.from('seen')); // the commit, not the flush
  t.same(db.get(7), Buffer.from('seen'), 'readers must stop at a durable watermark of their own');
});

t.test('put overwrites silently; putNew refuses and reports the collision', async (t) => {
  const { root, db } = env();
  t.teardown(() => root.close());
  await db.put(1, Buffer.from('first'));
  t.equal(await db.put(1, Buffer.from('second')), true, 'put replaces without a word');
  t.same(db.get(1), Buffer.from('second'));
  t.equal(await durable(putNew(db, 1, Buffer.from('third'))), false, 'putNew resolves false on an existing key');
  t.same(db.get(1), Buffer.from('second'), 'and changes nothing');
  const [a, b] = await Promise.all([durable(putNew(db, 2, Buffer.from('x'))), durable(putNew(db, 3, Buffer.from('y')))]);
  t.same([a, b], [true, true], 'free keys are written');
});
