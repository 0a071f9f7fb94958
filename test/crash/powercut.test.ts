// Acknowledged means durable against a lost page cache: crowd runs with the power-cut shim
// (test/powercut/shim.c, test/helpers/powercut.ts), a client records the id of every 2xx, and
// at a random moment the power is cut: SIGKILL, then every file of the log directory is rolled
// back to its bytes at its last completed fdatasync (plus its O_DSYNC writes), and the next
// start sees a new boot id. crowd must open the rolled-back log, hold every acknowledged id
// exactly once with its body, and accept new requests; one round is a burst of 256 KiB bodies,
// and a second test cuts while delivery commits offsets and dead letters. Two negative
// controls must lose acknowledged ids: (a) syncs that sync nothing, (b) a meta page write that
// is not synchronous. They show the check can see a loss.
import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { LoadClient, type Ack } from '../helpers/load';
import { request } from '../helpers/http';
import { runCli } from '../helpers/crowd';
import { targetStatus } from '../helpers/delivery';
import { PowerCutCrowd } from '../helpers/powercut';
import { Upstream, waitFor } from '../helpers/upstream';
import { decodeEnvelope } from '../../src/log/codec';
import { openEnvironment } from '../../src/log/lmdb';
import { forEachInRecord } from '../../src/log/record';

const ROUNDS = 10;
/** The round whose load is a burst of 256 KiB bodies. */
const LARGE_ROUND = 4;
const LARGE = 256 * 1024;

/** A JSON body of exactly 256 KiB. */
function largeBody(round: number, seq: number): string {
  const head = JSON.stringify({ round, seq, pad: '' });
  return JSON.stringify({ round, seq, pad: String.fromCharCode(97 + (seq % 26)).repeat(LARGE - head.length) });
}

/** Bodies are compared by digest, so that large rounds do not keep their bodies. */
const digest = (body: string | Uint8Array): string => createHash('sha256').update(body).digest('base64');

interface Check {
  stored: number;
  missing: number;
  wrongBody: number;
  duplicates: number;
}

/**
 * Opens the log (crowd stopped) as crowd's next start would, with crowd's own environment
 * options and read-write, and checks every acknowledged id against it. This process reads
 * the machine's real boot id and crowd ran with a fake one, so LMDB picks its meta page as
 * after the reboot that follows a power cut: the first read-write opener falls back to the
 * last meta page marked flushed and rewrites the others to it (see the second control).
 */
function check(logDir: string, acks: Ack[]): Check {
  const file = join(logDir, 'crowd.mdb');
  const seen = new Map<string, string>();
  let duplicates = 0;
  if (existsSync(file) && statSync(file).size > 0) {
    const env = openEnvironment({ path: file, readOnly: false, mapSize: 256 * 1024 * 1024, maxDbs: 8 });
    try {
      const entries = env.openDB<Buffer, number>({ name: 'entries', encoding: 'binary', keyEncoding: 'ordered-binary' });
      for (const { value } of entries.getRange({})) {
        forEachInRecord(value, (_i, bytes) => {
          const e = decodeEnvelope(bytes);
          if (seen.has(e.id)) duplicates++;
          seen.set(e.id, digest(e.body));
          return true;
        });
      }
    } finally {
      void env.close();
    }
  }
  let missing = 0;
  let wrongBody = 0;
  for (const a of acks) {
    const body = seen.get(a.id);
    if (body === undefined) missing++;
    else if (body !== a.body) wrongBody++;
  }
  return { stored: seen.size, missing, wrongBody, duplicates };
}

async function post(crowd: PowerCutCrowd, body: string): Promise<Ack | null> {
  const r = await request(crowd.url('/leads'), { body, headers: { 'content-type': 'application/json' } });
  return r.status >= 200 && r.status < 300 ? { id: JSON.parse(r.body).id, body: digest(body) } : null;
}

