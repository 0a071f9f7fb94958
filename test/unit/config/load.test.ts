// Ensures the config loader applies defaults, reads TOML and JSON into one schema, and
// names the file and key path of every problem.
import t from 'tap';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, DEFAULTS_NAME, findConfigFile, formatProblem, loadConfig, parseConfigText } from '../../../src/config/load';
import { ROOT } from '../../helpers/crowd';

function problems(text: string, file = 'c.toml'): string[] {
  try {
    parseConfigText(text, file);
  } catch (err) {
    t.ok(err instanceof ConfigError, 'throws ConfigError');
    t.equal((err as ConfigError).code, 'CROWD_ERR_CONFIG');
    return (err as ConfigError).problems.map((p) => formatProblem(file, p));
  }
  return [];
}

t.test('defaults for everything but routes and targets', async (t) => {
  const c = parseConfigText('', 'empty.toml');
  t.equal(c.server.port, 8080);
  t.equal(c.server.host, '0.0.0.0');
  t.equal(c.server.max_body_bytes, 1048576);
  t.equal(c.server.max_receiving_bytes, 64 * 1024 * 1024);
  t.equal(c.server.ack_status, 200);
  t.equal(c.admin.host, '127.0.0.1');
  t.equal(c.admin.port, 9090);
  t.equal(c.log.max_bytes, 8 * 1024 ** 3);
  t.equal(c.log.retention, 24 * 3600 * 1000);
  t.equal(c.log.dir, join(process.cwd(), 'data'));
  t.same(c.routes, []);
  t.same(c.targets, []);
  t.equal(c.cluster.ack, 'local');
  t.ok(c.node_id.length > 0, 'node_id defaults to the hostname');
  t.ok(Object.isFrozen(c) && Object.isFrozen(c.server), 'deep-frozen');
});

t.test('TOML and JSON share one schema', async (t) => {
  const toml = parseConfigText(readFileSync(join(ROOT, 'config/crowd.example.toml'), 'utf8'), 'crowd.example.toml');
  const json = parseConfigText(readFileSync(join(ROOT, 'config/crowd.example.json'), 'utf8'), 'crowd.example.json');
  t.same(json, toml, 'the two example configs resolve to the same config');
  t.equal(toml.routes[0]!.path, '/leads');
  t.equal(toml.targets[0]!.retry.base, 200);
  t.equal(toml.targets[0]!.retry.max_age, 72 * 3600 * 1000);
  t.same(toml.routes[1]!.methods, ['POST', 'PUT']);
});

t.test('target and route fields get their defaults', async (t) => {
  const c = parseConfigText('[[targets]]\nname = "a"\nurl = "http://127.0.0.1:1"\n[[routes]]\nname = "r"\npath = "/r"\ntargets = ["a"]\n', 'x.toml');
  t.same(c.routes[0], { name: 'r', path: '/r', methods: ['POST'], targets: ['a'] });
  t.equal(c.targets[0]!.type, 'http');
  t.equal(c.targets[0]!.concurrency, 16);
  t.equal(c.targets[0]!.timeout, 10_000);
  t.same(c.targets[0]!.retry, { base: 200, max: 60_000, max_age: 72 * 3600 * 1000, permanent: [400, 404, 405, 410, 413, 415, 422] });
  t.equal(c.targets[0]!.ordered, false);
});

t.test('delivery keys: ordered is a boolean, permanent statuses, types without a sink', async (t) => {
  const base = '[[routes]]\nname = "r"\npath = "/r"\ntargets = ["a"]\n[[targets]]\nname = "a"\nurl = "http://127.0.0.1:1"\n';
  const ok = parseConfigText(base + 'ordered = true\nretry = { permanent = [400, 409] }\n', 'x.toml');
  t.equal(ok.targets[0]!.ordered, true);
  t.same(ok.targets[0]!.retry.permanent, [400, 409]);
  t.match(problems(base + 'ordered = "yes"\n'), [/c\.toml: targets\[0\]\.ordered: expected true or false, got the string "yes"/]);
  t.match(problems(base + 'retry = { permanent = [401] }\n'), [/c\.toml: targets\[0\]\.retry\.permanent\[0\]: 401 pauses the target/]);
  t.match(problems(base + 'retry = { permanent = [200] }\n'), [/targets\[0\]\.retry\.permanent\[0\]: 200 is out of range \(300 to 599\)/]);
  t.match(problems('[[targets]]\nname = "n"\ntype = "nats"\nurl = "nats://127.0.0.1:4222"\n'), [/targets\[0\]\.type: "nats" is not supported by this version/]);
});

