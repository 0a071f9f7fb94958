// Ensures a request body costs memory in proportion to its size, whatever its framing, and that
// bodies being received are bounded all together by server.max_receiving_bytes: tiny chunks,
// and many unfinished uploads, leave crowd's RSS bounded while small requests are still served.
import t from 'tap';
import net from 'node:net';
import { Crowd, runCli } from '../helpers/crowd';
import { request } from '../helpers/http';
import { cpuSeconds, mib, rssBytes, sleep } from '../helpers/proc';

/** Resolves once crowd used no CPU for `quietMs` (it read everything sent), at most `maxMs`. */
async function waitIdle(pid: number, quietMs = 400, maxMs = 20_000): Promise<void> {
  const end = Date.now() + maxMs;
  let last = cpuSeconds(pid);
  let since = Date.now();
  while (Date.now() < end) {
    await sleep(100);
    const now = cpuSeconds(pid);
    if (now - last > 0.005) {
      last = now;
      since = Date.now();
    } else if (Date.now() - since >= quietMs) return;
  }
  throw new Error(`crowd did not go idle within ${maxMs} ms`);
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((res, rej) => {
    const s = net.connect(port, '127.0.0.1', () => res(s));
    s.once('error', rej);
  });
}

/** Writes `data` honouring backpressure; resolves when the kernel took all of it. */
function writeAll(sock: net.Socket, data: Buffer): Promise<void> {
  return new Promise((res, rej) => {
    sock.write(data, (err) => (err ? rej(err) : res()));
  });
}

t.test('a chunked body in 1-byte chunks costs memory in proportion to its size', async (t) => {
  const CONNECTIONS = 16;
  const BODY = 200_000;
  const crowd = new Crowd({ config: { server: { max_body_bytes: '1MiB' } } });
  await crowd.start();
  t.teardown(() => crowd.stop());
  const pid = crowd.proc!.pid!;
  t.equal((await request(crowd.url('/leads'), { body: 'warm-up' })).status, 200);
  await waitIdle(pid);
  const before = rssBytes(pid);

  const chunk = Buffer.from('1\r\nx\r\n');
  const piece = Buffer.concat(Array.from({ length: 10_000 }, () => chunk)); // 10,000 body bytes
  const socks: net.Socket[] = [];
  t.teardown(() => socks.forEach((s) => s.destroy()));
  let wire = 0;
  await Promise.all(
    Array.from({ length: CONNECTIONS }, async () => {
      const s = await connect(crowd.port);
      socks.push(s);
      s.on('error', () => {});
      const head = Buffer.from('POST /leads HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n');
      await writeAll(s, head);
      wire += head.length;
      // The whole body but the last chunk ("0\r\n\r\n"), which is held back.
      for (let sent = 0; sent < BODY; sent += 10_000) {
        await writeAll(s, piece);
        wire += piece.length;
      }
    }),
  );
  await waitIdle(pid);
  const after = rssBytes(pid);
  const bodyBytes = CONNECTIONS * BODY;
  const bound = 2 * wire;
  t.comment(`RSS ${mib(before)} -> ${mib(after)} (+${mib(after - before)}) holding ${CONNECTIONS} bodies of ${BODY} bytes in 1-byte chunks (${mib(bodyBytes)} of body, ${mib(wire)} on the wire)`);
  t.ok(after - before < bound, `RSS grew by ${mib(after - before)}, less than twice the bytes on the wire (${mib(bound)})`);

  const started = Date.now();
  const legit = await request(crowd.url('/leads'), { body: 'legit-during-tiny-chunks', timeoutMs: 5000 });
  t.equal(legit.status, 200, 'a legitimate POST is answered 200 meanwhile');
  t.ok(Date.now() - started < 2000, `promptly (${Date.now() - started} ms)`);

  // One of the held bodies completes: stored whole.
  await writeAll(socks[0]!, Buffer.from('0\r\n\r\n'));
  const answer = await new Promise<string>((res) => {
    let text = '';
    socks[0]!.on('data', (d) => {
      text += d.toString('latin1');
      if (text.includes('}')) res(text);
    });
    setTimeout(() => res(text), 5000);
  });
  t.match(answer, /^HTTP\/1\.1 200 /, 'a completed tiny-chunk body is acknowledged');
  const id = /"id":"([^"]+)"/.exec(answer)?.[1];
  const tail = await runCli(['tail', '-c', crowd.configFile]);
  const entry = tail.stdout.trim().split('\n').map((l) => JSON.parse(l)).find((e) => e.id === id);
  t.equal(entry?.body, 'x'.repeat(BODY), 'its body is stored whole');
});

