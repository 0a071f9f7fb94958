// The peer protocol's parsers and the record check a follower runs before it writes
// anything: good frames pass unchanged, every malformed one is named and refused.
import t from 'tap';
import { Packr } from 'msgpackr';
import { encodeEnvelope, type EnvelopeInput } from '../../../src/log/codec';
import { frameRecord } from '../../../src/log/record';
import { checkRecord } from '../../../src/log/replica';
import { CLOSE_REASON_BYTES, closeReason, parseFollowerMessage, parseLeaderMessage, parseRecordFrame, recordFrame, RECORD_HEADER_BYTES } from '../../../src/replication/protocol';

const input = (body: string): EnvelopeInput => ({
  id: `01a21ed0-7a0c-7e26-9c4b-${body.padStart(12, '0').slice(-12)}`,
  received_at: 1_700_000_000_000,
  route: 'leads',
  method: 'POST',
  path: '/leads',
  query: 'a=1',
  headerList: ['content-type', 'application/json'],
  remote: '10.0.0.1',
  body: Buffer.from(body),
});

/** A record as a leader stores it: envelopes at key, key + 1, ... */
function record(key: number, bodies: string[], offsets = bodies.map((_, i) => key + i)): Buffer {
  const parts = bodies.map((b, i) => Buffer.from(encodeEnvelope(input(b), offsets[i]!)));
  return frameRecord(parts, parts.reduce((n, p) => n + p.length, 0));
}

/** A record framing raw envelope bytes (which may be anything). */
function rawRecord(parts: Buffer[]): Buffer {
  return frameRecord(parts, parts.reduce((n, p) => n + p.length, 0));
}

const packr = new Packr({ useRecords: false, structuredClone: false, moreTypes: false, bundleStrings: false });

t.test('parseRecordFrame: a frame made by recordFrame gives back its key and bytes', async (t) => {
  const r = record(7, ['a', 'b']);
  const f = parseRecordFrame(recordFrame(7, r));
  if (typeof f === 'string') return t.fail(f);
  t.equal(f.key, 7);
  t.same(Buffer.from(f.record), r);
  const big = parseRecordFrame(recordFrame(Number.MAX_SAFE_INTEGER, r));
  t.equal(typeof big === 'string' ? big : big.key, Number.MAX_SAFE_INTEGER, 'the largest offset is an offset');
});

t.test('parseRecordFrame: short frames, unknown types and keys that are not offsets', async (t) => {
  const r = record(1, ['a']);
  t.match(parseRecordFrame(Buffer.alloc(0)), /0 bytes is shorter than a record frame/);
  t.match(parseRecordFrame(recordFrame(1, Buffer.alloc(3))), /12 bytes is shorter than a record frame/, 'header plus less than a record count');
  const typed = recordFrame(1, r);
  typed[0] = 2;
  t.match(parseRecordFrame(typed), /binary frame type 2 is unknown/);
  typed[0] = 0;
  t.match(parseRecordFrame(typed), /binary frame type 0 is unknown/);
  for (const key of [0, -1, 1.5, NaN, Infinity, 2 ** 53, -0]) {
    t.match(parseRecordFrame(recordFrame(key, r)), /is not an offset/, `key ${key}`);
  }
  t.equal(RECORD_HEADER_BYTES, 9);
});

t.test('parseLeaderMessage: hello and progress', async (t) => {
  const hello = { t: 'hello', node_id: 'a', incarnation: '0123456789abcdef', first: 0, durable: 0 };
  t.same(parseLeaderMessage(JSON.stringify(hello)), hello);
  const progress = { t: 'progress', first: 3, durable: 90, finished: { api: 12, other: 0 } };
  t.same(parseLeaderMessage(JSON.stringify(progress)), progress);
  t.same(parseLeaderMessage(JSON.stringify({ ...progress, finished: {} })), { ...progress, finished: {} });
});

