// crowd replay --since on a target that has not reached the window's start yet: nothing to
// rewind, so it answers success, says so, and resends nothing (instead of refusing).
import t from 'tap';
import { Crowd, runCli } from '../helpers/crowd';
import { checkIdentity, post, targetStatus } from '../helpers/delivery';
import { request } from '../helpers/http';
import { Upstream } from '../helpers/upstream';

t.test('replay --since past a lagging target position: success, resent 0', async (t) => {
  // The upstream holds the first request: the target stays at its first offset.
  const up = await Upstream.start(0, () => ({ status: 200, delayMs: 40_000 }));
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: up.url(), concurrency: 1, timeout: '60s' }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  await post(crowd, 5, { parallel: 1 });
  // Wide gaps: `--since 5s`, asked 0-5 s after the late requests, must start between the two batches.
  await new Promise((r) => setTimeout(r, 8000));
  await post(crowd, 5, { parallel: 1, prefix: 'late-' });
  await up.until(() => up.received.length === 1, 5000, 'the first request held');
  const before = await targetStatus(crowd, 'api');
  t.equal(before.offset, 0, 'the target has passed nothing');

  const r = await runCli(['replay', '--target', 'api', '--since', '5s', '-c', crowd.configFile]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /target api has not reached that point yet \(it is at offset 1; the window starts at offset 6\): nothing to rewind, 0 requests resent/);
  const api = await request(crowd.adminUrl('/targets/api/replay?since=5s'), { method: 'POST' });
  t.equal(api.status, 200, api.body);
  t.match(JSON.parse(api.body), { target: 'api', from: 1, previous: 1, resent: 0, message: /has not reached that point yet/ });
  const after = await targetStatus(crowd, 'api');
  t.equal(after.accepted, before.accepted, 'nothing counted as resent');
  t.equal(up.received.length, 1, 'nothing sent again');
  // --from past the position is still refused: an explicit offset asks to skip.
  const skip = await runCli(['replay', '--target', 'api', '--from', '8', '-c', crowd.configFile]);
  t.equal(skip.code, 1);
  t.match(skip.stderr, /past target api's position/);
  await checkIdentity(t, crowd, 'api');
});
