// Delivery trouble in crowd's own log, against real upstreams: one line per state change and
// one per TLS failure (a self-signed certificate), not one per attempt.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import { Crowd, tempDir } from '../helpers/crowd';
import { post, targetStatus } from '../helpers/delivery';
import { Upstream, waitFor } from '../helpers/upstream';

const events = (crowd: Crowd, event: string) => crowd.lines.filter((l) => l.includes(`"event":"${event}"`)).map((l) => JSON.parse(l));

t.test('a TLS failure is logged once, not per attempt', async (t) => {
  const dir = tempDir('crowd-tls-');
  const key = join(dir, 'key.pem');
  const cert = join(dir, 'cert.pem');
  const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1'], { stdio: 'ignore' });
  if (r.status !== 0) {
    t.fail(`openssl could not make a test certificate (${r.error?.message ?? `exit ${r.status}`}): make deps installs it`);
    return;
  }
  let hits = 0;
  const server = createServer({ key: readFileSync(key), cert: readFileSync(cert) }, (_req, res) => {
    hits++;
    res.end('ok');
  });
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
  const port = (server.address() as AddressInfo).port;
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: `https://127.0.0.1:${port}`, retry: { base: '20ms', max: '100ms' } }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await new Promise((res) => server.close(res));
  });
  await post(crowd, 3);
  await waitFor(async () => {
    const s = await targetStatus(crowd, 'api');
    return (s as unknown as { attempts: Record<string, number> }).attempts.error >= 10;
  }, 10_000, 'ten failed attempts');
  t.equal(hits, 0, 'the upstream never got a request');
  const tls = events(crowd, 'target_tls_failed');
  t.equal(tls.length, 1, 'one TLS line');
  t.match(tls[0], { level: 'error', target: 'api', error: /CERT|certificate/i });
  const states = events(crowd, 'target_state').map((l) => l.state);
  t.same(states, ['backoff', 'circuit-open'], 'one line per state change');
});

t.test('an upstream that comes back: recovered, once', async (t) => {
  const up = await Upstream.start(0, () => ({ status: 503 }));
  const crowd = new Crowd({
    config: {
      routes: [{ name: 'leads', path: '/leads', targets: ['api'] }],
      targets: [{ name: 'api', url: up.url(), retry: { base: '20ms', max: '100ms' } }],
    },
  });
  await crowd.start();
  t.teardown(async () => {
    await crowd.stop();
    await up.close();
  });
  await post(crowd, 5);
  await up.until(() => up.received.length >= 15, 10_000, 'fifteen failed attempts');
  up.respond = () => ({ status: 200 });
  await waitFor(async () => (await targetStatus(crowd, 'api')).lag === 0, 10_000, 'delivered');
  await waitFor(() => events(crowd, 'target_state').some((l) => l.state === 'ok'), 3000, 'the recovered line');
  const states = events(crowd, 'target_state').map((l) => l.state);
  t.equal(states.filter((s) => s === 'circuit-open').length, 1, `circuit-open once (${states.join(', ')})`);
  t.equal(states.at(-1), 'ok');
  t.ok(states.length <= 4, `a few lines for ${up.received.length} attempts`);
});
