// Acknowledged means durable against a lost page cache: crowd runs with the power-cut shim
// (test/powercut/shim.c, test/helpers/powercut.ts), a client records the id of every 2xx, and
// at a random moment the power is cut: SIGKILL, then every file of the log directory is rolled
// back to its bytes at its last completed fdatasync (plus its O_DSYNC writes). crowd must open
// the rolled-back log, hold every acknowledged id exactly once with its body, and accept new
// requests. The negative control (a shim whose syncs sync nothing) must lose acknowledged ids,
// which shows the check can see a loss.
import t from 'tap';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { open } from 'lmdb';
import { LoadClient, type Ack } from '../helpers/load';
import { request } from '../helpers/http';
import { PowerCutCrowd } from '../helpers/powercut';
import { decodeEnvelope } from '../../src/log/codec';
import { forEachInRecord } from '../../src/log/record';

const ROUNDS = 10;

interface Check {
  stored: number;
  missing: number;
  wrongBody: number;
  duplicates: number;
}

/** Reads the log raw (crowd stopped) and checks every acknowledged id against it. */
function check(logDir: string, acks: Ack[]): Check {
  const file = join(logDir, 'crowd.mdb');
  const seen = new Map<string, string>();
  let duplicates = 0;
  if (existsSync(file) && statSync(file).size > 0) {
    const env = open({ path: file, readOnly: true, maxDbs: 8 });
    try {
      const entries = env.openDB<Buffer, number>({ name: 'entries', encoding: 'binary', keyEncoding: 'ordered-binary' });
      for (const { value } of entries.getRange({})) {
        forEachInRecord(value, (_i, bytes) => {
          const e = decodeEnvelope(bytes);
          if (seen.has(e.id)) duplicates++;
          seen.set(e.id, Buffer.from(e.body).toString());
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
  return r.status >= 200 && r.status < 300 ? { id: JSON.parse(r.body).id, body } : null;
}

t.test('a power cut at a random moment loses no acknowledged request', async (t) => {
  // 2 ms more per sync: cuts land more often inside a commit (between its writes and its sync).
  const crowd = new PowerCutCrowd({ syncDelayUs: 2000 });
  t.teardown(() => crowd.stop());
  await crowd.start();
  const acks: Ack[] = [];
  let midCommit = 0;
  for (let round = 1; round <= ROUNDS; round++) {
    const client = new LoadClient(() => crowd.url('/leads'), { workers: 16, maxRequests: 1_000_000, tag: `powercut-${round}`, timeoutMs: 5000 }).start();
    await new Promise((r) => setTimeout(r, 150 + Math.random() * 600));
    const { exit, stats } = await crowd.cut();
    await client.stop();
    acks.push(...client.acks);
    const c = check(crowd.logDir, acks);
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

t.test('negative control: syncs that sync nothing lose acknowledged requests', async (t) => {
  const crowd = new PowerCutCrowd({ fakeSync: true });
  t.teardown(() => crowd.stop());
  await crowd.start();
  const client = new LoadClient(() => crowd.url('/leads'), { workers: 16, maxRequests: 1_000_000, tag: 'powercut-control', timeoutMs: 5000 }).start();
  await new Promise((r) => setTimeout(r, 800));
  const { stats } = await crowd.cut();
  await client.stop();
  const c = check(crowd.logDir, client.acks);
  t.ok(client.acks.length > 0, `${client.acks.length} acknowledged under the fake syncs; ${stats.preImages} pre-images rolled back, ${stats.syncs} syncs seen`);
  t.ok(c.missing > 0, `the check finds the loss: ${c.missing} of ${client.acks.length} acknowledged ids missing`);
});
