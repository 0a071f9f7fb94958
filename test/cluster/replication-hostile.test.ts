// Hostile peers on /_crowd/replicate, against real `bin/crowd` processes.
//
// (a) A fake leader (a `ws` server listed in a real node's cluster.peers) sends malformed
//     frames, records that do not decode, records at offsets that are not the next ones,
//     a new incarnation of a known origin and records that collide with stored offsets.
//     After each: the connection is closed with a logged reason, the node still answers
//     ingest with 2xx, and `crowd tail --replica` shows only the valid records.
// (b) Fake followers (`ws` clients) against a real leader: authentication refusals, a wrong
//     incarnation, flushed reports the leader can tell are false, and a request that must not
//     get its quorum 2xx through a follower claiming offsets it was never sent.
// (c) Unknown binary frames and frames over maxPayloadLength from a follower: the
//     connection closes, the leader keeps serving ingest.
import t, { type Test } from 'tap';
import type { IncomingMessage } from 'node:http';
import WebSocket, { WebSocketServer } from 'ws';
import { Crowd } from '../helpers/crowd';
import { freePort, SECRET, tailReplica } from '../helpers/cluster';
import { request } from '../helpers/http';
import { encodeEnvelope } from '../../src/log/codec';
import { frameRecord } from '../../src/log/record';
import { checkRecord } from '../../src/log/replica';
import { checkFollowerAuth, followerAuth, leaderProof, parseRecordFrame, recordFrame, REPLICATE_PATH } from '../../src/replication/protocol';
import { Packr } from 'msgpackr';

const ORIGIN = 'leader-x';
const INC_A = 'aaaaaaaaaaaa0001';
const INC_B = 'bbbbbbbbbbbb0002';

const packr = new Packr({ useRecords: false, structuredClone: false, moreTypes: false, bundleStrings: false });

function envelope(offset: number, body: string): Buffer {
  return Buffer.from(
    encodeEnvelope(
      { id: `id-${offset}-${body}`, received_at: Date.now(), route: 'leads', method: 'POST', path: '/leads', query: '', headerList: ['content-type', 'text/plain'], remote: '10.9.9.9', body: Buffer.from(body) },
      offset,
    ),
  );
}

/** A record as a leader stores it (the real encoder and framing), as a binary frame. */
function recordAt(key: number, bodies: string[]): Buffer {
  const parts = bodies.map((b, i) => envelope(key + i, b));
  return recordFrame(key, frameRecord(parts, parts.reduce((n, p) => n + p.length, 0)));
}

function rawRecordAt(key: number, parts: Buffer[]): Buffer {
  return recordFrame(key, frameRecord(parts, parts.reduce((n, p) => n + p.length, 0)));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, fn: () => T | undefined | null | false, timeoutMs = 5000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** The first JSON log line from index `from` on that matches. */
function logLine(node: Crowd, from: number, match: (j: any) => boolean, timeoutMs = 5000): Promise<any> {
  return until(
    `a log line (${match.toString().slice(0, 120)})`,
    () => {
      for (const l of node.lines.slice(from)) {
        if (!l.startsWith('{')) continue;
        const j = JSON.parse(l);
        if (match(j)) return j;
      }
      return null;
    },
    timeoutMs,
  );
}

async function ingestOk(t: Test, node: Crowd, what: string): Promise<void> {
  const r = await request(node.url('/leads'), { body: `{"after":"${what}"}`, headers: { 'content-type': 'application/json' } }).catch((err: Error) => ({ status: 0, body: err.message }));
  const fatal = node.lines.filter((l) => /"level":"(error|fatal)"/.test(l));
  t.same(fatal, [], `${what}: no error or fatal log line`);
  t.equal(r.status, 200, `${what}: ingest still answers 200 (${r.body})`);
  t.equal(node.proc!.exitCode, null, `${what}: the node still runs`);
  t.equal(node.proc!.signalCode, null, `${what}: the node was not killed`);
}

/** One connection as the fake side sees it: JSON text frames queued, the close recorded. */
class Conn {
  readonly texts: any[] = [];
  readonly binaries: Buffer[] = [];
  closed: { code: number; reason: string } | null = null;
  readonly closedP: Promise<{ code: number; reason: string }>;

  constructor(
    readonly ws: WebSocket,
    readonly req?: IncomingMessage,
  ) {
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (isBinary) this.binaries.push(Buffer.from(data));
      else this.texts.push(JSON.parse(data.toString()));
    });
    ws.on('error', () => {});
    this.closedP = new Promise((res) =>
      ws.on('close', (code, reason) => {
        this.closed = { code, reason: reason.toString() };
        res(this.closed);
      }),
    );
  }

  /** The first text message (from the oldest) that matches; it is taken off the queue. */
  async text(match: (m: any) => boolean, timeoutMs = 5000): Promise<any> {
    return until(
      'a text frame',
      () => {
        const i = this.texts.findIndex(match);
        if (i < 0) return null;
        return this.texts.splice(i, 1)[0];
      },
      timeoutMs,
    );
  }

  async closedWithin(timeoutMs = 5000): Promise<{ code: number; reason: string }> {
    return Promise.race([this.closedP, sleep(timeoutMs).then(() => Promise.reject(new Error(`connection not closed within ${timeoutMs} ms`)))]);
  }
}

