// Ensures the admin API: token required when set, /healthz, /readyz, /status fields,
// `crowd status`, and /metrics names that pass `promtool check metrics`.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { Crowd, runCli } from '../helpers/crowd';
import { request } from '../helpers/http';

const TOKEN = 'admin-token-123';
// The target's upstream is a closed loopback port: delivery metrics exist and show failures.
const crowd = new Crowd({
  config: {
    node_id: 'admin-test',
    admin: { token: TOKEN },
    routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
    targets: [{ name: 'api', url: 'http://127.0.0.1:9', retry: { base: '50ms', max: '100ms' } }],
  },
});
t.before(() => crowd.start());
t.teardown(() => crowd.stop());
const auth = { authorization: `Bearer ${TOKEN}` };

t.test('every admin call needs the token', async (t) => {
  for (const path of ['/metrics', '/status', '/healthz', '/readyz']) {
    const r = await request(crowd.adminUrl(path), { method: 'GET' });
    t.equal(r.status, 401, `${path} without token`);
    const w = await request(crowd.adminUrl(path), { method: 'GET', headers: { authorization: 'Bearer wrong-token-000' } });
    t.equal(w.status, 401, `${path} with a wrong token`);
  }
  t.equal((await request(crowd.adminUrl('/healthz'), { method: 'GET', headers: auth })).status, 200);
  t.equal((await request(crowd.adminUrl('/readyz'), { method: 'GET', headers: auth })).status, 200);
  t.equal((await request(crowd.adminUrl('/nope'), { method: 'GET', headers: auth })).status, 404);
});

t.test('/status and crowd status', async (t) => {
  for (let i = 0; i < 5; i++) t.equal((await request(crowd.url('/leads'), { body: `s${i}` })).status, 200);
  const s = JSON.parse((await request(crowd.adminUrl('/status'), { method: 'GET', headers: auth })).body);
  t.match(s, { node: 'admin-test', version: String, state: 'ready', ready: true, log: { first_offset: 1, last_offset: 5, durable_offset: 5, pending_writes: 0, bytes: Number } });
  t.ok(s.log.bytes > 0);
  t.match(s.targets, [{ name: 'api', url: 'http://127.0.0.1:9', offset: Number, lag: 5, in_flight: Number, retrying: Number, dead_letters: 0, delivered: 0, state: /^(ok|backoff|circuit-open)$/ }]);
  const cli = await runCli(['status', '-c', crowd.configFile]);
  t.equal(cli.code, 0, cli.stderr);
  t.match(cli.stdout, /^ {2}api +(ok|backoff|circuit-open).*http:\/\/127\.0\.0\.1:9$/m);
  t.match(cli.stdout, /^ {4}offset \d+ +lag 5 +in flight \d+ +retrying \d+ +dead letters 0 +delivered 0$/m);
  t.match(cli.stdout, /node\s+admin-test/);
  t.match(cli.stdout, /first 1\s+last 5\s+durable 5/);
  const json = await runCli(['status', '--json', '-c', crowd.configFile]);
  t.equal(JSON.parse(json.stdout).log.last_offset, 5);
});

t.test('/metrics: contract names, values, and promtool check metrics passes', async (t) => {
  await request(crowd.url('/missing'), { body: 'x' });
  const r = await request(crowd.adminUrl('/metrics'), { method: 'GET', headers: auth });
  t.equal(r.status, 200);
  t.match(r.headers['content-type'], /^text\/plain/);
  const text = r.body;
  t.match(text, /^crowd_ingest_requests_total\{route="leads",code="200"\} 5$/m);
  t.match(text, /^crowd_ingest_requests_total\{route="none",code="404"\} 1$/m);
  t.match(text, /^crowd_log_last_offset 5$/m);
  t.match(text, /^crowd_log_durable_offset 5$/m);
  t.match(text, /^crowd_log_commit_batch_size_count \d+$/m);
  t.match(text, /^crowd_log_append_seconds_count 5$/m);
  t.match(text, /^crowd_log_commit_seconds_bucket\{le="\+Inf"\} \d+$/m);
  t.match(text, /^crowd_accepted_total\{target="api"\} 5$/m);
  t.match(text, /^crowd_consumer_lag_messages\{target="api"\} 5$/m);
  t.match(text, /^crowd_delivered_total\{target="api"\} 0$/m);
  t.match(text, /^crowd_dead_letters\{target="api"\} 0$/m);
  t.match(text, /^crowd_delivery_attempts_total\{target="api",outcome="error"\} [1-9]\d*$/m);
  t.match(text, /^crowd_delivery_seconds_count\{target="api"\} [1-9]\d*$/m);
  for (const line of text.split('\n')) if (line && !line.startsWith('#')) t.match(line, /^crowd_/, 'every metric starts with crowd_');
  const promtool = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  t.equal(promtool.error, undefined, 'promtool is installed (make deps installs the prometheus package)');
  t.equal(promtool.status, 0, `promtool check metrics: ${promtool.stdout}${promtool.stderr}`);
});