t.test('credentials in a target URL are refused, and not echoed', async (t) => {
  const base = '[[routes]]\nname = "r"\npath = "/r"\ntargets = ["a"]\n[[targets]]\nname = "a"\n';
  for (const url of ['http://user:s3cret@127.0.0.1:1/in', 'https://user@api.example', 'http://:s3cret@api.example/']) {
    const p = problems(base + `url = "${url}"\n`);
    t.match(p, [/c\.toml: targets\[0\]\.url: credentials in the URL/], url);
    t.notMatch(p.join('\n'), /s3cret/, 'the password is not printed');
  }
});

t.test('unknown keys are errors, with their key path', async (t) => {
  const p = problems('colour = 1\n[server]\nprot = 8080\n[[routes]]\nname = "r"\npath = "/r"\nverb = "POST"\n');
  t.match(p, [/^crowd: config error: c\.toml: colour: unknown key/, /c\.toml: server\.prot: unknown key/, /c\.toml: routes\[0\]\.verb: unknown key/]);
  t.equal(p.length, 3);
});

t.test('every problem is reported at once with file and key path', async (t) => {
  const p = problems(
    '[server]\nport = "abc"\nmax_body_bytes = "12 parsecs"\nack_status = 204\n[log]\nretention = "5 weeks"\nmax_pending_writes = 999999\n[[routes]]\npath = "leads"\nmethods = ["FETCH"]\n',
  );
  t.match(p.join('\n'), /c\.toml: server\.port: expected a number/);
  t.match(p.join('\n'), /c\.toml: server\.max_body_bytes: "12 parsecs" is not a size/);
  t.match(p.join('\n'), /c\.toml: server\.ack_status: .* is not one of 200, 201, 202/);
  t.match(p.join('\n'), /c\.toml: log\.retention: "5 weeks" is not a duration/);
  t.match(p.join('\n'), /c\.toml: log\.max_pending_writes: 999999 is out of range/);
  t.match(p.join('\n'), /c\.toml: routes\[0\]\.name: required key is missing/);
  t.match(p.join('\n'), /c\.toml: routes\[0\]\.path: "leads" is not valid/);
  t.match(p.join('\n'), /c\.toml: routes\[0\]\.methods\[0\]: .*"FETCH" is not one of/);
  t.equal(p.length, 8);
});

t.test('rules across keys', async (t) => {
  const p = problems(
    [
      '[[targets]]\nname = "a"\nurl = "http://x:1"\n[[targets]]\nname = "a"\nurl = "nats://x:1"',
      '[[routes]]\nname = "r"\npath = "/r"\ntargets = ["nope"]',
      '[[routes]]\nname = "r"\npath = "/r"',
      '[[routes]]\nname = "h"\npath = "/healthz"',
      '[[routes]]\nname = "c"\npath = "/_crowd/*"',
      '[[routes]]\nname = "all"\npath = "/*"',
      '[cluster]\nack = "quorum"',
    ].join('\n'),
  );
  const all = p.join('\n');
  t.match(all, /targets\[1\]\.name: duplicate target name "a"/);
  t.match(all, /routes\[0\]\.targets\[0\]: no target is named "nope"/);
  t.match(all, /routes\[1\]\.name: duplicate route name "r"/);
  t.match(all, /routes\[1\]\.path: "\/r" is already used by routes\[0\]/);
  t.match(all, /routes\[2\]\.path: "\/healthz" overlaps "\/healthz"/);
  t.match(all, /routes\[3\]\.path: "\/_crowd\/\*" overlaps "\/_crowd"/);
  t.match(all, /routes\[4\]\.path: "\/\*" overlaps "\/healthz"/);
  t.match(all, /cluster\.ack: "quorum" needs cluster\.peers/);
});

