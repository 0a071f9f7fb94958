// The network-namespace harness (test/helpers/netns.ts) itself: a real crowd in one
// namespace takes requests from a client in another and delivers them to an upstream in a
// third; partition() cuts it off and heal() brings it back; netem() delays what a namespace
// sends; and a lab is gone after destroy(), after its process throws, after a SIGTERM, and
// (through the next sweep) after a SIGKILL. Skipped, visibly, where namespaces cannot be made.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Crowd } from '../helpers/crowd';
import { LabUpstream, NetLab, RUN_DIR, runClient, type ClientLine } from '../helpers/netns';
import { waitFor } from '../helpers/upstream';

/** What `ip <args>` prints. */
function ipOut(args: string[]): string {
  return spawnSync('ip', args, { encoding: 'utf8', env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin` } }).stdout ?? '';
}

/** The lab's namespaces, root-side links and record that still exist. */
function leftovers(id: string): string[] {
  const ns = ipOut(['netns', 'list']).split('\n').map((l) => l.split(' ')[0]!).filter((n) => n.startsWith(`crowdt-${id}-`));
  const links = ipOut(['-o', 'link', 'show']).split('\n').map((l) => (l.split(': ')[1] ?? '').split('@')[0]!).filter((n) => n.startsWith(`ct${id}`));
  return [...ns, ...links, ...(existsSync(join(RUN_DIR, `${id}.json`)) ? [`${RUN_DIR}/${id}.json`] : [])];
}

/** Running: not gone and not a zombie. */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^[ZX]$/.test(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]!);
  } catch {
    return false;
  }
}

const acked = (lines: ClientLine[]): ClientLine[] => lines.filter((l) => l.status === 200 && l.id);

t.test('crowd in a namespace: ingest from another, delivery to a third, partition and heal', async (t) => {
  const why = await NetLab.available();
  if (why) return void t.plan(0, `skipped: network namespaces: ${why}`);
  const lab = await NetLab.create(t, ['n1', 'n2', 'up', 'cl']);
  t.match(lab.ip('n1'), /^10\.\d+\.0\.1$/, `n1 is ${lab.ip('n1')}`);
  const upstream = await LabUpstream.start(lab, 'up');
  t.teardown(() => upstream.stop());
  const crowd = new Crowd({
    wrap: lab.exec('n1', []),
    config: {
      server: { host: lab.ip('n1'), port: 0 },
      admin: { host: lab.ip('n1'), port: 0 },
      targets: [{ name: 'api', url: upstream.url, retry: { base: '50ms', max: '500ms' } }],
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
    },
  });
  t.teardown(() => crowd.stop());
  await crowd.start();
  t.equal(crowd.url('/leads'), `http://${lab.ip('n1')}:${crowd.port}/leads`, 'Crowd.url() uses the namespace address');
  t.equal(ipOut(['netns', 'identify', String(crowd.proc!.pid)]).trim(), lab.ns('n1'), 'the crowd process runs in n1');

  const first = await runClient(lab, 'cl', { url: crowd.url('/leads'), count: 200, concurrency: 8, timeoutMs: 5000 });
  const ok = acked(first);
  t.equal(first.length, 200, 'a line per request');
  t.equal(ok.length, 200, `every request acknowledged (${first.filter((l) => l.status !== 200).map((l) => l.status ?? l.error).join(', ') || 'none other'})`);
  t.equal(new Set(ok.map((l) => l.id)).size, 200, 'with 200 distinct ids');
  let ids: Record<string, number> = {};
  await waitFor(async () => ((ids = await upstream.ids()), ok.every((l) => ids[l.id!])), 20_000, 'the upstream to receive every acknowledged id');
  t.ok(ok.every((l) => ids[l.id!]! >= 1), `every acknowledged id reached the upstream in up (${Object.keys(ids).length} ids there)`);

  await lab.partition('n1');
  const cut = await runClient(lab, 'cl', { url: crowd.url('/leads'), count: 4, concurrency: 4, timeoutMs: 1500 });
  t.same(cut.map((l) => l.status), [null, null, null, null], `partitioned: no answer (${[...new Set(cut.map((l) => l.error))].join(', ')})`);
  t.ok(cut.every((l) => l.ms < 3000), 'each request gave up within its timeout');

  await lab.heal('n1');
  let again: ClientLine[] = [];
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    again = await runClient(lab, 'cl', { url: crowd.url('/leads'), count: 1, timeoutMs: 2000 });
    if (again[0]!.status === 200) break;
  }
  t.equal(again[0]!.status, 200, 'healed: acknowledged again');
  const after = acked(await runClient(lab, 'cl', { url: crowd.url('/leads'), count: 20, concurrency: 4, timeoutMs: 5000 }));
  t.equal(after.length, 20, 'and every request after the heal');
  await waitFor(async () => ((ids = await upstream.ids()), after.every((l) => ids[l.id!])), 20_000, 'the upstream to receive the ids acknowledged after the heal');
  t.pass('delivered after the heal too');

  await crowd.stop();
  await upstream.stop();
  await lab.destroy();
  t.same(leftovers(lab.id), [], `no namespace, link or record of lab ${lab.id} remains`);
  await lab.destroy();
  t.pass('destroy() again is a no-op');
});

