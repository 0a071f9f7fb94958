// A consumer that throws while taking its commit's result is not swallowed: the error is
// logged and reported as fatal (the node crash-stops), and the other consumers' part of
// the same commit is still applied before that.
import t from 'tap';
import { join } from 'node:path';
import pino from 'pino';
import { Delivery } from '../../../src/delivery/delivery';
import { validateConfig } from '../../../src/config/load';
import { Log } from '../../../src/log/log';
import { Metrics } from '../../../src/observability/metrics';
import { tempDir } from '../../helpers/crowd';

t.test('an exception in a consumer after a commit is logged and fatal', async (t) => {
  const dir = join(tempDir('crowd-delivery-'), 'log');
  const config = validateConfig(
    {
      log: { dir },
      routes: [{ name: 'leads', path: '/leads', targets: ['a', 'b'] }],
      targets: [
        { name: 'a', url: 'http://127.0.0.1:9' },
        { name: 'b', url: 'http://127.0.0.1:9' },
      ],
    },
    'test',
  );
  const log = await Log.open({ dir, maxPendingWrites: 1000, maxBytes: 1e9, retentionMs: 0, consumers: ['a', 'b'] });
  const lines: string[] = [];
  const logger = pino({ level: 'info' }, { write: (l: string) => lines.push(l) });
  const fatal: Error[] = [];
  const metrics = new Metrics({ log: () => null, targets: () => [], maxBytes: 1e9 });
  const deps = { config, log, logger, metrics, onFatal: (err: Error) => fatal.push(err) };
  // One stored request; both targets start before it. Its attempt fails (nothing listens on
  // port 9), so each consumer parks it: both have a change for the next commit.
  await log.delivery.commit([
    { target: 'a', offset: 0, park: [], unpark: [], dead: [] },
    { target: 'b', offset: 0, park: [], unpark: [], dead: [] },
  ]);
  await new Promise<void>((res, rej) =>
    log.append(
      { id: 'id-1', received_at: Date.now(), route: 'leads', method: 'POST', path: '/leads', query: '', headerList: [], remote: '127.0.0.1', body: Buffer.from('x') },
      { appended: (err) => (err ? rej(err) : res()) },
    ),
  );
  const delivery = new Delivery(deps);
  t.teardown(async () => {
    await delivery.stop(0).catch(() => undefined);
    await log.close();
  });
  const a = delivery.consumers.get('a')!;
  const b = delivery.consumers.get('b')!;
  // Under load the two parks can land in different commits: b must get the result of every
  // commit that held its changes, also one in which a throws, and its change must be stored.
  let commitsWithB = 0;
  const commitOrig = log.delivery.commit.bind(log.delivery);
  log.delivery.commit = (commits) => {
    if (commits.some((c) => c.target === 'b')) commitsWithB++;
    return commitOrig(commits);
  };
  let bCommitted = 0;
  const bCommittedOrig = b.committed.bind(b);
  b.committed = (p) => {
    bCommitted++;
    bCommittedOrig(p);
  };
  a.committed = () => {
    throw new TypeError('a bug in committed()');
  };
  await delivery.start();
  const deadline = Date.now() + 5000;
  while (fatal.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.equal(fatal.length, 1, 'reported as fatal once');
  t.match(fatal[0]?.message ?? '', /a bug in committed\(\)/);
  t.ok(lines.some((l) => l.includes('"event":"delivery_failed"') && l.includes('a bug in committed()')), 'logged with its cause');
  t.ok(commitsWithB >= 1, `b's change was committed (${commitsWithB} commits held it)`);
  t.equal(bCommitted, commitsWithB, 'the other consumer got the result of every commit that held its changes');
  t.same(log.delivery.retryIndex('b').map((r) => r.offset), [1], "b's parked request is stored");
});
