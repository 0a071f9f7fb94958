// Delivery to real loopback upstreams: fan-out with the specified request (path, query,
// body, headers, the same Idempotency-Key on every attempt), 503 with and without
// Retry-After, an upstream that is down during a burst, and the per-target accounting
// (accepted = delivered + dead + purged + lag) at every scrape.
import t from 'tap';
import { Crowd } from '../helpers/crowd';
import { checkIdentity, post, targetStatus } from '../helpers/delivery';
import { request } from '../helpers/http';
import { Upstream, waitFor } from '../helpers/upstream';

const fast = { base: '20ms', max: '200ms' };

t.test('fan-out: each target gets every request once, as specified, with a stable Idempotency-Key', async (t) => {
  // a: the first attempt of every request gets 503, the second 200. b: always 200.
  const a = await Upstream.start(0, (r) => ({ status: r.headers['crowd-attempt'] === '1' ? 503 : 200 }));
  const b = await Upstream.start();
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['a', 'b'] }],
      targets: [
        { name: 'a', url: a.url('/in'), retry: fast },
        { name: 'b', url: b.url(), retry: fast },
      ],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await a.close();
    await b.close();
  });

  const r = await request(crowd.url('/leads?src=test&x=%20y'), {
    body: Buffer.from([0x7b, 0x00, 0xff, 0x7d]),
    headers: {
      'content-type': 'application/octet-stream',
      'x-custom': 'kept',
      'x-forwarded-for': '10.0.0.1',
      'keep-alive': 'timeout=5',
      'proxy-authorization': 'Basic c2VjcmV0',
      'idempotency-key': 'client-chosen',
      'crowd-attempt': '99',
    },
  });
  t.equal(r.status, 200);
  const id = JSON.parse(r.body).id;
  const ids = [id, ...(await post(crowd, 30))];

  await a.until(() => a.ids().size === ids.length && a.received.length >= 2 * ids.length, 20_000, 'a: every request twice');
  await b.until(() => b.ids().size === ids.length, 20_000, 'b: every request');
  t.same([...a.ids()].sort(), [...ids].sort(), 'a received every id');
  t.same([...b.ids()].sort(), [...ids].sort(), 'b received every id');
  t.equal(b.received.length, ids.length, 'b received each request exactly once');

  for (const up of [a, b]) {
    const first = up.received.find((x) => x.headers['crowd-id'] === id)!;
    t.equal(first.method, 'POST');
    t.equal(first.url, up === a ? '/in/leads?src=test&x=%20y' : '/leads?src=test&x=%20y', 'target path + request path and query');
    t.same([...first.body], [0x7b, 0x00, 0xff, 0x7d], 'body bytes unchanged');
    const h = first.headers;
    t.equal(h['content-type'], 'application/octet-stream');
    t.equal(h['x-custom'], 'kept');
    t.equal(h['idempotency-key'], id, 'Idempotency-Key is the request id');
    t.equal(h['crowd-id'], id);
    t.equal(h['x-forwarded-for'], '10.0.0.1, 127.0.0.1', 'X-Forwarded-For appends the client address');
    t.equal(h['x-forwarded-proto'], 'http');
    t.equal(h['x-forwarded-host'], `127.0.0.1:${crowd.port}`, 'X-Forwarded-Host is the original Host');
    t.equal(h.host, `127.0.0.1:${up.port}`, 'Host is the upstream');
    t.notOk('keep-alive' in h, 'hop-by-hop keep-alive removed');
    t.notOk('proxy-authorization' in h, 'proxy-* removed');
    t.equal(h['content-length'], '4');
    const receivedAt = Date.parse(String(h['crowd-received-at']));
    t.ok(Math.abs(receivedAt - Date.now()) < 60_000, `Crowd-Received-At is a date: ${h['crowd-received-at']}`);
    t.equal(up.received.filter((x) => x.headers['crowd-id'] === id).map((x) => x.rawHeaders.filter((_, i, all) => i % 2 === 0 && all[i]!.toLowerCase() === 'idempotency-key').length).join(), up === a ? '1,1' : '1', 'one Idempotency-Key header per attempt');
  }
  // Every id went to a twice: attempts 1 and 2, the same key both times.
  for (const x of ids) {
    const attempts = a.received.filter((r) => r.headers['crowd-id'] === x);
    t.same(attempts.map((r) => r.headers['crowd-attempt']), ['1', '2'], `attempts of ${x}`);
    t.same(new Set(attempts.map((r) => r.headers['idempotency-key'])), new Set([x]), 'same key on every attempt');
  }
  await waitFor(async () => (await targetStatus(crowd, 'a')).lag === 0 && (await targetStatus(crowd, 'b')).lag === 0, 10_000, 'lag 0');
  for (const name of ['a', 'b']) {
    const f = await checkIdentity(t, crowd, name);
    t.equal(f.delivered, ids.length, `${name}: delivered_total counts each request once`);
    t.equal(f.lag, 0);
  }
  const s = await targetStatus(crowd, 'a');
  t.equal(s.offset, ids.length, 'offset passed every entry');
  await waitFor(async () => (await targetStatus(crowd, 'a')).committed_offset === ids.length, 5000, 'offset committed');
});

