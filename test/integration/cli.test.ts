// Ensures `crowd check` accepts the example configs, finds configs in the documented order,
// and rejects bad ones with exit 2 and one `crowd: config error: <file>: <key.path>: ...` line
// per problem; `crowd start` refuses a bad config the same way.
import t from 'tap';
import { symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, runCli, tempDir } from '../helpers/crowd';

t.test('the example configs pass crowd check', async (t) => {
  for (const f of ['config/crowd.example.toml', 'config/crowd.example.json']) {
    const r = await runCli(['check', '-c', f]);
    t.equal(r.code, 0, `${f}: ${r.stderr}`);
    t.match(r.stdout, new RegExp(`^# ${f.replace('.', '\\.')}: OK`));
    const resolved = JSON.parse(r.stdout.slice(r.stdout.indexOf('\n') + 1));
    t.equal(resolved.routes[0].path, '/leads');
    t.equal(resolved.log.retention, '1d', 'durations are printed back as durations');
    t.equal(resolved.server.max_body_bytes, 1048576);
  }
});

t.test('bad configs: exit 2, one line per problem, file and key path named', async (t) => {
  const dir = tempDir();
  const cases: [string, string, RegExp[]][] = [
    ['unknown.toml', '[server]\nport = 8080\nhots = "x"\n[logs]\ndir = "d"\n', [/^crowd: config error: .*unknown\.toml: server\.hots: unknown key/m, /^crowd: config error: .*unknown\.toml: logs: unknown key/m]],
    ['syntax.toml', 'node_id = "a"\n[server\n', [/^crowd: config error: .*syntax\.toml: line 2, column \d+: not valid TOML/m]],
    ['syntax.json', '{"server": {"port": 80,}}', [/^crowd: config error: .*syntax\.json: file: not valid JSON/m]],
    ['types.json', JSON.stringify({ server: { port: 70000 }, routes: [{ name: 'r', path: '/r', targets: ['t'] }] }), [/types\.json: server\.port: 70000 is out of range/]],
    ['refs.json', JSON.stringify({ routes: [{ name: 'r', path: '/r', targets: ['t'] }] }), [/refs\.json: routes\[0\]\.targets\[0\]: no target is named "t"/]],
    ['emptydir.toml', '[log]\ndir = ""\n', [/emptydir\.toml: log\.dir: "" is not valid: expected a directory path/]],
  ];
  for (const [name, text, want] of cases) {
    const file = join(dir, name);
    writeFileSync(file, text);
    const r = await runCli(['check', '-c', file]);
    t.equal(r.code, 2, `${name} exits 2`);
    t.equal(r.stdout, '', 'prints no config');
    const lines = r.stderr.trim().split('\n');
    t.equal(lines.length, want.length, `${name}: one line per problem`);
    for (const w of want) t.match(r.stderr, w);
    for (const l of lines) t.match(l, /^crowd: config error: \S+: \S.*: .+$/, 'line format');
  }
  const start = await runCli(['start', '-c', join(dir, 'unknown.toml')]);
  t.equal(start.code, 2, 'start refuses a bad config with exit 2');
  t.match(start.stderr, /server\.hots: unknown key/);
  const missing = await runCli(['check', '-c', join(dir, 'nope.toml')]);
  t.equal(missing.code, 2);
  t.match(missing.stderr, /nope\.toml: file: cannot read the file \(ENOENT\)/);
});

t.test('lookup order: -c, then CROWD_CONFIG, then ./crowd.toml, then defaults', async (t) => {
  const dir = tempDir();
  const env = { CROWD_CONFIG: '' };
  const none = await runCli(['check'], { cwd: dir, env });
  t.equal(none.code, 0);
  t.match(none.stdout, /^# \(built-in defaults\): OK/);
  writeFileSync(join(dir, 'crowd.toml'), 'node_id = "from-cwd"\n');
  t.match((await runCli(['check'], { cwd: dir, env })).stdout, /"node_id": "from-cwd"/);
  writeFileSync(join(dir, 'env.json'), '{"node_id": "from-env"}');
  t.match((await runCli(['check'], { cwd: dir, env: { CROWD_CONFIG: join(dir, 'env.json') } })).stdout, /"node_id": "from-env"/);
  writeFileSync(join(dir, 'flag.toml'), 'node_id = "from-flag"\n');
  t.match((await runCli(['check', '-c', join(dir, 'flag.toml')], { cwd: dir, env: { CROWD_CONFIG: join(dir, 'env.json') } })).stdout, /"node_id": "from-flag"/);
});

t.test('help lists the commands', async (t) => {
  const r = await runCli(['--help'], { cwd: ROOT });
  t.equal(r.code, 0);
  for (const c of ['start', 'check', 'status', 'tail']) t.match(r.stdout, new RegExp(`\\b${c}\\b`));
});

t.test('start failures: exit 1 with one clear line, no stack trace, and no hang', async (t) => {
  const dir = tempDir();
  const cases: [string, string, RegExp][] = [
    ['proc', '/proc/crowd-test/data', /log\.dir \/proc\/crowd-test\/data: \/proc is on a proc file system, which cannot hold a log/],
    ['sys', '/sys/crowd-test', /log\.dir \/sys\/crowd-test: \/sys is on a sysfs file system/],
    ['file', join(dir, 'a-file', 'data'), /log\.dir .*a-file\/data: .*a-file exists and is not a directory/],
    ['dangling', join(dir, 'dangling'), /log\.dir .*dangling: .*dangling is a symbolic link to a path that does not exist/],
  ];
  writeFileSync(join(dir, 'a-file'), 'x');
  symlinkSync(join(dir, 'nowhere'), join(dir, 'dangling'));
  for (const [name, logDir, want] of cases) {
    const file = join(dir, `${name}.json`);
    writeFileSync(file, JSON.stringify({ server: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, log: { dir: logDir } }));
    const r = await runCli(['start', '-c', file], { timeoutMs: 10_000 });
    t.equal(r.code, 1, `${name}: exit 1`);
    const lines = r.stdout.trim().split('\n').filter((l) => /"level":"fatal"/.test(l));
    t.equal(lines.length, 1, `${name}: one fatal line`);
    const line = JSON.parse(lines[0] ?? '{}');
    t.equal(line.event, 'start_failed');
    t.equal(line.code, 'CROWD_ERR_LOG_DIR');
    t.match(line.msg, want);
    t.notOk('err' in line || /\n\s+at /.test(lines[0] ?? ''), `${name}: no stack trace in the line`);
  }
});