t.test('cluster: secret required with peers, min_insync resolved and bounded, peers checked', async (t) => {
  t.match(problems('[cluster]\npeers = ["http://10.0.0.2:8080"]\n'), [/cluster\.secret: is required when cluster\.peers is set/]);
  t.match(problems('[cluster]\npeers = ["http://10.0.0.2:8080"]\nsecret = "short"\n'), [/cluster\.secret: .*at least 16 characters/]);
  const base = '[cluster]\nsecret = "0123456789abcdef"\n';
  const two = parseConfigText(base + 'peers = ["http://10.0.0.2:8080", "http://10.0.0.3:8080"]\n', 'c.toml');
  t.equal(two.cluster.min_insync, 2, 'default: a majority of 3');
  t.equal(parseConfigText(base + 'peers = ["http://10.0.0.2:8080"]\n', 'c.toml').cluster.min_insync, 2, 'a majority of 2 is 2');
  t.equal(parseConfigText(base + 'peers = ["http://a:1", "http://b:1", "http://c:1", "http://d:1"]\n', 'c.toml').cluster.min_insync, 3, 'a majority of 5');
  t.equal(two.cluster.ack_timeout, 2000, 'ack_timeout default 2s');
  t.match(problems(base + 'peers = ["http://10.0.0.2:8080"]\nmin_insync = 3\n'), [/cluster\.min_insync: 3 is more than the 2 nodes this one knows/]);
  t.match(problems(base + 'peers = ["http://10.0.0.2:8080"]\nack = "quorum"\nmin_insync = 1\n'), [/cluster\.min_insync: is 1 with ack = "quorum": the quorum would be this node alone/]);
  t.match(problems(base + 'peers = ["http://10.0.0.2:8080", "http://10.0.0.2:8080/"]\n'), [/cluster\.peers\[1\]: http:\/\/10\.0\.0\.2:8080 is listed twice/]);
  t.match(problems(base + 'peers = ["http://10.0.0.2:8080/x"]\n'), [/cluster\.peers\[0\]: must be a bare http\(s\):\/\/host:port/]);
  t.match(problems('[server]\nport = 8080\n' + base + 'peers = ["http://127.0.0.1:8080"]\n'), [/cluster\.peers\[0\]: .*this node's own server\.port: a node must not list itself/]);
  const dir = mkdtempSync(join(tmpdir(), 'crowd-secret-'));
  const file = join(dir, 'secret');
  writeFileSync(file, 'from-a-file-0123456789\n');
  t.equal(parseConfigText(`[cluster]\npeers = ["http://10.0.0.2:8080"]\nsecret_file = "${file}"\n`, 'c.toml').cluster.secret, 'from-a-file-0123456789', 'secret_file read, newline dropped');
  writeFileSync(file, 'short\n');
  t.match(problems(`[cluster]\npeers = ["http://10.0.0.2:8080"]\nsecret_file = "${file}"\n`), [/cluster\.secret_file: .* must hold one line of at least 16 characters/]);
  t.match(problems(`[cluster]\npeers = ["http://10.0.0.2:8080"]\nsecret_file = "${join(dir, 'none')}"\n`), [/cluster\.secret_file: cannot read .*ENOENT/]);
});

t.test('server.max_receiving_bytes holds at least one largest body', async (t) => {
  t.match(problems('[server]\nmax_body_bytes = "2MiB"\nmax_receiving_bytes = "1MiB"\n'), [/c\.toml: server\.max_receiving_bytes: must be at least server\.max_body_bytes \(2097152\)/]);
  t.equal(parseConfigText('[server]\nmax_body_bytes = "2MiB"\nmax_receiving_bytes = "2MiB"\n', 'c.toml').server.max_receiving_bytes, 2 * 1024 * 1024);
});

t.test('targets[].max_lag_bytes: not with ordered, and below 90% of log.max_bytes', async (t) => {
  const base = '[log]\nmax_bytes = "10MiB"\n[[routes]]\nname = "r"\npath = "/r"\ntargets = ["t"]\n[[targets]]\nname = "t"\nurl = "http://127.0.0.1:9"\n';
  t.match(problems(base + 'ordered = true\nmax_lag_bytes = "1MiB"\n'), [/c\.toml: targets\[0\]\.max_lag_bytes: cannot be used with ordered = true/]);
  t.match(problems(base + 'max_lag_bytes = "9MiB"\n'), [/c\.toml: targets\[0\]\.max_lag_bytes: must be below 90% of log\.max_bytes/]);
  t.equal(parseConfigText(base + 'max_lag_bytes = "1MiB"\n', 'c.toml').targets[0]!.max_lag_bytes, 1024 * 1024);
});

t.test('keys named like Object.prototype members and non-table values are refused', async (t) => {
  const p = problems('constructor = 1\ntoString = "x"\nserver = 2024-01-01\n');
  t.match(p.join('\n'), /c\.toml: constructor: unknown key/);
  t.match(p.join('\n'), /c\.toml: toString: unknown key/);
  t.match(p.join('\n'), /c\.toml: server: expected a table, got/);
  t.match(problems('{"__proto__": {"x": 1}}', 'c.json').join('\n'), /c\.json: __proto__: unknown key/);
});

t.test('syntax errors name the file and the line', async (t) => {
  t.match(problems('[server\nport = 1\n'), [/^crowd: config error: c\.toml: line 1, column \d+: not valid TOML/]);
  t.match(problems('{"server": {', 'c.json'), [/^crowd: config error: c\.json: file: not valid JSON/]);
  t.match(problems('[1, 2]', 'c.json'), [/c\.json: file: expected a table, got an array/]);
  t.match(problems('x', 'c.yaml'), [/c\.yaml: file: unknown config format ".yaml"/]);
});

t.test('lookup order: flag, CROWD_CONFIG, ./crowd.toml, defaults', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'crowd-cfg-'));
  t.equal(findConfigFile('a.toml', { CROWD_CONFIG: 'b.toml' }, dir), 'a.toml');
  t.equal(findConfigFile(undefined, { CROWD_CONFIG: 'b.toml' }, dir), 'b.toml');
  t.equal(findConfigFile(undefined, {}, dir), null);
  writeFileSync(join(dir, 'crowd.toml'), '');
  t.equal(findConfigFile(undefined, {}, dir), 'crowd.toml');
  t.equal(loadConfig(undefined, {}).file === DEFAULTS_NAME || loadConfig(undefined, {}).file === 'crowd.toml', true);
  const missing = join(dir, 'missing.toml');
  t.throws(() => loadConfig(missing, {}), { code: 'CROWD_ERR_CONFIG', message: new RegExp(`${missing}: file: cannot read the file \\(ENOENT\\)`) });
});

t.test('config/cluster: a three-node set where each node lists the other two', async (t) => {
  const nodes = ['a', 'b', 'c'].map((n) => loadConfig(join(ROOT, 'config', 'cluster', `node-${n}.toml`)).config);
  const urls = nodes.map((c) => `http://127.0.0.1:${c.server.port}`);
  nodes.forEach((c, i) => {
    t.equal(c.node_id, 'abc'[i]);
    t.same([...c.cluster.peers].sort(), urls.filter((_, j) => j !== i).sort(), `${c.node_id} lists the other two`);
    t.equal(c.cluster.ack, 'quorum');
    t.equal(c.cluster.min_insync, 2);
  });
  t.equal(new Set(nodes.map((c) => c.log.dir)).size, 3, 'a log directory each');
  t.equal(new Set(nodes.map((c) => c.admin.port)).size, 3, 'an admin port each');
});
