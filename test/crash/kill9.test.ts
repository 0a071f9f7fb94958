// Ensures nothing acknowledged is lost across kill -9: a client records the id of every 2xx
// while crowd is killed at random moments and restarted on the same log; afterwards every
// recorded id is in the log exactly once, with its body, and offsets strictly increase.
import t from 'tap';
import { Crowd } from '../helpers/crowd';
import { LoadClient } from '../helpers/load';
import { Log } from '../../src/log/log';

const KILLS = 6;

t.test('kill -9 at random moments loses no acknowledged request', async (t) => {
  const crowd = new Crowd();
  await crowd.start();
  t.teardown(() => crowd.stop());
  const client = new LoadClient(() => crowd.url('/leads'), { workers: 24, maxRequests: 200_000, tag: 'kill9', timeoutMs: 5000 }).start();
  for (let k = 0; k < KILLS; k++) {
    await new Promise((r) => setTimeout(r, 200 + Math.random() * 600));
    const before = client.acks.length;
    const exit = await crowd.kill9();
    t.equal(exit.signal, 'SIGKILL', `kill ${k + 1}: crowd died of SIGKILL`);
    t.ok(client.acks.length >= before, `kill ${k + 1}: ${client.acks.length} acks so far`);
    await crowd.restart();
  }
  await new Promise((r) => setTimeout(r, 300));
  await client.stop();
  await crowd.kill9();
  t.ok(client.acks.length > 200, `enough acknowledged requests to mean something (${client.acks.length})`);
  t.ok(client.errors > 0, `the kills did interrupt requests (${client.errors} connection errors)`);

  const log = await Log.open({ dir: crowd.logDir, maxPendingWrites: 1, maxBytes: 1e12, retentionMs: 0, consumers: [], readOnly: true });
  t.teardown(() => log.close());
  const seen = new Map<string, { offset: number; body: string }>();
  let duplicates = 0;
  let previous = 0;
  let increasing = true;
  for (let from = 1; ; ) {
    const batch = log.read(from, 5000);
    if (batch.length === 0) break;
    for (const e of batch) {
      if (e.offset <= previous) increasing = false;
      previous = e.offset;
      if (seen.has(e.id)) duplicates++;
      seen.set(e.id, { offset: e.offset, body: Buffer.from(e.body).toString() });
    }
    from = batch[batch.length - 1]!.offset + 1;
  }
  t.ok(increasing, 'offsets strictly increase');
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
