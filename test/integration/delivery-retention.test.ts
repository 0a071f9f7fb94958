// Retention with delivery: entries stay while a target has not passed them (its upstream is
// down), however old; requests it passed while retrying are kept in its retry records
// (retention may remove their log entries) and still arrive; once delivered and older than
// log.retention everything goes, and a rewind before the first retained offset is refused.
import t from 'tap';
import { Crowd, runCli } from '../helpers/crowd';
import { post, targetStatus } from '../helpers/delivery';
import { request } from '../helpers/http';
import { Upstream, waitFor } from '../helpers/upstream';

async function firstOffset(crowd: Crowd): Promise<number> {
  return JSON.parse((await request(crowd.adminUrl('/status'), { method: 'GET' })).body).log.first_offset;
}

t.test('retention honours consumer offsets', async (t) => {
  const up = await Upstream.start();
  const port = up.port;
  await up.close();
  const crowd = new Crowd({
    config: {
      log: { retention: '500ms' },
      routes: [
        { name: 'leads', path: '/leads', targets: ['api'] },
        { name: 'other', path: '/other', targets: ['fast'] },
      ],
      targets: [
        { name: 'api', url: `http://127.0.0.1:${port}`, retry: { base: '50ms', max: '200ms' } },
        { name: 'fast', url: `http://127.0.0.1:${port}`, retry: { base: '50ms', max: '200ms' } },
      ],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  const ids = await post(crowd, 20);
  await new Promise((r) => setTimeout(r, 2500)); // > retention + two housekeeping rounds
  const s = await targetStatus(crowd, 'api');
  const first = await firstOffset(crowd);
  t.ok(s.offset < 20, `the target did not pass everything (offset ${s.offset}, ${s.retrying} retrying)`);
  t.ok(first <= s.offset + 1, `nothing past the target's offset was removed (first offset ${first}, target offset ${s.offset})`);
  t.equal(s.retrying, s.offset, 'what it passed is held in its retry records');
  t.equal(s.lag, 20);
  await up.listen(port);
  await up.until(() => up.ids().size === 20, 15_000, 'delivered');
  t.same([...up.ids()].sort(), [...ids].sort());
  await waitFor(async () => (await firstOffset(crowd)) === 0, 10_000, 'the log emptied by retention');
  t.equal((await targetStatus(crowd, 'api')).offset, 20);
  const r = await runCli(['replay', '--target', 'api', '--from', '5', '-c', crowd.configFile]);
  t.equal(r.code, 1);
  t.match(r.stderr, /offset 5 is no longer in the log \(retention removed it\)/);
  const m = (await request(crowd.adminUrl('/metrics'), { method: 'GET' })).body;
  t.match(m, /^crowd_log_retention_removed_total 20$/m);
});
