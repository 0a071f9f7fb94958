// Ensures decode(encode(x)) equals x for envelopes of every shape, ids are UUIDv7 and unique,
// and tail's JSON form shows text bodies as text and binary ones as base64.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { decodeEnvelope, encodeEnvelope as encodeInput, encodeEnvelopeWithPackr as packInput, envelopeToJson, flattenHeaders, type Envelope } from '../../../src/log/codec';

const input = (e: Envelope) => ({ ...e, headerList: flattenHeaders(e.headers) });
const encodeEnvelope = (e: Envelope, offset: number) => encodeInput(input(e), offset);
const encodeEnvelopeWithPackr = (e: Envelope, offset: number) => packInput(input(e), offset);
import { ID_PATTERN, newId } from '../../../src/log/ids';

function randomEnvelope(i: number): Envelope {
  const headers: [string, string][] = [];
  for (let h = 0; h < (i % 7); h++) headers.push([`x-h${h}`, randomBytes(h * 3).toString('hex')]);
  return {
    id: newId(),
    offset: i === 0 ? 2 ** 53 - 1 : i * 7919,
    received_at: Date.now() - i,
    route: `r${i % 3}`,
    method: ['POST', 'PUT', 'GET'][i % 3]!,
    path: `/p/${i}/ü`,
    query: i % 2 ? `a=${i}&b=%20` : '',
    headers,
    remote: i % 2 ? '::1' : '127.0.0.1',
    body: randomBytes(i * 13),
  };
}

t.test('round trip', async (t) => {
  for (let i = 0; i < 200; i++) {
    const e = randomEnvelope(i);
    const d = decodeEnvelope(encodeEnvelope(e, e.offset));
    t.same({ ...d, body: Buffer.from(d.body) }, { ...e, body: Buffer.from(e.body) }, `envelope ${i}`);
  }
});

t.test('the hand-written encoder and msgpackr agree on every shape', async (t) => {
  const long = (n: number, ch = 'a') => ch.repeat(n);
  const shapes: Envelope[] = [
    { ...randomEnvelope(1), query: '', path: '/', headers: [] },
    { ...randomEnvelope(2), path: long(31), query: long(32), route: long(255), method: long(256) },
    { ...randomEnvelope(3), path: long(65535), query: long(65536), remote: 'ü'.repeat(20) + '€'.repeat(11) },
    { ...randomEnvelope(4), path: '/ü/€/😀/' + long(40, '😀'), headers: Array.from({ length: 40 }, (_, i) => [`h-${i}`, 'v'.repeat(i * 7)] as [string, string]) },
    { ...randomEnvelope(5), body: Buffer.alloc(0) },
    { ...randomEnvelope(6), body: randomBytes(255) },
    { ...randomEnvelope(7), body: randomBytes(256) },
    { ...randomEnvelope(8), body: randomBytes(65535) },
    { ...randomEnvelope(9), body: randomBytes(70_000), headers: Array.from({ length: 8 }, (_, i) => [`x${i}`, 'é'.repeat(i * 11)] as [string, string]) },
  ];
  const offsets = [0, 1, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1];
  let i = 0;
  for (const e of [...shapes, ...Array.from({ length: 100 }, (_, k) => randomEnvelope(k))]) {
    const offset = offsets[i++ % offsets.length]!;
    const mine = decodeEnvelope(encodeEnvelope(e, offset));
    const theirs = decodeEnvelope(encodeEnvelopeWithPackr(e, offset));
    t.same({ ...mine, body: Buffer.from(mine.body) }, { ...theirs, body: Buffer.from(theirs.body) }, `shape ${i} offset ${offset}`);
    t.equal(mine.offset, offset);
  }
});

t.test('encoded buffers stay intact after later encodes', async (t) => {
  const first = randomEnvelope(11);
  const bytes = encodeEnvelope(first, 42);
  const copy = Buffer.from(bytes);
  for (let k = 0; k < 5000; k++) encodeEnvelope(randomEnvelope(k % 50), k);
  t.ok(bytes.equals(copy), 'an earlier result is never overwritten (lmdb-js may read it after put returned)');
});

t.test('garbage is refused', async (t) => {
  t.throws(() => decodeEnvelope(Buffer.from([0x93, 1, 2, 3])), { code: 'CROWD_ERR_ENVELOPE' });
});

t.test('ids', async (t) => {
  const ids = new Set<string>();
  for (let i = 0; i < 20_000; i++) ids.add(newId());
  t.equal(ids.size, 20_000, 'no duplicates');
  for (const id of [...ids].slice(0, 50)) t.match(id, ID_PATTERN);
  const early = newId(1_000_000_000_000);
  const late = newId(1_700_000_000_000);
  t.ok(early < late, 'ids sort by time');
  t.equal(early.slice(0, 13).replace('-', ''), (1_000_000_000_000).toString(16).padStart(12, '0'), 'the first 48 bits are the time in ms');
});

t.test('tail JSON', async (t) => {
  const text = envelopeToJson({ ...randomEnvelope(3), body: Buffer.from('{"a":"ü"}') });
  t.equal(text.body_encoding, 'utf8');
  t.equal(text.body, '{"a":"ü"}');
  const bin = Buffer.from([0xff, 0xfe, 0x00, 0x80]);
  const j = envelopeToJson({ ...randomEnvelope(3), body: bin });
  t.equal(j.body_encoding, 'base64');
  t.equal(j.body, bin.toString('base64'));
});
