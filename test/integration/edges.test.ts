// Ensures crowd never acknowledges a request it would alter or could never send: header values
// outside printable ASCII, paths with dot segments, backslashes, fragments or non-ASCII bytes,
// and ambiguous framing get 400 naming what is wrong and where, and nothing is stored. Also
// HEAD answers without a body, the 413 lingers so a client that wrote its whole body reads it,
// long paths are not echoed whole, and the front end's documented limits (requests uWebSockets.js
// drops without an answer) store nothing. Raw sockets, against the real bin/crowd; each exchange
// waits 1.5 s of silence (2 s for large headers) so that a loaded machine cannot cut an answer short.
import t from 'tap';
import net from 'node:net';
import { Crowd } from '../helpers/crowd';
import { rawExchange } from '../helpers/http';
import { Upstream } from '../helpers/upstream';

const MAX = 1000;
const crowd = new Crowd({
  config: {
    server: { max_body_bytes: MAX },
    routes: [
      { name: 'leads', path: '/leads' },
      { name: 'events', path: '/events/*', methods: ['POST', 'PUT'] },
    ],
  },
});
t.before(() => crowd.start());
t.teardown(() => crowd.stop());

const lastOffset = () => crowd.lastOffset();
const tail = () => crowd.tail();

/** A request with raw (latin1) bytes: request line, extra header lines, body. */
function raw(line: string, headers: string[], body = ''): Buffer {
  return Buffer.from(`${line}\r\nHost: x\r\n${headers.map((h) => `${h}\r\n`).join('')}\r\n${body}`, 'latin1');
}

function post(path: string, headers: string[] = [], body = 'x'): Buffer {
  return raw(`POST ${path} HTTP/1.1`, [...headers, `Content-Length: ${body.length}`], body);
}

function errorOf(text: string): string {
  const i = text.indexOf('\r\n\r\n');
  return JSON.parse(text.slice(i + 4)).error;
}

t.test('header values outside printable ASCII: 400 naming the header and the byte, nothing stored', async (t) => {
  const before = await lastOffset();
  const cases: [string, RegExp][] = [
    // UTF-8 é in the middle of the value (undici would send it as latin1 0xE9: changed).
    ['Jos\xc3\xa9 Garc\xc3\xada', /^header "x-t": value has a byte 0xC3 at position 3: only printable ASCII/],
    // latin1 é (legal obs-text that undici refuses to send: dead-lettered at once).
    ['caf\xe9 tail', /^header "x-t": value has a byte of 0x80 or above that is not UTF-8 at position 3: only printable ASCII/],
    ['a\xe2\x82\xacb', /^header "x-t": value has a byte 0xE2 at position 1/],
    ['a\x7fb', /^header "x-t": value has a byte 0x7F at position 1/],
  ];
  const replies = await Promise.all(cases.map(([value]) => rawExchange(crowd.port, post('/leads', [`X-T: ${value}`]), 1500)));
  cases.forEach(([value, error], i) => {
    t.match(replies[i]!.text, /^HTTP\/1\.1 400 /, JSON.stringify(value));
    t.match(errorOf(replies[i]!.text), error);
  });
  t.equal(await lastOffset(), before, 'nothing stored');
  // Printable ASCII, tabs inside and spaces around are fine.
  const ok = await rawExchange(crowd.port, post('/leads', ['X-T:  a\tb ~!  ']), 1500);
  t.match(ok.text, /^HTTP\/1\.1 200 /);
  const e = (await tail()).find((x) => ok.text.includes(x.id));
  t.equal(e.headers['x-t'], 'a\tb ~!');
});

t.test('front end limit: bytes of 0x80 or above at either end of a value are trimmed before crowd sees them', async (t) => {
  // uWebSockets.js 20.30 trims them like whitespace; crowd cannot see them (README, "Front end limits").
  const r = await rawExchange(crowd.port, post('/leads', ['X-T: Jos\xc3\xa9']), 1500);
  t.match(r.text, /^HTTP\/1\.1 200 /);
  const e = (await tail()).find((x) => r.text.includes(x.id));
  t.equal(e.headers['x-t'], 'Jos', 'stored without the trailing bytes');
});

