// Ensures that after SIGTERM every request on an open keep-alive connection gets
// 503 + Connection: close (or the connection was closed cleanly before the request was sent),
// never a reset or a close in the middle of the request, and that nothing sent after SIGTERM
// is stored.
import t from 'tap';
import net from 'node:net';
import { Crowd, runCli } from '../helpers/crowd';
import { sleep } from '../helpers/proc';

const CONNECTIONS = 400;

interface Conn {
  sock: net.Socket;
  text: string;
  ended: boolean;
  endedBeforeSend: boolean;
  error: string | null;
  closed: Promise<void>;
}

function post(body: string): string {
  return `POST /leads HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
}

async function open(port: number, body: string): Promise<Conn> {
  const sock = net.connect(port, '127.0.0.1');
  const c: Conn = { sock, text: '', ended: false, endedBeforeSend: false, error: null, closed: Promise.resolve() };
  c.closed = new Promise((r) => sock.once('close', () => r()));
  sock.on('data', (d) => (c.text += d.toString('latin1')));
  sock.on('end', () => (c.ended = true));
  sock.on('error', (e) => (c.error = (e as NodeJS.ErrnoException).code ?? e.message));
  await new Promise<void>((res, rej) => {
    sock.once('connect', () => res());
    sock.once('error', rej);
  });
  sock.write(post(body));
  for (let i = 0; i < 500 && !c.text.includes('}'); i++) await sleep(10);
  if (!/^HTTP\/1\.1 200 /.test(c.text)) throw new Error(`warm-up request not acknowledged: ${c.text.slice(0, 80)}`);
  c.text = '';
  return c;
}

t.test('SIGTERM with many keep-alive connections: 503 + Connection: close on each, nothing stored', async (t) => {
  const crowd = new Crowd();
  await crowd.start();
  t.teardown(() => crowd.stop());
  const conns: Conn[] = [];
  t.teardown(() => conns.forEach((c) => c.sock.destroy()));
  for (let i = 0; i < CONNECTIONS; i += 50) conns.push(...(await Promise.all(Array.from({ length: 50 }, (_, j) => open(crowd.port, `before-${i + j}`)))));

  const exit = crowd.sigterm();
  for (let i = 0; i < 500 && !crowd.lines.some((l) => l.includes('"event":"stopping"')); i++) await sleep(5);
  t.ok(crowd.lines.some((l) => l.includes('"event":"stopping"')), 'crowd logged that it is stopping');
  // From here on every request is sent after crowd began to stop: in waves, so that some
  // arrive while it drains and some after it would have been done.
  const waves = [0, 20, 50, 100, 200];
  for (let w = 0; w < waves.length; w++) {
    if (w > 0) await sleep(waves[w]! - waves[w - 1]!);
    for (let i = w; i < conns.length; i += waves.length) {
      const c = conns[i]!;
      if (c.ended || c.sock.destroyed) c.endedBeforeSend = true;
      else c.sock.write(post(`after-${i}`));
    }
  }
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([Promise.all(conns.map((c) => c.closed)), new Promise((r) => (timer = setTimeout(r, 15_000)))]);
  clearTimeout(timer);

  const outcomes = new Map<string, number>();
  const bump = (k: string) => outcomes.set(k, (outcomes.get(k) ?? 0) + 1);
  for (const c of conns) {
    if (c.endedBeforeSend) bump('closed cleanly before the request was sent');
    else if (/^HTTP\/1\.1 503 /.test(c.text) && /\r\nConnection: close\r\n/i.test(c.text) && /\r\nRetry-After: \d+\r\n/i.test(c.text) && /shutting down/.test(c.text)) bump('503 + Connection: close');
    else if (/^HTTP\/1\.1 2/.test(c.text)) bump('acknowledged after SIGTERM');
    else if (c.error) bump(`error ${c.error} after the request was sent`);
    else if (c.ended) bump('closed after the request was sent, without an answer');
    else bump(`other: ${JSON.stringify(c.text.slice(0, 60))}`);
  }
  t.comment([...outcomes].map(([k, v]) => `${v} x ${k}`).join('; '));
  const good = (outcomes.get('503 + Connection: close') ?? 0) + (outcomes.get('closed cleanly before the request was sent') ?? 0);
  t.equal(good, CONNECTIONS, 'every connection got 503 + Connection: close, or was closed cleanly before its request');
  t.ok((outcomes.get('503 + Connection: close') ?? 0) > 0, 'requests sent after SIGTERM were answered 503');

  const e = await exit;
  t.equal(e.code, 0, 'crowd exits 0');
  const tail = await runCli(['tail', '-c', crowd.configFile]);
  const bodies = new Set(tail.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l).body as string));
  t.equal([...bodies].filter((b) => b.startsWith('after-')).length, 0, 'nothing sent after SIGTERM is stored');
  t.equal([...bodies].filter((b) => b.startsWith('before-')).length, CONNECTIONS, 'every request acknowledged before SIGTERM is stored');
});