t.test('parseLeaderMessage: malformed text frames are named', async (t) => {
  const hello = { t: 'hello', node_id: 'a', incarnation: 'inc', first: 0, durable: 5 };
  const bad: [string, RegExp][] = [
    ['', /not JSON/],
    ['{"t":"hello"', /not JSON/],
    ['\u00e9', /not JSON/],
    ['null', /not a JSON object/],
    ['7', /not a JSON object/],
    ['"hello"', /not a JSON object/],
    ['[]', /unknown message type undefined/],
    ['{}', /unknown message type undefined/],
    ['{"t":"want","incarnation":"x","from":1}', /unknown message type "want"/],
    [JSON.stringify({ ...hello, node_id: undefined }), /hello lacks/],
    [JSON.stringify({ ...hello, node_id: '' }), /hello lacks/],
    [JSON.stringify({ ...hello, node_id: 'has space' }), /hello lacks/],
    [JSON.stringify({ ...hello, node_id: 'x'.repeat(129) }), /hello lacks/],
    [JSON.stringify({ ...hello, incarnation: 5 }), /hello lacks/],
    [JSON.stringify({ ...hello, first: -1 }), /hello lacks/],
    [JSON.stringify({ ...hello, first: '0' }), /hello lacks/],
    [JSON.stringify({ ...hello, durable: 1.5 }), /hello lacks/],
    [JSON.stringify({ ...hello, durable: 2 ** 53 }), /hello lacks/],
    [JSON.stringify({ t: 'progress', first: 0, durable: 0 }), /progress lacks/],
    [JSON.stringify({ t: 'progress', first: 0, durable: 0, finished: null }), /progress lacks/],
    [JSON.stringify({ t: 'progress', first: 0, durable: -3, finished: {} }), /progress lacks/],
    [JSON.stringify({ t: 'progress', first: 0, durable: 0, finished: { api: -1 } }), /finished offset that is not an offset/],
    [JSON.stringify({ t: 'progress', first: 0, durable: 0, finished: { api: '3' } }), /finished offset that is not an offset/],
  ];
  for (const [text, re] of bad) t.match(parseLeaderMessage(text), re, text.slice(0, 60));
});

t.test('parseFollowerMessage: want and flushed', async (t) => {
  t.same(parseFollowerMessage('{"t":"want","incarnation":"abc","from":0}'), { t: 'want', incarnation: 'abc', from: 0 });
  t.same(parseFollowerMessage('{"t":"flushed","incarnation":"abc","offset":42}'), { t: 'flushed', incarnation: 'abc', offset: 42 });
});

t.test('parseFollowerMessage: malformed text frames are named', async (t) => {
  const bad: [string, RegExp][] = [
    ['not json', /not JSON/],
    ['null', /not a JSON object/],
    ['true', /not a JSON object/],
    ['{"t":"hello","node_id":"a","incarnation":"b","first":0,"durable":0}', /unknown message type "hello"/],
    ['{"t":"want","from":1}', /want lacks/],
    ['{"t":"want","incarnation":"abc","from":-1}', /want lacks/],
    ['{"t":"want","incarnation":"abc","from":"1"}', /want lacks/],
    ['{"t":"want","incarnation":"a b","from":1}', /want lacks/],
    ['{"t":"flushed","incarnation":"abc"}', /flushed lacks/],
    ['{"t":"flushed","incarnation":"abc","offset":1e300}', /flushed lacks/],
    ['{"t":"flushed","incarnation":"abc","offset":0.5}', /flushed lacks/],
  ];
  for (const [text, re] of bad) t.match(parseFollowerMessage(text), re, text);
});

t.test('a refusal quotes at most 40 characters of an unknown message type', async (t) => {
  const long = 'x'.repeat(10_000);
  for (const parse of [parseLeaderMessage, parseFollowerMessage]) {
    const why = parse(JSON.stringify({ t: long })) as string;
    t.equal(why, `unknown message type "${'x'.repeat(39)}`);
    t.equal(parse(JSON.stringify({ t: { nested: [1, 2] } })), 'unknown message type {"nested":[1,2]}');
  }
});

