// Token bucket and circuit breaker with a controlled clock.
import t from 'tap';
import { BREAKER_FAILURES, Breaker, TokenBucket } from '../../../src/delivery/flow';
import { MinHeap } from '../../../src/delivery/heap';

t.test('TokenBucket: rate per second over a simulated minute, small burst', async (t) => {
  const b = new TokenBucket(50, 0);
  t.equal(b.capacity, 5);
  let now = 0;
  let sent = 0;
  while (now < 60_000) {
    const wait = b.take(now);
    if (wait === 0) sent++;
    else now += wait;
  }
  t.ok(sent >= 50 * 60 && sent <= 50 * 60 + 6, `${sent} in 60 s at rate 50`);
  const burst = new TokenBucket(1000, 0);
  let n = 0;
  while (burst.take(0) === 0) n++;
  t.equal(n, 100, 'a burst of a tenth of a second');
  t.equal(new TokenBucket(0, 0).take(0), 0, 'rate 0: unlimited');
  const slow = new TokenBucket(0.5, 0);
  t.equal(slow.take(0), 0);
  t.equal(slow.take(0), 2000, 'the wait until the next token');
});

t.test('Breaker: opens after consecutive failures, one probe, closes on success', async (t) => {
  const b = new Breaker();
  const wait = (opens: number) => 100 * opens;
  for (let i = 0; i < BREAKER_FAILURES - 1; i++) t.equal(b.failure(0, wait), false);
  t.equal(b.allow(0), true, 'still closed');
  t.equal(b.failure(0, wait), true, 'opens at the threshold');
  t.equal(b.state, 'open');
  t.equal(b.allow(50), false, 'nothing before the wait');
  t.equal(b.allow(100), true, 'one probe after it');
  t.equal(b.state, 'half-open');
  t.equal(b.allow(100), false, 'only one probe');
  t.equal(b.failure(100, wait), true, 'a failed probe opens again');
  t.equal(b.until, 300, 'with a longer wait');
  t.equal(b.allow(300), true);
  b.success();
  t.equal(b.state, 'closed');
  t.equal(b.failures, 0);
  t.equal(b.allow(300), true);
  b.trip(1000);
  t.equal(b.state, 'open');
  t.equal(b.allow(999), false);
  t.equal(b.allow(1000), true);
  b.release();
  t.equal(b.state, 'open', 'a probe without an answer leaves it open');
  t.equal(b.allow(1000), true, 'and the next probe may go');
});

t.test('MinHeap orders by key', async (t) => {
  const h = new MinHeap<number>((a, b) => a < b);
  const xs = Array.from({ length: 200 }, () => Math.floor(Math.random() * 1000));
  for (const x of xs) h.push(x);
  const out: number[] = [];
  while (h.size > 0) out.push(h.pop()!);
  t.same(out, [...xs].sort((a, b) => a - b));
  t.equal(h.pop(), undefined);
});