t.test('a power cut at a random moment loses no acknowledged request', async (t) => {
  // 2 ms more per sync: cuts land more often inside a commit (between its writes and its sync).
  const crowd = new PowerCutCrowd({ syncDelayUs: 2000 });
  t.teardown(() => crowd.stop());
  await crowd.start();
  const acks: Ack[] = [];
  let midCommit = 0;
  for (let round = 1; round <= ROUNDS; round++) {
    const large = round === LARGE_ROUND;
    const client = new LoadClient(() => crowd.url('/leads'), {
      workers: large ? 8 : 16,
      maxRequests: large ? 400 : 1_000_000,
      tag: `powercut-${round}`,
      timeoutMs: 5000,
      ...(large ? { body: (seq: number) => largeBody(round, seq) } : {}),
    }).start();
    await new Promise((r) => setTimeout(r, 150 + Math.random() * 600));
    const { exit, stats } = await crowd.cut();
    await client.stop();
    acks.push(...client.acks.map((a) => ({ id: a.id, body: digest(a.body) })));
    const c = check(crowd.logDir, acks);
    if (large) t.ok(client.acks.length > 0 && client.acks.every((a) => a.body.length === LARGE), `round ${round}: ${client.acks.length} bodies of 256 KiB acknowledged before the cut`);
    t.equal(exit.signal, 'SIGKILL', `round ${round}: killed; ${client.acks.length} acks this round, ${acks.length} in all; rolled back ${stats.preImages} pre-images (${JSON.stringify(stats.byFile)}) (${stats.durableWrites} O_DSYNC writes kept, ${stats.syncs} syncs seen); ${c.stored} ids stored`);
    t.ok(stats.preImages > 0, `round ${round}: the cut did undo unsynced writes`);
    // One pre-image of crowd.mdb is there after every commit (the meta page field LMDB writes
    // on the ordinary descriptor after its sync); more means the cut fell inside a commit.
    if ((stats.byFile['crowd.mdb'] ?? 0) > 1) midCommit++;
    t.same({ missing: c.missing, wrongBody: c.wrongBody, duplicates: c.duplicates }, { missing: 0, wrongBody: 0, duplicates: 0 }, `round ${round}: every acknowledged id stored once with its body`);
    await crowd.start();
    const fresh = await post(crowd, JSON.stringify({ tag: 'after-cut', round }));
    t.ok(fresh, `round ${round}: crowd opens the rolled-back log and accepts a new request`);
    if (fresh) acks.push(fresh);
  }
  t.ok(acks.length > 200, `enough acknowledged requests to mean something (${acks.length})`);
  t.ok(midCommit > 0, `${midCommit} of ${ROUNDS} cuts fell inside a commit and undid its page writes`);
});

/** Runs load, cuts, and returns how many acknowledged ids the check finds missing. */
async function controlRound(crowd: PowerCutCrowd, tag: string, t: Test): Promise<{ missing: number; tail: { code: number | null; stderr: string } }> {
  await crowd.start();
  const client = new LoadClient(() => crowd.url('/leads'), { workers: 16, maxRequests: 1_000_000, tag, timeoutMs: 5000 }).start();
  await new Promise((r) => setTimeout(r, 300 + Math.random() * 500));
  const { stats } = await crowd.cut();
  await client.stop();
  // Before anything opens the log read-write (which recovers it): what `crowd tail` says.
  const tail = await runCli(['tail', '-n', '1', '-c', crowd.configFile]);
  const c = check(crowd.logDir, client.acks.map((a) => ({ id: a.id, body: digest(a.body) })));
  t.ok(client.acks.length > 0, `${tag}: ${client.acks.length} acknowledged; ${stats.preImages} pre-images rolled back, ${stats.durableWrites} O_DSYNC writes kept, ${stats.syncs} syncs seen; ${c.missing} acknowledged ids missing`);
  return { missing: c.missing, tail };
}

t.test('negative control (a): syncs that sync nothing lose acknowledged requests', async (t) => {
  const crowd = new PowerCutCrowd({ fakeSync: true });
  t.teardown(() => crowd.stop());
  const { missing } = await controlRound(crowd, 'control-a', t);
  t.ok(missing > 0, `the check finds the loss: ${missing} acknowledged ids missing`);
});

