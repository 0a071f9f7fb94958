// Upstreams that misbehave at the HTTP level (raw `net` servers written for each case): a bad
// upstream must never look delivered, and a valid answer must not look like no answer.
import t, { type Test } from 'tap';
import { Crowd } from '../helpers/crowd';
import { checkIdentity, post, scrape, targetStatus } from '../helpers/delivery';
import { rawExchange } from '../helpers/http';
import { LoadClient } from '../helpers/load';
import { sleep } from '../helpers/proc';
import { RawUpstream, emptyAnswer, type RawHandler } from '../helpers/raw-upstream';
import { Upstream, waitFor } from '../helpers/upstream';

const OK = emptyAnswer(200, 'OK');

async function setup(t: Test, handle: RawHandler, target: Record<string, unknown> = {}, routes: Record<string, unknown>[] = []): Promise<{ up: RawUpstream; crowd: Crowd }> {
  const up = await RawUpstream.start(handle);
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }, ...routes],
      targets: [{ name: 'api', url: up.url(), concurrency: 4, timeout: '10s', retry: { base: '10ms', max: '100ms' }, ...target }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  return { up, crowd };
}

async function settled(crowd: Crowd, timeoutMs: number, what: string): Promise<void> {
  await waitFor(async () => (await targetStatus(crowd, 'api')).lag === 0, timeoutMs, what);
}

t.test('a stray 200 after a 503 on the same connection is not the next request\'s answer', async (t) => {
  const accepted = new Set<string>();
  const tries = new Map<string, number>();
  const { up, crowd } = await setup(t, (req) => {
    const sock = req.conn.socket;
    // The answer owed from before (written late, as the next request arrives): a stray 200.
    if (req.conn.state.owe) sock.write(OK);
    const n = (tries.get(req.id) ?? 0) + 1;
    tries.set(req.id, n);
    if (n === 1) {
      sock.write(emptyAnswer(503, 'Service Unavailable'));
      req.conn.state.owe = true;
    } else {
      req.conn.state.owe = false;
      accepted.add(req.id);
      sock.write(OK);
    }
  });
  const ids = await post(crowd, 40, { parallel: 4 });
  await settled(crowd, 15_000, 'all settled');
  const s = await targetStatus(crowd, 'api');
  t.equal(s.dead_letters, 0);
  t.same(ids.filter((id) => !accepted.has(id)), [], 'every id counted delivered was answered 2xx by the upstream');
  for (const id of ids) t.equal(tries.get(id), 2, `${id}: refused once, accepted once`);
  await checkIdentity(t, crowd, 'api');
  t.ok(up.connections >= 40, `each 503 closed its connection (${up.connections} connections)`);
});

t.test('2xx answers keep their connection', async (t) => {
  const { up, crowd } = await setup(t, (req) => req.conn.socket.write(OK), { concurrency: 2 });
  await post(crowd, 30, { parallel: 2 });
  await settled(crowd, 10_000, 'all delivered');
  t.equal(up.received.length, 30);
  t.ok(up.connections <= 2, `${up.connections} connections for 30 requests at concurrency 2`);
});

t.test('a 200 whose body never ends is delivered at once, not after the timeout', async (t) => {
  const { up, crowd } = await setup(t, (req) => req.conn.socket.write('HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n{"partial":'), { concurrency: 3 });
  const started = Date.now();
  await post(crowd, 6, { parallel: 6 });
  await settled(crowd, 8_000, 'all delivered');
  const took = Date.now() - started;
  t.ok(took < 5_000, `6 requests at concurrency 3 delivered in ${took} ms (timeout 10 s)`);
  t.equal(up.received.length, 6, 'each sent once');
  t.equal((await targetStatus(crowd, 'api')).delivered, 6);
});

t.test('an unsolicited 100 Continue before the 200 is accepted', async (t) => {
  let n = 0;
  const { up, crowd } = await setup(t, (req) => {
    const sock = req.conn.socket;
    // Alternately in one write and in separate writes (the 100 alone, then the answer).
    if (n++ % 2 === 0) sock.write(`HTTP/1.1 100 Continue\r\n\r\n${OK}`);
    else {
      sock.write('HTTP/1.1 100 Continue\r\nx-note: early\r\n\r\n');
      setTimeout(() => sock.write(OK), 20);
    }
  });
  const ids = await post(crowd, 8, { parallel: 4 });
  await settled(crowd, 5_000, 'all delivered');
  t.same([...up.countById().values()], ids.map(() => 1), 'each id sent once');
  t.equal((await targetStatus(crowd, 'api')).delivered, 8);
});

