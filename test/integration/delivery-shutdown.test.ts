// SIGTERM while requests are in flight to a slow upstream: crowd waits for them (bounded),
// commits its offset, exits 0; after a restart the rest arrives and nothing is lost.
import t from 'tap';
import { Crowd } from '../helpers/crowd';
import { checkIdentity, post, targetStatus } from '../helpers/delivery';
import { Upstream, waitFor } from '../helpers/upstream';

t.test('SIGTERM during delivery', async (t) => {
  const up = await Upstream.start(0, () => ({ status: 200, delayMs: 300 }));
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: up.url(), concurrency: 4 }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  const ids = await post(crowd, 40);
  await waitFor(() => up.inFlight === 4, 5000, '4 in flight');
  const started = Date.now();
  const exit = await crowd.sigterm();
  t.equal(exit.code, 0, 'exit 0');
  t.ok(Date.now() - started < 5000, `stopped within the grace (${Date.now() - started} ms)`);
  const deliveredBefore = up.received.length;
  t.ok(deliveredBefore >= 4 && deliveredBefore < 40, `stopped sending (${deliveredBefore} arrived)`);
  await crowd.start();
  await up.until(() => up.ids().size === 40, 20_000, 'all after the restart');
  t.same([...up.ids()].sort(), [...ids].sort());
  // The requests in flight at SIGTERM were answered and committed: none of them is sent twice.
  t.equal(up.received.length, 40, 'no duplicates after a clean stop');
  await waitFor(async () => (await targetStatus(crowd, 'api')).lag === 0, 5000, 'lag 0');
  await checkIdentity(t, crowd, 'api');
});
