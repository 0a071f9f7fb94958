// Ensures nothing acknowledged is lost across kill -9: a client records the id of every 2xx
// while crowd is killed at random moments and restarted on the same log; afterwards every
// recorded id is in the log exactly once, with its body, and the stored records tile the
// offsets with no gap or overlap (read raw, not through Log.read, which orders by construction).
import t from 'tap';
import { join } from 'node:path';
import { open } from 'lmdb';
import { Crowd } from '../helpers/crowd';
import { LoadClient } from '../helpers/load';
import { decodeEnvelope } from '../../src/log/codec';
import { forEachInRecord, recordCount } from '../../src/log/record';

const KILLS = 6;

t.test('kill -9 at random moments loses no acknowledged request', async (t) => {
  const crowd = new Crowd();
  await crowd.start();
  t.teardown(() => crowd.stop());
  const client = new LoadClient(() => crowd.url('/leads'), { workers: 24, maxRequests: 200_000, tag: 'kill9', timeoutMs: 5000 }).start();
  for (let k = 0; k < KILLS; k++) {
    await new Promise((r) => setTimeout(r, 200 + Math.random() * 600));
    const exit = await crowd.kill9();
    t.equal(exit.signal, 'SIGKILL', `kill ${k + 1}: crowd died of SIGKILL (${client.acks.length} acks so far)`);
    await crowd.restart();
  }
  await new Promise((r) => setTimeout(r, 300));
  await client.stop();
  await crowd.kill9();
  t.ok(client.acks.length > 200, `enough acknowledged requests to mean something (${client.acks.length})`);
  t.ok(client.errors > 0, `the kills did interrupt requests (${client.errors} connection errors)`);

  // The raw records: each key is the offset of its first envelope, each envelope carries its
  // own offset, and every record starts where the previous one ended.
  const env = open({ path: join(crowd.logDir, 'crowd.mdb'), readOnly: true, maxDbs: 8 });
  t.teardown(() => env.close());
  const entries = env.openDB<Buffer, number>({ name: 'entries', encoding: 'binary', keyEncoding: 'ordered-binary' });
  const seen = new Map<string, { offset: number; body: string }>();
  let duplicates = 0;
  let records = 0;
  let expectedKey = 1;
  const tiling: string[] = [];
  for (const { key, value } of entries.getRange({})) {
    records++;
    if (key !== expectedKey) tiling.push(`record at ${key}, expected ${expectedKey}`);
    forEachInRecord(value, (i, bytes) => {
      const e = decodeEnvelope(bytes);
      if (e.offset !== key + i) tiling.push(`record ${key} holds offset ${e.offset} at position ${i}`);
      if (seen.has(e.id)) duplicates++;
      seen.set(e.id, { offset: e.offset, body: Buffer.from(e.body).toString() });
      return true;
    });
    expectedKey = key + recordCount(value);
  }
  t.ok(records > KILLS, `${records} records read`);
  t.same(tiling.slice(0, 5), [], 'records tile the offsets: no gap, no overlap, each envelope at its own offset');
  t.equal(duplicates, 0, 'no id is stored twice');
  let missing = 0;
  let wrongBody = 0;
  for (const a of client.acks) {
    const e = seen.get(a.id);
    if (!e) missing++;
    else if (e.body !== a.body) wrongBody++;
  }
  t.equal(missing, 0, `every one of the ${client.acks.length} acknowledged ids is in the log`);
  t.equal(wrongBody, 0, 'each with the body that was sent');
});