t.test('closeReason: what a close frame holds, cut at a character boundary', async (t) => {
  t.equal(CLOSE_REASON_BYTES, 123);
  t.equal(closeReason('text frame is not JSON'), 'text frame is not JSON');
  const ascii = 'a'.repeat(200);
  t.equal(closeReason(ascii), 'a'.repeat(123));
  t.equal(closeReason('a'.repeat(123)), 'a'.repeat(123));
  for (const [what, s] of [
    ['two-byte characters', '\u00e9'.repeat(100)],
    ['two-byte characters after one ASCII byte', 'x' + '\u00e9'.repeat(100)],
    ['three-byte characters', '\u20ac'.repeat(100)],
    ['four-byte characters', '\u{1f600}'.repeat(100)],
    ['a lone surrogate', 'ab\ud800'.repeat(60)],
  ] as const) {
    const r = closeReason(s);
    const bytes = Buffer.byteLength(r);
    t.ok(bytes <= 123 && bytes >= 120, `${what}: ${bytes} bytes`);
    t.ok(s.startsWith(r) || Buffer.from(s).subarray(0, bytes).equals(Buffer.from(r)), `${what}: a prefix of the reason`);
    t.notOk(r.includes('\ufffd') && !s.includes('\ud800'), `${what}: no character cut in two`);
  }
});

t.test('checkRecord: a whole record returns its last offset', async (t) => {
  t.equal(checkRecord(1, record(1, ['a'])), 1);
  t.equal(checkRecord(10, record(10, ['a', 'b', 'c'])), 12);
  t.equal(checkRecord(2 ** 32 + 5, record(2 ** 32 + 5, ['a', 'b'])), 2 ** 32 + 6, 'offsets past 32 bits');
  t.equal(checkRecord(3, record(3, [''])), 3, 'an empty body');
});

t.test('checkRecord: truncated records', async (t) => {
  const r = record(10, ['a', 'bb', 'ccc']);
  t.throws(() => checkRecord(10, r.subarray(0, 2)), /shorter than its header/);
  t.throws(() => checkRecord(10, Buffer.alloc(0)), /shorter than its header/);
  for (const cut of [4, 6, 8, r.length - 1, r.length - 10]) {
    t.throws(() => checkRecord(10, r.subarray(0, cut)), `cut at ${cut} of ${r.length}`);
  }
  const claimsMore = Buffer.from(r);
  claimsMore.writeUInt32BE(4, 0);
  t.throws(() => checkRecord(10, claimsMore), 'a count larger than the envelopes present');
  const huge = Buffer.from(r);
  huge.writeUInt32BE(0xffffffff, 0);
  t.throws(() => checkRecord(10, huge), 'a count of 2^32 - 1');
  const longLength = Buffer.from(r);
  longLength.writeUInt32BE(0xfffffff0, 4);
  t.throws(() => checkRecord(10, longLength), /truncated/, 'an envelope length past the end');
});

t.test('checkRecord: an envelope at another offset than its place in the record', async (t) => {
  t.throws(() => checkRecord(11, record(10, ['a', 'b'])), /envelope 0 has offset 10, not 11/);
  t.throws(() => checkRecord(10, record(10, ['a', 'b', 'c'], [10, 11, 13])), /envelope 2 has offset 13, not 12/);
  t.throws(() => checkRecord(10, record(10, ['a', 'b'], [10, 10])), /envelope 1 has offset 10, not 11/, 'a repeated offset');
});

t.test('checkRecord: trailing bytes after the envelopes', async (t) => {
  const r = record(5, ['a', 'b']);
  t.throws(() => checkRecord(5, Buffer.concat([r, Buffer.from([0])])), /1 bytes after its 2 envelopes/);
  t.throws(() => checkRecord(5, Buffer.concat([r, record(7, ['c'])])), /bytes after its 2 envelopes/, 'a second record glued on');
  const fewer = Buffer.from(r);
  fewer.writeUInt32BE(1, 0);
  t.throws(() => checkRecord(5, fewer), /bytes after its 1 envelopes/, 'a count smaller than the envelopes present');
});