t.test('a 100 ended by a bare LF, then a 500 whose body looks like a 200: never delivered', async (t) => {
  const body = 'HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n';
  const { crowd } = await setup(t, (req) => {
    req.conn.socket.write(`HTTP/1.1 100 Continue\n\nHTTP/1.1 500 Internal Server Error\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
  });
  await post(crowd, 3, { parallel: 3 });
  await sleep(1500);
  const s = await targetStatus(crowd, 'api');
  t.equal(s.delivered, 0, `nothing counts as delivered (${s.delivered})`);
  t.equal(s.lag, 3, 'all three still owed');
});

t.test('answer headers over 16 KiB are read; far too large ones dead-letter, once', async (t) => {
  const big = 'x'.repeat(20 * 1024);
  const huge = 'x'.repeat(1024 * 1024 + 10);
  const { up, crowd } = await setup(t, (req) => {
    const h = req.body.toString().startsWith('huge-') ? huge : big;
    req.conn.socket.write(emptyAnswer(200, 'OK', [`x-big: ${h}`]));
  });
  const ids = await post(crowd, 4, { prefix: 'big-' });
  await settled(crowd, 5_000, 'big headers delivered');
  t.same(ids.map((id) => up.countById().get(id)), [1, 1, 1, 1], 'each id sent once');
  t.equal((await targetStatus(crowd, 'api')).delivered, 4);
  await post(crowd, 2, { prefix: 'huge-' });
  await settled(crowd, 5_000, 'huge headers settled');
  const s = await targetStatus(crowd, 'api');
  t.equal(s.dead_letters, 2, 'dead-lettered');
  t.match(s.last_error?.message, /header/i, 'the error says why');
  t.equal(up.received.length, 6, 'not retried');
});

t.test('3xx: the target pauses with the Location in last_error', async (t) => {
  const { up, crowd } = await setup(t, (req) => req.conn.socket.write(emptyAnswer(301, 'Moved Permanently', ['location: http://elsewhere.example/in'])), { retry: { base: '10ms', max: '10s' } });
  await post(crowd, 5);
  await waitFor(async () => (await targetStatus(crowd, 'api')).state === 'paused', 5_000, 'paused');
  await sleep(300);
  const s = await targetStatus(crowd, 'api');
  t.equal(s.state, 'paused');
  t.equal(s.dead_letters, 0, 'nothing dead-lettered');
  t.equal(s.last_error?.status, 301);
  t.match(s.last_error?.message, /http:\/\/elsewhere\.example\/in/, 'the Location is shown');
  t.ok(up.received.length <= 4, `few attempts (${up.received.length})`);
  const line = crowd.lines.find((l) => l.includes('"event":"target_paused"'));
  t.ok(line, 'a log line says the target paused');
  t.match(line, /elsewhere\.example/, 'with the Location');
});

t.test('SIGSTOP/SIGCONT with answers waiting in the socket buffers: no timeouts, nothing sent twice', async (t) => {
  // The first 16 answers are held until crowd is stopped; anything later is answered at once.
  const held: (() => void)[] = [];
  let prompt = false;
  const { up, crowd } = await setup(t, (req) => (prompt ? req.conn.socket.write(OK) : held.push(() => req.conn.socket.write(OK))), { concurrency: 16, timeout: '1s' }, [{ name: 'busy', path: '/busy' }]);
  await post(crowd, 16, { parallel: 16 });
  await waitFor(() => held.length === 16, 5_000, '16 requests in flight');
  // Requests to a route without targets keep crowd busy, so that the stop often lands while it runs.
  const load = new LoadClient(() => crowd.url('/busy'), { workers: 4, maxRequests: 1e9, tag: 'busy' }).start();
  await sleep(200);
  const pid = crowd.proc!.pid!;
  process.kill(pid, 'SIGSTOP');
  try {
    prompt = true;
    for (const answer of held) answer();
    await sleep(2_000);
  } finally {
    process.kill(pid, 'SIGCONT');
  }
  await load.stop();
  await settled(crowd, 5_000, 'all delivered');
  await sleep(300);
  t.equal(up.received.length, 16, 'nothing sent twice');
  const f = await scrape(crowd, 'api');
  t.notMatch(f.text, /outcome="timeout"\} [1-9]/, 'no attempt counted as a timeout');
  t.equal(f.delivered, 16);
});

t.test('headers named in Connection are not forwarded', async (t) => {
  const up = await Upstream.start();
  const crowd = new Crowd({ config: { routes: [{ name: 'leads', path: '/leads', targets: ['api'] }], targets: [{ name: 'api', url: up.url() }] } });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  const r = await rawExchange(crowd.port, 'POST /leads HTTP/1.1\r\nhost: x\r\nx-secret: s3\r\nconnection: close, X-Secret\r\nconnection: x-other\r\nx-other: o\r\nx-keep: k\r\ncontent-length: 2\r\n\r\n{}');
  t.match(r.text, /^HTTP\/1\.1 200/);
  await up.until(() => up.received.length === 1, 5_000, 'delivered');
  const names = up.received[0]!.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
  t.notOk(names.includes('x-secret'), 'x-secret (named in Connection) dropped');
  t.notOk(names.includes('x-other'), 'x-other (named in a second Connection line) dropped');
  t.ok(names.includes('x-keep'), 'other headers kept');
});
