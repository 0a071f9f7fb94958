// Bounded memory while an upstream hangs: a backlog of 1 MiB requests for a target whose
// upstream accepts connections and never answers. The consumer holds at most
// `max_read_ahead_bytes` of envelopes, so crowd's anonymous RSS grows by about that much
// (plus the requests in flight), not by the backlog.
import t from 'tap';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { Crowd } from '../helpers/crowd';
import { request } from '../helpers/http';
import { targetStatus } from '../helpers/delivery';

const MiB = 1024 * 1024;
const COUNT = 200;
const BODY = MiB - 4096; // within the default max_body_bytes
const LIMIT_MIB = 16;
const CONCURRENCY = 16;

/** Anonymous resident memory of a process, in bytes (/proc/PID/status RssAnon). */
function rssAnon(pid: number): number {
  const m = /^RssAnon:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no RssAnon in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/** POSTs `count` bodies of BODY bytes to `path`, 4 at a time. */
async function postBig(crowd: Crowd, path: string, count: number, sample: () => void): Promise<void> {
  const body = Buffer.alloc(BODY, 0x61);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      next++;
      const r = await request(crowd.url(path), { body, headers: { 'content-type': 'application/octet-stream' } });
      if (r.status !== 200) throw new Error(`POST ${path} got ${r.status}: ${r.body}`);
      sample();
    }
  };
  await Promise.all(Array.from({ length: 4 }, worker));
}

t.test(`${COUNT} x 1 MiB for an upstream that never answers: RSS grows by the read-ahead bound, not the backlog`, async (t) => {
  // Accepts, reads and never answers.
  const sockets = new Set<net.Socket>();
  const hang = net.createServer((s) => {
    sockets.add(s);
    s.on('data', () => undefined);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => hang.listen(0, '127.0.0.1', r));
  const port = (hang.address() as AddressInfo).port;
  const crowd = new Crowd({
    config: {
      routes: [
        { name: 'leads', path: '/leads', targets: ['api'] },
      ],
      targets: [{ name: 'api', url: `http://127.0.0.1:${port}`, concurrency: CONCURRENCY, timeout: '120s', max_read_ahead_bytes: `${LIMIT_MIB}MiB` }],
    },
  });
  t.teardown(async () => {
    await crowd.stop();
    for (const s of sockets) s.destroy();
    await new Promise((r) => hang.close(r));
  });
  await crowd.start();
  // A fresh process: what crowd holds before any request.
  await new Promise((r) => setTimeout(r, 300));
  const baseline = rssAnon(crowd.proc!.pid!);
  // The backlog: the first requests hang at the upstream, the rest wait in the log.
  await postBig(crowd, '/leads', COUNT, () => undefined);
  // A restart finds the whole backlog at once (what a consumer meets after an outage).
  await crowd.kill9();
  for (const s of sockets) s.destroy();
  await crowd.start();
  const pid = crowd.proc!.pid!;
  let peak = 0;
  const sample = (): void => {
    peak = Math.max(peak, rssAnon(pid));
  };
  const end = Date.now() + 3000;
  while (Date.now() < end) {
    sample();
    await new Promise((r) => setTimeout(r, 50));
  }
  t.equal((await targetStatus(crowd, 'api')).in_flight, CONCURRENCY, 'the upstream holds every request in flight');
  const s = await targetStatus(crowd, 'api');
  t.equal(s.lag, COUNT, 'nothing delivered');
  t.equal(s.accepted, COUNT, 'the backlog is counted');
  // The envelopes held (LIMIT; the requests in flight are among them), transient copies (a
  // read decodes, the sink writes), V8's and the allocator's slack: measured 41-60 MiB of
  // growth on this machine, against 222 MiB (the whole backlog) before reads were bounded
  // in bytes. The bound sits between the two, well clear of each.
  const bound = baseline + 5 * LIMIT_MIB * MiB;
  t.ok(peak < bound, `peak RssAnon ${(peak / MiB).toFixed(0)} MiB < baseline ${(baseline / MiB).toFixed(0)} MiB + 5 x ${LIMIT_MIB} MiB (growth ${((peak - baseline) / MiB).toFixed(0)} MiB with ${COUNT} MiB waiting)`);
});
