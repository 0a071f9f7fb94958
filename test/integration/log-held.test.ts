// One dead target must not silently stop ingest for everyone. With a small log.max_bytes, two
// routes with one target each, and one upstream down:
// - by default the log fills; every route gets 503, and the 503, /readyz, /status and a warn
//   line (once) name the target holding the log;
// - with targets[].max_lag_bytes on the dead target, its oldest undelivered entries become
//   dead letters instead, and ingest goes on for both routes.
import t from 'tap';
import { Crowd, runCli } from '../helpers/crowd';
import { checkIdentity, targetStatus } from '../helpers/delivery';
import { request } from '../helpers/http';
import { Upstream, waitFor } from '../helpers/upstream';

const BODY = 'x'.repeat(8 * 1024);

function config(down: Upstream, up: Upstream, dead: Record<string, unknown> = {}) {
  return {
    log: { max_bytes: '1MiB' },
    routes: [
      { name: 'orders', path: '/orders', targets: ['orders-api'] },
      { name: 'leads', path: '/leads', targets: ['leads-api'] },
    ],
    targets: [
      { name: 'orders-api', url: down.url(), retry: { base: '50ms', max: '200ms' }, ...dead },
      { name: 'leads-api', url: up.url() },
    ],
  };
}

async function postOne(crowd: Crowd, path: string): Promise<{ status: number; body: string }> {
  return request(crowd.url(path), { body: BODY, headers: { 'content-type': 'text/plain' } });
}

t.test('default: the log fills, every route gets 503 naming the target that holds it', async (t) => {
  const down = await Upstream.start(0, () => ({ status: 503 }));
  const up = await Upstream.start(0);
  const crowd = new Crowd({ config: config(down, up) });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await down.close();
    await up.close();
  });
  let refused: { status: number; body: string } | null = null;
  for (let i = 0; i < 400 && refused === null; i++) {
    const r = await postOne(crowd, i % 2 ? '/leads' : '/orders');
    if (r.status === 503) refused = r;
    else if (r.status !== 200) throw new Error(`${r.status}: ${r.body}`);
  }
  t.ok(refused, 'the log filled');
  t.match(JSON.parse(refused!.body).error, /log is over log\.max_bytes.*held by target orders-api/);
  // leads-api is caught up; the healthy route is refused too (once what retention could free
  // is taken again), with the same name.
  await new Promise((r) => setTimeout(r, 1200));
  let leads = await postOne(crowd, '/leads');
  for (let i = 0; i < 200 && leads.status === 200; i++) leads = await postOne(crowd, '/leads');
  t.equal(leads.status, 503, 'the healthy route is refused too');
  t.match(JSON.parse(leads.body).error, /held by target orders-api \(.*\)/);
  t.notMatch(JSON.parse(leads.body).error, /leads-api/);
  const ready = await request(crowd.adminUrl('/readyz'), { method: 'GET' });
  t.equal(ready.status, 503);
  t.match(JSON.parse(ready.body).error, /over log\.max_bytes.*held by target orders-api/);
  const status = JSON.parse((await request(crowd.adminUrl('/status'), { method: 'GET' })).body);
  t.same(status.log.held_by, ['orders-api'], '/status names it');
  t.equal(status.log.over_max_bytes, true);
  await waitFor(() => crowd.lines.some((l) => l.includes('"event":"log_full"')), 3000, 'the warn line');
  for (let i = 0; i < 5; i++) await postOne(crowd, '/leads');
  await new Promise((r) => setTimeout(r, 1200));
  const changes = crowd.lines.filter((l) => /"event":"log_(not_)?full"/.test(l)).map((l) => JSON.parse(l));
  const full = changes.filter((l) => l.event === 'log_full');
  t.ok(full.length >= 1, `${full.length} log_full lines`);
  // Retention may free a little (the failed requests park as retries) and the log fills again:
  // a line per change, never two in a row for the same state.
  for (let i = 1; i < changes.length; i++) t.not(changes[i].event, changes[i - 1].event, `line ${i}: a change`);
  t.match(full[0], { level: 'warn', held_by: ['orders-api'], msg: /orders-api/ });
  await checkIdentity(t, crowd, 'orders-api');
  await checkIdentity(t, crowd, 'leads-api');
});

t.test('max_lag_bytes: the dead target dead-letters its oldest entries; both routes keep working', async (t) => {
  const down = await Upstream.start(0, () => ({ status: 503 }));
  const up = await Upstream.start(0);
  const crowd = new Crowd({ config: config(down, up, { max_lag_bytes: '256KiB' }) });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await down.close();
    await up.close();
  });
  // 3 MiB through a 1 MiB log.
  const began = Date.now();
  for (let i = 0; i < 400; i++) {
    const path = i % 2 ? '/leads' : '/orders';
    let r = await postOne(crowd, path);
    // A moment of 503 while retention catches up is allowed; refusal for good is not.
    for (let k = 0; k < 100 && r.status === 503; k++) {
      await new Promise((res) => setTimeout(res, 50));
      r = await postOne(crowd, path);
    }
    if (r.status !== 200) {
      t.fail(`request ${i} to ${path}: ${r.status} ${r.body}`);
      break;
    }
  }
  t.comment(`posted in ${Date.now() - began} ms`);
  await waitFor(async () => (await targetStatus(crowd, 'leads-api')).lag === 0, 10_000, 'leads delivered');
  t.equal(up.received.length, 200, 'every lead delivered');
  const s = await targetStatus(crowd, 'orders-api');
  t.ok(s.dead_letters > 100, `the dead target's oldest entries are dead letters (${s.dead_letters})`);
  t.ok(s.lag < 60, `its lag is bounded (${s.lag})`);
  const list = await runCli(['dlq', 'list', '--target', 'orders-api', '-n', '1', '-c', crowd.configFile]);
  t.equal(list.code, 0, list.stderr);
  const d = JSON.parse(list.stdout.trim());
  t.ok(d.offset <= 20, `the oldest first (offset ${d.offset}; the first attempted ones wait as retries outside the log)`);
  t.match(d.error, /targets\[\]\.max_lag_bytes \(256 KiB\)/);
  t.ok(crowd.lines.some((l) => l.includes('"event":"dead_letters"') && l.includes('orders-api')), 'a dead-letters warn line');
  await checkIdentity(t, crowd, 'orders-api');
  await checkIdentity(t, crowd, 'leads-api');
});