t.test('503 for a while, with and without Retry-After, then 200: everything arrives, backoff shows', async (t) => {
  let failing = true;
  const withRA = await Upstream.start(0, () => (failing ? { status: 503, headers: { 'retry-after': '1' } } : { status: 200 }));
  const without = await Upstream.start(0, () => ({ status: failing ? 503 : 200 }));
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['ra', 'plain'] }],
      targets: [
        { name: 'ra', url: withRA.url(), concurrency: 4, retry: { base: '50ms', max: '5s' } },
        { name: 'plain', url: without.url(), concurrency: 4, retry: { base: '50ms', max: '300ms' } },
      ],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await withRA.close();
    await without.close();
  });
  const ids = await post(crowd, 20);
  await waitFor(() => withRA.received.length >= 4 && without.received.length >= 4, 10_000, 'first attempts');
  await waitFor(async () => (await targetStatus(crowd, 'ra')).last_error !== null, 5000, 'first 503 seen');
  const ra = await targetStatus(crowd, 'ra');
  t.equal(ra.state, 'backoff', 'Retry-After: the target waits (state backoff)');
  t.ok(ra.next_attempt_at, 'next attempt time shown');
  t.equal(ra.last_error?.status, 503);
  const plain = await targetStatus(crowd, 'plain');
  t.match(plain.state, /^(backoff|circuit-open)$/, `without Retry-After: ${plain.state}`);
  t.ok(plain.lag > 0);
  await checkIdentity(t, crowd, 'ra');
  await checkIdentity(t, crowd, 'plain');
  await new Promise((r) => setTimeout(r, 1500));
  failing = false;
  const failedUntil = Date.now();
  await withRA.until(() => new Set(withRA.received.map((r) => r.headers['crowd-id'])).size === ids.length, 20_000, 'ra: every id');
  await without.until(() => new Set(without.received.map((r) => r.headers['crowd-id'])).size === ids.length, 20_000, 'plain: every id');
  await waitFor(async () => (await targetStatus(crowd, 'ra')).lag === 0 && (await targetStatus(crowd, 'plain')).lag === 0, 20_000, 'both drained');
  // Retry-After: 1 means nothing is sent for ~1 s after a 503 that asked for it: requests
  // arrive in bursts (4 in flight) and the bursts are about 1 s apart.
  const times = withRA.received.map((r) => r.at).sort((x, y) => x - y);
  let minGapAfter503 = Infinity;
  for (let i = 0; i < times.length; i++) {
    if (withRA.received.find((r) => r.at === times[i])!.at > failedUntil) break;
    const next = times.find((x) => x > times[i]! + 100);
    if (next !== undefined) minGapAfter503 = Math.min(minGapAfter503, next - times[i]!);
  }
  t.ok(minGapAfter503 >= 900 && minGapAfter503 < 5000, `attempts after a 503 with Retry-After: 1 wait about 1 s (smallest gap between bursts ${minGapAfter503} ms)`);
  const s = await targetStatus(crowd, 'ra');
  t.equal(s.state, 'ok');
  t.equal(s.delivered, ids.length);
  await checkIdentity(t, crowd, 'ra');
  await checkIdentity(t, crowd, 'plain');
});

