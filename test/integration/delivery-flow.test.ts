// Flow control against real loopback upstreams: `rate` measured at the upstream,
// `concurrency` counted by the upstream, and `ordered = true` keeping offset order across
// retries.
import t from 'tap';
import { Crowd } from '../helpers/crowd';
import { checkIdentity, post, targetStatus } from '../helpers/delivery';
import { Upstream, waitFor } from '../helpers/upstream';

t.test('rate = 50: the measured rate is within 10% over a few seconds', async (t) => {
  const up = await Upstream.start();
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: up.url(), rate: 50, concurrency: 16 }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  await post(crowd, 250, { parallel: 16 });
  await up.until(() => up.received.length >= 230, 15_000, '230 deliveries');
  // Measure between the 30th and the 230th arrival: 200 intervals, about 4 s at 50/s.
  const times = up.received.map((r) => r.at).sort((a, b) => a - b);
  const rate = 200 / ((times[229]! - times[29]!) / 1000);
  t.ok(rate >= 45 && rate <= 55, `measured ${rate.toFixed(1)} req/s for rate = 50`);
  await up.until(() => up.received.length === 250, 10_000, 'all 250');
  await checkIdentity(t, crowd, 'api');
});

t.test('concurrency = 2: never more than 2 requests in flight at the upstream', async (t) => {
  const up = await Upstream.start(0, () => ({ status: 200, delayMs: 20 }));
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: up.url(), concurrency: 2 }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  await post(crowd, 60, { parallel: 16 });
  let sawTwo = false;
  await waitFor(async () => {
    const s = await targetStatus(crowd, 'api');
    if (s.in_flight === 2) sawTwo = true;
    t.ok(s.in_flight <= 2, `status in_flight ${s.in_flight} <= 2`);
    return up.received.length === 60;
  }, 15_000, 'all 60');
  t.equal(up.maxInFlight, 2, 'the upstream counted at most 2 at once, and 2 were used');
  t.ok(sawTwo || up.maxInFlight === 2);
});

t.test('ordered = true: arrivals follow offset order across retries', async (t) => {
  // Every third attempt fails (503, a timeout-free retry).
  let n = 0;
  const up = await Upstream.start(0, () => ({ status: ++n % 3 === 0 ? 503 : 200 }));
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: up.url(), ordered: true, concurrency: 8, retry: { base: '10ms', max: '50ms' } }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  const ids = await post(crowd, 40, { parallel: 1 }); // one at a time: ids[i] has offset i + 1
  await waitFor(async () => (await targetStatus(crowd, 'api')).lag === 0, 20_000, 'all delivered');
  const order = up.received.map((r) => ids.indexOf(String(r.headers['crowd-id'])));
  t.ok(order.every((o) => o >= 0));
  t.ok(up.received.length > 40, `some attempts failed and were retried (${up.received.length} attempts)`);
  let monotonic = true;
  for (let i = 1; i < order.length; i++) if (order[i]! < order[i - 1]!) monotonic = false;
  t.ok(monotonic, `arrival order follows offsets: ${order.join(',')}`);
  t.same([...new Set(order)], ids.map((_, i) => i), 'each request, in order');
  t.equal(up.maxInFlight, 1, 'one in flight');
  await checkIdentity(t, crowd, 'api');
});
