// Ensures crowd refuses to start when the native uWebSockets.js binary does not load,
// instead of running on the package's slow pure-JS fallback. The test builds a copy of the
// install whose uWebSockets.js has no binaries and starts the real bin/crowd from it.
import t from 'tap';
import { cpSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { ROOT, tempDir } from '../helpers/crowd';

t.test('no native binary: exit 1 with CROWD_ERR_UWS_NATIVE, nothing listens', async (t) => {
  const copy = tempDir('crowd-nouws-');
  // bin and dist are copied (node resolves a symlinked main module to its real path, which
  // would find the real node_modules); every package but uWebSockets.js is linked.
  for (const f of ['bin', 'dist']) cpSync(join(ROOT, f), join(copy, f), { recursive: true });
  symlinkSync(join(ROOT, 'package.json'), join(copy, 'package.json'));
  const nm = join(copy, 'node_modules');
  mkdirSync(nm);
  for (const entry of readdirSync(join(ROOT, 'node_modules'))) {
    if (entry !== 'uWebSockets.js') symlinkSync(join(ROOT, 'node_modules', entry), join(nm, entry));
  }
  const uws = join(nm, 'uWebSockets.js');
  cpSync(join(ROOT, 'node_modules', 'uWebSockets.js'), uws, { recursive: true, filter: (src) => !src.includes('/binaries/') && !src.endsWith('.node') });
  const config = join(copy, 'c.json');
  writeFileSync(config, JSON.stringify({ server: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, log: { dir: join(copy, 'data') } }));
  const r = spawnSync(process.execPath, [join(copy, 'bin', 'crowd'), 'start', '-c', config], { encoding: 'utf8', timeout: 20_000 });
  t.equal(r.status, 1, 'exit code 1');
  t.match(r.stdout + r.stderr, /CROWD_ERR_UWS_NATIVE/);
  t.match(r.stdout + r.stderr, /native uWebSockets\.js binary .* did not load/);
  t.notMatch(r.stdout, /"event":"listening"/, 'never listened');
});
