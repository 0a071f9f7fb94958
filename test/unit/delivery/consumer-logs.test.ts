// Delivery trouble is logged once per change, not once per attempt: a line per target state
// change (backoff, circuit-open, paused, recovered), one line per burst of dead letters (at
// most one per target per 10 s, with the count), and one per TLS failure.
import t from 'tap';
import pino from 'pino';
import { Harness, settle, target } from '../../helpers/consumer';

async function open(over: Parameters<typeof target>[0] = {}): Promise<{ h: Harness; lines: Record<string, any>[] }> {
  const lines: Record<string, any>[] = [];
  const logger = pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l)) });
  const h = await Harness.open(target({ concurrency: 4, retry: { base: 100, max: 1000, max_age: 3_600_000, permanent: [400, 422] }, ...over }), { logger });
  return { h, lines };
}

const events = (lines: Record<string, any>[], event: string) => lines.filter((l) => l.event === event);

t.test('state changes: one line each, not one per failed attempt or probe', async (t) => {
  const { h, lines } = await open();
  t.teardown(() => h.close());
  await h.append(20);
  await h.start();
  // Many failed attempts and probes: backoff, then circuit-open.
  for (let i = 0; i < 10; i++) {
    for (const c of h.sink.open()) c.answer(503);
    await settle();
    await h.tick(1000);
  }
  t.ok(h.sink.calls.length >= 10, `${h.sink.calls.length} failed attempts`);
  const states = events(lines, 'target_state');
  t.same(states.map((l) => l.state), ['backoff', 'circuit-open'], 'one line per change');
  t.equal(states[1].level, 40, 'circuit-open is a warning');
  t.match(states[1].msg, /target api: circuit open after 5 failed attempts in a row; last: upstream answered 503/);
  // It answers again: recovered, once.
  for (let i = 0; i < 20 && h.consumer.status().lag > 0; i++) {
    for (const c of h.sink.open()) c.answer(200);
    await settle();
    await h.tick(1000);
  }
  t.equal(h.consumer.status().lag, 0, 'all delivered');
  const after = events(lines, 'target_state').map((l) => l.state);
  t.equal(after.filter((s) => s === 'circuit-open').length, 1, 'circuit-open logged once');
  t.equal(after[after.length - 1], 'ok', 'the last line says it recovered');
  t.match(events(lines, 'target_state').at(-1)!.msg, /target api recovered/);
  t.equal(after.filter((s) => s === 'ok').length, 1, 'recovered logged once');
});

t.test('paused: one line, not one per probe', async (t) => {
  const { h, lines } = await open({ concurrency: 1 });
  t.teardown(() => h.close());
  await h.append(3);
  await h.start();
  for (let i = 0; i < 5; i++) {
    for (const c of h.sink.open()) c.answer(401);
    await settle();
    await h.tick(1000);
  }
  t.ok(h.sink.calls.length >= 4, `${h.sink.calls.length} probes`);
  t.equal(events(lines, 'target_paused').length, 1, 'paused once');
  t.equal(events(lines, 'target_state').length, 0, 'no other state line while paused');
});

t.test('dead letters: one line per burst, at most one per 10 s, with the count', async (t) => {
  const { h, lines } = await open({ concurrency: 64 });
  t.teardown(() => h.close());
  await h.append(30);
  await h.start();
  await h.answerAll(422);
  await new Promise((r) => setTimeout(r, 20));
  let dead = events(lines, 'dead_letters');
  t.equal(dead.length, 1, 'one line for the burst of 30');
  t.match(dead[0], { level: 40, target: 'api', count: 30, total: 30 });
  t.match(dead[0].msg, /target api: 30 new dead letters \(30 in the store\); last: upstream answered 422/);
  await h.append(5);
  await h.tick(1000);
  await h.answerAll(422);
  await new Promise((r) => setTimeout(r, 20));
  t.equal(events(lines, 'dead_letters').length, 1, 'no second line within 10 s');
  await h.tick(9000);
  dead = events(lines, 'dead_letters');
  t.equal(dead.length, 2, 'the next line once 10 s passed');
  t.match(dead[1], { count: 5, total: 35 });
  await h.tick(20_000);
  t.equal(events(lines, 'dead_letters').length, 2, 'nothing new: no line');
});

t.test('TLS failures: one line per failure, not per attempt', async (t) => {
  const { h, lines } = await open({ concurrency: 1 });
  t.teardown(() => h.close());
  await h.append(2);
  await h.start();
  const tls = { error: 'DEPTH_ZERO_SELF_SIGNED_CERT fetch failed: self-signed certificate' };
  for (let i = 0; i < 8; i++) {
    for (const c of h.sink.open()) c.answer(null, tls);
    await settle();
    await h.tick(1000);
  }
  t.ok(h.sink.calls.length >= 4, `${h.sink.calls.length} attempts`);
  let l = events(lines, 'target_tls_failed');
  t.equal(l.length, 1, 'one TLS line');
  t.match(l[0], { level: 50, target: 'api' });
  t.match(l[0].msg, /target api: TLS failure: DEPTH_ZERO_SELF_SIGNED_CERT/);
  // Fixed, then broken again: a new line.
  for (let i = 0; i < 10 && h.sink.open().length === 0; i++) await h.tick(1000);
  h.sink.open()[0]!.answer(200);
  await settle();
  for (let i = 0; i < 10 && h.sink.open().length === 0; i++) await h.tick(1000);
  h.sink.open()[0]!.answer(null, tls);
  await settle();
  l = events(lines, 'target_tls_failed');
  t.equal(l.length, 2, 'a second line after it worked in between');
});
