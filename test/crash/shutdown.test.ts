// Ensures SIGTERM under load loses no acknowledged request and hangs no request: crowd stops
// accepting, acknowledges what it appended, exits 0; every acknowledged id is in the log.
import t from 'tap';
import { Crowd } from '../helpers/crowd';
import { LoadClient } from '../helpers/load';
import { Log } from '../../src/log/log';

t.test('SIGTERM under load', async (t) => {
  const crowd = new Crowd();
  await crowd.start();
  t.teardown(() => crowd.stop());
  const client = new LoadClient(() => crowd.url('/leads'), { workers: 48, maxRequests: 100_000, tag: 'sigterm', timeoutMs: 15_000 }).start();
  await new Promise((r) => setTimeout(r, 1000));
  const acksBefore = client.acks.length;
  const started = Date.now();
  const exit = await crowd.sigterm();
  t.equal(exit.code, 0, 'exit code 0');
  t.ok(Date.now() - started < 10_000, 'stops within the shutdown grace period');
  await client.stop();
  t.ok(acksBefore > 100, `load was running (${acksBefore} acks before SIGTERM)`);
  t.equal(client.other, 0, 'no answer other than 2xx or 503');
  t.match(crowd.lines.join('\n'), /"event":"stopped"/);

  const log = await Log.open({ dir: crowd.logDir, maxPendingWrites: 1, maxBytes: 1e12, retentionMs: 0, consumers: [], readOnly: true });
  t.teardown(() => log.close());
  const ids = new Set<string>();
  for (let from = 1; ; ) {
    const batch = log.read(from, 5000);
    if (batch.length === 0) break;
    for (const e of batch) ids.add(e.id);
    from = batch[batch.length - 1]!.offset + 1;
  }
  const lost = client.acks.filter((a) => !ids.has(a.id)).length;
  t.equal(lost, 0, `all ${client.acks.length} acknowledged requests are in the log`);
});
