// Ensures pipelined HTTP/1.1 requests (several sent before the first answer) are refused
// before anything is stored: uWebSockets.js closes the connection when a request arrives while
// the one before it waits for its fsync, so an acknowledgement could never reach the client
// and its retry would be stored again under a new id.
import t from 'tap';
import { Crowd, runCli } from '../helpers/crowd';
import { rawExchange, request } from '../helpers/http';

const crowd = new Crowd();
t.before(() => crowd.start());
t.teardown(() => crowd.stop());

async function storedBodies(): Promise<string[]> {
  const r = await runCli(['tail', '-c', crowd.configFile]);
  t.equal(r.code, 0, 'crowd tail exits 0');
  return r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l).body);
}

function post(body: string): string {
  return `POST /leads HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
}

for (const n of [2, 10]) {
  t.test(`${n} POSTs pipelined in one write: the connection closes, none is stored`, async (t) => {
    const bodies = Array.from({ length: n }, (_, i) => `pipelined-${n}-${i}`);
    const r = await rawExchange(crowd.port, bodies.map(post).join(''), 3000);
    t.ok(r.closed, 'crowd closed the connection');
    t.notMatch(r.text, /HTTP\/1\.1 2\d\d /, 'no request was acknowledged');
    const stored = await storedBodies();
    for (const b of bodies) t.notOk(stored.includes(b), `${b} is not stored`);
  });
}

t.test('requests sent one after the other on a keep-alive connection are all taken', async (t) => {
  const r = await rawExchange(crowd.port, post('single-0'), 500);
  t.match(r.text, /^HTTP\/1\.1 200 /);
  t.equal((await request(crowd.url('/leads'), { body: 'single-1' })).status, 200);
  const stored = await storedBodies();
  t.ok(stored.includes('single-0') && stored.includes('single-1'), 'both stored');
});
