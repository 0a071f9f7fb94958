// Ensures log records frame envelopes losslessly and single envelopes can be sliced out.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { envelopeAt, forEachInRecord, frameRecord, recordCount } from '../../../src/log/record';

t.test('frame and walk', async (t) => {
  const parts = [Buffer.alloc(0), randomBytes(1), randomBytes(300), randomBytes(70_000)];
  const record = frameRecord(parts, parts.reduce((n, p) => n + p.length, 0));
  t.equal(recordCount(record), 4);
  const seen: Buffer[] = [];
  forEachInRecord(record, (i, bytes) => {
    t.equal(i, seen.length);
    seen.push(Buffer.from(bytes));
    return true;
  });
  t.same(seen, parts);
  t.same(envelopeAt(record, 2), parts[2]);
  t.throws(() => envelopeAt(record, 4), RangeError);
  t.throws(() => forEachInRecord(record.subarray(0, 100), () => true), /truncated/);
  let visits = 0;
  forEachInRecord(record, () => ++visits < 2);
  t.equal(visits, 2, 'stops when the visitor returns false');
});