t.test('netem delays what a namespace sends; null removes it', async (t) => {
  const why = await NetLab.netemAvailable();
  if (why) return void t.plan(0, `skipped: netem: ${why}`);
  const lab = await NetLab.create(t, ['up', 'cl']);
  const upstream = await LabUpstream.start(lab, 'up');
  t.teardown(() => upstream.stop());
  const url = `${upstream.url}/x`;
  const plain = await runClient(lab, 'cl', { url, count: 5, timeoutMs: 5000 });
  await lab.netem('cl', 'delay 200ms');
  const slow = await runClient(lab, 'cl', { url, count: 5, timeoutMs: 5000 });
  await lab.netem('cl', null);
  const fast = await runClient(lab, 'cl', { url, count: 5, timeoutMs: 5000 });
  const median = (ls: ClientLine[]) => ls.map((l) => l.ms).sort((a, b) => a - b)[2]!;
  t.ok(slow.every((l) => l.status === 200), 'answered under delay');
  t.ok(median(slow) >= 190, `delayed: median ${median(slow)} ms (before ${median(plain)} ms)`);
  t.ok(median(fast) < 150, `removed: median ${median(fast)} ms`);
});

t.test('netem() where the kernel lacks sch_netem: fails loudly, and removing it is harmless', async (t) => {
  const why = await NetLab.available();
  if (why) return void t.plan(0, `skipped: network namespaces: ${why}`);
  if (!(await NetLab.netemAvailable())) return void t.plan(0, 'skipped: netem works here (the test above uses it)');
  const lab = await NetLab.create(t, ['cl']);
  await t.rejects(lab.netem('cl', 'delay 10ms'), /netem delay 10ms failed .*no sch_netem/);
  await lab.netem('cl', null);
  t.pass('netem(null) with no netem in place does not throw');
});

/** Runs netns-child.js in `mode`; resolves with what it printed first and the process. */
function child(mode: 'throw' | 'wait') {
  const proc = spawn(process.execPath, [join(__dirname, '..', 'helpers', 'netns-child.js'), mode], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => proc.once('exit', (code, signal) => res({ code, signal })));
  const first = new Promise<{ id: string; inner: number }>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`netns-child printed nothing in 15 s: ${stderr}`)), 15_000);
    createInterface({ input: proc.stdout }).once('line', (l) => {
      clearTimeout(timer);
      res(JSON.parse(l));
    });
    void exited.then(() => setTimeout(() => rej(new Error(`netns-child exited first: ${stderr}`)), 100));
  });
  return { proc, first, exited, stderr: () => stderr };
}

t.test('a lab outlives no process: uncaught exception, SIGTERM, SIGKILL and the next sweep', async (t) => {
  const why = await NetLab.available();
  if (why) return void t.plan(0, `skipped: network namespaces: ${why}`);

  const thrower = child('throw');
  const a = await thrower.first;
  const e1 = await thrower.exited;
  t.equal(e1.code, 1, 'the child died of its exception');
  t.match(thrower.stderr(), /thrown on purpose by netns-child/);
  t.same(leftovers(a.id), [], `exception: lab ${a.id} removed by the exit handler`);
  await waitFor(() => !running(a.inner), 5000, 'the process in the namespace to end');

  const termed = child('wait');
  const b = await termed.first;
  t.ok(leftovers(b.id).length > 0, `lab ${b.id} exists while its process runs`);
  termed.proc.kill('SIGTERM');
  const e2 = await termed.exited;
  t.equal(e2.signal, 'SIGTERM', 'the child still dies of the SIGTERM');
  t.same(leftovers(b.id), [], `SIGTERM: lab ${b.id} removed by the signal handler`);
  await waitFor(() => !running(b.inner), 5000, 'the process in the namespace to end');

  const killed = child('wait');
  const c = await killed.first;
  killed.proc.kill('SIGKILL');
  await killed.exited;
  // Nothing of the child runs on SIGKILL: only a sweep removes its lab, this one or that of
  // a test file running beside this one (every NetLab.create sweeps), whichever comes first.
  const left = leftovers(c.id);
  t.comment(`SIGKILL left ${left.join(', ') || 'nothing: another sweep came first'}`);
  const swept = await NetLab.sweep();
  t.comment(`swept: ${swept.join(', ') || 'nothing'}`);
  t.same(leftovers(c.id), [], `SIGKILL: lab ${c.id} gone after the sweep`);
  await waitFor(() => !running(c.inner), 5000, 'the sweep to end the process in the namespace');
});
