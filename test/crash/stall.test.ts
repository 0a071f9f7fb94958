// Ensures a hung disk cannot make SIGTERM hang: strace holds every fdatasync for 60 s, a
// request waits for its commit, SIGTERM arrives; the stall check (30 s) still runs while
// crowd stops, fails the log, answers 503 and kills itself (an orderly exit would wait for
// the thread stuck in fdatasync), all long before the disk answers. The process itself is
// reaped only once the stuck syscall returns (the kernel cannot tear down a thread inside
// it), so the test times the 503 and the log line, not the exit.
import t from 'tap';
import { join } from 'node:path';
import { Crowd } from '../helpers/crowd';
import { request, type Reply } from '../helpers/http';
import { attachStrace } from '../helpers/strace';

t.test('SIGTERM with a commit stuck in fdatasync: the stall check fails the log, crowd kills itself', async (t) => {
  const crowd = new Crowd();
  await crowd.start();
  t.teardown(() => crowd.stop());
  t.equal((await request(crowd.url('/leads'), { body: 'before' })).status, 200);
  const strace = await attachStrace(crowd.proc!.pid!, join(crowd.dir, 'strace.txt'), ['-e', 'trace=fdatasync', '-e', 'inject=fdatasync:delay_enter=60000000']);
  t.teardown(() => strace.kill('SIGKILL'));
  const sentAt = Date.now();
  let answeredAt = 0;
  const stuck = request(crowd.url('/leads'), { body: 'stuck', timeoutMs: 90_000 })
    .catch((err: Error): Reply => ({ status: 0, headers: {}, body: err.message }))
    .finally(() => (answeredAt = Date.now()));
  await new Promise((r) => setTimeout(r, 500));
  crowd.proc!.kill('SIGTERM');
  const reply = await stuck;
  const exit = await crowd.waitExit();
  const seconds = (answeredAt - sentAt) / 1000;
  t.equal(exit.signal, 'SIGKILL', 'it leaves by SIGKILL');
  t.ok(seconds >= 29 && seconds < 45, `the stuck request was answered ${seconds.toFixed(1)} s after it was sent: by the 30 s stall check, before the disk answered (60 s)`);
  t.match(crowd.lines.join('\n'), /"event":"log_failed".*CROWD_ERR_LOG_STALLED.*has not completed in \d+ s/, 'the stall is logged as the cause');
  t.equal(reply.status, 503, `the stuck request got 503, not an acknowledgement (${reply.status} ${reply.body})`);
});