t.test('upstream down (connection refused) during a burst, then up: everything arrives, the breaker limits attempts', async (t) => {
  const up = await Upstream.start();
  const port = up.port;
  await up.close(); // nothing listens on `port` now
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['down'] }],
      targets: [{ name: 'down', url: `http://127.0.0.1:${port}`, concurrency: 8, retry: { base: '100ms', max: '400ms' } }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  const ids = await post(crowd, 200, { parallel: 16 });
  await new Promise((r) => setTimeout(r, 2000));
  const s = await targetStatus(crowd, 'down');
  t.equal(s.state, 'circuit-open', 'breaker open while the upstream is down');
  t.equal(s.lag, 200, 'nothing delivered, nothing lost');
  t.match(s.last_error?.message, /ECONNREFUSED/);
  const f = await checkIdentity(t, crowd, 'down');
  t.equal(f.accepted, 200);
  const metrics = (await request(crowd.adminUrl('/metrics'), { method: 'GET' })).body;
  const errors = Number(/^crowd_delivery_attempts_total\{target="down",outcome="error"\} (\d+)$/m.exec(metrics)?.[1] ?? 0);
  // 8 in flight when it went down, then at most one probe per 100 ms (retry.base) for 2 s.
  t.ok(errors > 0 && errors <= 8 + 20, `a dead upstream costs a probe per backoff, not an attempt per request: ${errors} attempts in 2 s for 200 requests`);
  await up.listen(port);
  // The accounting holds in every scrape while the backlog drains.
  let scrapes = 0;
  await waitFor(async () => {
    const f = await checkIdentity(t, crowd, 'down');
    scrapes++;
    return f.lag === 0;
  }, 20_000, 'lag 0 after the upstream came back');
  t.ok(scrapes >= 2, `${scrapes} scrapes during the drain`);
  await up.until(() => up.ids().size === ids.length, 5000, 'every id after the upstream came back');
  t.same([...up.ids()].sort(), [...ids].sort());
  t.equal((await targetStatus(crowd, 'down')).state, 'ok');
  const g = await checkIdentity(t, crowd, 'down');
  t.equal(g.delivered, 200);
});

t.test('requests of other routes are not sent to a target; store-only routes keep working', async (t) => {
  const up = await Upstream.start();
  const crowd = new Crowd({
    config: {
      routes: [
        { name: 'leads', path: '/leads', targets: ['x'] },
        { name: 'other', path: '/other' },
      ],
      targets: [{ name: 'x', url: up.url() }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  await post(crowd, 5, { path: '/other', prefix: 'other-' });
  const ids = await post(crowd, 5);
  await post(crowd, 5, { path: '/other', prefix: 'other-' });
  await up.until(() => up.received.length >= 5, 10_000, 'the 5 leads');
  await waitFor(async () => (await targetStatus(crowd, 'x')).offset === 15, 10_000, 'offset passes the other route');
  t.equal(up.received.length, 5);
  t.same([...up.ids()].sort(), [...ids].sort());
  const f = await checkIdentity(t, crowd, 'x');
  t.equal(f.accepted, 5, 'accepted counts only the target\'s routes');
  t.equal(f.lag, 0);
});

t.test('a probe answered with Retry-After does not stall the breaker', async (t) => {
  const up = await Upstream.start();
  const port = up.port;
  await up.close();
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: `http://127.0.0.1:${port}`, concurrency: 4, retry: { base: '50ms', max: '2s' } }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  const ids = await post(crowd, 10);
  await waitFor(async () => (await targetStatus(crowd, 'api')).state === 'circuit-open', 10_000, 'circuit open');
  // Back, but busy at first: the probe gets 503 + Retry-After: 1, later requests 200.
  up.respond = (_r, i) => (i < 1 ? { status: 503, headers: { 'retry-after': '1' } } : { status: 200 });
  await up.listen(port);
  await up.until(() => up.ids().size === ids.length, 15_000, 'every id after the busy probe');
  t.equal(up.received[0]!.headers['crowd-id'] !== undefined, true);
  t.ok(up.received[1]!.at - up.received[0]!.at >= 900, `the next attempt waited for Retry-After (${up.received[1]!.at - up.received[0]!.at} ms)`);
  await waitFor(async () => (await targetStatus(crowd, 'api')).state === 'ok', 5000, 'closed again');
  await checkIdentity(t, crowd, 'api');
});
