// Replication between real `bin/crowd` nodes on loopback: quorum acks survive the leader's
// kill -9 on a peer, a follower killed under load catches up without gaps, stopped peers
// turn quorum requests into 503 within cluster.ack_timeout while local acks go on, a wrong
// secret replicates nothing, and a wiped node's new incarnation never touches its old replica.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { lookup } from 'node:dns/promises';
import { hostname } from 'node:os';
import { LoadClient, type Ack } from '../helpers/load';
import { request } from '../helpers/http';
import { Upstream, waitFor } from '../helpers/upstream';
import { Cluster, caughtUp, status, tailReplica } from '../helpers/cluster';
import { runCli, type Crowd } from '../helpers/crowd';

async function tail(node: Crowd): Promise<any[]> {
  const r = await runCli(['tail', '-c', node.configFile]);
  if (r.code !== 0) throw new Error(`crowd tail exited ${r.code}: ${r.stderr}`);
  return r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

const byId = (entries: any[]): Map<string, any> => new Map(entries.map((e) => [e.id, e]));

t.test('quorum: every request the leader acknowledged before its kill -9 is on a surviving peer, same id, body and offset', async (t) => {
  const c = await Cluster.create({ ack: 'quorum', minInsync: 2 });
  t.teardown(() => c.stop());
  await c.start();
  const [a, b, cc] = c.nodes as [Crowd, Crowd, Crowd];
  await waitFor(async () => (await status(a)).cluster.peers.every((p: any) => p.state === 'connected') && (await status(a)).peers.every((p: any) => p.flushed_offset !== null), 10_000, 'a sees both peers');
  const client = new LoadClient(() => a.url('/leads'), { workers: 16, maxRequests: 20_000, tag: 'quorum-kill', timeoutMs: 5000 }).start();
  // However loaded the machine: a few hundred acks, then the kill at a random moment.
  await waitFor(() => client.acks.length >= 200, 30_000, '200 acks');
  await new Promise((r) => setTimeout(r, Math.random() * 500));
  await a.kill9();
  await client.stop();
  t.ok(client.acks.length >= 200, `${client.acks.length} acknowledged before the kill (${client.refused} 503, ${client.errors} connection errors)`);
  const leader = byId(await tail(a)); // kill -9 keeps the page cache: a's own log holds everything it acknowledged
  const replicas = [byId(await tailReplica(b, 'a')), byId(await tailReplica(cc, 'a'))];
  let onBoth = 0;
  const missing: string[] = [];
  const differ: string[] = [];
  for (const ack of client.acks) {
    const own = leader.get(ack.id);
    const copies = replicas.map((r) => r.get(ack.id)).filter(Boolean);
    if (copies.length === 0) missing.push(ack.id);
    else if (!copies.every((e) => e.body === ack.body && own && e.offset === own.offset && e.received_at === own.received_at)) differ.push(ack.id);
    if (copies.length === 2) onBoth++;
  }
  t.same({ missing: missing.length, differ: differ.length }, { missing: 0, differ: 0 }, `every acknowledged id is on b or c with the leader's offset and body (${onBoth} on both)`);
});

t.test('a follower killed under load catches up and holds the whole range', async (t) => {
  const c = await Cluster.create({ ack: 'quorum', minInsync: 2 });
  t.teardown(() => c.stop());
  await c.start();
  const [a, b] = c.nodes as [Crowd, Crowd, Crowd];
  await waitFor(() => caughtUp(a), 10_000, 'a replicating');
  const client = new LoadClient(() => a.url('/leads'), { workers: 8, maxRequests: 20_000, tag: 'follower-kill', timeoutMs: 5000 }).start();
  await new Promise((r) => setTimeout(r, 700));
  await b.kill9();
  await new Promise((r) => setTimeout(r, 700));
  await b.start();
  await new Promise((r) => setTimeout(r, 700));
  await client.stop();
  t.ok(client.acks.length > 100, `${client.acks.length} acknowledged while b was killed and restarted (${client.refused} 503)`);
  await waitFor(() => caughtUp(a), 20_000, 'both peers caught up with a');
  const leader = await tail(a);
  const replica = await tailReplica(b, 'a');
  t.equal(replica.length, leader.length, `b holds ${replica.length} entries of a's ${leader.length}`);
  t.same(replica.map((e) => e.offset), leader.map((e) => e.offset), 'the same offsets, no gap');
  t.ok(replica.every((e, i) => e.id === leader[i].id && e.body === leader[i].body), 'the same ids and bodies');
  const s = await status(b);
  const held = s.cluster.replicas.find((r: any) => r.origin === 'a');
  t.equal(held.gaps, 0, 'no gap recorded');
});

t.test('peers stopped: quorum requests get 503 within ack_timeout; local acks go on; replication resumes', async (t) => {
  const c = await Cluster.create({ ack: 'quorum', minInsync: 2, ackTimeout: '500ms', perNode: (i) => (i === 1 ? { cluster: { ack: 'local' } } : {}) });
  t.teardown(async () => {
    for (const n of c.nodes) n.proc?.kill('SIGCONT');
    await c.stop();
  });
  await c.start();
  const [a, b, cc] = c.nodes as [Crowd, Crowd, Crowd];
  await waitFor(async () => (await caughtUp(a)) && (await caughtUp(b)), 10_000, 'replicating');
  const before = await request(a.url('/leads'), { body: 'before' });
  t.equal(before.status, 200, 'quorum ack while the peers run');
  cc.proc!.kill('SIGSTOP');
  const stoppedB = async () => b.proc!.kill('SIGSTOP');
  // b is a leader in local mode too: it must keep acking while both its peers are stopped.
  a.proc!.kill('SIGSTOP');
  const localAcks: number[] = [];
  for (let i = 0; i < 20; i++) localAcks.push((await request(b.url('/leads'), { body: `local-${i}` })).status);
  t.same(localAcks, new Array(20).fill(200), 'ack = "local": b acknowledges with both peers stopped');
  a.proc!.kill('SIGCONT');
  await stoppedB();
  const started = Date.now();
  const answers = await Promise.all([0, 1, 2, 3].map((i) => request(a.url('/leads'), { body: `stopped-${i}`, timeoutMs: 10_000 })));
  const took = Date.now() - started;
  t.same(answers.map((r) => r.status), [503, 503, 503, 503], 'quorum requests refused with both peers stopped');
  t.match(answers[0]!.body, /quorum not reached in 500 ms: 1 of the 2 copies/);
  t.ok(answers.every((r) => r.headers['retry-after']), 'with Retry-After');
  t.ok(took >= 450 && took < 2500, `answered after ${took} ms (ack_timeout 500 ms)`);
  const metrics = (await request(a.adminUrl('/metrics'), { method: 'GET' })).body;
  t.match(metrics, /^crowd_quorum_timeouts_total [1-9]/m, 'counted in crowd_quorum_timeouts_total');
  // Unheard of for 3 s, the peers no longer count as live: refused at once, nothing stored.
  await new Promise((r) => setTimeout(r, 3500));
  const last = await tail(a);
  const t0 = Date.now();
  const atOnce = await request(a.url('/leads'), { body: 'refused-at-once' });
  const tookAtOnce = Date.now() - t0;
  t.equal(atOnce.status, 503, 'refused with no live peer');
  t.match(atOnce.body, /quorum unreachable: 0 of the 1 peers cluster\.min_insync needs are replicating/);
  t.ok(tookAtOnce < 450, `at once (${tookAtOnce} ms), not after ack_timeout`);
  t.equal((await tail(a)).length, last.length, 'and not stored');
  b.proc!.kill('SIGCONT');
  cc.proc!.kill('SIGCONT');
  await waitFor(async () => (await caughtUp(a)) && (await caughtUp(b)), 20_000, 'lag back to 0 after SIGCONT');
  const after = await request(a.url('/leads'), { body: 'after' });
  t.equal(after.status, 200, 'quorum acks again');
  // The refused requests were stored on a and replicated all the same (documented: a retry may duplicate).
  const onB = await tailReplica(b, 'a');
  t.ok(['stopped-0', 'stopped-3', 'after'].every((body) => onB.some((e) => e.body === body)), 'the 503 requests are stored and replicated');
  const m = (await request(a.adminUrl('/metrics'), { method: 'GET' })).body;
  t.match(m, /^crowd_peer_up\{peer="http:\/\/127\.0\.0\.1:\d+"\} 1$/m);
  t.match(m, /^crowd_replication_lag_messages\{peer="http:\/\/127\.0\.0\.1:\d+"\} 0$/m);
  t.match(m, /^crowd_replica_last_offset\{origin="b"\} 20$/m, 'a holds b\'s 20 local acks');
  t.match(m, /^crowd_quorum_wait_seconds_count [1-9]/m);
  const promtool = spawnSync('promtool', ['check', 'metrics'], { input: m, encoding: 'utf8' });
  t.equal(promtool.error, undefined, 'promtool is installed (make deps installs the prometheus package)');
  t.equal(promtool.status, 0, `promtool check metrics with the replication metrics: ${promtool.stdout}${promtool.stderr}`);
});

t.test('a wrong secret is refused and replicates nothing', async (t) => {
  const c = await Cluster.create({ nodes: 2, ack: 'local', perNode: (i) => (i === 1 ? { cluster: { secret: 'not-the-cluster-secret-0000' } } : {}) });
  t.teardown(() => c.stop());
  await c.start();
  const [a, b] = c.nodes as [Crowd, Crowd];
  for (let i = 0; i < 5; i++) t.equal((await request(a.url('/leads'), { body: `a-${i}` })).status, 200);
  await waitFor(async () => (await status(b)).peers[0]?.state === 'unauthorized', 10_000, 'b sees itself refused');
  await waitFor(async () => (await status(a)).peers[0]?.state === 'unauthorized', 10_000, 'a sees itself refused');
  const sb = await status(b);
  t.match(sb.peers[0].reason, /refused this node's cluster\.secret/);
  t.same(sb.cluster.replicas, [], 'b holds no replica');
  t.same((await status(a)).cluster.replicas, [], 'a holds no replica');
  const m = (await request(a.adminUrl('/metrics'), { method: 'GET' })).body;
  t.match(m, /^crowd_peer_auth_failures_total [1-9]/m, 'counted');
  t.ok(a.lines.some((l) => l.includes('"event":"peer_unauthorized"') && l.includes('127.0.0.1')), 'logged with the peer address');
});

t.test("a wiped node rejoins with a new incarnation; its old log's replica stays untouched", async (t) => {
  const c = await Cluster.create({ nodes: 2, ack: 'quorum', minInsync: 2 });
  t.teardown(() => c.stop());
  await c.start();
  const [a, b] = c.nodes as [Crowd, Crowd];
  await waitFor(() => caughtUp(a), 10_000, 'replicating');
  const first: Ack[] = [];
  for (let i = 0; i < 30; i++) {
    const r = await request(a.url('/leads'), { body: `old-${i}` });
    t.equal(r.status, 200);
    first.push({ id: JSON.parse(r.body).id, body: `old-${i}` });
  }
  const oldInc = (await status(a)).incarnation;
  const stopping = Date.now();
  await a.sigterm();
  // Followers' connections to a are closed at stop: they do not hold it (an idle connection would, up to 10 s).
  t.ok(Date.now() - stopping < 5000, `SIGTERM stopped a in ${Date.now() - stopping} ms with b following it`);
  rmSync(a.logDir, { recursive: true, force: true });
  await a.start();
  const newInc = (await status(a)).incarnation;
  t.not(newInc, oldInc, `a new incarnation (${oldInc} -> ${newInc})`);
  await waitFor(() => caughtUp(a), 10_000, 'replicating again');
  for (let i = 0; i < 10; i++) t.equal((await request(a.url('/leads'), { body: `new-${i}` })).status, 200);
  await waitFor(() => caughtUp(a), 10_000, 'caught up');
  const old = await tailReplica(b, 'a', ['--incarnation', oldInc]);
  t.same(old.map((e) => [e.offset, e.id, e.body]), first.map((f, i) => [i + 1, f.id, f.body]), 'the old replica: offsets 1..30, the same ids and bodies');
  const fresh = await tailReplica(b, 'a');
  t.same(fresh.map((e) => [e.offset, e.body]), [...Array(10).keys()].map((i) => [i + 1, `new-${i}`]), 'the new incarnation: its own offsets 1..10');
  const held = (await status(b)).cluster.replicas.filter((r: any) => r.origin === 'a').map((r: any) => r.incarnation);
  t.same(held.sort(), [oldInc, newInc].sort(), 'b holds both');
});

t.test("a follower behind the leader's retention resumes from its first offset and counts the gap", async (t) => {
  const up = await Upstream.start(0, () => ({ status: 200 }));
  const c = await Cluster.create({
    nodes: 2,
    ack: 'local',
    config: { log: { retention: '100ms' }, routes: [{ name: 'leads', path: '/leads', targets: ['api'] }], targets: [{ name: 'api', url: up.url() }] },
  });
  t.teardown(async () => {
    await c.stop();
    await up.close();
  });
  await c.start();
  const [a, b] = c.nodes as [Crowd, Crowd];
  for (let i = 0; i < 10; i++) t.equal((await request(a.url('/leads'), { body: `kept-${i}` })).status, 200);
  await waitFor(async () => (await caughtUp(a)) && (await tailReplica(b, 'a')).length === 10, 10_000, 'b holds the first 10');
  await b.kill9();
  for (let i = 0; i < 30; i++) t.equal((await request(a.url('/leads'), { body: `missed-${i}` })).status, 200);
  // Delivered, then removed by a's retention (housekeeping runs every second here).
  await waitFor(async () => {
    const l = (await status(a)).log;
    return l.last_offset === 40 && l.bytes === 0; // an empty log shows first_offset 0
  }, 15_000, "a's retention removed everything delivered");
  // From here the upstream refuses: what follows stays owed, so a's retention keeps it.
  up.respond = () => ({ status: 503 });
  for (let i = 0; i < 5; i++) t.equal((await request(a.url('/leads'), { body: `after-${i}` })).status, 200);
  await b.start();
  await waitFor(() => caughtUp(a), 15_000, 'b caught up');
  const replica = await tailReplica(b, 'a');
  const bodies = replica.map((e) => e.body);
  // What b held (1..10) was delivered and removed on a too: b follows a's retention below the finished offsets.
  t.same(bodies, [...Array(5).keys()].map((i) => `after-${i}`), 'b holds what a holds: the entries after the gap');
  t.same(replica.map((e) => e.offset), [41, 42, 43, 44, 45], 'at their offsets');
  const m = (await request(b.adminUrl('/metrics'), { method: 'GET' })).body;
  t.match(m, /^crowd_replication_gaps_total\{origin="a"\} 1$/m, 'the gap is counted');
  t.ok(b.lines.some((l) => l.includes('"event":"replication_gap"') && l.includes('"from":11')), 'and logged with its range');
  const held = (await status(b)).cluster.replicas.find((r: any) => r.origin === 'a');
  t.equal(held.gaps, 1);
  // The leader's per-target finished offset travels with the replica: everything through 40 was
  // delivered; the after-* entries are owed (the upstream refuses them now), so api finished 40.
  await waitFor(async () => (await status(b)).cluster.replicas.find((r: any) => r.origin === 'a').finished.api === 40, 5000, "b knows a's finished offset for api");
  t.pass('finished offset replicated: api 40');
});

t.test('a 12 MiB body (one record larger than the 8 MiB window) is replicated and quorum-acknowledged', async (t) => {
  const c = await Cluster.create({ nodes: 2, ack: 'quorum', minInsync: 2, config: { server: { max_body_bytes: '16MiB', max_receiving_bytes: '64MiB' } } });
  t.teardown(() => c.stop());
  await c.start();
  const [a, b] = c.nodes as [Crowd, Crowd];
  await waitFor(() => caughtUp(a), 10_000, 'replicating');
  const big = 'z'.repeat(12 * 1024 * 1024);
  const r = await request(a.url('/leads'), { body: big, timeoutMs: 20_000 });
  t.equal(r.status, 200, `answered ${r.status} ${r.status === 200 ? '' : r.body}`);
  const small = await request(a.url('/leads'), { body: 'small-after' });
  t.equal(small.status, 200, 'and the next request too');
  const replica = await tailReplica(b, 'a');
  t.equal(replica.length, 2);
  t.equal(replica[0].body.length, big.length, 'the large body, whole');
  t.equal(replica[1].body, 'small-after');
});

t.test("a stopped follower costs the leader at most its window: the rest stays on disk until it resumes", async (t) => {
  const c = await Cluster.create({ nodes: 2, ack: 'local' });
  t.teardown(async () => {
    c.nodes[1]!.proc?.kill('SIGCONT');
    await c.stop();
  });
  await c.start();
  const [a, b] = c.nodes as [Crowd, Crowd];
  await waitFor(() => caughtUp(a), 10_000, 'replicating');
  b.proc!.kill('SIGSTOP');
  const body = 'w'.repeat(100 * 1024);
  let sent = 0;
  for (let round = 0; round < 40; round++) {
    const answers = await Promise.all([...Array(8).keys()].map(() => request(a.url('/leads'), { body })));
    sent += answers.filter((r) => r.status === 200).length;
  }
  const bytes = sent * body.length;
  t.ok(bytes > 30 * 1024 * 1024, `${(bytes / 1048576).toFixed(1)} MiB acknowledged while b is stopped`);
  const peer = (await status(a)).peers[0];
  if (!(peer.in_flight_bytes > 0)) t.comment(`a's warnings: ${a.lines.filter((l) => /"level":"(warn|error)"|follower_/.test(l)).slice(-8).join('\n')}\nb's: ${b.lines.filter((l) => /"level":"(warn|error)"|replication_|peer_/.test(l)).slice(-8).join('\n')}`);
  t.ok(peer.in_flight_bytes > 0 && peer.in_flight_bytes <= 8 * 1024 * 1024, `a holds ${peer.in_flight_bytes} bytes for b: at most the 8 MiB window`);
  t.ok(peer.lag > 0, `b lags ${peer.lag} entries`);
  b.proc!.kill('SIGCONT');
  await waitFor(() => caughtUp(a), 20_000, 'b caught up after SIGCONT');
  const replica = await tailReplica(b, 'a', ['-n', '1']);
  t.equal(replica[0].offset, sent, 'b holds everything');
});

t.test('one node listed under two addresses: the second link is refused, one replica is written', async (t) => {
  const name = hostname();
  const resolved = await lookup(name, { family: 4 }).catch(() => null);
  if (resolved?.address !== '127.0.0.1') {
    t.plan(0, `skipped: the host name ${name} does not resolve to 127.0.0.1 here (${resolved?.address ?? 'no address'}), so a loopback node has no second address`);
    return;
  }
  const c = await Cluster.create({ nodes: 2, ack: 'local' });
  const bUrl = `http://127.0.0.1:${c.ports[1]}`;
  const alias = `http://${name}:${c.ports[1]}`;
  const a = c.nodes[0]!;
  // a lists b twice: 127.0.0.1 and its host name.
  const cfg = JSON.parse(readFileSync(a.configFile, 'utf8'));
  cfg.cluster.peers = [bUrl, alias];
  writeFileSync(a.configFile, JSON.stringify(cfg));
  t.teardown(() => c.stop());
  await c.start();
  await waitFor(async () => (await status(a)).peers.some((p: any) => p.state === 'refused'), 10_000, 'the second link refused');
  const peers = (await status(a)).peers;
  t.equal(peers.filter((p: any) => p.state === 'connected').length, 1, 'one link replicates b');
  t.match(peers.find((p: any) => p.state === 'refused').reason, /is node b, already replicated through http:\/\//);
  for (let i = 0; i < 5; i++) t.equal((await request(c.nodes[1]!.url('/leads'), { body: `b-${i}` })).status, 200);
  await waitFor(async () => (await tailReplica(a, 'b')).length === 5, 10_000, 'a holds b once');
  t.equal((await status(a)).cluster.replicas.filter((r: any) => r.origin === 'b').length, 1, 'one replica of b');
});
