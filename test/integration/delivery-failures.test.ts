// Delivery failures against real loopback upstreams: 400 dead-letters at once and
// `crowd dlq list|replay|purge` act on it; 401 pauses the target without dead-lettering;
// an upstream slower than `timeout` is retried; retry.max_age dead-letters.
import t from 'tap';
import { Crowd, runCli } from '../helpers/crowd';
import { checkIdentity, post, scrape, targetStatus } from '../helpers/delivery';
import { request } from '../helpers/http';
import { Upstream, waitFor } from '../helpers/upstream';

t.test('400: dead-lettered at once; dlq list, replay after the fix, purge', async (t) => {
  let broken = true;
  const up = await Upstream.start(0, (r) => ({ status: broken && r.body.toString().startsWith('bad-') ? 400 : 200 }));
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: up.url(), retry: { base: '20ms', max: '200ms' } }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  const bad = await post(crowd, 6, { prefix: 'bad-', parallel: 1 });
  const good = await post(crowd, 4, { prefix: 'good-' });
  await waitFor(async () => (await targetStatus(crowd, 'api')).lag === 0, 10_000, 'all settled');
  t.equal(up.received.length, 10, 'each 400 was tried once only');
  let s = await targetStatus(crowd, 'api');
  t.equal(s.dead_letters, 6);
  t.equal(s.delivered, 4);
  t.equal(s.last_error?.status, 400);
  let f = await checkIdentity(t, crowd, 'api');
  t.equal(f.dead, 6);
  t.match(f.text, /^crowd_delivery_attempts_total\{target="api",outcome="dead"\} 6$/m);

  const list = await runCli(['dlq', 'list', '--target', 'api', '-c', crowd.configFile]);
  t.equal(list.code, 0, list.stderr);
  const lines = list.stdout.trim().split('\n').map((l) => JSON.parse(l));
  t.equal(lines.length, 6);
  t.same(lines.map((l) => l.request.id), bad, 'the dead letters, oldest first');
  t.match(lines[0], { offset: 1, attempts: 1, status: 400, error: /400/, request: { body: 'bad-0', route: 'leads', method: 'POST', path: '/leads' } });
  const limited = await runCli(['dlq', 'list', '--target', 'api', '--after', '2', '-n', '2', '-c', crowd.configFile]);
  t.same(limited.stdout.trim().split('\n').map((l) => JSON.parse(l).offset), [3, 4], '--after and -n');
  const unknown = await runCli(['dlq', 'list', '--target', 'nope', '-c', crowd.configFile]);
  t.equal(unknown.code, 1);
  t.match(unknown.stderr, /404: no target is named "nope" \(targets: api\)/);

  // Replay two of them while the upstream still refuses: they come back as dead letters.
  const again = await runCli(['dlq', 'replay', '--target', 'api', '--offset', '1,2', '-c', crowd.configFile]);
  t.equal(again.code, 0, again.stderr);
  t.match(again.stdout, /2 dead letters go back to delivery; 4 remain/);
  await waitFor(async () => (await targetStatus(crowd, 'api')).dead_letters === 6 && up.received.length === 12, 10_000, 'tried again and dead again');
  const attempts = (await runCli(['dlq', 'list', '--target', 'api', '-n', '1', '-c', crowd.configFile])).stdout;
  t.equal(JSON.parse(attempts).attempts, 2, 'the attempt count goes on');

  // Fix the upstream, replay all: delivered with the same id (Idempotency-Key) and attempt 3 or 2.
  broken = false;
  const replay = await runCli(['dlq', 'replay', '--target', 'api', '-c', crowd.configFile]);
  t.equal(replay.code, 0, replay.stderr);
  t.match(replay.stdout, /6 dead letters go back to delivery; 0 remain/);
  await waitFor(async () => (await targetStatus(crowd, 'api')).lag === 0 && up.received.length === 18, 10_000, 'replayed ones delivered');
  const last = up.received.slice(12);
  t.same(last.map((r) => r.headers['idempotency-key']).sort(), [...bad].sort(), 'the same ids are delivered');
  t.same(last.map((r) => r.headers['crowd-attempt']).sort(), ['2', '2', '2', '2', '3', '3']);
  s = await targetStatus(crowd, 'api');
  t.equal(s.dead_letters, 0);
  t.equal(s.delivered, 10);
  f = await checkIdentity(t, crowd, 'api');
  t.equal(f.delivered, 10);

  // Purge: new dead letters go away for good.
  broken = true;
  await post(crowd, 3, { prefix: 'bad-again-' });
  await waitFor(async () => (await targetStatus(crowd, 'api')).dead_letters === 3, 10_000, '3 new dead letters');
  const one = await runCli(['dlq', 'purge', '--target', 'api', '--offset', '11', '-c', crowd.configFile]);
  t.match(one.stdout, /1 dead letters purged; 2 remain/);
  const purge = await runCli(['dlq', 'purge', '--target', 'api', '-c', crowd.configFile]);
  t.equal(purge.code, 0, purge.stderr);
  t.match(purge.stdout, /2 dead letters purged; 0 remain/);
  const empty = await runCli(['dlq', 'list', '--target', 'api', '-c', crowd.configFile]);
  t.equal(empty.stdout, '');
  t.match(empty.stderr, /no dead letters/);
  f = await checkIdentity(t, crowd, 'api');
  t.equal(f.purged, 3);
  t.equal(f.dead, 0);
  t.same(good.length, 4);

  // The same through the admin API.
  const api = await request(crowd.adminUrl('/targets/api/dlq'), { method: 'GET' });
  t.same(JSON.parse(api.body), { target: 'api', dead_letters: [] });
  const badParam = await request(crowd.adminUrl('/targets/api/dlq/purge?offset=x'), { method: 'POST' });
  t.equal(badParam.status, 400);
  t.match(JSON.parse(badParam.body).error, /offset: "x" is not a whole number/);
});