/** A fake leader: a `ws` server on /_crowd/replicate; connections are taken one at a time. */
class FakeLeader {
  private readonly waiting: Conn[] = [];
  readonly all: Conn[] = [];

  private constructor(
    readonly wss: WebSocketServer,
    readonly port: number,
  ) {
    wss.on('connection', (ws, req) => {
      const c = new Conn(ws, req);
      this.all.push(c);
      this.waiting.push(c);
    });
  }

  static async start(): Promise<FakeLeader> {
    const port = await freePort();
    const wss = new WebSocketServer({ host: '127.0.0.1', port, path: REPLICATE_PATH, maxPayload: 1024 * 1024 });
    await new Promise<void>((res) => wss.once('listening', () => res()));
    return new FakeLeader(wss, port);
  }

  /** The next connection that is still open (a stale one may have been dropped meanwhile). */
  async next(): Promise<Conn> {
    for (;;) {
      const c = await until('a connection from the follower', () => this.waiting.shift(), 8000);
      if (c.ws.readyState === WebSocket.OPEN) return c;
    }
  }

  close(): Promise<void> {
    for (const c of this.all) c.ws.terminate();
    return new Promise((res) => this.wss.close(() => res()));
  }
}

t.test('(a) a hostile leader: every bad frame closes the link with a logged reason, nothing bad is written, the node keeps running', async (t) => {
  const leader = await FakeLeader.start();
  t.teardown(() => leader.close());
  const node = new Crowd({ config: { node_id: 'f', cluster: { peers: [`http://127.0.0.1:${leader.port}`], secret: SECRET, ack: 'local' } } });
  t.teardown(() => node.stop());
  await node.start();

  /** Next connection: hello, then the follower's want; returns both. */
  const open = async (incarnation: string, durable: number, first = 0) => {
    const c = await leader.next();
    const auth = checkFollowerAuth(SECRET, 'f', String(c.req!.headers['crowd-auth'] ?? ''));
    t.type(auth, 'object', `the follower proves it knows the secret (${typeof auth === 'string' ? auth : 'ok'})`);
    t.notMatch(JSON.stringify(c.req!.headers), new RegExp(SECRET), 'without sending it');
    t.equal(c.req!.headers['crowd-node-id'], 'f', 'and its node_id');
    const nonce = typeof auth === 'string' ? '' : auth.nonce;
    c.ws.send(JSON.stringify({ t: 'hello', node_id: ORIGIN, incarnation, first, durable, proof: leaderProof(SECRET, ORIGIN, incarnation, nonce) }));
    const want = await c.text((m) => m.t === 'want');
    return { c, want };
  };

  /** Sends `frames` on a fresh connection (after hello and want) and expects the follower to close it for `reason`. */
  const refused = async (what: string, frames: (string | Buffer)[], reason: RegExp, o: { incarnation?: string; durable?: number; wantFrom?: number } = {}) => {
    const mark = node.lines.length;
    const { c, want } = await open(o.incarnation ?? INC_A, o.durable ?? 0);
    if (o.wantFrom !== undefined) t.equal(want.from, o.wantFrom, `${what}: the follower wants from ${o.wantFrom}`);
    for (const f of frames) c.ws.send(f, { binary: typeof f !== 'string' });
    // A failure here is recorded and the connection dropped, so that the next case still runs.
    await c.closedWithin().catch((err: Error) => {
      t.fail(`${what}: the follower kept the connection (${err.message})`);
      c.ws.terminate();
    });
    const line = await logLine(node, mark, (j) => j.event === 'replication_closed', 1000).catch(() => ({ reason: '(no replication_closed line)', peer: null }));
    t.match(line.reason, reason, `${what}: logged reason "${line.reason}"`);
    t.equal(line.peer, `http://127.0.0.1:${leader.port}`, `${what}: the log line names the peer`);
    await ingestOk(t, node, what);
  };

  // Frames before any hello.
  for (const [what, frame, reason] of [
    ['a progress before hello', JSON.stringify({ t: 'progress', first: 0, durable: 3, finished: {} }), /progress before hello/],
    ['a record before hello', recordAt(1, ['early']), /a record before hello/],
  ] as const) {
    const mark = node.lines.length;
    const c = await leader.next();
    c.ws.send(frame, { binary: typeof frame !== 'string' });
    await c.closedWithin();
    t.match((await logLine(node, mark, (j) => j.event === 'replication_closed')).reason, reason, what);
    await ingestOk(t, node, what);
  }
  {
    const mark = node.lines.length;
    const c = await leader.next();
    c.ws.send(JSON.stringify({ t: 'hello', node_id: ORIGIN, incarnation: INC_A, first: -1, durable: 0 }));
    await c.closedWithin();
    t.match((await logLine(node, mark, (j) => j.event === 'replication_closed')).reason, /hello lacks/, 'a hello with a negative first offset');
    await ingestOk(t, node, 'a malformed hello');
  }

  // A leader that does not know the secret (anything answering at a peer's address): no proof
  // in its hello, or a wrong one. The follower asks for nothing and writes nothing.
  for (const [what, proof] of [['no proof', undefined], ['a proof made with another secret', leaderProof('another-secret-0123456789', ORIGIN, INC_A, '0'.repeat(32))]] as const) {
    const mark = node.lines.length;
    const c = await leader.next();
    c.ws.send(JSON.stringify({ t: 'hello', node_id: ORIGIN, incarnation: INC_A, first: 0, durable: 0, ...(proof ? { proof } : {}) }));
    await c.closedWithin();
    t.match((await logLine(node, mark, (j) => j.event === 'peer_unauthorized')).reason, /answered without proof that it knows cluster\.secret/, `a hello with ${what}: refused`);
    t.notOk(c.texts.some((m: any) => m.t === 'want'), `a hello with ${what}: nothing asked for`);
  }

  // Malformed frames after a good hello.
  await refused('a text frame that is not JSON', ['this is not json {'], /text frame is not JSON/, { wantFrom: 1 });
  await refused('a JSON message of an unknown type', [JSON.stringify({ t: 'truncate', below: 99 })], /unknown message type "truncate"/);
  await refused('a binary frame of an unknown type', [Buffer.concat([Buffer.from([9]), recordAt(1, ['x']).subarray(1)])], /binary frame type 9 is unknown/);
  await refused('a binary frame too short to be a record', [Buffer.from([1, 2, 3])], /shorter than a record frame/);
  await refused('a record at offset 0', [rawRecordAt(1, [envelope(1, 'x')]).fill(0, 1, 9)], /is not an offset/);
  await refused('a record whose envelope is garbage', [rawRecordAt(1, [Buffer.from('garbage, not msgpack')])], /^record 1: /);
  await refused('a record whose envelope is cut short', [rawRecordAt(1, [envelope(1, 'whole').subarray(0, 20)])], /^record 1: /);
  await refused('a record that ends before its last envelope', [recordAt(1, ['a', 'b']).subarray(0, -3)], /^record 1: .*truncated/);
  await refused('a record with bytes after its envelopes', [Buffer.concat([recordAt(1, ['a']), Buffer.from('tail')])], /^record 1: 4 bytes after its 1 envelopes/);
  await refused('a record of no envelope', [recordFrame(1, Buffer.from([0, 0, 0, 0]))], /^record 1: holds no envelope/);
  await refused('a record whose envelope carries another offset', [rawRecordAt(1, [envelope(2, 'x')])], /^record 1: envelope 0 has offset 2, not 1/);
  await refused('a record at an offset that is not the next one', [recordAt(5, ['skips'])], /record 5 is not the next one/);
  await refused(
    'a record whose envelope has fields of the wrong type',
    [rawRecordAt(1, [packr.pack([1, 42, 1, Date.now(), 'leads', 'POST', '/leads', '', [], '10.9.9.9', 'body as a string'])])],
    /^record 1: envelope 0/,
  );

  // The valid records: stored, flushed and reported.
  {
    const { c, want } = await open(INC_A, 2);
    t.same(want, { t: 'want', incarnation: INC_A, from: 1 }, 'nothing of the bad frames was stored: the follower still wants offset 1');
    c.ws.send(recordAt(1, ['one', 'two']), { binary: true });
    const flushed = await c.text((m) => m.t === 'flushed' && m.offset > 0);
    t.same(flushed, { t: 'flushed', incarnation: INC_A, offset: 2 }, 'the valid record is flushed and reported');
    c.ws.close(1000, 'done');
    await c.closedWithin();
  }

  // Records that collide with stored offsets, and more bad input now that the replica holds records.
  await refused('a record at a stored offset', [recordAt(1, ['evil-1', 'evil-2'])], /record 1 is not the next one \(the replica of leader-x\/aaaaaaaaaaaa0001 ends at 2\)/, { durable: 2, wantFrom: 3 });
  await refused('a record inside a stored record', [recordAt(2, ['evil-2'])], /record 2 is not the next one/, { durable: 2, wantFrom: 3 });
  await refused('a good record then a colliding one', [recordAt(3, ['three']), recordAt(3, ['evil-3'])], /record 3 is not the next one/, { durable: 3, wantFrom: 3 });
  await refused(
    'an unknown message type of non-ASCII characters',
    [JSON.stringify({ t: '\u00e9'.repeat(100) })],
    /unknown message type/,
    { durable: 3, wantFrom: 4 },
  );
  await refused(
    'a record whose envelope offset is a non-ASCII string',
    [rawRecordAt(4, [packr.pack([1, 'id-4', '\u00e9'.repeat(100), Date.now(), 'leads', 'POST', '/leads', '', [], '10.9.9.9', Buffer.from('x')])])],
    /^record 4: envelope 0/,
    { durable: 3, wantFrom: 4 },
  );

  // A new incarnation of the same origin: its own replica; the old one is never touched.
  {
    const mark = node.lines.length;
    const { c, want } = await open(INC_B, 1);
    t.same(want, { t: 'want', incarnation: INC_B, from: 1 }, 'a new incarnation starts its own replica at offset 1');
    t.ok(await logLine(node, mark, (j) => j.event === 'peer_new_incarnation' && j.was === INC_A && j.now === INC_B), 'the new incarnation is logged');
    c.ws.send(recordAt(1, ['b-one']), { binary: true });
    t.same(await c.text((m) => m.t === 'flushed' && m.offset > 0), { t: 'flushed', incarnation: INC_B, offset: 1 });
    c.ws.send(recordAt(1, ['b-evil']), { binary: true });
    await c.closedWithin();
    t.match((await logLine(node, mark, (j) => j.event === 'replication_closed')).reason, /record 1 is not the next one \(the replica of leader-x\/bbbbbbbbbbbb0002 ends at 1\)/);
    await ingestOk(t, node, 'the new incarnation');
  }
  {
    const { c, want } = await open(INC_A, 3);
    t.same(want, { t: 'want', incarnation: INC_A, from: 4 }, 'back to the old incarnation: its replica still ends at 3');
    c.ws.close(1000, 'done');
    await c.closedWithin();
  }

  const bodies = (entries: any[]) => entries.map((e) => [e.offset, e.body]);
  t.same(bodies(await tailReplica(node, ORIGIN, ['--incarnation', INC_A])), [[1, 'one'], [2, 'two'], [3, 'three']], 'incarnation A holds only its valid records');
  t.same(bodies(await tailReplica(node, ORIGIN, ['--incarnation', INC_B])), [[1, 'b-one']], 'incarnation B holds only its valid record');
  t.same(bodies(await tailReplica(node, ORIGIN)), [[1, 'b-one']], 'the latest incarnation is shown by default');
  const status = JSON.parse((await request(node.adminUrl('/status'), { method: 'GET' })).body);
  const replicas = status.cluster.replicas.map((r: any) => [r.origin, r.incarnation, r.first_offset, r.last_offset, r.flushed_offset, r.gaps]);
  t.same(replicas, [[ORIGIN, INC_A, 1, 3, 3, 0], [ORIGIN, INC_B, 1, 1, 1, 0]], 'status: two replicas, no gap');
  t.equal(node.proc!.exitCode, null, 'the node never stopped');
});

