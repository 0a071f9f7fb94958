// The retry policy as pure functions: classification of every status class, full-jitter
// backoff bounds, Retry-After parsing (seconds and HTTP dates) and clamping.
import t from 'tap';
import { backoffMs, classify, parseRetryAfter, retryDelayMs } from '../../../src/delivery/retry';

const PERMANENT = new Set([400, 404, 405, 410, 413, 415, 422]);

t.test('classify', async (t) => {
  for (const s of [200, 201, 202, 204, 299]) t.equal(classify(s, PERMANENT), 'delivered', `${s}`);
  for (const s of [null, 408, 425, 429, 500, 502, 503, 504, 599]) t.equal(classify(s, PERMANENT), 'retry', `${s}`);
  for (const s of [400, 404, 405, 410, 413, 415, 422]) t.equal(classify(s, PERMANENT), 'dead', `${s}`);
  t.equal(classify(401, PERMANENT), 'pause');
  t.equal(classify(403, PERMANENT), 'pause');
  // Not listed as permanent: retried (the list is the operator's to change).
  t.equal(classify(409, PERMANENT), 'retry');
  for (const s of [300, 301, 302, 303, 304, 307, 308]) t.equal(classify(s, PERMANENT), 'pause', `${s}: the target URL is wrong`);
  t.equal(classify(302, new Set([302])), 'dead', 'a 3xx listed in retry.permanent dead-letters instead');
  t.equal(classify(404, new Set([400])), 'retry', '404 retried when the target does not list it');
  t.equal(classify(409, new Set([409])), 'dead', 'a configured status dead-letters');
});

t.test('backoffMs: full jitter within [0, min(max, base * 2^(attempt-1))]', async (t) => {
  t.equal(backoffMs(1, 200, 60_000, () => 0.999999), 199);
  t.equal(backoffMs(2, 200, 60_000, () => 0.5), 200);
  t.equal(backoffMs(3, 200, 60_000, () => 0.5), 400);
  t.equal(backoffMs(30, 200, 60_000, () => 0.5), 30_000, 'capped at max');
  t.equal(backoffMs(5000, 200, 60_000, () => 0.5), 30_000, 'huge attempt counts do not overflow');
  t.equal(backoffMs(4, 200, 60_000, () => 0), 0);
  for (let i = 0; i < 1000; i++) {
    const v = backoffMs(1 + (i % 20), 100, 5000);
    if (v < 0 || v > Math.min(5000, 100 * 2 ** (i % 20))) t.fail(`out of bounds: ${v}`);
  }
  t.pass('1000 random draws within bounds');
});

t.test('parseRetryAfter', async (t) => {
  const now = Date.parse('2026-11-27T12:00:00Z');
  t.equal(parseRetryAfter('5', now), 5000);
  t.equal(parseRetryAfter(' 0 ', now), 0);
  t.equal(parseRetryAfter('Fri, 27 Nov 2026 12:00:30 GMT', now), 30_000);
  t.equal(parseRetryAfter('Fri, 27 Nov 2026 11:00:00 GMT', now), 0, 'a date in the past: now');
  t.equal(parseRetryAfter(['7', '9'], now), 7000);
  t.equal(parseRetryAfter(undefined, now), null);
  t.equal(parseRetryAfter('', now), null);
  t.equal(parseRetryAfter('soon', now), null);
  t.equal(parseRetryAfter('-3', now), null);
});

t.test('retryDelayMs: Retry-After clamped to [base, max], else backoff', async (t) => {
  t.equal(retryDelayMs(1, 5000, 200, 60_000), 5000);
  t.equal(retryDelayMs(1, 3_600_000, 200, 60_000), 60_000, 'clamped to retry.max');
  t.equal(retryDelayMs(1, 0, 200, 60_000), 200, 'Retry-After: 0 still waits retry.base');
  t.equal(retryDelayMs(3, null, 200, 60_000, () => 0.5), 400);
});