t.test('dead letters survive a restart (kill -9) and keep their details', async (t) => {
  const up = await Upstream.start(0, () => ({ status: 422 }));
  const crowd = new Crowd({
    config: { routes: [{ name: 'leads', path: '/leads', targets: ['api'] }], targets: [{ name: 'api', url: up.url() }] },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  const ids = await post(crowd, 3);
  await waitFor(async () => (await targetStatus(crowd, 'api')).dead_letters === 3, 10_000, 'dead letters');
  await waitFor(async () => (await targetStatus(crowd, 'api')).committed_offset === 3, 10_000, 'committed');
  await crowd.kill9();
  await crowd.start();
  const s = await targetStatus(crowd, 'api');
  t.equal(s.dead_letters, 3);
  t.equal(s.lag, 0);
  t.equal(up.received.length, 3, 'not sent again after the restart');
  const list = await runCli(['dlq', 'list', '--target', 'api', '-c', crowd.configFile]);
  t.same(list.stdout.trim().split('\n').map((l) => JSON.parse(l).request.id), ids);
  t.match(JSON.parse(list.stdout.split('\n')[0]!), { status: 422, attempts: 1 });
  await checkIdentity(t, crowd, 'api');
});

t.test('401: the target pauses, nothing is dead-lettered; resume after the credentials are fixed', async (t) => {
  let status = 401;
  const up = await Upstream.start(0, () => ({ status }));
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: up.url(), concurrency: 2, retry: { base: '20ms', max: '1s' } }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  const ids = await post(crowd, 20);
  await waitFor(async () => (await targetStatus(crowd, 'api')).state === 'paused', 10_000, 'paused');
  await new Promise((r) => setTimeout(r, 1500));
  const s = await targetStatus(crowd, 'api');
  t.equal(s.state, 'paused');
  t.equal(s.dead_letters, 0, 'nothing dead-lettered');
  t.equal(s.lag, 20);
  t.equal(s.last_error?.status, 401);
  t.ok(up.received.length <= 2 + 3, `paused: one probe per retry.max (${up.received.length} attempts in ~1.5 s)`);
  t.ok(crowd.lines.some((l) => l.includes('"event":"target_paused"') && l.includes('"level":"error"')), 'an error line says the target paused');
  await checkIdentity(t, crowd, 'api');
  status = 200;
  await up.until(() => up.ids().size === 20, 10_000, 'every id after the fix');
  t.same([...up.ids()].sort(), [...ids].sort());
  await waitFor(async () => (await targetStatus(crowd, 'api')).state === 'ok', 5000, 'resumed');
  t.ok(crowd.lines.some((l) => l.includes('"event":"target_resumed"')));
  const f = await checkIdentity(t, crowd, 'api');
  t.equal(f.dead, 0);
  t.equal(f.delivered, 20);

  // 403 pauses too; the admin resume endpoint lifts it at once.
  status = 403;
  await post(crowd, 2);
  await waitFor(async () => (await targetStatus(crowd, 'api')).state === 'paused', 10_000, 'paused by 403');
  status = 200;
  const r = await request(crowd.adminUrl('/targets/api/resume'), { method: 'POST' });
  t.same(JSON.parse(r.body), { target: 'api', resumed: true });
  await waitFor(async () => (await targetStatus(crowd, 'api')).lag === 0, 3000, 'delivered right after resume');
});

t.test('an upstream slower than timeout: the attempt times out and is retried', async (t) => {
  const up = await Upstream.start(0, (_r, i) => ({ status: 200, delayMs: i < 2 ? 1500 : 0 }));
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['slow'] }],
      targets: [{ name: 'slow', url: up.url(), concurrency: 1, timeout: '300ms', retry: { base: '20ms', max: '100ms' } }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  const [id] = await post(crowd, 1);
  await waitFor(async () => (await targetStatus(crowd, 'slow')).lag === 0, 10_000, 'delivered');
  const attempts = up.received.filter((r) => r.headers['crowd-id'] === id);
  t.same(attempts.map((r) => r.headers['crowd-attempt']), ['1', '2', '3'], 'two timeouts, then delivered');
  t.ok(attempts[1]!.at - attempts[0]!.at >= 280, `the first attempt was given up after the timeout (${attempts[1]!.at - attempts[0]!.at} ms)`);
  const f = await scrape(crowd, 'slow');
  t.match(f.text, /^crowd_delivery_attempts_total\{target="slow",outcome="timeout"\} 2$/m);
  t.match(f.text, /^crowd_delivery_attempts_total\{target="slow",outcome="delivered"\} 1$/m);
  t.match((await targetStatus(crowd, 'slow')).last_error?.message, /TIMEOUT/);
});

