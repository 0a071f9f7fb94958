/**
 * An upstream to run inside a network namespace (see netns.ts):
 *   node dist/test/helpers/netns-upstream.js --host IP --port N [--delay-ms N]
 * Answers 200 to every POST (after --delay-ms) and counts the deliveries of each request id
 * (crowd sends it as Crowd-Id, and as Idempotency-Key); `GET /_ids` returns the counts as
 * `{ "<id>": count, ... }`. Prints `listening <port>` once it listens (port 0: the kernel's).
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

function arg(name: string, fallback?: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? process.argv[i + 1] : fallback;
  if (v === undefined) {
    process.stderr.write(`usage: netns-upstream --host IP --port N [--delay-ms N] (--${name} missing)\n`);
    process.exit(2);
  }
  return v;
}

const host = arg('host');
const port = Number(arg('port'));
const delayMs = Number(arg('delay-ms', '0'));
const counts = new Map<string, number>();

const server = createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/_ids') {
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify(Object.fromEntries(counts)));
    return;
  }
  if (req.method !== 'POST') {
    res.statusCode = 405;
    res.end();
    return;
  }
  req.resume();
  req.on('end', () => {
    const id = req.headers['crowd-id'] ?? req.headers['idempotency-key'];
    if (typeof id === 'string') counts.set(id, (counts.get(id) ?? 0) + 1);
    const answer = (): void => {
      res.statusCode = 200;
      res.end();
    };
    if (delayMs > 0) setTimeout(answer, delayMs);
    else answer();
  });
});
server.keepAliveTimeout = 60_000;
server.listen(port, host, () => process.stdout.write(`listening ${(server.address() as AddressInfo).port}\n`));
process.on('SIGTERM', () => process.exit(0));
