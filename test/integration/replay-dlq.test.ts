// A rewind followed by `crowd dlq replay`: every dead letter is delivered once more (by the
// retry line), never a second time by the rewound main line when it reaches its offset.
import t from 'tap';
import { Crowd, runCli } from '../helpers/crowd';
import { checkIdentity, post, targetStatus } from '../helpers/delivery';
import { Upstream, waitFor } from '../helpers/upstream';

const COUNT = 1200;
/** Bodies the upstream refuses with 422 at first: far past the first read of a rewound consumer. */
const REFUSED = new Set(Array.from({ length: 6 }, (_, i) => `req-${1190 + i}`));

t.test('replay to before dead letters, then dlq replay: each id delivered exactly once more', async (t) => {
  let phase: 'first' | 'down' | 'up' = 'first';
  /** 2xx answers per id after the first pass. */
  const ok = new Map<string, number>();
  const up = await Upstream.start(0, (r) => {
    if (phase === 'down') return { status: 503 };
    if (phase === 'first') return { status: REFUSED.has(r.body.toString()) ? 422 : 200 };
    const id = String(r.headers['crowd-id']);
    ok.set(id, (ok.get(id) ?? 0) + 1);
    return { status: 200 };
  });
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: up.url(), concurrency: 16, retry: { base: '20ms', max: '200ms' } }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  const ids = await post(crowd, COUNT, { parallel: 16 });
  await waitFor(async () => {
    const s = await targetStatus(crowd, 'api');
    return s.lag === 0 && s.committed_offset === COUNT;
  }, 20_000, 'first pass delivered and committed');
  let s = await targetStatus(crowd, 'api');
  t.equal(s.dead_letters, 6, 'six dead letters');

  // The upstream is down while the rewind and the replay happen: the main line stays near its start.
  phase = 'down';
  const rw = await runCli(['replay', '--target', 'api', '--from', '1', '-c', crowd.configFile]);
  t.equal(rw.code, 0, rw.stderr);
  t.match(rw.stdout, /rewound to offset 1 \(was at 1201\)/);
  const dq = await runCli(['dlq', 'replay', '--target', 'api', '-c', crowd.configFile]);
  t.equal(dq.code, 0, dq.stderr);
  t.match(dq.stdout, /6/);
  phase = 'up';

  await waitFor(async () => {
    const x = await targetStatus(crowd, 'api');
    return x.lag <= 0 && x.retrying === 0 && x.in_flight === 0;
  }, 20_000, 'everything delivered again').catch(async (e) => {
    console.error(JSON.stringify(await targetStatus(crowd, 'api').catch(() => null)), crowd.lines.filter((l) => /fatal|error|invariant/i.test(l)).slice(0, 5).join('\n'));
    throw e;
  });
  await new Promise((r) => setTimeout(r, 300)); // anything sent twice would arrive now
  const twice = ids.filter((id) => (ok.get(id) ?? 0) > 1);
  const never = ids.filter((id) => (ok.get(id) ?? 0) === 0);
  t.same(twice, [], 'no id delivered twice after the rewind');
  t.same(never, [], 'every id delivered again after the rewind');
  s = await targetStatus(crowd, 'api');
  t.equal(s.lag, 0, 'lag 0');
  t.equal(s.dead_letters, 0);
  const f = await checkIdentity(t, crowd, 'api');
  t.equal(f.accepted, COUNT + COUNT - 6, `accepted ${f.accepted}: ${COUNT} + ${COUNT - 6} resent by the rewind (the 6 replayed dead letters were counted once already)`);
  t.equal(f.delivered, f.accepted, 'delivered = accepted');
});