t.test('older than retry.max_age: dead-lettered after its last failed attempt', async (t) => {
  const up = await Upstream.start(0, () => ({ status: 500 }));
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: up.url(), retry: { base: '50ms', max: '100ms', max_age: '600ms' } }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  await post(crowd, 2);
  await waitFor(async () => (await targetStatus(crowd, 'api')).dead_letters === 2, 10_000, 'dead after max_age');
  t.ok(up.received.length >= 4, `retried until max_age (${up.received.length} attempts)`);
  const list = await runCli(['dlq', 'list', '--target', 'api', '-c', crowd.configFile]);
  const d = JSON.parse(list.stdout.split('\n')[0]!);
  t.match(d.error, /older than retry\.max_age/);
  t.equal(d.status, 500);
  t.ok(d.attempts >= 2);
  const f = await checkIdentity(t, crowd, 'api');
  t.equal(f.lag, 0);
});

t.test('the attempt count survives a restart (kill -9)', async (t) => {
  // Retry-After: 1 makes the attempts exactly 1 s apart, so the kill lands between two.
  const up = await Upstream.start(0, () => ({ status: 503, headers: { 'retry-after': '1' } }));
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: up.url(), retry: { base: '100ms', max: '5s' } }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  const [id] = await post(crowd, 1);
  await up.until(() => up.received.length >= 2, 10_000, 'two attempts');
  // Parked (offset passed, retry record written) before the kill.
  await waitFor(async () => {
    const s = await targetStatus(crowd, 'api');
    return s.committed_offset === 1 && s.retrying === 1;
  }, 5000, 'parked and committed');
  await new Promise((r) => setTimeout(r, 300)); // the commit after the second attempt
  const before = up.received.length;
  t.equal(before, 2);
  await crowd.kill9();
  up.respond = () => ({ status: 200 });
  await crowd.start();
  await up.until(() => up.received.length > before, 10_000, 'the next attempt after the restart');
  const next = up.received[before]!;
  t.equal(next.headers['crowd-id'], id);
  t.equal(Number(next.headers['crowd-attempt']), before + 1, 'counting goes on from where it was');
  await waitFor(async () => (await targetStatus(crowd, 'api')).lag === 0, 5000, 'delivered');
  await checkIdentity(t, crowd, 'api');
});
