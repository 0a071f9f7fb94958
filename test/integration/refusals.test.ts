// Ensures crowd answers 503 + Retry-After and stores nothing when it cannot take a request:
// over log.max_bytes, past log.max_pending_writes, and while shutting down.
import t from 'tap';
import net from 'node:net';
import { Crowd, runCli } from '../helpers/crowd';
import { rawExchange, request } from '../helpers/http';

async function status(crowd: Crowd): Promise<any> {
  return JSON.parse((await request(crowd.adminUrl('/status'), { method: 'GET' })).body);
}

t.test('over log.max_bytes: 503 + Retry-After, nothing stored, not ready', async (t) => {
  const crowd = new Crowd({ config: { server: { max_body_bytes: '1MiB', retry_after: '7s' }, log: { max_bytes: '1MiB' } } });
  await crowd.start();
  t.teardown(() => crowd.stop());
  const big = 'q'.repeat(600 * 1024);
  t.equal((await request(crowd.url('/leads'), { body: big })).status, 200);
  t.equal((await request(crowd.url('/leads'), { body: big })).status, 200, 'the request that crosses the quota is still taken');
  const before = (await status(crowd)).log.last_offset;
  const r = await request(crowd.url('/leads'), { body: 'small' });
  t.equal(r.status, 503);
  t.equal(r.headers['retry-after'], '7');
  t.match(JSON.parse(r.body), { status: 'ERROR', error: /log\.max_bytes/ });
  t.equal((await status(crowd)).log.last_offset, before, 'nothing stored');
  const ready = await request(crowd.adminUrl('/readyz'), { method: 'GET' });
  t.equal(ready.status, 503);
  t.match(JSON.parse(ready.body).error, /max_bytes/);
  t.equal((await request(crowd.url('/healthz'), { method: 'GET' })).status, 503, 'the load balancer check says no');
  const metrics = (await request(crowd.adminUrl('/metrics'), { method: 'GET' })).body;
  t.match(metrics, /crowd_ingest_requests_total\{route="leads",code="503"\} 1/);
});

t.test('past log.max_pending_writes: 503 + Retry-After, every 200 stored, nothing else', async (t) => {
  const crowd = new Crowd({ config: { log: { max_pending_writes: 1 } } });
  await crowd.start();
  t.teardown(() => crowd.stop());
  let ok = 0;
  let refused = 0;
  // Requests written in one burst reach crowd in one event-loop turn; bounded rounds.
  for (let round = 0; round < 20 && refused === 0; round++) {
    const replies = await Promise.all(Array.from({ length: 30 }, (_, i) => rawExchange(crowd.port, `POST /leads HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 6\r\n\r\nr${String(i).padStart(2, '0')}-${round % 10}x`.slice(0, 200), 3000)));
    for (const r of replies) {
      if (/^HTTP\/1\.1 200 /.test(r.text)) ok++;
      else if (/^HTTP\/1\.1 503 /.test(r.text)) {
        refused++;
        t.match(r.text, /\r\nRetry-After: 1\r\n/i);
      } else t.fail(`unexpected answer: ${r.text.slice(0, 80)}`);
    }
  }
  t.ok(refused > 0, `some requests were refused (${refused})`);
  t.ok(ok > 0, `some requests were stored (${ok})`);
  t.equal((await status(crowd)).log.last_offset, ok, 'exactly the acknowledged requests are stored');
});

t.test('shutting down: open requests get 503 + Retry-After and close, crowd exits 0', async (t) => {
  const crowd = new Crowd();
  await crowd.start();
  t.teardown(() => crowd.stop());
  const sock = net.connect(crowd.port, '127.0.0.1');
  await new Promise((r) => sock.once('connect', r));
  let text = '';
  sock.on('data', (d) => (text += d));
  const closed = new Promise<void>((r) => sock.once('close', () => r()));
  sock.write('POST /leads HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf-');
  await new Promise((r) => setTimeout(r, 200));
  crowd.proc!.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 300));
  await t.rejects(request(crowd.url('/leads'), { body: 'late', timeoutMs: 2000 }), { code: 'ECONNREFUSED' }, 'new connections are refused');
  const ready = await request(crowd.adminUrl('/readyz'), { method: 'GET' });
  t.equal(ready.status, 503, '/readyz says no while shutting down');
  t.match(JSON.parse(ready.body).error, /draining/);
  sock.write('body!');
  await closed;
  t.match(text, /^HTTP\/1\.1 503 /);
  t.match(text, /Retry-After: 1/i);
  t.match(text, /shutting down/);
  const exit = await crowd.waitExit();
  t.equal(exit.code, 0, 'exit code 0');
  const tail = await runCli(['tail', '-c', crowd.configFile]);
  t.notMatch(tail.stdout, /half-body!/, 'nothing stored');
});