t.test('paths that could leave the route or the target base path, or that cannot be sent as received: 400, nothing stored', async (t) => {
  const before = await lastOffset();
  const cases: [string, RegExp][] = [
    ['/events/../../admin/delete-all', /^path has a dot segment "\.\." at position 8/],
    ['/events/%2e%2e/%2E%2e/admin', /^path has a dot segment "%2e%2e" at position 8/],
    ['/events/.%2E/x', /^path has a dot segment "\.%2E" at position 8/],
    ['/events/./x', /^path has a dot segment "\." at position 8/],
    ['/events/..', /^path has a dot segment "\.\." at position 8/],
    ['/events/a\\..\\..\\admin', /^path has a backslash at position 9/],
    ['/events/x#frag', /^the request target has a fragment \("#"\) at position 9/],
    ['/events/x?q=1#frag', /^the request target has a fragment \("#"\) in the query at position 3/],
    ['/events/caf\xff', /^path has a byte of 0x80 or above that is not UTF-8 at position 11: percent-encode/],
    ['/events/caf\xc3\xa9', /^path has a byte 0xC3 at position 11: percent-encode/],
    ['/events/x?q=caf\xe9', /^query has a byte of 0x80 or above that is not UTF-8 at position 5/],
    ['/events/x?q=a\x7f', /^query has a byte 0x7F at position 3/],
  ];
  const replies = await Promise.all(cases.map(([path]) => rawExchange(crowd.port, post(path), 1500)));
  cases.forEach(([path, error], i) => {
    t.match(replies[i]!.text, /^HTTP\/1\.1 400 /, JSON.stringify(path));
    if (/^HTTP\/1\.1 400 /.test(replies[i]!.text)) t.match(errorOf(replies[i]!.text), error);
  });
  t.equal(await lastOffset(), before, 'nothing stored');
  const ok = await rawExchange(crowd.port, post('/events/a..b/...c/%2e%2ex/%41?x=%2e%2e/../y'), 1500);
  t.match(ok.text, /^HTTP\/1\.1 200 /, 'dots inside a segment and in the query are fine');
  const e = (await tail()).find((x) => ok.text.includes(x.id));
  t.equal(e.path, '/events/a..b/...c/%2e%2ex/%41', 'stored as sent');
  t.equal(e.query, 'x=%2e%2e/../y');
});

t.test('framing headers the header list shows as ambiguous: 400, connection closed, nothing stored', async (t) => {
  const before = await lastOffset();
  // The smuggling case: a 404 that would take 5 bytes and leave "POST /leads" to be parsed next.
  const smuggled = 'POST /leads HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nS';
  const cases: [Buffer, RegExp][] = [
    [raw('POST /nope HTTP/1.1', ['Content-Length: 5', `Content-Length: ${5 + smuggled.length}`], `hello${smuggled}`), /^header "content-length" appears 2 times/],
    [raw('POST /leads HTTP/1.1', ['Content-Length: 5', `Content-Length: ${5 + smuggled.length}`], `hello${smuggled}`), /^header "content-length" appears 2 times/],
    [raw('POST /leads HTTP/1.1', ['Content-Length: 3', 'Content-Length: 3'], 'abc'), /^header "content-length" appears 2 times/],
    [raw('POST /leads HTTP/1.1', ['Content-Length: '], ''), /^header "content-length" is empty/],
    [raw('POST /leads HTTP/1.1', ['Transfer-Encoding: xchunked'], '3\r\nabc\r\n0\r\n\r\n'), /^header "transfer-encoding": "xchunked" is not supported: only "chunked" is accepted/],
    [raw('POST /leads HTTP/1.1', ['Transfer-Encoding: chunked, identity'], '3\r\nabc\r\n0\r\n\r\n'), /^header "transfer-encoding": "chunked, identity" is not supported/],
    [raw('POST /leads HTTP/1.1', ['Transfer-Encoding: chunked', 'Transfer-Encoding: chunked'], '3\r\nabc\r\n0\r\n\r\n'), /^header "transfer-encoding" appears 2 times/],
    [raw('POST /leads HTTP/1.1', ['Host: y', 'Content-Length: 1'], 'a'), /^header "host" appears 2 times/],
    [raw('POST /leads HTTP/1.1', ['Transfer-Encoding: gzip'], 'abc'), /^header "transfer-encoding": "gzip" is not supported/],
  ];
  const replies = await Promise.all(cases.map(([req]) => rawExchange(crowd.port, req, 1500)));
  for (const [i, [req, error]] of cases.entries()) {
    const r = replies[i]!;
    const name = req.toString('latin1').split('\r\n').slice(0, 4).join(' | ');
    t.ok(r.closed, `${name}: the connection is closed`);
    if (req.includes(smuggled)) {
      // uWS closes the connection when it parses the smuggled request before the answer: no answer then.
      t.notMatch(r.text, /HTTP\/1\.1 200 /, `${name}: not acknowledged`);
      t.ok(r.text === '' || (/^HTTP\/1\.1 400 /.test(r.text) && (r.text.match(/HTTP\/1\.1 /g) ?? []).length === 1), `${name}: 400 or no answer: ${JSON.stringify(r.text.slice(0, 60))}`);
      continue;
    }
    t.match(r.text, /^HTTP\/1\.1 400 /, name);
    if (/^HTTP\/1\.1 400 /.test(r.text)) t.match(errorOf(r.text), error);
    t.equal((r.text.match(/HTTP\/1\.1 /g) ?? []).length, 1, 'one answer');
  }
  await new Promise((r) => setTimeout(r, 100));
  t.equal(await lastOffset(), before, 'nothing stored');
  const ok = await rawExchange(crowd.port, raw('POST /leads HTTP/1.1', ['Transfer-Encoding: Chunked'], '3\r\nabc\r\n0\r\n\r\n'), 1500);
  t.match(ok.text, /^HTTP\/1\.1 200 /, 'the transfer coding name is case-insensitive');
});

