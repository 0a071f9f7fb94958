// Ensures the ingest checks name what is wrong and where: header values outside printable
// ASCII, framing headers, and request targets (dot segments, backslashes, fragments, non-ASCII).
import t from 'tap';
import { HeaderScan, checkTarget, shorten } from '../../../src/http/validate';

function scan(pairs: [string, string][]): HeaderScan {
  const s = new HeaderScan();
  for (const [k, v] of pairs) s.add(k, v);
  s.finish();
  return s;
}

t.test('header values: printable ASCII and tab only, the first bad byte named', async (t) => {
  t.equal(scan([['x-t', 'a\tb ~!']]).error, null);
  t.equal(scan([['x-t', 'José']]).error, 'header "x-t": value has a byte 0xC3 at position 3: only printable ASCII and tab are accepted');
  t.equal(scan([['x-t', 'caf\ufffd tail']]).error, 'header "x-t": value has a byte of 0x80 or above that is not UTF-8 at position 3: only printable ASCII and tab are accepted');
  t.match(scan([['x-t', 'a€b']]).error, /a byte 0xE2 at position 1/);
  t.match(scan([['x-t', 'a😀']]).error, /a byte 0xF0 at position 1/);
  t.match(scan([['x-t', 'a\x7fb']]).error, /a byte 0x7F at position 1/);
  t.match(scan([['x-t', 'a\x01b']]).error, /a byte 0x01 at position 1/);
  t.match(scan([['x-a', 'ok'], ['x-b', 'b\x7f'], ['x-c', '\x7f']]).error, /^header "x-b"/, 'the first bad header is named');
  t.equal(scan([['x-t', 'a\x7f']]).framing, false, 'a bad value is not a framing problem');
});

t.test('framing headers', async (t) => {
  const framing = (pairs: [string, string][]) => {
    const s = scan(pairs);
    t.ok(s.framing, `${JSON.stringify(pairs)} is a framing problem`);
    return s.error;
  };
  t.equal(framing([['content-length', '5'], ['content-length', '66']]), 'header "content-length" appears 2 times: send it once');
  t.equal(framing([['content-length', '5'], ['content-length', '5']]), 'header "content-length" appears 2 times: send it once');
  t.equal(framing([['content-length', '']]), 'header "content-length" is empty');
  t.equal(framing([['content-length', '1x']]), 'header "content-length": "1x" is not a number of bytes');
  t.equal(framing([['content-length', '1234567890123456']]), 'header "content-length": "1234567890123456" is not a number of bytes');
  t.equal(framing([['transfer-encoding', 'xchunked']]), 'header "transfer-encoding": "xchunked" is not supported: only "chunked" is accepted');
  t.match(framing([['transfer-encoding', 'chunked, identity']]), /"chunked, identity" is not supported/);
  t.match(framing([['transfer-encoding', 'chunked'], ['transfer-encoding', 'chunked']]), /appears 2 times/);
  t.equal(framing([['content-length', '3'], ['transfer-encoding', 'chunked']]), 'headers "content-length" and "transfer-encoding" are both present: send one of them');
  t.equal(framing([['host', 'a'], ['host', 'b']]), 'header "host" appears 2 times: send it once');
  t.match(framing([['x-t', '\x7f'], ['content-length', '1'], ['content-length', '2']]), /content-length/, 'a framing problem wins over a bad value');
  t.equal(scan([['transfer-encoding', 'Chunked']]).error, null, 'the coding name is case-insensitive');
  const ok = scan([['host', 'h'], ['content-length', '0012'], ['x-a', '1'], ['connection', 'keep-alive'], ['proxy-authorization', 'p'], ['expect', '100-continue'], ['authorization', 'Bearer t']]);
  t.equal(ok.error, null);
  t.equal(ok.contentLength, '0012');
  t.same(ok.stored, ['host', 'h', 'x-a', '1', 'authorization', 'Bearer t'], 'hop-by-hop, framing, proxy- and expect headers are not stored');
});

t.test('request targets', async (t) => {
  t.equal(checkTarget('/events/a..b/...c/%2e%2ex/%2e/./', ''), 'path has a dot segment "%2e" at position 26: send the path without "." and ".." segments');
  for (const ok of ['/', '/leads', '/events/a..b/...c/%2e%2ex/.x/x./%2e%2e%2e/%2f..%2f', '/a/%41~!$&\'()*+,;=:@-._']) t.equal(checkTarget(ok, 'q=../..&x=%2e'), null, ok);
  t.match(checkTarget('/events/../../admin/delete-all', ''), /^path has a dot segment "\.\." at position 8/);
  t.match(checkTarget('/events/%2E%2e', ''), /^path has a dot segment "%2E%2e" at position 8/);
  t.match(checkTarget('/a/..', ''), /dot segment "\.\." at position 3/);
  t.match(checkTarget('/a/./b', ''), /dot segment "\." at position 3/);
  t.match(checkTarget('/a/.%2e/b', ''), /dot segment "\.%2e" at position 3/);
  t.match(checkTarget('/a\\..\\b', ''), /^path has a backslash at position 2/);
  t.match(checkTarget('/a#f', ''), /fragment \("#"\) at position 2/);
  t.match(checkTarget('/a', 'q=1#f'), /fragment \("#"\) in the query at position 3/);
  t.match(checkTarget('/caf\ufffd', ''), /^path has a byte of 0x80 or above that is not UTF-8 at position 4: percent-encode/);
  t.match(checkTarget('/café', ''), /^path has a byte 0xC3 at position 4/);
  t.match(checkTarget('/a', 'q=caf\ufffd'), /^query has a byte of 0x80 or above that is not UTF-8 at position 5/);
  t.match(checkTarget('/a b', ''), /^path has a byte 0x20 at position 2/);
  t.match(checkTarget('*', ''), /does not start with "\/"/);
});

t.test('long strings are shortened in messages', async (t) => {
  t.equal(shorten('abc'), 'abc');
  const s = shorten('p'.repeat(1000));
  t.equal(s, `${'p'.repeat(200)}... (1000 characters)`);
});
