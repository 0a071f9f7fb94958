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