/** Opens a connection, sends the headers, then (unless crowd answered at once) part of the body. */
async function unfinishedUpload(port: number, declared: number, send: number): Promise<{ sock: net.Socket; answer: () => string; closed: () => boolean }> {
  const sock = await connect(port);
  let text = '';
  let closed = false;
  sock.on('data', (d) => (text += d.toString('latin1')));
  sock.on('error', () => (closed = true));
  sock.on('close', () => (closed = true));
  sock.write(`POST /leads HTTP/1.1\r\nHost: x\r\nContent-Length: ${declared}\r\n\r\n`);
  await sleep(30);
  if (text === '' && !closed) await writeAll(sock, Buffer.alloc(send, 'f')).catch(() => {});
  return { sock, answer: () => text, closed: () => closed };
}

t.test('unfinished uploads are bounded by server.max_receiving_bytes; small requests still get through', async (t) => {
  const BUDGET = 8 * 1024 * 1024;
  const UPLOADS = 200;
  const DECLARED = 1024 * 1024;
  const SENT = 1_000_000;
  const crowd = new Crowd({ config: { server: { max_body_bytes: '1MiB', max_receiving_bytes: BUDGET, retry_after: '3s' }, log: { max_pending_bytes: '1MiB' } } });
  await crowd.start();
  t.teardown(() => crowd.stop());
  const pid = crowd.proc!.pid!;
  t.equal((await request(crowd.url('/leads'), { body: 'warm-up' })).status, 200);
  await waitIdle(pid);
  const before = rssBytes(pid);

  const uploads: Awaited<ReturnType<typeof unfinishedUpload>>[] = [];
  t.teardown(() => uploads.forEach((u) => u.sock.destroy()));
  for (let i = 0; i < UPLOADS; i += 20) {
    uploads.push(...(await Promise.all(Array.from({ length: 20 }, () => unfinishedUpload(crowd.port, DECLARED, SENT)))));
  }
  await waitIdle(pid);
  await sleep(200);
  const after = rssBytes(pid);
  t.comment(`RSS ${mib(before)} -> ${mib(after)} (+${mib(after - before)}) with ${UPLOADS} unfinished uploads of ${mib(SENT)} (${mib(UPLOADS * SENT)} sent), budget ${mib(BUDGET)}`);
  t.ok(after - before < 3 * BUDGET, `RSS grew by ${mib(after - before)}, less than 3 x server.max_receiving_bytes (${mib(3 * BUDGET)})`);

  const refused = uploads.filter((u) => /^HTTP\/1\.1 503 /.test(u.answer()));
  const held = uploads.filter((u) => u.answer() === '' && !u.closed());
  t.equal(refused.length + held.length, UPLOADS, 'every upload was either refused with 503 or is still being received');
  t.ok(held.length > 0 && held.length <= BUDGET / DECLARED, `at most ${BUDGET / DECLARED} uploads are being received (${held.length})`);
  t.ok(refused.length >= UPLOADS - BUDGET / DECLARED, `the others got 503 (${refused.length})`);
  const r = refused[0]?.answer() ?? '';
  t.match(r, /\r\nRetry-After: 3\r\n/i, '503 with Retry-After');
  t.match(r, /server\.max_receiving_bytes/, 'the error names server.max_receiving_bytes');
  await sleep(100);
  t.ok(refused.every((u) => u.closed()), 'refused connections are closed');

  let ok = 0;
  for (let i = 0; i < 20; i++) if ((await request(crowd.url('/leads'), { body: `small-${i}`, timeoutMs: 5000 })).status === 200) ok++;
  t.equal(ok, 20, 'small requests are served during the flood');

  // A chunked upload reserves as its buffer grows: past the budget it is refused mid-stream.
  const chunked = await connect(crowd.port);
  let ctext = '';
  chunked.on('data', (d) => (ctext += d.toString('latin1')));
  chunked.on('error', () => {});
  chunked.write('POST /leads HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n');
  const piece = Buffer.concat([Buffer.from('10000\r\n'), Buffer.alloc(0x10000, 'c'), Buffer.from('\r\n')]);
  for (let i = 0; i < 15 && ctext === ''; i++) {
    await writeAll(chunked, piece).catch(() => {});
    await sleep(20);
  }
  t.match(ctext, /^HTTP\/1\.1 503 [^]*server\.max_receiving_bytes/, 'a chunked upload that outgrows the budget gets 503');
  chunked.destroy();

  // Aborted uploads give their reservation back: a whole 1 MiB body is taken afterwards.
  held.forEach((u) => u.sock.destroy());
  await sleep(300);
  t.equal((await request(crowd.url('/leads'), { body: 'b'.repeat(DECLARED), timeoutMs: 5000 })).status, 200, 'after the uploads were dropped a 1 MiB body is taken');
  const tail = await runCli(['tail', '-c', crowd.configFile]);
  const bodies = tail.stdout.trim().split('\n').map((l) => JSON.parse(l).body as string);
  t.equal(bodies.length, 22, 'stored: the warm-up, the 20 small requests and the last 1 MiB body; nothing of the refused or unfinished uploads');
  t.notOk(bodies.some((b) => b.startsWith('f') || b.startsWith('c')), 'no refused or unfinished upload is stored');
});
