// Ensures one log has one writer and one port one crowd: a second crowd on the same log
// directory or the same port refuses to start (uSockets would otherwise share the port via
// SO_REUSEPORT, and two writers would hand out the same offsets), also when the two run in
// different PID namespaces (two containers sharing a volume) and when several start at
// once; a lock left by a killed process is free again.
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Crowd, ROOT, tempDir } from '../helpers/crowd';
import { request } from '../helpers/http';
import { Log } from '../../src/log/log';

t.test('a second crowd on the same log directory refuses to start', async (t) => {
  const first = new Crowd();
  await first.start();
  t.teardown(() => first.stop());
  const second = new Crowd({ config: { log: { dir: first.logDir } } });
  t.teardown(() => second.stop());
  await t.rejects(second.start(), /exited \(1\) before listening/);
  t.match(second.lines.join('\n'), /CROWD_ERR_LOG_LOCKED/);
  t.match(second.lines.join('\n'), /in use by another crowd process \(pid \d+ on host \S+ since /);
  t.notMatch(second.lines.join('\n'), /"stack"|\n\s+at /, 'one clear line, no stack trace');
  t.equal((await request(first.url('/leads'), { body: 'still fine' })).status, 200, 'the first one is unaffected');
});

t.test('the lock of a process killed with kill -9 is free again', async (t) => {
  const crowd = new Crowd();
  await crowd.start();
  t.teardown(() => crowd.stop());
  t.equal((await request(crowd.url('/leads'), { body: 'a' })).status, 200);
  await crowd.kill9();
  await crowd.start();
  t.equal((await request(crowd.url('/leads'), { body: 'b' })).status, 200);
  // A lock file of an older version (a bare pid of a process that no longer exists) is no lock.
  await crowd.kill9();
  writeFileSync(join(crowd.logDir, 'crowd.lock'), '999999999\n');
  await crowd.start();
  t.equal((await request(crowd.url('/leads'), { body: 'c' })).status, 200);
});

for (const inside of ['first', 'second'] as const) {
  t.test(`two PID namespaces: a second crowd refuses while the ${inside} one runs in its own namespace`, async (t) => {
    // `unshare --pid` (root): the other process's pid means nothing (or something else) here.
    const wrap = ['unshare', '--pid', '--fork', '--kill-child'];
    const first = new Crowd(inside === 'first' ? { wrap } : {});
    await first.start();
    t.teardown(() => first.stop());
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) ids.push(JSON.parse((await request(first.url('/leads'), { body: `first-${i}` })).body).id);
    const second = new Crowd({ config: { log: { dir: first.logDir } }, ...(inside === 'second' ? { wrap } : {}) });
    t.teardown(() => second.stop());
    await t.rejects(second.start(), /exited \(1\) before listening/, 'the second one does not start');
    t.match(second.lines.join('\n'), /CROWD_ERR_LOG_LOCKED/);
    t.equal((await request(first.url('/leads'), { body: 'still fine' })).status, 200, 'the first one is unaffected');
    await first.kill9(); // (unshare ignores SIGTERM; --kill-child takes crowd with it)
    const log = await Log.open({ dir: first.logDir, maxPendingWrites: 1, maxBytes: 1e12, retentionMs: 0, consumers: [], readOnly: true });
    const stored = new Set(log.read(1, 100).map((e) => e.id));
    await log.close();
    t.ok(ids.every((id) => stored.has(id)), 'every acknowledged request of the first one is in the log');
  });
}

t.test('starters racing for one log directory: exactly one holds it, every round', async (t) => {
  const ROUNDS = 20;
  const STARTERS = 4;
  const dir = join(tempDir(), 'data');
  mkdirSync(dir);
  const child = join(ROOT, 'dist', 'test', 'helpers', 'lock-child.js');
  for (let round = 0; round < ROUNDS; round++) {
    // The previous round's holder is gone: its lock file stays behind, as after kill -9.
    const startAt = Date.now() + 200;
    const procs = Array.from({ length: STARTERS }, () => spawn(process.execPath, [child, dir, String(startAt)], { stdio: ['pipe', 'pipe', 'inherit'] }));
    const answers = await Promise.all(
      procs.map(
        (p) =>
          new Promise<string>((resolve, reject) => {
            createInterface({ input: p.stdout! }).once('line', resolve);
            p.once('exit', (code) => reject(new Error(`a starter exited ${code} without answering`)));
          }),
      ),
    );
    const holders = answers.filter((a) => a === 'LOCKED').length;
    if (holders !== 1) t.fail(`round ${round + 1}: ${holders} holders (${answers.join(' | ')})`);
    for (const a of answers) if (a !== 'LOCKED') t.match(a, /^REFUSED .*in use by another crowd process \(/, 'a refusal says the log is in use');
    await Promise.all(procs.map((p) => new Promise((r) => (p.stdin!.end(), p.once('exit', r)))));
  }
  t.pass(`${ROUNDS} rounds of ${STARTERS} starters`);
});

t.test('a second crowd on the same port refuses to start', async (t) => {
  const first = new Crowd();
  await first.start();
  t.teardown(() => first.stop());
  const second = new Crowd({ config: { server: { port: first.port } } });
  t.teardown(() => second.stop());
  await t.rejects(second.start(), /exited \(1\) before listening/);
  t.match(second.lines.join('\n'), /CROWD_ERR_LISTEN/);
  t.notMatch(second.lines.join('\n'), /"stack"|\n\s+at /, 'one clear line, no stack trace');
  t.match(second.lines.join('\n'), new RegExp(`cannot listen on 127\\.0\\.0\\.1:${first.port}`));
});
