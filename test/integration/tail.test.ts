// Ensures `crowd tail` prints stored requests as JSON lines with --from, -n and --follow,
// while crowd runs, with UTF-8 bodies as text and binary bodies as base64.
import t from 'tap';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { BIN, Crowd, runCli } from '../helpers/crowd';
import { request } from '../helpers/http';

const crowd = new Crowd();
t.before(() => crowd.start());
t.teardown(() => crowd.stop());

t.test('--from, -n, and body encodings', async (t) => {
  for (let i = 1; i <= 5; i++) t.equal((await request(crowd.url('/leads'), { body: `text-${i}` })).status, 200);
  const binary = Buffer.from([0x00, 0xff, 0xfe, 0x80, 0x41]);
  t.equal((await request(crowd.url('/leads'), { body: binary, headers: { 'content-type': 'application/octet-stream' } })).status, 200);
  const lines = async (args: string[]) => {
    const r = await runCli(['tail', '-c', crowd.configFile, ...args]);
    t.equal(r.code, 0, r.stderr);
    return r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
  };
  const all = await lines([]);
  t.same(all.map((e) => e.offset), [1, 2, 3, 4, 5, 6]);
  t.match(all[0], { body_encoding: 'utf8', body: 'text-1', method: 'POST', path: '/leads', route: 'leads' });
  t.match(all[5], { body_encoding: 'base64', body: binary.toString('base64') });
  t.same((await lines(['--from', '4'])).map((e) => e.offset), [4, 5, 6]);
  t.same((await lines(['-n', '2'])).map((e) => e.offset), [5, 6], '-n alone: the last N');
  t.same((await lines(['--from', '2', '-n', '2'])).map((e) => e.offset), [2, 3]);
  const bad = await runCli(['tail', '-c', crowd.configFile, '--from', 'x']);
  t.not(bad.code, 0, 'a bad offset is refused');
  t.match(bad.stderr, /"x" is not a whole number/);
});

t.test('--follow prints new requests as they are stored', async (t) => {
  const proc = spawn(process.execPath, [BIN, 'tail', '-c', crowd.configFile, '--follow', '--from', '7'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => proc.kill('SIGKILL'));
  const rl = createInterface({ input: proc.stdout! });
  const got: any[] = [];
  const three = new Promise<void>((resolve) =>
    rl.on('line', (l) => {
      got.push(JSON.parse(l));
      if (got.length === 3) resolve();
    }),
  );
  await new Promise((r) => setTimeout(r, 300));
  const ids: string[] = [];
  for (let i = 0; i < 3; i++) ids.push(JSON.parse((await request(crowd.url('/leads'), { body: `follow-${i}` })).body).id);
  await Promise.race([three, new Promise((_, rej) => setTimeout(() => rej(new Error('tail --follow printed nothing within 5 s')), 5000))]);
  t.same(got.map((e) => e.id), ids, 'every new request, in order');
  proc.kill('SIGTERM');
  const code = await new Promise((r) => proc.on('exit', (c) => r(c)));
  t.equal(code, 0, 'stops cleanly on SIGTERM');
});

t.test('no log yet: a clear error', async (t) => {
  const empty = new Crowd();
  const r = await runCli(['tail', '-c', empty.configFile]);
  t.equal(r.code, 1);
  t.match(r.stderr, /no log at .*\(log\.dir\)/);
});
