// The upstream request a stored envelope turns into: headers dropped and added, path + query.
import t from 'tap';
import { HttpSink, upstreamHeaders } from '../../../src/delivery/sinks/http';
import { routeOf, encodeEnvelope, decodeEnvelope, reencodeEnvelope, type Envelope } from '../../../src/log/codec';

const env: Envelope = {
  id: '0190c0de-0000-7000-8000-000000000001',
  offset: 42,
  received_at: Date.parse('2026-11-27T10:00:00.123Z'),
  route: 'leads',
  method: 'POST',
  path: '/leads/new',
  query: 'a=1&b=2',
  headers: [
    ['host', 'ingest.example.com'],
    ['content-type', 'application/json'],
    ['x-forwarded-for', '10.0.0.1'],
    ['proxy-connection', 'keep-alive'],
    ['keep-alive', 'timeout=5'],
    ['upgrade', 'h2c'],
    ['te', 'trailers'],
    ['idempotency-key', 'from-client'],
    ['crowd-attempt', '7'],
    ['x-multi', 'one'],
    ['x-multi', 'two'],
  ],
  remote: '192.0.2.7',
  body: Buffer.from('{}'),
};

t.test('upstreamHeaders', async (t) => {
  const flat = upstreamHeaders(env, 3);
  const pairs: [string, string][] = [];
  for (let i = 0; i < flat.length; i += 2) pairs.push([flat[i]!, flat[i + 1]!]);
  const names = pairs.map((p) => p[0]);
  for (const gone of ['host', 'proxy-connection', 'keep-alive', 'upgrade', 'te']) t.notOk(names.includes(gone), `${gone} dropped`);
  t.same(pairs.filter((p) => p[0] === 'x-multi').map((p) => p[1]), ['one', 'two'], 'repeated headers kept in order');
  const one = (n: string) => {
    const all = pairs.filter((p) => p[0] === n);
    t.equal(all.length, 1, `one ${n}`);
    return all[0]?.[1];
  };
  t.equal(one('idempotency-key'), env.id, 'the client value is replaced by the id');
  t.equal(one('crowd-id'), env.id);
  t.equal(one('crowd-attempt'), '3');
  t.equal(one('crowd-received-at'), '2026-11-27T10:00:00.123Z');
  t.equal(one('x-forwarded-for'), '10.0.0.1, 192.0.2.7');
  t.equal(one('x-forwarded-proto'), 'http');
  t.equal(one('x-forwarded-host'), 'ingest.example.com');
  t.equal(one('content-type'), 'application/json');
});

t.test('request path: target path prefix, request path, both queries', async (t) => {
  const base = { name: 'x', type: 'http' as const, concurrency: 1, rate: 0, timeout: 1000, ordered: false, max_read_ahead_bytes: 1 << 20,  max_lag_bytes: 0, retry: { base: 1, max: 1, max_age: 1, permanent: [] } };
  const cases: [string, Partial<Envelope>, string][] = [
    ['http://127.0.0.1:1', {}, '/leads/new?a=1&b=2'],
    ['http://127.0.0.1:1/', { query: '' }, '/leads/new'],
    ['http://127.0.0.1:1/api/', {}, '/api/leads/new?a=1&b=2'],
    ['http://127.0.0.1:1/api?key=k', {}, '/api/leads/new?key=k&a=1&b=2'],
    ['http://127.0.0.1:1/api//', {}, '/api/leads/new?a=1&b=2'],
    ['http://127.0.0.1:1//', { query: '' }, '/leads/new'],
  ];
  for (const [url, over, expected] of cases) {
    const sink = new HttpSink({ ...base, url });
    t.equal(sink.requestPath({ ...env, ...over }), expected, url);
    await sink.close();
  }
});

t.test('routeOf reads the route without decoding; reencode round-trips', async (t) => {
  for (const route of ['leads', 'a', 'r'.repeat(31), 'r'.repeat(32), 'r'.repeat(300), 'lé-ads']) {
    const bytes = encodeEnvelope({ ...env, route, headerList: ['a', 'b'] }, 2 ** 40);
    t.equal(routeOf(bytes), route, `route of ${route.length} chars`);
  }
  const back = decodeEnvelope(reencodeEnvelope(env));
  t.same({ ...back, body: Buffer.from(back.body) }, { ...env, body: Buffer.from(env.body) });
});
