// A follower's power is cut; every offset it had reported as flushed is still there after the
// rollback. Two nodes on loopback: the follower `b` runs with the power-cut shim
// (test/helpers/powercut.ts). A client loads the leader `a`; a poller records every value of the
// leader's view of `b` (`/status` peers[b].flushed_offset) and one last value just before the
// cut; at a random moment under load `b` loses its power. Its rolled-back log must hold, in its
// replica of `a`, every offset up to the highest one it had reported flushed (the highest value
// the leader showed or, with cluster.ack = "quorum" and min_insync 2, where every 2xx of `a`
// means that `b` reported the entry flushed, the offset of the last acknowledged request if
// higher), each as the leader's exact record bytes, and every acknowledged id with its body.
// Then `b` starts again and catches up (lag 0 on the leader). Rounds with ack = "quorum" and
// with "local" (`b` replicating behind the load). The negative control runs `b` on syncs that
// sync nothing and must find reported offsets missing.
import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { Cluster, status, tailReplica } from '../helpers/cluster';
import { Crowd } from '../helpers/crowd';
import { request } from '../helpers/http';
import { LoadClient, type Ack } from '../helpers/load';
import { PowerCutCrowd, type PowerCutOptions } from '../helpers/powercut';
import { waitFor } from '../helpers/upstream';
import { decodeEnvelope } from '../../src/log/codec';
import { openEnvironment } from '../../src/log/lmdb';
import type { ReplicaKey } from '../../src/log/replica';
import { forEachInRecord, recordCount } from '../../src/log/record';

const QUORUM_ROUNDS = 4;
const LOCAL_ROUNDS = 3;

const digest = (body: string | Uint8Array): string => createHash('sha256').update(body).digest('base64');

/** The leader's log as stored: records by first offset, and every envelope's id, offset and body digest. */
interface LeaderLog {
  records: Map<number, Buffer>;
  byId: Map<string, { offset: number; body: string }>;
  last: number;
}

function readLog(logDir: string): LeaderLog {
  const out: LeaderLog = { records: new Map(), byId: new Map(), last: 0 };
  // Read-only, beside the running leader (as `crowd tail` reads it).
  const env = openEnvironment({ path: join(logDir, 'crowd.mdb'), readOnly: true, mapSize: 256 * 1024 * 1024, maxDbs: 8 });
  try {
    const entries = env.openDB<Buffer, number>({ name: 'entries', encoding: 'binary', keyEncoding: 'ordered-binary' });
    for (const { key, value } of entries.getRange({})) {
      out.records.set(key, Buffer.from(value));
      forEachInRecord(value, (_i, bytes) => {
        const e = decodeEnvelope(bytes);
        out.byId.set(e.id, { offset: e.offset, body: digest(e.body) });
        return true;
      });
      out.last = key + recordCount(value) - 1;
    }
  } finally {
    void env.close();
  }
  return out;
}

interface ReplicaCheck {
  /** Records in the replica of the leader's log. */
  records: number;
  /** Offsets held (the envelopes of those records). */
  held: number;
  /** The replica is contiguous from offset 1 through here. */
  through: number;
  /** Offsets up to the reported flushed offset that the replica does not hold. */
  missing: number;
  firstMissing: number | null;
  /** Records whose bytes differ from the leader's record at the same key (or that the leader lacks). */
  wrong: number;
  /** Acknowledged ids not in the replica, or with another body. */
  acksMissing: number;
  acksChecked: number;
}

/**
 * Opens the follower's log (stopped, rolled back) read-write as its next start would (this
 * process has the real boot id; the follower ran with a fake one, so LMDB falls back to the last
 * meta page marked flushed, as test/crash/powercut.test.ts's check() explains), and checks its
 * replica of the leader `origin`/`incarnation` against the leader's records through `reported`.
 */
function checkReplica(logDir: string, origin: string, incarnation: string, leader: LeaderLog, reported: number, acks: Ack[]): ReplicaCheck {
  const c: ReplicaCheck = { records: 0, held: 0, through: 0, missing: 0, firstMissing: null, wrong: 0, acksMissing: 0, acksChecked: 0 };
  const held = new Map<string, string>();
  const gaps: [number, number][] = [];
  let next = 1;
  const file = join(logDir, 'crowd.mdb');
  if (existsSync(file) && statSync(file).size > 0) {
    const env = openEnvironment({ path: file, readOnly: false, mapSize: 256 * 1024 * 1024, maxDbs: 8 });
    try {
      const replicas = env.openDB<Buffer, ReplicaKey>({ name: 'replicas', encoding: 'binary', keyEncoding: 'ordered-binary' });
      for (const { key, value } of replicas.getRange({ start: [origin, incarnation, 0], end: [origin, incarnation, Number.MAX_SAFE_INTEGER] })) {
        const first = key[2];
        const count = recordCount(value);
        c.records++;
        c.held += count;
        if (first > next) gaps.push([next, first - 1]);
        next = Math.max(next, first + count);
        const mine = leader.records.get(first);
        if (!mine || !mine.equals(value)) c.wrong++;
        forEachInRecord(value, (_i, bytes) => {
          const e = decodeEnvelope(bytes);
          held.set(e.id, digest(e.body));
          return true;
        });
      }
    } finally {
      void env.close();
    }
  }
  c.through = gaps.length > 0 ? gaps[0]![0] - 1 : next - 1;
  if (next - 1 < reported) gaps.push([next, reported]);
  for (const [from, to] of gaps) {
    if (from > reported) break;
    c.missing += Math.min(to, reported) - from + 1;
    c.firstMissing ??= from;
  }
  for (const a of acks) {
    c.acksChecked++;
    if (held.get(a.id) !== a.body) c.acksMissing++;
  }
  return c;
}

