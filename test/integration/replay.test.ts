// Rewinding a target with `crowd replay` (admin API underneath): --from OFFSET and
// --since DURATION re-deliver from there without a restart; bad requests are refused.
import t from 'tap';
import { Crowd, runCli } from '../helpers/crowd';
import { checkIdentity, post, targetStatus } from '../helpers/delivery';
import { Upstream, waitFor } from '../helpers/upstream';

t.test('crowd replay --from and --since re-deliver without a restart', async (t) => {
  const up = await Upstream.start();
  const other = await Upstream.start();
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api', 'other'] }],
      targets: [
        { name: 'api', url: up.url() },
        { name: 'other', url: other.url() },
      ],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
    await other.close();
  });
  const ids = await post(crowd, 10, { parallel: 1 });
  await up.until(() => up.received.length === 10, 10_000, 'first delivery');
  await other.until(() => other.received.length === 10, 10_000, 'first delivery to other');
  await waitFor(async () => (await targetStatus(crowd, 'api')).committed_offset === 10, 5000, 'committed');

  const r = await runCli(['replay', '--target', 'api', '--from', '4', '-c', crowd.configFile]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /rewound to offset 4 \(was at 11\)/);
  await up.until(() => up.received.length === 17, 10_000, '7 re-deliveries');
  t.same(up.received.slice(10).map((x) => x.headers['crowd-id']), ids.slice(3), 'offsets 4..10 again, in order, same ids');
  t.same(up.received.slice(10).map((x) => x.headers['idempotency-key']), ids.slice(3));
  await waitFor(async () => (await targetStatus(crowd, 'api')).lag === 0, 5000, 'drained');
  let f = await checkIdentity(t, crowd, 'api');
  t.equal(f.accepted, 17, 'a rewind adds the re-sent requests to accepted');
  t.equal(f.delivered, 17);
  t.equal(other.received.length, 10, 'the other target is not rewound');
  t.ok(crowd.lines.some((l) => l.includes('"event":"target_rewound"')));

  const since = await runCli(['replay', '--target', 'api', '--since', '1h', '-c', crowd.configFile]);
  t.equal(since.code, 0, since.stderr);
  t.match(since.stdout, /rewound to offset 1 /);
  await up.until(() => up.received.length === 27, 10_000, '10 more re-deliveries');
  await waitFor(async () => (await targetStatus(crowd, 'api')).lag === 0, 5000, 'drained');
  f = await checkIdentity(t, crowd, 'api');
  t.equal(f.delivered, 27);

  // --since shorter than the age of everything: nothing to send.
  await new Promise((r) => setTimeout(r, 300));
  const none = await runCli(['replay', '--target', 'api', '--since', '100ms', '-c', crowd.configFile]);
  t.equal(none.code, 0, none.stderr);
  t.match(none.stdout, /rewound to offset 11 \(was at 11\)/);

  // Refusals name what is wrong.
  const skip = await runCli(['replay', '--target', 'api', '--from', '50', '-c', crowd.configFile]);
  t.equal(skip.code, 1);
  t.match(skip.stderr, /offset 50 is past target api's position \(11\); replay rewinds, it does not skip/);
  const zero = await runCli(['replay', '--target', 'api', '--from', '0', '-c', crowd.configFile]);
  t.equal(zero.code, 1);
  t.match(zero.stderr, /offset 0 is no longer in the log/);
  const nobody = await runCli(['replay', '--target', 'ghost', '--from', '1', '-c', crowd.configFile]);
  t.match(nobody.stderr, /no target is named "ghost"/);
  const neither = await runCli(['replay', '--target', 'api', '-c', crowd.configFile]);
  t.equal(neither.code, 1);
  t.match(neither.stderr, /replay needs --from OFFSET or --since DURATION/);
  const badSince = await runCli(['replay', '--target', 'api', '--since', 'soon', '-c', crowd.configFile]);
  t.equal(badSince.code, 1);
  t.match(badSince.stderr, /since: /);
});

t.test('a rewind over a request waiting for a retry and a dead letter sends neither twice', async (t) => {
  let holdBack = true;
  const up = await Upstream.start(0, (r) => {
    const body = r.body.toString();
    if (body === 'req-2') return { status: holdBack ? 503 : 200 };
    if (body === 'req-4') return { status: 400 };
    return { status: 200 };
  });
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: up.url(), retry: { base: '500ms', max: '500ms' } }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  const ids = await post(crowd, 6, { parallel: 1 }); // req-2 is offset 3, req-4 offset 5
  await waitFor(async () => {
    const s = await targetStatus(crowd, 'api');
    return s.offset === 6 && s.retrying === 1 && s.dead_letters === 1 && s.committed_offset === 6;
  }, 10_000, 'req-2 parked, req-4 dead, offset committed');
  const r = await runCli(['replay', '--target', 'api', '--from', '1', '-c', crowd.configFile]);
  t.equal(r.code, 0, r.stderr);
  holdBack = false;
  await waitFor(async () => (await targetStatus(crowd, 'api')).lag === 0, 10_000, 'drained');
  const okCount = (body: string) => up.received.filter((x) => x.body.toString() === body).length;
  for (const b of ['req-0', 'req-1', 'req-3', 'req-5']) t.equal(okCount(b), 2, `${b}: sent again by the rewind`);
  const attempts2 = up.received.filter((x) => x.body.toString() === 'req-2').map((x) => x.headers['crowd-attempt']);
  t.same(attempts2.slice(-1), [String(attempts2.length)], 'req-2 stays one request with one attempt count, not a second copy');
  t.equal(okCount('req-4'), 1, 'the dead letter is not sent again by a rewind (crowd dlq replay does that)');
  const f = await checkIdentity(t, crowd, 'api');
  t.equal(f.dead, 1);
  t.equal(f.lag, 0);
  t.equal(f.delivered, 5 + 4, 'five first deliveries, four re-sent');
  t.equal(ids.length, 6);
});
