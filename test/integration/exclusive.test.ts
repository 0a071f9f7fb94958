// Ensures one log has one writer and one port one crowd: a second crowd on the same log
// directory or the same port refuses to start (uSockets would otherwise share the port via
// SO_REUSEPORT, and two writers would hand out the same offsets); a lock left by a killed
// process is taken over.
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Crowd } from '../helpers/crowd';
import { request } from '../helpers/http';

t.test('a second crowd on the same log directory refuses to start', async (t) => {
  const first = new Crowd();
  await first.start();
  t.teardown(() => first.stop());
  const second = new Crowd({ config: { log: { dir: first.logDir } } });
  t.teardown(() => second.stop());
  await t.rejects(second.start(), /exited \(1\) before listening/);
  t.match(second.lines.join('\n'), /CROWD_ERR_LOG_LOCKED/);
  t.match(second.lines.join('\n'), /in use by another crowd process \(pid \d+\)/);
  t.equal((await request(first.url('/leads'), { body: 'still fine' })).status, 200, 'the first one is unaffected');
});

t.test('a lock left by a process that is gone is taken over', async (t) => {
  const crowd = new Crowd();
  await crowd.start();
  t.teardown(() => crowd.stop());
  await crowd.kill9();
  writeFileSync(join(crowd.logDir, 'crowd.lock'), '999999999\n'); // no such pid
  await crowd.start();
  t.equal((await request(crowd.url('/leads'), { body: 'x' })).status, 200);
});

t.test('a second crowd on the same port refuses to start', async (t) => {
  const first = new Crowd();
  await first.start();
  t.teardown(() => first.stop());
  const second = new Crowd({ config: { server: { port: first.port } } });
  t.teardown(() => second.stop());
  await t.rejects(second.start(), /exited \(1\) before listening/);
  t.match(second.lines.join('\n'), /CROWD_ERR_LISTEN/);
  t.match(second.lines.join('\n'), new RegExp(`cannot listen on 127\\.0\\.0\\.1:${first.port}`));
});