/** The leader's view of `follower`: the offset it last reported flushed, and the lag. */
async function leaderView(leader: Crowd, follower: string): Promise<{ flushed: number | null; lag: number | null; durable: number }> {
  const s = await status(leader);
  const p = (s.peers as any[]).find((x) => x.node_id === follower);
  return { flushed: p?.flushed_offset ?? null, lag: p?.lag ?? null, durable: s.log.durable_offset };
}

/** Polls the leader's view of the follower and keeps every value it shows. */
class FlushedWatch {
  readonly seen: number[] = [];
  private stopped = false;
  private readonly loop: Promise<void>;

  constructor(
    private readonly leader: Crowd,
    private readonly follower: string,
  ) {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      await this.sample();
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  async sample(): Promise<void> {
    const { flushed } = await leaderView(this.leader, this.follower);
    if (flushed !== null && flushed !== this.seen[this.seen.length - 1]) this.seen.push(flushed);
  }

  get max(): number {
    return Math.max(0, ...this.seen);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }
}

interface RoundResult {
  reported: number;
  polled: number;
  ackedMax: number;
  values: number;
  acks: number;
  /** Pre-images of crowd.mdb undone: more than one means the cut fell inside a commit of b. */
  mdbPreImages: number;
  check: ReplicaCheck;
}

function powerCutCluster(follower: PowerCutOptions, ack: 'quorum' | 'local' = 'quorum'): Promise<Cluster> {
  return Cluster.create({
    nodes: 2,
    ack,
    ackTimeout: '1s',
    make: (i, o) => (i === 1 ? new PowerCutCrowd({ ...o, ...follower }) : new Crowd(o)),
  });
}

async function connected(c: Cluster): Promise<void> {
  const [a] = c.nodes;
  await waitFor(async () => (await leaderView(a!, 'b')).flushed !== null && (await status(c.nodes[1]!)).peers.every((p: any) => p.state === 'connected'), 20_000, 'b follows a');
}

/**
 * Loads the leader, cuts the follower's power at a random moment, and checks its rolled-back
 * replica. With `quorum`, every acknowledged request was reported flushed by the follower too.
 */
async function cutRound(c: Cluster, round: string, t: Test, quorum = true): Promise<RoundResult> {
  const a = c.nodes[0]!;
  const b = c.nodes[1] as PowerCutCrowd;
  const incarnation = (await status(a)).incarnation as string;
  const client = new LoadClient(() => a.url('/leads'), { workers: 16, maxRequests: 1_000_000, tag: `replication-powercut-${round}`, timeoutMs: 5000 }).start();
  const watch = new FlushedWatch(a, 'b');
  await new Promise((r) => setTimeout(r, 300 + Math.random() * 900));
  await watch.stop();
  await watch.sample(); // the leader's view just before the cut
  const { exit, stats } = await b.cut();
  await client.stop();
  const acks = client.acks.map((x) => ({ id: x.id, body: digest(x.body) }));
  const leader = readLog(a.logDir);
  let ackedMax = 0;
  let acksUnknown = 0;
  for (const x of acks) {
    const at = leader.byId.get(x.id);
    if (!at || at.body !== x.body) acksUnknown++;
    else ackedMax = Math.max(ackedMax, at.offset);
  }
  t.equal(acksUnknown, 0, `${round}: every id the leader acknowledged is in its log with its body`);
  const reported = quorum ? Math.max(watch.max, ackedMax) : watch.max;
  const check = checkReplica(b.logDir, 'a', incarnation, leader, reported, quorum ? acks : []);
  t.equal(exit.signal, 'SIGKILL', `${round}: b killed; ${stats.preImages} pre-images rolled back (${JSON.stringify(stats.byFile)}), ${stats.syncs} syncs seen; ${acks.length} ${quorum ? 'quorum' : 'local'} acks, ${client.refused} refused`);
  return { reported, polled: watch.max, ackedMax, values: watch.seen.length, acks: acks.length, mdbPreImages: stats.byFile['crowd.mdb'] ?? 0, check };
}

async function cuts(t: Test, ack: 'quorum' | 'local', rounds: number): Promise<void> {
  const c = await powerCutCluster({ syncDelayUs: 2000 }, ack);
  t.teardown(() => c.stop());
  await c.start();
  await connected(c);
  const [a, b] = c.nodes as [Crowd, PowerCutCrowd];
  const incarnation = (await status(a)).incarnation as string;
  let checked = 0;
  let insideCommit = 0;
  let heldMore = 0;
  for (let round = 1; round <= rounds; round++) {
    const r = await cutRound(c, `round ${round}`, t, ack === 'quorum');
    const k = r.check;
    checked += r.reported;
    if (r.mdbPreImages > 1) insideCommit++;
    if (k.through > r.reported) heldMore++;
    t.ok(r.reported > 0 && r.acks > 0, `round ${round}: b had reported offset ${r.reported} flushed (leader's view just before the cut ${r.polled}, ${r.values} values seen; highest offset acknowledged ${r.ackedMax}${ack === 'quorum' ? ' by quorum' : ' locally'})`);
    t.same(
      { missing: k.missing, wrong: k.wrong, acksMissing: k.acksMissing },
      { missing: 0, wrong: 0, acksMissing: 0 },
      `round ${round}: b's rolled-back replica of a holds offsets 1..${k.through} (${k.held} offsets in ${k.records} records, each the leader's record bytes): every offset through ${r.reported}${ack === 'quorum' ? `, and ${k.acksChecked} acknowledged ids with their bodies` : ''}`,
    );
    await b.start();
    let caughtUp = 0;
    await waitFor(
      async () => {
        const v = await leaderView(a, 'b');
        const replica = ((await status(b)).cluster.replicas as any[]).find((x) => x.origin === 'a' && x.incarnation === incarnation);
        caughtUp = v.durable;
        return v.flushed === v.durable && v.lag === 0 && replica?.flushed_offset === v.durable;
      },
      20_000,
      `b catches up with a after round ${round}`,
    );
    t.pass(`round ${round}: b restarted on its rolled-back log and caught up: its replica of a and the leader's view of it at a's durable offset ${caughtUp}, lag 0`);
  }
  // The replica as `crowd tail --replica` prints it beside the running b (same boot id): the
  // leader's entries, ids and bodies.
  const mine = await a.tail();
  const theirs = await tailReplica(b, 'a', [], b.machineEnv());
  t.same(
    theirs.map((e) => [e.offset, e.id, e.body]),
    mine.map((e) => [e.offset, e.id, e.body]),
    `after ${rounds} cuts b's replica equals a's log: ${mine.length} entries, ids and bodies`,
  );
  t.comment(`ack = ${ack}: ${checked} reported offsets checked in ${rounds} rounds; ${insideCommit} cuts fell inside a commit of b (undid its page writes); in ${heldMore} rounds b held more than it had reported (flushed, report not yet sent or read)`);
}

t.test("a follower's power is cut; every offset it had reported as flushed is still there after rollback", async (t) => {
  await t.test('cluster.ack = "quorum": every acknowledged request is on b', (t) => cuts(t, 'quorum', QUORUM_ROUNDS));
  await t.test('cluster.ack = "local": b replicates behind the load', (t) => cuts(t, 'local', LOCAL_ROUNDS));
});

t.test('negative control: a follower whose syncs sync nothing loses offsets it reported flushed', async (t) => {
  const c = await powerCutCluster({ fakeSync: true });
  t.teardown(() => c.stop());
  await c.start();
  await connected(c);
  const r = await cutRound(c, 'control', t);
  const k = r.check;
  t.ok(r.reported > 0, `control: b had reported offset ${r.reported} flushed (leader's view ${r.polled}, ${r.values} values seen; highest acknowledged offset ${r.ackedMax}, ${r.acks} acks)`);
  t.ok(k.missing > 0, `the check finds the loss: ${k.missing} of ${r.reported} reported offsets missing (first ${k.firstMissing}); the replica holds ${k.held} offsets, ${k.acksMissing} of ${k.acksChecked} acknowledged ids missing`);
});

/** A TCP relay to 127.0.0.1:`target`; drop() cuts every connection through it (a network blip). */
class Relay {
  private readonly sockets = new Set<Socket>();
  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(target: () => number): Promise<Relay> {
    const server = createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const relay = new Relay(server, (server.address() as { port: number }).port);
    server.on('connection', (from) => {
      const to = connect(target(), '127.0.0.1');
      for (const [x, y] of [[from, to], [to, from]] as const) {
        relay.sockets.add(x);
        x.pipe(y);
        x.on('error', () => y.destroy());
        x.on('close', () => {
          relay.sockets.delete(x);
          y.destroy();
        });
      }
    });
    return relay;
  }