// How a commit reaches the device here (lmdb-js's overlapping sync, mdb_txn_commit and
// mdb_env_write_meta in node_modules/lmdb/dependencies/lmdb/libraries/liblmdb/mdb.c): the
// data pages and the transaction's meta page are written through the ordinary descriptor, the
// meta page marked "not yet flushed" (MDB_OVERLAPPINGSYNC in its flags) and stamped with the
// boot id; then fdatasync; then a third, "flushed" meta (half a page into page 0) is written
// through env->me_mfd, the descriptor opened with O_DSYNC; the commit's flushed promise, which
// crowd's acknowledgement waits for, resolves after that. On open after a reboot (another boot
// id), mdb_pick_meta trusts an unflushed meta page only if it was written during this boot, so
// it falls back to the flushed meta. The acknowledged state therefore depends on the O_DSYNC
// write. This control makes exactly those writes non-durable (a later fdatasync of the file
// still covers them): a cut after a commit's acknowledgements and before the next commit's
// fdatasync must lose that commit's acknowledged ids. Without the boot id changing at each
// cut (POWERCUT_BOOT_ID), LMDB would trust the synced unflushed meta and the loss would not
// show: that is what the control proves about the harness as well.
t.test('negative control (b): a meta page write that is not synchronous loses acknowledged requests', async (t) => {
  const crowd = new PowerCutCrowd({ dropDsync: true, syncDelayUs: 2000 });
  t.teardown(() => crowd.stop());
  // The loss needs the cut between a commit's acknowledgements and the next commit's
  // fdatasync; under steady load and slow syncs almost every cut does. Up to 5 cuts.
  let missing = 0;
  let cuts = 0;
  while (missing === 0 && cuts < 5) {
    cuts++;
    const r = await controlRound(crowd, `control-b-${cuts}`, t);
    missing += r.missing;
    if (r.missing > 0) {
      // The newest meta page on the device is not the last one marked flushed: a read-only
      // open cannot fall back (that writes the meta pages), and says so.
      t.equal(r.tail.code, 1, 'crowd tail refuses the unrecovered log');
      t.match(r.tail.stderr, /CROWD_ERR_LOG_RECOVERY.*needs recovery.*`crowd start` recovers it/, `and says why: ${r.tail.stderr.trim()}`);
    }
  }
  t.ok(missing > 0, `the check finds the loss after ${cuts} cut(s): ${missing} acknowledged ids missing`);
});

t.test('a power cut while delivery commits offsets and dead letters loses neither', async (t) => {
  // Bodies with "dead":true get 400 (dead-lettered at once); the rest get 200.
  const up = await Upstream.start(0, (r) => ({ status: r.body.includes('"dead":true') ? 400 : 200 }));
  const crowd = new PowerCutCrowd({
    syncDelayUs: 1000,
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: up.url(), concurrency: 8, retry: { base: '20ms', max: '200ms' } }],
    },
  });
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  await crowd.start();
  const acks: Ack[] = [];
  const CUTS = 3;
  for (let cut = 1; cut <= CUTS; cut++) {
    const client = new LoadClient(() => crowd.url('/leads'), {
      workers: 8,
      maxRequests: 1_000_000,
      tag: `delivery-${cut}`,
      timeoutMs: 5000,
      body: (seq) => JSON.stringify({ cut, seq, dead: seq % 5 === 0 }),
    }).start();
    await new Promise((r) => setTimeout(r, 300 + Math.random() * 500));
    const before = up.received.length;
    const { stats } = await crowd.cut();
    await client.stop();
    acks.push(...client.acks);
    t.ok(before > 0, `cut ${cut}: ${client.acks.length} acknowledged, ${before} deliveries tried before the cut; ${stats.preImages} pre-images rolled back`);
    await crowd.start();
  }
  await waitFor(async () => (await targetStatus(crowd, 'api')).lag === 0, 60_000, 'everything delivered or dead-lettered after the last cut');
  const delivered = new Map<string, number>();
  const refused = new Set<string>();
  for (const r of up.received) {
    const id = String(r.headers['idempotency-key']);
    if (r.body.includes('"dead":true')) refused.add(id);
    else delivered.set(id, (delivered.get(id) ?? 0) + 1);
  }
  const list = await runCli(['dlq', 'list', '--target', 'api', '-n', '1000000', '-c', crowd.configFile]);
  t.equal(list.code, 0, list.stderr);
  const dead = new Set(list.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l).request.id as string));
  const lost = { delivery: [] as string[], deadLetter: [] as string[] };
  for (const a of acks) {
    if (a.body.includes('"dead":true')) {
      if (!dead.has(a.id)) lost.deadLetter.push(a.id);
    } else if (!delivered.has(a.id)) lost.delivery.push(a.id);
  }
  const deadAcked = acks.filter((a) => a.body.includes('"dead":true')).length;
  let duplicates = 0;
  for (const n of delivered.values()) duplicates += n - 1;
  t.same({ delivery: lost.delivery.length, deadLetter: lost.deadLetter.length }, { delivery: 0, deadLetter: 0 }, `every acknowledged request was delivered (${acks.length - deadAcked}) or is a dead letter (${deadAcked}) after ${CUTS} cuts`);
  t.ok(dead.size >= deadAcked, `${dead.size} dead letters listed, ${refused.size} ids refused by the upstream`);
  t.comment(`${duplicates} duplicate deliveries (offsets rolled back by the cuts are sent again), ${up.received.length} requests in all`);
});
