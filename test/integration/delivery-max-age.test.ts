// retry.max_age applies to every entry, attempted or not: with the upstream down (the
// circuit open, the backlog never tried) the backlog still becomes dead letters once it is
// older than max_age, unsent, with an error saying it was never attempted.
import t from 'tap';
import { Crowd, runCli } from '../helpers/crowd';
import { checkIdentity, post, targetStatus } from '../helpers/delivery';
import { Upstream, waitFor } from '../helpers/upstream';

t.test('upstream down: the whole backlog is dead-lettered soon after max_age', async (t) => {
  // A port nobody listens on: connections are refused.
  const up = await Upstream.start(0);
  await up.close();
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: up.url(), retry: { base: '100ms', max: '60s', max_age: '2s' } }],
    },
  });
  await crowd.start();
  t.teardown(() => crowd.stop());
  const started = Date.now();
  await post(crowd, 400, { parallel: 16 });
  const posted = Date.now();
  await waitFor(async () => (await targetStatus(crowd, 'api')).dead_letters === 400, 6000, 'all 400 dead letters');
  const took = Date.now() - started;
  t.ok(took < 2000 + (posted - started) + 3000, `all dead ${took} ms after the first request (max_age 2 s)`);
  const s = await targetStatus(crowd, 'api');
  t.equal(s.lag, 0);
  await waitFor(async () => (await targetStatus(crowd, 'api')).committed_offset === 400, 3000, 'committed');
  const list = await runCli(['dlq', 'list', '--target', 'api', '-n', '1000', '-c', crowd.configFile]);
  t.equal(list.code, 0, list.stderr);
  const dead = list.stdout.trim().split('\n').map((l) => JSON.parse(l));
  t.equal(dead.length, 400, 'listed');
  const never = dead.filter((d) => /older than retry\.max_age \(2 s\): never attempted/.test(d.error));
  const tried = dead.filter((d) => /older than retry\.max_age \(2 s\) after \d+ attempts/.test(d.error));
  t.equal(never.length + tried.length, 400, 'every error names max_age and the attempts');
  t.ok(never.length > 300, `most were never attempted (${never.length})`);
  await checkIdentity(t, crowd, 'api');
});
