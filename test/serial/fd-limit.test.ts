// Runs alone (test/serial/): the spin it measures takes a whole core.
// Ensures that at its file-descriptor limit crowd warns about the low limit at start, stops
// accepting near the limit instead of spinning (uSockets retries accept4, which fails with
// EMFILE, in a busy loop: one core at 100%), keeps serving the connections it has, and accepts
// again once descriptors are free.
// crowd runs under `prlimit --nofile=1024:1024` (util-linux).
import t from 'tap';
import { execFileSync } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import { Crowd } from '../helpers/crowd';
import { request } from '../helpers/http';
import { cpuSeconds, sleep } from '../helpers/proc';

const LIMIT = 1024;
const IDLE = 1500;

function hasPrlimit(): boolean {
  try {
    execFileSync('prlimit', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

t.test(`${IDLE} idle connections under a descriptor limit of ${LIMIT}`, async (t) => {
  if (!hasPrlimit()) {
    t.fail('prlimit (util-linux) is needed to run crowd under a low descriptor limit; install util-linux');
    return;
  }
  const crowd = new Crowd({ wrap: ['prlimit', `--nofile=${LIMIT}:${LIMIT}`, '--'] });
  await crowd.start();
  t.teardown(() => crowd.stop());
  const pid = crowd.proc!.pid!;
  const limits = execFileSync('prlimit', ['--pid', String(pid), '--nofile', '--noheadings', '--output', 'SOFT,HARD'], { encoding: 'utf8' }).trim();
  t.match(limits, new RegExp(`^${LIMIT}\\s+${LIMIT}$`), `crowd runs with soft and hard limit ${LIMIT}`);
  t.ok(crowd.lines.some((l) => /"level":"warn"/.test(l) && /open files/.test(l) && l.includes(String(LIMIT))), 'crowd warns that its descriptor limit is low');

  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  t.equal((await request(crowd.url('/leads'), { body: 'before', agent })).status, 200, 'a keep-alive client is served before the flood');

  const idle: net.Socket[] = [];
  t.teardown(() => idle.forEach((s) => s.destroy()));
  let refused = 0;
  for (let i = 0; i < IDLE; i += 100) {
    await Promise.all(
      Array.from({ length: 100 }, () => new Promise<void>((res) => {
        const s = net.connect(crowd.port, '127.0.0.1');
        idle.push(s);
        s.once('connect', () => res());
        s.once('error', () => {
          refused++;
          res();
        });
        setTimeout(res, 2000).unref();
      })),
    );
  }
  t.comment(`${IDLE} idle connections opened, ${refused} refused or reset`);
  await sleep(1500);

  const cpu0 = cpuSeconds(pid);
  const wall0 = Date.now();
  let slowest = 0;
  let served = 0;
  while (Date.now() - wall0 < 3000) {
    const started = Date.now();
    const r = await request(crowd.url('/leads'), { body: `during-${served}`, agent, timeoutMs: 5000 }).catch((e: Error) => ({ status: 0, body: e.message }));
    if (r.status === 200) served++;
    slowest = Math.max(slowest, Date.now() - started);
    await sleep(100);
  }
  const share = (cpuSeconds(pid) - cpu0) / ((Date.now() - wall0) / 1000);
  t.comment(`crowd CPU over ${Date.now() - wall0} ms at the limit: ${(share * 100).toFixed(0)}% of one core; ${served} requests served, slowest ${slowest} ms`);
  t.ok(share < 0.25, `crowd does not spin at the limit (${(share * 100).toFixed(0)}% of a core)`);
  t.ok(crowd.lines.some((l) => l.includes('"event":"accept_paused"')), 'it says that it stopped accepting near the limit');
  t.ok(served >= 10, `the keep-alive client is served meanwhile (${served} requests)`);
  t.ok(slowest < 1000, `promptly (slowest ${slowest} ms)`);

  idle.forEach((s) => s.destroy());
  let again = 0;
  const until = Date.now() + 5000;
  while (Date.now() < until && again === 0) {
    const r = await request(crowd.url('/leads'), { body: 'after', timeoutMs: 1000 }).catch(() => null);
    if (r?.status === 200) again = 1;
    else await sleep(100);
  }
  t.equal(again, 1, 'new connections are accepted again once the idle ones are gone');
  t.ok(crowd.lines.some((l) => l.includes('"event":"accept_resumed"')), 'and says so');
});
