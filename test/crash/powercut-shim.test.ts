// The power-cut harness itself (test/powercut/shim.c and rollback() of test/helpers/powercut.ts):
// after a known sequence of writes, syncs, a truncate and an O_DSYNC write, killed and rolled
// back, each file holds what it held at its last completed sync plus its O_DSYNC writes.
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/crowd';
import { rollback, SHIM } from '../helpers/powercut';

function run(t: Test, fakeSync: boolean): string {
  const dir = tempDir('crowd-powercut-shim-');
  const data = join(dir, 'data');
  mkdirSync(data);
  const journal = join(dir, 'journal');
  const r = spawnSync(process.execPath, [join(__dirname, '..', 'helpers', 'powercut-child.js'), data], {
    env: { ...process.env, LD_PRELOAD: SHIM, POWERCUT_DIR: data, POWERCUT_JOURNAL: journal, POWERCUT_FAKE_SYNC: fakeSync ? '1' : '0', UV_USE_IO_URING: '0' },
  });
  if (r.signal !== 'SIGKILL') throw new Error(`child ended with ${r.status ?? r.signal}: ${r.stderr}`);
  const before = ['a', 'b', 'c', 'd'].map((f) => readFileSync(join(data, f), 'latin1'));
  t.same(before, ['AABEEBAACCDD', '012', 'yyxxZZxx', 'lost'], `${fakeSync ? 'fake syncs' : 'real syncs'}: the files as the killed process left them`);
  rollback(journal);
  return data;
}

t.test('rollback restores each file to its last sync, keeping O_DSYNC writes', async (t) => {
  const data = run(t, false);
  t.equal(readFileSync(join(data, 'a'), 'latin1'), 'AAAAAAAA', 'overwrite and extension since the sync undone');
  t.equal(readFileSync(join(data, 'b'), 'latin1'), '0123456789', 'truncate since the sync undone');
  t.equal(readFileSync(join(data, 'c'), 'latin1'), 'xxxxZZxx', 'unsynced write undone, O_DSYNC write kept');
  t.equal(readFileSync(join(data, 'd'), 'latin1'), '', 'a never synced file is empty');
});

t.test('with fake syncs nothing written survives', async (t) => {
  const data = run(t, true);
  for (const f of ['a', 'b', 'c', 'd']) t.equal(readFileSync(join(data, f), 'latin1'), '', `${f} is empty`);
});

t.test('POWERCUT_BOOT_ID replaces the boot id a process reads (each start after a cut is a new boot)', async (t) => {
  const id = 'deadbeef-0000-4000-8000-000000000001\n';
  const faked = spawnSync('cat', ['/proc/sys/kernel/random/boot_id'], { env: { ...process.env, LD_PRELOAD: SHIM, POWERCUT_BOOT_ID: id } });
  t.equal(faked.stdout.toString(), id, 'read through the shim');
  const real = spawnSync('cat', ['/proc/sys/kernel/random/boot_id'], { env: { ...process.env, LD_PRELOAD: SHIM } });
  t.not(real.stdout.toString(), id, 'without it, the real one');
  t.match(real.stdout.toString(), /^[0-9a-f-]{36}\n$/);
});

t.test('POWERCUT_SYNC_DELAY_FILE slows each sync while it holds a number (setSyncDelay)', async (t) => {
  const dir = tempDir('crowd-powercut-shim-');
  const data = join(dir, 'data');
  mkdirSync(data);
  const delay = join(dir, 'delay');
  // Three syncs of a watched file: the file says 300 ms, then it is gone (the env's 0 again).
  const child = `const fs = require('fs');
    const fd = fs.openSync(${JSON.stringify(join(data, 'f'))}, 'w');
    const took = () => { fs.writeSync(fd, 'x'); const t = Date.now(); fs.fdatasyncSync(fd); return Date.now() - t; };
    const plain = took();
    fs.writeFileSync(${JSON.stringify(delay)}, '300000');
    const slow = took();
    fs.unlinkSync(${JSON.stringify(delay)});
    console.log(JSON.stringify([plain, slow, took()]));`;
  const r = spawnSync(process.execPath, ['-e', child], {
    env: { ...process.env, LD_PRELOAD: SHIM, POWERCUT_DIR: data, POWERCUT_JOURNAL: join(dir, 'journal'), POWERCUT_SYNC_DELAY_US: '0', POWERCUT_SYNC_DELAY_FILE: delay, UV_USE_IO_URING: '0' },
  });
  const [plain, slow, after] = JSON.parse(r.stdout.toString()) as number[];
  t.ok(slow! >= 300, `a sync while the file says 300000 takes ${slow} ms`);
  t.ok(plain! < 300 && after! < 300, `before and after: ${plain} ms, ${after} ms`);
});
