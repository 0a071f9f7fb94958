// Ensures every row of DESIGN.md's ingest-responses table, body limits (Content-Length and
// chunked, at the limit and one byte over), Expect: 100-continue and what is stored, against
// the real bin/crowd on loopback.
import t from 'tap';
import http from 'node:http';
import { Crowd } from '../helpers/crowd';
import { rawExchange, request } from '../helpers/http';
import { ID_PATTERN } from '../../src/log/ids';

const MAX = 1000;
const crowd = new Crowd({
  config: {
    server: { max_body_bytes: MAX },
    routes: [
      { name: 'leads', path: '/leads' },
      { name: 'events', path: '/events/*', methods: ['POST', 'PUT'] },
      { name: 'secure', path: '/secure', token: 'sekret-token-1' },
    ],
  },
});
t.before(() => crowd.start());
t.teardown(() => crowd.stop());

const lastOffset = () => crowd.lastOffset();
const tail = () => crowd.tail();

function byId(entries: any[], id: string): any {
  return entries.find((e) => e.id === id);
}

t.test('stored and flushed: ack_status with id, Crowd-Id, and the request in the log', async (t) => {
  const body = JSON.stringify({ email: 'a@example.com', n: 1 });
  const r = await request(crowd.url('/leads?src=ad&x=1'), { body, headers: { 'content-type': 'application/json', 'x-custom': 'v1', connection: 'keep-alive', 'keep-alive': 'timeout=5', te: 'trailers', 'proxy-authorization': 'p' } });
  t.equal(r.status, 200);
  const j = JSON.parse(r.body);
  t.equal(j.status, 'OK');
  t.match(j.id, ID_PATTERN);
  t.equal(r.headers['crowd-id'], j.id);
  t.equal(r.headers['content-type'], 'application/json');
  const e = byId(await tail(), j.id);
  t.ok(e, 'the acknowledged request is in the log');
  t.equal(e.body, body);
  t.equal(e.method, 'POST');
  t.equal(e.path, '/leads');
  t.equal(e.query, 'src=ad&x=1');
  t.equal(e.route, 'leads');
  t.equal(e.remote, '127.0.0.1');
  t.equal(e.headers['x-custom'], 'v1');
  t.equal(e.headers['content-type'], 'application/json');
  t.match(e.headers.host, /^127\.0\.0\.1:\d+$/);
  for (const hop of ['connection', 'keep-alive', 'te', 'proxy-authorization', 'transfer-encoding', 'content-length']) t.notOk(hop in e.headers, `${hop} is not stored`);
});

t.test('prefix routes and their methods', async (t) => {
  const put = await request(crowd.url('/events/click/1'), { method: 'PUT', body: 'x' });
  t.equal(put.status, 200);
  const e = byId(await tail(), JSON.parse(put.body).id);
  t.equal(e.route, 'events');
  t.equal(e.path, '/events/click/1');
  t.equal(e.method, 'PUT');
});

t.test('no route: 404 with the error shape, nothing stored', async (t) => {
  const before = await lastOffset();
  const r = await request(crowd.url('/nowhere'), { body: 'x' });
  t.equal(r.status, 404);
  t.equal(JSON.parse(r.body).status, 'ERROR');
  t.match(JSON.parse(r.body).error, /no route for path \/nowhere/);
  const reserved = await request(crowd.url('/_crowd/anything'), { body: 'x' });
  t.equal(reserved.status, 404, '/_crowd/ is reserved');
  t.equal(await lastOffset(), before);
});

t.test('method not allowed: 405 with Allow, nothing stored', async (t) => {
  const before = await lastOffset();
  const r = await request(crowd.url('/leads'), { method: 'GET' });
  t.equal(r.status, 405);
  t.equal(r.headers.allow, 'POST');
  t.match(JSON.parse(r.body), { status: 'ERROR', error: /GET is not allowed/ });
  const d = await request(crowd.url('/events/x'), { method: 'DELETE', body: 'x' });
  t.equal(d.status, 405);
  t.equal(d.headers.allow, 'POST, PUT');
  t.equal(await lastOffset(), before);
});

