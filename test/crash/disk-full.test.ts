// Ensures crash-stop on storage errors: when a commit fails (the log's file system is full),
// the waiting requests get 503 + Retry-After, crowd logs why and exits non-zero, and every
// request acknowledged before that is still in the log. The full disk is a real 4 MiB tmpfs.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Crowd, tempDir } from '../helpers/crowd';
import { request } from '../helpers/http';
import { Log } from '../../src/log/log';

t.test('a failed commit: 503 to the waiting requests, the cause logged, exit non-zero', async (t) => {
  const dir = tempDir();
  const mnt = join(dir, 'small-disk');
  mkdirSync(mnt);
  // Needs root (CI runs as root); a failure here fails the test rather than skipping it.
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mnt]);
  t.teardown(() => execFileSync('umount', ['-l', mnt]));
  const crowd = new Crowd({ dir, config: { server: { max_body_bytes: '1MiB' }, log: { dir: join(mnt, 'data') } } });
  await crowd.start();
  t.teardown(() => crowd.stop());

  const acked: string[] = [];
  const statuses: number[] = [];
  let retryAfter = '';
  for (let i = 0; i < 200; i++) {
    let r;
    try {
      r = await request(crowd.url('/leads'), { body: `${i}:`.padEnd(200 * 1024, 'z'), timeoutMs: 5000 });
    } catch {
      break; // crowd is gone
    }
    statuses.push(r.status);
    if (r.status === 200) acked.push(JSON.parse(r.body).id);
    else {
      if (r.status === 503) retryAfter = String(r.headers['retry-after']);
      break;
    }
  }
  t.ok(acked.length > 3, `some requests fit on the disk (${acked.length})`);
  t.equal(statuses[statuses.length - 1], 503, `the request whose commit failed got 503 (statuses: ${statuses.slice(-3).join(',')})`);
  t.equal(retryAfter, '1', 'with Retry-After');
  const exit = await crowd.waitExit();
  t.not(exit.code, 0, `crowd exited non-zero (${exit.code ?? exit.signal})`);
  t.match(crowd.lines.join('\n'), /"event":"log_failed"/, 'the cause is logged');
  t.match(crowd.lines.join('\n'), /CROWD_ERR_LOG_COMMIT|commit to .* failed/);

  const log = await Log.open({ dir: join(mnt, 'data'), maxPendingWrites: 1, maxBytes: 1e12, retentionMs: 0, consumers: [], readOnly: true });
  t.teardown(() => log.close());
  const ids = new Set(log.read(1, 10_000).map((e) => e.id));
  t.equal(acked.filter((id) => !ids.has(id)).length, 0, `all ${acked.length} acknowledged requests are in the log`);
});