t.test('HEAD is answered without a body', async (t) => {
  const paths = ['/healthz', '/nowhere', '/leads'];
  const replies = await Promise.all(paths.map((path) => rawExchange(crowd.port, raw(`HEAD ${path} HTTP/1.1`, []), 1500)));
  for (const [i, path] of paths.entries()) {
    const r = replies[i]!;
    t.match(r.text, /^HTTP\/1\.1 (200|404|405) /, path);
    t.ok(r.text.endsWith('\r\n\r\n'), `${path}: nothing after the header block: ${JSON.stringify(r.text.slice(-40))}`);
  }
});

t.test('long paths are not echoed whole in error bodies', async (t) => {
  const path = `/nowhere/${'p'.repeat(20_000)}`;
  const r = await rawExchange(crowd.port, post(path), 1500);
  t.match(r.text, /^HTTP\/1\.1 404 /);
  const error = errorOf(r.text);
  t.ok(error.length < 400, `error of ${error.length} characters`);
  t.match(error, /\/nowhere\/ppp.*\.\.\. \(20009 characters\)/);
});

/**
 * Writes the headers and the whole body without reading first (as simple clients do), then
 * reads: resolves with what arrived and how the write ended.
 */
function writeAllThenRead(data: Buffer): Promise<{ text: string; writeError: string | null }> {
  return new Promise((resolve) => {
    const sock = net.connect(crowd.port, '127.0.0.1');
    let text = '';
    let writeError: string | null = null;
    sock.on('connect', () => sock.write(data, (err) => (writeError = err ? ((err as NodeJS.ErrnoException).code ?? err.message) : null)));
    sock.on('data', (d) => (text += d.toString('latin1')));
    sock.on('error', (err) => (writeError ??= (err as NodeJS.ErrnoException).code ?? err.message));
    sock.on('close', () => resolve({ text, writeError }));
    setTimeout(() => sock.destroy(), 5000);
  });
}

t.test('413: a client that writes its whole body before reading still gets the answer', async (t) => {
  const before = await lastOffset();
  const body = 'z'.repeat(4_000_000); // more than the socket buffers hold
  for (const req of [post('/leads', [], body), raw('POST /leads HTTP/1.1', ['Transfer-Encoding: chunked'], `${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`)]) {
    const r = await writeAllThenRead(req);
    t.match(r.text, /^HTTP\/1\.1 413 /, `the 413 arrives (write: ${r.writeError ?? 'ok'})`);
  }
  t.equal(await lastOffset(), before, 'nothing stored');
});