t.test('auth: 401 when the bearer token is missing or wrong, the header is not stored', async (t) => {
  const before = await lastOffset();
  const missing = await request(crowd.url('/secure'), { body: 'x' });
  t.equal(missing.status, 401);
  t.match(JSON.parse(missing.body), { status: 'ERROR' });
  t.match(missing.headers['www-authenticate'], /^Bearer/);
  const wrong = await request(crowd.url('/secure'), { body: 'x', headers: { authorization: 'Bearer sekret-token-2' } });
  t.equal(wrong.status, 401);
  t.equal(await lastOffset(), before, 'nothing stored');
  const ok = await request(crowd.url('/secure'), { body: 'x', headers: { authorization: 'Bearer sekret-token-1' } });
  t.equal(ok.status, 200);
  const e = byId(await tail(), JSON.parse(ok.body).id);
  t.notOk('authorization' in e.headers, "crowd's own token is not stored or forwarded");
});

t.test('body limit with Content-Length: exactly at the limit 200, one byte over 413 and closed', async (t) => {
  const at = await request(crowd.url('/leads'), { body: 'a'.repeat(MAX) });
  t.equal(at.status, 200);
  const e = byId(await tail(), JSON.parse(at.body).id);
  t.equal(e.body.length, MAX);
  const before = await lastOffset();
  const over = await rawExchange(crowd.port, `POST /leads HTTP/1.1\r\nHost: x\r\nContent-Length: ${MAX + 1}\r\n\r\n${'a'.repeat(MAX + 1)}`);
  t.match(over.text, /^HTTP\/1\.1 413 /);
  t.match(over.text, /"status":"ERROR"/);
  t.ok(over.closed, 'the connection is closed');
  t.equal(await lastOffset(), before, 'nothing stored');
});

function chunked(parts: string[]): string {
  return parts.map((p) => `${p.length.toString(16)}\r\n${p}\r\n`).join('') + '0\r\n\r\n';
}

t.test('chunked bodies: stored whole; over the limit while streaming 413 and closed', async (t) => {
  const parts = ['{"part":1,', '"x":"', 'b'.repeat(300), '"}'];
  const ok = await rawExchange(crowd.port, `POST /leads HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n${chunked(parts)}`, 500);
  t.match(ok.text, /^HTTP\/1\.1 200 /);
  const id = /"id":"([^"]+)"/.exec(ok.text)![1]!;
  const e = byId(await tail(), id);
  t.equal(e.body, parts.join(''), 'the chunks are stored as one body');
  t.notOk('transfer-encoding' in e.headers);

  const exact = await rawExchange(crowd.port, `POST /leads HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n${chunked(['c'.repeat(MAX / 2), 'c'.repeat(MAX / 2)])}`, 500);
  t.match(exact.text, /^HTTP\/1\.1 200 /, 'a chunked body of exactly max_body_bytes is taken');

  const before = await lastOffset();
  const over = await rawExchange(crowd.port, `POST /leads HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n${chunked(['d'.repeat(MAX / 2), 'd'.repeat(MAX / 2 + 1)])}`);
  t.match(over.text, /^HTTP\/1\.1 413 /);
  t.ok(over.closed, 'the connection is closed');
  t.equal(await lastOffset(), before, 'nothing stored');
});

t.test('Expect: 100-continue', async (t) => {
  const body = 'e'.repeat(200);
  const r = await new Promise<{ continued: boolean; status: number; body: string }>((resolve, reject) => {
    let continued = false;
    const req = http.request(crowd.url('/leads'), { method: 'POST', agent: false, headers: { expect: '100-continue', 'content-length': String(body.length) } });
    req.on('continue', () => {
      continued = true;
      req.end(body);
    });
    req.on('response', (res) => {
      let b = '';
      res.on('data', (d) => (b += d));
      res.on('end', () => resolve({ continued, status: res.statusCode!, body: b }));
    });
    req.on('error', reject);
    req.setTimeout(5000, () => req.destroy(new Error('timeout')));
  });
  t.ok(r.continued, 'crowd answered 100 Continue');
  t.equal(r.status, 200);
  const e = byId(await tail(), JSON.parse(r.body).id);
  t.equal(e.body, body);
  t.notOk('expect' in e.headers);
});

t.test('keep-alive connections carry many requests', async (t) => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const ids = new Set<string>();
  for (let i = 0; i < 20; i++) {
    const r = await request(crowd.url('/leads'), { body: `k${i}`, agent });
    t.equal(r.status, 200);
    ids.add(JSON.parse(r.body).id);
  }
  t.equal(ids.size, 20, 'every request got its own id');
});

t.test('GET /healthz on the ingest port', async (t) => {
  const r = await request(crowd.url('/healthz'), { method: 'GET' });
  t.equal(r.status, 200);
  t.same(JSON.parse(r.body), { status: 'OK' });
});