  drop(): number {
    const n = this.sockets.size / 2;
    for (const s of this.sockets) s.destroy();
    return n;
  }

  async close(): Promise<void> {
    this.drop();
    await new Promise((r) => this.server.close(r));
  }
}

// A follower that connects again while a commit of its replica is still being flushed (a network
// blip here; a restarted or silent leader does the same) asks for the log from the end of what it
// has written. That end is not on its disk yet: the leader must not count it as flushed, neither
// in /status nor for a quorum ack. b reaches a through a relay; b's syncs are made to take 3 s,
// the relay drops the connection while b's commit is being flushed, b connects again, and b's
// power is cut before the commit completes: no request a acknowledged by quorum may be missing.
t.test('a follower that connects again during a commit is counted flushed only for what it flushed', async (t) => {
  let leaderPort = 0;
  const relay = await Relay.start(() => leaderPort);
  const c = await Cluster.create({
    nodes: 2,
    ack: 'quorum',
    ackTimeout: '2s',
    perNode: (i) => (i === 1 ? { cluster: { peers: [`http://127.0.0.1:${relay.port}`] } } : {}),
    make: (i, o) => (i === 1 ? new PowerCutCrowd(o) : new Crowd(o)),
  });
  leaderPort = c.ports[0]!;
  t.teardown(async () => {
    await c.stop();
    await relay.close();
  });
  await c.start();
  await connected(c);
  const [a, b] = c.nodes as [Crowd, PowerCutCrowd];
  const incarnation = (await status(a)).incarnation as string;
  const replicaOfA = async (): Promise<{ last_offset: number; flushed_offset: number } | undefined> => ((await status(b)).cluster.replicas as any[]).find((x) => x.origin === 'a' && x.incarnation === incarnation);
  const acks: Ack[] = [];
  const post = async (i: number): Promise<number> => {
    const body = JSON.stringify({ tag: 'reconnect', i });
    const r = await request(a.url('/leads'), { body, headers: { 'content-type': 'application/json' } });
    if (r.status === 200) acks.push({ id: JSON.parse(r.body).id, body: digest(body) });
    return r.status;
  };
  for (let i = 0; i < 10; i++) await post(i);
  t.equal(acks.length, 10, 'with b following, a acknowledges by quorum');
  // From now on b's commits take 3 s to flush: the next requests are written on b at once and flushed 3 s later.
  b.setSyncDelay(3_000_000);
  const pending = Array.from({ length: 10 }, (_, i) => post(10 + i));
  const durable = 20;
  await waitFor(async () => (await leaderView(a, 'b')).durable === durable && (await replicaOfA())?.last_offset === durable, 10_000, `b writes a's log through ${durable}`);
  const before = (await replicaOfA())!;
  const dropped = relay.drop();
  // b connects again at once and says what it needs; the leader's view of b from then on.
  const seen: number[] = [];
  const until = Date.now() + 1000;
  while (Date.now() < until) {
    const v = (await leaderView(a, 'b')).flushed;
    if (v !== null) seen.push(v);
    await new Promise((r) => setTimeout(r, 20));
  }
  const during = (await replicaOfA())!;
  const ackedBeforeCut = acks.length - 10;
  const { stats } = await b.cut();
  b.setSyncDelay(null);
  await Promise.all(pending);
  const reported = Math.max(0, ...seen);
  const k = checkReplica(b.logDir, 'a', incarnation, readLog(a.logDir), reported, acks);
  t.ok(during.flushed_offset < during.last_offset, `the reconnect fell inside b's commit: ${dropped} connection(s) dropped; b had written a's log through ${during.last_offset} and flushed it through ${during.flushed_offset} (${before.flushed_offset} when the relay dropped); ${stats.preImages} pre-images rolled back`);
  t.same(
    { missing: k.missing, wrong: k.wrong, acksMissing: k.acksMissing },
    { missing: 0, wrong: 0, acksMissing: 0 },
    `after the cut b holds 1..${k.through}: the leader's view of b after the reconnect (${[...new Set(seen)].join(', ') || 'none'}) and the ${ackedBeforeCut} quorum acks given meanwhile are on b's disk${k.missing ? `; ${k.missing} offsets shown as flushed are missing, from ${k.firstMissing}` : ''}${k.acksMissing ? `; ${k.acksMissing} acknowledged requests missing` : ''}`,
  );
  await b.start();
  await waitFor(async () => {
    const v = await leaderView(a, 'b');
    return v.flushed === v.durable && v.lag === 0;
  }, 20_000, 'b catches up with a');
  t.pass(`b catches up with a after the cut (a's durable offset ${(await leaderView(a, 'b')).durable})`);
});
