// Takeover between real `bin/crowd` nodes on loopback: a node killed with a backlog has it
// delivered by a peer (the upstream receives every id it acknowledged), hands it back when it
// returns (its targets resume from the taker's progress: nothing old is sent again), and a
// wiped node's old log is delivered to its end by a survivor and then removed.
import t from 'tap';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from '../helpers/http';
import { Upstream, waitFor } from '../helpers/upstream';
import { Cluster, status, tailReplica } from '../helpers/cluster';
import { runCli, type Crowd } from '../helpers/crowd';
import { taker as rendezvousTaker } from '../../src/replication/ownership';

const TAKEOVER_AFTER_MS = 2000;
/** Node a delivers slowly (a backlog builds up); its peers deliver at full speed. */
const SLOW_RATE = 20;
const CONCURRENCY = 4;

function clusterConfig(upstream: Upstream, extra: Record<string, any> = {}): Record<string, any> {
  return {
    routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
    targets: [{ name: 'api', url: upstream.url(), concurrency: CONCURRENCY, retry: { base: '50ms', max: '500ms' } }],
    ...extra,
  };
}

/** Ids the upstream received, with how often. */
function receivedIds(u: Upstream, since = 0): Map<string, number> {
  const m = new Map<string, number>();
  for (const r of u.received) {
    if (r.at < since) continue;
    const id = String(r.headers['crowd-id']);
    m.set(id, (m.get(id) ?? 0) + 1);
  }
  return m;
}

