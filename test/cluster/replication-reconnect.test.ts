// A follower that reconnects while a replica commit is still flushing must not make the
// leader count that commit as flushed. Two nodes, cluster.ack = "quorum", min_insync = 2: the
// follower's fdatasync is held for 3 s (strace fault injection), and while a request waits
// for it the replication connection is cut (`ss -K`). The follower reconnects at once and asks
// for the log from the end of what it has written; the 200 must still wait for the held
// fdatasync to return.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster, caughtUp, status } from '../helpers/cluster';
import { tempDir, type Crowd } from '../helpers/crowd';
import { request } from '../helpers/http';
import { attachStrace, parseTrace } from '../helpers/strace';

const HOLD_US = 3_000_000;

/** Wall-clock seconds, finer than Date.now() (strace's -ttt has microseconds). */
const wallNow = (): number => (performance.timeOrigin + performance.now()) / 1000;

const pidOf = (n: Crowd): number => JSON.parse(readFileSync(join(n.logDir, 'crowd.runtime.json'), 'utf8')).pid as number;

/** The follower's replication connection to the leader, as `ss` prints it ("ip:port"), or null. */
function replicationSocket(leader: Crowd, followerPid: number): string | null {
  const r = spawnSync('ss', ['-tnpH', 'state', 'established', 'dst', `127.0.0.1:${leader.port}`], { encoding: 'utf8' });
  if (r.error) throw new Error(`ss could not run (${r.error.message}): this test needs iproute2's ss`);
  const line = r.stdout.split('\n').find((l) => l.includes(`pid=${followerPid},`));
  return line ? /(\S+:\d+)\s+\S+:\d+/.exec(line)![1]! : null;
}

t.test('a replication reconnect during a flush does not release the quorum early', async (t) => {
  const cluster = await Cluster.create({ nodes: 2, ack: 'quorum', minInsync: 2, ackTimeout: '20s' });
  const [leader, follower] = cluster.nodes as [Crowd, Crowd];
  t.teardown(() => cluster.stop());
  await cluster.start();
  const deadline = Date.now() + 15_000;
  while (!(await caughtUp(leader))) {
    if (Date.now() > deadline) throw new Error('the follower did not start replicating the leader within 15 s');
    await new Promise((r) => setTimeout(r, 100));
  }
  t.equal((await request(leader.url('/leads'), { body: 'warm-up' })).status, 200, 'a first request is acknowledged');

  const followerPid = pidOf(follower);
  const traceFile = join(tempDir(), 'follower-strace.txt');
  const strace = await attachStrace(followerPid, traceFile, ['-e', 'trace=fdatasync', '-e', `inject=fdatasync:delay_enter=${HOLD_US}`]);
  const stopStrace = async () => {
    if (strace.exitCode !== null || strace.signalCode !== null) return;
    const exited = new Promise((r) => strace.once('exit', r));
    strace.kill('SIGINT');
    await exited;
  };
  t.teardown(stopStrace);

  const sent = Date.now() / 1000;
  const reply = request(leader.url('/leads'), { body: 'held-by-the-follower', timeoutMs: 30_000 }).then((r) => ({ r, at: wallNow() }));
  // Wait until the follower has written the record and is flushing it.
  for (;;) {
    const s = await status(follower);
    const rep = s.cluster.replicas.find((x: any) => x.origin === 'a');
    if (rep && rep.last_offset === 2 && rep.flushed_offset < 2) break;
    if (Date.now() / 1000 - sent > 2) throw new Error(`the follower did not start flushing offset 2 in 2 s: ${JSON.stringify(rep)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const sock = replicationSocket(leader, followerPid);
  if (!sock) throw new Error('no replication connection from the follower to the leader');
  const cut = wallNow();
  const k = spawnSync('ss', ['-K', 'src', sock, 'dst', `127.0.0.1:${leader.port}`], { encoding: 'utf8' });
  if (replicationSocket(leader, followerPid) === sock) {
    throw new Error(`ss -K could not close the replication connection (${k.stderr.trim()}): it needs CAP_NET_ADMIN and a kernel with CONFIG_INET_DIAG_DESTROY`);
  }
  const { r, at } = await reply;
  t.equal(r.status, 200, 'the request is acknowledged');
  // The held fdatasync returns; then the trace holds the whole call.
  for (;;) {
    const rep = (await status(follower)).cluster.replicas.find((x: any) => x.origin === 'a');
    if (rep && rep.flushed_offset >= 2) break;
    if (Date.now() / 1000 - sent > 15) throw new Error(`the follower did not flush offset 2 in 15 s: ${JSON.stringify(rep)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  await stopStrace();

  const held = parseTrace(readFileSync(traceFile, 'utf8')).find((c) => c.name === 'fdatasync' && c.fdPath === join(follower.logDir, 'crowd.mdb') && c.start < cut && c.end > cut);
  t.ok(held, `the follower trace has the held fdatasync running when the connection was cut at ${cut.toFixed(3)}`);
  if (held) {
    t.ok(at > held.end, `the 200 arrived at ${at.toFixed(3)}, after the follower's fdatasync returned at ${held.end.toFixed(3)} (${((at - held.end) * 1e6).toFixed(0)} µs; cut at ${cut.toFixed(3)})`);
  }
});