t.test('front end limits: requests uWebSockets.js drops without an answer store nothing', async (t) => {
  const before = await lastOffset();
  // Host, Content-Length and these: 49 header lines.
  const many = Array.from({ length: 47 }, (_, i) => `X-H${i}: v`);
  const cases: [string, Buffer][] = [
    ['49 header lines', raw('POST /leads HTTP/1.1', [...many, 'Content-Length: 1'], 'a')],
    ['HTTP/1.0 with Host', raw('POST /leads HTTP/1.0', ['Content-Length: 1'], 'a')],
    ['HTTP/1.0 without Host', Buffer.from('GET /healthz HTTP/1.0\r\n\r\n')],
    ['HTTP/1.1 without Host', Buffer.from('POST /leads HTTP/1.1\r\nContent-Length: 1\r\n\r\na')],
    ['garbage request line', Buffer.from('HELLO\r\n\r\n')],
    ['invalid header name', raw('POST /leads HTTP/1.1', ['X T: v', 'Content-Length: 1'], 'a')],
    ['obs-fold', raw('POST /leads HTTP/1.1', ['X-T: a', ' b', 'Content-Length: 1'], 'a')],
    ['bare LF', Buffer.from('POST /leads HTTP/1.1\nHost: x\nContent-Length: 1\n\na')],
    ['NUL in a value', post('/leads', ['X-T: a\x00b'])],
    ['control byte in a value', post('/leads', ['X-T: a\x01b'])],
    ['absolute-form target', post('http://x/leads')],
    ['OPTIONS *', Buffer.from('OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n')],
    ['Content-Length with Transfer-Encoding', raw('POST /leads HTTP/1.1', ['Content-Length: 3', 'Transfer-Encoding: chunked'], '3\r\nabc\r\n0\r\n\r\n')],
    ['chunk extension', raw('POST /leads HTTP/1.1', ['Transfer-Encoding: chunked'], '3;x=1\r\nabc\r\n0\r\n\r\n')],
    ['non-numeric Content-Length', raw('POST /leads HTTP/1.1', ['Content-Length: abc'], 'abc')],
    ['negative Content-Length', raw('POST /leads HTTP/1.1', ['Content-Length: -1'], 'abc')],
    ['huge Content-Length', raw('POST /leads HTTP/1.1', ['Content-Length: 99999999999999999999'], 'abc')],
    ['lowercase method', post('/leads').subarray(0).map((b, i) => (i < 4 ? b | 0x20 : b)) as Buffer],
    ['unknown method', Buffer.from(post('/leads').toString('latin1').replace(/^POST/, 'BREW'), 'latin1')],
  ];
  const replies = await Promise.all(cases.map(([, req]) => rawExchange(crowd.port, req, 1000)));
  cases.forEach(([name], i) => t.equal(replies[i]!.text, '', `${name}: no answer`));
  t.equal(await lastOffset(), before, 'nothing stored');
  const fortyEight = await rawExchange(crowd.port, raw('POST /leads HTTP/1.1', [...many.slice(1), 'Content-Length: 1'], 'a'), 1500);
  t.match(fortyEight.text, /^HTTP\/1\.1 200 /, '48 header lines are taken');
  // Up to 4 KiB is taken however it arrives; larger blocks only when the front end reads them
  // at once (up to about 128 KiB), which depends on the machine's load: not asserted.
  const bigHeaders = await Promise.all([3_500, 131_000].map((n) => rawExchange(crowd.port, post('/nowhere', [`X-Big: ${'v'.repeat(n)}`]), 2000)));
  t.match(bigHeaders[0]!.text, /^HTTP\/1\.1 404 /, 'a header block of 3 500 bytes is taken');
  t.equal(bigHeaders[1]!.text, '', 'one of 131 000 bytes is dropped');
});

t.test('front end limit: Expect: 100-continue is answered 100 by uWebSockets.js before crowd sees the request', async (t) => {
  const r = await rawExchange(crowd.port, raw('POST /leads HTTP/1.1', ['Expect: 100-continue', `Content-Length: ${MAX + 1}`], 'e'.repeat(MAX + 1)), 1500);
  t.match(r.text, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 413 /);
});

t.test('front end limits: malformed requests uWebSockets.js takes, and what crowd then stores', async (t) => {
  // Chunk data longer than its size line: the chunk is cut at its size, the rest is skipped.
  const short = await rawExchange(crowd.port, raw('POST /leads HTTP/1.1', ['Transfer-Encoding: chunked'], '3\r\nhello\r\n0\r\n\r\n'), 1500);
  t.match(short.text, /^HTTP\/1\.1 200 /);
  const entries = await tail();
  t.equal(entries.find((x) => short.text.includes(x.id)).body, 'hel');
  // An empty header name ends the header list crowd sees: the headers after it (here the
  // Content-Length) are not seen, and the body is parsed as the next request.
  const empty = await rawExchange(crowd.port, raw('POST /leads HTTP/1.1', [': empty', 'X-After: 1', 'Content-Length: 3'], 'abc'), 1500);
  t.match(empty.text, /^HTTP\/1\.1 200 /);
  const e = (await tail()).find((x) => empty.text.includes(x.id));
  t.same([e.body, 'x-after' in e.headers], ['', false]);
});

t.test('what is taken reaches the upstream as sent: path under the target base path, query, header values', async (t) => {
  const upstream = await Upstream.start();
  const c = new Crowd({ config: { routes: [{ name: 'events', path: '/events/*', targets: ['up'] }], targets: [{ name: 'up', url: upstream.url('/ingest') }] } });
  await c.start();
  t.teardown(async () => {
    await c.stop();
    await upstream.close();
  });
  const path = "/events/a..b/...c/%2e%2ex/%41;p=1/~!$&'()*+,=:@";
  const query = 'q=%FF%2e&x=a/../b&y=?z';
  const value = ` !"#$%&'()*+,-./09:;<=>?@AZ[\\]^_\`az{|}~\tend`;
  const r = await rawExchange(c.port, post(`${path}?${query}`, [`X-T: ${value}`]), 1500);
  t.match(r.text, /^HTTP\/1\.1 200 /);
  await upstream.until(() => upstream.received.length === 1, 10_000, 'delivered');
  const got = upstream.received[0]!;
  t.equal(got.url, `/ingest${path}?${query}`, 'the path and query arrive as sent, under the base path');
  t.equal(got.headers['x-t'], value.trim(), 'the header value arrives as sent');
});