async function postMany(node: Crowd, n: number, tag: string): Promise<string[]> {
  const ids: string[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < n) {
      const i = next++;
      const r = await request(node.url('/leads'), { body: JSON.stringify({ tag, i }), headers: { 'content-type': 'application/json' } });
      if (r.status !== 200) throw new Error(`request ${tag}-${i}: ${r.status} ${r.body}`);
      ids.push(JSON.parse(r.body).id);
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  return ids;
}

async function metric(node: Crowd, pattern: RegExp): Promise<number | null> {
  const r = await request(node.adminUrl('/metrics'), { method: 'GET' });
  const m = pattern.exec(r.body);
  return m ? Number(m[1]) : null;
}

/** The replica of `origin` in `node`'s status (the latest incarnation, or the one named). */
async function replicaOf(node: Crowd, origin: string, incarnation?: string): Promise<any> {
  const list = (await status(node)).cluster.replicas.filter((r: any) => r.origin === origin && (incarnation === undefined || r.incarnation === incarnation));
  return list[list.length - 1];
}

t.test('a killed node: a peer delivers its backlog, then hands it back; nothing acknowledged is missing', async (t) => {
  const upstream = await Upstream.start();
  t.teardown(() => upstream.close());
  const c = await Cluster.create({
    ack: 'quorum',
    config: clusterConfig(upstream),
    perNode: (i) => ({ cluster: { takeover_after: `${TAKEOVER_AFTER_MS}ms` }, ...(i === 0 ? { config: { targets: [{ ...clusterConfig(upstream).targets[0], rate: SLOW_RATE }] } } : {}) }),
  });
  t.teardown(() => c.stop());
  await c.start();
  const [a, b, cc] = c.nodes as [Crowd, Crowd, Crowd];
  await waitFor(async () => (await status(a)).peers.every((p: any) => p.state === 'connected' && p.flushed_offset !== null), 10_000, 'a sees both peers');

  const acked = await postMany(a, 300, 'takeover');
  // Let a deliver some at its slow rate (and report how far), so the takers start in the middle.
  await new Promise((r) => setTimeout(r, 1500));
  const deliveredByA = receivedIds(upstream).size;
  t.ok(deliveredByA > 0 && deliveredByA < acked.length, `a delivered ${deliveredByA} of ${acked.length} before its kill`);
  await a.kill9();
  // After the exit (and what its sockets held has arrived), every delivery is the taker's.
  const killedAt = Date.now() + 50;

  // Within takeover_after plus the drain, the upstream has every acknowledged id.
  await waitFor(() => acked.every((id) => receivedIds(upstream).has(id)), 30_000, 'every acknowledged id delivered after the kill');
  const afterKill = upstream.received.filter((r) => r.at >= killedAt);
  const firstAt = Math.min(...afterKill.map((r) => r.at));
  const drainedAt = Math.max(...afterKill.map((r) => r.at));
  const counts = receivedIds(upstream);
  const dups = [...counts.values()].reduce((s, n) => s + n - 1, 0);
  // Sent twice at most: what a delivered after its last progress report (one second at its
  // rate, plus the commit interval) and its requests in flight at the kill.
  const bound = SLOW_RATE * 2 + CONCURRENCY;
  t.ok(dups <= bound, `${dups} duplicate deliveries (bound ${bound}); first delivery by the taker ${firstAt - killedAt} ms after the kill (takeover_after ${TAKEOVER_AFTER_MS} ms), drained ${drainedAt - killedAt} ms after it`);
  // a was last heard up to one heartbeat (1 s) before its kill.
  t.ok(firstAt - killedAt >= TAKEOVER_AFTER_MS - 1000 - 100, 'nobody delivered a\'s log before it was unheard of for takeover_after');

  // Exactly one peer took over (both see the same live set), and says so.
  const roles = [await replicaOf(b, 'a'), await replicaOf(cc, 'a')].map((r) => r.delivered_by);
  t.same(roles.filter((x) => x === 'this node').length, 1, `one taker (b: ${roles[0]}, c: ${roles[1]})`);
  const taker = roles[0] === 'this node' ? b : cc;
  const other = taker === b ? cc : b;
  await waitFor(async () => (await replicaOf(other, 'a')).delivered_by === (taker === b ? 'b' : 'c'), 5000, 'the other peer names the taker');
  t.pass('the other peer names the taker');
  t.equal(await metric(taker, /^crowd_takeover_active\{origin="a"\} (\d+)$/m), 1, 'crowd_takeover_active{origin="a"} is 1 on the taker');
  // The accounting identity holds per origin on the taker.
  await waitFor(async () => (await metric(taker, /^crowd_consumer_lag_messages\{target="api",origin="a"\} (\d+)$/m)) === 0, 10_000, 'the taker has no lag left');
  const acc = await metric(taker, /^crowd_accepted_total\{target="api",origin="a"\} (\d+)$/m);
  const del = await metric(taker, /^crowd_delivered_total\{target="api",origin="a"\} (\d+)$/m);
  const dead = await metric(taker, /^crowd_dead_letters\{target="api",origin="a"\} (\d+)$/m);
  t.ok(acc !== null && acc > 0 && acc === del! + dead!, `accepted ${acc} = delivered ${del} + dead ${dead} + lag 0 for origin a`);

  // a comes back on the same log: the taker hands back, a resumes from the taker's progress.
  const finishedByTaker = (await replicaOf(taker, 'a')).targets?.[0]?.committed_offset;
  const restartedAt = Date.now();
  await a.start();
  await waitFor(async () => (await replicaOf(taker, 'a')).delivered_by === 'origin', 10_000, 'the taker hands back');
  t.equal(await metric(taker, /^crowd_takeover_active\{origin="a"\} (\d+)$/m), 0, 'crowd_takeover_active{origin="a"} is 0 after the handback');
  const line = a.lines.map((l) => (l.startsWith('{') ? JSON.parse(l) : {})).find((j) => j.event === 'handback');
  t.ok(line && line.moved?.api?.to >= finishedByTaker, `a's target api resumes where the taker got to: ${JSON.stringify(line?.moved)} (taker at ${finishedByTaker})`);
  await waitFor(async () => (await status(a)).peers.every((p: any) => p.state === 'connected' && p.flushed_offset !== null), 10_000, 'a replicating again');
  const more = await postMany(a, 50, 'after-return');
  await waitFor(() => more.every((id) => receivedIds(upstream).has(id)), 20_000, 'a delivers new requests itself');
  const resent = [...receivedIds(upstream, restartedAt).keys()].filter((id) => acked.includes(id));
  t.same(resent, [], 'a sent none of its old backlog again after the handback');
  const total = receivedIds(upstream);
  t.same([...acked, ...more].filter((id) => !total.has(id)), [], 'nothing acknowledged is missing');
  const st = (await status(a)).targets[0];
  t.equal(st.lag, 0, 'a has no lag');
});

t.test('a wiped node: its old log is delivered to its end by a survivor, then removed; its new log starts cleanly', async (t) => {
  const upstream = await Upstream.start();
  t.teardown(() => upstream.close());
  const c = await Cluster.create({
    ack: 'quorum',
    config: clusterConfig(upstream, { log: { retention: '1s' } }),
    perNode: (i) => ({ cluster: { takeover_after: `${TAKEOVER_AFTER_MS}ms` }, ...(i === 0 ? { config: { targets: [{ ...clusterConfig(upstream).targets[0], rate: SLOW_RATE }] } } : {}) }),
  });
  t.teardown(() => c.stop());
  await c.start();
  const [a, b, cc] = c.nodes as [Crowd, Crowd, Crowd];
  await waitFor(async () => (await status(a)).peers.every((p: any) => p.state === 'connected' && p.flushed_offset !== null), 10_000, 'a sees both peers');
  const oldInc = (await status(a)).incarnation;
  const acked = await postMany(a, 150, 'wiped');
  await a.kill9();
  rmSync(a.logDir, { recursive: true, force: true });
  // Back at once (before takeover_after): a new log, so the old one has no origin any more.
  await a.start();
  const newInc = (await status(a)).incarnation;
  t.not(newInc, oldInc, 'a wiped node starts a new incarnation');
  t.equal((await status(a)).log.last_offset, 0, 'its new log starts empty');

  await waitFor(() => acked.every((id) => receivedIds(upstream).has(id)), 30_000, 'every id of the old log delivered');
  const started = (n: Crowd) => n.lines.filter((l) => l.includes('"event":"takeover_start"') && l.includes(oldInc) && l.includes('"orphaned":true')).length;
  t.same([started(b), started(cc)].sort(), [0, 1], `one survivor delivered the orphaned old log (b: ${started(b)}, c: ${started(cc)} takeover_start lines)`);
  const st = await runCli(['status', '-c', b.configFile]);
  t.equal(st.code, 0);
  t.match(st.stdout, /replicas/, 'crowd status lists the replicas');

  // The new log works on its own: a delivers new requests itself.
  await waitFor(async () => (await status(a)).peers.every((p: any) => p.state === 'connected' && p.flushed_offset !== null), 10_000, 'a replicating again');
  const fresh = await postMany(a, 20, 'new-log');
  await waitFor(() => fresh.every((id) => receivedIds(upstream).has(id)), 20_000, 'the new log is delivered');
  // Once every target finished it and its newest entry is past log.retention, the old replica goes.
  await waitFor(async () => (await replicaOf(b, 'a', oldInc)) === undefined && (await replicaOf(cc, 'a', oldInc)) === undefined, 20_000, 'the old replica is removed on both peers');
  t.pass('the orphaned replica was removed after it was delivered');
  const counts = receivedIds(upstream);
  t.same([...acked, ...fresh].filter((id) => !counts.has(id)), [], 'nothing acknowledged is missing');
});

t.test('a replica being delivered counts against log.max_bytes: the taker refuses new ingest (503) rather than drop it', async (t) => {
  // The upstream refuses everything: the backlog stays.
  const upstream = await Upstream.start(0, () => ({ status: 503 }));
  t.teardown(() => upstream.close());
  const c = await Cluster.create({
    ack: 'quorum',
    config: clusterConfig(upstream, { log: { max_bytes: '1MiB' } }),
    perNode: () => ({ cluster: { takeover_after: `${TAKEOVER_AFTER_MS}ms` } }),
  });
  t.teardown(() => c.stop());
  await c.start();
  const [a, b, cc] = c.nodes as [Crowd, Crowd, Crowd];
  await waitFor(async () => (await status(a)).peers.every((p: any) => p.state === 'connected' && p.flushed_offset !== null), 10_000, 'a sees both peers');
  const body = 'x'.repeat(10 * 1024);
  const codes: number[] = [];
  for (let i = 0; i < 70; i++) codes.push((await request(a.url('/leads'), { body })).status);
  t.same(new Set(codes), new Set([200]), '70 requests of 10 KiB acknowledged by a (quorum)');
  await a.kill9();
  let taker: Crowd | null = null;
  await waitFor(async () => {
    for (const n of [b, cc]) if ((await replicaOf(n, 'a'))?.delivered_by === 'this node') taker = n;
    return taker !== null;
  }, 15_000, 'a peer takes over');
  const tk = taker as unknown as Crowd;
  // 70 x 10 KiB of a's log are held for delivery here; 40 more of its own would pass 1 MiB.
  let refused: { status: number; body: string } | null = null;
  let accepted = 0;
  for (let i = 0; i < 40 && !refused; i++) {
    const r = await request(tk.url('/leads'), { body });
    if (r.status === 200) accepted++;
    else refused = r;
  }
  t.ok(refused !== null, `the taker refused new ingest after ${accepted} requests of its own`);
  t.equal(refused?.status, 503);
  t.match(JSON.parse(refused?.body ?? '{}').error, /over log\.max_bytes.*peers' logs this node delivers/, 'the 503 says the quota holds a peer\'s log');
  t.equal((await tailReplica(tk, 'a')).length, 70, 'the replica is kept whole');
});

t.test('the peer holding the most of a dead node\'s log delivers it, even when the hash prefers the other', async (t) => {
  const upstream = await Upstream.start();
  t.teardown(() => upstream.close());
  const c = await Cluster.create({
    ack: 'quorum',
    config: clusterConfig(upstream),
    perNode: (i) => ({ cluster: { takeover_after: `${TAKEOVER_AFTER_MS}ms` }, ...(i === 0 ? { config: { targets: [{ ...clusterConfig(upstream).targets[0], rate: 1 }] } } : {}) }),
  });
  t.teardown(() => c.stop());
  await c.start();
  const [a, b, cc] = c.nodes as [Crowd, Crowd, Crowd];
  await waitFor(async () => (await status(a)).peers.every((p: any) => p.state === 'connected' && p.lag === 0), 10_000, 'a sees both peers');
  // The hash's choice among b and c for a's log; the other one will hold more of it.
  const preferred = rendezvousTaker('a', ['b', 'c']) === 'b' ? b : cc;
  const longer = preferred === b ? cc : b;
  const acked = await postMany(a, 20, 'both');
  await waitFor(async () => (await status(a)).peers.every((p: any) => p.lag === 0), 10_000, 'both peers hold the first 20');
  await preferred.kill9();
  acked.push(...(await postMany(a, 30, 'one-copy'))); // quorum: a and the other peer
  await waitFor(async () => (await replicaOf(longer, 'a'))?.flushed_offset === 50, 10_000, 'the other peer holds all 50');
  await a.kill9();
  await preferred.start();
  await waitFor(() => acked.every((id) => receivedIds(upstream).has(id)), 30_000, 'every acknowledged id delivered');
  t.pass(`all ${acked.length} acknowledged ids delivered (${(await replicaOf(preferred, 'a')).flushed_offset} of them held by the hash's choice)`);
  t.equal((await replicaOf(longer, 'a')).delivered_by, 'this node', 'the peer holding all 50 delivers the log');
});

t.test('a node that returns while its taker is still delivering: the taker stops, the node resumes after it', async (t) => {
  const upstream = await Upstream.start();
  t.teardown(() => upstream.close());
  const target = (rate: number) => ({ targets: [{ ...clusterConfig(upstream).targets[0], rate }] });
  const c = await Cluster.create({
    ack: 'quorum',
    config: clusterConfig(upstream),
    // Everyone delivers slowly here: the taker is still busy when a comes back.
    perNode: (i) => ({ cluster: { takeover_after: `${TAKEOVER_AFTER_MS}ms` }, config: target(i === 0 ? 5 : 50) }),
  });
  t.teardown(() => c.stop());
  await c.start();
  const [a, b, cc] = c.nodes as [Crowd, Crowd, Crowd];
  await waitFor(async () => (await status(a)).peers.every((p: any) => p.state === 'connected' && p.flushed_offset !== null), 10_000, 'a sees both peers');
  const acked = await postMany(a, 400, 'busy-taker');
  await a.kill9();
  let taker: Crowd | null = null;
  await waitFor(async () => {
    for (const n of [b, cc]) if (((await replicaOf(n, 'a'))?.targets?.[0]?.delivered ?? 0) >= 20) taker = n;
    return taker !== null;
  }, 15_000, 'a taker delivering');
  const tk = taker as unknown as Crowd;
  const before = (await replicaOf(tk, 'a')).targets[0];
  t.ok(before.lag > 50, `the taker is mid-way: ${before.delivered} delivered, ${before.lag} to go`);
  // a comes back delivering at full speed (its config changed while it was down).
  const conf = JSON.parse(readFileSync(a.configFile, 'utf8'));
  conf.targets[0].rate = 0;
  writeFileSync(a.configFile, JSON.stringify(conf));
  await a.start();
  const line = a.lines.map((l) => (l.startsWith('{') ? JSON.parse(l) : {})).find((j) => j.event === 'handback');
  t.ok(line?.complete, `a waited until no peer delivered its log any more (${line?.waited_ms} ms): ${line?.msg}`);
  t.equal((await replicaOf(tk, 'a')).delivered_by, 'origin', 'the taker handed back');
  await waitFor(() => acked.every((id) => receivedIds(upstream).has(id)), 60_000, 'every acknowledged id delivered');
  const dups = [...receivedIds(upstream).values()].reduce((s, n) => s + n - 1, 0);
  // a's requests in flight and what it sent after its last progress (2 s at 5/s) before the
  // kill, and the taker's requests in flight when it stopped.
  const bound = 4 + 2 * 5 + 4;
  t.ok(dups <= bound, `${dups} duplicate deliveries (bound ${bound})`);
});
