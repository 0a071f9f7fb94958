// kill -9 while crowd delivers, several times, with load arriving meanwhile: afterwards every
// acknowledged request reached the upstream at least once (with its body), and the
// duplicates stay below what can be delivered and not committed when the kill lands: the
// requests answered 2xx in the last commit interval (plus the commit's own time) before each
// kill, and the requests in flight.
import t from 'tap';
import { Crowd } from '../helpers/crowd';
import { LoadClient } from '../helpers/load';
import { checkIdentity, targetStatus } from '../helpers/delivery';
import { Upstream, waitFor } from '../helpers/upstream';
import { COMMIT_INTERVAL_MS } from '../../src/delivery/delivery';

const KILLS = 5;
const CONCURRENCY = 16;
/**
 * How long a delivered request can stay uncommitted: a commit starts every COMMIT_INTERVAL_MS
 * and one may be running (fdatasync on a busy shared disk) when the next interval starts.
 */
const UNCOMMITTED_MS = 2 * COMMIT_INTERVAL_MS + 200;

t.test('kill -9 during delivery: at-least-once, duplicates bounded by what was not committed at each kill', async (t) => {
  // A slowish upstream, so that the kills land while requests are in flight.
  const up = await Upstream.start(0, (_r, i) => ({ status: i % 7 === 3 ? 503 : 200, delayMs: 1 + (i % 5) }));
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: up.url(), concurrency: CONCURRENCY, retry: { base: '10ms', max: '100ms' } }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  const client = new LoadClient(() => crowd.url('/leads'), { workers: 16, maxRequests: 100_000, tag: 'dkill', timeoutMs: 5000 }).start();
  let deliveredAtKill = 0;
  const killedAt: number[] = [];
  for (let k = 0; k < KILLS; k++) {
    await new Promise((r) => setTimeout(r, 1000 + Math.random() * 500));
    deliveredAtKill = up.received.length;
    killedAt.push(Date.now());
    const exit = await crowd.kill9();
    t.equal(exit.signal, 'SIGKILL', `kill ${k + 1} while ${deliveredAtKill} attempts had arrived`);
    await crowd.restart();
  }
  await new Promise((r) => setTimeout(r, 300));
  await client.stop();
  t.ok(client.acks.length > 300, `enough acknowledged requests (${client.acks.length})`);
  t.ok(up.received.length > 100, 'delivery was under way during the kills');

  await waitFor(async () => (await targetStatus(crowd, 'api')).lag === 0, 60_000, 'the backlog drained');
  const delivered = new Map<string, number>();
  for (const r of up.received) {
    if (r.headers['crowd-attempt'] === undefined) continue;
    const id = String(r.headers['crowd-id']);
    delivered.set(id, (delivered.get(id) ?? 0) + 1);
  }
  const bodies = new Map(up.received.map((r) => [String(r.headers['crowd-id']), r.body.toString()]));
  let missing = 0;
  let wrongBody = 0;
  for (const a of client.acks) {
    if (!delivered.has(a.id)) missing++;
    else if (bodies.get(a.id) !== a.body) wrongBody++;
  }
  t.equal(missing, 0, `every acknowledged request reached the upstream (${client.acks.length} acks)`);
  t.equal(wrongBody, 0, 'with its body');
  // Duplicates: deliveries of an id beyond its first 2xx (the upstream answered 503 to some).
  const okById = new Map<string, number>();
  up.received.forEach((r, i) => {
    if (i % 7 !== 3) okById.set(String(r.headers['crowd-id']), (okById.get(String(r.headers['crowd-id'])) ?? 0) + 1);
  });
  let duplicates = 0;
  for (const n of okById.values()) duplicates += n - 1;
  // What each kill can lose track of: 2xx answers in the UNCOMMITTED_MS before it, and the requests in flight.
  const exposed = killedAt.map((at) => up.received.filter((r, i) => i % 7 !== 3 && r.at <= at && r.at > at - UNCOMMITTED_MS).length);
  const bound = exposed.reduce((a, b) => a + b, 0) + KILLS * CONCURRENCY;
  t.ok(duplicates <= bound, `duplicates after ${KILLS} kills: ${duplicates} <= ${bound} (2xx in the ${UNCOMMITTED_MS} ms before each kill: ${exposed.join(', ')}; plus ${KILLS} x concurrency ${CONCURRENCY})`);
  t.comment(`acks ${client.acks.length}, attempts ${up.received.length}, duplicates ${duplicates}`);
  const f = await checkIdentity(t, crowd, 'api');
  t.equal(f.lag, 0);
});