t.test('checkRecord: a record of no envelope', async (t) => {
  t.throws(() => checkRecord(5, Buffer.from([0, 0, 0, 0])), /holds no envelope/);
  t.throws(() => checkRecord(5, Buffer.concat([Buffer.from([0, 0, 0, 0]), record(5, ['a'])])), /holds no envelope/);
});

t.test('checkRecord: envelopes that are not envelopes', async (t) => {
  const good = Buffer.from(encodeEnvelope(input('x'), 1));
  const cases: [string, Buffer][] = [
    ['garbage bytes', Buffer.from('not msgpack at all, just text')],
    ['an unused msgpack type', Buffer.from([0xc1])],
    ['a truncated msgpack array', good.subarray(0, good.length - 1)],
    ['an empty envelope', Buffer.alloc(0)],
    ['a valid envelope with bytes after it', Buffer.concat([good, Buffer.from([0x01])])],
    ['a msgpack map', packr.pack({ offset: 1 })],
    ['a msgpack string', packr.pack('hello')],
    ['an array of 10 fields', packr.pack([1, 'id', 1, 0, 'leads', 'POST', '/leads', '', [], '10.0.0.1'])],
    ['version 2', packr.pack([2, 'id', 1, 0, 'leads', 'POST', '/leads', '', [], '10.0.0.1', Buffer.from('x')])],
    ['a str32 length past the end', Buffer.from([0x9b, 0x01, 0xdb, 0xff, 0xff, 0xff, 0xff])],
    ['an array32 of 2^32 - 1 items', Buffer.from([0xdd, 0xff, 0xff, 0xff, 0xff, 0x01])],
  ];
  for (const [what, bytes] of cases) t.throws(() => checkRecord(1, rawRecord([bytes])), what);
  t.throws(() => checkRecord(1, rawRecord([good, Buffer.from('garbage')])), 'a good envelope then a bad one');
});

t.test('checkRecord: envelopes with fields of the wrong type', async (t) => {
  const fields = (): unknown[] => [1, 'id-1', 1, 1_700_000_000_000, 'leads', 'POST', '/leads', '', ['content-type', 'text/plain'], '10.0.0.1', Buffer.from('x')];
  t.equal(checkRecord(1, rawRecord([packr.pack(fields())])), 1, 'msgpackr own encoding of a good envelope passes');
  const wrong: [string, number, unknown][] = [
    ['id a number', 1, 42],
    ['offset a string', 2, '1'],
    ['received_at a string', 3, 'yesterday'],
    ['received_at negative', 3, -1],
    ['route a number', 4, 7],
    ['method null', 5, null],
    ['path an array', 6, ['/leads']],
    ['query a map', 7, { a: 1 }],
    ['headers a string', 8, 'content-type: text/plain'],
    ['headers with a number', 8, ['content-type', 5]],
    ['headers of odd length', 8, ['content-type']],
    ['remote a number', 9, 10],
    ['body a string', 10, 'x'],
    ['body null', 10, null],
  ];
  for (const [what, i, v] of wrong) {
    const f = fields();
    f[i] = v;
    t.throws(() => checkRecord(1, rawRecord([packr.pack(f)])), what);
  }
});

t.test('checkRecord: offsets at or past 2^53', async (t) => {
  const key = Number.MAX_SAFE_INTEGER - 1;
  t.equal(checkRecord(key, record(key, ['a', 'b'])), Number.MAX_SAFE_INTEGER, 'the last safe offset');
  t.throws(() => checkRecord(key, record(key, ['a', 'b', 'c'])), /2\^53|not an offset/, 'a record that runs past the last safe offset');
});