/** A fake follower: connects to the leader; resolves with the open connection or the refusal. */
function follow(port: number, headers: Record<string, string>, o: { maxPayload?: number } = {}): Promise<{ conn?: Conn; status?: number; body?: string }> {
  return new Promise((res, rej) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${REPLICATE_PATH}`, { headers, perMessageDeflate: false, ...(o.maxPayload ? { maxPayload: o.maxPayload } : {}) });
    const conn = new Conn(ws);
    ws.on('unexpected-response', (_req, r) => {
      let body = '';
      r.on('data', (d: Buffer) => (body += d));
      r.on('end', () => res({ status: r.statusCode!, body }));
    });
    ws.on('open', () => res({ conn }));
    ws.on('error', (err) => {
      if (!conn.closed) rej(err);
    });
  });
}

async function metric(node: Crowd, name: string): Promise<number> {
  const text = (await request(node.adminUrl('/metrics'), { method: 'GET' })).body;
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
}

const post = (node: Crowd, body: string) => request(node.url('/leads'), { body, headers: { 'content-type': 'application/json' }, timeoutMs: 8000 });

t.test('(b, c) hostile followers against a real leader', async (t) => {
  // A quorum leader: each 2xx needs one follower's flushed report. Its own peer is a dead
  // port. The progress message (about every second, with the durable offset) comes within
  // ack_timeout, so a lie built from it would be in time.
  const dead = await freePort();
  const node = new Crowd({ config: { node_id: 'L', cluster: { peers: [`http://127.0.0.1:${dead}`], secret: SECRET, ack: 'quorum', min_insync: 2, ack_timeout: '2s' } } });
  t.teardown(() => node.stop());
  await node.start();
  /** Fresh credentials for `id` (each Crowd-Auth nonce is good once). */
  const auth = (id: string, secret = SECRET) => ({ 'crowd-auth': followerAuth(secret, id), 'crowd-node-id': id });
  const hello = async (c: Conn) => c.text((m) => m.t === 'hello');

  await t.test('authentication and identity', async (t) => {
    const before = await metric(node, 'crowd_peer_auth_failures_total');
    let mark = node.lines.length;
    const wrong = await follow(node.port, auth('fake', 'not-the-cluster-secret-at-all'));
    t.equal(wrong.status, 401, 'a wrong secret: 401');
    t.match(wrong.body, /wrong secret/);
    const line = await logLine(node, mark, (j) => j.event === 'peer_unauthorized');
    t.match(line.remote, /127\.0\.0\.1/, `the log line names the remote address (${line.remote})`);
    t.equal(line.reason, 'wrong secret');
    t.notMatch(JSON.stringify(line), /not-the-cluster-secret/, 'the presented secret is not logged');
    mark = node.lines.length;
    const none = await follow(node.port, { 'crowd-node-id': 'fake' });
    t.equal(none.status, 401, 'no secret: 401');
    t.equal((await logLine(node, mark, (j) => j.event === 'peer_unauthorized')).reason, 'no credentials presented');
    mark = node.lines.length;
    const once = auth('fake');
    const first = await follow(node.port, once);
    t.ok(first.conn, 'good credentials: connected');
    first.conn?.ws.terminate();
    const replay = await follow(node.port, once);
    t.equal(replay.status, 401, 'the same Crowd-Auth again (a replay): 401');
    t.match((await logLine(node, mark, (j) => j.event === 'peer_unauthorized')).reason, /replayed/);
    const late = await follow(node.port, { 'crowd-auth': followerAuth(SECRET, 'fake', Date.now() - 5 * 60_000), 'crowd-node-id': 'fake' });
    t.equal(late.status, 401, 'a Crowd-Auth five minutes old: 401');
    t.match(late.body, /clock is -300 s off this node's/);
    t.equal(await metric(node, 'crowd_peer_auth_failures_total'), before + 4, 'crowd_peer_auth_failures_total counts all four');

    const noId = await follow(node.port, { 'crowd-auth': followerAuth(SECRET, '') });
    t.equal(noId.status, 400, 'no Crowd-Node-Id: 400');
    t.match(noId.body, /Crowd-Node-Id/);
    t.equal((await follow(node.port, auth('has space'))).status, 400, 'a malformed Crowd-Node-Id: 400');
    mark = node.lines.length;
    const own = await follow(node.port, auth('L'));
    t.equal(own.status, 409, "the leader's own node_id: 409");
    t.ok(await logLine(node, mark, (j) => j.event === 'peer_refused' && j.node_id === 'L'));
    t.equal(await metric(node, 'crowd_peer_auth_failures_total'), before + 4, 'refusals after the secret are not auth failures');
  });

  /** Connects as `id`, reads the hello. */
  const session = async (id: string) => {
    const r = await follow(node.port, auth(id));
    if (!r.conn) throw new Error(`refused: ${r.status} ${r.body}`);
    const h = await hello(r.conn);
    return { c: r.conn, h };
  };

  /** Sends `msg` and expects the leader to close the connection with a logged reason. */
  const refusedBy = async (t: Test, id: string, send: (c: Conn, h: any) => void, reason: RegExp) => {
    const mark = node.lines.length;
    const { c, h } = await session(id);
    send(c, h);
    // A failure here is recorded and the connection dropped, so that it cannot count in later cases.
    const closed = await c.closedWithin().catch((err: Error) => {
      c.ws.terminate();
      return { code: 0, reason: err.message };
    });
    const line = await logLine(node, mark, (j) => j.event === 'follower_refused' && j.node_id === id, 1000).catch(() => ({ reason: '(no follower_refused line)', remote: null }));
    t.match(line.reason, reason, `logged: ${line.reason}`);
    t.match(line.remote, /127\.0\.0\.1/);
    t.equal(closed.code, 1008, 'closed with 1008 (policy violation)');
    t.match(closed.reason, reason, 'the close frame carries the reason');
    t.equal(node.proc!.exitCode, null, 'the leader still runs');
    await until('the refused session gone', () => c.closed !== null);
  };

  await t.test('a want for another incarnation', async (t) => {
    const { c, h } = await session('probe');
    t.equal(h.node_id, 'L');
    t.match(h.incarnation, /^[0-9a-f]{16}$/);
    c.ws.close();
    await refusedBy(t, 'wrong-inc', (c) => c.ws.send(JSON.stringify({ t: 'want', incarnation: 'not-this-one', from: 1 })), /asks for incarnation not-this-one; this log is [0-9a-f]{16}/);
  });

  await t.test('flushed reports the leader can tell are false', async (t) => {
    await refusedBy(t, 'past-durable', (c, h) => c.ws.send(JSON.stringify({ t: 'flushed', incarnation: h.incarnation, offset: h.durable + 10 })), /reports offset \d+ flushed; this log is durable through/);
    await refusedBy(t, 'want-past-durable', (c, h) => c.ws.send(JSON.stringify({ t: 'want', incarnation: h.incarnation, from: h.durable + 1000 })), /asks from offset \d+, past/);
    await refusedBy(
      t,
      'flushed-before-want',
      (c, h) => c.ws.send(JSON.stringify({ t: 'flushed', incarnation: h.incarnation, offset: h.durable })),
      /reports offset \d+ flushed before asking for/,
    );
  });

  await t.test('a request does not get its quorum 2xx through a follower that reports offsets it was never sent', async (t) => {
    // 1. A follower that never asked for the log is not live: with no other peer the request
    //    is refused at once and stored nowhere; its flushed report, never backed by a want,
    //    closes its connection.
    {
      const mark = node.lines.length;
      const { c, h } = await session('liar-1');
      const r = await post(node, '{"n":"liar-1"}');
      t.equal(r.status, 503, `no 2xx: ${r.status} ${r.body}`);
      t.match(r.body, /quorum unreachable: 0 of the 1 peers/, 'refused at once: a follower that has not asked for the log does not count as live');
      c.ws.send(JSON.stringify({ t: 'flushed', incarnation: h.incarnation, offset: h.durable }));
      t.equal(c.binaries.length, 0, 'the follower was never sent a record');
      t.ok(await logLine(node, mark, (j) => j.event === 'follower_refused' && j.node_id === 'liar-1', 1000).catch(() => null), 'and the liar is cut off');
      c.ws.terminate();
      await until('the liar gone', () => c.closed !== null);
    }
    // A live follower is sent every new record as soon as it is durable, so a claim (a want
    // from past some offset) can only cover records this leader already sent to that node_id,
    // on this connection or an earlier one: those count, as an honest follower's would after
    // a reconnect; a claim of records never sent there counts for nothing (Leader.copies).
  });

  /** A follower that does what the protocol asks: wants the log, checks and "flushes" records, reports. */
  const honest = async (id: string) => {
    const { c, h } = await session(id);
    const received: number[] = [];
    c.ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) return;
      const f = parseRecordFrame(Buffer.from(data));
      if (typeof f === 'string') throw new Error(f);
      const last = checkRecord(f.key, Buffer.from(f.record));
      received.push(last);
      c.ws.send(JSON.stringify({ t: 'flushed', incarnation: h.incarnation, offset: last }));
    });
    c.ws.send(JSON.stringify({ t: 'want', incarnation: h.incarnation, from: 1 }));
    await until('the backlog', () => h.durable === 0 || (received.length > 0 && received[received.length - 1]! >= h.durable));
    return { c, h, received };
  };

  await t.test('a report counts only for offsets sent to that follower, not for everything below it', async (t) => {
    // f1 is live and is sent R1, but never reports. f2 connects later and asks from past R1
    // (a claim): it is sent R2 only, and reports R2. R1 must not get its 2xx from f2's report.
    const f1 = await session('skip-1');
    f1.c.ws.send(JSON.stringify({ t: 'want', incarnation: f1.h.incarnation, from: f1.h.durable + 1 }));
    await new Promise((r) => setTimeout(r, 200));
    const r1 = post(node, '{"n":"r1"}');
    await until('f1 sent R1', () => f1.c.binaries.length > 0);
    const x = parseRecordFrame(f1.c.binaries[0]!);
    if (typeof x === 'string') throw new Error(x);
    const f2 = await session('skip-2');
    f2.c.ws.send(JSON.stringify({ t: 'want', incarnation: f2.h.incarnation, from: x.key + 1 }));
    await new Promise((r) => setTimeout(r, 200));
    const r2 = post(node, '{"n":"r2"}');
    await until('f2 sent R2', () => f2.c.binaries.length > 0);
    const y = parseRecordFrame(f2.c.binaries[0]!);
    if (typeof y === 'string') throw new Error(y);
    t.ok(y.key > x.key, `f2 was sent ${y.key} only, not R1 at ${x.key}`);
    f2.c.ws.send(JSON.stringify({ t: 'flushed', incarnation: f2.h.incarnation, offset: y.key }));
    const [a1, a2] = await Promise.all([r1, r2]);
    t.equal(a1.status, 503, `R1: no 2xx from a report of f2, which was never sent it (${a1.status} ${a1.body})`);
    t.equal(a2.status, 200, 'R2: 200, f2 was sent it and reported it');
    f1.c.ws.terminate();
    f2.c.ws.terminate();
  });

  await t.test('positive control: an honest follower gives the quorum', async (t) => {
    const f = await honest('honest-1');
    const r = await post(node, '{"n":"honest"}');
    t.equal(r.status, 200, 'the same request gets 200 with a follower that was sent the record and reported it');
    t.ok(f.received[f.received.length - 1]! > f.h.durable, 'the follower was sent the new record');
    f.c.ws.close();
    await f.c.closedWithin();
  });

  await t.test('(c) bad frames from a follower: the connection closes, ingest goes on', async (t) => {
    const f = await honest('honest-2');
    await refusedBy(t, 'binary', (c) => c.ws.send(Buffer.from([1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]), { binary: true }), /a binary frame from a follower/);
    await refusedBy(t, 'not-json', (c) => c.ws.send('{"t":"flushed",'), /text frame is not JSON/);
    await refusedBy(t, 'non-ascii', (c) => c.ws.send(JSON.stringify({ t: '\u00e9'.repeat(200) })), /unknown message type/);
    await refusedBy(
      t,
      'two-at-once',
      (c) => {
        // Two bad frames in one write: the second arrives while the first one's close is under way.
        (c.ws as any)._socket.cork();
        c.ws.send('first bad frame');
        c.ws.send('second bad frame');
        c.ws.send(Buffer.from([7, 7, 7]), { binary: true });
        (c.ws as any)._socket.uncork();
      },
      /text frame is not JSON/,
    );
    for (const [what, frame] of [
      ['a text frame over maxPayloadLength', JSON.stringify({ t: 'flushed', incarnation: 'x', offset: 1, pad: 'p'.repeat(100 * 1024) })],
      ['a binary frame over maxPayloadLength', Buffer.alloc(1024 * 1024, 1)],
    ] as const) {
      const { c } = await session('huge');
      c.ws.send(frame, { binary: typeof frame !== 'string' });
      const closed = await c.closedWithin();
      t.not(closed.code, 1000, `${what}: closed (${closed.code})`);
      t.equal(node.proc!.exitCode, null, `${what}: the leader still runs`);
    }
    const r = await post(node, '{"n":"after the hostile frames"}');
    t.equal(r.status, 200, 'ingest (with its quorum) still answers 200');
    t.equal(f.c.closed, null, 'the honest follower was not disturbed');
    const health = await request(node.url('/healthz'), { method: 'GET' });
    t.equal(health.status, 200);
    f.c.ws.close();
  });

  t.equal(node.proc!.exitCode, null, 'the leader never stopped');
});
